/// e^x without a libm call, so loops over it vectorise (Cephes expf: x = n·ln2 + r,
/// |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^n built in the exponent bits).
/// Relative error ≲ 2 ulp on [-87, 88]; inputs are clamped to that range and NaN
/// propagates.
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
