import Datasets
import Diffusion
import Distributed
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
    /// A single-flow model (nil: the caller's predictor, as a multi-flow diffuser's).
    public let model: LatentDiffusionModel?
    public let stage: DiffusionStageConfig
    public let sampling: SamplingConfig

    public init(model: LatentDiffusionModel?, stage: DiffusionStageConfig, sampling: SamplingConfig) throws {
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

    /// ε̂ for the samples `rows` of a request: the batch x is `halves.count` blocks of
    /// rows.count samples, block k conditional when halves[k] is false and with the null
    /// condition when it is true (the guided pair is [false, true]).
    public typealias Predictor = (_ x: Tensor, _ timesteps: [Int], _ rows: Range<Int>, _ halves: [Bool]) -> Tensor

    /// Scaled latents [N, s, s, c], one for each condition (`.none`: unconditional);
    /// `concat` [N, s, s, k]: an image task's channels beside z_t.
    public func sample(conditions: [Condition], concat: Tensor? = nil, firstIndex: Int = 0) -> Tensor {
        let model = self.model!
        return sample(count: conditions.count, firstIndex: firstIndex, conditional: model.condStageModel != nil) { x, t, rows, halves in
            let batch = halves.flatMap { null in null ? [Condition](repeating: .none, count: rows.count) : Array(conditions[rows]) }
            let part = concat.map { c in halves.count == 1 ? c.slice(axis: 0, rows) : TensorEngine.concat(halves.map { _ in c.slice(axis: 0, rows) }, axis: 0) }
            return model(x, timesteps: t, conditions: batch, concat: part)
        }
    }

    /// Scaled latents [count, s, s, c] (or [count] + `shape`, e.g. a text latent's [1, 1, dim])
    /// from `predict`, with classifier-free guidance when `conditional` (w = 1: the
    /// conditional prediction alone; w = 0: the null one).
    public func sample(count n: Int, firstIndex: Int = 0, shape: [Int]? = nil, conditional: Bool, predict: @escaping Predictor) -> Tensor {
        let a = stage.model
        let shape = shape ?? [a.imageSize, a.imageSize, a.latentChannels]
        return TensorEngine.concat(stride(from: 0, to: max(n, 1), by: Self.chunk).map { start in
            sampleChunk(rows: start..<min(n, start + Self.chunk), firstIndex: firstIndex, shape: shape, conditional: conditional, predict: predict)
        }, axis: 0)
    }

    private func sampleChunk(rows: Range<Int>, firstIndex: Int, shape: [Int], conditional: Bool, predict: @escaping Predictor) -> Tensor {
        let per = shape.reduce(1, *)
        let n = rows.count
        func noise(_ step: Int) -> Tensor {
            let t = Tensor(uninitialized: [n] + shape)
            for i in 0..<n {
                sampleStream(seed: sampling.seed, .sampling, epoch: step, index: firstIndex + rows.lowerBound + i)
                    .fillNormal(t.pointer + i * per, count: per)
            }
            return t
        }
        let w = Float(sampling.guidance)
        let denoise: Denoiser = { x, t in
            if w == 1 || !conditional { return predict(x, t, rows, [false]) }
            if w == 0 { return predict(x, t, rows, [true]) }
            let guidedPair = predict(TensorEngine.concat([x, x], axis: 0), t + t, rows, [false, true])
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
    public static func decode(_ latents: Tensor, scaleFactor: Double, autoencoder: Autoencoder) -> Tensor {
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

/// The latents [count, s, s, c] (or [count] + `shape`) of samples drawn in contiguous
/// shares by every rank (`sample` draws the samples of a range), gathered on rank 0 (nil
/// on the others). Sample i's noise depends on i alone, so the result is the same at any world size.
func sampleShared(count: Int, stage: DiffusionStageConfig, shape: [Int]? = nil, communicator comm: Communicator,
                  sample: (Range<Int>) throws -> Tensor) throws -> Tensor? {
    let share = { (r: Int) in (r * count / comm.size)..<((r + 1) * count / comm.size) }
    let mine = share(comm.rank), widest = (0..<comm.size).map { share($0).count }.max()!
    let a = stage.model, shape = shape ?? [a.imageSize, a.imageSize, a.latentChannels], per = shape.reduce(1, *)
    var values = [Float](repeating: 0, count: widest * per)
    if !mine.isEmpty {
        let latents = try sample(mine)
        values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: latents.pointer, count: latents.count) }
    }
    let gathered = try comm.allGather(values: values)
    guard comm.isRoot else { return nil }
    var scalars: [Float] = []
    for r in 0..<comm.size { scalars += gathered[(r * widest * per)..<((r * widest + share(r).count) * per)] }
    return Tensor(shape: [count] + shape, scalars: scalars)
}

/// Copies `source` into the arena's values for the duration of `body` (sampling
/// with the EMA weights), then puts the trained values back.
func withValues<R>(_ source: Tensor, in arena: ParameterArena, _ body: () throws -> R) rethrows -> R {
    let saved = arena.values.detached()
    arena.values.pointer.update(from: source.pointer, count: arena.count)
    defer { arena.values.pointer.update(from: saved.pointer, count: arena.count) }
    return try body()
}
