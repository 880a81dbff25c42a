/// Softmax along the last axis and scaled dot-product attention built on it.

/// Which keys each sample of a batch may attend to (a key-padding mask): `valid`
/// holds `samples × keys` flags, row-major. Every sample keeps at least one key.
public struct KeyMask: Sendable, Equatable {
    public let samples: Int, keys: Int
    public let valid: [Bool]

    public init(samples: Int, keys: Int, valid: [Bool]) {
        precondition(valid.count == samples * keys, "KeyMask: \(valid.count) flags for \(samples) × \(keys)")
        precondition((0..<samples).allSatisfy { n in valid[(n * keys)..<((n + 1) * keys)].contains(true) },
                     "KeyMask: a sample with no valid key")
        (self.samples, self.keys, self.valid) = (samples, keys, valid)
    }

    /// The first `lengths[n]` keys of sample n are valid (tokens, then padding).
    public init(lengths: [Int], keys: Int) {
        self.init(samples: lengths.count, keys: keys, valid: lengths.flatMap { l in (0..<keys).map { $0 < l } })
    }

    /// The masks of two batches, one after the other.
    public static func + (a: KeyMask, b: KeyMask) -> KeyMask {
        precondition(a.keys == b.keys, "KeyMask: \(a.keys) and \(b.keys) keys")
        return KeyMask(samples: a.samples + b.samples, keys: a.keys, valid: a.valid + b.valid)
    }
}

/// y = exp(s·(x − max)) / Σ exp(s·(x − max)) along the last axis, the softmax of s·x for
/// a `scale` s > 0 (attention's 1/√D, without a pass of its own); dx = s · y ⊙ (dy − Σ dy ⊙ y).
/// With a key mask, x is [B, T, S] with B = samples × groups (heads of a sample
/// adjacent) and S = keys: masked keys get y = 0 exactly (and so no gradient).
/// `causal`: x is [B, T, T] and query t sees keys 0...t only (an autoregressive decoder).
public func softmax(_ x: Tensor, scale: Float = 1, keyMask: KeyMask? = nil, causal: Bool = false) -> Tensor {
    precondition(x.rank >= 1, "softmax: needs at least one axis, got \(x.shape)")
    precondition(scale > 0, "softmax: scale \(scale) is not positive")
    let d = x.shape.last!, rows = x.count / max(d, 1)
    let y = Tensor(uninitialized: x.shape)
    let px = x.pointer, py = y.pointer
    if keyMask != nil || causal {
        if let mask = keyMask {
            precondition(x.rank == 3 && d == mask.keys && x.shape[0] % mask.samples == 0,
                         "softmax: scores \(x.shape) do not fit a mask of \(mask.samples) × \(mask.keys)")
        }
        precondition(!causal || (x.rank == 3 && x.shape[1] == d), "softmax: causal scores must be [B, T, T], got \(x.shape)")
        let mask = keyMask ?? KeyMask(samples: 1, keys: d, valid: [Bool](repeating: true, count: d))
        let rowsPerSample = rows / mask.samples, queries = x.rank == 3 ? x.shape[1] : 1
        mask.valid.withUnsafeBufferPointer { valid in
            parallelFor(rows, grain: 64) { range in
                for r in range {
                    let xi = px + r * d, yi = py + r * d, vi = valid.baseAddress! + (r / rowsPerSample) * d
                    let visible = causal ? r % queries + 1 : d   // keys past the query are never seen
                    var m = -Float.infinity
                    for j in 0..<visible where vi[j] { m = max(m, xi[j]) }
                    var sum: Float = 0
                    for j in 0..<d { yi[j] = j < visible && vi[j] ? fastExp(scale * (xi[j] - m)) : 0; sum += yi[j] }
                    // A causal row whose visible keys are all masked (padding before a real
                    // key) has no weight anywhere: it stays zero.
                    let inv = sum > 0 ? 1 / sum : 0
                    for j in 0..<d { yi[j] *= inv }
                }
            }
        }
    } else {
        parallelFor(rows, grain: 64) { range in
            for r in range {
                let xi = px + r * d, yi = py + r * d
                let m = rowMax(xi, d)
                for j in 0..<d { yi[j] = fastExp(scale * (xi[j] - m)) }
                let inv = 1 / rowSum(yi, d)
                for j in 0..<d { yi[j] *= inv }
            }
        }
    }
    if Tape.needsGrad(x) {
        Tape.record(y, inputs: [x]) { [slot = x.slot, y] dy in   // the backward reads y, not x
            let pg = dy.pointer, py = y.pointer
            slot.withGradient { dx, accumulate in
                parallelFor(rows, grain: 64) { range in
                    for r in range {
                        let yi = py + r * d, gi = pg + r * d, di = dx + r * d
                        let s = rowDot(gi, yi, d)
                        if accumulate {
                            for j in 0..<d { di[j] += scale * yi[j] * (gi[j] - s) }
                        } else {
                            for j in 0..<d { di[j] = scale * yi[j] * (gi[j] - s) }
                        }
                    }
                }
            }
        }
    }
    return y
}

/// softmax(q·kᵀ · scale)·v for q: [B, Tq, D], k: [B, Tk, D], v: [B, Tk, Dv] → [B, Tq, Dv].
/// `scale` defaults to 1/√D. Composite of matmul and softmax (which applies the scale); with a key mask
/// (B a multiple of its samples), no query attends to a masked key; `causal`, no query
/// attends to a later key.
public func attention(query q: Tensor, key k: Tensor, value v: Tensor, scale: Float? = nil, keyMask: KeyMask? = nil,
                      causal: Bool = false) -> Tensor {
    precondition(q.rank == 3 && k.rank == 3 && v.rank == 3 && q.shape[0] == k.shape[0] && k.shape[0] == v.shape[0]
                 && q.shape[2] == k.shape[2] && k.shape[1] == v.shape[1],
                 "attention: query \(q.shape), key \(k.shape), value \(v.shape) do not match")
    let s = scale ?? 1 / Float(q.shape[2]).squareRoot()
    let weights = softmax(matmul(q, k, transposeB: true), scale: s, keyMask: keyMask, causal: causal)
    return matmul(weights, v)
}
