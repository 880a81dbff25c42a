import NN
import Testing
import TensorEngine
import TestSupport

/// Gradient checks of each autoencoder block on tiny shapes (Σ r ⊙ block(x),
/// random directions, tolerances as in the engine's op table).
@Suite("Autoencoder blocks")
struct BlockTests {
    struct Case: Sendable, CustomStringConvertible {
        let description: String
        let input: [Int]
        let make: @Sendable (ParameterInitializer) -> (Tensor) -> Tensor
    }

    static let cases: [Case] = [
        Case(description: "ResnetBlock 32→32", input: [2, 4, 4, 32]) { i in let b = ResnetBlock(32, 32, i); return { b($0) } },
        Case(description: "ResnetBlock 32→64 (nin_shortcut)", input: [2, 4, 4, 32]) { i in let b = ResnetBlock(32, 64, i); return { b($0) } },
        Case(description: "AttnBlock", input: [2, 3, 3, 32]) { i in let b = AttnBlock(32, i); return { b($0) } },
        Case(description: "Downsample", input: [2, 6, 6, 8]) { i in let b = Downsample(8, i); return { b($0) } },
        Case(description: "Upsample", input: [2, 3, 3, 8]) { i in let b = Upsample(8, i); return { b($0) } },
        Case(description: "GroupNorm", input: [2, 3, 3, 64]) { _ in let b = GroupNorm(64); return { b($0) } },
    ]

    @Test("gradient with respect to the input and every parameter", arguments: cases)
    func gradient(_ c: Case) {
        let initializer = ParameterInitializer(seed: 4)
        let block = c.make(initializer)
        let x = randn(c.input, 1)
        let report = gradCheck([x], directions: 4) { block($0[0]) }
        #expect(report.worstError < 2e-3, "\(c): input: \(report)")
    }
}
