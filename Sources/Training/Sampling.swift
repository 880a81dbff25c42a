import Datasets
import Diffusion
import Foundation
import NN
import Storage
import TensorEngine

/// A sampling problem that stops `ldm-train sample` (bad option values).
public struct SamplingError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Draws latents from a trained diffusion model with classifier-free guidance and
/// decodes them: the path of `ldm-train sample` and of the training grids. The
/// noise of sample i is a pure function of (seed, i, step), so a sample does not
/// depend on how many are drawn with it.
public struct LatentSampler {
    public let model: LatentDiffusionModel
    public let stage: DiffusionStageConfig
    public let sampling: SamplingConfig

    public init(model: LatentDiffusionModel, stage: DiffusionStageConfig, sampling: SamplingConfig) throws {
        (self.model, self.stage, self.sampling) = (model, stage, sampling)
        let T = stage.schedule.timesteps
        guard sampling.guidance >= 0 else { throw SamplingError(description: "--guidance must be ≥ 0, got \(sampling.guidance)") }
        guard sampling.steps >= 1 && sampling.steps <= T else {
            throw SamplingError(description: "--steps must be in 1...\(T) (the schedule's T), got \(sampling.steps)")
        }
        guard sampling.eta >= 0 else { throw SamplingError(description: "--eta must be ≥ 0, got \(sampling.eta)") }
    }

    /// Samples drawn together; more are drawn in chunks of this many, so memory does
    /// not grow with the count (sample i's noise depends on i alone, not on its chunk).
    public static let chunk = 256

    /// Scaled latents [N, s, s, c], one for each condition (`.none`: unconditional);
    /// `concat` [N, s, s, k]: an image task's channels beside z_t.
    public func sample(conditions: [Condition], concat: Tensor? = nil, firstIndex: Int = 0) -> Tensor {
        guard conditions.count <= Self.chunk else {
            return TensorEngine.concat(stride(from: 0, to: conditions.count, by: Self.chunk).map { start in
                let end = min(conditions.count, start + Self.chunk)
                return sample(conditions: Array(conditions[start..<end]), concat: concat?.slice(axis: 0, start..<end), firstIndex: firstIndex + start)
            }, axis: 0)
        }
        let a = stage.model
        let shape = [a.imageSize, a.imageSize, a.latentChannels], per = shape.reduce(1, *)
        let n = conditions.count
        func noise(_ step: Int) -> Tensor {
            let t = Tensor(uninitialized: [n] + shape)
            for i in 0..<n {
                sampleStream(seed: sampling.seed, .sampling, epoch: step, index: firstIndex + i).fillNormal(t.pointer + i * per, count: per)
            }
            return t
        }
        let null = [Condition](repeating: .none, count: n)
        let w = Float(sampling.guidance)
        let both = concat.map { TensorEngine.concat([$0, $0], axis: 0) }
        let denoise: Denoiser = { x, t in
            if w == 1 || model.condStageModel == nil { return model(x, timesteps: t, conditions: conditions, concat: concat) }
            if w == 0 { return model(x, timesteps: t, conditions: null, concat: concat) }
            let guidedPair = model(TensorEngine.concat([x, x], axis: 0), timesteps: t + t, conditions: conditions + null, concat: both)
            let halves = guidedPair.split(sizes: [n, n], axis: 0)
            return guided(conditional: halves[0], unconditional: halves[1], scale: w)
        }
        let schedule = stage.schedule.schedule
        return withoutGradient {
            if sampling.sampler == .ddpm {
                return DDPMSampler(schedule: schedule, prediction: stage.prediction)
                    .sample(start: noise(0), noise: { noise($0 + 1) }, denoise: denoise)
            }
            return DDIMSampler(schedule: schedule, steps: sampling.steps, eta: sampling.eta, prediction: stage.prediction)
                .sample(start: noise(0), noise: { noise($0 + 1) }, denoise: denoise)
        }
    }

    /// Images [N, R, R, C] in [−1, 1] from scaled latents: D(z / scale_factor).
    public static func decode(_ latents: Tensor, scaleFactor: Double, autoencoder: AutoencoderKL) -> Tensor {
        withoutGradient {
            var images: [Tensor] = []
            let n = latents.shape[0]
            var start = 0
            while start < n {   // decode in chunks to bound memory
                let end = min(n, start + 100)
                images.append(autoencoder.decode(latents.slice(axis: 0, start..<end).scaled(by: Float(1 / scaleFactor))))
                start = end
            }
            return concat(images, axis: 0).clamped(min: -1, max: 1)
        }
    }

    /// Writes a grid PNG with `rows` rows (a class or a prompt each).
    public static func writeGrid(_ images: Tensor, rows: Int, to path: String) throws {
        let perRow = images.shape[0] / max(rows, 1)
        let grid = ImageMetrics.grid((0..<rows).map { images.slice(axis: 0, ($0 * perRow)..<(($0 + 1) * perRow)) })
        try PNGCodec.write(path, width: grid.width, height: grid.height, channels: grid.channels, pixels: grid.pixels)
    }
}

/// Copies `source` into the arena's values for the duration of `body` (sampling
/// with the EMA weights), then puts the trained values back.
func withValues<R>(_ source: Tensor, in arena: ParameterArena, _ body: () throws -> R) rethrows -> R {
    let saved = arena.values.detached()
    arena.values.pointer.update(from: source.pointer, count: arena.count)
    defer { arena.values.pointer.update(from: saved.pointer, count: arena.count) }
    return try body()
}
