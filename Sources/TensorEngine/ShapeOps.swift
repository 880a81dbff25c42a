/// Reshape, permute, concat, split and slice. Reshape shares storage; the others copy.

extension Tensor {
    /// The same elements with another shape; one dimension may be -1 (inferred).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        if let i = newShape.firstIndex(of: -1) {
            let known = newShape.filter { $0 != -1 }.reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            resolved[i] = count / known
        }
        precondition(resolved.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        let out = Tensor(shape: resolved, storage: storage)
        if Tape.needsGrad(self) {
            Tape.record(out, inputs: [self]) { [slot] g in
                let pg = g.pointer, count = slot.count
                slot.withGradient { d, accumulate in
                    if accumulate { for i in 0..<count { d[i] += pg[i] } } else { d.update(from: pg, count: count) }
                }
            }
        }
        return out
    }

    /// Reorders dimensions: output dimension i is input dimension `dims[i]`.
    public func permuted(_ dims: [Int]) -> Tensor {
        precondition(dims.count == rank && Set(dims) == Set(0..<rank),
                     "permutation \(dims) does not fit shape \(shape)")
        let outShape = dims.map { shape[$0] }
        let inStrides = contiguousStrides(shape)
        let out = Tensor(uninitialized: outShape)
        permuteCopy(from: pointer, to: out.pointer, outShape: outShape, sourceStrides: dims.map { inStrides[$0] }, accumulate: false)
        if Tape.needsGrad(self) {
            var inverse = [Int](repeating: 0, count: rank)
            for (i, d) in dims.enumerated() { inverse[d] = i }
            Tape.record(out, inputs: [self]) { [slot] g in
                let gStrides = contiguousStrides(outShape)
                slot.withGradient { d, accumulate in
                    permuteCopy(from: g.pointer, to: d, outShape: slot.shape,
                                sourceStrides: inverse.map { gStrides[$0] }, accumulate: accumulate)
                }
            }
        }
        return out
    }

    /// Elements `range` of dimension `axis`.
    public func slice(axis: Int, _ range: Range<Int>) -> Tensor {
        let ax = normalizedAxis(axis, rank: rank)
        precondition(range.lowerBound >= 0 && range.upperBound <= shape[ax],
                     "slice \(range) out of bounds for axis \(ax) of shape \(shape)")
        var outShape = shape
        outShape[ax] = range.count
        let (outer, inner) = (shape[..<ax].reduce(1, *), shape[(ax + 1)...].reduce(1, *))
        let out = Tensor(uninitialized: outShape)
        let src = pointer, dst = out.pointer, rowIn = shape[ax] * inner, rowOut = range.count * inner
        for o in 0..<outer { (dst + o * rowOut).update(from: src + o * rowIn + range.lowerBound * inner, count: rowOut) }
        if Tape.needsGrad(self) {
            Tape.record(out, inputs: [self]) { [slot] g in
                let pg = g.pointer
                slot.withZeroedGradient { d in
                    for o in 0..<outer {
                        let a = d + o * rowIn + range.lowerBound * inner, b = pg + o * rowOut
                        for i in 0..<rowOut { a[i] += b[i] }
                    }
                }
            }
        }
        return out
    }

    /// Splits dimension `axis` into consecutive parts of the given sizes.
    public func split(sizes: [Int], axis: Int) -> [Tensor] {
        let ax = normalizedAxis(axis, rank: rank)
        precondition(sizes.reduce(0, +) == shape[ax], "split sizes \(sizes) do not add up to \(shape[ax]) (axis \(ax) of \(shape))")
        var start = 0
        return sizes.map { n in
            defer { start += n }
            return slice(axis: ax, start..<(start + n))
        }
    }
}

/// Joins tensors along `axis`; every other dimension must agree.
public func concat(_ parts: [Tensor], axis: Int) -> Tensor {
    precondition(!parts.isEmpty, "concat of no tensors")
    let rank = parts[0].rank
    let ax = normalizedAxis(axis, rank: rank)
    for p in parts {
        precondition(p.rank == rank && (0..<rank).allSatisfy { $0 == ax || p.shape[$0] == parts[0].shape[$0] },
                     "concat along axis \(ax): shapes \(parts.map(\.shape)) do not match")
    }
    var outShape = parts[0].shape
    outShape[ax] = parts.map { $0.shape[ax] }.reduce(0, +)
    let outer = outShape[..<ax].reduce(1, *), inner = outShape[(ax + 1)...].reduce(1, *)
    let rowOut = outShape[ax] * inner
    let out = Tensor(uninitialized: outShape)
    var offset = 0
    var offsets: [Int] = []
    for p in parts {
        offsets.append(offset)
        let rowIn = p.shape[ax] * inner, src = p.pointer, dst = out.pointer + offset
        for o in 0..<outer { (dst + o * rowOut).update(from: src + o * rowIn, count: rowIn) }
        offset += rowIn
    }
    if Tape.needsGrad(parts) {
        Tape.record(out, inputs: parts) { [slots = parts.map(\.slot)] g in
            for (p, off) in zip(slots, offsets) where p.requiresGrad {
                let rowIn = p.shape[ax] * inner, pg = g.pointer + off
                p.withGradient { d, accumulate in
                    for o in 0..<outer {
                        let a = d + o * rowIn, b = pg + o * rowOut
                        if accumulate { for i in 0..<rowIn { a[i] += b[i] } } else { a.update(from: b, count: rowIn) }
                    }
                }
            }
        }
    }
    return out
}

/// dst[i] (+)= src[Σ index_k · sourceStrides_k] over the contiguous output shape.
private func permuteCopy(from src: UnsafeMutablePointer<Float>, to dst: UnsafeMutablePointer<Float>,
                         outShape: [Int], sourceStrides: [Int], accumulate: Bool) {
    let total = outShape.reduce(1, *)
    guard total > 0 else { return }
    let rank = outShape.count
    guard rank > 0 else { if accumulate { dst[0] += src[0] } else { dst[0] = src[0] }; return }
    let n = outShape[rank - 1], innerStride = sourceStrides[rank - 1]
    var index = [Int](repeating: 0, count: rank - 1)
    var srcOff = 0
    var o = 0
    while o < total {
        let s = src + srcOff, d = dst + o
        if accumulate { for i in 0..<n { d[i] += s[i * innerStride] } } else { for i in 0..<n { d[i] = s[i * innerStride] } }
        o += n
        var k = rank - 2
        while k >= 0 {
            index[k] += 1
            srcOff += sourceStrides[k]
            if index[k] < outShape[k] { break }
            srcOff -= sourceStrides[k] * outShape[k]
            index[k] = 0
            k -= 1
        }
    }
}
