import Foundation
import TensorEngine

/// The architecture of the denoising UNet (CompVis `unet_config.params` names).
public struct UNetArchitecture: Codable, Equatable, Sendable {
    public var imageSize = 8
    /// The UNet's input: the latent's channels plus any concatenated condition's
    /// (conditioning_key concat or hybrid), as in CompVis configs.
    public var inChannels = 4
    /// ε̂'s channels: the latent's. Noise, losses and samples have this many.
    public var outChannels = 4
    public var modelChannels = 64
    public var channelMult = [1, 2]
    public var numResBlocks = 2
    /// Downsampling factors (1, 2, 4, ...) at which SpatialTransformers sit.
    public var attentionResolutions = [2]
    public var numHeadChannels = 32
    public var transformerDepth = 1
    public var contextDim = 64
    public var numClasses = 10

    public init() {}

    /// The latent's channels (z_t, ε, samples): `out_channels`.
    public var latentChannels: Int { outChannels }
    /// Channels concatenated to z_t: in_channels − out_channels.
    public var concatChannels: Int { inChannels - outChannels }

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", inChannels = "in_channels", outChannels = "out_channels"
        case modelChannels = "model_channels", channelMult = "channel_mult", numResBlocks = "num_res_blocks"
        case attentionResolutions = "attention_resolutions", numHeadChannels = "num_head_channels"
        case transformerDepth = "transformer_depth", contextDim = "context_dim", numClasses = "num_classes"
    }
}

/// A layer of a UNet block: takes the time embedding and the context along.
open class TimestepLayer: Module {
    open func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor { x }
}

/// in_layers (GroupNorm, SiLU, conv), plus the projected time embedding, then
/// out_layers (GroupNorm, SiLU, zero-initialised conv), plus the skip (1×1 conv
/// when the channel count changes).
public final class ResBlock: TimestepLayer {
    let inNorm: GroupNorm, inConv: Conv2D
    let embLinear: Linear
    let outNorm: GroupNorm, outConv: Conv2D
    let skipConnection: Conv2D?
    override public class var keys: [String: String] {
        ["inNorm": "in_layers.0", "inConv": "in_layers.2", "embLinear": "emb_layers.1", "outNorm": "out_layers.0",
         "outConv": "out_layers.3"]
    }

    public init(_ channels: Int, _ out: Int, embedding: Int, _ initializer: ParameterInitializer) {
        inNorm = GroupNorm(channels, eps: 1e-5)
        inConv = Conv2D(channels, out, kernel: 3, initializer)
        embLinear = Linear(embedding, out, initializer)
        outNorm = GroupNorm(out, eps: 1e-5)
        outConv = Conv2D(out, out, kernel: 3, zeroInit: true, initializer)
        skipConnection = channels == out ? nil : Conv2D(channels, out, kernel: 1, initializer)
    }

    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor {
        let e = embLinear(silu(emb))
        let h = inConv(inNorm(x, thenSiLU: true)) + e.reshaped([e.shape[0], 1, 1, e.shape[1]])
        return (skipConnection?(x) ?? x) + outConv(outNorm(h, thenSiLU: true))
    }
}

/// input_blocks.0.0: the first conv (its parameters sit directly under the key).
public final class InputConv: TimestepLayer {
    let conv: Conv2D
    override public class var keys: [String: String] { ["conv": ""] }
    init(_ conv: Conv2D) { self.conv = conv }
    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor { conv(x) }
}

/// 3×3 conv with stride 2 and padding 1 (`op`).
public final class UNetDownsample: TimestepLayer {
    let op: Conv2D
    init(_ channels: Int, _ initializer: ParameterInitializer) { op = Conv2D(channels, channels, kernel: 3, stride: 2, padding: 1, initializer) }
    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor { op(x) }
}

/// Nearest 2× upsampling, then a 3×3 conv.
public final class UNetUpsample: TimestepLayer {
    let conv: Conv2D
    init(_ channels: Int, _ initializer: ParameterInitializer) { conv = Conv2D(channels, channels, kernel: 3, initializer) }
    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor { conv(upsampleNearest2x(x)) }
}

/// What a UNet's data layers take: image latents [N, s, s, c] (convolutions), or latent
/// vectors [N, 1, 1, dim] (Versatile Diffusion's "0D" UNet for text latents: fully connected
/// blocks over a feature map of `points` positions, which its SpatialTransformers see as
/// `points` tokens).
public enum DataLayout: Equatable, Sendable {
    case image
    case vector(dim: Int, points: Int)
}

/// input_blocks.0.0 of a vector UNet: the latent vector to `points` positions of model_channels.
public final class VectorInput: TimestepLayer {
    let linear: Linear
    let points: Int
    override public class var keys: [String: String] { ["linear": ""] }
    init(_ dim: Int, channels: Int, points: Int, _ initializer: ParameterInitializer) {
        linear = Linear(dim, points * channels, initializer)
        self.points = points
    }
    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor {
        let y = linear(x.reshaped([x.shape[0], x.count / x.shape[0]]))
        return y.reshaped([x.shape[0], 1, points, y.shape[1] / points])
    }
}

/// A linear map over a whole [N, 1, P, C] feature map (Versatile Diffusion's
/// Linear_MultiDim): flattened to P·C features, mapped, back to [N, 1, P, C'].
func flatLinear(_ layer: Linear, _ x: Tensor) -> Tensor {
    let (n, p) = (x.shape[0], x.shape[2])
    let y = layer(x.reshaped([n, x.count / n]))
    return y.reshaped([n, 1, p, y.shape[1] / p])
}

/// ResBlock of a vector UNet (Versatile Diffusion's FCBlock): GroupNorm, SiLU, a linear map
/// over all positions, plus the time embedding; GroupNorm, SiLU, a zero-initialised linear
/// map; plus the skip (linear when the channels change). Keys as ResBlock's.
public final class FCResBlock: TimestepLayer {
    let inNorm: GroupNorm, inLinear: Linear
    let embLinear: Linear
    let outNorm: GroupNorm, outLinear: Linear
    let skipConnection: Linear?
    override public class var keys: [String: String] {
        ["inNorm": "in_layers.0", "inLinear": "in_layers.2", "embLinear": "emb_layers.1", "outNorm": "out_layers.0",
         "outLinear": "out_layers.3"]
    }

    init(_ channels: Int, _ out: Int, points: Int, embedding: Int, _ initializer: ParameterInitializer) {
        inNorm = GroupNorm(channels, eps: 1e-5)
        inLinear = Linear(points * channels, points * out, initializer)
        embLinear = Linear(embedding, out, initializer)
        outNorm = GroupNorm(out, eps: 1e-5)
        outLinear = Linear(points * out, points * out, zeroInit: true, initializer)
        skipConnection = channels == out ? nil : Linear(points * channels, points * out, initializer)
    }

    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor {
        let e = embLinear(silu(emb))
        let h = flatLinear(inLinear, inNorm(x, thenSiLU: true)) + e.reshaped([e.shape[0], 1, 1, e.shape[1]])
        return (skipConnection.map { flatLinear($0, x) } ?? x) + flatLinear(outLinear, outNorm(h, thenSiLU: true))
    }
}

/// A vector UNet's down- and upsampling positions: a linear map over the feature map
/// (there is no resolution to change), keeping the block order of the image UNet.
public final class FCResample: TimestepLayer {
    let op: Linear
    init(_ channels: Int, points: Int, _ initializer: ParameterInitializer) { op = Linear(points * channels, points * channels, initializer) }
    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor { flatLinear(op, x) }
}

/// The denoiser ε_θ(z_t, t, context) (CompVis openaimodel.UNetModel with
/// cross-attention conditioning). z_t [N, s, s, in] NHWC, t per sample,
/// context [N, S, context_dim] → [N, s, s, out].
public final class UNetModel: Module, ContextLayerSet {
    public let architecture: UNetArchitecture
    public let data: DataLayout
    /// The time embedding's MLP (nil in a multi-flow diffuser's text UNet, which uses the image UNet's).
    let timeEmbed0: Linear?, timeEmbed2: Linear?
    let inputBlocks: [[TimestepLayer]]
    let middleBlock: [TimestepLayer]
    let outputBlocks: [[TimestepLayer]]
    let outNorm: GroupNorm
    /// The last layer: a 3×3 conv (images) or a linear map to the latent vector.
    let outConv: Conv2D?, outLinear: Linear?
    /// The `adm` vector's MLP into the time embedding (label_emb.0.0, label_emb.0.2).
    let labelEmb0: Linear?, labelEmb2: Linear?
    /// The keys of the SpatialTransformers (the context layers), in declaration order,
    /// and each one's position in that list.
    public let slotKeys: [String]
    let slotIndex: [ObjectIdentifier: Int]
    override public class var keys: [String: String] {
        ["timeEmbed0": "time_embed.0", "timeEmbed2": "time_embed.2", "outNorm": "out.0", "outConv": "out.2", "outLinear": "out.2",
         "labelEmb0": "label_emb.0.0", "labelEmb2": "label_emb.0.2"]
    }

    /// `contextDim` nil: no context, the SpatialTransformers attend to themselves only;
    /// `admChannels`: the width of a vector added to the time embedding (`adm`); `data`:
    /// what the data layers take; `timeEmbedding` false: the embedding comes from elsewhere
    /// (`forward(_:emb:routes:)`), as a multi-flow diffuser's text UNet takes the image UNet's.
    public init(_ a: UNetArchitecture, contextDim: Int?, admChannels: Int? = nil, data: DataLayout = .image, timeEmbedding: Bool = true,
                _ initializer: ParameterInitializer) {
        architecture = a
        self.data = data
        let mc = a.modelChannels, embedding = 4 * mc
        timeEmbed0 = timeEmbedding ? Linear(mc, embedding, initializer) : nil
        timeEmbed2 = timeEmbedding ? Linear(embedding, embedding, initializer) : nil
        func resBlock(_ ch: Int, _ out: Int) -> TimestepLayer {
            switch data {
            case .image: return ResBlock(ch, out, embedding: embedding, initializer)
            case let .vector(_, points): return FCResBlock(ch, out, points: points, embedding: embedding, initializer)
            }
        }
        func resample(_ ch: Int, down: Bool) -> TimestepLayer {
            switch data {
            case .image: return down ? UNetDownsample(ch, initializer) : UNetUpsample(ch, initializer)
            case let .vector(_, points): return FCResample(ch, points: points, initializer)
            }
        }
        labelEmb0 = admChannels.map { Linear($0, embedding, initializer) }
        labelEmb2 = admChannels.map { _ in Linear(embedding, embedding, initializer) }
        var slots: [(key: String, layer: SpatialTransformer)] = []
        func transformer(_ ch: Int, at key: String) -> SpatialTransformer {
            let t = SpatialTransformer(ch, heads: ch / a.numHeadChannels, headChannels: a.numHeadChannels, depth: a.transformerDepth,
                                       contextDim: contextDim, initializer)
            slots.append((key, t))
            return t
        }
        var input: [[TimestepLayer]]
        switch data {
        case .image: input = [[InputConv(Conv2D(a.inChannels, mc, kernel: 3, initializer))]]
        case let .vector(dim, points): input = [[VectorInput(dim, channels: mc, points: points, initializer)]]
        }
        var skipChannels = [mc], ch = mc, ds = 1
        for (level, mult) in a.channelMult.enumerated() {
            for _ in 0..<a.numResBlocks {
                var layers: [TimestepLayer] = [resBlock(ch, mult * mc)]
                ch = mult * mc
                if a.attentionResolutions.contains(ds) { layers.append(transformer(ch, at: "input_blocks.\(input.count).1")) }
                input.append(layers)
                skipChannels.append(ch)
            }
            if level != a.channelMult.count - 1 {
                input.append([resample(ch, down: true)])
                skipChannels.append(ch)
                ds *= 2
            }
        }
        inputBlocks = input
        middleBlock = [resBlock(ch, ch), transformer(ch, at: "middle_block.1"), resBlock(ch, ch)]
        var output: [[TimestepLayer]] = []
        for (level, mult) in a.channelMult.enumerated().reversed() {
            for i in 0...a.numResBlocks {
                var layers: [TimestepLayer] = [resBlock(ch + skipChannels.removeLast(), mc * mult)]
                ch = mc * mult
                if a.attentionResolutions.contains(ds) { layers.append(transformer(ch, at: "output_blocks.\(output.count).1")) }
                if level > 0 && i == a.numResBlocks {
                    layers.append(resample(ch, down: false))
                    ds /= 2
                }
                output.append(layers)
            }
        }
        outputBlocks = output
        slotKeys = slots.map(\.key)
        slotIndex = Dictionary(uniqueKeysWithValues: slots.enumerated().map { (ObjectIdentifier($0.element.layer), $0.offset) })
        outNorm = GroupNorm(ch, eps: 1e-5)
        switch data {
        case .image: (outConv, outLinear) = (Conv2D(mc, a.outChannels, kernel: 3, zeroInit: true, initializer), nil)
        case let .vector(dim, points): (outConv, outLinear) = (nil, Linear(points * mc, dim, zeroInit: true, initializer))
        }
    }

    /// `adm`: [N, adm channels], added to the time embedding through label_emb.
    public func callAsFunction(_ x: Tensor, timesteps: [Int], context: Context?, adm: Tensor? = nil) -> Tensor {
        self(x, timesteps: timesteps, routes: context.map { [ContextRoute(layers: nil, context: $0)] } ?? [], adm: adm)
    }

    /// ε̂ with each context layer taken from the routes: one route, that set's layer
    /// attends to its context; several, their residuals are mixed by weight (h + Σ wₖ·Δₖ,
    /// Versatile Diffusion's attention mixing); none, the layers attend to themselves.
    public func callAsFunction(_ x: Tensor, timesteps: [Int], routes: [ContextRoute], adm: Tensor? = nil) -> Tensor {
        var emb = timeEmbedding(timesteps)
        if let adm, let labelEmb0, let labelEmb2 { emb = emb + labelEmb2(silu(labelEmb0(adm))) }
        return forward(x, emb: emb, routes: routes)
    }

    /// The time embedding [N, 4·model_channels] of `timesteps` (the global layers).
    public func timeEmbedding(_ timesteps: [Int]) -> Tensor {
        guard let timeEmbed0, let timeEmbed2 else { preconditionFailure("this UNet takes its time embedding from another") }
        return timeEmbed2(silu(timeEmbed0(timestepEmbedding(timesteps, channels: architecture.modelChannels))))
    }

    /// ε̂ of x (an image latent, or a latent vector [N, 1, 1, dim]) with the time embedding given.
    public func forward(_ x: Tensor, emb: Tensor, routes: [ContextRoute]) -> Tensor {
        func apply(_ layer: TimestepLayer, _ h: Tensor) -> Tensor {
            guard let slot = slotIndex[ObjectIdentifier(layer)], !routes.isEmpty else { return layer.forward(h, emb: emb, context: routes.first?.context) }
            func output(_ r: ContextRoute) -> Tensor {
                ((r.layers.flatMap { $0 === self ? nil : $0 })?.contextLayer(slot) ?? layer).forward(h, emb: emb, context: r.context)
            }
            if routes.count == 1 { return output(routes[0]) }
            return routes.reduce(h) { mixed, r in mixed + (output(r) - h).scaled(by: r.weight) }
        }
        var h = x, skips: [Tensor] = []
        for block in inputBlocks {
            for layer in block { h = apply(layer, h) }
            skips.append(h)
        }
        for layer in middleBlock { h = apply(layer, h) }
        for block in outputBlocks {
            h = concat([h, skips.removeLast()], axis: -1)
            for layer in block { h = apply(layer, h) }
        }
        let normed = outNorm(h, thenSiLU: true)
        if let outConv { return outConv(normed) }
        return outLinear!(normed.reshaped([x.shape[0], normed.count / x.shape[0]])).reshaped(x.shape)
    }

    public func contextLayer(_ slot: Int) -> SpatialTransformer {
        for block in inputBlocks + [middleBlock] + outputBlocks {
            for case let t as SpatialTransformer in block where slotIndex[ObjectIdentifier(t)] == slot { return t }
        }
        preconditionFailure("no context layer \(slot)")
    }
}

/// Context layers by slot (the UNet's SpatialTransformers in declaration order): a UNet's
/// own, or a set of them alone.
public protocol ContextLayerSet: AnyObject {
    func contextLayer(_ slot: Int) -> SpatialTransformer
}

/// Which context-layer set attends to which context, and with what weight when several
/// are mixed. `layers` nil (or the UNet itself): the UNet's own SpatialTransformers.
public struct ContextRoute {
    public var layers: ContextLayerSet?
    public var context: Context
    public var weight: Float
    public init(layers: ContextLayerSet?, context: Context, weight: Float = 1) { (self.layers, self.context, self.weight) = (layers, context, weight) }
}

/// A set of context layers: a SpatialTransformer of the same shape at every position
/// where the UNet has one, keyed as there (`input_blocks.1.1`, `middle_block.1`, ...).
/// A multi-flow diffuser keeps one set per context type.
public final class ContextLayers: Module, ContextLayerSet {
    let layers: [SpatialTransformer]
    let slotKeys: [String]
    override public var explicitChildren: [(String, Any)]? { zip(slotKeys, layers).map { ($0, $1 as Any) } }

    /// A new set shaped like `unet`'s transformers, attending to contexts of `contextDim`.
    public init(like unet: UNetModel, contextDim: Int, _ initializer: ParameterInitializer) {
        let a = unet.architecture
        var ordered = [SpatialTransformer?](repeating: nil, count: unet.slotKeys.count)
        for block in unet.inputBlocks + [unet.middleBlock] + unet.outputBlocks {
            for case let t as SpatialTransformer in block {
                ordered[unet.slotIndex[ObjectIdentifier(t)]!] = SpatialTransformer(
                    t.channels, heads: t.channels / a.numHeadChannels, headChannels: a.numHeadChannels, depth: a.transformerDepth,
                    contextDim: contextDim, initializer)
            }
        }
        layers = ordered.map { $0! }
        slotKeys = unet.slotKeys
    }

    public func contextLayer(_ slot: Int) -> SpatialTransformer { layers[slot] }
}

/// Sinusoidal embedding of integer timesteps (openaimodel.timestep_embedding):
/// [cos(t·f_i), sin(t·f_i)] with f_i = 10000^(−i/half), i < half = channels/2. → [N, channels].
public func timestepEmbedding(_ t: [Int], channels: Int) -> Tensor {
    let half = channels / 2
    var values = [Float](repeating: 0, count: t.count * channels)
    for (n, step) in t.enumerated() {
        for i in 0..<half {
            let arg = Double(step) * exp(-log(10000.0) * Double(i) / Double(half))
            values[n * channels + i] = Float(cos(arg))
            values[n * channels + half + i] = Float(sin(arg))
        }
    }
    return Tensor(shape: [t.count, channels], scalars: values)
}

/// The trainable part of stage 2 under CompVis's LatentDiffusion keys:
/// `model.diffusion_model.*` (the UNet) and `cond_stage_model.*` (τθ: the class
/// embedder, one context token per class plus a learned null token at index
/// num_classes; or the text encoder), absent for an unconditional model.
public final class LatentDiffusionModel: Module {
    public let model: DiffusionWrapper
    public let condStageModel: ConditionEncoder?
    public let conditioning: ConditioningConfig
    /// τθ is used first, so its gradient is the last to finish.
    override public var childrenInGradientOrder: [(String, Any)]? { [("model", model), ("cond_stage_model", condStageModel as Any)] }

    /// `tokenizer`: the text encoder's (kind text only).
    public init(_ a: UNetArchitecture, conditioning c: ConditioningConfig = ConditioningConfig(), tokenizer: BPETokenizer? = nil,
                seed: UInt64) {
        precondition(c.kind != .text || tokenizer != nil, "a text-conditioned model needs a tokenizer")
        precondition(c.key.usesConcat == (a.concatChannels > 0), "conditioning_key \(c.key.rawValue) with \(a.concatChannels) concat channels")
        let initializer = ParameterInitializer(seed: seed)
        let conditioned = c.kind != .none
        let unet = UNetModel(a, contextDim: conditioned && c.key.usesContext ? a.contextDim : nil,
                             admChannels: conditioned && c.key == .adm ? a.contextDim : nil, initializer)
        model = DiffusionWrapper(unet, key: c.key)
        switch c.kind {
        case .none: condStageModel = nil
        case .class: condStageModel = ClassEmbedder(classes: a.numClasses, dim: a.contextDim, initializer)
        case .text: condStageModel = TextEncoder(c.text, width: a.contextDim, tokenizer: tokenizer!, initializer)
        }
        conditioning = c
    }

    public var unet: UNetModel { model.diffusionModel }
    public var tokenizer: BPETokenizer? { (condStageModel as? TextEncoder)?.tokenizer }

    /// ε̂ (or v̂) for z_t [N, s, s, c] at `timesteps` under `conditions` (`.none`: the
    /// null condition); `concat` [N, s, s, k] for the concat and hybrid keys.
    public func callAsFunction(_ zt: Tensor, timesteps: [Int], conditions: [Condition], concat: Tensor? = nil) -> Tensor {
        model(zt, timesteps: timesteps, context: condStageModel?.context(conditions), concat: concat)
    }
}

/// CompVis's DiffusionWrapper: combines the condition with the input as its
/// `conditioning_key` says.
public final class DiffusionWrapper: Module {
    public let diffusionModel: UNetModel
    public let key: ConditioningKey
    init(_ unet: UNetModel, key: ConditioningKey) { (diffusionModel, self.key) = (unet, key) }

    public func callAsFunction(_ x: Tensor, timesteps: [Int], context: Context?, concat: Tensor?) -> Tensor {
        let input = key.usesConcat ? TensorEngine.concat([x, concat!], axis: -1) : x
        switch key {
        case .crossattn, .hybrid: return diffusionModel(input, timesteps: timesteps, context: context)
        case .concat: return diffusionModel(input, timesteps: timesteps, context: nil)
        case .adm: return diffusionModel(input, timesteps: timesteps, context: nil, adm: context?.pooled)
        }
    }
}
