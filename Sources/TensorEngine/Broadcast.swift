/// How two shapes broadcast (NumPy rules, aligned at the right) and how to walk the
/// result row by row: adjacent dimensions that are contiguous for every operand
/// are merged, the last merged dimension is the row, and each operand's stride
/// inside a row is 0 (broadcast) or 1.
struct BroadcastPlan {
    let outShape: [Int]
    let rowLength: Int
    let rowCount: Int
    let aInner: Int
    let bInner: Int
    /// Outer (row) dimensions and each operand's strides over them.
    private let outerDims: [Int]
    private let aOuter: [Int]
    private let bOuter: [Int]

    /// The broadcast shape of `a` and `b`, or nil when they do not broadcast.
    static func resultShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        let rank = max(a.count, b.count)
        var out = [Int](repeating: 1, count: rank)
        for i in 0..<rank {
            let da = i < rank - a.count ? 1 : a[i - (rank - a.count)]
            let db = i < rank - b.count ? 1 : b[i - (rank - b.count)]
            guard da == db || da == 1 || db == 1 else { return nil }
            out[i] = da == 1 ? db : da
        }
        return out
    }

    /// A plan over `outShape`, reading `a` and `b` whose shapes broadcast to it.
    init(outShape: [Int], a: [Int], b: [Int]) {
        let rank = outShape.count
        func strides(_ s: [Int]) -> [Int] {
            let padded = [Int](repeating: 1, count: rank - s.count) + s
            var st = contiguousStrides(padded)
            for i in 0..<rank where padded[i] == 1 && outShape[i] != 1 { st[i] = 0 }
            return st
        }
        var dims: [Int] = [], sa: [Int] = [], sb: [Int] = []
        let fa = strides(a), fb = strides(b)
        for i in 0..<rank where outShape[i] != 1 {
            if let last = dims.indices.last,
               sa[last] == fa[i] * outShape[i], sb[last] == fb[i] * outShape[i] {
                dims[last] *= outShape[i]
                sa[last] = fa[i]
                sb[last] = fb[i]
            } else {
                dims.append(outShape[i]); sa.append(fa[i]); sb.append(fb[i])
            }
        }
        if dims.isEmpty { dims = [1]; sa = [0]; sb = [0] }
        // A row needs inner strides of 0 or 1; otherwise rows are single elements.
        if sa.last! > 1 || sb.last! > 1 { dims.append(1); sa.append(0); sb.append(0) }
        self.outShape = outShape
        rowLength = dims.last!
        aInner = sa.last!
        bInner = sb.last!
        outerDims = Array(dims.dropLast())
        aOuter = Array(sa.dropLast())
        bOuter = Array(sb.dropLast())
        rowCount = outerDims.reduce(1, *)
    }

    /// Calls `body(outOffset, aOffset, bOffset)` for rows `rows` in order.
    @inline(__always)
    func forEachRow(_ rows: Range<Int> = 0..<Int.max, _ body: (Int, Int, Int) -> Void) {
        let rows = rows.clamped(to: 0..<rowCount)
        guard !rows.isEmpty else { return }
        let n = outerDims.count
        var index = [Int](repeating: 0, count: n)
        var aOff = 0, bOff = 0
        var r = rows.lowerBound
        for d in stride(from: n - 1, through: 0, by: -1) {   // position of the first row
            index[d] = r % outerDims[d]
            r /= outerDims[d]
            aOff += index[d] * aOuter[d]
            bOff += index[d] * bOuter[d]
        }
        for row in rows {
            body(row * rowLength, aOff, bOff)
            var d = n - 1
            while d >= 0 {
                index[d] += 1
                aOff += aOuter[d]
                bOff += bOuter[d]
                if index[d] < outerDims[d] { break }
                aOff -= aOuter[d] * outerDims[d]
                bOff -= bOuter[d] * outerDims[d]
                index[d] = 0
                d -= 1
            }
        }
    }
}
