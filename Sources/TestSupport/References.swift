import Foundation
import TensorEngine

/// Independent naive references in Double, written from the definitions with
/// plain index arithmetic (no shared code with the engine), to check forwards.
public enum Reference {
    /// NHWC input, OIHW weight → NHWC output.
    public static func conv2d(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: Int, padding: Padding2D) -> [Double] {
        let (n, h, wd, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (o, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
        let oh = (h + padding.top + padding.bottom - kh) / stride + 1
        let ow = (wd + padding.left + padding.right - kw) / stride + 1
        let xs = x.scalars, ws = w.scalars, bs = b?.scalars
        var y = [Double](repeating: 0, count: n * oh * ow * o)
        for s in 0..<n { for i in 0..<oh { for j in 0..<ow { for oc in 0..<o {
            var acc = bs.map { Double($0[oc]) } ?? 0
            for ic in 0..<c { for p in 0..<kh { for q in 0..<kw {
                let yi = i * stride + p - padding.top, xj = j * stride + q - padding.left
                guard yi >= 0, yi < h, xj >= 0, xj < wd else { continue }
                acc += Double(xs[((s * h + yi) * wd + xj) * c + ic]) * Double(ws[((oc * c + ic) * kh + p) * kw + q])
            } } }
            y[((s * oh + i) * ow + j) * o + oc] = acc
        } } } }
        return y
    }

    /// [B, M, K] × [B, K, N] (b shared when 2-D) with optional transposes.
    public static func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> [Double] {
        let ar = a.rank, br = b.rank
        let m = transposeA ? a.shape[ar - 1] : a.shape[ar - 2], k = transposeA ? a.shape[ar - 2] : a.shape[ar - 1]
        let n = transposeB ? b.shape[br - 2] : b.shape[br - 1]
        let batch = a.count / (m * k)
        let av = a.scalars, bv = b.scalars
        var c = [Double](repeating: 0, count: batch * m * n)
        for t in 0..<batch {
            let bo = br == 2 ? 0 : t * k * n
            for i in 0..<m { for j in 0..<n {
                var acc = 0.0
                for p in 0..<k {
                    let x = transposeA ? av[t * m * k + p * m + i] : av[t * m * k + i * k + p]
                    let y = transposeB ? bv[bo + j * k + p] : bv[bo + p * n + j]
                    acc += Double(x) * Double(y)
                }
                c[(t * m + i) * n + j] = acc
            } }
        }
        return c
    }

    /// GroupNorm over NHWC.
    public static func groupNorm(_ x: Tensor, groups: Int, _ w: Tensor, _ b: Tensor, eps: Double) -> [Double] {
        let (n, h, wd, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let xs = x.scalars.map(Double.init), cg = c / groups
        var y = [Double](repeating: 0, count: xs.count)
        for s in 0..<n { for g in 0..<groups {
            var idx: [Int] = []
            for p in 0..<(h * wd) { for ch in (g * cg)..<((g + 1) * cg) { idx.append((s * h * wd + p) * c + ch) } }
            let mean = idx.map { xs[$0] }.reduce(0, +) / Double(idx.count)
            let varc = idx.map { (xs[$0] - mean) * (xs[$0] - mean) }.reduce(0, +) / Double(idx.count)
            for i in idx { y[i] = (xs[i] - mean) / (varc + eps).squareRoot() * Double(w.scalars[i % c]) + Double(b.scalars[i % c]) }
        } }
        return y
    }

    /// Softmax along the last axis.
    public static func softmax(_ x: [Double], rowLength d: Int) -> [Double] {
        var y = x
        for r in 0..<(x.count / d) {
            let row = x[(r * d)..<((r + 1) * d)], m = row.max()!
            let e = row.map { Foundation.exp($0 - m) }, s = e.reduce(0, +)
            for j in 0..<d { y[r * d + j] = e[j] / s }
        }
        return y
    }

    /// softmax(q kᵀ / √D) v per batch entry.
    public static func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> [Double] {
        let (b, tq, d) = (q.shape[0], q.shape[1], q.shape[2]), tk = k.shape[1], dv = v.shape[2]
        let qs = q.scalars, ks = k.scalars, vs = v.scalars
        var out = [Double](repeating: 0, count: b * tq * dv)
        for t in 0..<b { for i in 0..<tq {
            var logits = [Double](repeating: 0, count: tk)
            for j in 0..<tk { for p in 0..<d { logits[j] += Double(qs[(t * tq + i) * d + p]) * Double(ks[(t * tk + j) * d + p]) } }
            let w = softmax(logits.map { $0 / Double(d).squareRoot() }, rowLength: tk)
            for j in 0..<tk { for p in 0..<dv { out[(t * tq + i) * dv + p] += w[j] * Double(vs[(t * tk + j) * dv + p]) } }
        } }
        return out
    }
}
