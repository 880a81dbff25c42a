import TensorEngine

/// One op of a reference model (a convolution, a matrix product, or a
/// memory-bound op), with how many times a forward pass of the model runs it.
public struct OpShape: Codable, Sendable {
    public enum Kind: String, Codable, Sendable { case conv, matmul, groupNorm, layerNorm, softmax, silu, add }
    public var model: String
    public var name: String
    public var kind: Kind
    public var count: Int
    // conv: NHWC input [n, h, w, c], OIHW weight [o, c, k, k]
    public var n = 0, h = 0, w = 0, c = 0, o = 0, k = 0, stride = 1
    public var padding = [0, 0, 0, 0]          // top, bottom, left, right
    /// False when the conv reads the model input (no gradient to it).
    public var inputGrad = true
    // matmul: [batch,] M×K times K×N (weight stored [N, K] for linear layers)
    public var batch = 1, m = 0, kDim = 0, nDim = 0
    public var linear = false                   // x·Wᵀ with W [N, K] shared over the batch
    // memory-bound ops: the tensor's shape (NHWC for groupNorm) and groups
    public var dims: [Int] = []
    public var groups = 0

    /// Floating-point operations of one forward.
    public var forwardFlops: Double {
        switch kind {
        case .conv:
            let oh = (h + padding[0] + padding[1] - k) / stride + 1, ow = (w + padding[2] + padding[3] - k) / stride + 1
            return 2 * Double(n * oh * ow * o * c * k * k)
        case .matmul:
            return 2 * Double(batch * m * kDim * nDim)
        default:
            return 0
        }
    }

    /// Memory-bound ops: the minimum bytes a forward + backward must move. A unary op
    /// reads x and writes y (8 B per element), then reads dy and x and writes dx
    /// (12 B); add reads two and writes one each way (24 B).
    public var trainingBytes: Double {
        let elements = Double(dims.reduce(1, *))
        return elements * (kind == .add ? 24 : 20)
    }

    /// Forward + backward: the backward runs two products of the forward's size
    /// (to the input and to the weight), one when the input needs no gradient.
    public var trainingFlops: Double { forwardFlops * (inputGrad ? 3 : 2) }

    static func conv(_ model: String, _ name: String, count: Int = 1, n: Int, hw: Int, _ c: Int, _ o: Int, k: Int,
                     stride: Int = 1, padding: [Int]? = nil, inputGrad: Bool = true) -> OpShape {
        var s = OpShape(model: model, name: name, kind: .conv, count: count)
        (s.n, s.h, s.w, s.c, s.o, s.k, s.stride) = (n, hw, hw, c, o, k, stride)
        s.padding = padding ?? [k / 2, k / 2, k / 2, k / 2]
        s.inputGrad = inputGrad
        return s
    }

    static func linear(_ model: String, _ name: String, count: Int = 1, rows: Int, _ inFeatures: Int, _ outFeatures: Int) -> OpShape {
        var s = OpShape(model: model, name: name, kind: .matmul, count: count)
        (s.m, s.kDim, s.nDim, s.linear) = (rows, inFeatures, outFeatures, true)
        return s
    }

    static func memoryBound(_ model: String, _ name: String, _ kind: Kind, count: Int = 1, _ dims: [Int],
                            groups: Int = 0) -> OpShape {
        var s = OpShape(model: model, name: name, kind: kind, count: count)
        (s.dims, s.groups) = (dims, groups)
        return s
    }

    static func batched(_ model: String, _ name: String, count: Int = 1, batch: Int, _ m: Int, _ k: Int, _ n: Int) -> OpShape {
        var s = OpShape(model: model, name: name, kind: .matmul, count: count)
        (s.batch, s.m, s.kDim, s.nDim) = (batch, m, k, n)
        return s
    }
}

/// Every conv and matmul shape of the two reference models at batch `n`, derived
/// from their architectures (the reference recipe, Launch/configs/fmnist.yaml):
/// - autoencoder "kl-f4-fmnist": 1×32×32 input, ch 64, ch_mult [1, 2, 4], one res
///   block, mid-block attention, z_channels 4 (double_z), embed_dim 4;
/// - UNet "ldm-fmnist": 4×8×8 latents, model_channels 64, channel_mult [1, 2], two res
///   blocks, SpatialTransformer (4 heads of 32, context 64, one token) at 4×4.
public enum ReferenceShapes {
    public static func autoencoder(batch n: Int) -> [OpShape] {
        let m = "autoencoder", asym = [0, 1, 0, 1]
        return [
            .conv(m, "encoder.conv_in", n: n, hw: 32, 1, 64, k: 3, inputGrad: false),
            .conv(m, "3x3 64->64 @32 (resnet convs)", count: 5, n: n, hw: 32, 64, 64, k: 3),
            .conv(m, "encoder.down.0.downsample", n: n, hw: 32, 64, 64, k: 3, stride: 2, padding: asym),
            .conv(m, "encoder.down.1.block.0.conv1", n: n, hw: 16, 64, 128, k: 3),
            .conv(m, "3x3 128->128 @16 (resnet convs)", count: 4, n: n, hw: 16, 128, 128, k: 3),
            .conv(m, "encoder.down.1.block.0.nin_shortcut", n: n, hw: 16, 64, 128, k: 1),
            .conv(m, "encoder.down.1.downsample", n: n, hw: 16, 128, 128, k: 3, stride: 2, padding: asym),
            .conv(m, "encoder.down.2.block.0.conv1", n: n, hw: 8, 128, 256, k: 3),
            .conv(m, "3x3 256->256 @8 (resnet convs)", count: 13, n: n, hw: 8, 256, 256, k: 3),
            .conv(m, "encoder.down.2.block.0.nin_shortcut", n: n, hw: 8, 128, 256, k: 1),
            .conv(m, "1x1 256->256 @8 (attention q/k/v/proj_out)", count: 8, n: n, hw: 8, 256, 256, k: 1),
            .conv(m, "encoder.conv_out", n: n, hw: 8, 256, 8, k: 3),
            .conv(m, "quant_conv", n: n, hw: 8, 8, 8, k: 1),
            .conv(m, "post_quant_conv", n: n, hw: 8, 4, 4, k: 1),
            .conv(m, "decoder.conv_in", n: n, hw: 8, 4, 256, k: 3),
            .conv(m, "decoder.up.2.upsample.conv", n: n, hw: 16, 256, 256, k: 3),
            .conv(m, "decoder.up.1.block.0.conv1", n: n, hw: 16, 256, 128, k: 3),
            .conv(m, "decoder.up.1.block.0.nin_shortcut", n: n, hw: 16, 256, 128, k: 1),
            .conv(m, "decoder.up.1.upsample.conv", n: n, hw: 32, 128, 128, k: 3),
            .conv(m, "decoder.up.0.block.0.conv1", n: n, hw: 32, 128, 64, k: 3),
            .conv(m, "decoder.up.0.block.0.nin_shortcut", n: n, hw: 32, 128, 64, k: 1),
            .conv(m, "decoder.conv_out", n: n, hw: 32, 64, 1, k: 3),
            .batched(m, "mid attention q·kᵀ", count: 2, batch: n, 64, 256, 64),
            .batched(m, "mid attention weights·v", count: 2, batch: n, 64, 64, 256),
            .memoryBound(m, "GroupNorm @32x32x64", .groupNorm, count: 9, [n, 32, 32, 64], groups: 32),
            .memoryBound(m, "GroupNorm @8x8x256", .groupNorm, count: 15, [n, 8, 8, 256], groups: 32),
            .memoryBound(m, "SiLU @32x32x64", .silu, count: 8, [n, 32, 32, 64]),
            .memoryBound(m, "residual add @32x32x64", .add, count: 3, [n, 32, 32, 64]),
            .memoryBound(m, "attention softmax 64x64", .softmax, count: 2, [n, 64, 64]),
        ]
    }

    public static func unet(batch n: Int) -> [OpShape] {
        let m = "unet", tokens = n * 16, heads = n * 4
        return [
            .conv(m, "input_blocks.0.0", n: n, hw: 8, 4, 64, k: 3, inputGrad: false),
            .conv(m, "3x3 64->64 @8 (resblock convs)", count: 7, n: n, hw: 8, 64, 64, k: 3),
            .conv(m, "input_blocks.3.0.op (downsample)", n: n, hw: 8, 64, 64, k: 3, stride: 2),
            .conv(m, "input_blocks.4.0.in_layers.2", n: n, hw: 4, 64, 128, k: 3),
            .conv(m, "3x3 128->128 @4 (resblock convs)", count: 10, n: n, hw: 4, 128, 128, k: 3),
            .conv(m, "input_blocks.4.0.skip_connection", n: n, hw: 4, 64, 128, k: 1),
            .conv(m, "1x1 128->128 @4 (proj_in/proj_out)", count: 12, n: n, hw: 4, 128, 128, k: 1),
            .conv(m, "3x3 256->128 @4 (output_blocks.0-1 in_layers)", count: 2, n: n, hw: 4, 256, 128, k: 3),
            .conv(m, "1x1 256->128 @4 (output_blocks.0-1 skip)", count: 2, n: n, hw: 4, 256, 128, k: 1),
            .conv(m, "output_blocks.2.0.in_layers.2", n: n, hw: 4, 192, 128, k: 3),
            .conv(m, "output_blocks.2.0.skip_connection", n: n, hw: 4, 192, 128, k: 1),
            .conv(m, "output_blocks.2.2.conv (upsample)", n: n, hw: 8, 128, 128, k: 3),
            .conv(m, "output_blocks.3.0.in_layers.2", n: n, hw: 8, 192, 64, k: 3),
            .conv(m, "output_blocks.3.0.skip_connection", n: n, hw: 8, 192, 64, k: 1),
            .conv(m, "3x3 128->64 @8 (output_blocks.4-5 in_layers)", count: 2, n: n, hw: 8, 128, 64, k: 3),
            .conv(m, "1x1 128->64 @8 (output_blocks.4-5 skip)", count: 2, n: n, hw: 8, 128, 64, k: 1),
            .conv(m, "out.2", n: n, hw: 8, 64, 4, k: 3),
            .linear(m, "time_embed.0", rows: n, 64, 256),
            .linear(m, "time_embed.2", rows: n, 256, 256),
            .linear(m, "emb_layers 256->64", count: 5, rows: n, 256, 64),
            .linear(m, "emb_layers 256->128", count: 7, rows: n, 256, 128),
            .linear(m, "attention to_q/k/v/out 128->128", count: 36, rows: tokens, 128, 128),
            .linear(m, "cross-attention to_k/to_v 64->128", count: 12, rows: n, 64, 128),
            .linear(m, "ff GEGLU proj 128->1024", count: 6, rows: tokens, 128, 1024),
            .linear(m, "ff out 512->128", count: 6, rows: tokens, 512, 128),
            .batched(m, "self-attention q·kᵀ", count: 6, batch: heads, 16, 32, 16),
            .batched(m, "self-attention weights·v", count: 6, batch: heads, 16, 16, 32),
            .batched(m, "cross-attention q·kᵀ", count: 6, batch: heads, 16, 32, 1),
            .batched(m, "cross-attention weights·v", count: 6, batch: heads, 16, 1, 32),
            .memoryBound(m, "GroupNorm @8x8x64", .groupNorm, count: 12, [n, 8, 8, 64], groups: 32),
            .memoryBound(m, "GroupNorm @4x4x128", .groupNorm, count: 20, [n, 4, 4, 128], groups: 32),
            .memoryBound(m, "LayerNorm 128", .layerNorm, count: 18, [tokens, 128]),
            .memoryBound(m, "self-attention softmax 16x16", .softmax, count: 6, [heads, 16, 16]),
            .memoryBound(m, "SiLU @8x8x64", .silu, count: 14, [n, 8, 8, 64]),
            .memoryBound(m, "residual add @8x8x64", .add, count: 8, [n, 8, 8, 64]),
        ]
    }
}
