import TensorEngine

// τθ for text: the transformer encoder of the LDM text-to-image model (CompVis
// TransformerEmbedder over x-transformers' TransformerWrapper and Encoder), trained
// with the UNet, under its keys: cond_stage_model.transformer.{token_emb,
// pos_emb.emb, attn_layers.layers.<i>.<0 norm | 1 block>, norm}.

/// x-transformers' Attention: to_q, to_k, to_v without bias, to_out with bias.
public final class TextSelfAttention: CrossAttention {
    override public class var keys: [String: String] { ["toOut": "to_out"] }
}

/// x-transformers' FeedForward: Linear to 4·dim, GELU, Linear back (net.0.0, net.2).
public final class TextFeedForward: Module {
    let proj: Linear, out: Linear
    override public class var keys: [String: String] { ["proj": "net.0.0", "out": "net.2"] }

    init(_ dim: Int, _ initializer: ParameterInitializer) {
        proj = Linear(dim, 4 * dim, initializer)
        out = Linear(4 * dim, dim, initializer)
    }

    func callAsFunction(_ x: Tensor) -> Tensor { out(gelu(proj(x))) }
}

/// One pre-norm residual layer: [norm, block] at keys `0` and `1`.
public final class PreNormLayer: Module {
    let norm: LayerNorm
    let attention: TextSelfAttention?, feedForward: TextFeedForward?
    override public var explicitChildren: [(String, Any)]? { [("0", norm), ("1", (attention as Module?) ?? feedForward!)] }

    init(attention: TextSelfAttention? = nil, feedForward: TextFeedForward? = nil, dim: Int) {
        (norm, self.attention, self.feedForward) = (LayerNorm(dim), attention, feedForward)
    }

    /// x + block(norm(x)); `keyMask` nil: every token is real; `causal`: attention looks back only.
    func callAsFunction(_ x: Tensor, keyMask: KeyMask?, causal: Bool = false) -> Tensor {
        let h = norm(x)
        return x + (attention.map { $0(h, keyMask: keyMask, causal: causal) } ?? feedForward!(h))
    }
}

/// Self-attention and feed-forward layers, alternating (x-transformers' Encoder).
public final class AttentionLayers: Module {
    let layers: [PreNormLayer]

    init(dim: Int, depth: Int, heads: Int, _ initializer: ParameterInitializer) {
        layers = (0..<depth).flatMap { _ in [
            PreNormLayer(attention: TextSelfAttention(queryDim: dim, heads: heads, headChannels: dim / heads, initializer), dim: dim),
            PreNormLayer(feedForward: TextFeedForward(dim, initializer), dim: dim),
        ] }
    }
}

/// Learned absolute positions (`pos_emb.emb`).
public final class PositionalEmbedding: Module {
    let emb: Embedding
    init(_ length: Int, _ dim: Int, _ initializer: ParameterInitializer) { emb = Embedding(length, dim, initializer, std: 0.02) }
}

/// Token and position embeddings, the layers, a final LayerNorm.
public final class TextTransformer: Module {
    let tokenEmb: Embedding
    let posEmb: PositionalEmbedding
    let attnLayers: AttentionLayers
    let norm: LayerNorm
    let width: Int, length: Int

    init(_ a: TextEncoderArchitecture, width: Int, _ initializer: ParameterInitializer) {
        tokenEmb = Embedding(a.vocabSize, width, initializer, std: 0.02)
        posEmb = PositionalEmbedding(a.maxSeqLen, width, initializer)
        attnLayers = AttentionLayers(dim: width, depth: a.nLayer, heads: a.heads, initializer)
        norm = LayerNorm(width)
        (self.width, length) = (width, a.maxSeqLen)
    }

    /// Token ids [N·L] (L = max_seq_len) with their unpadded lengths → [N, L, width].
    /// `causal`: every position sees only itself and those before it (a decoder);
    /// `shift` [N, 1, width] is added to every position's embedding (a decoder's latent).
    func callAsFunction(_ ids: [Int], keyMask: KeyMask?, causal: Bool = false, shift: Tensor? = nil) -> Tensor {
        let n = ids.count / length
        let positions = embedding(posEmb.emb.weight, indices: Array(0..<length)).reshaped([1, length, width])
        var x = embedding(tokenEmb.weight, indices: ids).reshaped([n, length, width]) + positions
        if let shift { x = x + shift }
        for layer in attnLayers.layers { x = layer(x, keyMask: keyMask, causal: causal) }
        return norm(x)
    }
}

/// τθ for captions: the tokenizer (learned from the training captions and stored
/// with the model) and the transformer. The context is every position's output with
/// a key mask over the padding; `Condition.none` is the empty caption.
public final class TextEncoder: Module, ConditionEncoder {
    public let transformer: TextTransformer
    public let tokenizer: BPETokenizer
    public var kind: ConditionKind { .text }

    public init(_ a: TextEncoderArchitecture, width: Int, tokenizer: BPETokenizer, _ initializer: ParameterInitializer) {
        precondition(tokenizer.vocabularySize <= a.vocabSize && tokenizer.maxLength == a.maxSeqLen,
                     "the tokenizer (\(tokenizer.vocabularySize) tokens, length \(tokenizer.maxLength)) does not fit τθ")
        transformer = TextTransformer(a, width: width, initializer)
        self.tokenizer = tokenizer
    }

    /// The context of `ids` [N·L] with unpadded `lengths`.
    public func callAsFunction(ids: [Int], lengths: [Int]) -> Context {
        let mask = KeyMask(lengths: lengths, keys: tokenizer.maxLength)
        return Context(tokens: transformer(ids, keyMask: mask), keyMask: mask)
    }

    public func context(_ conditions: [Condition]) -> Context {
        let texts = conditions.map { c -> String in
            switch c {
            case .none: return ""
            case let .caption(text): return text
            case .label: preconditionFailure("a text encoder was given a class label")
            }
        }
        let batch = tokenizer.batch(texts)
        return self(ids: batch.ids, lengths: batch.lengths)
    }
}
