/// Softmax along the last axis and scaled dot-product attention built on it.

/// y = exp(x − max) / Σ exp(x − max) along the last axis; dx = y ⊙ (dy − Σ dy ⊙ y).
public func softmax(_ x: Tensor) -> Tensor {
    precondition(x.rank >= 1, "softmax: needs at least one axis, got \(x.shape)")
    let d = x.shape.last!, rows = x.count / max(d, 1)
    let y = Tensor(uninitialized: x.shape)
    let px = x.pointer, py = y.pointer
    parallelFor(rows, grain: 64) { range in
        for r in range {
            let xi = px + r * d, yi = py + r * d
            let m = rowMax(xi, d)
            for j in 0..<d { yi[j] = fastExp(xi[j] - m) }
            let inv = 1 / rowSum(yi, d)
            for j in 0..<d { yi[j] *= inv }
        }
    }
    if Tape.needsGrad(x) {
        Tape.record(y, inputs: [x]) { dy in
            let pg = dy.pointer
            x.withGradient { dx, accumulate in
                parallelFor(rows, grain: 64) { range in
                    for r in range {
                        let yi = py + r * d, gi = pg + r * d, di = dx + r * d
                        let s = rowDot(gi, yi, d)
                        if accumulate { for j in 0..<d { di[j] += yi[j] * (gi[j] - s) } } else { for j in 0..<d { di[j] = yi[j] * (gi[j] - s) } }
                    }
                }
            }
        }
    }
    return y
}

/// softmax(q·kᵀ · scale)·v for q: [B, Tq, D], k: [B, Tk, D], v: [B, Tk, Dv] → [B, Tq, Dv].
/// `scale` defaults to 1/√D. Composite of matmul, scale and softmax.
public func attention(query q: Tensor, key k: Tensor, value v: Tensor, scale: Float? = nil) -> Tensor {
    precondition(q.rank == 3 && k.rank == 3 && v.rank == 3 && q.shape[0] == k.shape[0] && k.shape[0] == v.shape[0]
                 && q.shape[2] == k.shape[2] && k.shape[1] == v.shape[1],
                 "attention: query \(q.shape), key \(k.shape), value \(v.shape) do not match")
    let s = scale ?? 1 / Float(q.shape[2]).squareRoot()
    let weights = softmax(matmul(q, k, transposeB: true).scaled(by: s))
    return matmul(weights, v)
}
