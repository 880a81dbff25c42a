import Foundation
import NN
import Testing
import TensorEngine
import TestSupport

@Suite("Masked attention and the text encoder τθ")
struct TextEncoderTests {
    static let tokenizer = BPETokenizer.learn(from: TokenizerTests.captions, vocabularySize: 300, maxLength: 12)

    static func architecture() -> TextEncoderArchitecture {
        var a = TextEncoderArchitecture()
        (a.vocabSize, a.maxSeqLen, a.nLayer, a.heads) = (300, 12, 2, 2)
        return a
    }

    @Test("masked attention: masked keys get weight 0, so their values cannot change the output; gradients check (random projection)")
    func maskedAttention() {
        let q = randn([4, 3, 5], 1), k = randn([4, 6, 5], 2), v = randn([4, 6, 7], 3)
        let mask = KeyMask(lengths: [2, 6], keys: 6)   // 2 samples × 2 heads
        let y = withoutGradient { attention(query: q, key: k, value: v, keyMask: mask) }
        let v2 = v.detached(), k2 = k.detached()
        for b in 0..<2 { for s in 2..<6 { for c in 0..<7 { v2.pointer[(b * 6 + s) * 7 + c] = 100 } ; for c in 0..<5 { k2.pointer[(b * 6 + s) * 5 + c] = -50 } } }
        let y2 = withoutGradient { attention(query: q, key: k2, value: v2, keyMask: mask) }
        #expect(y.scalars == y2.scalars)
        // The unmasked sample equals attention without a mask; the masked one equals attention over its first two keys.
        let full = withoutGradient { attention(query: q, key: k, value: v) }
        #expect(Array(y.scalars[42...]) == Array(full.scalars[42...]))
        let short = withoutGradient { attention(query: q.slice(axis: 0, 0..<2), key: k.slice(axis: 0, 0..<2).slice(axis: 1, 0..<2),
                                               value: v.slice(axis: 0, 0..<2).slice(axis: 1, 0..<2)) }
        #expect(isClose(y.slice(axis: 0, 0..<2), short.scalars.map(Double.init), rtol: 1e-5, atol: 1e-6))
        let report = gradCheck([q, k, v], directions: 4) { attention(query: $0[0], key: $0[1], value: $0[2], keyMask: mask) }
        #expect(report.worstError < 2e-3, "\(report)")
    }

    @Test("τθ keys follow CompVis's TransformerEmbedder (x-transformers) naming and shapes")
    func keys() {
        let enc = TextEncoder(Self.architecture(), width: 16, tokenizer: Self.tokenizer, ParameterInitializer(seed: 1))
        let keys = enc.namedParameters().map { ($0.key, $0.tensor.shape) }
        var expected: [(String, [Int])] = [("transformer.token_emb.weight", [300, 16]), ("transformer.pos_emb.emb.weight", [12, 16])]
        for layer in 0..<2 {
            let a = "transformer.attn_layers.layers.\(2 * layer)", f = "transformer.attn_layers.layers.\(2 * layer + 1)"
            expected += [(a + ".0.weight", [16]), (a + ".0.bias", [16]), (a + ".1.to_q.weight", [16, 16]), (a + ".1.to_k.weight", [16, 16]),
                         (a + ".1.to_v.weight", [16, 16]), (a + ".1.to_out.weight", [16, 16]), (a + ".1.to_out.bias", [16]),
                         (f + ".0.weight", [16]), (f + ".0.bias", [16]), (f + ".1.net.0.0.weight", [64, 16]), (f + ".1.net.0.0.bias", [64]),
                         (f + ".1.net.2.weight", [16, 64]), (f + ".1.net.2.bias", [16])]
        }
        expected += [("transformer.norm.weight", [16]), ("transformer.norm.bias", [16])]
        #expect(keys.map(\.0) == expected.map(\.0))
        #expect(keys.map(\.1) == expected.map(\.1))
    }

    @Test("the context at real tokens does not depend on what fills the padding; the mask marks exactly the real tokens")
    func paddingIgnored() {
        let enc = TextEncoder(Self.architecture(), width: 16, tokenizer: Self.tokenizer, ParameterInitializer(seed: 2))
        let batch = Self.tokenizer.batch(["red apple", "cat"])
        var other = batch.ids
        for i in other.indices where other[i] == BPETokenizer.pad { other[i] = 97 + i % 20 }
        let a = withoutGradient { enc(ids: batch.ids, lengths: batch.lengths) }, b = withoutGradient { enc(ids: other, lengths: batch.lengths) }
        #expect(a.keyMask == KeyMask(lengths: batch.lengths, keys: 12))
        for n in 0..<2 {
            let real = batch.lengths[n] * 16
            #expect(Array(a.tokens.scalars[(n * 12 * 16)..<(n * 12 * 16 + real)]) == Array(b.tokens.scalars[(n * 12 * 16)..<(n * 12 * 16 + real)]))
        }
        #expect(a.tokens.scalars != b.tokens.scalars)   // the padded positions themselves do see their tokens
    }

    @Test("gradient of Σ r ⊙ τθ(ids) with respect to its embeddings, attention and feed-forward weights")
    func gradients() {
        let enc = TextEncoder(Self.architecture(), width: 16, tokenizer: Self.tokenizer, ParameterInitializer(seed: 3))
        let named = Dictionary(uniqueKeysWithValues: enc.namedParameters().map { ($0.key, $0.tensor) })
        let batch = Self.tokenizer.batch(["red apple", "grinning cat face", ""])
        let weights = ["transformer.token_emb.weight", "transformer.pos_emb.emb.weight", "transformer.attn_layers.layers.0.1.to_k.weight",
                       "transformer.attn_layers.layers.2.1.to_q.weight", "transformer.attn_layers.layers.3.1.net.0.0.weight",
                       "transformer.norm.weight"].map { named[$0]! }
        // The embeddings are drawn with std 0.02: a step of 1e-2 would not be small beside them.
        let report = gradCheckInPlace(weights, directions: 3, step: 2e-3) { enc(ids: batch.ids, lengths: batch.lengths).tokens }
        #expect(report.worstError < 2e-3, "\(report)")
    }

    @Test("a text-conditioned UNet: keys are model.diffusion_model.* then cond_stage_model.transformer.*; gradients reach τθ through masked cross-attention")
    func textUNet() {
        var c = ConditioningConfig()
        (c.kind, c.text) = (.text, Self.architecture())
        var a = tinyUNet()
        a.contextDim = 16
        let model = LatentDiffusionModel(a, conditioning: c, tokenizer: Self.tokenizer, seed: 4)
        let keys = model.namedParameters().map(\.key)
        let firstCond = keys.firstIndex { $0.hasPrefix("cond_stage_model.") }!
        #expect(keys[..<firstCond].allSatisfy { $0.hasPrefix("model.diffusion_model.") })
        #expect(keys[firstCond...].allSatisfy { $0.hasPrefix("cond_stage_model.transformer.") })
        #expect(model.namedParameters().first { $0.key.hasSuffix("attn2.to_k.weight") }!.tensor.shape == [32, 16])
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.key, $0.tensor) })
        for key in ["model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.1.1.proj_out.weight",
                    "model.diffusion_model.middle_block.1.proj_out.weight"] {
            let w = named[key]!
            w.pointer.update(from: randn(w.shape, 77, scale: 0.2).pointer, count: w.count)
        }
        let z = randn([2, 4, 4, 2], 5)
        let conditions: [Condition] = [.caption("red apple"), .none]
        let report = gradCheckInPlace(["cond_stage_model.transformer.token_emb.weight", "cond_stage_model.transformer.attn_layers.layers.1.1.net.2.weight",
                                       "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].map { named[$0]! },
                                      directions: 3) { model(z, timesteps: [3, 700], conditions: conditions) }
        #expect(report.worstError < 2e-3, "\(report)")
    }

    @Test("conditioning keys: adm adds label_emb of the pooled context to the time embedding; concat widens the input; none has no τθ")
    func conditioningKeys() {
        var a = tinyUNet()
        a.contextDim = 16
        var c = ConditioningConfig()
        c.key = .adm
        let adm = LatentDiffusionModel(a, conditioning: c, seed: 5)
        let admKeys = adm.namedParameters().map(\.key)
        #expect(admKeys.contains("model.diffusion_model.label_emb.0.0.weight") && admKeys.contains("model.diffusion_model.label_emb.0.2.weight"))
        #expect(adm.namedParameters().first { $0.key.hasSuffix("attn2.to_k.weight") }!.tensor.shape == [32, 32])   // attends to itself
        let z = randn([2, 4, 4, 2], 6)
        let named = Dictionary(uniqueKeysWithValues: adm.namedParameters().map { ($0.key, $0.tensor) })
        for (i, p) in adm.namedParameters().enumerated() where p.key.hasSuffix("out_layers.3.weight") || p.key.hasSuffix("out.2.weight") {
            p.tensor.pointer.update(from: randn(p.tensor.shape, 70 + UInt64(i), scale: 0.2).pointer, count: p.tensor.count)   // zero-initialised
        }
        let same = concat([z.slice(axis: 0, 0..<1), z.slice(axis: 0, 0..<1)], axis: 0)
        let y1 = withoutGradient { adm(same, timesteps: [5, 5], conditions: [.label(0), .label(1)]) }
        #expect(y1.slice(axis: 0, 0..<1).scalars != y1.slice(axis: 0, 1..<2).scalars)   // the class reaches the output through label_emb
        let report = gradCheckInPlace([named["cond_stage_model.embedding.weight"]!, named["model.diffusion_model.label_emb.0.0.weight"]!],
                                      directions: 3) { adm(z, timesteps: [5, 9], conditions: [.label(0), .none]) }
        #expect(report.worstError < 2e-3, "\(report)")

        c = ConditioningConfig()
        (c.kind, c.key) = (.none, .concat)
        var wide = a
        wide.inChannels = a.outChannels + 3   // in_channels counts the concatenated channels, as in CompVis configs
        let concat = LatentDiffusionModel(wide, conditioning: c, seed: 6)
        #expect(concat.namedParameters().first { $0.key == "model.diffusion_model.input_blocks.0.0.weight" }!.tensor.shape == [32, 5, 3, 3])
        #expect(!concat.namedParameters().contains { $0.key.hasPrefix("cond_stage_model") })
        let y = withoutGradient { concat(z, timesteps: [1, 2], conditions: [.none, .none], concat: randn([2, 4, 4, 3], 8)) }
        #expect(y.shape == [2, 4, 4, 2])
    }
}
