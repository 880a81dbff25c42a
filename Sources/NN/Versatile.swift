import TensorEngine

// Versatile Diffusion's multi-flow diffuser: per data type a UNet whose layers fall in
// three groups, `global` (the time embedding, the image UNet's, shared), `data` (the
// residual blocks, resampling and in/out layers of that data type: convolutions for
// image latents, fully connected blocks for text latents) and `context` (the
// cross-attention SpatialTransformers), with one context-layer set per context type.
// Keys follow VD's `diffuser.<type>.*`: `diffuser.image` holds the global layers, the
// image data layers and the context layers image contexts use; `diffuser.text` holds the
// context layers text contexts use at the same positions (`diffuser.text.input_blocks.1.1.*`)
// and, when the diffuser has text flows, the text data layers.

/// The parameter groups of a multi-flow diffuser, each with its own learning-rate multiplier.
public enum ParameterGroup: String, Codable, Sendable, CaseIterable {
    case global, data, context
}

/// A flow: the data type the diffuser denoises (image latents, or text latents of the
/// text VAE) and the context type it attends to.
public struct Flow: Hashable, Sendable, CustomStringConvertible {
    public var data: Modality
    public var context: Modality
    public init(data: Modality = .image, context: Modality) { (self.data, self.context) = (data, context) }
    public var description: String { "\(context.rawValue)→\(data.rawValue)" }
    /// Its name in metrics and files: `text_to_image`, `image_to_text`, ...
    public var name: String { "\(context.rawValue)_to_\(data.rawValue)" }
}

/// The multi-flow diffuser: ε̂(x_t, t, contexts) with the data layers of x's type and the
/// context layers each context's type picks, as Versatile Diffusion walks one layer order
/// taking data blocks from `diffuser[x_type]` and context blocks from `diffuser[c_type]`.
public final class VersatileDiffuser: Module {
    public let image: UNetModel
    /// The text diffuser: the text context's layers alone (image data only), or with
    /// `textData` the whole "0D" UNet over text latents, its context layers at the same
    /// positions (`diffuser.text.input_blocks.1.1.*` either way).
    public let text: ContextLayerSet
    override public class var keys: [String: String] { ["image": "diffuser.image", "text": "diffuser.text"] }

    /// `textData`: the text latents' width and the positions the text UNet spreads them
    /// over (nil: no text data layers, image flows only).
    public init(_ a: UNetArchitecture, textData: (dim: Int, points: Int)? = nil, seed: UInt64) {
        let initializer = ParameterInitializer(seed: seed)
        image = UNetModel(a, contextDim: a.contextDim, initializer)
        if let textData {
            text = UNetModel(a, contextDim: a.contextDim, data: .vector(dim: textData.dim, points: textData.points), timeEmbedding: false,
                             initializer)
        } else {
            text = ContextLayers(like: image, contextDim: a.contextDim, initializer)
        }
    }

    /// The text UNet, when the diffuser has text data layers.
    public var textUNet: UNetModel? { text as? UNetModel }

    /// The shape of one sample of a data type: the image latent's [s, s, c], a text latent's [1, 1, dim].
    public func sampleShape(_ data: Modality) -> [Int] {
        if data == .text, case let .vector(dim, _)? = textUNet?.data { return [1, 1, dim] }
        let a = image.architecture
        return [a.imageSize, a.imageSize, a.latentChannels]
    }

    /// The layers of a modality: its UNet (for data), or the set holding its context layers.
    public func layers(for type: Modality) -> ContextLayerSet { type == .text ? text : image }

    /// ε̂ for x_t of type `data` (image latents [N, s, s, c], text latents [N, 1, 1, dim])
    /// attending to one context per type used, mixed by weight when there are several
    /// (dual guidance: text and image, weights summing to 1).
    public func callAsFunction(_ xt: Tensor, data: Modality = .image, timesteps: [Int],
                               contexts: [(type: Modality, context: Context, weight: Float)]) -> Tensor {
        guard let unet = data == .image ? image : textUNet else { preconditionFailure("this diffuser has no text data layers") }
        let routes = contexts.map { ContextRoute(layers: layers(for: $0.type), context: $0.context, weight: $0.weight) }
        return unet.forward(xt, emb: image.timeEmbedding(timesteps), routes: routes)
    }

    /// The group of a parameter key and its modality: the data type of data layers, the
    /// context type of context layers (nil for the global layers).
    public func group(of key: String) -> (group: ParameterGroup, modality: Modality?) {
        let type: Modality = key.hasPrefix("diffuser.text.") ? .text : .image
        let local = key.dropFirst("diffuser.\(type.rawValue).".count)
        if local.hasPrefix("time_embed.") { return (.global, nil) }
        if image.slotKeys.contains(where: { local.hasPrefix($0 + ".") }) { return (.context, type) }
        return (.data, type)
    }
}
