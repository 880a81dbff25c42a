import TensorEngine
import TestSupport

/// One differentiable op under test: inputs for a moderate and a tiny size, and the op.
struct OpCase: Sendable, CustomStringConvertible {
    let name: String
    let inputs: @Sendable (_ tiny: Bool) -> [Tensor]
    let op: @Sendable ([Tensor]) -> Tensor
    var description: String { name }

    init(_ name: String, _ inputs: @escaping @Sendable (_ tiny: Bool) -> [Tensor], _ op: @escaping @Sendable ([Tensor]) -> Tensor) {
        (self.name, self.inputs, self.op) = (name, inputs, op)
    }

    /// Inputs drawn as N(0, 1) with the given shapes (moderate, tiny).
    init(_ name: String, shapes: [[Int]], tiny: [[Int]], _ op: @escaping @Sendable ([Tensor]) -> Tensor) {
        self.init(name, { t in (t ? tiny : shapes).enumerated().map { randn($0.element, UInt64($0.offset + 1)) } }, op)
    }
}

/// Positive inputs in [0.5, 2] for log, sqrt and division.
private func positive(_ shape: [Int], _ stream: UInt64) -> Tensor {
    Tensor.randomUniform(shape, stream: RandomStream(seed: 99, stream: stream), low: 0.5, high: 2)
}

private func conv(_ name: String, x: [Int], w: [Int], tinyX: [Int], tinyW: [Int], bias: Bool = true,
                  stride: Int = 1, padding: Padding2D) -> OpCase {
    OpCase(name, shapes: bias ? [x, w, [w[0]]] : [x, w], tiny: bias ? [tinyX, tinyW, [tinyW[0]]] : [tinyX, tinyW]) { t in
        conv2d(t[0], weight: t[1], bias: bias ? t[2] : nil, stride: stride, padding: padding)
    }
}

/// Every differentiable op of the engine, one row each. Adding an op adds a row.
let opCases: [OpCase] = [
    OpCase("add", shapes: [[3, 4, 5], [3, 4, 5]], tiny: [[2, 3], [2, 3]]) { $0[0] + $0[1] },
    OpCase("add broadcast channels", shapes: [[2, 3, 4, 8], [8]], tiny: [[2, 2, 3], [3]]) { $0[0] + $0[1] },
    OpCase("add broadcast NHWC time embedding", shapes: [[2, 3, 4, 8], [2, 1, 1, 8]], tiny: [[2, 2, 1, 3], [2, 1, 1, 3]]) { $0[0] + $0[1] },
    OpCase("add broadcast both", shapes: [[4, 1, 6], [5, 1]], tiny: [[2, 1, 3], [2, 1]]) { $0[0] + $0[1] },
    OpCase("expand size-1 axes", shapes: [[2, 1, 3]], tiny: [[2, 1, 2]]) { $0[0].expanded(to: [$0[0].shape[0], 4, $0[0].shape[2]]) },
    OpCase("sub broadcast", shapes: [[3, 4, 5], [4, 1]], tiny: [[2, 3], [2, 1]]) { $0[0] - $0[1] },
    OpCase("mul broadcast", shapes: [[3, 4, 5], [1, 4, 5]], tiny: [[2, 3], [1, 3]]) { $0[0] * $0[1] },
    OpCase("mul scalar tensor", shapes: [[3, 7], []], tiny: [[2, 2], []]) { $0[0] * $0[1] },
    OpCase("div broadcast", { t in [randn(t ? [2, 3] : [3, 4, 5], 1), positive(t ? [3] : [5], 2)] }) { $0[0] / $0[1] },
    OpCase("neg", shapes: [[4, 5]], tiny: [[3]]) { -$0[0] },
    OpCase("scale", shapes: [[4, 5]], tiny: [[3]]) { $0[0].scaled(by: -1.7) },
    OpCase("add constant", shapes: [[4, 5]], tiny: [[3]]) { $0[0].adding(0.3) },
    OpCase("exp", shapes: [[4, 5]], tiny: [[3]]) { exp($0[0]) },
    OpCase("log", { t in [positive(t ? [3] : [4, 5], 1)] }) { log($0[0]) },
    OpCase("sqrt", { t in [positive(t ? [3] : [4, 5], 1)] }) { sqrt($0[0]) },
    OpCase("sigmoid", shapes: [[4, 5]], tiny: [[3]]) { sigmoid($0[0]) },
    OpCase("silu", shapes: [[4, 5]], tiny: [[3]]) { silu($0[0]) },
    OpCase("gelu", shapes: [[4, 5]], tiny: [[3]]) { gelu($0[0]) },
    OpCase("geglu", shapes: [[3, 4, 10]], tiny: [[2, 4]]) { geglu($0[0]) },
    // kinks at 0: inputs kept away from it so central differences do not straddle it
    OpCase("relu", { t in [randn(t ? [4] : [4, 5], 1).adding(0.05)] }) { relu($0[0].scaled(by: 1)) },
    OpCase("leaky relu", { t in [randn(t ? [4] : [4, 5], 2)] }) { leakyReLU($0[0], slope: 0.2) },
    OpCase("clamp", { t in [randn(t ? [4] : [4, 5], 1, scale: 3)] }) { $0[0].clamped(min: -2, max: 2.5) },
    OpCase("sum axis", shapes: [[3, 4, 5]], tiny: [[2, 3]]) { $0[0].sum(axes: [1]) },
    OpCase("sum all", shapes: [[3, 4, 5]], tiny: [[2, 3]]) { $0[0].sum() },
    OpCase("sum keepDims first and last", shapes: [[3, 4, 5]], tiny: [[2, 2, 2]]) { $0[0].sum(axes: [0, -1], keepDims: true) },
    OpCase("mean axes", shapes: [[3, 4, 5]], tiny: [[2, 3]]) { $0[0].mean(axes: [0]) },
    OpCase("reshape", shapes: [[3, 4, 5]], tiny: [[2, 4]]) { $0[0].reshaped([4, -1]).scaled(by: 2) },
    OpCase("permute NHWC to NCHW", shapes: [[2, 3, 4, 5]], tiny: [[1, 2, 2, 2]]) { $0[0].permuted([0, 3, 1, 2]) },
    OpCase("concat channels", shapes: [[2, 3, 3, 4], [2, 3, 3, 6]], tiny: [[1, 2, 1, 2], [1, 2, 1, 1]]) { concat($0, axis: -1) },
    OpCase("concat axis 1", shapes: [[2, 3, 4], [2, 5, 4]], tiny: [[1, 2, 2], [1, 1, 2]]) { concat($0, axis: 1) },
    OpCase("split channels", shapes: [[2, 3, 8]], tiny: [[1, 2, 4]]) { t in
        let parts = t[0].split(sizes: [t[0].shape[2] / 2, t[0].shape[2] / 2], axis: 2)
        return parts[0] * parts[1]
    },
    OpCase("slice", shapes: [[4, 6, 3]], tiny: [[2, 4]]) { $0[0].slice(axis: 1, 1..<3) },
    OpCase("matmul", shapes: [[5, 7], [7, 3]], tiny: [[2, 3], [3, 2]]) { matmul($0[0], $0[1]) },
    OpCase("matmul shared b folds batch", shapes: [[2, 5, 7], [7, 3]], tiny: [[2, 2, 3], [3, 2]]) { matmul($0[0], $0[1]) },
    OpCase("matmul transposeA", shapes: [[7, 5], [7, 3]], tiny: [[3, 2], [3, 2]]) { matmul($0[0], $0[1], transposeA: true) },
    OpCase("matmul transposeB", shapes: [[5, 7], [3, 7]], tiny: [[2, 3], [2, 3]]) { matmul($0[0], $0[1], transposeB: true) },
    OpCase("batched matmul", shapes: [[3, 5, 7], [3, 7, 4]], tiny: [[2, 2, 3], [2, 3, 2]]) { matmul($0[0], $0[1]) },
    OpCase("batched matmul both transposed", shapes: [[3, 7, 5], [3, 4, 7]], tiny: [[2, 3, 2], [2, 2, 3]]) {
        matmul($0[0], $0[1], transposeA: true, transposeB: true)
    },
    OpCase("linear", shapes: [[2, 3, 6], [5, 6], [5]], tiny: [[2, 3], [2, 3], [2]]) { linear($0[0], weight: $0[1], bias: $0[2]) },
    conv("conv 3x3 pad 1", x: [2, 6, 6, 3], w: [4, 3, 3, 3], tinyX: [1, 3, 3, 2], tinyW: [2, 2, 3, 3], padding: Padding2D(1)),
    conv("conv 3x3 pad 0 no bias", x: [2, 6, 6, 3], w: [4, 3, 3, 3], tinyX: [1, 4, 4, 1], tinyW: [2, 1, 3, 3], bias: false,
         padding: Padding2D(0)),
    conv("conv stride 2 asymmetric pad (LDM downsample)", x: [2, 8, 8, 4], w: [4, 4, 3, 3], tinyX: [1, 4, 4, 1],
         tinyW: [1, 1, 3, 3], stride: 2, padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1)),
    conv("conv stride 2 pad 1 (UNet downsample)", x: [2, 8, 8, 4], w: [5, 4, 3, 3], tinyX: [1, 4, 4, 1], tinyW: [1, 1, 3, 3],
         stride: 2, padding: Padding2D(1)),
    // ≥ 8 channels in and out with a 3×3 kernel: oneDNN's blocked layout, reordered
    // around the call (the tiny Jacobian shapes stay on the NHWC path).
    conv("conv 3x3 wide (blocked layout)", x: [2, 5, 5, 8], w: [16, 8, 3, 3], tinyX: [1, 3, 3, 2], tinyW: [2, 2, 3, 3],
         padding: Padding2D(1)),
    conv("conv stride 2 asymmetric pad wide (blocked layout)", x: [2, 6, 6, 16], w: [8, 16, 3, 3], tinyX: [1, 4, 4, 1],
         tinyW: [1, 1, 3, 3], stride: 2, padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1)),
    // 3×3 stride 1 pad 1 with ≥ 32 channels: Winograd F(4×4, 3×3) from 4×4 outputs up,
    // F(2×2, 3×3) below; odd sizes give ragged tiles, 36 and 33 channels partial vectors.
    conv("conv 3x3 Winograd (ragged tiles, channel tails)", x: [2, 5, 7, 36], w: [33, 36, 3, 3], tinyX: [1, 3, 3, 2],
         tinyW: [2, 2, 3, 3], padding: Padding2D(1)),
    conv("conv 3x3 Winograd F(2×2) (3×3 map)", x: [2, 3, 3, 32], w: [40, 32, 3, 3], tinyX: [1, 3, 3, 2],
         tinyW: [2, 2, 3, 3], padding: Padding2D(1)),
    // One output channel with ≥ 8 inputs: the direct kernel of NarrowConv.swift; 44
    // channels take its 32-wide loop, an 8-wide block and a 4-lane tail.
    conv("conv to one channel (direct kernel)", x: [2, 5, 7, 44], w: [1, 44, 3, 3], tinyX: [1, 3, 3, 8],
         tinyW: [1, 8, 3, 3], padding: Padding2D(1)),
    conv("conv to one channel, asymmetric pad", x: [2, 6, 5, 12], w: [1, 12, 3, 3], tinyX: [1, 3, 4, 8],
         tinyW: [1, 8, 3, 3], padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1)),
    // A few inputs to ≥ 128 outputs: the window gemm of NarrowConv.swift (too wide for
    // the full Jacobian, whose tiny shapes stay with oneDNN).
    conv("conv few inputs to many (window gemm)", x: [2, 5, 7, 4], w: [130, 4, 3, 3], tinyX: [1, 3, 3, 2],
         tinyW: [2, 2, 3, 3], padding: Padding2D(1)),
    conv("conv few inputs, stride 2 asymmetric pad (window gemm)", x: [2, 8, 7, 3], w: [128, 3, 3, 3], tinyX: [1, 4, 4, 2],
         tinyW: [2, 2, 3, 3], stride: 2, padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1)),
    conv("conv 1x1", x: [2, 5, 5, 6], w: [3, 6, 1, 1], tinyX: [1, 2, 2, 3], tinyW: [2, 3, 1, 1], padding: Padding2D(0)),
    conv("conv odd sizes", x: [3, 7, 5, 3], w: [5, 3, 3, 3], tinyX: [1, 3, 5, 1], tinyW: [1, 1, 3, 3], padding: Padding2D(1)),
    conv("conv batch 1", x: [1, 6, 6, 2], w: [3, 2, 3, 3], tinyX: [1, 3, 3, 1], tinyW: [1, 1, 3, 3], padding: Padding2D(1)),
    OpCase("upsample nearest 2x", shapes: [[2, 3, 4, 5]], tiny: [[1, 2, 2, 2]]) { upsampleNearest2x($0[0]) },
    OpCase("max pool 2x2", shapes: [[2, 4, 6, 3]], tiny: [[1, 2, 4, 2]]) { maxPool2x2($0[0]) },
    OpCase("group norm", shapes: [[2, 4, 3, 8], [8], [8]], tiny: [[1, 2, 2, 4], [4], [4]]) {
        groupNorm($0[0], groups: 2, weight: $0[1], bias: $0[2])
    },
    OpCase("group norm then SiLU (fused)", shapes: [[2, 4, 3, 8], [8], [8]], tiny: [[1, 2, 2, 4], [4], [4]]) {
        groupNorm($0[0], groups: 2, weight: $0[1], bias: $0[2], thenSiLU: true)
    },
    OpCase("group norm one channel per group", shapes: [[2, 3, 3, 4], [4], [4]], tiny: [[1, 2, 2, 2], [2], [2]]) {
        groupNorm($0[0], groups: $0[1].count, weight: $0[1], bias: $0[2])
    },
    OpCase("layer norm", shapes: [[3, 4, 16], [16], [16]], tiny: [[2, 4], [4], [4]]) {
        layerNorm($0[0], weight: $0[1], bias: $0[2])
    },
    OpCase("softmax", shapes: [[3, 4, 9]], tiny: [[2, 4]]) { softmax($0[0]) },
    OpCase("softmax of scaled logits", shapes: [[3, 4, 9]], tiny: [[2, 4]]) { softmax($0[0], scale: 2.7) },
    OpCase("attention", shapes: [[2, 5, 8], [2, 6, 8], [2, 6, 4]], tiny: [[1, 2, 2], [1, 3, 2], [1, 3, 2]]) {
        attention(query: $0[0], key: $0[1], value: $0[2])
    },
    OpCase("embedding", shapes: [[6, 5]], tiny: [[3, 2]]) { t in embedding(t[0], indices: [0, 2, 2, 1], shape: [2, 2]) },
    OpCase("l1 loss", { t in
        let x = randn(t ? [2, 3] : [4, 5, 6], 1)
        let offset = Tensor.randomUniform(x.shape, stream: RandomStream(seed: 5), low: 0.2, high: 1)
        let sign = randn(x.shape, 9)
        let y = Tensor(shape: x.shape, scalars: (0..<x.count).map { x.scalars[$0] + (sign.scalars[$0] > 0 ? 1 : -1) * offset.scalars[$0] })
        return [x, y]
    }) { l1Loss($0[0], $0[1]) },
    OpCase("cross entropy", shapes: [[5, 7]], tiny: [[2, 3]]) { x in crossEntropy(x[0], targets: (0..<x[0].shape[0]).map { $0 % x[0].shape[1] }) },
    OpCase("mse loss", shapes: [[4, 5, 6], [4, 5, 6]], tiny: [[2, 3], [2, 3]]) { mseLoss($0[0], $0[1]) },
    OpCase("KL of diagonal Gaussian", shapes: [[3, 2, 2, 4], [3, 2, 2, 4]], tiny: [[2, 1, 1, 2], [2, 1, 1, 2]]) {
        klDiagonalGaussian(mean: $0[0], logvar: $0[1])
    },
]
