import TensorEngine

// The attention parts of the CompVis UNet (ldm/modules/attention.py), with its keys.
// Tokens are [N, T, C]; an NHWC feature map is already [N, H·W, C] in memory.

/// Multi-head attention of x [N, T, C] over a context [N, S, C_ctx] (x itself when
/// nil): to_q, to_k, to_v without bias, heads of `headChannels`, to_out.0 with bias.
/// A key mask keeps every query off the context's padding.
public class CrossAttention: Module {
    let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    let heads: Int, headChannels: Int
    override public class var keys: [String: String] { ["toOut": "to_out.0"] }

    public init(queryDim: Int, contextDim: Int? = nil, heads: Int, headChannels: Int, _ initializer: ParameterInitializer) {
        let inner = heads * headChannels
        toQ = Linear(queryDim, inner, bias: false, initializer)
        toK = Linear(contextDim ?? queryDim, inner, bias: false, initializer)
        toV = Linear(contextDim ?? queryDim, inner, bias: false, initializer)
        toOut = Linear(inner, queryDim, initializer)
        (self.heads, self.headChannels) = (heads, headChannels)
    }

    /// `causal` (self-attention only): each token attends to itself and the tokens before it.
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, keyMask: KeyMask? = nil, causal: Bool = false) -> Tensor {
        let c = context ?? x
        let (n, t, s) = (x.shape[0], x.shape[1], c.shape[1])
        if s == 1 && keyMask == nil && !causal {
            // One key: softmax over a single logit is exactly 1 whatever the query, so every
            // position receives that token's value (and to_q's gradient is exactly zero). The
            // class-conditioned UNet's cross-attention is this case: skip q, q·kᵀ and softmax.
            let out = toOut(toV(c))
            return out.expanded(to: [n, t, out.shape[2]])
        }
        // [N, T, H·D] → [N·H, T, D]
        func split(_ y: Tensor, _ length: Int) -> Tensor {
            y.reshaped([n, length, heads, headChannels]).permuted([0, 2, 1, 3]).reshaped([n * heads, length, headChannels])
        }
        let out = attention(query: split(toQ(x), t), key: split(toK(c), s), value: split(toV(c), s), keyMask: keyMask, causal: causal)
        return toOut(out.reshaped([n, heads, t, headChannels]).permuted([0, 2, 1, 3]).reshaped([n, t, heads * headChannels]))
    }
}

/// GEGLU feed-forward (Shazeer 2020): proj to 2·inner, x · GELU(gate), back to dim.
public final class FeedForward: Module {
    let proj: Linear, out: Linear
    override public class var keys: [String: String] { ["proj": "net.0.proj", "out": "net.2"] }

    public init(_ dim: Int, mult: Int = 4, _ initializer: ParameterInitializer) {
        proj = Linear(dim, dim * mult * 2, initializer)
        out = Linear(dim * mult, dim, initializer)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { out(geglu(proj(x))) }
}

/// Self-attention, cross-attention to the context, feed-forward; pre-LayerNorm and a
/// residual around each. Declared in CompVis's order: attn1, ff, attn2, norm1–3.
public final class BasicTransformerBlock: Module {
    let attn1: CrossAttention, ff: FeedForward, attn2: CrossAttention
    let norm1: LayerNorm, norm2: LayerNorm, norm3: LayerNorm
    override public var childrenInGradientOrder: [(String, Any)]? {
        [("ff", ff), ("norm3", norm3), ("attn2", attn2), ("norm2", norm2), ("attn1", attn1), ("norm1", norm1)]
    }

    /// `contextDim` nil: attn2 attends to the block's own tokens (a model without a context).
    public init(_ dim: Int, heads: Int, headChannels: Int, contextDim: Int?, _ initializer: ParameterInitializer) {
        attn1 = CrossAttention(queryDim: dim, heads: heads, headChannels: headChannels, initializer)
        ff = FeedForward(dim, initializer)
        attn2 = CrossAttention(queryDim: dim, contextDim: contextDim, heads: heads, headChannels: headChannels, initializer)
        (norm1, norm2, norm3) = (LayerNorm(dim), LayerNorm(dim), LayerNorm(dim))
    }

    public func callAsFunction(_ x: Tensor, context: Context?) -> Tensor {
        var h = attn1(norm1(x)) + x
        h = attn2(norm2(h), context: context?.tokens, keyMask: context?.keyMask) + h
        return ff(norm3(h)) + h
    }
}

/// A transformer over the positions of a feature map: GroupNorm, 1×1 proj_in,
/// transformer blocks attending to the context, 1×1 proj_out (zero-initialised),
/// plus the input.
public final class SpatialTransformer: TimestepLayer {
    let norm: GroupNorm
    let projIn: Conv2D
    let transformerBlocks: [BasicTransformerBlock]
    let projOut: Conv2D
    /// The feature map's channels (not a parameter).
    let channels: Int

    public init(_ channels: Int, heads: Int, headChannels: Int, depth: Int, contextDim: Int?, _ initializer: ParameterInitializer) {
        let inner = heads * headChannels
        norm = GroupNorm(channels, eps: 1e-6)
        projIn = Conv2D(channels, inner, kernel: 1, initializer)
        transformerBlocks = (0..<depth).map { _ in BasicTransformerBlock(inner, heads: heads, headChannels: headChannels,
                                                                         contextDim: contextDim, initializer) }
        projOut = Conv2D(inner, channels, kernel: 1, zeroInit: true, initializer)
        self.channels = channels
    }

    override public func forward(_ x: Tensor, emb: Tensor, context: Context?) -> Tensor {
        let (n, h, w) = (x.shape[0], x.shape[1], x.shape[2])
        let p = projIn(norm(x))
        var tokens = p.reshaped([n, h * w, p.shape[3]])
        for block in transformerBlocks { tokens = block(tokens, context: context) }
        return projOut(tokens.reshaped([n, h, w, p.shape[3]])) + x
    }
}
