import TensorEngine

/// Outcome of a gradient check: the worst relative error seen and where.
public struct GradCheckReport: CustomStringConvertible {
    public var worstError: Double = 0
    public var worstWhere = ""
    public var description: String { "worst relative error \(worstError) at \(worstWhere)" }

    /// Records |analytic − numeric| / max(|analytic|, |numeric|, scale).
    mutating func record(_ analytic: Double, _ numeric: Double, scale: Double, _ place: @autoclosure () -> String) {
        let err = abs(analytic - numeric) / max(abs(analytic), abs(numeric), scale)
        if err > worstError {
            worstError = err
            worstWhere = "\(place()): analytic \(analytic), numeric \(numeric)"
        }
    }
}

/// Σ r ⊙ y in Double.
func projection(_ y: Tensor, _ r: Tensor) -> Double {
    var s = 0.0
    for i in 0..<y.count { s += Double(y.pointer[i]) * Double(r.pointer[i]) }
    return s
}

/// Checks the tape's gradient of L = Σ r ⊙ f(inputs), r a fixed random projection,
/// against central differences along `directions` random directions d, with L
/// accumulated in Double. Richardson extrapolation of the differences at h and h/2,
/// (4·D(h/2) − D(h)) / 3, cancels the O(h²) truncation error. The error of each
/// directional derivative Σ g·d is relative to Σ |g·d|: when the terms cancel, float32
/// rounding is measured against their size rather than against a tiny sum.
public func gradCheck(_ inputs: [Tensor], seed: UInt64 = 7, directions: Int = 4, step h: Float = 1e-2,
                      _ f: ([Tensor]) -> Tensor) -> GradCheckReport {
    for x in inputs { x.requiresGrad = true; x.grad = nil }
    let y = f(inputs)
    let r = Tensor.randomNormal(y.shape, stream: RandomStream(seed: seed, stream: 1))
    y.backward(gradient: r)
    let analyticGrads = inputs.map { $0.grad ?? Tensor(zeros: $0.shape) }
    var report = GradCheckReport()
    for k in 0..<directions {
        let ds = inputs.enumerated().map { i, x in
            Tensor.randomNormal(x.shape, stream: RandomStream(seed: seed, stream: UInt64(100 + 10 * k + i)))
        }
        var analytic = 0.0, magnitude = 0.0
        for (g, d) in zip(analyticGrads, ds) {
            analytic += projection(g, d)
            for i in 0..<g.count { magnitude += abs(Double(g.pointer[i]) * Double(d.pointer[i])) }
        }
        let numeric = withoutGradient { () -> Double in
            func difference(_ h: Float) -> Double {
                let plus = zip(inputs, ds).map { x, d in perturbed(x, d, h) }
                let minus = zip(inputs, ds).map { x, d in perturbed(x, d, -h) }
                return (projection(f(plus), r) - projection(f(minus), r)) / (2 * Double(h))
            }
            return (4 * difference(h / 2) - difference(h)) / 3
        }
        report.record(analytic, numeric, scale: magnitude, "direction \(k)")
    }
    return report
}

/// `gradCheck` for tensors that `f` reads itself (a model's parameters): they are
/// perturbed in place along random directions and restored afterwards.
public func gradCheckInPlace(_ tensors: [Tensor], seed: UInt64 = 7, directions: Int = 4, step h: Float = 1e-2,
                             _ f: () -> Tensor) -> GradCheckReport {
    let saved = tensors.map { $0.detached() }
    func restore() { for (t, s) in zip(tensors, saved) { t.pointer.update(from: s.pointer, count: t.count) } }
    return gradCheck(tensors, seed: seed, directions: directions, step: h) { perturbed in
        for (t, p) in zip(tensors, perturbed) where t !== p { t.pointer.update(from: p.pointer, count: t.count) }
        defer { if zip(tensors, perturbed).contains(where: { $0 !== $1 }) { restore() } }
        return f()
    }
}

/// Checks every entry of the Jacobian of f (all outputs × all input elements):
/// row i by backward with the one-hot gradient e_i, column j by central
/// differences on input element j. For tiny shapes only.
public func jacobianCheck(_ inputs: [Tensor], step h: Float = 1e-2, floor: Double = 1e-2,
                          _ f: ([Tensor]) -> Tensor) -> GradCheckReport {
    let outputCount = withoutGradient { f(inputs).count }
    precondition(outputCount * inputs.map(\.count).reduce(0, +) <= 20_000, "jacobianCheck is for tiny shapes")
    var analytic: [[Tensor]] = []      // [output][input]
    for i in 0..<outputCount {
        for x in inputs { x.requiresGrad = true; x.grad = nil }
        let y = f(inputs)
        let seed = Tensor(zeros: y.shape)
        seed.pointer[i] = 1
        y.backward(gradient: seed)
        analytic.append(inputs.map { $0.grad ?? Tensor(zeros: $0.shape) })
    }
    var report = GradCheckReport()
    withoutGradient {
        for (xi, x) in inputs.enumerated() {
            for j in 0..<x.count {
                let saved = x.pointer[j]
                x.pointer[j] = saved + h
                let plus = f(inputs).scalars
                x.pointer[j] = saved - h
                let minus = f(inputs).scalars
                x.pointer[j] = saved
                for i in 0..<outputCount {
                    let numeric = (Double(plus[i]) - Double(minus[i])) / (2 * Double(h))
                    report.record(Double(analytic[i][xi].pointer[j]), numeric, scale: floor,
                                  "d output[\(i)] / d input\(xi)[\(j)]")
                }
            }
        }
    }
    return report
}

private func perturbed(_ x: Tensor, _ d: Tensor, _ h: Float) -> Tensor {
    let t = Tensor(uninitialized: x.shape)
    for i in 0..<x.count { t.pointer[i] = x.pointer[i] + h * d.pointer[i] }
    return t
}
