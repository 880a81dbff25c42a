import Foundation
import Testing
import TensorEngine
import TestSupport

/// The engine's choices (`EngineOptions`) compute the same convolution by different
/// kernels: each is checked against the naive reference, forward and input gradient,
/// and the choices must really differ in how they round.
@Suite("Engine options: Winograd variant and oneDNN's conv layout")
struct EngineOptionsTests {
    /// A Winograd geometry (3×3, stride 1, pad 1, ≥ 32 channels) with 8×8 outputs, where
    /// F(4×4) and F(2×2) both apply; and a wide stride-2 one oneDNN runs in either layout.
    static let winogradCase = (x: [2, 8, 8, 32], w: [40, 32, 3, 3], stride: 1)
    static let layoutCase = (x: [2, 8, 8, 16], w: [24, 16, 3, 3], stride: 2)

    /// y, dL/dx and dL/dw for L = Σ y ⊙ r (a fixed random projection).
    func run(_ c: (x: [Int], w: [Int], stride: Int), _ options: EngineOptions) -> (y: [Float], dx: [Float], dw: [Float]) {
        Engine.withOptions(options) {
            withSeparateTape {
                let x = randn(c.x, 1), w = randn(c.w, 2, scale: 0.3), b = randn([c.w[0]], 3)
                x.requiresGrad = true
                w.requiresGrad = true
                let y = conv2d(x, weight: w, bias: b, stride: c.stride, padding: Padding2D(1))
                let r = randn(y.shape, 4)
                (y * r).sum().backward()
                return (y.scalars, x.grad!.scalars, w.grad!.scalars)
            }
        }
    }

    @Test("f4, f2 and off compute the naive convolution (forward, input and weight gradient) and round differently")
    func winogradChoices() {
        let c = Self.winogradCase
        let results = EngineOptions.Winograd.allCases.map { run(c, EngineOptions(winograd: $0)) }
        let ref = Reference.conv2d(randn(c.x, 1), randn(c.w, 2, scale: 0.3), randn([c.w[0]], 3), stride: 1, padding: Padding2D(1))
        let rms = (ref.map { $0 * $0 }.reduce(0, +) / Double(ref.count)).squareRoot()
        for (choice, r) in zip(EngineOptions.Winograd.allCases, results) {
            #expect(zip(r.y, ref).allSatisfy { abs(Double($0) - $1) <= 2e-4 * rms }, "\(choice)")
            #expect(zip(r.dx, results[2].dx).allSatisfy { abs($0 - $1) <= 2e-4 * max(1, abs($1)) }, "\(choice): input gradient")
            #expect(zip(r.dw, results[2].dw).allSatisfy { abs($0 - $1) <= 2e-4 * max(1, abs($1)) }, "\(choice): weight gradient")
        }
        #expect(results[0].y != results[1].y && results[0].y != results[2].y && results[1].y != results[2].y)
    }

    @Test("a Winograd forward that keeps its transformed input and one that lets backward recompute it give bitwise the same gradients")
    func keepOrRecompute() {
        for variant in [EngineOptions.Winograd.f4, .f2] {
            let keep = run(Self.winogradCase, EngineOptions(winograd: variant, winogradInput: .keep))
            let recompute = run(Self.winogradCase, EngineOptions(winograd: variant, winogradInput: .recompute))
            #expect(keep.y == recompute.y && keep.dx == recompute.dx && keep.dw == recompute.dw, "\(variant)")
            #expect(keep.dw.contains { $0 != 0 })
        }
    }

    @Test("oneDNN's convolution in NHWC and in its own layout agree; a thread's options leave the process's alone")
    func layouts() {
        let c = Self.layoutCase
        let auto = run(c, EngineOptions(convLayout: .auto)), nhwc = run(c, EngineOptions(convLayout: .nhwc))
        #expect(zip(auto.y, nhwc.y).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) })
        #expect(zip(auto.dx, nhwc.dx).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) })
        let process = Engine.options
        let inside = Engine.withOptions(EngineOptions(winograd: .off, convLayout: .nhwc)) { Engine.options }
        #expect(inside == EngineOptions(winograd: .off, convLayout: .nhwc) && Engine.options == process)
    }
}
