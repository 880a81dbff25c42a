import Foundation
import NN
import Testing
import TensorEngine
import TestSupport

/// The state_dict keys and shapes of CompVis's LatentDiffusion (trainable part) for
/// a UNet config, written out from openaimodel.UNetModel.__init__ and
/// attention.SpatialTransformer independently of the Swift model.
func compVisUNetKeys(_ a: UNetArchitecture) -> [(String, [Int])] {
    var keys: [(String, [Int])] = []
    let p = "model.diffusion_model."
    func linear(_ k: String, _ i: Int, _ o: Int, bias: Bool = true) { keys.append((p + k + ".weight", [o, i])); if bias { keys.append((p + k + ".bias", [o])) } }
    func conv(_ k: String, _ i: Int, _ o: Int, _ s: Int) { keys += [(p + k + ".weight", [o, i, s, s]), (p + k + ".bias", [o])] }
    func norm(_ k: String, _ c: Int) { keys += [(p + k + ".weight", [c]), (p + k + ".bias", [c])] }
    let mc = a.modelChannels, ted = 4 * mc
    func res(_ k: String, _ i: Int, _ o: Int) {
        norm(k + ".in_layers.0", i); conv(k + ".in_layers.2", i, o, 3); linear(k + ".emb_layers.1", ted, o)
        norm(k + ".out_layers.0", o); conv(k + ".out_layers.3", o, o, 3)
        if i != o { conv(k + ".skip_connection", i, o, 1) }
    }
    func st(_ k: String, _ c: Int) {
        norm(k + ".norm", c); conv(k + ".proj_in", c, c, 1)
        for d in 0..<a.transformerDepth {
            let b = k + ".transformer_blocks.\(d)"
            for q in ["to_q", "to_k", "to_v"] { linear(b + ".attn1.\(q)", c, c, bias: false) }
            linear(b + ".attn1.to_out.0", c, c)
            linear(b + ".ff.net.0.proj", c, 8 * c); linear(b + ".ff.net.2", 4 * c, c)
            linear(b + ".attn2.to_q", c, c, bias: false)
            linear(b + ".attn2.to_k", a.contextDim, c, bias: false); linear(b + ".attn2.to_v", a.contextDim, c, bias: false)
            linear(b + ".attn2.to_out.0", c, c)
            for n in ["norm1", "norm2", "norm3"] { norm(b + "." + n, c) }
        }
        conv(k + ".proj_out", c, c, 1)
    }
    linear("time_embed.0", mc, ted); linear("time_embed.2", ted, ted)
    conv("input_blocks.0.0", a.inChannels, mc, 3)
    var chans = [mc], ch = mc, ds = 1, block = 1
    for (level, mult) in a.channelMult.enumerated() {
        for _ in 0..<a.numResBlocks {
            res("input_blocks.\(block).0", ch, mult * mc); ch = mult * mc
            if a.attentionResolutions.contains(ds) { st("input_blocks.\(block).1", ch) }
            chans.append(ch); block += 1
        }
        if level != a.channelMult.count - 1 { conv("input_blocks.\(block).0.op", ch, ch, 3); chans.append(ch); block += 1; ds *= 2 }
    }
    res("middle_block.0", ch, ch); st("middle_block.1", ch); res("middle_block.2", ch, ch)
    block = 0
    for (level, mult) in a.channelMult.enumerated().reversed() {
        for i in 0...a.numResBlocks {
            res("output_blocks.\(block).0", ch + chans.removeLast(), mc * mult); ch = mc * mult
            var j = 1
            if a.attentionResolutions.contains(ds) { st("output_blocks.\(block).1", ch); j = 2 }
            if level > 0 && i == a.numResBlocks { conv("output_blocks.\(block).\(j).conv", ch, ch, 3); ds /= 2 }
            block += 1
        }
    }
    norm("out.0", ch); conv("out.2", mc, a.outChannels, 3)
    keys.append(("cond_stage_model.embedding.weight", [a.numClasses + 1, a.contextDim]))
    return keys
}

/// A tiny UNet: 4×4 latents, 32 channels, attention at both levels.
func tinyUNet() -> UNetArchitecture {
    var a = UNetArchitecture()
    (a.imageSize, a.inChannels, a.outChannels, a.modelChannels) = (4, 2, 2, 32)
    (a.channelMult, a.numResBlocks, a.attentionResolutions) = ([1, 2], 1, [1, 2])
    (a.numHeadChannels, a.contextDim, a.numClasses) = (16, 8, 3)
    return a
}

@Suite("UNet")
struct UNetTests {
    @Test("parameter keys and shapes equal CompVis's for the reference and a tiny config, in state_dict order")
    func keysMatchCompVis() {
        for a in [UNetArchitecture(), tinyUNet()] {
            let ours = LatentDiffusionModel(a, seed: 1).namedParameters().map { ($0.key, $0.tensor.shape) }
            let theirs = compVisUNetKeys(a)
            #expect(ours.map(\.0) == theirs.map(\.0))
            #expect(ours.map(\.1) == theirs.map(\.1))
        }
    }

    /// The two numbers were printed by this same code against commit da8cc89, before
    /// conditioning became a type (labels [2, 7, 10] then; 10 was the null class).
    @Test("the reference class-conditional model is what it was before conditioning became a type: the same initial weights (bitwise) and the same ε̂ (to 1e-5)")
    func classModelUnchanged() {
        let model = LatentDiffusionModel(UNetArchitecture(), seed: 0)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a over every parameter's bits, in key order
        for p in model.namedParameters() {
            for i in 0..<p.tensor.count { h = (h ^ UInt64(p.tensor.pointer[i].bitPattern)) &* 0x100_0000_01b3 }
        }
        #expect(String(h, radix: 16) == "6332d19e46cb90c5")
        for p in model.namedParameters() where p.key.hasSuffix("out.2.weight") || p.key.hasSuffix("out_layers.3.weight") || p.key.hasSuffix("proj_out.weight") {
            p.tensor.pointer.update(from: randn(p.tensor.shape, 99, scale: 0.05).pointer, count: p.tensor.count)   // zero-initialised
        }
        let z = randn([3, 8, 8, 4], 11)
        let y = withoutGradient { model(z, timesteps: [5, 500, 990], conditions: [.label(2), .label(7), .none]) }
        let r = randn(y.shape, 12)
        var s = 0.0
        for i in 0..<y.count { s += Double(y.pointer[i]) * Double(r.pointer[i]) }
        #expect(abs(s - 9.84413529643269) < 1e-5 * 9.84413529643269, "\(s)")
    }

    @Test("output shape equals the input's; zero-initialised output convs give exactly zero at start")
    func shapes() {
        let a = UNetArchitecture()
        let model = LatentDiffusionModel(a, seed: 2)
        let z = randn([3, 8, 8, 4], 1)
        let y = withoutGradient { model(z, timesteps: [0, 500, 999], conditions: [.label(0), .label(9), .none]) }
        #expect(y.shape == [3, 8, 8, 4])
        #expect(y.scalars.allSatisfy { $0 == 0 })
    }

    @Test("timestep embedding: cos then sin of t·10000^(−i/half)")
    func timestep() {
        let e = timestepEmbedding([0, 3], channels: 8).scalars
        #expect(Array(e[0..<4]) == [1, 1, 1, 1] && Array(e[4..<8]) == [0, 0, 0, 0])
        #expect(abs(e[8 + 1] - Float(cos(3 * 0.1))) < 1e-6)          // 10000^(−1/4) = 0.1
        #expect(abs(e[8 + 4 + 2] - Float(sin(3 * 0.01))) < 1e-6)
    }

    @Test("gradient of Σ r ⊙ ε_θ with respect to z_t and to parameters (tiny config, output convs perturbed from zero)")
    func gradients() {
        let model = LatentDiffusionModel(tinyUNet(), seed: 3)
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.key, $0.tensor) })
        for key in ["model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
                    "model.diffusion_model.input_blocks.1.1.proj_out.weight", "model.diffusion_model.middle_block.1.proj_out.weight"] {
            let w = named[key]!
            let r = randn(w.shape, 77, scale: 0.2)
            w.pointer.update(from: r.pointer, count: w.count)
        }
        let z = randn([2, 4, 4, 2], 5)
        let toInput = gradCheck([z], directions: 3) { model($0[0], timesteps: [3, 700], conditions: [.label(1), .none]) }
        #expect(toInput.worstError < 2e-3, "input: \(toInput)")
        let weights = ["model.diffusion_model.time_embed.0.weight", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
                       "model.diffusion_model.output_blocks.0.0.skip_connection.weight", "cond_stage_model.embedding.weight",
                       "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.bias"].map { named[$0]! }
        let toWeights = gradCheckInPlace(weights, directions: 3) { model(z, timesteps: [3, 700], conditions: [.label(1), .none]) }
        #expect(toWeights.worstError < 2e-3, "weights: \(toWeights)")
    }

    @Test("cross-attention to one context token gives every position that token's projected value")
    func crossAttentionOneToken() {
        let attn = CrossAttention(queryDim: 8, contextDim: 6, heads: 2, headChannels: 4, ParameterInitializer(seed: 5))
        let x = randn([2, 5, 8], 1), c = randn([2, 1, 6], 2)
        let y = withoutGradient { attn(x, context: c) }
        let weights = attn.namedParameters().map(\.tensor)   // to_q, to_k, to_v, to_out.0 weight, bias
        let k = matmul(c, weights[1], transposeB: true), v = matmul(c, weights[2], transposeB: true)
        let q = matmul(x, weights[0], transposeB: true)
        let full = withoutGradient { linear(attention(query: q, key: k, value: v), weight: weights[3], bias: weights[4]) }
        #expect(y.shape == [2, 5, 8])
        #expect(isClose(y, full.scalars.map(Double.init), rtol: 1e-5, atol: 1e-6))
    }

    @Test("multi-head cross-attention equals attention computed per head")
    func crossAttentionHeads() {
        let initializer = ParameterInitializer(seed: 4)
        let attn = CrossAttention(queryDim: 8, contextDim: 6, heads: 2, headChannels: 4, initializer)
        let x = randn([2, 5, 8], 1), c = randn([2, 3, 6], 2)
        let y = withoutGradient { attn(x, context: c) }
        let weights = attn.namedParameters().map(\.tensor)   // to_q, to_k, to_v, to_out.0 weight, bias
        let q = matmul(x, weights[0], transposeB: true), k = matmul(c, weights[1], transposeB: true), v = matmul(c, weights[2], transposeB: true)
        var heads: [Tensor] = []
        for h in 0..<2 {
            heads.append(withoutGradient { attention(query: q.slice(axis: 2, (4 * h)..<(4 * h + 4)),
                                                     key: k.slice(axis: 2, (4 * h)..<(4 * h + 4)),
                                                     value: v.slice(axis: 2, (4 * h)..<(4 * h + 4))) })
        }
        let expected = withoutGradient { linear(concat(heads, axis: 2), weight: weights[3], bias: weights[4]) }
        #expect(isClose(y, expected.scalars.map(Double.init), rtol: 1e-5, atol: 1e-6))
    }
}
