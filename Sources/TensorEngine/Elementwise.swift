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

/// dT += Σ_broadcast dOut ⊙ f(other) for operand `t` (which is `a` when `isA`).
/// `factor(g, aValue, bValue)` is the local derivative times g.
@inline(__always)
private func broadcastBackward(_ t: Tensor, isA: Bool, plan: BroadcastPlan, dOut: Tensor,
                               a: Tensor, b: Tensor, _ factor: (Float, Float, Float) -> Float) {
    guard t.requiresGrad else { return }
    let pa = a.pointer, pb = b.pointer, pg = dOut.pointer
    let n = plan.rowLength, ia = plan.aInner, ib = plan.bInner
    let full = t.count == dOut.count
    t.withZeroedGradient { d in
        // Rows of a broadcast operand alias each other, so only a full-size
        // operand is safe to split across threads.
        let rows = plan.rowCount
        func body(_ range: Range<Int>) {
            plan.forEachRow(range) { o, ao, bo in
                let x = pa + ao, y = pb + bo, g = pg + o
                let dst = d + (isA ? ao : bo)
                let inner = isA ? ia : ib
                if inner == 1 {
                    for i in 0..<n { dst[i] += factor(g[i], x[i * ia], y[i * ib]) }
                } else {
                    var s: Float = 0
                    for i in 0..<n { s += factor(g[i], x[i * ia], y[i * ib]) }
                    dst[0] += s
                }
            }
        }
        if full { parallelFor(rows, grain: max(1, 32768 / max(n, 1)), body) } else { body(0..<rows) }
    }
}

/// a + b with broadcasting.
public func + (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "add") { $0 + $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, _ in g }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, _, _ in g }
        }
    }
    return out
}

/// a − b with broadcasting.
public func - (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "sub") { $0 - $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, _ in g }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, _, _ in -g }
        }
    }
    return out
}

/// a ⊙ b with broadcasting.
public func * (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "mul") { $0 * $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, y in g * y }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, x, _ in g * x }
        }
    }
    return out
}

/// a ⊘ b with broadcasting.
public func / (a: Tensor, b: Tensor) -> Tensor {
    let (out, plan) = broadcastMap(a, b, "div") { $0 / $1 }
    if Tape.needsGrad(a, b) {
        Tape.record(out) { g in
            broadcastBackward(a, isA: true, plan: plan, dOut: g, a: a, b: b) { g, _, y in g / y }
            broadcastBackward(b, isA: false, plan: plan, dOut: g, a: a, b: b) { g, x, y in -g * x / (y * y) }
        }
    }
    return out
}

/// y = f(x) elementwise; backward dx += dy ⊙ f'(x, y).
@inline(__always)
private func pointwise(_ x: Tensor, _ f: (Float) -> Float,
                       derivative: @escaping (_ x: Float, _ y: Float) -> Float) -> Tensor {
    let out = Tensor(uninitialized: x.shape)
    let px = x.pointer, py = out.pointer
    parallelFor(x.count, grain: 65536) { r in for i in r { py[i] = f(px[i]) } }
    if Tape.needsGrad(x) {
        Tape.record(out) { g in
            let pg = g.pointer
            x.withGradient { dx, accumulate in
                parallelFor(x.count, grain: 65536) { r in
                    if accumulate {
                        for i in r { dx[i] += pg[i] * derivative(px[i], py[i]) }
                    } else {
                        for i in r { dx[i] = pg[i] * derivative(px[i], py[i]) }
                    }
                }
            }
        }
    }
    return out
}

public prefix func - (x: Tensor) -> Tensor { pointwise(x, { -$0 }, derivative: { _, _ in -1 }) }

extension Tensor {
    /// s · x for a constant s.
    public func scaled(by s: Float) -> Tensor { pointwise(self, { $0 * s }, derivative: { _, _ in s }) }
    /// x + s for a constant s.
    public func adding(_ s: Float) -> Tensor { pointwise(self, { $0 + s }, derivative: { _, _ in 1 }) }
}

public func exp(_ x: Tensor) -> Tensor { pointwise(x, { fastExp($0) }, derivative: { _, y in y }) }
public func log(_ x: Tensor) -> Tensor { pointwise(x, { logf($0) }, derivative: { x, _ in 1 / x }) }
public func sqrt(_ x: Tensor) -> Tensor { pointwise(x, { sqrtf($0) }, derivative: { _, y in 0.5 / y }) }
public func sigmoid(_ x: Tensor) -> Tensor {
    pointwise(x, { 1 / (1 + fastExp(-$0)) }, derivative: { _, y in y * (1 - y) })
}
/// SiLU(x) = x·σ(x); d/dx = σ(x)·(1 + x·(1 − σ(x))).
public func silu(_ x: Tensor) -> Tensor {
    pointwise(x, { $0 / (1 + fastExp(-$0)) }, derivative: { x, _ in
        let s = 1 / (1 + fastExp(-x))
        return s * (1 + x * (1 - s))
    })
}
/// GELU(x) = x·Φ(x) with the exact normal CDF (PyTorch's default); d/dx = Φ(x) + x·φ(x).
public func gelu(_ x: Tensor) -> Tensor {
    pointwise(x, { 0.5 * $0 * (1 + erff($0 * 0.70710678)) }, derivative: { x, _ in
        0.5 * (1 + erff(x * 0.70710678)) + x * 0.39894228 * fastExp(-0.5 * x * x)
    })
}
