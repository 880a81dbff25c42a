import Distributed
import NN
import TensorEngine
import Testing
import Training

/// Buckets over `arena` (1 MiB, then `bucketMiB`), each parameter reporting by its index.
private func synchronizer(_ arena: ParameterArena, bucketMiB: Int) -> GradientSynchronizer {
    for (i, e) in arena.entries.enumerated() { e.tensor.readyIndex = i }
    return GradientSynchronizer(gradients: arena.gradients.pointer, parameters: arena.entries.map(\.tensor),
                                offsets: arena.entries.map(\.offset), arenaCount: arena.count, communicator: SingleProcess(),
                                firstBucketBytes: 1 << 20, bucketBytes: bucketMiB << 20)
}

@Suite("Gradient buckets complete in order during backward")
struct BucketOrderTests {
    @Test("the reference UNet: every bucket completes during backward, first to last (unused to_q, to_k of one-token cross-attention included)")
    func unet() throws {
        let a = Config().diffusion.model
        let model = LatentDiffusionModel(a, seed: 0)
        let arena = ParameterArena(model)
        let sync = synchronizer(arena, bucketMiB: 2)
        #expect(sync.buckets.count >= 8)
        let z = Tensor.randomNormal([2, a.imageSize, a.imageSize, a.inChannels], stream: RandomStream(seed: 1))
        sync.beginBackward()
        let y = model(z, timesteps: [3, 700], conditions: [.label(1), .none])
        (y * y).mean().backward()
        try sync.finish()
        #expect(sync.lastCompletionOrder == Array(sync.buckets.indices))
    }

    @Test("the reference UNet with τθ for text: τθ's parameters close the arena, and every bucket, τθ's included, completes during backward in order")
    func textUNet() throws {
        var config = Config().diffusion
        config.conditioning.kind = .text
        let tokenizer = BPETokenizer.learn(from: ["a red apple", "a blue car", "an apple"], vocabularySize: 1024, maxLength: 77)
        let step = DiffusionStep(config: config, tokenizer: tokenizer, seed: 0)
        let first = step.arena.entries.firstIndex { $0.key.hasPrefix("cond_stage_model.") }!
        #expect(step.arena.entries[first...].allSatisfy { $0.key.hasPrefix("cond_stage_model.transformer.") })
        let sync = synchronizer(step.arena, bucketMiB: 1)
        #expect(sync.buckets.count >= 8)
        let a = config.model
        let z = Tensor.randomNormal([2, a.imageSize, a.imageSize, a.inChannels], stream: RandomStream(seed: 1))
        sync.beginBackward()
        _ = step.accumulate(z0: z, noise: z.scaled(by: 0.5), times: [3, 700], conditions: [.caption("a red car"), .none], scale: 1)
        try sync.finish()
        #expect(sync.lastCompletionOrder == Array(sync.buckets.indices))
    }

    @Test("the reference autoencoder with its discriminator training: the decoder's buckets, then the encoder's, then the discriminator's")
    func autoencoder() throws {
        var config = Config().autoencoder
        config.loss.discEnabled = true
        config.loss.discStart = 0
        let step = AutoencoderStep(config: config, seed: 0)
        let sync = synchronizer(step.arena, bucketMiB: 2)
        #expect(sync.buckets.count >= 8)
        let m = config.model
        let x = Tensor.randomUniform([1, m.resolution, m.resolution, m.inChannels], stream: RandomStream(seed: 1), low: -1, high: 1)
        let noise = Tensor.randomNormal([1, m.latentSize, m.latentSize, m.embedDim], stream: RandomStream(seed: 2))
        sync.beginBackward()
        _ = step.accumulate(x, noise: noise, scale: 1, step: 0)
        try sync.finish()
        #expect(sync.lastCompletionOrder == Array(sync.buckets.indices))
        // The discriminator's parameters sit at the end of the arena.
        let first = step.arena.entries.firstIndex { $0.key.hasPrefix("loss.discriminator.") }!
        #expect(step.arena.entries[first...].allSatisfy { $0.key.hasPrefix("loss.discriminator.") })
    }
}
