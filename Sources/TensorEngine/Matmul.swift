/// Matrix products through oneDNN: plain, batched, and the linear layer.

/// a · b for a: [..., M, K] with b: [K, N] (shared by every leading index), or
/// a: [B, M, K] with b: [B, K, N] (batched). With `transposeA` a holds [.., K, M];
/// with `transposeB` b holds [N, K] or [B, N, K]. Result [..., M, N].
public func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
    product(a, b, transposeA: transposeA, transposeB: transposeB, bias: nil)
}

/// `matmul`, plus a bias [N] added to every row inside the same oneDNN call (for `linear`).
private func product(_ a: Tensor, _ b: Tensor, transposeA: Bool, transposeB: Bool, bias: Tensor?) -> Tensor {
    precondition(a.rank >= 2 && (b.rank == 2 || b.rank == a.rank),
                 "matmul: shapes \(a.shape) and \(b.shape) are not [.., M, K] x [K, N] or batched")
    let batched = b.rank > 2
    precondition(batched || !transposeA || a.rank == 2,
                 "matmul: transposeA with a shared b needs a 2-D a, got \(a.shape) x \(b.shape)")
    let (m, k) = transposeA ? (a.shape[a.rank - 1], a.shape[a.rank - 2]) : (a.shape[a.rank - 2], a.shape[a.rank - 1])
    let (kb, n) = transposeB ? (b.shape[b.rank - 1], b.shape[b.rank - 2]) : (b.shape[b.rank - 2], b.shape[b.rank - 1])
    let lead = Array(a.shape.dropLast(2))
    precondition(k == kb, "matmul: inner dimensions differ: \(a.shape)\(transposeA ? "ᵀ" : "") x \(b.shape)\(transposeB ? "ᵀ" : "")")
    precondition(!batched || Array(b.shape.dropLast(2)) == lead, "matmul: batch dimensions differ: \(a.shape) x \(b.shape)")
    // A shared b folds the leading dimensions of a into its rows.
    let (batch, rows) = batched ? (lead.reduce(1, *), m) : (1, lead.reduce(1, *) * m)
    let out = Tensor(uninitialized: lead + [m, n])
    precondition(bias == nil || (!batched && bias!.shape == [n]), "matmul: bias \(bias!.shape) does not match \(n) columns")
    let multiply = Multiplier(Engine.options.precision)
    // The backward reads the operands as the forward's product did: under bf16 it keeps
    // their bfloat16 copies (half the bytes) instead of a and b, and rounds nothing again.
    let opA = multiply.operand(a), opB = multiply.operand(b)
    multiply(MatmulGeometry(batch: batch, m: rows, k: k, n: n, transposeA: transposeA, transposeB: transposeB,
                            accumulate: false, bias: bias != nil), opA, opB, out.pointer, bias: bias?.pointer)
    if Tape.needsGrad(a, b, bias) {
        // dA reads only B and dB only A: an operand no gradient reads is not kept.
        let readA = b.requiresGrad ? opA : nil, readB = a.requiresGrad ? opB : nil
        Tape.record(out, inputs: [a, b, bias]) { [sa = a.slot, sb = b.slot, sBias = bias?.slot] dc in
            if let sBias, sBias.requiresGrad { sBias.accumulate(columnSums(dc.pointer, rows: rows, columns: n)) }
            // C = op(A)·op(B)  ⇒  d op(A) = dC·op(B)ᵀ,  d op(B) = op(A)ᵀ·dC.
            let dcOperand = multiply.operand(dc)
            if let opB = readB {
                sa.withGradient { da, accumulate in
                    if transposeA {   // dA, stored K×M, = op(B)·dCᵀ
                        multiply(MatmulGeometry(batch: batch, m: k, k: n, n: rows, transposeA: transposeB, transposeB: true,
                                                accumulate: accumulate), opB, dcOperand, da)
                    } else {          // dA, stored M×K, = dC·op(B)ᵀ
                        multiply(MatmulGeometry(batch: batch, m: rows, k: n, n: k, transposeA: false, transposeB: !transposeB,
                                                accumulate: accumulate), dcOperand, opB, da)
                    }
                }
            }
            if let opA = readA {
                sb.withGradient { db, accumulate in
                    if transposeB {   // dB, stored N×K, = dCᵀ·op(A)
                        multiply(MatmulGeometry(batch: batch, m: n, k: rows, n: k, transposeA: true, transposeB: transposeA,
                                                accumulate: accumulate), dcOperand, opA, db)
                    } else {          // dB, stored K×N, = op(A)ᵀ·dC
                        multiply(MatmulGeometry(batch: batch, m: k, k: rows, n: n, transposeA: !transposeA, transposeB: false,
                                                accumulate: accumulate), opA, dcOperand, db)
                    }
                }
            }
        }
    }
    return out
}

/// y = x · Wᵀ + b for x: [..., in], weight: [out, in] (PyTorch layout), bias: [out].
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil) -> Tensor {
    precondition(weight.rank == 2 && x.shape.last == weight.shape[1],
                 "linear: input \(x.shape) does not match weight \(weight.shape) ([out, in])")
    precondition(bias == nil || bias!.shape == [weight.shape[0]], "linear: bias \(bias!.shape) does not match weight \(weight.shape)")
    return product(x, weight, transposeA: false, transposeB: true, bias: bias)
}

/// Runs products of float32 tensors in one precision: as they are, or through
/// bfloat16 copies. A backward pass uses its forward's, whatever the engine's options
/// are by then.
private struct Multiplier {
    let precision: Precision
    init(_ precision: Precision) { self.precision = precision }

    /// A tensor as the product reads it: itself, or its bfloat16 copy. Holding an
    /// operand keeps what `pointer` points into alive.
    struct Operand {
        let pointer: UnsafeMutableRawPointer
        private let owner: AnyObject

        init(_ t: Tensor) { (pointer, owner) = (UnsafeMutableRawPointer(t.pointer), t) }
        init(_ copy: Scratch) { (pointer, owner) = (copy.raw, copy) }
    }

    func operand(_ t: Tensor) -> Operand {
        precision == .bf16 ? Operand(Scratch(roundingToBF16: t.pointer, count: t.count)) : Operand(t)
    }

    func callAsFunction(_ g: MatmulGeometry, _ a: Operand, _ b: Operand, _ c: UnsafeMutablePointer<Float>,
                        bias: UnsafeMutablePointer<Float>? = nil) {
        var g = g
        g.operands = precision
        withExtendedLifetime((a, b)) { DNNL.matmul(g, a.pointer, b.pointer, c, bias: bias) }
    }
}

/// Σ over rows of a rows × columns matrix → [columns], threads splitting the columns.
private func columnSums(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int) -> Tensor {
    let sums = Tensor(zeros: [columns])
    let s = sums.pointer
    parallelFor(columns, grain: 64) { range in
        for r in 0..<rows { let row = p + r * columns; for j in range { s[j] += row[j] } }
    }
    return sums
}
