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
    /// Codebook entries of a VQ first stage.
    public var nEmbed = 512

    public init() {}

    /// Downsampling factor f = 2^(levels − 1).
    public var factor: Int { 1 << (chMult.count - 1) }
    /// Latent side length.
    public var latentSize: Int { resolution / factor }

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outCh = "out_ch", resolution, ch, chMult = "ch_mult"
        case numResBlocks = "num_res_blocks", attnResolutions = "attn_resolutions", zChannels = "z_channels"
        case doubleZ = "double_z", embedDim = "embed_dim", nEmbed = "n_embed"
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

    public init(mean: Tensor, logvar: Tensor) { (self.mean, self.logvar) = (mean, logvar) }

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

/// How stage 1 regularises its latent (`autoencoder.kind`): CompVis's two first stages.
public enum AutoencoderKind: String, Codable, Sendable, CaseIterable {
    /// AutoencoderKL: a diagonal Gaussian posterior pulled towards N(0, I).
    case kl
    /// VQModel: the encoder's output snapped to the nearest entry of a learned codebook.
    case vq

    /// What checkpoints call the model.
    public var checkpointKind: String { self == .kl ? "autoencoder-kl" : "vq-model" }
}

/// The vector quantiser of CompVis's VQModel (`quantize.embedding.weight`, n_embed ×
/// embed_dim, initialised U(−1/n, 1/n)): each latent vector is replaced by its nearest
/// code by squared distance, with the straight-through gradient to the encoder, and
/// the loss ‖zq − sg(z)‖² (moves the codes) + β·‖sg(zq) − z‖² (commits the encoder), means.
public final class VectorQuantizer: Module {
    public let embedding: Embedding

    init(codes: Int, dim: Int, _ initializer: ParameterInitializer) {
        embedding = Embedding(codes, dim, initializer)
        embedding.weight.pointer.update(from: initializer.uniform([codes, dim], bound: 1 / Float(codes)).pointer, count: codes * dim)
    }

    public var codes: Int { embedding.weight.shape[0] }

    /// The nearest code of every latent vector of z [..., d], in row-major order.
    public func nearest(_ z: Tensor) -> [Int] {
        let table = embedding.weight, (n, d) = (table.shape[0], table.shape[1]), count = z.count / d
        let e = table.pointer, x = z.pointer
        var norms = [Float](repeating: 0, count: n)
        for k in 0..<n { for j in 0..<d { norms[k] += e[k * d + j] * e[k * d + j] } }
        return (0..<count).map { i in
            var best = 0, bestDistance = Float.infinity
            for k in 0..<n {   // ‖z‖² is the same for every code
                var dot: Float = 0
                for j in 0..<d { dot += x[i * d + j] * e[k * d + j] }
                let distance = norms[k] - 2 * dot
                if distance < bestDistance { (best, bestDistance) = (k, distance) }
            }
            return best
        }
    }

    /// z [N, h, w, d] → (zq with the straight-through gradient to z, the codebook and
    /// β-weighted commitment loss, the codes used).
    public func callAsFunction(_ z: Tensor, beta: Float) -> (quantized: Tensor, loss: Tensor, indices: [Int]) {
        let indices = nearest(z)
        let zq = embedding(indices).reshaped(z.shape)
        let loss = mseLoss(zq, z.detached()) + mseLoss(zq.detached(), z).scaled(by: beta)
        return (z + (zq - z).detached(), loss, indices)
    }

    /// The codes alone (no gradient), for decoding.
    public func quantize(_ z: Tensor) -> Tensor { embedding(nearest(z)).reshaped(z.shape) }
}

/// Stage 1: encoder → quant_conv → a latent → post_quant_conv → decoder, with the
/// latent regularised as `kind` says: CompVis's AutoencoderKL (a posterior sampled by
/// the reparameterisation trick) or VQModel (`quantize`, a codebook). A VQ latent is a
/// point: its "posterior" has log-variance −∞, so z = mean everywhere a posterior is
/// sampled, and decoding quantises z first, as CompVis's LatentDiffusion does with a VQ
/// first stage.
public final class Autoencoder: Module {
    public let architecture: AutoencoderArchitecture
    public let kind: AutoencoderKind
    public let encoder: Encoder
    public let decoder: Decoder
    let quantConv: Conv2D
    public let quantize: VectorQuantizer?
    let postQuantConv: Conv2D
    override public var childrenInGradientOrder: [(String, Any)]? {
        [("decoder", decoder), ("post_quant_conv", postQuantConv), ("quantize", quantize as Any), ("quant_conv", quantConv), ("encoder", encoder)]
    }

    public init(_ a: AutoencoderArchitecture, kind: AutoencoderKind = .kl, seed: UInt64) {
        precondition(a.doubleZ == (kind == .kl), "AutoencoderKL needs double_z (mean and log-variance), VQModel needs it off")
        precondition(a.resolution % a.factor == 0, "resolution \(a.resolution) is not divisible by f = \(a.factor)")
        let initializer = ParameterInitializer(seed: seed)
        (architecture, self.kind) = (a, kind)
        encoder = Encoder(a, initializer)
        decoder = Decoder(a, initializer)
        let moments = kind == .kl ? 2 : 1
        quantConv = Conv2D(moments * a.zChannels, moments * a.embedDim, kernel: 1, initializer)
        quantize = kind == .vq ? VectorQuantizer(codes: a.nEmbed, dim: a.embedDim, initializer) : nil
        postQuantConv = Conv2D(a.embedDim, a.zChannels, kernel: 1, initializer)
    }

    /// x [N, R, R, in] in [−1, 1] → the posterior over z [N, R/f, R/f, embed_dim]; for VQ
    /// the point at the pre-quantisation latent.
    public func encode(_ x: Tensor) -> DiagonalGaussian {
        let h = quantConv(encoder(x))
        guard kind == .vq else { return DiagonalGaussian(moments: h) }
        return DiagonalGaussian(mean: h, logvar: Tensor(shape: h.shape, repeating: -.infinity))
    }

    /// z [N, R/f, R/f, embed_dim] (already a code for VQ when `quantized`) → the last
    /// conv's input and the image [N, R, R, out_ch].
    public func decodeWithLastInput(_ z: Tensor, quantized: Bool = false) -> (lastInput: Tensor, output: Tensor) {
        let code = quantized ? z : quantize.map { q in withoutGradient { q.quantize(z) } } ?? z
        return decoder.forward(postQuantConv(code))
    }

    public func decode(_ z: Tensor) -> Tensor { decodeWithLastInput(z).output }
}
