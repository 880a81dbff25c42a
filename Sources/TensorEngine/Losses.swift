import Foundation

/// Reconstruction losses, the KL term of a diagonal Gaussian posterior, and cross-entropy.

/// Mean absolute error mean|x − y| (a scalar); gradients flow to both.
public func l1Loss(_ x: Tensor, _ y: Tensor) -> Tensor {
    reductionLoss(x, y, "l1Loss", value: { abs($0) }, derivative: { $0 > 0 ? 1 : ($0 < 0 ? -1 : 0) })
}

/// Mean squared error mean (x − y)² (a scalar); gradients flow to both.
public func mseLoss(_ x: Tensor, _ y: Tensor) -> Tensor {
    reductionLoss(x, y, "mseLoss", value: { $0 * $0 }, derivative: { 2 * $0 })
}

/// mean f(x − y) over all elements, with dL/dx = f'(x − y)/n = −dL/dy.
@inline(__always)
private func reductionLoss(_ x: Tensor, _ y: Tensor, _ name: String, value: (Float) -> Float,
                           derivative: @escaping (Float) -> Float) -> Tensor {
    precondition(x.shape == y.shape, "\(name): shapes \(x.shape) and \(y.shape) differ")
    let n = x.count, px = x.pointer, py = y.pointer
    var total = 0.0
    var i = 0
    while i < n {   // blocks summed in Float, blocks in Double: accurate and vectorised
        let end = min(n, i + 4096)
        var s: Float = 0
        for j in i..<end { s += value(px[j] - py[j]) }
        total += Double(s)
        i = end
    }
    let out = Tensor(Float(total / Double(max(n, 1))))
    if Tape.needsGrad(x, y) {
        Tape.record(out, inputs: [x, y]) { g in
            let s = g.item / Float(max(n, 1))
            for (t, sign) in [(x, Float(1)), (y, Float(-1))] where t.requiresGrad {
                t.withGradient { d, accumulate in
                    parallelFor(n, grain: 65536) { r in
                        if accumulate {
                            for j in r { d[j] += sign * s * derivative(px[j] - py[j]) }
                        } else {
                            for j in r { d[j] = sign * s * derivative(px[j] - py[j]) }
                        }
                    }
                }
            }
        }
    }
    return out
}

/// KL(N(mean, exp(logvar)) ‖ N(0, I)) per sample: 0.5 Σ (μ² + σ² − 1 − log σ²) over
/// every axis but the first. mean, logvar: [N, ...] → [N].
public func klDiagonalGaussian(mean: Tensor, logvar: Tensor) -> Tensor {
    precondition(mean.shape == logvar.shape && mean.rank >= 1, "klDiagonalGaussian: mean \(mean.shape) and logvar \(logvar.shape) differ")
    let n = mean.shape[0], per = mean.count / max(n, 1)
    let pm = mean.pointer, pl = logvar.pointer
    let out = Tensor(uninitialized: [n])
    for s in 0..<n {
        var acc = 0.0
        for j in (s * per)..<((s + 1) * per) { acc += Double(pm[j] * pm[j] + fastExp(pl[j]) - 1 - pl[j]) }
        out.pointer[s] = Float(0.5 * acc)
    }
    if Tape.needsGrad(mean, logvar) {
        Tape.record(out, inputs: [mean, logvar]) { g in
            let pg = g.pointer
            if mean.requiresGrad {
                mean.withGradient { d, accumulate in
                    for j in 0..<(n * per) { let v = pg[j / per] * pm[j]; if accumulate { d[j] += v } else { d[j] = v } }
                }
            }
            if logvar.requiresGrad {
                logvar.withGradient { d, accumulate in
                    for j in 0..<(n * per) {
                        let v = pg[j / per] * 0.5 * (fastExp(pl[j]) - 1)
                        if accumulate { d[j] += v } else { d[j] = v }
                    }
                }
            }
        }
    }
    return out
}

extension Tensor {
    /// Elementwise clamp to [lo, hi]; the gradient passes where lo < x < hi.
    public func clamped(min lo: Float, max hi: Float) -> Tensor {
        let x = self
        let out = Tensor(uninitialized: shape)
        let px = pointer, po = out.pointer
        for i in 0..<count { po[i] = Swift.min(Swift.max(px[i], lo), hi) }
        if Tape.needsGrad(x) {
            Tape.record(out, inputs: [x]) { g in
                let pg = g.pointer
                x.withGradient { d, accumulate in
                    for i in 0..<x.count {
                        let v: Float = px[i] > lo && px[i] < hi ? pg[i] : 0
                        if accumulate { d[i] += v } else { d[i] = v }
                    }
                }
            }
        }
        return out
    }
}

/// Cross-entropy of each row of `logits` [N, K] against the class `targets[n]`:
/// logsumexp(row) − row[target] → [N]. The backward is softmax(row) − onehot(target),
/// computed from the row itself, so no probability is ever logged (a row whose target
/// has underflowed to probability 0 still gives a finite loss and gradient).
public func crossEntropy(_ logits: Tensor, targets: [Int]) -> Tensor {
    precondition(logits.rank == 2 && logits.shape[0] == targets.count, "crossEntropy: logits \(logits.shape) for \(targets.count) targets")
    let (n, k) = (logits.shape[0], logits.shape[1]), px = logits.pointer
    precondition(targets.allSatisfy { (0..<k).contains($0) }, "crossEntropy: a target outside 0..<\(k)")
    let out = Tensor(uninitialized: [n])
    var maxima = [Float](repeating: 0, count: n), sums = [Double](repeating: 0, count: n)
    for r in 0..<n {
        let row = px + r * k
        var m = -Float.infinity
        for j in 0..<k { m = max(m, row[j]) }
        var s = 0.0
        for j in 0..<k { s += Double(Foundation.exp(row[j] - m)) }
        (maxima[r], sums[r]) = (m, s)
        out.pointer[r] = Float(Double(m) + Foundation.log(s) - Double(row[targets[r]]))
    }
    if Tape.needsGrad(logits) {
        Tape.record(out, inputs: [logits]) { g in
            logits.withGradient { d, accumulate in
                for r in 0..<n {
                    let row = px + r * k, gr = g.pointer[r]
                    for j in 0..<k {
                        let p = Float(Double(Foundation.exp(row[j] - maxima[r])) / sums[r])
                        let v = gr * (p - (j == targets[r] ? 1 : 0))
                        if accumulate { d[r * k + j] += v } else { d[r * k + j] = v }
                    }
                }
            }
        }
    }
    return out
}
