import Foundation

/// Binary elementwise ops with broadcasting, unary pointwise ops, and scale.
/// Each backward reduces the output gradient over broadcast dimensions.

/// out[i] = op(a[i], b[i]) over broadcast shapes, rows split across threads.
@inline(__always)
private func broadcastMap(_ a: Tensor, _ b: Tensor, _ name: String,
                          _ op: (Float, Float) -> Float) -> (Tensor, BroadcastPlan) {
    guard let shape = BroadcastPlan.resultShape(a.shape, b.shape) else {
        preconditionFailure("\(name): shapes \(a.shape) and \(b.shape) do not broadcast")
    }
    let plan = BroadcastPlan(outShape: shape, a: a.shape, b: b.shape)
    let out = Tensor(uninitialized: shape)
    let pa = a.pointer, pb = b.pointer, po = out.pointer
    let n = plan.rowLength, ia = plan.aInner, ib = plan.bInner
    parallelFor(plan.rowCount, grain: max(1, 32768 / max(n, 1))) { rows in
        plan.forEachRow(rows) { o, ao, bo in
            let x = pa + ao, y = pb + bo, z = po + o
            switch (ia, ib) {
            case (1, 1): for i in 0..<n { z[i] = op(x[i], y[i]) }
            case (1, 0): let s = y[0]; for i in 0..<n { z[i] = op(x[i], s) }
            case (0, 1): let s = x[0]; for i in 0..<n { z[i] = op(s, y[i]) }
            default: let s = op(x[0], y[0]); for i in 0..<n { z[i] = s }
            }
        }
    }
    return (out, plan)
}

/// dT (+)= Σ_broadcast factor(dOut, a, b) for operand `t` (which is `a` when `isA`).
/// A full-size operand's gradient is written (or added) row by row, split across
/// threads; a broadcast operand's rows alias, so it is zeroed and accumulated serially.
@inline(__always)
private func broadcastBackward(_ t: Tensor, isA: Bool, plan: BroadcastPlan, dOut: Tensor,
                               a: Tensor, b: Tensor, _ factor: (Float, Float, Float) -> Float) {
    guard t.requiresGrad else { return }
    let pa = a.pointer, pb = b.pointer, pg = dOut.pointer
    let n = plan.rowLength, ia = plan.aInner, ib = plan.bInner
    if t.count == dOut.count {
        t.withGradient { d, accumulate in
            parallelFor(plan.rowCount, grain: max(1, 32768 / max(n, 1))) { rows in
                plan.forEachRow(rows) { o, ao, bo in
                    let x = pa + ao, y = pb + bo, g = pg + o, dst = d + (isA ? ao : bo)
                    if accumulate {
                        for i in 0..<n { dst[i] += factor(g[i], x[i * ia], y[i * ib]) }
                    } else {
                        for i in 0..<n { dst[i] = factor(g[i], x[i * ia], y[i * ib]) }
                    }
                }
            }
        }
        return
    }
    t.withZeroedGradient { d in
        plan.forEachRow { o, ao, bo in
            let x = pa + ao, y = pb + bo, g = pg + o
            let dst = d + (isA ? ao : bo)
            if (isA ? ia : ib) == 1 {
                for i in 0..<n { dst[i] += factor(g[i], x[i * ia], y[i * ib]) }
            } else {
                var s: Float = 0
                for i in 0..<n { s += factor(g[i], x[i * ia], y[i * ib]) }
                dst[0] += s
            }
        }
    }
}

/// dT (+)= sign · dOut, summed over the axes `t` is broadcast along: the gradient of
/// a sum or a difference, which reads neither operand, so neither is kept for it.
private func sumBackward(_ t: GradientSlot, isA: Bool, plan: BroadcastPlan, dOut: Tensor, sign: Float) {
    guard t.requiresGrad else { return }
    let pg = dOut.pointer, n = plan.rowLength, inner = isA ? plan.aInner : plan.bInner
    if t.count == dOut.count {   // full size: the same layout as dOut
        t.withGradient { d, accumulate in
            parallelFor(dOut.count, grain: 65536) { r in
                if accumulate { for i in r { d[i] += sign * pg[i] } } else { for i in r { d[i] = sign * pg[i] } }
            }
        }
        return
    }
    t.withZeroedGradient { d in
        plan.forEachRow { o, ao, bo in
            let dst = d + (isA ? ao : bo), g = pg + o
            if inner == 1 {
                for i in 0..<n { dst[i] += sign * g[i] }
            } else {
                var s: Float = 0
                for i in 0..<n { s += g[i] }
                dst[0] += sign * s
            }
        }
    }
}

/// a + b with broadcasting.
public func + (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "add") { $0 + $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out, inputs: [a, b]) { [sa = a.slot, sb = b.slot] g in
            sumBackward(sa, isA: true, plan: plan, dOut: g, sign: 1)
            sumBackward(sb, isA: false, plan: plan, dOut: g, sign: 1)
        }
    }
    return out
}

/// a − b with broadcasting.
public func - (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "sub") { $0 - $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out, inputs: [a, b]) { [sa = a.slot, sb = b.slot] g in
            sumBackward(sa, isA: true, plan: plan, dOut: g, sign: 1)
            sumBackward(sb, isA: false, plan: plan, dOut: g, sign: -1)
        }
    }
    return out
}

/// a ⊙ b with broadcasting.
public func * (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "mul") { $0 * $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out, inputs: [a, b]) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, y in g * y }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, x, _ in g * x }
        }
    }
    return out
}

extension Tensor {
    /// This tensor repeated along its size-1 axes up to `shape` (a broadcast add to
    /// zeros); the backward sums the repeats.
    public func expanded(to shape: [Int]) -> Tensor {
        precondition(BroadcastPlan.resultShape(self.shape, shape) == shape, "expanded: \(self.shape) does not broadcast to \(shape)")
        return self + Tensor(zeros: shape)
    }
}

/// a ⊘ b with broadcasting.
public func / (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "div") { $0 / $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out, inputs: [a, b]) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, y in g / y }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, x, y in -g * x / (y * y) }
        }
    }
    return out
}

/// A pointwise function and its derivative, given x and y = f(x). Ops are generic
/// over it (not closures), so each specialises into a vectorised loop.
protocol PointwiseFunction {
    func value(_ x: Float) -> Float
    /// Reads only the operand `derivativeReads` names; the other argument is a copy of it.
    func derivative(_ x: Float, _ y: Float) -> Float
    /// What the backward keeps: x, y, or nothing (a constant slope).
    static var derivativeReads: PointwiseOperand { get }
}

enum PointwiseOperand { case input, output, neither }

/// y = f(x) elementwise; backward dx (+)= dy ⊙ f'(x, y).
@inline(__always)
private func pointwise<F: PointwiseFunction>(_ x: Tensor, _ f: F) -> Tensor {
    let out = Tensor(uninitialized: x.shape)
    let px = x.pointer, py = out.pointer
    parallelFor(x.count, grain: 65536) { r in for i in r { py[i] = f.value(px[i]) } }
    if Tape.needsGrad(x) {
        let kept: Tensor? = switch F.derivativeReads { case .input: x; case .output: out; case .neither: nil }
        Tape.record(out, inputs: [x]) { [slot = x.slot] g in
            let pg = g.pointer, v = kept?.pointer ?? pg   // the operand f' reads
            slot.withGradient { dx, accumulate in
                parallelFor(slot.count, grain: 65536) { r in
                    if accumulate {
                        for i in r { dx[i] += pg[i] * f.derivative(v[i], v[i]) }
                    } else {
                        for i in r { dx[i] = pg[i] * f.derivative(v[i], v[i]) }
                    }
                }
            }
        }
    }
    return out
}

private struct Affine: PointwiseFunction {       // s·x + c
    static let derivativeReads = PointwiseOperand.neither
    let s: Float, c: Float
    @inline(__always) func value(_ x: Float) -> Float { s * x + c }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { s }
}
private struct Exp: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.output
    @inline(__always) func value(_ x: Float) -> Float { fastExp(x) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { y }
}
private struct Log: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.input
    @inline(__always) func value(_ x: Float) -> Float { logf(x) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { 1 / x }
}
private struct Sqrt: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.output
    @inline(__always) func value(_ x: Float) -> Float { vectorizableSquareRoot(x) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { 0.5 / y }
}
private struct Sigmoid: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.output
    @inline(__always) func value(_ x: Float) -> Float { 1 / (1 + fastExp(-x)) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { y * (1 - y) }
}
/// SiLU(x) = x·σ(x); d/dx = σ(x)·(1 + x·(1 − σ(x))). Also used by the fused GroupNorm.
struct SiLU: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.input
    @inline(__always) func value(_ x: Float) -> Float { x / (1 + fastExp(-x)) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float {
        let s = 1 / (1 + fastExp(-x))
        return s * (1 + x * (1 - s))
    }
}
/// GELU(x) = x·Φ(x) with the exact normal CDF (PyTorch's default); d/dx = Φ(x) + x·φ(x).
private struct GELU: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.input
    @inline(__always) func value(_ x: Float) -> Float { 0.5 * x * (1 + fastErf(x * 0.70710678)) }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { valueAndDerivative(x).derivative }
    /// Both from one erf and one exponential: e^(−(x/√2)²) = e^(−x²/2) is φ(x)·√(2π).
    @inline(__always) func valueAndDerivative(_ x: Float) -> (value: Float, derivative: Float) {
        let (erf, gaussian) = fastErfAndGaussian(x * 0.70710678)
        let cdf = 0.5 * (1 + erf)
        return (x * cdf, cdf + x * 0.39894228 * gaussian)
    }
}

/// GEGLU's gate (Shazeer 2020): h [..., 2D] split along the last axis into a and g,
/// y = a ⊙ GELU(g) [..., D], in one pass with no split copies;
/// backward da = dy ⊙ GELU(g), dg = dy ⊙ a ⊙ GELU'(g).
public func geglu(_ h: Tensor) -> Tensor {
    let width = h.shape.last ?? 0
    precondition(h.rank >= 1 && width % 2 == 0, "geglu: input \(h.shape) does not split in two along its last axis")
    let d = width / 2, rows = h.count / max(width, 1), f = GELU()
    let out = Tensor(uninitialized: Array(h.shape.dropLast()) + [d])
    let ph = h.pointer, py = out.pointer
    parallelFor(rows, grain: max(1, 32768 / max(d, 1))) { r in
        for row in r {
            let a = ph + row * width, g = a + d, y = py + row * d
            for j in 0..<d { y[j] = a[j] * f.value(g[j]) }
        }
    }
    if Tape.needsGrad(h) {
        Tape.record(out, inputs: [h]) { dy in
            let pg = dy.pointer
            h.withGradient { dh, accumulate in
                parallelFor(rows, grain: max(1, 32768 / max(d, 1))) { r in
                    for row in r {
                        let a = ph + row * width, g = a + d, gy = pg + row * d, da = dh + row * width, dg = da + d
                        for j in 0..<d {
                            let (value, slope) = f.valueAndDerivative(g[j])
                            let (toA, toG) = (gy[j] * value, gy[j] * a[j] * slope)
                            if accumulate { da[j] += toA; dg[j] += toG } else { (da[j], dg[j]) = (toA, toG) }
                        }
                    }
                }
            }
        }
    }
    return out
}

/// max(x, 0) for slope 0, else x for x > 0 and slope·x below (LeakyReLU).
private struct LeakyReLU: PointwiseFunction {
    static let derivativeReads = PointwiseOperand.input
    let slope: Float
    @inline(__always) func value(_ x: Float) -> Float { x > 0 ? x : slope * x }
    @inline(__always) func derivative(_ x: Float, _ y: Float) -> Float { x > 0 ? 1 : slope }
}

public prefix func - (x: Tensor) -> Tensor { pointwise(x, Affine(s: -1, c: 0)) }

extension Tensor {
    /// s · x for a constant s.
    public func scaled(by s: Float) -> Tensor { pointwise(self, Affine(s: s, c: 0)) }
    /// x + c for a constant c.
    public func adding(_ c: Float) -> Tensor { pointwise(self, Affine(s: 1, c: c)) }
}

public func exp(_ x: Tensor) -> Tensor { pointwise(x, Exp()) }
public func log(_ x: Tensor) -> Tensor { pointwise(x, Log()) }
public func sqrt(_ x: Tensor) -> Tensor { pointwise(x, Sqrt()) }
public func sigmoid(_ x: Tensor) -> Tensor { pointwise(x, Sigmoid()) }
public func silu(_ x: Tensor) -> Tensor { pointwise(x, SiLU()) }
public func gelu(_ x: Tensor) -> Tensor { pointwise(x, GELU()) }
public func relu(_ x: Tensor) -> Tensor { pointwise(x, LeakyReLU(slope: 0)) }
public func leakyReLU(_ x: Tensor, slope: Float = 0.2) -> Tensor { pointwise(x, LeakyReLU(slope: slope)) }
