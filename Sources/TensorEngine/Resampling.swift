/// Nearest-neighbour upsampling and embedding lookup.

/// Nearest 2× upsampling of x [N, H, W, C] to [N, 2H, 2W, C]; the backward sums
/// each 2×2 block of dy.
public func upsampleNearest2x(_ x: Tensor) -> Tensor {
    precondition(x.rank == 4, "upsampleNearest2x: input \(x.shape) is not [N, H, W, C]")
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let y = Tensor(uninitialized: [n, 2 * h, 2 * w, c])
    upsample(x, into: y)
    if Tape.needsGrad(x), Engine.options.convInput == .recompute {   // a conv after it may keep x (¼ the size) instead
        y.remake = { [x] in
            let y = Tensor(uninitialized: [n, 2 * h, 2 * w, c])
            upsample(x, into: y)
            return y
        }
    }
    if Tape.needsGrad(x) {
        Tape.record(y, inputs: [x]) { [slot = x.slot] dy in
            let pg = dy.pointer
            slot.withGradient { dx, accumulate in
                parallelFor(n * h) { range in
                    for row in range {
                        let d = dx + row * w * c, top = pg + row * 2 * 2 * w * c, bottom = top + 2 * w * c
                        for j in 0..<w {
                            let t0 = top + 2 * j * c, t1 = t0 + c, b0 = bottom + 2 * j * c, b1 = b0 + c, dj = d + j * c
                            if accumulate {
                                for ch in 0..<c { dj[ch] += t0[ch] + t1[ch] + b0[ch] + b1[ch] }
                            } else {
                                for ch in 0..<c { dj[ch] = t0[ch] + t1[ch] + b0[ch] + b1[ch] }
                            }
                        }
                    }
                }
            }
        }
    }
    return y
}

/// 2×2 max pooling with stride 2 of x [N, H, W, C] (H, W even) to [N, H/2, W/2, C]; the
/// backward sends each output's gradient to the first of its block's maxima, as PyTorch does.
public func maxPool2x2(_ x: Tensor) -> Tensor {
    precondition(x.rank == 4 && x.shape[1] % 2 == 0 && x.shape[2] % 2 == 0, "maxPool2x2: input \(x.shape) is not [N, 2h, 2w, C]")
    let (n, h, w, c) = (x.shape[0], x.shape[1] / 2, x.shape[2] / 2, x.shape[3])
    let y = Tensor(uninitialized: [n, h, w, c])
    var winners = [Int32](repeating: 0, count: y.count)   // the input offset of each output's maximum
    let px = x.pointer, py = y.pointer
    winners.withUnsafeMutableBufferPointer { arg in
        let win = arg.baseAddress!
        parallelFor(n * h) { range in
            for row in range {   // row = sample · h + i
                for j in 0..<w {
                    let top = (row * 2 * 2 * w + 2 * j) * c, out = (row * w + j) * c
                    for ch in 0..<c {
                        var best = top + ch
                        for offset in [c, 2 * w * c, 2 * w * c + c] where px[top + offset + ch] > px[best] { best = top + offset + ch }
                        py[out + ch] = px[best]
                        win[out + ch] = Int32(best)
                    }
                }
            }
        }
    }
    if Tape.needsGrad(x) {
        Tape.record(y, inputs: [x]) { [slot = x.slot] dy in
            let pg = dy.pointer
            slot.withGradient { dx, accumulate in
                if !accumulate { dx.update(repeating: 0, count: slot.count) }
                for i in 0..<winners.count { dx[Int(winners[i])] += pg[i] }
            }
        }
    }
    return y
}

/// y = x with every pixel repeated over a 2×2 block.
private func upsample(_ x: Tensor, into y: Tensor) {
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let px = x.pointer, py = y.pointer
    parallelFor(n * h) { range in
        for row in range {   // row = sample · h + i
            let src = px + row * w * c
            for a in 0..<2 {
                let dst = py + (row * 2 + a) * 2 * w * c
                for j in 0..<w {
                    (dst + 2 * j * c).update(from: src + j * c, count: c)
                    (dst + (2 * j + 1) * c).update(from: src + j * c, count: c)
                }
            }
        }
    }
}

/// Rows of `table` [V, D] picked by `indices` (shape `indexShape`) → [indexShape..., D].
public func embedding(_ table: Tensor, indices: [Int], shape indexShape: [Int]? = nil) -> Tensor {
    precondition(table.rank == 2, "embedding: table \(table.shape) is not [V, D]")
    let (v, d) = (table.shape[0], table.shape[1])
    for i in indices { precondition(i >= 0 && i < v, "embedding: index \(i) out of range for table \(table.shape)") }
    let outShape = (indexShape ?? [indices.count]) + [d]
    precondition(outShape.dropLast().reduce(1, *) == indices.count, "embedding: \(indices.count) indices do not fill \(indexShape!)")
    let y = Tensor(uninitialized: outShape)
    for (r, i) in indices.enumerated() { (y.pointer + r * d).update(from: table.pointer + i * d, count: d) }
    if Tape.needsGrad(table) {
        Tape.record(y, inputs: [table]) { dy in
            table.withZeroedGradient { dt in
                for (r, i) in indices.enumerated() {
                    let src = dy.pointer + r * d, dst = dt + i * d
                    for j in 0..<d { dst[j] += src[j] }
                }
            }
        }
    }
    return y
}
