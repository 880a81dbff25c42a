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
        // dg = Gᵀ dU G for each (o, c): G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
        let (c, o) = (g.c, g.o), plane = c * o
        parallelFor(o, grain: 8) { range in
            for oo in range {
                for cc in 0..<c {
                    let src = du.p + cc * o + oo
                    @inline(__always) func row(_ r: Int) -> SIMD4<Float> {
                        SIMD4(src[(4 * r) * plane], src[(4 * r + 1) * plane], src[(4 * r + 2) * plane], src[(4 * r + 3) * plane])
                    }
                    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3))
                    // Gᵀ dU: three rows from four
                    let t0 = r0 + 0.5 * (r1 + r2), t1 = 0.5 * (r1 - r2), t2 = 0.5 * (r1 + r2) + r3
                    let out = dw + (oo * c + cc) * 9
                    for (k, t) in [t0, t1, t2].enumerated() {   // (Gᵀ dU) G: three columns from four
                        out[3 * k] = t[0] + 0.5 * (t[1] + t[2])
                        out[3 * k + 1] = 0.5 * (t[1] - t[2])
                        out[3 * k + 2] = 0.5 * (t[1] + t[2]) + t[3]
                    }
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
        let plane = inputs * outputs
        parallelFor(outputs, grain: 8) { range in
            for o in range {
                for c in 0..<inputs {
                    // G g: rows (g0, ½(g0 + g1 + g2), ½(g0 − g1 + g2), g2) for each column j
                    var t = (SIMD4<Float>(), SIMD4<Float>(), SIMD4<Float>())   // columns j = 0, 1, 2 of G g
                    for j in 0..<3 {
                        let g0 = w[index(o, c, 0, j)], g1 = w[index(o, c, 1, j)], g2 = w[index(o, c, 2, j)]
                        let col = SIMD4<Float>(g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
                        if j == 0 { t.0 = col } else if j == 1 { t.1 = col } else { t.2 = col }
                    }
                    // (G g) Gᵀ: columns (a, ½(a + b + c), ½(a − b + c), c) of the rows (a, b, c)
                    let u0 = t.0, u1 = 0.5 * (t.0 + t.1 + t.2), u2 = 0.5 * (t.0 - t.1 + t.2), u3 = t.2
                    let dst = u + c * outputs + o
                    for r in 0..<4 {
                        dst[(4 * r) * plane] = u0[r]
                        dst[(4 * r + 1) * plane] = u1[r]
                        dst[(4 * r + 2) * plane] = u2[r]
                        dst[(4 * r + 3) * plane] = u3[r]
                    }
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
                        if interior { return load(origin + (r * w + q) * c + ch, lanes) }
                        let yy = top + r, xx = left + q
                        return yy >= 0 && yy < h && xx >= 0 && xx < w ? load(origin + (r * w + q) * c + ch, lanes) : .zero
                    }
                    let out = v + t * c + ch
                    // Bᵀ d row by row, then each row times B: (a − e, b + e, e − b, b − f) on (a, b, e, f).
                    @inline(__always) func emit(_ r: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ e: SIMD8<Float>, _ f: SIMD8<Float>) {
                        store(a - e, out + (4 * r) * stride, lanes)
                        store(b + e, out + (4 * r + 1) * stride, lanes)
                        store(e - b, out + (4 * r + 2) * stride, lanes)
                        store(b - f, out + (4 * r + 3) * stride, lanes)
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
                    @inline(__always) func mm(_ k: Int) -> SIMD8<Float> { load(base + k * stride, lanes) }
                    // Aᵀ M: row 0 = m0 + m1 + m2, row 1 = m1 − m2 − m3 (over the rows of M), per column q
                    let s00 = mm(0) + mm(4) + mm(8), s01 = mm(1) + mm(5) + mm(9), s02 = mm(2) + mm(6) + mm(10), s03 = mm(3) + mm(7) + mm(11)
                    let s10 = mm(4) - mm(8) - mm(12), s11 = mm(5) - mm(9) - mm(13), s12 = mm(6) - mm(10) - mm(14)
                    let s13 = mm(7) - mm(11) - mm(15)
                    let b = bias.map { load($0 + ch, lanes) } ?? .zero
                    let row0 = y + ((n * h + 2 * i) * w + 2 * j) * o + ch
                    store(s00 + s01 + s02 + b, row0, lanes)
                    if 2 * j + 1 < w { store(s01 - s02 - s03 + b, row0 + o, lanes) }
                    if 2 * i + 1 < h {
                        store(s10 + s11 + s12 + b, row0 + w * o, lanes)
                        if 2 * j + 1 < w { store(s11 - s12 - s13 + b, row0 + w * o + o, lanes) }
                    }
        }
    }

    /// dM[ξ][tile][o] = (A dY Aᵀ)[ξ], the adjoint of the output transform (zero beyond the output).
    private func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, into dm: UnsafeMutablePointer<Float>) {
        let (h, w, o, stride) = (g.outH, g.outW, g.o, tiles * g.o)
        forEachTile(channels: o) { t, n, i, j, ch, lanes in
                    func at(_ r: Int, _ q: Int) -> SIMD8<Float> {   // the 2×2 output gradient, zero outside
                        2 * i + r < h && 2 * j + q < w ? load(dy + ((n * h + 2 * i + r) * w + 2 * j + q) * o + ch, lanes) : .zero
                    }
                    let (e0, e1, e2, e3) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1))
                    // A = [1 0; 1 1; 1 −1; 0 −1]: the rows of A e, then each row times Aᵀ
                    let out = dm + t * o + ch
                    func row(_ r: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>) {
                        store(a, out + (4 * r) * stride, lanes)
                        store(a + b, out + (4 * r + 1) * stride, lanes)
                        store(a - b, out + (4 * r + 2) * stride, lanes)
                        store(-b, out + (4 * r + 3) * stride, lanes)
                    }
                    row(0, e0, e1)
                    row(1, e0 + e2, e1 + e3)
                    row(2, e0 - e2, e1 - e3)
                    row(3, -e2, -e3)
        }
    }
}

/// Up to 8 floats as a vector (the rest zero).
@inline(__always)
private func load(_ p: UnsafeMutablePointer<Float>, _ lanes: Int) -> SIMD8<Float> {
    if lanes == 8 { return UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
    var v = SIMD8<Float>.zero
    for k in 0..<lanes { v[k] = p[k] }
    return v
}

@inline(__always)
private func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, _ lanes: Int) {
    if lanes == 8 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self); return }
    for k in 0..<lanes { p[k] = v[k] }
}

/// A pooled buffer for the duration of one call.
private final class Scratch {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) { (self.count, p) = (count, BufferPool.shared.take(count: count)) }
    deinit { BufferPool.shared.give(p, count: count) }
}
