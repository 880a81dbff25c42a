import Foundation
import Testing
import TensorEngine
import TestSupport

/// Forwards of the oneDNN-backed and fused ops against the naive Double references
/// in TestSupport/References.swift (written from the definitions). Tolerances:
/// float32 sums of up to a few hundred products, rtol 1e-4 / atol 1e-5.
@Suite("Forward against naive references")
struct ReferenceTests {
    struct ConvCase: Sendable, CustomStringConvertible {
        let description: String
        let x: [Int], w: [Int], stride: Int, padding: Padding2D, bias: Bool
        /// The geometries conv2d runs by Winograd: 3×3, stride 1, pad 1, ≥ 32 channels in and out.
        var winograd: Bool {
            w[2] == 3 && w[3] == 3 && stride == 1 && padding == Padding2D(1) && w[0] >= 32 && w[1] >= 32
        }
    }

    static let convCases: [ConvCase] = [
        ConvCase(description: "3x3 stride 1 pad 1", x: [2, 8, 8, 5], w: [7, 5, 3, 3], stride: 1, padding: Padding2D(1), bias: true),
        ConvCase(description: "3x3 pad 0", x: [2, 6, 6, 3], w: [4, 3, 3, 3], stride: 1, padding: Padding2D(0), bias: true),
        ConvCase(description: "stride 2 asymmetric pad (0,1,0,1)", x: [2, 8, 8, 4], w: [4, 4, 3, 3], stride: 2,
                 padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1), bias: true),
        ConvCase(description: "stride 2 pad 1", x: [2, 9, 9, 4], w: [6, 4, 3, 3], stride: 2, padding: Padding2D(1), bias: false),
        ConvCase(description: "1x1", x: [3, 4, 4, 16], w: [8, 16, 1, 1], stride: 1, padding: Padding2D(0), bias: true),
        ConvCase(description: "odd sizes", x: [3, 7, 5, 3], w: [5, 3, 3, 3], stride: 1, padding: Padding2D(1), bias: true),
        ConvCase(description: "batch 1, one input channel", x: [1, 6, 6, 1], w: [8, 1, 3, 3], stride: 1, padding: Padding2D(1), bias: true),
        ConvCase(description: "wide channels (blocked layout)", x: [2, 4, 4, 64], w: [32, 64, 3, 3], stride: 1,
                 padding: Padding2D(1), bias: true),
        ConvCase(description: "wide, stride 2 asymmetric pad (blocked layout)", x: [2, 8, 8, 16], w: [24, 16, 3, 3], stride: 2,
                 padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1), bias: true),
        ConvCase(description: "Winograd: odd sizes, channel tails", x: [2, 5, 7, 36], w: [33, 36, 3, 3], stride: 1,
                 padding: Padding2D(1), bias: true),
        ConvCase(description: "Winograd F(2×2): 3×3 map", x: [2, 3, 3, 32], w: [40, 32, 3, 3], stride: 1,
                 padding: Padding2D(1), bias: true),
        ConvCase(description: "Winograd: 32×32, 64 channels", x: [1, 32, 32, 64], w: [64, 64, 3, 3], stride: 1,
                 padding: Padding2D(1), bias: false),
        ConvCase(description: "one output channel (direct kernel), channel tail", x: [2, 5, 7, 44], w: [1, 44, 3, 3],
                 stride: 1, padding: Padding2D(1), bias: true),
        ConvCase(description: "one output channel, asymmetric pad", x: [2, 6, 5, 12], w: [1, 12, 3, 3], stride: 1,
                 padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1), bias: false),
        ConvCase(description: "few inputs to many (window gemm)", x: [2, 5, 7, 4], w: [130, 4, 3, 3], stride: 1,
                 padding: Padding2D(1), bias: true),
        ConvCase(description: "few inputs, stride 2 asymmetric pad (window gemm)", x: [2, 8, 7, 3], w: [128, 3, 3, 3],
                 stride: 2, padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1), bias: false),
        ConvCase(description: "wide 1x1 (NHWC kernel)", x: [2, 5, 5, 32], w: [16, 32, 1, 1], stride: 1,
                 padding: Padding2D(0), bias: false),
    ]

    @Test("conv2d matches the naive convolution", arguments: convCases)
    func conv(_ c: ConvCase) {
        let x = randn(c.x, 1), w = randn(c.w, 2, scale: 0.3), b = c.bias ? randn([c.w[0]], 3) : nil
        let y = conv2d(x, weight: w, bias: b, stride: c.stride, padding: c.padding)
        let ref = Reference.conv2d(x, w, b, stride: c.stride, padding: c.padding)
        // Winograd F(4×4, 3×3) rounds to ~1e-5 of the output's scale in float32 (its transforms
        // multiply by up to 8 and divide by 24); the check allows 2e-4 of the RMS there.
        let rms = (ref.map { $0 * $0 }.reduce(0, +) / Double(ref.count)).squareRoot()
        #expect(isClose(y, ref, atol: c.winograd ? 2e-4 * rms : 1e-5), "\(c)")
    }

    @Test("matmul matches the naive product", arguments: [
        ([5, 7], [7, 3], false, false), ([2, 5, 7], [7, 3], false, false), ([7, 5], [7, 3], true, false),
        ([5, 7], [3, 7], false, true), ([4, 5, 7], [4, 7, 3], false, false), ([4, 7, 5], [4, 3, 7], true, true),
        ([64, 128], [128, 128], false, false),
    ] as [([Int], [Int], Bool, Bool)])
    func matmulReference(_ a: [Int], _ b: [Int], _ ta: Bool, _ tb: Bool) {
        let x = randn(a, 1), y = randn(b, 2)
        #expect(isClose(matmul(x, y, transposeA: ta, transposeB: tb), Reference.matmul(x, y, transposeA: ta, transposeB: tb)))
    }

    @Test("linear adds its bias to every row of x · Wᵀ")
    func linearReference() {
        let x = randn([2, 3, 6], 1), w = randn([5, 6], 2), b = randn([5], 3)
        let product = Reference.matmul(x, w, transposeA: false, transposeB: true)
        #expect(isClose(linear(x, weight: w, bias: b), product.enumerated().map { $0.element + Double(b.scalars[$0.offset % 5]) }))
    }

    @Test("groupNorm matches the definition", arguments: [([2, 4, 4, 64], 32), ([1, 3, 5, 6], 3), ([2, 2, 2, 4], 4)])
    func groupNormReference(_ shape: [Int], _ groups: Int) {
        let x = randn(shape, 1, scale: 3).adding(1.5), w = randn([shape[3]], 2), b = randn([shape[3]], 3)
        let y = groupNorm(x, groups: groups, weight: w, bias: b, eps: 1e-6)
        #expect(isClose(y, Reference.groupNorm(x, groups: groups, w, b, eps: 1e-6), rtol: 1e-4, atol: 1e-4))
    }

    @Test("groupNorm with thenSiLU equals SiLU of groupNorm", arguments: [([2, 4, 4, 64], 32), ([1, 3, 5, 6], 3)])
    func groupNormSiLU(_ shape: [Int], _ groups: Int) {
        let x = randn(shape, 1, scale: 3).adding(1.5), w = randn([shape[3]], 2), b = randn([shape[3]], 3)
        let fused = groupNorm(x, groups: groups, weight: w, bias: b, thenSiLU: true)
        let reference = silu(groupNorm(x, groups: groups, weight: w, bias: b)).scalars.map(Double.init)
        #expect(isClose(fused, reference, rtol: 1e-5, atol: 1e-6))
    }

    @Test("geglu equals a ⊙ gelu(g) of the split halves")
    func gegluReference() {
        let h = randn([3, 5, 2 * 37], 1, scale: 2)
        let parts = h.split(sizes: [37, 37], axis: -1)
        #expect(isClose(geglu(h), (parts[0] * gelu(parts[1])).scalars.map(Double.init), rtol: 1e-6, atol: 1e-7))
    }

    @Test("softmax matches the definition and rows sum to one")
    func softmaxReference() {
        let x = randn([3, 4, 37], 1, scale: 4)
        let y = softmax(x)
        #expect(isClose(y, Reference.softmax(x.scalars.map(Double.init), rowLength: 37), rtol: 1e-5, atol: 1e-6))
        let rowSums = y.sum(axes: [-1]).scalars
        #expect(rowSums.allSatisfy { abs($0 - 1) < 1e-5 })
    }

    @Test("cross-entropy is logsumexp − the target's logit, finite for logits far apart (a target of probability e^−300)")
    func crossEntropyReference() {
        let x = randn([4, 9], 1, scale: 3), targets = [0, 8, 3, 3]
        let y = crossEntropy(x, targets: targets)
        let reference = (0..<4).map { r -> Double in
            let row = (0..<9).map { Double(x.pointer[r * 9 + $0]) }
            return log(row.map { exp($0) }.reduce(0, +)) - row[targets[r]]
        }
        #expect(isClose(y, reference, rtol: 1e-5, atol: 1e-5))
        let far = Tensor(shape: [1, 2], scalars: [300, 0], requiresGrad: true)
        let loss = crossEntropy(far, targets: [1])
        loss.backward()
        #expect(abs(loss.item - 300) < 1e-3 && far.grad!.scalars == [1, -1])
    }

    @Test("attention matches softmax(q kᵀ/√d) v")
    func attentionReference() {
        let q = randn([4, 16, 32], 1), k = randn([4, 9, 32], 2), v = randn([4, 9, 8], 3)
        #expect(isClose(attention(query: q, key: k, value: v), Reference.attention(q, k, v), rtol: 1e-4, atol: 1e-5))
    }

    @Test("broadcast add, upsample, max pooling and slices by hand")
    func smallExact() {
        let a = Tensor(shape: [2, 1, 3], scalars: [1, 2, 3, 4, 5, 6])
        let b = Tensor(shape: [2, 1], scalars: [10, 20])
        #expect((a + b).shape == [2, 2, 3])
        #expect((a + b).scalars == [11, 12, 13, 21, 22, 23, 14, 15, 16, 24, 25, 26])
        let x = Tensor(shape: [1, 1, 2, 1], scalars: [1, 2])
        #expect(upsampleNearest2x(x).scalars == [1, 1, 2, 2, 1, 1, 2, 2])
        let pooled = Tensor(shape: [1, 2, 2, 2], scalars: [1, 8, 3, 2, 5, 4, 7, 6])   // channel 0: 1, 3, 5, 7; channel 1: 8, 2, 4, 6
        #expect(maxPool2x2(pooled).scalars == [7, 8])
        let m = Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        #expect(m.permuted([1, 0]).scalars == [1, 4, 2, 5, 3, 6])
        #expect(m.slice(axis: 1, 1..<3).scalars == [2, 3, 5, 6])
        #expect(concat([m, m.slice(axis: 1, 0..<1)], axis: 1).scalars == [1, 2, 3, 1, 4, 5, 6, 4])
        #expect(m.sum(axes: [0]).scalars == [5, 7, 9])
        #expect(m.mean().item == 3.5)
        #expect(embedding(m, indices: [1, 0]).scalars == [4, 5, 6, 1, 2, 3])
    }

    @Test("losses and the KL term by hand")
    func losses() {
        let x = Tensor(shape: [2, 2], scalars: [1, 2, 3, 4]), y = Tensor(shape: [2, 2], scalars: [2, 2, 1, 8])
        #expect(l1Loss(x, y).item == Float(1 + 0 + 2 + 4) / 4)
        #expect(mseLoss(x, y).item == Float(1 + 0 + 4 + 16) / 4)
        let mean = Tensor(shape: [2, 1], scalars: [0, 1]), logvar = Tensor(shape: [2, 1], scalars: [0, 0.5])
        let kl = klDiagonalGaussian(mean: mean, logvar: logvar).scalars
        #expect(kl[0] == 0)
        #expect(abs(Double(kl[1]) - 0.5 * (1 + 1.6487212707 - 1 - 0.5)) < 1e-6)
    }

    @Test("fastExp is within a few ulp of exp on the range that matters")
    func fastExpAccuracy() {
        var worst: Float = 0
        for i in 0...20000 {
            let x = -80 + Float(i) * 0.008
            let r = Float(Foundation.exp(Double(x)))
            worst = max(worst, abs(fastExp(x) - r) / r)
        }
        #expect(worst < 4e-7)
        #expect(fastExp(.nan).isNaN)
    }
}
