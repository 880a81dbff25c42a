import Diffusion
import Foundation
import NN
import TensorEngine

/// Stage 2's model, its parameter arena, optimizer and EMA, and one training step
/// (the ε- or v-prediction loss of `DiffusionObjective`). The trainer and the
/// benchmarks both train through it.
public final class DiffusionStep {
    public let config: DiffusionStageConfig
    public let model: LatentDiffusionModel
    public let arena: ParameterArena
    public let optimizer: Adam
    public let ema: EMA
    public let objective: DiffusionObjective

    /// `tokenizer`: a text model's (learned from the training captions, or read from a checkpoint).
    public init(config: DiffusionStageConfig, tokenizer: BPETokenizer?, seed: Int) {
        self.config = config
        model = LatentDiffusionModel(config.model, conditioning: config.conditioning, tokenizer: tokenizer, seed: UInt64(bitPattern: Int64(seed)))
        arena = ParameterArena(model)
        optimizer = Adam(arena, config.optimizer.adam)
        ema = EMA(arena, decay: config.emaDecay)
        objective = DiffusionObjective(schedule: config.schedule.schedule, prediction: config.prediction)
    }

    /// Forward and backward of one micro-batch of scaled latents z0 [N, s, s, c] with
    /// its noise, times, conditions and an image task's concatenated channels, adding
    /// `scale` × the gradient of the mean loss to the arena. Returns each sample's loss.
    public func accumulate(z0: Tensor, noise: Tensor, times: [Int], conditions: [Condition], concat: Tensor? = nil, scale: Float) -> [Double] {
        let perSample = objective.perSampleLoss(z0: z0, noise: noise, times: times) {
            model($0, timesteps: $1, conditions: conditions, concat: concat)
        }
        perSample.mean().scaled(by: scale).backward()
        return perSample.scalars.map(Double.init)
    }
}
