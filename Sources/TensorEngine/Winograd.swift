/// 3×3, stride-1, pad-1 convolutions by Winograd's minimal filtering F(2×2, 3×3)
/// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
///     Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A
/// for each 4×4 input tile d (stride 2) giving a 2×2 output tile, with
///     Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
///     Aᵀ = [1 1 1 0; 0 1 −1 −1].
/// The 16 elementwise products over channels become 16 matrix products, run as one
/// batched oneDNN matmul: M[ξ] (tiles × O) = V[ξ] (tiles × C) · U[ξ] (C × O), 2.25×
/// fewer multiplications than direct convolution. The transforms are linear
/// combinations of channel vectors (NHWC keeps them contiguous), vectorised over C.
/// Backward to the input is the same forward with the kernel flipped and its in/out
/// channels swapped; backward to the weights is the adjoint of each step:
///     dU[ξ] = V[ξ]ᵀ · dM[ξ],  dM = A dY Aᵀ,  dg = Gᵀ dU G.
struct WinogradConv: ConvKernels {
    let g: ConvGeometry
    var tilesH: Int { (g.outH + 1) / 2 }
    var tilesW: Int { (g.outW + 1) / 2 }
    var tiles: Int { g.n * tilesH * tilesW }

    /// Geometries it serves: 3×3, stride 1, padding 1 on every side, and enough
    /// channels for the matrix products to dominate the transforms.
    static func applies(to g: ConvGeometry) -> Bool {
        g.kh == 3 && g.kw == 3 && g.stride == 1 && [g.padTop, g.padBottom, g.padLeft, g.padRight].allSatisfy { $0 == 1 }
            && g.c >= 32 && g.o >= 32
    }

    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>?,
                 y: UnsafeMutablePointer<Float>) {
        let u = Scratch(16 * g.c * g.o)
        transformWeights(w, into: u.p, inputs: g.c, outputs: g.o) { o, c, i, j in ((o * g.c + c) * 3 + i) * 3 + j }
        convolve(x, channels: g.c, weights: u.p, outputs: g.o, bias: b, into: y)
    }

    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        // dX = conv(dY, W′) with W′[c][o][i][j] = W[o][c][2−i][2−j]: "outputs" are the c channels.
        let u = Scratch(16 * g.c * g.o)
        transformWeights(w, into: u.p, inputs: g.o, outputs: g.c) { c, o, i, j in ((o * g.c + c) * 3 + 2 - i) * 3 + 2 - j }
        convolve(dy, channels: g.o, weights: u.p, outputs: g.c, bias: nil, into: dx)
    }

    func backwardWeights(x: UnsafeMutablePointer<Float>, dy: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                         db: UnsafeMutablePointer<Float>?) {
        let v = Scratch(16 * tiles * g.c), dm = Scratch(16 * tiles * g.o), du = Scratch(16 * g.c * g.o)
        transformInput(x, channels: g.c, into: v.p)
        transformOutputGradient(dy, into: dm.p)
        DNNL.matmul(MatmulGeometry(batch: 16, m: g.c, k: tiles, n: g.o, transposeA: true, transposeB: false, accumulate: false),
                    v.p, dm.p, du.p)
        // dg = Gᵀ dU G for each (o, c), eight outputs o at a time: G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
        let (c, o) = (g.c, g.o), plane = c * o
        parallelFor(c, grain: 8) { range in
            for cc in range {
                for o0 in stride(from: 0, to: o, by: 8) {
                    let lanes = min(8, o - o0), src = du.p + cc * o + o0
                    // Gᵀ dU column by column: rows (a + ½(b + e), ½(b − e), ½(b + e) + f) of the rows (a, b, e, f).
                    @inline(__always) func column(_ q: Int) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
                        let (a, b, e, f) = (loadLanes(src + q * plane, lanes), loadLanes(src + (4 + q) * plane, lanes),
                                            loadLanes(src + (8 + q) * plane, lanes), loadLanes(src + (12 + q) * plane, lanes))
                        return (a + 0.5 * (b + e), 0.5 * (b - e), 0.5 * (b + e) + f)
                    }
                    // (Gᵀ dU) G: row k's three kernel columns from its four (a, b, e, f).
                    @inline(__always) func emit(_ k: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ e: SIMD8<Float>, _ f: SIMD8<Float>) {
                        let (d0, d1, d2) = (a + 0.5 * (b + e), 0.5 * (b - e), 0.5 * (b + e) + f)
                        for lane in 0..<lanes {
                            let out = dw + ((o0 + lane) * c + cc) * 9 + 3 * k
                            (out[0], out[1], out[2]) = (d0[lane], d1[lane], d2[lane])
                        }
                    }
                    let (c0, c1, c2, c3) = (column(0), column(1), column(2), column(3))
                    emit(0, c0.0, c1.0, c2.0, c3.0)
                    emit(1, c0.1, c1.1, c2.1, c3.1)
                    emit(2, c0.2, c1.2, c2.2, c3.2)
                }
            }
        }
        if let db {
            let n = g.n * g.outH * g.outW
            for oo in 0..<o { db[oo] = 0 }
            for p in 0..<n { let row = dy + p * o; for oo in 0..<o { db[oo] += row[oo] } }
        }
    }

    // MARK: the three steps

    /// Calls `body(t, n, i, j, ch, lanes)` for every tile t (sample n, tile row i,
    /// column j) and every block of up to 8 channels starting at ch, tiles split across threads.
    @inline(__always)
    private func forEachTile(channels: Int, _ body: (_ t: Int, _ n: Int, _ i: Int, _ j: Int, _ ch: Int, _ lanes: Int) -> Void) {
        let (th, tw) = (tilesH, tilesW)
        parallelFor(tiles, grain: 16) { range in
            for t in range {
                let n = t / (th * tw), i = t / tw % th, j = t % tw
                var ch = 0
                while ch < channels {
                    body(t, n, i, j, ch, min(8, channels - ch))
                    ch += 8
                }
            }
        }
    }

    /// Y = Aᵀ (U ⊙ V) A + b for an input of `channels` channels and `outputs` outputs.
    private func convolve(_ x: UnsafeMutablePointer<Float>, channels: Int, weights u: UnsafeMutablePointer<Float>, outputs: Int,
                          bias: UnsafeMutablePointer<Float>?, into y: UnsafeMutablePointer<Float>) {
        let v = Scratch(16 * tiles * channels), m = Scratch(16 * tiles * outputs)
        transformInput(x, channels: channels, into: v.p)
        DNNL.matmul(MatmulGeometry(batch: 16, m: tiles, k: channels, n: outputs, transposeA: false, transposeB: false, accumulate: false),
                    v.p, u, m.p)
        transformOutput(m.p, outputs: outputs, bias: bias, into: y)
    }

    /// U[ξ][c][o] = (G g Gᵀ)[ξ] with g[i][j] = w[index(o, c, i, j)].
    private func transformWeights(_ w: UnsafeMutablePointer<Float>, into u: UnsafeMutablePointer<Float>, inputs: Int, outputs: Int,
                                  index: (Int, Int, Int, Int) -> Int) {
        // Eight outputs o at a time: each of the 16 planes of U is then written in order.
        let plane = inputs * outputs
        parallelFor(inputs, grain: 8) { range in
            for c in range {
                for o in stride(from: 0, to: outputs, by: 8) {
                    let lanes = min(8, outputs - o)
                    @inline(__always) func tap(_ i: Int, _ j: Int) -> SIMD8<Float> {
                        var v = SIMD8<Float>.zero
                        for k in 0..<lanes { v[k] = w[index(o + k, c, i, j)] }
                        return v
                    }
                    // Row r of (G g) Gᵀ from row r (a, b, e) of G g: (a, ½(a + b + e), ½(a − b + e), e).
                    @inline(__always) func row(_ r: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ e: SIMD8<Float>) {
                        let dst = u + 4 * r * plane + c * outputs + o
                        storeLanes(a, dst, lanes)
                        storeLanes(0.5 * (a + b + e), dst + plane, lanes)
                        storeLanes(0.5 * (a - b + e), dst + 2 * plane, lanes)
                        storeLanes(e, dst + 3 * plane, lanes)
                    }
                    // G g: rows (g0, ½(g0 + g1 + g2), ½(g0 − g1 + g2), g2) of the kernel rows g0, g1, g2.
                    let (g00, g01, g02) = (tap(0, 0), tap(0, 1), tap(0, 2))
                    let (g10, g11, g12) = (tap(1, 0), tap(1, 1), tap(1, 2))
                    let (g20, g21, g22) = (tap(2, 0), tap(2, 1), tap(2, 2))
                    row(0, g00, g01, g02)
                    row(1, 0.5 * (g00 + g10 + g20), 0.5 * (g01 + g11 + g21), 0.5 * (g02 + g12 + g22))
                    row(2, 0.5 * (g00 - g10 + g20), 0.5 * (g01 - g11 + g21), 0.5 * (g02 - g12 + g22))
                    row(3, g20, g21, g22)
                }
            }
        }
    }

    /// V[ξ][tile][c] = (Bᵀ d B)[ξ] for every 4×4 input tile d (zero outside the image).
    private func transformInput(_ x: UnsafeMutablePointer<Float>, channels c: Int, into v: UnsafeMutablePointer<Float>) {
        let (h, w, stride) = (g.h, g.w, tiles * c)
        forEachTile(channels: c) { t, n, i, j, ch, lanes in
                    let top = 2 * i - 1, left = 2 * j - 1
                    let interior = top >= 0 && top + 3 < h && left >= 0 && left + 3 < w
                    let origin = x + ((n * h + top) * w + left) * c
                    @inline(__always) func d(_ r: Int, _ q: Int) -> SIMD8<Float> {
                        if interior { return loadLanes(origin + (r * w + q) * c + ch, lanes) }
                        let yy = top + r, xx = left + q
                        return yy >= 0 && yy < h && xx >= 0 && xx < w ? loadLanes(origin + (r * w + q) * c + ch, lanes) : .zero
                    }
                    let out = v + t * c + ch
                    // Bᵀ d row by row, then each row times B: (a − e, b + e, e − b, b − f) on (a, b, e, f).
                    @inline(__always) func emit(_ r: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ e: SIMD8<Float>, _ f: SIMD8<Float>) {
                        storeLanes(a - e, out + (4 * r) * stride, lanes)
                        storeLanes(b + e, out + (4 * r + 1) * stride, lanes)
                        storeLanes(e - b, out + (4 * r + 2) * stride, lanes)
                        storeLanes(b - f, out + (4 * r + 3) * stride, lanes)
                    }
                    let (d00, d01, d02, d03) = (d(0, 0), d(0, 1), d(0, 2), d(0, 3))
                    let (d10, d11, d12, d13) = (d(1, 0), d(1, 1), d(1, 2), d(1, 3))
                    let (d20, d21, d22, d23) = (d(2, 0), d(2, 1), d(2, 2), d(2, 3))
                    let (d30, d31, d32, d33) = (d(3, 0), d(3, 1), d(3, 2), d(3, 3))
                    emit(0, d00 - d20, d01 - d21, d02 - d22, d03 - d23)
                    emit(1, d10 + d20, d11 + d21, d12 + d22, d13 + d23)
                    emit(2, d20 - d10, d21 - d11, d22 - d12, d23 - d13)
                    emit(3, d10 - d30, d11 - d31, d12 - d32, d13 - d33)
        }
    }

    /// Y tile = Aᵀ M A (+ bias), written where it falls inside the output.
    private func transformOutput(_ m: UnsafeMutablePointer<Float>, outputs o: Int, bias: UnsafeMutablePointer<Float>?,
                                 into y: UnsafeMutablePointer<Float>) {
        let (h, w, stride) = (g.outH, g.outW, tiles * o)
        forEachTile(channels: o) { t, n, i, j, ch, lanes in
                    let base = m + t * o + ch
                    @inline(__always) func mm(_ k: Int) -> SIMD8<Float> { loadLanes(base + k * stride, lanes) }
                    // Aᵀ M: row 0 = m0 + m1 + m2, row 1 = m1 − m2 − m3 (over the rows of M), per column q
                    let s00 = mm(0) + mm(4) + mm(8), s01 = mm(1) + mm(5) + mm(9), s02 = mm(2) + mm(6) + mm(10), s03 = mm(3) + mm(7) + mm(11)
                    let s10 = mm(4) - mm(8) - mm(12), s11 = mm(5) - mm(9) - mm(13), s12 = mm(6) - mm(10) - mm(14)
                    let s13 = mm(7) - mm(11) - mm(15)
                    let b = bias.map { loadLanes($0 + ch, lanes) } ?? .zero
                    let row0 = y + ((n * h + 2 * i) * w + 2 * j) * o + ch
                    storeLanes(s00 + s01 + s02 + b, row0, lanes)
                    if 2 * j + 1 < w { storeLanes(s01 - s02 - s03 + b, row0 + o, lanes) }
                    if 2 * i + 1 < h {
                        storeLanes(s10 + s11 + s12 + b, row0 + w * o, lanes)
                        if 2 * j + 1 < w { storeLanes(s11 - s12 - s13 + b, row0 + w * o + o, lanes) }
                    }
        }
    }

    /// dM[ξ][tile][o] = (A dY Aᵀ)[ξ], the adjoint of the output transform (zero beyond the output).
    private func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, into dm: UnsafeMutablePointer<Float>) {
        let (h, w, o, stride) = (g.outH, g.outW, g.o, tiles * g.o)
        forEachTile(channels: o) { t, n, i, j, ch, lanes in
                    func at(_ r: Int, _ q: Int) -> SIMD8<Float> {   // the 2×2 output gradient, zero outside
                        2 * i + r < h && 2 * j + q < w ? loadLanes(dy + ((n * h + 2 * i + r) * w + 2 * j + q) * o + ch, lanes) : .zero
                    }
                    let (e0, e1, e2, e3) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1))
                    // A = [1 0; 1 1; 1 −1; 0 −1]: the rows of A e, then each row times Aᵀ
                    let out = dm + t * o + ch
                    func row(_ r: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>) {
                        storeLanes(a, out + (4 * r) * stride, lanes)
                        storeLanes(a + b, out + (4 * r + 1) * stride, lanes)
                        storeLanes(a - b, out + (4 * r + 2) * stride, lanes)
                        storeLanes(-b, out + (4 * r + 3) * stride, lanes)
                    }
                    row(0, e0, e1)
                    row(1, e0 + e2, e1 + e3)
                    row(2, e0 - e2, e1 - e3)
                    row(3, -e2, -e3)
        }
    }
}

/// A pooled buffer for the duration of one call.
private final class Scratch {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) { (self.count, p) = (count, BufferPool.shared.take(count: count)) }
    deinit { BufferPool.shared.give(p, count: count) }
}
