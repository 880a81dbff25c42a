import Foundation
import NN
import Testing
import TensorEngine
import TestSupport

/// A small UNet architecture with context layers at level 2.
func versatileArchitecture() -> UNetArchitecture {
    var a = UNetArchitecture()
    (a.imageSize, a.inChannels, a.outChannels, a.modelChannels, a.channelMult, a.numResBlocks) = (8, 2, 2, 32, [1, 2], 1)
    (a.attentionResolutions, a.numHeadChannels, a.contextDim) = ([2], 16, 12)
    return a
}

/// Every parameter drawn N(0, 0.1²) (the zero-initialised projections too, so context layers matter).
func randomize(_ module: Module, seed: UInt64) {
    for (i, p) in module.parameters().enumerated() {
        let r = Tensor.randomNormal(p.shape, stream: RandomStream(seed: seed, stream: UInt64(i)), std: 0.1)
        p.pointer.update(from: r.pointer, count: p.count)
    }
}

@Suite("Versatile Diffusion: context encoders, the multi-flow diffuser and its parameter groups")
struct VersatileTests {
    static let tokenizer = BPETokenizer.learn(from: TokenizerTests.captions, vocabularySize: 300, maxLength: 12)

    static func encoderArchitecture() -> ContextEncoderArchitecture {
        var a = ContextEncoderArchitecture()
        (a.width, a.embedDim, a.imageSize, a.inChannels, a.imageChannels, a.imageLayers, a.imageHeads) = (16, 8, 16, 1, [32, 32], 1, 2)
        (a.text.vocabSize, a.text.maxSeqLen, a.text.nLayer, a.text.heads) = (300, 12, 1, 2)
        return a
    }

    @Test("context encoders: HF CLIP-style top-level keys; image tokens (R/2^k)²; text tokens masked; embeddings unit length")
    func encoders() {
        let e = ContextEncoders(Self.encoderArchitecture(), tokenizer: Self.tokenizer, seed: 3)
        let keys = Set(e.namedParameters().map(\.key))
        for key in ["text_model.token_emb.weight", "vision_model.stem.weight", "vision_model.pos_emb.emb.weight", "text_projection.weight",
                    "visual_projection.weight", "logit_scale"] {
            #expect(keys.contains(key), "\(key) missing: \(keys.sorted().prefix(8))")
        }
        let x = randn([3, 16, 16, 1], 1)
        let image = withoutGradient { e.imageContext(x) }, text = withoutGradient { e.textContext(["a sneaker", "", "a photo of a white dress"]) }
        #expect(image.tokens.shape == [3, 16, 16] && image.keyMask == nil)
        #expect(text.tokens.shape == [3, 12, 16] && text.keyMask?.valid.filter { $0 }.count == Self.tokenizer.batch(["a sneaker", "", "a photo of a white dress"]).lengths.reduce(0, +))
        for t in [withoutGradient { e.embedding(image, of: .image) }, withoutGradient { e.embedding(text, of: .text) }] {
            for r in 0..<3 {
                let norm = (0..<8).reduce(0.0) { $0 + Double(t.pointer[r * 8 + $1] * t.pointer[r * 8 + $1]) }
                #expect(abs(norm - 1) < 1e-5, "row \(r): |e|² = \(norm)")
            }
        }
        #expect(abs(e.scale - 1 / 0.07) < 1e-3)
    }

    @Test("the contrastive loss's gradient checks (random projection) through both encoders and the temperature")
    func contrastiveGradient() {
        let e = ContextEncoders(Self.encoderArchitecture(), tokenizer: Self.tokenizer, seed: 4)
        let x = randn([4, 16, 16, 1], 2), captions = ["a sneaker", "a bag", "dark coat", "a white dress"]
        // Each checked with a step fit to its scale: token embeddings start at std 0.02.
        let steps: [String: Float] = ["vision_model.stem.weight": 1e-2, "vision_model.proj_in.weight": 1e-2, "text_projection.weight": 1e-2,
                                      "text_model.token_emb.weight": 1e-3, "logit_scale": 1e-2]
        var checked = 0
        for (key, tensor) in e.namedParameters() {
            guard let h = steps[key] else { continue }
            let report = gradCheckInPlace([tensor], directions: 3, step: h) {
                symmetricInfoNCE(images: e.embedding(e.imageContext(x), of: .image), texts: e.embedding(e.textContext(captions), of: .text),
                                 scale: e.temperatureScale())
            }
            #expect(report.worstError < 1e-3, "\(key): \(report)")
            checked += 1
        }
        #expect(checked == steps.count)
    }

    @Test("all-gathered negatives: the global loss with one rank's rows tracked, summed over the ranks, gives the one-process gradient")
    func gatheredGradient() {
        let images = randn([6, 5], 1), texts = randn([6, 5], 2), scale = Tensor(shape: [1, 1], scalars: [3])
        func gradients(_ tracked: Range<Int>) -> (Tensor, Tensor) {
            let i = images.detached(), t = texts.detached()
            let iLocal = i.slice(axis: 0, tracked).detached(), tLocal = t.slice(axis: 0, tracked).detached()
            iLocal.requiresGrad = true; tLocal.requiresGrad = true
            func assemble(_ all: Tensor, _ local: Tensor) -> Tensor {
                concat([all.slice(axis: 0, 0..<tracked.lowerBound), local, all.slice(axis: 0, tracked.upperBound..<6)].filter { $0.shape[0] > 0 }, axis: 0)
            }
            symmetricInfoNCE(images: l2Normalized(assemble(i, iLocal)), texts: l2Normalized(assemble(t, tLocal)), scale: scale).backward()
            return (iLocal.grad!, tLocal.grad!)
        }
        let whole = gradients(0..<6), first = gradients(0..<2), second = gradients(2..<6)
        let joinedImages = concat([first.0, second.0], axis: 0), joinedTexts = concat([first.1, second.1], axis: 0)
        #expect(isClose(joinedImages, whole.0.scalars.map(Double.init), rtol: 1e-5, atol: 1e-7))
        #expect(isClose(joinedTexts, whole.1.scalars.map(Double.init), rtol: 1e-5, atol: 1e-7))
    }

    @Test("diffuser keys: diffuser.image.* is the CompVis UNet; diffuser.text.* holds a context layer at each of its SpatialTransformer positions")
    func diffuserKeys() {
        let a = versatileArchitecture()
        let d = VersatileDiffuser(a, seed: 1)
        let unet = compVisUNetKeys(a).filter { $0.0.hasPrefix("model.diffusion_model.") }
            .map { ($0.0.replacingOccurrences(of: "model.diffusion_model.", with: "diffuser.image."), $0.1) }
        let params = d.namedParameters().map { ($0.key, $0.tensor.shape) }
        let imageKeys = params.filter { $0.0.hasPrefix("diffuser.image.") }
        #expect(imageKeys.map(\.0) == unet.map(\.0) && imageKeys.map(\.1) == unet.map(\.1))
        let transformerKeys = unet.filter { $0.0.contains(".transformer_blocks.") || $0.0.contains(".proj_in.") || $0.0.contains(".proj_out.")
            || $0.0.hasSuffix(".1.norm.weight") || $0.0.hasSuffix(".1.norm.bias") }
        let textKeys = params.filter { $0.0.hasPrefix("diffuser.text.") }
        #expect(Set(textKeys.map { $0.0.replacingOccurrences(of: "diffuser.text.", with: "diffuser.image.") }) == Set(transformerKeys.map(\.0)))
        #expect(d.image.slotKeys == ["input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1"], "\(d.image.slotKeys)")
        #expect(d.group(of: "diffuser.image.time_embed.0.weight") == (.global, nil))
        #expect(d.group(of: "diffuser.image.input_blocks.1.0.in_layers.2.weight") == (.data, .image))
        #expect(d.group(of: "diffuser.image.middle_block.1.proj_in.weight") == (.context, .image))
        #expect(d.group(of: "diffuser.text.output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight") == (.context, .text))
        #expect(d.group(of: "diffuser.image.middle_block.0.in_layers.0.weight") == (.data, .image))
    }

    @Test("flows: the image context uses the UNet's own layers exactly; the text context uses its own set; mixing weights (1, 0) is the first context alone; each flow's loss reaches only its context layers")
    func routes() {
        let a = versatileArchitecture()
        let d = VersatileDiffuser(a, seed: 2)
        randomize(d, seed: 9)
        let x = randn([2, 8, 8, 2], 1), t = [10, 700]
        let c1 = Context(tokens: randn([2, 5, 12], 2)), c2 = Context(tokens: randn([2, 3, 12], 3))
        let (own, image, text, mixed) = withoutGradient {
            (d.image(x, timesteps: t, context: c1), d(x, timesteps: t, contexts: [(.image, c1, 1)]), d(x, timesteps: t, contexts: [(.text, c1, 1)]),
             d(x, timesteps: t, contexts: [(.text, c1, 1), (.image, c2, 0)]))
        }
        #expect(own.scalars == image.scalars)
        #expect(zip(own.scalars, text.scalars).map { abs($0 - $1) }.max()! > 1e-3)
        #expect(isClose(mixed, text.scalars.map(Double.init), rtol: 1e-4, atol: 1e-5))
        for flow in [Modality.text, .image] {
            for p in d.parameters() { p.grad = nil }
            let arena = ParameterArena(d)
            arena.zeroGradients()
            d(x, timesteps: t, contexts: [(flow, c1, 1)]).sum().backward()
            var touched: [Modality: Double] = [:]
            var data = 0.0
            for e in arena.entries {
                let g = e.tensor.grad!.scalars.reduce(0.0) { $0 + Double(abs($1)) }
                let (group, type) = d.group(of: e.key)
                if group == .context, let type { touched[type, default: 0] += g } else { data += g }
            }
            #expect(touched[flow]! > 0 && data > 0 && touched[flow == .text ? .image : .text]! == 0, "\(flow): \(touched)")
        }
    }

    @Test("Adam by segments: one whole-arena segment is update(lr:) bit for bit; a run left out keeps its values and moments; a segment's own step sets its bias correction")
    func adamSegments() {
        func make() -> (ParameterArena, Adam) {
            let m = Linear(6, 5, ParameterInitializer(seed: 3))
            let arena = ParameterArena(m)
            let g = randn([arena.count], 4)
            arena.gradients.pointer.update(from: g.pointer, count: arena.count)
            var s = Adam.Settings()
            (s.weightDecay, s.decoupled) = (0.01, true)
            return (arena, Adam(arena, s))
        }
        let (a1, adam1) = make(), (a2, adam2) = make(), (a3, adam3) = make()
        adam1.update(lr: 1e-2)
        adam2.step += 1
        adam2.update(segments: [Adam.Segment(range: 0..<a2.count, lr: 1e-2, step: 1)])
        #expect(a1.values.scalars == a2.values.scalars && adam1.m.scalars == adam2.m.scalars && adam1.v.scalars == adam2.v.scalars)
        let before = a3.values.scalars, half = a3.entries[1].offset
        adam3.update(segments: [Adam.Segment(range: 0..<half, lr: 1e-2, step: 1)])
        #expect(Array(a3.values.scalars[half...]) == Array(before[half...]) && adam3.m.scalars[half...].allSatisfy { $0 == 0 })
        #expect(Array(a3.values.scalars[..<half]) == Array(a1.values.scalars[..<half]))
    }
}
