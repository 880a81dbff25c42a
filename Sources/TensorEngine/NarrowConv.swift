/// Stride-1 convolutions to a single output channel (the decoder's conv_out to one
/// grey channel). oneDNN 2.6's AVX2 kernels block output channels by 8 and run this
/// shape at ~3 GFLOP/s forward and backward to the weights (measured with `bench
/// ops`, 29 and 23 ms for 64×32×32×64 → 1); here each output pixel is a dot product
/// of the 3×3×C window with the kernel, vectorised over channels, and each kernel tap
/// a dot product of shifted input with the output gradient. Backward to the input
/// stays with oneDNN, which runs it well.
struct SingleOutputConv: ConvKernels {
    let g: ConvGeometry

    static func applies(to g: ConvGeometry) -> Bool { g.o == 1 && g.stride == 1 && g.c >= 8 }

    /// The input row and column an output position and tap read, nil in the padding.
    @inline(__always)
    private func source(_ oh: Int, _ ow: Int, _ i: Int, _ j: Int) -> (Int, Int)? {
        let (ih, iw) = (oh + i - g.padTop, ow + j - g.padLeft)
        return ih >= 0 && ih < g.h && iw >= 0 && iw < g.w ? (ih, iw) : nil
    }

    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>?,
                 y: UnsafeMutablePointer<Float>) {
        // The kernel tap by tap, channels contiguous: taps[(i·kw + j)·C + c] = w[0, c, i, j].
        let (c, taps) = (g.c, g.kh * g.kw)
        let tapMajor = BufferPool.shared.take(count: taps * c)
        defer { BufferPool.shared.give(tapMajor, count: taps * c) }
        for ch in 0..<c { for t in 0..<taps { tapMajor[t * c + ch] = w[ch * taps + t] } }
        let bias = b?[0] ?? 0
        parallelFor(g.n * g.outH, grain: 4) { rows in
            for row in rows {
                let (n, oh) = (row / g.outH, row % g.outH)
                for ow in 0..<g.outW {
                    // Four accumulators over channel blocks keep the FMA pipeline full.
                    var acc = (SIMD8<Float>.zero, SIMD8<Float>.zero, SIMD8<Float>.zero, SIMD8<Float>.zero)
                    for i in 0..<g.kh {
                        for j in 0..<g.kw {
                            guard let at = source(oh, ow, i, j) else { continue }
                            let (xp, wp) = (x + ((n * g.h + at.0) * g.w + at.1) * c, tapMajor + (i * g.kw + j) * c)
                            var ch = 0
                            while ch + 32 <= c {
                                acc.0 = acc.0.addingProduct(loadLanes(xp + ch, 8), loadLanes(wp + ch, 8))
                                acc.1 = acc.1.addingProduct(loadLanes(xp + ch + 8, 8), loadLanes(wp + ch + 8, 8))
                                acc.2 = acc.2.addingProduct(loadLanes(xp + ch + 16, 8), loadLanes(wp + ch + 16, 8))
                                acc.3 = acc.3.addingProduct(loadLanes(xp + ch + 24, 8), loadLanes(wp + ch + 24, 8))
                                ch += 32
                            }
                            while ch < c {
                                let lanes = min(8, c - ch)
                                acc.0 = acc.0.addingProduct(loadLanes(xp + ch, lanes), loadLanes(wp + ch, lanes))
                                ch += 8
                            }
                        }
                    }
                    y[row * g.outW + ow] = ((acc.0 + acc.1) + (acc.2 + acc.3)).sum() + bias
                }
            }
        }
    }

    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        DNNL.conv(g).backwardData(dy: dy, w: w, dx: dx)
    }

    func backwardWeights(x: UnsafeMutablePointer<Float>?, dy: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                         db: UnsafeMutablePointer<Float>?) {
        let x = input(x)
        // Each thread sums its run of output rows into its own tap-major partial (the
        // three input rows a row reads stay in cache); the partials are added in order,
        // so the result does not depend on timing.
        let (c, taps) = (g.c, g.kh * g.kw)
        let rows = g.n * g.outH, chunks = max(1, min(Threads.count, rows))
        let partials = BufferPool.shared.take(count: chunks * taps * c)
        defer { BufferPool.shared.give(partials, count: chunks * taps * c) }
        parallelFor(chunks) { range in
            for chunk in range {
                let part = partials + chunk * taps * c
                part.initialize(repeating: 0, count: taps * c)
                for row in rows * chunk / chunks..<rows * (chunk + 1) / chunks {
                    let (n, oh) = (row / g.outH, row % g.outH)
                    let dyrow = dy + row * g.outW
                    for t in 0..<taps {
                        let (i, j) = (t / g.kw, t % g.kw)
                        let ih = oh + i - g.padTop
                        // Columns whose tap lands inside the image: iw = ow + j − left in 0..<w.
                        let first = max(0, g.padLeft - j), last = min(g.outW, g.w + g.padLeft - j)
                        guard ih >= 0 && ih < g.h && first < last else { continue }
                        let xrow = x + ((n * g.h + ih) * g.w + first + j - g.padLeft) * c
                        for ch in stride(from: 0, to: c, by: 8) {
                            let lanes = min(8, c - ch)
                            // Four accumulators over consecutive columns keep the FMA pipeline full.
                            var acc = (SIMD8<Float>.zero, SIMD8<Float>.zero, SIMD8<Float>.zero, SIMD8<Float>.zero)
                            var ow = first
                            while ow + 4 <= last {
                                let xp = xrow + (ow - first) * c + ch
                                acc.0 = acc.0.addingProduct(loadLanes(xp, lanes), SIMD8(repeating: dyrow[ow]))
                                acc.1 = acc.1.addingProduct(loadLanes(xp + c, lanes), SIMD8(repeating: dyrow[ow + 1]))
                                acc.2 = acc.2.addingProduct(loadLanes(xp + 2 * c, lanes), SIMD8(repeating: dyrow[ow + 2]))
                                acc.3 = acc.3.addingProduct(loadLanes(xp + 3 * c, lanes), SIMD8(repeating: dyrow[ow + 3]))
                                ow += 4
                            }
                            while ow < last {
                                acc.0 = acc.0.addingProduct(loadLanes(xrow + (ow - first) * c + ch, lanes), SIMD8(repeating: dyrow[ow]))
                                ow += 1
                            }
                            let pp = part + t * c + ch
                            storeLanes(loadLanes(pp, lanes) + ((acc.0 + acc.1) + (acc.2 + acc.3)), pp, lanes)
                        }
                    }
                }
            }
        }
        for ch in 0..<c {
            for t in 0..<taps {
                var sum: Float = 0
                for chunk in 0..<chunks { sum += partials[(chunk * taps + t) * c + ch] }
                dw[ch * taps + t] = sum
            }
        }
        if let db {
            let count = g.n * g.outH * g.outW
            var acc = SIMD8<Float>.zero
            for p in stride(from: 0, to: count, by: 8) { acc += loadLanes(dy + p, min(8, count - p)) }
            db[0] = acc.sum()
        }
    }
}

/// Convolutions from a few input channels (2 to 8) to many (the decoder's conv_in, 4 → 256):
/// with C·kH·kW ≤ 72 the window of each output pixel is short enough to copy out
/// (im2col), and the three passes become matrix products through oneDNN's gemm. For
/// 64×8×8×4 → 256 that took the three passes from 9.6 to ~7 ms (backward to the input
/// alone was 4.2 ms in oneDNN's direct kernel); with 64 outputs (the UNet's
/// input_blocks.0) the direct kernel stays faster, hence ≥ 128 outputs.
///     forward:          Y[P, O] = cols[P, K] · W[O, K]ᵀ + b
///     backward input:   dcols[P, K] = dY[P, O] · W[O, K], then added back into dX
///     backward weights: dW[O, K]ᵀ = colsᵀ[K, P] · dY[P, O] (cols built transposed)
/// with P the output pixels and K = (c·kH + i)·kW + j, the OIHW order of W's rows.
struct WindowGemmConv: ConvKernels {
    let g: ConvGeometry
    var pixels: Int { g.n * g.outH * g.outW }
    var window: Int { g.c * g.kh * g.kw }

    static func applies(to g: ConvGeometry) -> Bool {
        (2...8).contains(g.c) && g.kh * g.kw > 1 && g.c * g.kh * g.kw <= 72 && g.o >= 128
    }

    /// Calls `body(p, k, source)` for every output pixel p and window position k, with
    /// the flat NHWC index of the input it reads (nil in the padding). Images are split
    /// across threads, so the windows one thread visits never overlap another's.
    @inline(__always)
    private func forEachWindow(_ body: (_ p: Int, _ k: Int, _ source: Int?) -> Void) {
        let perImage = g.outH * g.outW
        parallelFor(g.n) { images in
            for p in images.lowerBound * perImage..<images.upperBound * perImage {
                let (n, oh, ow) = (p / perImage, p / g.outW % g.outH, p % g.outW)
                for c in 0..<g.c {
                    for i in 0..<g.kh {
                        let ih = oh * g.stride + i - g.padTop
                        for j in 0..<g.kw {
                            let iw = ow * g.stride + j - g.padLeft
                            let inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w
                            body(p, (c * g.kh + i) * g.kw + j, inside ? ((n * g.h + ih) * g.w + iw) * g.c + c : nil)
                        }
                    }
                }
            }
        }
    }

    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>?,
                 y: UnsafeMutablePointer<Float>) {
        let k = window, cols = BufferPool.shared.take(count: pixels * k)
        defer { BufferPool.shared.give(cols, count: pixels * k) }
        forEachWindow { p, kk, source in cols[p * k + kk] = source.map { x[$0] } ?? 0 }
        DNNL.matmul(MatmulGeometry(batch: 1, m: pixels, k: k, n: g.o, transposeA: false, transposeB: true, accumulate: false),
                    cols, w, y)
        guard let b else { return }
        parallelFor(pixels, grain: 64) { range in
            for p in range { let row = y + p * g.o; for o in 0..<g.o { row[o] += b[o] } }
        }
    }

    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        let k = window, dcols = BufferPool.shared.take(count: pixels * k)
        defer { BufferPool.shared.give(dcols, count: pixels * k) }
        DNNL.matmul(MatmulGeometry(batch: 1, m: pixels, k: g.o, n: k, transposeA: false, transposeB: false, accumulate: false),
                    dy, w, dcols)
        dx.initialize(repeating: 0, count: g.n * g.h * g.w * g.c)
        forEachWindow { p, kk, source in if let source { dx[source] += dcols[p * k + kk] } }
    }

    func backwardWeights(x: UnsafeMutablePointer<Float>?, dy: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                         db: UnsafeMutablePointer<Float>?) {
        let x = input(x)
        let k = window, colsT = BufferPool.shared.take(count: pixels * k), dwT = BufferPool.shared.take(count: k * g.o)
        defer {
            BufferPool.shared.give(colsT, count: pixels * k)
            BufferPool.shared.give(dwT, count: k * g.o)
        }
        let pixels = self.pixels
        forEachWindow { p, kk, source in colsT[kk * pixels + p] = source.map { x[$0] } ?? 0 }
        DNNL.matmul(MatmulGeometry(batch: 1, m: k, k: pixels, n: g.o, transposeA: false, transposeB: false, accumulate: false),
                    colsT, dy, dwT)
        for o in 0..<g.o { for kk in 0..<k { dw[o * k + kk] = dwT[kk * g.o + o] } }
        if let db {
            for o in 0..<g.o { db[o] = 0 }
            for p in 0..<pixels { let row = dy + p * g.o; for o in 0..<g.o { db[o] += row[o] } }
        }
    }
}
