import Foundation
import CFastMath

/// 3×3, stride-1, pad-1 convolutions by Winograd's minimal filtering F(m×m, 3×3)
/// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
///     Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A
/// for each α×α input tile d (α = m + 2, stride m) giving an m×m output tile. The α²
/// elementwise products over channels become α² matrix products, run as one batched
/// oneDNN matmul: M[ξ] (tiles × O) = V[ξ] (tiles × C) · U[ξ] (C × O). F(2×2) needs
/// 16/4 = 4 products per output, F(4×4) 36/16 = 2.25, against 9 for direct convolution.
/// Every transform is one 1-D map F applied down the columns and then along the rows
/// (X ↦ F X Fᵀ), on 16 channels at a time (NHWC keeps them contiguous; a float32 vector
/// of them fills a cache line and an AVX-512 register).
/// Both backward passes are the adjoints of these steps, sharing dM = A dY Aᵀ and
/// reusing the forward's U and V:
///     dV[ξ] = dM[ξ] · U[ξ]ᵀ,  dX = Σ_tiles B dV Bᵀ;   dU[ξ] = V[ξ]ᵀ · dM[ξ],  dg = Gᵀ dU G.
/// In bf16 the transforms store U, V and dM (the matrix products' operands) as bfloat16
/// and the products land in float32; the transforms themselves compute in float32.
/// The three passes are pre-specialised for both variants: they are reached through the
/// ConvKernels witness table, which would otherwise run them generically.
struct WinogradConv<Variant: WinogradVariant>: ConvKernels {
    let g: ConvGeometry
    /// What U, V and dM are stored as, fixed when the forward runs (its backward follows it).
    let precision: Precision
    private var m: Int { Variant.m }
    private var alpha: Int { Variant.m + 2 }
    private var planes: Int { alpha * alpha }
    var tilesH: Int { (g.outH + m - 1) / m }
    var tilesW: Int { (g.outW + m - 1) / m }
    var tiles: Int { g.n * tilesH * tilesW }

    /// U and V of the forward, and dM once a backward pass has made it: the backward
    /// passes of the same call reuse them instead of transforming again.
    let saved = SavedTransforms()

    @_specialize(where Variant == WinogradF4)
    @_specialize(where Variant == WinogradF2)
    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>?,
                 y: UnsafeMutablePointer<Float>) {
        let (sv, su, sm) = (operandStride(tiles * g.c), operandStride(g.c * g.o), planeStride(tiles * g.o))
        let u = operandPlanes(su), v = operandPlanes(sv), m = Scratch(planes * sm)
        transformWeights(w, into: u)
        transformInput(x, into: v)
        DNNL.matmul(MatmulGeometry(batch: planes, m: tiles, k: g.c, n: g.o, transposeA: false, transposeB: false,
                                   accumulate: false, strideA: sv, strideB: su, strideC: sm, operands: precision), v.raw, u.raw, m.p)
        transformOutput(m.p, bias: b, into: y)
        (saved.u, saved.v) = (u, Engine.options.winogradInput == .keep ? v : nil)
    }

    /// The forward's V serves the weight gradient when it was kept.
    var readsInputForWeights: Bool { saved.v == nil }

    /// dV[ξ] = dM[ξ] · U[ξ]ᵀ, then dX = B dV Bᵀ added up over the tiles: the adjoint of
    /// the forward, with the forward's U.
    @_specialize(where Variant == WinogradF4)
    @_specialize(where Variant == WinogradF2)
    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        let (sdv, su, sdm) = (planeStride(tiles * g.c), operandStride(g.c * g.o), operandStride(tiles * g.o))
        let u = saved.u ?? { let u = operandPlanes(su); transformWeights(w, into: u); return u }()
        let dm = outputGradient(dy), dv = Scratch(planes * sdv)
        DNNL.matmul(MatmulGeometry(batch: planes, m: tiles, k: g.o, n: g.c, transposeA: false, transposeB: true,
                                   accumulate: false, strideA: sdm, strideB: su, strideC: sdv, operands: precision), dm.raw, u.raw, dv.p)
        saved.u = nil
        transformInputAdjoint(dv.p, into: dx)
    }

    /// dU[ξ] = V[ξ]ᵀ · dM[ξ], then dg = Gᵀ dU G.
    @_specialize(where Variant == WinogradF4)
    @_specialize(where Variant == WinogradF2)
    func backwardWeights(x: UnsafeMutablePointer<Float>?, dy: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                         db: UnsafeMutablePointer<Float>?) {
        let (sv, sdm, sdu) = (operandStride(tiles * g.c), operandStride(tiles * g.o), planeStride(g.c * g.o))
        let v = saved.v ?? { let v = operandPlanes(sv); transformInput(input(x), into: v); return v }()
        let dm = outputGradient(dy), du = Scratch(planes * sdu)
        DNNL.matmul(MatmulGeometry(batch: planes, m: g.c, k: tiles, n: g.o, transposeA: true, transposeB: false, accumulate: false,
                                   strideA: sv, strideB: sdm, strideC: sdu, operands: precision), v.raw, dm.raw, du.p)
        (saved.v, saved.dm) = (nil, nil)
        // dg = Gᵀ dU G for each (c, o), sixteen outputs o at a time, straight into OIHW.
        let (c, o, plane, alpha) = (g.c, g.o, sdu, alpha)
        parallelFor(c, grain: 8) { range in
            withTile { tile, work, result in
                for cc in range {
                    for o0 in stride(from: 0, to: o, by: WinogradVector.scalarCount) {
                        let lanes = min(WinogradVector.scalarCount, o - o0), src = du.p + cc * o + o0
                        loadPlanes(alpha * alpha, from: src, stride: plane, lanes, into: tile, ahead: prefetchTiles * o)
                        transform2D(.gt, inner: alpha, outer: 3, tile, work, result)
                        storeKernels(result, into: dw, c: cc, o0: o0, lanes)
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

    /// dM = A dY Aᵀ, made by the first backward pass that needs it and kept for the other.
    private func outputGradient(_ dy: UnsafeMutablePointer<Float>) -> Scratch {
        if let dm = saved.dm { return dm }
        let dm = operandPlanes(operandStride(tiles * g.o))
        transformOutputGradient(dy, into: dm)
        saved.dm = dm
        return dm
    }

    // MARK: the steps

    /// The distance between consecutive float32 planes ξ (M, dV, dU): `n` floats rounded
    /// up to a cache line, plus one line. Packed planes lie a multiple of 4 KiB apart, and
    /// the α² stores (or loads) of one tile then all land in one L1 set.
    private func planeStride(_ n: Int) -> Int { (n + 15) / 16 * 16 + 16 }

    /// The same for the planes of the products' operands (U, V, dM), in their elements.
    private func operandStride(_ n: Int) -> Int {
        let line = precision == .bf16 ? 32 : 16
        return (n + line - 1) / line * line + line
    }

    /// α² operand planes `stride` elements apart.
    private func operandPlanes(_ stride: Int) -> Scratch {
        precision == .bf16 ? Scratch(bf16Count: planes * stride) : Scratch(planes * stride)
    }

    /// The transforms that write operand planes, at the planes' element type.
    private func transformWeights(_ w: UnsafeMutablePointer<Float>, into u: Scratch) {
        switch precision {
        case .fp32: transformWeights(w, into: u.p)
        case .bf16: transformWeights(w, into: u.bf16)
        }
    }
    private func transformInput(_ x: UnsafeMutablePointer<Float>, into v: Scratch) {
        switch precision {
        case .fp32: transformInput(x, into: v.p)
        case .bf16: transformInput(x, into: v.bf16)
        }
    }
    private func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, into dm: Scratch) {
        switch precision {
        case .fp32: transformOutputGradient(dy, into: dm.p)
        case .bf16: transformOutputGradient(dy, into: dm.bf16)
        }
    }

    /// Y = F X Fᵀ for the 1-D map F from `inner` to `outer` values: X is inner × inner
    /// (row-major in `x`), `work` receives F X (outer × inner), `y` the result (outer × outer).
    @inline(__always)
    private func transform2D(_ f: WinogradMap, inner: Int, outer: Int,
                             _ x: UnsafeMutablePointer<WinogradVector>, _ work: UnsafeMutablePointer<WinogradVector>,
                             _ y: UnsafeMutablePointer<WinogradVector>) {
        for q in 0..<inner { apply(f, x + q, inner, work + q, inner) }
        for r in 0..<outer { apply(f, work + r * inner, 1, y + r * outer, 1) }
    }

    /// One 1-D map of the variant; `f` is a constant at every call, so the switch folds away.
    @inline(__always)
    private func apply(_ f: WinogradMap, _ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int,
                       _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        switch f {
        case .bt: Variant.bt(x, xs, y, ys)
        case .b: Variant.b(x, xs, y, ys)
        case .at: Variant.at(x, xs, y, ys)
        case .a: Variant.a(x, xs, y, ys)
        case .g: Variant.g(x, xs, y, ys)
        case .gt: Variant.gt(x, xs, y, ys)
        }
    }

    /// Three α×α tiles of vectors on the stack: input, intermediate and result.
    @inline(__always)
    private func withTile(_ body: (UnsafeMutablePointer<WinogradVector>, UnsafeMutablePointer<WinogradVector>,
                                   UnsafeMutablePointer<WinogradVector>) -> Void) {
        let n = planes
        withUnsafeTemporaryAllocation(of: WinogradVector.self, capacity: 3 * n) { buffer in
            let p = buffer.baseAddress!
            body(p, p + n, p + 2 * n)
        }
    }

    /// Calls `body(t, n, i, j, ch, lanes, tile, work, result)` for every tile t (sample n,
    /// tile row i, column j) and every block of up to 16 channels starting at ch, tiles
    /// split across threads, with stack tiles for the transform.
    @inline(__always)
    private func forEachTile(channels: Int, _ body: (_ t: Int, _ n: Int, _ i: Int, _ j: Int, _ ch: Int, _ lanes: Int,
                                                     UnsafeMutablePointer<WinogradVector>, UnsafeMutablePointer<WinogradVector>,
                                                     UnsafeMutablePointer<WinogradVector>) -> Void) {
        let (th, tw) = (tilesH, tilesW)
        parallelFor(tiles, grain: 16) { range in
            withTile { tile, work, result in
                for t in range {
                    let n = t / (th * tw), i = t / tw % th, j = t % tw
                    var ch = 0
                    while ch < channels {
                        body(t, n, i, j, ch, min(WinogradVector.scalarCount, channels - ch), tile, work, result)
                        ch += WinogradVector.scalarCount
                    }
                }
            }
        }
    }

    /// U[ξ][c][o] = (G g Gᵀ)[ξ] with g[i][j] = w[o][c][i][j], sixteen outputs o at a time.
    private func transformWeights<E: PlaneElement>(_ w: UnsafeMutablePointer<Float>, into u: UnsafeMutablePointer<E>) {
        let (c, o, plane, alpha) = (g.c, g.o, operandStride(g.c * g.o), alpha)
        parallelFor(c, grain: 8) { range in
            withTile { tile, work, result in
                for cc in range {
                    for o0 in stride(from: 0, to: o, by: WinogradVector.scalarCount) {
                        let lanes = min(WinogradVector.scalarCount, o - o0)
                        loadKernels(w, c: cc, o0: o0, lanes, into: tile)
                        transform2D(.g, inner: 3, outer: alpha, tile, work, result)
                        let dst = u + cc * o + o0
                        storePlanes(alpha * alpha, result, to: dst, stride: plane, lanes, ahead: prefetchTiles * o)
                    }
                }
            }
        }
    }

    /// tile[k] = the vector of w[o0 + l][c][k] over the lanes l, for the nine k: the 3×3
    /// kernels of sixteen outputs at input channel c, read from OIHW (rows of 9C floats)
    /// through a 9 × 16 block on the stack, so that a transform loads them as vectors.
    @inline(__always)
    private func loadKernels(_ w: UnsafeMutablePointer<Float>, c cc: Int, o0: Int, _ lanes: Int,
                             into tile: UnsafeMutablePointer<WinogradVector>) {
        let row = 9 * g.c, width = WinogradVector.scalarCount
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 9 * width) { buffer in
            let block = buffer.baseAddress!
            for l in 0..<lanes { let src = w + (o0 + l) * row + cc * 9; for k in 0..<9 { block[k * width + l] = src[k] } }
            for k in 0..<9 { tile[k] = loadVector(block + k * width, lanes) }
        }
    }

    /// The inverse of `loadKernels`: w[o0 + l][c][k] = values[k][l].
    @inline(__always)
    private func storeKernels(_ values: UnsafeMutablePointer<WinogradVector>, into w: UnsafeMutablePointer<Float>, c cc: Int,
                              o0: Int, _ lanes: Int) {
        let row = 9 * g.c, width = WinogradVector.scalarCount
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 9 * width) { buffer in
            let block = buffer.baseAddress!
            for k in 0..<9 { storeVector(values[k], block + k * width, lanes) }
            for l in 0..<lanes { let dst = w + (o0 + l) * row + cc * 9; for k in 0..<9 { dst[k] = block[k * width + l] } }
        }
    }

    /// V[ξ][tile][c] = (Bᵀ d B)[ξ] for every α×α input tile d (zero outside the image).
    private func transformInput<E: PlaneElement>(_ x: UnsafeMutablePointer<Float>, into v: UnsafeMutablePointer<E>) {
        let (h, w, c, stride, m, alpha) = (g.h, g.w, g.c, operandStride(tiles * g.c), m, alpha)
        forEachTile(channels: c) { t, n, i, j, ch, lanes, tile, work, result in
            let top = m * i - 1, left = m * j - 1
            let interior = top >= 0 && top + alpha <= h && left >= 0 && left + alpha <= w
            for r in 0..<alpha {
                for q in 0..<alpha {
                    let yy = top + r, xx = left + q
                    let p = x + ((n * h + yy) * w + xx) * c + ch
                    ldm_prefetch(p + prefetchTiles * m * c)
                    tile[r * alpha + q] = interior || (yy >= 0 && yy < h && xx >= 0 && xx < w)
                        ? loadVector(p, lanes) : .zero
                }
            }
            transform2D(.bt, inner: alpha, outer: alpha, tile, work, result)
            storePlanes(alpha * alpha, result, to: v + t * c + ch, stride: stride, lanes, ahead: prefetchTiles * c)
        }
    }

    /// dX = Σ over tiles of B dV Bᵀ placed where the tile was read, the adjoint of
    /// `transformInput` (positions outside the image dropped). Tiles overlap, so each
    /// thread takes whole samples.
    private func transformInputAdjoint(_ dv: UnsafeMutablePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        let (h, w, c, stride, m, alpha, th, tw) = (g.h, g.w, g.c, planeStride(tiles * g.c), m, alpha, tilesH, tilesW)
        parallelFor(g.n) { samples in
            withTile { tile, work, result in
                for n in samples {
                    let image = dx + n * h * w * c
                    image.update(repeating: 0, count: h * w * c)
                    for i in 0..<th {
                        for j in 0..<tw {
                            let t = (n * th + i) * tw + j, top = m * i - 1, left = m * j - 1
                            var ch = 0
                            while ch < c {
                                let lanes = min(WinogradVector.scalarCount, c - ch), src = dv + t * c + ch
                                loadPlanes(alpha * alpha, from: src, stride: stride, lanes, into: tile, ahead: prefetchTiles * c)
                                transform2D(.b, inner: alpha, outer: alpha, tile, work, result)
                                for r in 0..<alpha where top + r >= 0 && top + r < h {
                                    for q in 0..<alpha where left + q >= 0 && left + q < w {
                                        let p = image + ((top + r) * w + left + q) * c + ch
                                        storeVector(loadVector(p, lanes) + result[r * alpha + q], p, lanes)
                                    }
                                }
                                ch += WinogradVector.scalarCount
                            }
                        }
                    }
                }
            }
        }
    }

    /// Y tile = Aᵀ M A (+ bias), written where it falls inside the output.
    private func transformOutput(_ mm: UnsafeMutablePointer<Float>, bias: UnsafeMutablePointer<Float>?,
                                 into y: UnsafeMutablePointer<Float>) {
        let (h, w, o, stride, m, alpha) = (g.outH, g.outW, g.o, planeStride(tiles * g.o), m, alpha)
        forEachTile(channels: o) { t, n, i, j, ch, lanes, tile, work, result in
            loadPlanes(alpha * alpha, from: mm + t * o + ch, stride: stride, lanes, into: tile, ahead: prefetchTiles * o)
            transform2D(.at, inner: alpha, outer: m, tile, work, result)
            let b = bias.map { loadVector($0 + ch, lanes) } ?? .zero
            for r in 0..<min(m, h - m * i) {
                for q in 0..<min(m, w - m * j) {
                    storeVector(result[r * m + q] + b, y + ((n * h + m * i + r) * w + m * j + q) * o + ch, lanes)
                }
            }
        }
    }

    /// dM[ξ][tile][o] = (A dY Aᵀ)[ξ], the adjoint of the output transform (zero beyond the output).
    private func transformOutputGradient<E: PlaneElement>(_ dy: UnsafeMutablePointer<Float>, into dm: UnsafeMutablePointer<E>) {
        let (h, w, o, stride, m, alpha) = (g.outH, g.outW, g.o, operandStride(tiles * g.o), m, alpha)
        forEachTile(channels: o) { t, n, i, j, ch, lanes, tile, work, result in
            for r in 0..<m {
                for q in 0..<m {
                    let yy = m * i + r, xx = m * j + q
                    let p = dy + ((n * h + yy) * w + xx) * o + ch
                    ldm_prefetch(p + prefetchTiles * m * o)
                    tile[r * m + q] = yy < h && xx < w ? loadVector(p, lanes) : .zero
                }
            }
            transform2D(.a, inner: m, outer: alpha, tile, work, result)
            storePlanes(alpha * alpha, result, to: dm + t * o + ch, stride: stride, lanes, ahead: prefetchTiles * o)
        }
    }
}

/// The 3×3 stride-1 pad-1 convolutions Winograd serves: enough channels for the matrix
/// products to dominate the transforms. F(4×4) from 4×4 outputs up, F(2×2) below, as
/// `choice` allows.
func winogradKernels(_ g: ConvGeometry, _ choice: EngineOptions.Winograd) -> ConvKernels? {
    guard choice != .off, g.kh == 3 && g.kw == 3 && g.stride == 1 && [g.padTop, g.padBottom, g.padLeft, g.padRight].allSatisfy({ $0 == 1 })
        && g.c >= 32 && g.o >= 32 else { return nil }
    let precision = Engine.options.precision
    if choice == .f2 || min(g.outH, g.outW) < 4 { return WinogradConv<WinogradF2>(g: g, precision: precision) }
    return WinogradConv<WinogradF4>(g: g, precision: precision)
}

/// The six 1-D maps of a variant.
enum WinogradMap { case bt, b, at, a, g, gt }

/// The matrices of one variant F(m×m, 3×3) as 1-D maps: each reads its inputs at
/// x[0], x[xs], x[2·xs], … and writes its outputs at y[0], y[ys], ….
protocol WinogradVariant {
    /// Outputs per tile side; the input tile side is m + 2.
    static var m: Int { get }
    /// Bᵀ: α → α.
    static func bt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
    /// B: α → α, the adjoint of Bᵀ.
    static func b(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
    /// Aᵀ: α → m.
    static func at(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
    /// A: m → α, the adjoint of Aᵀ.
    static func a(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
    /// G: 3 → α.
    static func g(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
    /// Gᵀ: α → 3, the adjoint of G.
    static func gt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int)
}

/// F(2×2, 3×3): Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1], G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
/// Aᵀ = [1 1 1 0; 0 1 −1 −1].
enum WinogradF2: WinogradVariant {
    static var m: Int { 2 }
    @inline(__always)
    static func bt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3) = (x[0], x[xs], x[2 * xs], x[3 * xs])
        (y[0], y[ys], y[2 * ys], y[3 * ys]) = (x0 - x2, x1 + x2, x2 - x1, x1 - x3)
    }
    @inline(__always)
    static func b(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3) = (x[0], x[xs], x[2 * xs], x[3 * xs])
        (y[0], y[ys], y[2 * ys], y[3 * ys]) = (x0, x1 - x2 + x3, x1 + x2 - x0, -x3)
    }
    @inline(__always)
    static func at(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3) = (x[0], x[xs], x[2 * xs], x[3 * xs])
        (y[0], y[ys]) = (x0 + x1 + x2, x1 - x2 - x3)
    }
    @inline(__always)
    static func a(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (e0, e1) = (x[0], x[xs])
        (y[0], y[ys], y[2 * ys], y[3 * ys]) = (e0, e0 + e1, e0 - e1, -e1)
    }
    @inline(__always)
    static func g(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (g0, g1, g2) = (x[0], x[xs], x[2 * xs])
        (y[0], y[ys], y[2 * ys], y[3 * ys]) = (g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
    }
    @inline(__always)
    static func gt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (u0, u1, u2, u3) = (x[0], x[xs], x[2 * xs], x[3 * xs])
        (y[0], y[ys], y[2 * ys]) = (u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3)
    }
}

/// F(4×4, 3×3) on the points 0, ±1, ±2, ∞:
///     Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1],
///     G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1/24 1/12 ⅙; 1/24 −1/12 ⅙; 0 0 1],
///     Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1].
enum WinogradF4: WinogradVariant {
    static var m: Int { 4 }
    @inline(__always)
    static func bt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3, x4, x5) = (x[0], x[xs], x[2 * xs], x[3 * xs], x[4 * xs], x[5 * xs])
        let p = x4 - 4 * x2, q = x3 - 4 * x1, r = x4 - x2, s = 2 * (x3 - x1)
        y[0] = 4 * x0 - 5 * x2 + x4
        y[ys] = p + q
        y[2 * ys] = p - q
        y[3 * ys] = r + s
        y[4 * ys] = r - s
        y[5 * ys] = 4 * x1 - 5 * x3 + x5
    }
    @inline(__always)
    static func b(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3, x4, x5) = (x[0], x[xs], x[2 * xs], x[3 * xs], x[4 * xs], x[5 * xs])
        let d12 = x2 - x1, d34 = x3 - x4, s12 = x1 + x2, s34 = x3 + x4
        y[0] = 4 * x0
        y[ys] = 4 * (d12 + x5) - 2 * d34
        y[2 * ys] = -5 * x0 - 4 * s12 - s34
        y[3 * ys] = -d12 + 2 * d34 - 5 * x5
        y[4 * ys] = x0 + s12 + s34
        y[5 * ys] = x5
    }
    @inline(__always)
    static func at(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (x0, x1, x2, x3, x4, x5) = (x[0], x[xs], x[2 * xs], x[3 * xs], x[4 * xs], x[5 * xs])
        let sum12 = x1 + x2, diff12 = x1 - x2, sum34 = x3 + x4, diff34 = x3 - x4
        y[0] = x0 + sum12 + sum34
        y[ys] = diff12 + 2 * diff34
        y[2 * ys] = sum12 + 4 * sum34
        y[3 * ys] = diff12 + 8 * diff34 + x5
    }
    @inline(__always)
    static func a(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (e0, e1, e2, e3) = (x[0], x[xs], x[2 * xs], x[3 * xs])
        let even1 = e0 + e2, odd1 = e1 + e3, even2 = e0 + 4 * e2, odd2 = 2 * e1 + 8 * e3
        y[0] = e0
        y[ys] = even1 + odd1
        y[2 * ys] = even1 - odd1
        y[3 * ys] = even2 + odd2
        y[4 * ys] = even2 - odd2
        y[5 * ys] = e3
    }
    @inline(__always)
    static func g(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (g0, g1, g2) = (x[0], x[xs], x[2 * xs])
        let even1 = g0 + g2, even2 = g0 / 24 + g2 / 6, odd2 = g1 / 12
        y[0] = 0.25 * g0
        y[ys] = -(even1 + g1) / 6
        y[2 * ys] = -(even1 - g1) / 6
        y[3 * ys] = even2 + odd2
        y[4 * ys] = even2 - odd2
        y[5 * ys] = g2
    }
    @inline(__always)
    static func gt(_ x: UnsafeMutablePointer<WinogradVector>, _ xs: Int, _ y: UnsafeMutablePointer<WinogradVector>, _ ys: Int) {
        let (u0, u1, u2, u3, u4, u5) = (x[0], x[xs], x[2 * xs], x[3 * xs], x[4 * xs], x[5 * xs])
        let s12 = u1 + u2, d12 = u1 - u2, s34 = u3 + u4, d34 = u3 - u4
        y[0] = 0.25 * u0 - s12 / 6 + s34 / 24
        y[ys] = -d12 / 6 + d34 / 12
        y[2 * ys] = -s12 / 6 + s34 / 6 + u5
    }
}

/// The transforms one conv call keeps between its passes (WinogradConv.saved).
final class SavedTransforms {
    var u, v, dm: Scratch?
}

/// What the transforms store the products' operands as: float32 or bfloat16.
protocol PlaneElement {
    /// Stores the first `lanes` values of `v` at `p`.
    static func store(_ v: WinogradVector, _ p: UnsafeMutablePointer<Self>, _ lanes: Int)
}

extension Float: PlaneElement {
    @inline(__always)
    static func store(_ v: WinogradVector, _ p: UnsafeMutablePointer<Float>, _ lanes: Int) { storeVector(v, p, lanes) }
}

extension BF16: PlaneElement {}

/// The channels one transform step works on.
typealias WinogradVector = SIMD16<Float>

/// How many tiles (or rows of a weight transform) ahead the transforms ask for the
/// lines they will read or write. A transform walks α² planes (or, for the input, α²
/// pixels) at once; that many streams defeat the hardware's prefetcher, and without
/// the hints the transforms wait on memory (the autoencoder's step ran 13% slower).
private let prefetchTiles = 2

/// tile[k] = the vector at p + k·stride for k < count, asking for the one `ahead`
/// elements further along each plane.
@inline(__always)
private func loadPlanes(_ count: Int, from p: UnsafeMutablePointer<Float>, stride: Int, _ lanes: Int,
                        into tile: UnsafeMutablePointer<WinogradVector>, ahead: Int) {
    for k in 0..<count {
        ldm_prefetch(p + k * stride + ahead)
        tile[k] = loadVector(p + k * stride, lanes)
    }
}

/// Stores values[k] at p + k·stride for k < count, asking for the lines `ahead`
/// elements further along each plane.
@inline(__always)
private func storePlanes<E: PlaneElement>(_ count: Int, _ values: UnsafeMutablePointer<WinogradVector>,
                                          to p: UnsafeMutablePointer<E>, stride: Int, _ lanes: Int, ahead: Int) {
    for k in 0..<count {
        ldm_prefetch_write(p + k * stride + ahead)
        E.store(values[k], p + k * stride, lanes)
    }
}

/// Up to 16 floats as a vector (the rest zero).
@inline(__always)
private func loadVector(_ p: UnsafeMutablePointer<Float>, _ lanes: Int) -> WinogradVector {
    if lanes == WinogradVector.scalarCount { return UnsafeRawPointer(p).loadUnaligned(as: WinogradVector.self) }
    var v = WinogradVector.zero
    for k in 0..<lanes { v[k] = p[k] }
    return v
}

/// The first `lanes` floats of a vector.
@inline(__always)
private func storeVector(_ v: WinogradVector, _ p: UnsafeMutablePointer<Float>, _ lanes: Int) {
    if lanes == WinogradVector.scalarCount { UnsafeMutableRawPointer(p).storeBytes(of: v, as: WinogradVector.self); return }
    for k in 0..<lanes { p[k] = v[k] }
}
