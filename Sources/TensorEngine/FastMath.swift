/// Vectorisable math kernels: e^x and erf without libm calls, and SIMD row
/// reductions (a plain `s += x[i]` loop cannot vectorise, since float addition is
/// not reassociated, so it runs at one add per FP latency).

import CFastMath

/// √x (NaN below 0) in a form loops vectorise: `Float.squareRoot()` keeps a libm
/// call for negative inputs, which stops LLVM from vectorising the loop around it.
@inlinable @inline(__always)
public func vectorizableSquareRoot(_ x: Float) -> Float { ldm_sqrtf(x) }

/// e^x (Cephes expf: x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^n
/// built in the exponent bits). Relative error ≲ 2 ulp on [-87, 88]; inputs are
/// clamped to that range and NaN propagates.
@inline(__always)
public func fastExp(_ x: Float) -> Float {
    let c = min(max(x, -87.0), 88.0)
    let magic: Float = 12582912.0                        // 1.5·2^23: adding it rounds to an integer
    let t = c * 1.44269504088896341 + magic
    let n = t - magic
    let r = c - n * 0.693359375 + n * 2.12194440e-4      // ln2 split in two for accuracy
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let er = p * r * r + r + 1
    let ni = Int32(bitPattern: t.bitPattern &- magic.bitPattern)
    return er * Float(bitPattern: UInt32(bitPattern: (ni &+ 127) << 23))
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7):
/// erf(|x|) = 1 − (a1·t + … + a5·t⁵)·e^(−x²), t = 1 / (1 + p·|x|).
@inline(__always)
public func fastErf(_ x: Float) -> Float { fastErfAndGaussian(x).erf }

/// erf(x) and the e^(−x²) it is built from, for callers that need both (GELU's derivative).
@inline(__always)
public func fastErfAndGaussian(_ x: Float) -> (erf: Float, gaussian: Float) {
    let a = abs(x)
    let t = 1 / (1 + 0.3275911 * a)
    var poly: Float = 1.061405429
    poly = poly * t - 1.453152027
    poly = poly * t + 1.421413741
    poly = poly * t - 0.284496736
    poly = poly * t + 0.254829592
    let gaussian = fastExp(-a * a)
    let y = 1 - poly * t * gaussian
    return (x < 0 ? -y : y, gaussian)
}

// The row reductions keep eight partial results in one AVX register (SIMD8, the
// native width here; SIMD16 spills to the stack) and combine them at the end.

@inline(__always)
private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

/// Sum of the eight lanes, pairwise.
@inline(__always)
private func laneSum(_ v: SIMD8<Float>) -> Float {
    let h = v.lowHalf + v.highHalf
    let q = h.lowHalf + h.highHalf
    return q[0] + q[1]
}

/// Σ p[0..<n].
@inline(__always)
func rowSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n { acc += load8(p + i); i += 8 }
    var s = laneSum(acc)
    while i < n { s += p[i]; i += 1 }
    return s
}

/// Σ a[i]·b[i] over 0..<n.
@inline(__always)
func rowDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n { acc += load8(a + i) * load8(b + i); i += 8 }
    var s = laneSum(acc)
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// Σ a[i]·b[i]·c[i] over 0..<n.
@inline(__always)
func rowDot3(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n { acc += load8(a + i) * load8(b + i) * load8(c + i); i += 8 }
    var s = laneSum(acc)
    while i < n { s += a[i] * b[i] * c[i]; i += 1 }
    return s
}

/// Σ (p[i] − c)² over 0..<n.
@inline(__always)
func rowSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, from c: Float) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    let cv = SIMD8<Float>(repeating: c)
    var i = 0
    while i + 8 <= n { let d = load8(p + i) - cv; acc += d * d; i += 8 }
    var s = laneSum(acc)
    while i < n { let d = p[i] - c; s += d * d; i += 1 }
    return s
}

/// max p[0..<n] (−∞ for n = 0). A NaN in the row may be dropped; softmax of
/// such a row is NaN anyway through the sum.
@inline(__always)
func rowMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    while i + 8 <= n {
        let v = load8(p + i)
        acc.replace(with: v, where: v .> acc)
        i += 8
    }
    var m = -Float.infinity
    for lane in 0..<8 where acc[lane] > m { m = acc[lane] }
    while i < n { if p[i] > m { m = p[i] }; i += 1 }
    return m
}

// MARK: - Partial vectors

/// Up to 8 floats as a vector (the rest zero).
@inlinable @inline(__always)
public func loadLanes(_ p: UnsafeMutablePointer<Float>, _ lanes: Int) -> SIMD8<Float> {
    if lanes == 8 { return UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
    var v = SIMD8<Float>.zero
    for k in 0..<lanes { v[k] = p[k] }
    return v
}

/// The first `lanes` floats of a vector.
@inlinable @inline(__always)
public func storeLanes(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, _ lanes: Int) {
    if lanes == 8 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self); return }
    for k in 0..<lanes { p[k] = v[k] }
}

