import CDNNL
import CFastMath

/// bfloat16: the top 16 bits of a float32 (8 exponent bits, 7 mantissa bits). It keeps
/// float32's range and gives up precision (a relative step of 2⁻⁸), and this CPU's
/// AVX512-BF16 instructions multiply pairs of them into float32 sums at twice the rate
/// of float32 FMAs. The engine stores every tensor in float32; under
/// `Precision.bf16` the operands of the convolutions and matrix products are rounded
/// to bfloat16 on their way in, and the products accumulate and land in float32.
struct BF16: Equatable {
    var bits: UInt16

    init(bits: UInt16) { self.bits = bits }

    /// The nearest bfloat16 to `x`, ties to even; NaN stays NaN.
    init(_ x: Float) {
        var x = x, b: UInt16 = 0
        ldm_round_to_bf16(&x, &b, 1)
        bits = b
    }

    var float: Float { Float(bitPattern: UInt32(bits) << 16) }

    /// dst[i] = bf16(src[i]) for i in 0..<count (ties to even), split across threads; by
    /// the CPU's VCVTNEPS2BF16 where it has one, which also makes float32 subnormals zero.
    static func convert(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<BF16>, count: Int) {
        let bits = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt16.self)
        let round = hasInstruction ? ldm_round_to_bf16_avx512 : ldm_round_to_bf16
        parallelFor(count, grain: 1 << 17) { r in round(src + r.lowerBound, bits + r.lowerBound, r.count) }
    }

    /// Stores the first `lanes` values of `v` rounded to bfloat16 at `p`.
    @inline(__always)
    static func store(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<BF16>, _ lanes: Int) {
        withUnsafePointer(to: v) { floats in
            floats.withMemoryRebound(to: Float.self, capacity: 16) { f in
                ldm_round_to_bf16(f, UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt16.self), lanes)
            }
        }
    }

    private static let hasInstruction = isSupported

    /// Whether this CPU has the AVX512-BF16 instructions oneDNN's bf16 kernels run on.
    /// oneDNN also runs bf16 on plain AVX-512 by emulation, slower than float32, so a
    /// run that asks for bf16 there is refused rather than slowed down.
    static var isSupported: Bool {
        let needed = dnnl_cpu_isa_avx512_core_bf16.rawValue
        return dnnl_get_effective_cpu_isa().rawValue & needed == needed
    }
}

extension Precision {
    /// Whether this machine computes in this precision at full speed.
    public var isSupported: Bool { self == .fp32 || BF16.isSupported }

    /// Why this machine cannot compute in this precision, nil when it can.
    public var unsupportedReason: String? {
        isSupported ? nil : "bf16 needs a CPU with AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids or later; AMD Zen 4 or later); "
            + "this one lacks it: use fp32"
    }
}

extension Tensor {
    /// Each value rounded to the nearest bfloat16 (ties to even), kept as float32: what a
    /// bf16 product reads of this tensor. No gradient flows through it.
    public func roundedToBF16() -> Tensor {
        let rounded = Scratch(roundingToBF16: pointer, count: count), out = Tensor(uninitialized: shape)
        for i in 0..<count { out.pointer[i] = rounded.bf16[i].float }
        return out
    }
}
