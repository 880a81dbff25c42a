import Foundation
import NN
import Testing
import TensorEngine
import TestSupport

@Suite("Versatile Diffusion, text as data: causal attention, the text VAE and the text UNet")
struct TextVAETests {
    static let captions = ["a white sneaker", "a dark coat", "a photo of a bag", "an ankle boot"]
    static let length = 20
    static let tokenizer = BPETokenizer.learn(from: captions, vocabularySize: 300, maxLength: length)

    static func architecture() -> TextAutoencoderArchitecture {
        var a = TextAutoencoderArchitecture()
        (a.width, a.latentDim) = (16, 6)
        (a.text.vocabSize, a.text.maxSeqLen, a.text.nLayer, a.text.heads) = (300, length, 1, 2)
        return a
    }

    @Test("causal attention: query t equals attention over keys 0...t; later keys cannot change it; with a key mask too; gradients check (random projection)")
    func causalAttention() {
        let q = randn([4, 5, 3], 1), k = randn([4, 5, 3], 2), v = randn([4, 5, 7], 3)
        let y = withoutGradient { attention(query: q, key: k, value: v, causal: true) }
        for t in 0..<5 {
            let prefix = withoutGradient { attention(query: q.slice(axis: 1, t..<(t + 1)), key: k.slice(axis: 1, 0..<(t + 1)), value: v.slice(axis: 1, 0..<(t + 1))) }
            for b in 0..<4 {
                let got = Array(y.scalars[((b * 5 + t) * 7)..<((b * 5 + t + 1) * 7)]), want = Array(prefix.scalars[(b * 7)..<((b + 1) * 7)])
                #expect(zip(got, want).allSatisfy { abs($0 - $1) < 1e-5 }, "sample \(b), query \(t)")
            }
        }
        let v2 = v.detached()
        for b in 0..<4 { for c in 0..<7 { v2.pointer[(b * 5 + 4) * 7 + c] = 50 } }   // the last key's value
        let y2 = withoutGradient { attention(query: q, key: k, value: v2, causal: true) }
        for b in 0..<4 { #expect(Array(y.scalars[(b * 35)..<(b * 35 + 28)]) == Array(y2.scalars[(b * 35)..<(b * 35 + 28)])) }
        let mask = KeyMask(lengths: [3, 5], keys: 5)   // 2 samples × 2 heads: sample 0's keys 3, 4 are padding
        let masked = withoutGradient { attention(query: q, key: k, value: v2, keyMask: mask, causal: true) }
        #expect(zip(masked.scalars[0..<21], y.scalars[0..<21]).allSatisfy { abs($0 - $1) < 1e-6 })   // queries 0–2 of sample 0 see no padding
        let report = gradCheck([q, k, v], directions: 4) { attention(query: $0[0], key: $0[1], value: $0[2], keyMask: mask, causal: true) }
        #expect(report.worstError < 2e-3, "\(report)")
    }

    @Test("text VAE: keys under encoder.* and decoder.*; posterior [N, latent_dim]; the decoder is causal (a later token cannot change earlier logits)")
    func shapes() {
        let vae = TextAutoencoder(Self.architecture(), tokenizer: Self.tokenizer, seed: 1)
        let keys = Dictionary(uniqueKeysWithValues: vae.namedParameters().map { ($0.key, $0.tensor.shape) })
        #expect(keys["encoder.transformer.token_emb.weight"] == [300, 16] && keys["encoder.to_moments.weight"] == [12, 16])
        #expect(keys["decoder.latent_proj.weight"] == [16, 6] && keys["decoder.lm_head.weight"] == [300, 16])
        #expect(keys["decoder.transformer.attn_layers.layers.0.1.to_q.weight"] == [16, 16])
        let posterior = withoutGradient { vae.encode(Self.captions) }
        #expect(posterior.mean.shape == [4, 6] && posterior.logvar.shape == [4, 6])
        randomize(vae, seed: 4)
        let z = randn([2, 6], 5)
        let a = Self.tokenizer.batch(["a white sneaker", "a dark coat"]).ids
        var b = a
        b[5] = BPETokenizer.end   // sample 0, position 5 onwards differs
        let la = withoutGradient { vae.decoder(latent: z, ids: a) }, lb = withoutGradient { vae.decoder(latent: z, ids: b) }
        let v = 300
        #expect(Array(la.scalars[0..<(5 * v)]) == Array(lb.scalars[0..<(5 * v)]))
        #expect(Array(la.scalars[(5 * v)..<(6 * v)]) != Array(lb.scalars[(5 * v)..<(6 * v)]))
        #expect(Array(la.scalars[(Self.length * v)...]) == Array(lb.scalars[(Self.length * v)...]))   // sample 1 untouched
    }

    @Test("text VAE loss: the NLL is the summed cross-entropy of each caption's next tokens; gradients check through encoder and decoder (random projection)")
    func lossAndGradient() {
        let vae = TextAutoencoder(Self.architecture(), tokenizer: Self.tokenizer, seed: 2)
        randomize(vae, seed: 6)
        let texts = ["a dark coat", "a bag"], z = randn([2, 6], 7)
        let rec = withoutGradient { vae.reconstruction(texts, latent: z) }
        let logits = withoutGradient { vae.decoder(latent: z, ids: Self.tokenizer.batch(texts).ids) }
        for (s, text) in texts.enumerated() {
            let ids = Self.tokenizer.encode(text).ids
            var nll = 0.0
            for p in 0..<(ids.count - 1) {
                let row = (0..<300).map { Double(logits.pointer[(s * Self.length + p) * 300 + $0]) }
                let m = row.max()!, lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
                nll += lse - row[ids[p + 1]]
            }
            #expect(abs(Double(rec.nll.scalars[s]) - nll) < 1e-3 * max(1, nll), "\(text): \(rec.nll.scalars[s]) against \(nll)")
            #expect(rec.tokens[s] == ids.count - 1)
        }
        let params = vae.parameters().filter { $0.count < 2000 }
        let report = gradCheckInPlace(params, directions: 3) {
            let posterior = vae.encode(texts)
            return vae.reconstruction(texts, latent: posterior.sample(noise: z)).nll + posterior.kl().scaled(by: 0.1)
        }
        #expect(report.worstError < 5e-3, "\(report)")
    }

    @Test("a tiny text VAE trained in-process recovers its captions exactly by greedy decoding; top-k draws depend on the seed alone")
    func recovery() {
        let vae = TextAutoencoder(Self.architecture(), tokenizer: Self.tokenizer, seed: 3)
        let arena = ParameterArena(vae)
        var settings = Adam.Settings()
        settings.beta2 = 0.99
        let adam = Adam(arena, settings)
        for _ in 0..<150 {
            arena.zeroGradients()
            let posterior = vae.encode(Self.captions)
            (vae.reconstruction(Self.captions, latent: posterior.mean).nll.mean() + posterior.kl().mean().scaled(by: 1e-3)).backward()
            adam.step += 1
            adam.update(lr: 1e-2)
        }
        let means = withoutGradient { vae.encode(Self.captions).mean }
        #expect(Self.captions.allSatisfy { !Self.tokenizer.encode($0).truncated })
        #expect(vae.decode(means) == Self.captions)
        let a = vae.decode(means, topK: 50, seed: 1), b = vae.decode(means, topK: 50, seed: 1)
        #expect(a == b)
        let draws = (2..<8).map { vae.decode(randn([4, 6], UInt64($0)).scaled(by: 3), topK: 50, seed: UInt64($0)) }
        #expect(Set(draws.flatMap { $0 }).count > 4, "\(draws)")
    }

    @Test("text UNet: fully connected data layers over 4 positions, no time embedding of its own, SpatialTransformers at the image UNet's keys and shapes")
    func textUNet() {
        let a = versatileArchitecture()
        let d = VersatileDiffuser(a, textData: (dim: 6, points: 4), seed: 1)
        let params = Dictionary(uniqueKeysWithValues: d.namedParameters().map { ($0.key, $0.tensor.shape) })
        #expect(params["diffuser.text.time_embed.0.weight"] == nil && params["diffuser.image.time_embed.0.weight"] != nil)
        #expect(params["diffuser.text.input_blocks.0.0.weight"] == [4 * 32, 6] && params["diffuser.text.out.2.weight"] == [6, 4 * 32])
        #expect(params["diffuser.text.input_blocks.1.0.in_layers.2.weight"] == [4 * 32, 4 * 32])
        for key in params.keys where key.hasPrefix("diffuser.image.") && (key.contains(".transformer_blocks.") || key.contains(".proj_in.")) {
            let text = key.replacingOccurrences(of: "diffuser.image.", with: "diffuser.text.")
            #expect(params[text] == params[key], "\(text)")
        }
        #expect(d.textUNet?.slotKeys == d.image.slotKeys)
        #expect(d.group(of: "diffuser.text.input_blocks.0.0.weight") == (.data, .text))
        #expect(d.group(of: "diffuser.text.middle_block.1.proj_in.weight") == (.context, .text))
        #expect(d.sampleShape(.text) == [1, 1, 6] && d.sampleShape(.image) == [8, 8, 2])
    }

    @Test("flows over text data: image→text uses the text data layers and the image context layers, text→text the text UNet's own; each flow's loss reaches only its own groups")
    func textRoutes() {
        let a = versatileArchitecture()
        let d = VersatileDiffuser(a, textData: (dim: 6, points: 4), seed: 2)
        randomize(d, seed: 8)
        let x = randn([2, 1, 1, 6], 1), t = [10, 700]
        let c = Context(tokens: randn([2, 5, 12], 2))
        let (i2t, t2t) = withoutGradient { (d(x, data: .text, timesteps: t, contexts: [(.image, c, 1)]), d(x, data: .text, timesteps: t, contexts: [(.text, c, 1)])) }
        #expect(i2t.shape == [2, 1, 1, 6] && zip(i2t.scalars, t2t.scalars).map { abs($0 - $1) }.max()! > 1e-3)
        for (data, context) in [(Modality.text, Modality.image), (.text, .text), (.image, .text)] {
            let arena = ParameterArena(d)
            arena.zeroGradients()
            let input = data == .text ? x : randn([2, 8, 8, 2], 3)
            d(input, data: data, timesteps: t, contexts: [(context, c, 1)]).sum().backward()
            var touched: [String: Double] = [:]
            for e in arena.entries {
                let g = e.tensor.grad!.scalars.reduce(0.0) { $0 + Double(abs($1)) }
                let (group, modality) = d.group(of: e.key)
                touched["\(group.rawValue).\(modality?.rawValue ?? "")", default: 0] += g
            }
            let otherData = data == .text ? "data.image" : "data.text", otherContext = context == .text ? "context.image" : "context.text"
            #expect(touched["global."]! > 0 && touched["data.\(data.rawValue)"]! > 0 && touched["context.\(context.rawValue)"]! > 0, "\(touched)")
            #expect(touched[otherData]! == 0 && touched[otherContext]! == 0, "\(data)←\(context): \(touched)")
        }
    }
}
