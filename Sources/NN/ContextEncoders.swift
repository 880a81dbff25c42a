import Foundation
import TensorEngine

// Versatile Diffusion's context encoders at this project's scale: a CLIP-style pair,
// a text encoder and an image encoder whose pooled outputs share one embedding space
// (trained contrastively by `ldm-train context-encoders`) and whose token outputs are
// the contexts a multi-flow diffuser attends to. Keys follow Hugging Face's CLIPModel
// at the top (`text_model.*`, `vision_model.*`, `text_projection`, `visual_projection`,
// `logit_scale`).

/// The two kinds of data of Versatile Diffusion: what a multi-flow diffuser denoises
/// (image latents, text latents) and what it attends to (one context-layer set each).
public enum Modality: String, Codable, Sendable, CaseIterable {
    case text, image
}

/// The shapes of the two context encoders (`context_encoders.model`).
public struct ContextEncoderArchitecture: Codable, Equatable, Sendable {
    /// Token width of both encoders: the diffuser's `context_dim`.
    public var width = 64
    /// The shared embedding space the pooled tokens are projected to.
    public var embedDim = 64
    /// The text transformer (BPE tokenizer learned from the training captions).
    public var text = TextEncoderArchitecture()
    /// Images: side and channels (the dataset's).
    public var imageSize = 32
    public var inChannels = 1
    /// Channels of the stride-2 convolutions after the stem: the image becomes
    /// (image_size / 2^count)² tokens.
    public var imageChannels = [32, 64, 64]
    /// Transformer layers over the image tokens, and their heads.
    public var imageLayers = 1
    public var imageHeads = 4

    public init() {}

    /// Tokens of an image context.
    public var imageTokens: Int { let side = imageSize >> imageChannels.count; return side * side }

    enum CodingKeys: String, CodingKey {
        case width, embedDim = "embed_dim", text, imageSize = "image_size", inChannels = "in_channels"
        case imageChannels = "image_channels", imageLayers = "image_layers", imageHeads = "image_heads"
    }
}

/// Image → tokens: a 3×3 stem, stride-2 3×3 convolutions each followed by GroupNorm
/// and SiLU, a 1×1 projection to the token width, learned positions, pre-norm
/// transformer layers and a final LayerNorm (a small hybrid ViT). Images are
/// [N, R, R, C] in [−1, 1].
public final class ImageContextEncoder: Module {
    let stem: Conv2D
    let downs: [Conv2D]
    let norms: [GroupNorm]
    let projIn: Conv2D
    let posEmb: PositionalEmbedding
    let attnLayers: AttentionLayers
    let norm: LayerNorm
    let tokens: Int, width: Int

    init(_ a: ContextEncoderArchitecture, _ initializer: ParameterInitializer) {
        let first = a.imageChannels[0]
        stem = Conv2D(a.inChannels, first, kernel: 3, initializer)
        var ch = first, downs: [Conv2D] = [], norms: [GroupNorm] = []
        for out in a.imageChannels {
            downs.append(Conv2D(ch, out, kernel: 3, stride: 2, padding: 1, initializer))
            norms.append(GroupNorm(out, eps: 1e-5))
            ch = out
        }
        (self.downs, self.norms) = (downs, norms)
        projIn = Conv2D(ch, a.width, kernel: 1, initializer)
        posEmb = PositionalEmbedding(a.imageTokens, a.width, initializer)
        attnLayers = AttentionLayers(dim: a.width, depth: a.imageLayers, heads: a.imageHeads, initializer)
        norm = LayerNorm(a.width)
        (tokens, width) = (a.imageTokens, a.width)
    }

    /// [N, R, R, C] → tokens [N, T, width].
    func callAsFunction(_ images: Tensor) -> Tensor {
        let n = images.shape[0]
        var h = silu(stem(images))
        for (conv, gn) in zip(downs, norms) { h = gn(conv(h), thenSiLU: true) }
        let positions = embedding(posEmb.emb.weight, indices: Array(0..<tokens)).reshaped([1, tokens, width])
        var x = projIn(h).reshaped([n, tokens, width]) + positions
        for layer in attnLayers.layers { x = layer(x, keyMask: nil) }
        return norm(x)
    }
}

/// The text and image context encoders with their projections into the shared space
/// and CLIP's learned temperature. Frozen after their stage; a diffuser reads their
/// token outputs as contexts.
public final class ContextEncoders: Module {
    public let architecture: ContextEncoderArchitecture
    public let textModel: TextTransformer
    public let visionModel: ImageContextEncoder
    let textProjection: Linear, visualProjection: Linear
    /// log(1/temperature), CLIP's `logit_scale` (starts at log(1/0.07); used clamped to log 100).
    let logitScale: Tensor
    public let tokenizer: BPETokenizer

    public init(_ a: ContextEncoderArchitecture, tokenizer: BPETokenizer, seed: UInt64) {
        tokenizer.checkFits(a.text, "the text encoder")
        let initializer = ParameterInitializer(seed: seed)
        architecture = a
        textModel = TextTransformer(a.text, width: a.width, initializer)
        visionModel = ImageContextEncoder(a, initializer)
        textProjection = Linear(a.width, a.embedDim, bias: false, initializer)
        visualProjection = Linear(a.width, a.embedDim, bias: false, initializer)
        logitScale = Tensor(shape: [1], scalars: [Float(log(1 / 0.07))], requiresGrad: true)
        self.tokenizer = tokenizer
    }

    /// The text context of captions ("" for the null condition): every position's
    /// output with a key mask over the padding.
    public func textContext(_ captions: [String]) -> Context {
        let batch = tokenizer.batch(captions)
        let mask = KeyMask(lengths: batch.lengths, keys: tokenizer.maxLength)
        return Context(tokens: textModel(batch.ids, keyMask: mask), keyMask: mask)
    }

    /// The image context of images [N, R, R, C] in [−1, 1] (all tokens real). The null
    /// image context is that of an all-zero (mid-grey) image, as Versatile Diffusion's.
    public func imageContext(_ images: Tensor) -> Context { Context(tokens: visionModel(images)) }

    /// The context of `type` for a batch: captions for text, images for image.
    public func context(_ type: Modality, captions: [String], images: Tensor?) -> Context {
        switch type {
        case .text: return textContext(captions)
        case .image: return imageContext(images!)
        }
    }

    /// The null context of `type` for `count` samples: the empty caption's, or a mid-grey image's.
    public func nullContext(_ type: Modality, count: Int) -> Context {
        switch type {
        case .text: return textContext([String](repeating: "", count: count))
        case .image:
            let a = architecture
            return imageContext(Tensor(zeros: [count, a.imageSize, a.imageSize, a.inChannels]))
        }
    }

    /// Unit-length embeddings [N, embed_dim] of a context (its real tokens' mean, projected).
    public func embedding(_ context: Context, of type: Modality) -> Tensor {
        let projected = (type == .text ? textProjection : visualProjection)(context.pooled)
        return l2Normalized(projected)
    }

    /// exp(logit_scale), clamped to at most 100 as CLIP's; [1, 1] for broadcasting.
    public func temperatureScale() -> Tensor { exp(logitScale.clamped(min: 0, max: Float(log(100.0)))).reshaped([1, 1]) }

    /// The current exp(logit_scale).
    public var scale: Double { Double(exp(min(max(logitScale.scalars[0], 0), Float(log(100.0))))) }
}

/// Each row of x [N, D] divided by its length.
public func l2Normalized(_ x: Tensor) -> Tensor {
    x / sqrt((x * x).sum(axes: [1], keepDims: true).adding(1e-12))
}

/// CLIP's symmetric InfoNCE loss: the mean of the image→text and text→image
/// cross-entropies of `scale` · I·Tᵀ, row i's match being column i. I, T: [N, D].
public func symmetricInfoNCE(images: Tensor, texts: Tensor, scale: Tensor) -> Tensor {
    let logits = matmul(images, texts, transposeB: true) * scale
    let targets = Array(0..<images.shape[0])
    let i2t = crossEntropy(logits, targets: targets), t2i = crossEntropy(logits.permuted([1, 0]), targets: targets)
    return (i2t.mean() + t2i.mean()).scaled(by: 0.5)
}
