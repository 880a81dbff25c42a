import Testing
import TensorEngine
import TestSupport

/// Every differentiable op's backward agrees with
/// central differences. The engine is float32, so the loss Σ r ⊙ f(x) is summed in
/// Double and compared with a stated relative tolerance.
@Suite("Gradients")
struct GradientTests {
    /// Tolerance on the directional derivative: float32 forward passes with h = 1e-2
    /// give ~1e-4 relative error on smooth ops; 2e-3 leaves room and still catches
    /// any wrong term (a dropped term or factor is an O(1) error).
    static let directionalTolerance = 2e-3
    /// Tolerance on single Jacobian entries (no averaging over elements).
    static let jacobianTolerance = 1e-2

    @Test("random-direction check of Σ r ⊙ f(x)", arguments: opCases)
    func directional(_ c: OpCase) {
        let report = gradCheck(c.inputs(false), c.op)
        #expect(report.worstError < Self.directionalTolerance, "\(c.name): \(report)")
    }

    @Test("full Jacobian on tiny shapes", arguments: opCases)
    func jacobian(_ c: OpCase) {
        let report = jacobianCheck(c.inputs(true), c.op)
        #expect(report.worstError < Self.jacobianTolerance, "\(c.name): \(report)")
    }

    @Test("the table covers each op the engine exports")
    func coverage() {
        let names = Set(opCases.map(\.name))
        for required in ["add", "sub broadcast", "mul broadcast", "div broadcast", "neg", "scale", "exp", "log", "sqrt",
                         "silu", "gelu", "geglu", "sigmoid", "sum axis", "mean axes", "reshape", "permute NHWC to NCHW",
                         "concat channels", "split channels", "slice", "matmul", "batched matmul", "linear",
                         "conv 3x3 pad 1", "upsample nearest 2x", "max pool 2x2", "group norm", "group norm then SiLU (fused)", "layer norm", "softmax", "attention",
                         "embedding", "l1 loss", "mse loss", "KL of diagonal Gaussian", "clamp"] {
            #expect(names.contains(required), "no gradient check for \(required)")
        }
    }
}
