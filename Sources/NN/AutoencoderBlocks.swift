import TensorEngine

// The building blocks of the CompVis autoencoder (ldm/modules/diffusionmodules/model.py),
// with its parameter keys. Activations are NHWC.

/// norm1 → SiLU → conv1 → norm2 → SiLU → conv2, plus x (through a 1×1
/// `nin_shortcut` when the channel count changes).
public final class ResnetBlock: Module {
    let norm1: GroupNorm, conv1: Conv2D
    let norm2: GroupNorm, conv2: Conv2D
    let ninShortcut: Conv2D?

    public init(_ inChannels: Int, _ outChannels: Int, _ initializer: ParameterInitializer) {
        norm1 = GroupNorm(inChannels)
        conv1 = Conv2D(inChannels, outChannels, kernel: 3, initializer)
        norm2 = GroupNorm(outChannels)
        conv2 = Conv2D(outChannels, outChannels, kernel: 3, initializer)
        ninShortcut = inChannels == outChannels ? nil : Conv2D(inChannels, outChannels, kernel: 1, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = conv1(norm1(x, thenSiLU: true))
        h = conv2(norm2(h, thenSiLU: true))
        return (ninShortcut?(x) ?? x) + h
    }
}

/// Single-head spatial self-attention over the H·W positions, with a residual:
/// x + proj_out(softmax(q kᵀ/√C) v), q, k, v 1×1 convs of norm(x).
public final class AttnBlock: Module {
    let norm: GroupNorm
    let q: Conv2D, k: Conv2D, v: Conv2D
    let projOut: Conv2D

    public init(_ channels: Int, _ initializer: ParameterInitializer) {
        norm = GroupNorm(channels)
        q = Conv2D(channels, channels, kernel: 1, initializer)
        k = Conv2D(channels, channels, kernel: 1, initializer)
        v = Conv2D(channels, channels, kernel: 1, initializer)
        projOut = Conv2D(channels, channels, kernel: 1, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let hn = norm(x)
        let tokens = [n, h * w, c]   // NHWC is already [N, positions, C]
        let attended = attention(query: q(hn).reshaped(tokens), key: k(hn).reshaped(tokens), value: v(hn).reshaped(tokens))
        return x + projOut(attended.reshaped(x.shape))
    }
}

/// Stride-2 3×3 conv after padding one row/column at the bottom/right (CompVis's
/// asymmetric pad, so that 2^k sizes halve exactly).
public final class Downsample: Module {
    let conv: Conv2D

    public init(_ channels: Int, _ initializer: ParameterInitializer) {
        conv = Conv2D(channels, channels, kernel: 3, stride: 2, padding: 0, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x, padding: Padding2D(top: 0, bottom: 1, left: 0, right: 1)) }
}

/// Nearest-neighbour 2× upsampling, then a 3×3 conv.
public final class Upsample: Module {
    let conv: Conv2D

    public init(_ channels: Int, _ initializer: ParameterInitializer) {
        conv = Conv2D(channels, channels, kernel: 3, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { conv(upsampleNearest2x(x)) }
}

/// One resolution level of the encoder (`down.i`): res blocks, optional attention
/// after each, and a downsample except at the last level.
public final class DownLevel: Module {
    let block: [ResnetBlock]
    let attn: [AttnBlock]
    let downsample: Downsample?

    init(block: [ResnetBlock], attn: [AttnBlock], downsample: Downsample?) {
        (self.block, self.attn, self.downsample) = (block, attn, downsample)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let h = resnetsAndAttention(x, block, attn)
        return downsample?(h) ?? h
    }
}

/// One resolution level of the decoder (`up.i`): res blocks, optional attention,
/// and an upsample except at level 0.
public final class UpLevel: Module {
    let block: [ResnetBlock]
    let attn: [AttnBlock]
    let upsample: Upsample?

    init(block: [ResnetBlock], attn: [AttnBlock], upsample: Upsample?) {
        (self.block, self.attn, self.upsample) = (block, attn, upsample)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let h = resnetsAndAttention(x, block, attn)
        return upsample?(h) ?? h
    }
}

/// A level's res blocks, each followed by its attention block when the level has them.
private func resnetsAndAttention(_ x: Tensor, _ blocks: [ResnetBlock], _ attn: [AttnBlock]) -> Tensor {
    var h = x
    for (i, b) in blocks.enumerated() {
        h = b(h)
        if !attn.isEmpty { h = attn[i](h) }
    }
    return h
}

/// The middle of the encoder and of the decoder: block_1, attn_1, block_2.
public final class MidBlock: Module {
    let block1: ResnetBlock, attn1: AttnBlock, block2: ResnetBlock
    override public class var keys: [String: String] { ["block1": "block_1", "attn1": "attn_1", "block2": "block_2"] }

    init(_ channels: Int, _ initializer: ParameterInitializer) {
        block1 = ResnetBlock(channels, channels, initializer)
        attn1 = AttnBlock(channels, initializer)
        block2 = ResnetBlock(channels, channels, initializer)
    }

    func callAsFunction(_ x: Tensor) -> Tensor { block2(attn1(block1(x))) }
}
