import TensorEngine

// Versatile Diffusion's multi-flow diffuser, part 1 (image data): one UNet whose layers
// fall in three groups, `global` (the time embedding), `data` (the residual blocks,
// convolutions and norms of the image data type) and `context` (the cross-attention
// SpatialTransformers), with one context-layer set per context type. Keys follow VD's
// `diffuser.<type>.*`: the image diffuser holds the global and data layers and the
// context layers image contexts use; `diffuser.text` holds the context layers text
// contexts use, at the same positions (`diffuser.text.input_blocks.1.1.*`).

/// The parameter groups of a multi-flow diffuser, each with its own learning-rate multiplier.
public enum ParameterGroup: String, Codable, Sendable, CaseIterable {
    case global, data, context
}

/// A flow: the data type the diffuser denoises (image, in part 1) and the context type
/// it attends to.
public struct Flow: Hashable, Sendable, CustomStringConvertible {
    public var context: ContextType
    public init(context: ContextType) { self.context = context }
    public var description: String { "\(context.rawValue)→image" }
}

/// The multi-flow diffuser: ε̂(z_t, t, contexts) with the context layers each flow picks.
public final class VersatileDiffuser: Module {
    public let image: UNetModel
    public let text: ContextLayers
    override public class var keys: [String: String] { ["image": "diffuser.image", "text": "diffuser.text"] }

    /// `contextDim`: the context encoders' token width.
    public init(_ a: UNetArchitecture, seed: UInt64) {
        let initializer = ParameterInitializer(seed: seed)
        image = UNetModel(a, contextDim: a.contextDim, initializer)
        text = ContextLayers(like: image, contextDim: a.contextDim, initializer)
    }

    /// The context-layer set of a context type (nil: the image diffuser's own).
    public func layers(for type: ContextType) -> ContextLayers? { type == .text ? text : nil }

    /// ε̂ for z_t [N, s, s, c] attending to one context per type used, mixed by weight
    /// when there are several (dual guidance: text and image, weights summing to 1).
    public func callAsFunction(_ zt: Tensor, timesteps: [Int], contexts: [(type: ContextType, context: Context, weight: Float)]) -> Tensor {
        image(zt, timesteps: timesteps, routes: contexts.map { ContextRoute(layers: layers(for: $0.type), context: $0.context, weight: $0.weight) })
    }

    /// The group of a parameter key, and the context type whose layers hold it (context group only).
    public func group(of key: String) -> (group: ParameterGroup, context: ContextType?) {
        if key.hasPrefix("diffuser.text.") { return (.context, .text) }
        let local = key.dropFirst("diffuser.image.".count)
        if local.hasPrefix("time_embed.") { return (.global, nil) }
        if image.slotKeys.contains(where: { local.hasPrefix($0 + ".") }) { return (.context, .image) }
        return (.data, nil)
    }
}
