import Foundation

/// GroupNorm over NHWC activations and LayerNorm over the last axis. Statistics are
/// kept from the forward pass for the backward; both use
///   dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)),  dx̂ = dy ⊙ γ,
/// with means over the normalised group (or row).

/// GroupNorm: x [N, H, W, C] split into `groups` groups of C/groups channels, each
/// normalised over (H, W, its channels); then y = x̂ · weight[c] + bias[c]. With
/// `thenSiLU` the result is SiLU(y) in the same pass (the ResBlocks' norm-then-SiLU):
/// y is never stored, and the backward recomputes it from x and the statistics.
public func groupNorm(_ x: Tensor, groups: Int, weight: Tensor, bias: Tensor, eps: Float = 1e-6,
                      thenSiLU: Bool = false) -> Tensor {
    precondition(x.rank == 4, "groupNorm: input \(x.shape) is not [N, H, W, C]")
    let (n, hw, c) = (x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
    precondition(groups > 0 && c % groups == 0, "groupNorm: \(c) channels (input \(x.shape)) do not split into \(groups) groups")
    precondition(weight.shape == [c] && bias.shape == [c], "groupNorm: weight \(weight.shape) / bias \(bias.shape) do not match \(c) channels")
    let cg = c / groups, count = Float(hw * cg)
    let mean = Tensor(uninitialized: [n, groups]), rstd = Tensor(uninitialized: [n, groups])
    let y = Tensor(uninitialized: x.shape)
    let px = x.pointer, pm = mean.pointer, pr = rstd.pointer, pw = weight.pointer, pb = bias.pointer
    let apply = GroupNormApply(x: px, weight: pw, bias: pb, mean: pm, rstd: pr, hw: hw, c: c, groups: groups, thenSiLU: thenSiLU)
    parallelFor(n) { samples in
        var sums = [Float](repeating: 0, count: c), shifts = sums
        for s in samples {
            let xs = px + s * hw * c
            channelSums(xs, hw, c, into: &sums, shift: nil)
            for g in 0..<groups { pm[s * groups + g] = sums[(g * cg)..<((g + 1) * cg)].reduce(0, +) / count }
            for ch in 0..<c { shifts[ch] = pm[s * groups + ch / cg] }
            channelSums(xs, hw, c, into: &sums, shift: shifts, squared: true)   // two-pass variance
            for g in 0..<groups {
                let v = sums[(g * cg)..<((g + 1) * cg)].reduce(0, +) / count
                pr[s * groups + g] = 1 / sqrtf(v + eps)
            }
            apply(sample: s, into: y.pointer)
        }
    }
    if Tape.needsGrad(x, weight, bias), Engine.options.convInput == .recompute {
        // A conv's backward may make y again from what this op keeps anyway, instead of keeping y.
        y.remake = { [x, weight, bias, mean, rstd] in
            withExtendedLifetime((x, weight, bias, mean, rstd)) {
                let y = Tensor(uninitialized: x.shape)
                parallelFor(n) { samples in for s in samples { apply(sample: s, into: y.pointer) } }
                return y
            }
        }
    }
    if Tape.needsGrad(x, weight, bias) {
        Tape.record(y, inputs: [x, weight, bias]) { dy in
            let pg = dy.pointer, pm = mean.pointer, pr = rstd.pointer   // the closure keeps the statistics alive
            // Per sample: channel sums of dy and dy·x, then per-channel coefficients
            // dx = dy·A[c] + x·B[c] + C[c] (derivation in the file header).
            let sdy = Tensor(uninitialized: [n, c]), sdyx = Tensor(uninitialized: [n, c])
            let dxTensor = x.requiresGrad ? Tensor(uninitialized: x.shape) : nil
            parallelFor(n) { samples in
                var a = [Float](repeating: 0, count: c), b = a, k = a, t1 = a, t2 = a
                // With SiLU: the gradient at the norm's output, dy ⊙ SiLU'(y), one sample at a time.
                let dNorm = UnsafeMutablePointer<Float>.allocate(capacity: thenSiLU ? hw * c : 0)
                defer { dNorm.deallocate() }
                for s in samples {
                    let xs = px + s * hw * c
                    var gs = pg + s * hw * c
                    if thenSiLU {
                        apply.coefficients(sample: s, scale: &a, shift: &b)
                        let f = SiLU()
                        for p in 0..<hw {
                            let xi = xs + p * c, gi = gs + p * c, di = dNorm + p * c
                            for ch in 0..<c { di[ch] = gi[ch] * f.derivative(xi[ch] * a[ch] + b[ch], 0) }
                        }
                        gs = dNorm
                    }
                    channelSums(gs, hw, c, into: &t1, shift: nil)
                    channelDotSums(gs, xs, hw, c, into: &t2)
                    (sdy.pointer + s * c).update(from: t1, count: c)
                    (sdyx.pointer + s * c).update(from: t2, count: c)
                    guard let dxTensor else { continue }
                    for g in 0..<groups {
                        let mu = pm[s * groups + g], r = pr[s * groups + g]
                        var m1: Float = 0, m2: Float = 0
                        for ch in (g * cg)..<((g + 1) * cg) {
                            m1 += pw[ch] * t1[ch]
                            m2 += pw[ch] * (t2[ch] - mu * t1[ch]) * r
                        }
                        m1 /= count; m2 /= count
                        for ch in (g * cg)..<((g + 1) * cg) {
                            a[ch] = r * pw[ch]
                            b[ch] = -r * r * m2
                            k[ch] = r * (mu * r * m2 - m1)
                        }
                    }
                    let dxs = dxTensor.pointer + s * hw * c
                    for p in 0..<hw {
                        let xi = xs + p * c, gi = gs + p * c, di = dxs + p * c
                        for ch in 0..<c { di[ch] = gi[ch] * a[ch] + xi[ch] * b[ch] + k[ch] }
                    }
                }
            }
            if let dxTensor { x.accumulateGradient(dxTensor) }
            if weight.requiresGrad || bias.requiresGrad {
                let dw = Tensor(zeros: [c]), db = Tensor(zeros: [c])
                for s in 0..<n {
                    for ch in 0..<c {
                        let g = s * groups + ch / cg
                        dw.pointer[ch] += (sdyx.pointer[s * c + ch] - pm[g] * sdy.pointer[s * c + ch]) * pr[g]
                        db.pointer[ch] += sdy.pointer[s * c + ch]
                    }
                }
                weight.accumulateGradient(dw)
                bias.accumulateGradient(db)
            }
        }
    }
    return y
}

/// sums[c] = Σ_p v[p, c] (or Σ_p (v[p, c] − shift[c])² when `squared`).
@inline(__always)
private func channelSums(_ v: UnsafeMutablePointer<Float>, _ positions: Int, _ c: Int, into sums: inout [Float],
                         shift: [Float]?, squared: Bool = false) {
    sums.withUnsafeMutableBufferPointer { s in
        for ch in 0..<c { s[ch] = 0 }
        if let shift {
            shift.withUnsafeBufferPointer { m in
                for p in 0..<positions { let row = v + p * c; for ch in 0..<c { let d = row[ch] - m[ch]; s[ch] += d * d } }
            }
        } else {
            for p in 0..<positions { let row = v + p * c; for ch in 0..<c { s[ch] += row[ch] } }
        }
    }
}

/// sums[c] = Σ_p u[p, c] · v[p, c].
@inline(__always)
private func channelDotSums(_ u: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>, _ positions: Int, _ c: Int,
                            into sums: inout [Float]) {
    sums.withUnsafeMutableBufferPointer { s in
        for ch in 0..<c { s[ch] = 0 }
        for p in 0..<positions { let a = u + p * c, b = v + p * c; for ch in 0..<c { s[ch] += a[ch] * b[ch] } }
    }
}

/// y = x·scale[c] + shift[c] for one sample, scale and shift from its group's
/// statistics, then SiLU if asked: the forward's output, and the same values again when
/// a backward makes them anew.
private struct GroupNormApply {
    let x, weight, bias, mean, rstd: UnsafeMutablePointer<Float>
    let hw, c, groups: Int
    let thenSiLU: Bool

    /// The per-channel scale and shift of sample `s`.
    func coefficients(sample s: Int, scale: inout [Float], shift: inout [Float]) {
        let cg = c / groups
        for ch in 0..<c {
            let g = s * groups + ch / cg
            scale[ch] = weight[ch] * rstd[g]
            shift[ch] = bias[ch] - mean[g] * scale[ch]
        }
    }

    func callAsFunction(sample s: Int, into y: UnsafeMutablePointer<Float>) {
        var scale = [Float](repeating: 0, count: c), shift = scale
        coefficients(sample: s, scale: &scale, shift: &shift)
        let xs = x + s * hw * c, ys = y + s * hw * c, c = c
        scale.withUnsafeBufferPointer { a in shift.withUnsafeBufferPointer { b in
            if thenSiLU {
                let f = SiLU()
                for p in 0..<hw { let xi = xs + p * c, yi = ys + p * c; for ch in 0..<c { yi[ch] = f.value(xi[ch] * a[ch] + b[ch]) } }
            } else {
                for p in 0..<hw { let xi = xs + p * c, yi = ys + p * c; for ch in 0..<c { yi[ch] = xi[ch] * a[ch] + b[ch] } }
            }
        } }
    }
}

/// LayerNorm over the last axis: y = (x − mean) / sqrt(var + eps) · weight + bias.
public func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, eps: Float = 1e-5) -> Tensor {
    let d = x.shape.last ?? 0
    precondition(x.rank >= 1 && weight.shape == [d] && bias.shape == [d],
                 "layerNorm: input \(x.shape) does not match weight \(weight.shape) / bias \(bias.shape)")
    let rows = x.count / max(d, 1)
    let y = Tensor(uninitialized: x.shape)
    let mean = Tensor(uninitialized: [rows]), rstd = Tensor(uninitialized: [rows])
    let px = x.pointer, py = y.pointer, pw = weight.pointer, pb = bias.pointer, pm = mean.pointer, pr = rstd.pointer
    parallelFor(rows, grain: 64) { range in
        for r in range {
            let xi = px + r * d, yi = py + r * d
            let mu = rowSum(xi, d) / Float(d)
            let rs = 1 / sqrtf(rowSquaredDeviation(xi, d, from: mu) / Float(d) + eps)
            pm[r] = mu; pr[r] = rs
            for j in 0..<d { yi[j] = (xi[j] - mu) * rs * pw[j] + pb[j] }
        }
    }
    if Tape.needsGrad(x, weight, bias) {
        Tape.record(y, inputs: [x, weight, bias]) { dy in
            let pg = dy.pointer, pm = mean.pointer, pr = rstd.pointer   // the closure keeps the statistics alive
            if x.requiresGrad {
                x.withGradient { dx, accumulate in
                    parallelFor(rows, grain: 64) { range in
                        for r in range {
                            let xi = px + r * d, gi = pg + r * d, di = dx + r * d, mu = pm[r], rs = pr[r]
                            // mean(dx̂) and mean(dx̂ ⊙ x̂) with dx̂ = dy ⊙ γ, x̂ = (x − μ)·rstd
                            let sumDh = rowDot(gi, pw, d)
                            let m2 = (rowDot3(gi, pw, xi, d) - mu * sumDh) * rs / Float(d)
                            let m1 = sumDh / Float(d)
                            for j in 0..<d {
                                let v = rs * (gi[j] * pw[j] - m1 - (xi[j] - mu) * rs * m2)
                                if accumulate { di[j] += v } else { di[j] = v }
                            }
                        }
                    }
                }
            }
            if weight.requiresGrad || bias.requiresGrad {
                let dw = Tensor(zeros: [d]), db = Tensor(zeros: [d])
                let a = dw.pointer, b = db.pointer
                for r in 0..<rows {
                    let xi = px + r * d, gi = pg + r * d, mu = pm[r], rs = pr[r]
                    for j in 0..<d { a[j] += gi[j] * (xi[j] - mu) * rs; b[j] += gi[j] }
                }
                weight.accumulateGradient(dw)
                bias.accumulateGradient(db)
            }
        }
    }
    return y
}
