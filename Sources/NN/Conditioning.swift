import TensorEngine

/// What one sample is conditioned on.
public enum Condition: Hashable, Sendable {
    /// No condition: the null condition of classifier-free guidance (the null class
    /// token, the empty caption), and all an unconditional model knows.
    case none
    case label(Int)
    case caption(String)

    /// A caption's condition: the empty caption is `.none` (the text null condition).
    public init(caption text: String) { self = text.isEmpty ? .none : .caption(text) }

    /// The caption ("" when there is none).
    public var caption: String { if case let .caption(text) = self { return text }; return "" }
}

/// The kind of conditioning a model has (`diffusion.conditioning.kind`).
public enum ConditionKind: String, Codable, Sendable, CaseIterable {
    case none
    case `class`
    case text
}

/// How the wrapper feeds a condition to the UNet (CompVis DiffusionWrapper's
/// `conditioning_key`): cross-attention to a context, channels concatenated to the
/// input, both, or a pooled vector added to the time embedding.
public enum ConditioningKey: String, Codable, Sendable, CaseIterable {
    case crossattn, concat, hybrid, adm

    /// The UNet's SpatialTransformers attend to a context.
    public var usesContext: Bool { self == .crossattn || self == .hybrid }
    /// The UNet's input carries extra channels.
    public var usesConcat: Bool { self == .concat || self == .hybrid }
}

/// What a condition encoder gives the UNet: tokens [N, S, D] and which of them are
/// real (nil: all).
public struct Context {
    public var tokens: Tensor
    public var keyMask: KeyMask?
    public init(tokens: Tensor, keyMask: KeyMask? = nil) { (self.tokens, self.keyMask) = (tokens, keyMask) }

    /// The samples `rows` of the batch.
    public func rows(_ rows: Range<Int>) -> Context {
        Context(tokens: tokens.slice(axis: 0, rows), keyMask: keyMask.map { m in
            KeyMask(samples: rows.count, keys: m.keys, valid: Array(m.valid[(rows.lowerBound * m.keys)..<(rows.upperBound * m.keys)]))
        })
    }

    /// Batches one after another (all with a mask or all without).
    public static func joined(_ parts: [Context]) -> Context {
        let masks = parts.compactMap(\.keyMask)
        precondition(masks.isEmpty || masks.count == parts.count, "Context.joined: some parts have a key mask and some do not")
        return Context(tokens: parts.count == 1 ? parts[0].tokens : concat(parts.map(\.tokens), axis: 0),
                       keyMask: masks.isEmpty ? nil : masks.dropFirst().reduce(masks[0], +))
    }

    /// The mean of each sample's real tokens → [N, D] (the `adm` vector).
    public var pooled: Tensor {
        let (n, s, d) = (tokens.shape[0], tokens.shape[1], tokens.shape[2])
        if s == 1 { return tokens.reshaped([n, d]) }
        var weights = [Float](repeating: 0, count: n * s)
        for b in 0..<n {
            let valid = (0..<s).filter { keyMask?.valid[b * s + $0] ?? true }
            for j in valid { weights[b * s + j] = 1 / Float(valid.count) }
        }
        return matmul(Tensor(shape: [n, 1, s], scalars: weights), tokens).reshaped([n, d])
    }
}

/// τθ: maps a batch's conditions to a context. `Condition.none` is the encoder's
/// own null condition.
public protocol ConditionEncoder: Module {
    var kind: ConditionKind { get }
    func context(_ conditions: [Condition]) -> Context
}

/// Class label → one context token [N, 1, dim]; index `classes` is the null token
/// (CompVis ClassEmbedder, `cond_stage_model.embedding.weight`).
public final class ClassEmbedder: Module, ConditionEncoder {
    let embedding: Embedding
    public let classes: Int
    public var kind: ConditionKind { .class }

    init(classes: Int, dim: Int, _ initializer: ParameterInitializer) {
        embedding = Embedding(classes + 1, dim, initializer)
        self.classes = classes
    }

    public func callAsFunction(_ labels: [Int]) -> Tensor {
        embedding(labels).reshaped([labels.count, 1, embedding.weight.shape[1]])
    }

    public func context(_ conditions: [Condition]) -> Context {
        Context(tokens: self(conditions.map { c -> Int in
            switch c {
            case .none: return classes
            case let .label(k): precondition((0..<classes).contains(k), "class \(k) outside 0..<\(classes)"); return k
            case .caption: preconditionFailure("a class embedder was given a caption")
            }
        }))
    }
}

/// The architecture of τθ for text (CompVis `cond_stage_config.params` names);
/// its width is the UNet's `context_dim`.
public struct TextEncoderArchitecture: Codable, Equatable, Sendable {
    /// Token embedding rows: 256 bytes, 3 special tokens and the learned merges.
    public var vocabSize = 1024
    /// Tokens per caption, start and end included (longer captions are cut).
    public var maxSeqLen = 77
    public var nLayer = 2
    public var heads = 4

    public init() {}
    enum CodingKeys: String, CodingKey { case vocabSize = "vocab_size", maxSeqLen = "max_seq_len", nLayer = "n_layer", heads }
}

/// How a latent diffusion model is conditioned (`diffusion.conditioning`).
public struct ConditioningConfig: Codable, Equatable, Sendable {
    public var kind = ConditionKind.class
    public var key = ConditioningKey.crossattn
    public var text = TextEncoderArchitecture()
    public init() {}
}
