import Foundation
import Testing
import TensorEngine
import TestSupport

/// `Precision.bf16`: the convolutions and matrix products read their operands rounded
/// to bfloat16 and sum in float32. Each kernel path (Winograd F(4×4) and F(2×2),
/// oneDNN's direct convolution in its blocked layout and in NHWC, linear, batched
/// matmul) is checked against the same call in float32, forward and both gradients.
@Suite("bf16 compute against float32")
struct PrecisionTests {
    /// ‖a − b‖ / ‖b‖.
    func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        let d = zip(a, b).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
        return (d / b.map { Double($0) * Double($0) }.reduce(0, +)).squareRoot()
    }

    /// y, dL/dx and dL/dw of a conv for L = Σ y ⊙ r (a fixed random projection).
    func conv(_ xShape: [Int], _ wShape: [Int], stride: Int, pad: Int, _ options: EngineOptions) -> [[Float]] {
        Engine.withOptions(options) {
            withSeparateTape {
                let x = randn(xShape, 1), w = randn(wShape, 2, scale: 0.3), b = randn([wShape[0]], 3)
                x.requiresGrad = true
                w.requiresGrad = true
                let y = conv2d(x, weight: w, bias: b, stride: stride, padding: Padding2D(pad))
                (y * randn(y.shape, 4)).sum().backward()
                return [y.scalars, x.grad!.scalars, w.grad!.scalars]
            }
        }
    }

    /// The conv kernel paths: (name, input NHWC, weight OIHW, stride, pad, Winograd choice,
    /// bound on the relative error). A direct convolution errs by about 2⁻⁹ (bfloat16's
    /// rounding) on each operand; Winograd rounds the transformed operands, and its output
    /// transform amplifies that: F(2×2) about 2×, F(4×4) about 12× (0.4% and 2.7% here).
    static let convCases: [(String, [Int], [Int], Int, Int, EngineOptions.Winograd, Double)] = [
        ("Winograd F(4×4)", [2, 8, 8, 32], [40, 32, 3, 3], 1, 1, .f4, 0.04),
        ("Winograd F(2×2)", [2, 6, 6, 48], [32, 48, 3, 3], 1, 1, .f2, 0.008),
        ("oneDNN 3×3 stride 2, blocked layout", [2, 9, 9, 16], [24, 16, 3, 3], 2, 1, .f4, 0.005),
        ("oneDNN 1×1, NHWC", [2, 8, 8, 24], [40, 24, 1, 1], 1, 0, .f4, 0.005),
    ]

    @Test("every conv path in bf16 is within its bound (relative L2) of float32 for y, dx and dw, and really rounds (error > 1e-4)")
    func convPaths() throws {
        try #require(Precision.bf16.isSupported, "this CPU has no AVX512-BF16")
        for (name, x, w, stride, pad, winograd, bound) in Self.convCases {
            let full = conv(x, w, stride: stride, pad: pad, EngineOptions(precision: .fp32, winograd: winograd))
            let half = conv(x, w, stride: stride, pad: pad, EngineOptions(precision: .bf16, winograd: winograd))
            for (what, a, b) in zip3(["y", "dx", "dw"], half, full) {
                let e = relativeError(a, b)
                #expect(e > 1e-4 && e <= bound, "\(name) \(what): relative error \(e)")
            }
        }
    }

    @Test("oneDNN's direct bf16 conv is the exact convolution of the bf16-rounded operands, summed in float32 (within 1e-5)")
    func directConvRoundsOperandsOnly() throws {
        try #require(Precision.bf16.isSupported, "this CPU has no AVX512-BF16")
        let (xs, ws) = ([2, 9, 9, 16], [24, 16, 3, 3])
        let y = Engine.withOptions(EngineOptions(precision: .bf16)) {
            withoutGradient { conv2d(randn(xs, 1), weight: randn(ws, 2, scale: 0.3), bias: randn([24], 3), stride: 2, padding: Padding2D(1)) }
        }
        let ref = Reference.conv2d(randn(xs, 1).roundedToBF16(), randn(ws, 2, scale: 0.3).roundedToBF16(), randn([24], 3),
                                   stride: 2, padding: Padding2D(1))
        let unrounded = Reference.conv2d(randn(xs, 1), randn(ws, 2, scale: 0.3), randn([24], 3), stride: 2, padding: Padding2D(1))
        let scale = ref.map { abs($0) }.max()!
        #expect(zip(y.scalars, ref).allSatisfy { abs(Double($0) - $1) <= 1e-5 * scale })
        #expect(zip(y.scalars, unrounded).contains { abs(Double($0) - $1) > 1e-3 * scale }, "the operands were not rounded")
    }

    @Test("linear and batched matmul (with transposes) in bf16 are within 1% of float32, forward and gradients")
    func products() throws {
        try #require(Precision.bf16.isSupported, "this CPU has no AVX512-BF16")
        func run(_ precision: Precision) -> [[Float]] {
            Engine.withOptions(EngineOptions(precision: precision)) {
                withSeparateTape {
                    let x = randn([3, 5, 48], 1), w = randn([40, 48], 2, scale: 0.2), b = randn([40], 3)
                    let q = randn([4, 16, 32], 5), k = randn([4, 24, 32], 6)
                    for t in [x, w, b, q, k] { t.requiresGrad = true }
                    let y = linear(x, weight: w, bias: b), s = matmul(q, k, transposeB: true)
                    ((y * randn(y.shape, 4)).sum() + (s * randn(s.shape, 7)).sum()).backward()
                    return [y.scalars, s.scalars, x.grad!.scalars, w.grad!.scalars, b.grad!.scalars, q.grad!.scalars, k.grad!.scalars]
                }
            }
        }
        let (half, full) = (run(.bf16), run(.fp32))
        for (what, a, b) in zip3(["y", "qkᵀ", "dx", "dw", "db", "dq", "dk"], half, full) {
            let e = relativeError(a, b)
            // The bias gradient is a float32 column sum of the output gradient: not rounded at all.
            #expect(e <= 1e-2 && (what == "db" ? e == 0 : e > 1e-4), "\(what): relative error \(e)")
        }
    }

    @Test("rounding to bfloat16 is to nearest, ties to even; infinities stay, NaN stays NaN, the largest float rounds to infinity")
    func rounding() {
        let one: UInt32 = 0x3F80_0000, ulp: UInt32 = 1 << 16
        let cases: [(UInt32, UInt32)] = [
            (one, one),
            (one + ulp / 2 - 1, one),              // below the midpoint: down
            (one + ulp / 2, one),                  // tie, even below: down
            (one + ulp + ulp / 2, one + 2 * ulp),  // tie, odd below: up to even
            (one + ulp / 2 + 1, one + ulp),        // above the midpoint: up
            (0xBF80_8001, 0xBF81_0000),            // negative values round by magnitude
            (0x7F80_0000, 0x7F80_0000), (0xFF80_0000, 0xFF80_0000),
            (0x7F7F_FFFF, 0x7F80_0000),
        ]
        // Twice over: a block of sixteen and a tail, which the AVX512-BF16 path rounds apart.
        let twice = cases + cases
        let t = Tensor(shape: [twice.count], scalars: twice.map { Float(bitPattern: $0.0) }).roundedToBF16()
        for (i, c) in twice.enumerated() {
            #expect(t.scalars[i].bitPattern == c.1, "\(i): \(String(c.0, radix: 16)) → \(String(t.scalars[i].bitPattern, radix: 16))")
        }
        // A float32 subnormal: the CPU's instruction makes it a zero of the same sign, the portable rounding rounds it.
        let subnormal = Tensor(shape: [2], scalars: [Float(bitPattern: 0x0001_8000), -Float(bitPattern: 0x0001_8000)]).roundedToBF16()
        #expect(subnormal.scalars.map(\.bitPattern) == (Precision.bf16.isSupported ? [0, 0x8000_0000] : [0x0002_0000, 0x8002_0000]))
        let nan = Tensor(shape: [2], scalars: [Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFFFF_FFFF)]).roundedToBF16()
        #expect(nan.scalars.allSatisfy { $0.isNaN })
        let random = randn([4096], 9)
        #expect(zip(random.roundedToBF16().scalars, random.scalars).allSatisfy { abs($0 - $1) <= abs($1) / 256 })
    }
}

/// Three sequences side by side.
func zip3<A: Sequence, B: Sequence, C: Sequence>(_ a: A, _ b: B, _ c: C) -> [(A.Element, B.Element, C.Element)] {
    zip(zip(a, b), c).map { ($0.0, $0.1, $1) }
}
