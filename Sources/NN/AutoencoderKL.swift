import TensorEngine

/// The architecture of an autoencoder (CompVis `ddconfig` names).
public struct AutoencoderArchitecture: Codable, Equatable, Sendable {
    public var inChannels = 1
    public var outCh = 1
    public var resolution = 32
    public var ch = 64
    public var chMult = [1, 2, 4]
    public var numResBlocks = 1
    public var attnResolutions: [Int] = []
    public var zChannels = 4
    public var doubleZ = true
    public var embedDim = 4

    public init() {}

    /// Downsampling factor f = 2^(levels − 1).
    public var factor: Int { 1 << (chMult.count - 1) }
    /// Latent side length.
    public var latentSize: Int { resolution / factor }

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outCh = "out_ch", resolution, ch, chMult = "ch_mult"
        case numResBlocks = "num_res_blocks", attnResolutions = "attn_resolutions", zChannels = "z_channels"
        case doubleZ = "double_z", embedDim = "embed_dim"
    }
}

/// x [N, R, R, in] → moments [N, R/f, R/f, 2·z_channels] (mean and log-variance
/// when double_z).
public final class Encoder: Module {
    let convIn: Conv2D
    let down: [DownLevel]
    let mid: MidBlock
    let normOut: GroupNorm
    let convOut: Conv2D

    public init(_ a: AutoencoderArchitecture, _ initializer: ParameterInitializer) {
        convIn = Conv2D(a.inChannels, a.ch, kernel: 3, initializer)
        var levels: [DownLevel] = []
        var blockIn = a.ch, resolution = a.resolution
        for (i, mult) in a.chMult.enumerated() {
            let blockOut = a.ch * mult
            var blocks: [ResnetBlock] = [], attns: [AttnBlock] = []
            for _ in 0..<a.numResBlocks {
                blocks.append(ResnetBlock(blockIn, blockOut, initializer))
                blockIn = blockOut
                if a.attnResolutions.contains(resolution) { attns.append(AttnBlock(blockIn, initializer)) }
            }
            let last = i == a.chMult.count - 1
            levels.append(DownLevel(block: blocks, attn: attns, downsample: last ? nil : Downsample(blockIn, initializer)))
            if !last { resolution /= 2 }
        }
        down = levels
        mid = MidBlock(blockIn, initializer)
        normOut = GroupNorm(blockIn)
        convOut = Conv2D(blockIn, a.doubleZ ? 2 * a.zChannels : a.zChannels, kernel: 3, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = convIn(x)
        for level in down { h = level(h) }
        return convOut(normOut(mid(h), thenSiLU: true))
    }
}

/// z [N, R/f, R/f, z_channels] → image [N, R, R, out_ch].
public final class Decoder: Module {
    let convIn: Conv2D
    let mid: MidBlock
    /// Keyed by level like CompVis (`up.0` is the full-resolution level), run from the last.
    let up: [UpLevel]
    let normOut: GroupNorm
    let convOut: Conv2D
    override public var childrenInGradientOrder: [(String, Any)]? {
        [("conv_out", convOut), ("norm_out", normOut)] + up.indices.map { ("up.\($0)", up[$0]) } + [("mid", mid), ("conv_in", convIn)]
    }

    public init(_ a: AutoencoderArchitecture, _ initializer: ParameterInitializer) {
        var blockIn = a.ch * a.chMult.last!
        var resolution = a.latentSize
        convIn = Conv2D(a.zChannels, blockIn, kernel: 3, initializer)
        mid = MidBlock(blockIn, initializer)
        var levels: [UpLevel] = []
        for i in a.chMult.indices.reversed() {
            let blockOut = a.ch * a.chMult[i]
            var blocks: [ResnetBlock] = [], attns: [AttnBlock] = []
            for _ in 0...a.numResBlocks {
                blocks.append(ResnetBlock(blockIn, blockOut, initializer))
                blockIn = blockOut
                if a.attnResolutions.contains(resolution) { attns.append(AttnBlock(blockIn, initializer)) }
            }
            levels.insert(UpLevel(block: blocks, attn: attns, upsample: i == 0 ? nil : Upsample(blockIn, initializer)), at: 0)
            if i != 0 { resolution *= 2 }
        }
        up = levels
        normOut = GroupNorm(blockIn)
        convOut = Conv2D(blockIn, a.outCh, kernel: 3, initializer)
    }

    /// The input of the last conv (for the adaptive GAN weight) and the output.
    public func forward(_ z: Tensor) -> (lastInput: Tensor, output: Tensor) {
        var h = mid(convIn(z))
        for level in up.reversed() { h = level(h) }
        let lastInput = normOut(h, thenSiLU: true)
        return (lastInput, convOut(lastInput))
    }

    public func callAsFunction(_ z: Tensor) -> Tensor { forward(z).output }

    /// The weight of the last conv, where the adaptive GAN weight compares gradients.
    public var lastLayerWeight: Tensor { convOut.weight }
}

/// N(mean, exp(logvar)) from moments [..., 2c] split along channels; logvar is
/// clamped to [−30, 20] as in CompVis.
public struct DiagonalGaussian {
    public let mean: Tensor
    public let logvar: Tensor

    public init(moments: Tensor) {
        let c = moments.shape.last! / 2
        let parts = moments.split(sizes: [c, c], axis: -1)
        mean = parts[0]
        logvar = parts[1].clamped(min: -30, max: 20)
    }

    /// mean + exp(logvar/2)·ε for ε of the same shape (the reparameterisation trick).
    public func sample(noise: Tensor) -> Tensor { mean + exp(logvar.scaled(by: 0.5)) * noise }

    /// KL to N(0, I) per sample [N], summed over the latent elements.
    public func kl() -> Tensor { klDiagonalGaussian(mean: mean, logvar: logvar) }
}

/// The KL-regularised autoencoder: encoder → quant_conv → posterior → z →
/// post_quant_conv → decoder.
public final class AutoencoderKL: Module {
    public let architecture: AutoencoderArchitecture
    public let encoder: Encoder
    public let decoder: Decoder
    let quantConv: Conv2D
    let postQuantConv: Conv2D
    override public var childrenInGradientOrder: [(String, Any)]? {
        [("decoder", decoder), ("post_quant_conv", postQuantConv), ("quant_conv", quantConv), ("encoder", encoder)]
    }

    public init(_ a: AutoencoderArchitecture, seed: UInt64) {
        precondition(a.doubleZ, "AutoencoderKL needs double_z (mean and log-variance)")
        precondition(a.resolution % a.factor == 0, "resolution \(a.resolution) is not divisible by f = \(a.factor)")
        let initializer = ParameterInitializer(seed: seed)
        architecture = a
        encoder = Encoder(a, initializer)
        decoder = Decoder(a, initializer)
        quantConv = Conv2D(2 * a.zChannels, 2 * a.embedDim, kernel: 1, initializer)
        postQuantConv = Conv2D(a.embedDim, a.zChannels, kernel: 1, initializer)
    }

    /// x [N, R, R, in] in [−1, 1] → the posterior over z [N, R/f, R/f, embed_dim].
    public func encode(_ x: Tensor) -> DiagonalGaussian { DiagonalGaussian(moments: quantConv(encoder(x))) }

    /// z [N, R/f, R/f, embed_dim] → the last conv's input and the image [N, R, R, out_ch].
    public func decodeWithLastInput(_ z: Tensor) -> (lastInput: Tensor, output: Tensor) {
        decoder.forward(postQuantConv(z))
    }

    public func decode(_ z: Tensor) -> Tensor { decodeWithLastInput(z).output }
}
