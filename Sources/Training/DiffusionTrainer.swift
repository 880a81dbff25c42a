import Datasets
import Diffusion
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// Stage 2: trains the class-conditional UNet ε_θ(z_t, t, y) on the latent cache.
/// Each sample's latent draw z = (mean + exp(logvar/2)·ε)·scale_factor, its time t,
/// its noise and its condition drop come from its own (seed, epoch, index) streams.
public final class DiffusionTrainer: TrainingStage {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    let model: LatentDiffusionModel
    let arena: ParameterArena
    let optimizer: Adam
    let emaAverage: EMA
    let schedule: NoiseSchedule
    let cache: (info: LatentCache.Info, mean: [Float], logvar: [Float], labels: [Int32])
    /// The decoder for sample grids (nil: no grids).
    let autoencoder: FrozenAutoencoder?
    var stageConfig: DiffusionStageConfig { config.diffusion }

    /// `autoencoder`: the stage-1 run whose cache this is; its identity must match the cache's.
    public init(config: Config, options: RunOptions, autoencoder path: String?, communicator: Communicator) throws {
        try validateDiffusion(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let s = config.diffusion
        cache = try LatentCache.read(s.latents)
        let a = s.model
        guard cache.info.channels == a.inChannels, cache.info.height == a.imageSize, cache.info.width == a.imageSize else {
            throw DataError("\(s.latents): latents are \(cache.info.channels)×\(cache.info.height)×\(cache.info.width), the UNet takes "
                            + "\(a.inChannels)×\(a.imageSize)×\(a.imageSize) (diffusion.model.in_channels / image_size)")
        }
        if let bad = cache.labels.first(where: { $0 < 0 || Int($0) >= a.numClasses }) {
            throw DataError("\(s.latents): label \(bad) outside 0..<\(a.numClasses) (diffusion.model.num_classes)")
        }
        if let path {
            let ae = try FrozenAutoencoder.load(path, communicator: comm)
            guard ae.identity == cache.info.autoencoder else {
                throw DataError("\(s.latents) was encoded by autoencoder \(cache.info.autoencoder), but --autoencoder \(path) is \(ae.identity); "
                                + "re-run 'ldm-train encode' with it")
            }
            autoencoder = ae
        } else {
            autoencoder = nil
        }
        schedule = s.schedule.schedule
        model = LatentDiffusionModel(a, seed: UInt64(bitPattern: Int64(config.seed)))
        arena = ParameterArena(model)
        optimizer = Adam(arena, s.optimizer.adam)
        emaAverage = EMA(arena, decay: s.emaDecay)
    }

    @discardableResult
    public func run() throws -> [String: Double] {
        try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log,
                      extraAttributes: ["autoencoder": cache.info.autoencoder, "scale_factor": String(cache.info.scaleFactor)],
                      inputs: ["latent_cache": "written \(cache.info.created), \(cache.info.count) rows"]).run()
    }

    // MARK: TrainingStage

    var kind: String { "latent-diffusion" }
    var ema: EMA? { emaAverage }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { cache.info.count }
    var summary: String {
        "diffusion \(stageConfig.name): \(model.parameterCount()) parameters, \(cache.info.count) latents from \(cache.info.autoencoder), "
            + "scale_factor \(String(format: "%.5f", cache.info.scaleFactor)), \(stageConfig.schedule.kind.rawValue) schedule T=\(schedule.timesteps)"
    }

    /// The latent cache is held in memory: nothing to read ahead.
    func prefetch(_ indices: [Int]) {}

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step: Int) -> [(String, Tally)] {
        let a = stageConfig.model, (c, s) = (a.inChannels, a.imageSize), per = c * s * s
        let n = indices.count, sf = Float(cache.info.scaleFactor), T = schedule.timesteps
        let z0 = Tensor(uninitialized: [n, s, s, c]), noise = Tensor(uninitialized: [n, s, s, c])
        var times: [Int] = [], labels: [Int] = []
        var draw = [Float](repeating: 0, count: per)
        for (b, index) in indices.enumerated() {
            sampleStream(seed: config.seed, .posterior, epoch: epoch, index: index).fillNormal(&draw, count: per)
            for ch in 0..<c { for y in 0..<s { for x in 0..<s {   // NCHW cache → NHWC, z = (μ + σ ε)·scale
                let src = index * per + (ch * s + y) * s + x, nhwc = ((y * s) + x) * c + ch
                z0.pointer[b * per + nhwc] = (cache.mean[src] + exp(0.5 * cache.logvar[src]) * draw[(ch * s + y) * s + x]) * sf
            } } }
            sampleStream(seed: config.seed, .diffusionNoise, epoch: epoch, index: index).fillNormal(noise.pointer + b * per, count: per)
            var u: [Float] = [0, 0]
            sampleStream(seed: config.seed, .diffusionTime, epoch: epoch, index: index).fillUniform(&u, count: 2)
            times.append(min(T - 1, Int(u[0] * Float(T))))
            labels.append(u[1] < Float(stageConfig.pUncond) ? a.numClasses : Int(cache.labels[index]))
        }
        let xt = schedule.qSample(z0, t: times, noise: noise)
        let target = stageConfig.prediction == .epsilon ? noise : schedule.velocity(z0, t: times, noise: noise)
        let diff = model(xt, timesteps: times, labels: labels) - target
        let perSample = (diff * diff).mean(axes: [1, 2, 3])
        perSample.mean().scaled(by: scale).backward()
        let losses = perSample.scalars.map(Double.init)
        var out: [(String, Tally)] = [("loss", Tally(sum: losses.reduce(0, +), count: Double(n)))]
        for q in 0..<4 {   // the loss by quarter of the time range
            let mine = zip(times, losses).filter { $0.0 * 4 / T == q }.map(\.1)
            out.append(("loss_t\(q * T / 4)-\((q + 1) * T / 4 - 1)", Tally(sum: mine.reduce(0, +), count: Double(mine.count))))
        }
        return out
    }

    /// A grid of EMA samples, one row per class, decoded with the autoencoder.
    func writeImages(step: Int) throws {
        guard let autoencoder else { return }
        let a = stageConfig.model, k = min(stageConfig.sampling.perClass, 8)
        let sampler = try LatentSampler(model: model, stage: stageConfig, sampling: stageConfig.sampling)
        let labels = (0..<a.numClasses).flatMap { [Int](repeating: $0, count: k) }
        let latents = withValues(emaAverage.shadow, in: arena) { sampler.sample(labels: labels) }
        let images = LatentSampler.decode(latents, scaleFactor: cache.info.scaleFactor, autoencoder: autoencoder.model)
        try LatentSampler.writeGrid(images, rows: a.numClasses, to: "\(options.runDirectory)/samples-\(String(format: "%08d", step)).png")
    }

    func finish() throws -> [String: Double] { [:] }
}

/// Checks the diffusion section's values before anything runs.
public func validateDiffusion(_ config: Config) throws {
    let d = config.diffusion
    try d.training.validate(section: "diffusion.training")
    try d.optimizer.validate(section: "diffusion.optimizer")
    try config.distributed.validate()
    let m = d.model
    guard m.modelChannels % 32 == 0, m.channelMult.allSatisfy({ $0 > 0 && (m.modelChannels * $0) % m.numHeadChannels == 0 }),
          m.imageSize % (1 << (m.channelMult.count - 1)) == 0 else {
        throw ConfigError.invalid(path: "diffusion.model", reason: "needs model_channels a multiple of 32, channels divisible by num_head_channels, "
                                  + "and image_size divisible by 2^(levels−1)")
    }
    guard d.pUncond >= 0 && d.pUncond < 1 else { throw ConfigError.invalid(path: "diffusion.p_uncond", reason: "must be in [0, 1)") }
    guard d.schedule.timesteps >= 1, d.schedule.betaStart > 0, d.schedule.betaEnd < 1, d.schedule.betaStart <= d.schedule.betaEnd else {
        throw ConfigError.invalid(path: "diffusion.schedule", reason: "needs timesteps ≥ 1 and 0 < beta_start ≤ beta_end < 1")
    }
}
