import Datasets
import Diffusion
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// Stage 2: trains the UNet ε_θ(z_t, t, y) and τθ on the latent cache, y being
/// what `diffusion.conditioning` says: the row's class, its caption, or nothing.
/// Each sample's latent draw z = (mean + exp(logvar/2)·ε)·scale_factor, its time t,
/// its noise and its condition drop come from its own (seed, epoch, index) streams.
public final class DiffusionTrainer: TrainingStage {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    let step: DiffusionStep
    let schedule: NoiseSchedule
    let cache: LatentCache.Contents
    /// What conditions each cached row.
    let conditions: [Condition]
    /// The decoder for sample grids (nil: no grids).
    let autoencoder: FrozenAutoencoder?
    /// An image task's condition maker and the dataset splits its images come from.
    let imageTask: ImageTask?
    let images: (train: ImageBatcher, test: ImageBatcher)?
    var stageConfig: DiffusionStageConfig { config.diffusion }
    var model: LatentDiffusionModel { step.model }

    /// `autoencoder`: the stage-1 run whose cache this is; its identity must match the cache's.
    public init(config: Config, options: RunOptions, autoencoder path: String?, communicator: Communicator) throws {
        try validateDiffusion(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let s = config.diffusion
        cache = try LatentCache.read(s.latents)
        let a = s.model
        try checkLatentShape(cache, s)
        conditions = try Self.conditions(of: cache, s.conditioning.kind, model: a, path: s.latents)
        if let path {
            let ae = try cacheAutoencoder(path, cache: cache, latents: s.latents, communicator: comm)
            try ImageTask.checkChannels(s, autoencoder: ae.config.autoencoder.model)
            autoencoder = ae
        } else if s.task.kind != .generation {
            throw DataError("diffusion.task \(s.task.kind.rawValue) makes its conditions from the images with the autoencoder: "
                            + "give --autoencoder RUN (the one \(s.latents) was encoded with)")
        } else {
            guard a.inChannels == a.outChannels else {
                throw ConfigError.invalid(path: "diffusion.model.in_channels", reason: "must equal out_channels \(a.outChannels) for generation, got \(a.inChannels)")
            }
            autoencoder = nil
        }
        if let ae = autoencoder, s.task.kind != .generation {
            let dataset = cache.info.dataset
            let train = try DatasetSplit.open(dataset, split: .train), test = try DatasetSplit.open(dataset, split: .test)
            let r = ae.config.autoencoder.model.resolution
            guard train.channels == ae.config.autoencoder.model.inChannels, let last = cache.sourceIndex.max(), last < train.count else {
                throw DataError("\(dataset) is not the dataset \(s.latents) was encoded from (\(train.count) rows of \(train.channels) channels); "
                                + "re-run 'ldm-train encode'")
            }
            images = (try ImageBatcher(split: train, resolution: r, flip: false, seed: config.seed),
                      try ImageBatcher(split: test, resolution: r, flip: false, seed: config.seed))
            imageTask = ImageTask(s.task, autoencoder: ae.config.autoencoder.model, encoder: ae.model, scaleFactor: cache.info.scaleFactor)
        } else {
            (images, imageTask) = (nil, nil)
        }
        schedule = s.schedule.schedule
        // learned from the captions the same way on every rank
        let tokenizer = s.conditioning.kind == .text
            ? learnTokenizer(cache.captions ?? [], s.conditioning.text, log: log, key: "diffusion.conditioning.text.max_seq_len") : nil
        step = DiffusionStep(config: s, tokenizer: tokenizer, seed: config.seed)
    }

    /// The condition of every cached row for `kind`; throws when the cache lacks it.
    static func conditions(of cache: LatentCache.Contents, _ kind: ConditionKind, model a: UNetArchitecture, path: String) throws -> [Condition] {
        switch kind {
        case .none:
            return [Condition](repeating: .none, count: cache.info.count)
        case .class:
            if let bad = cache.labels.first(where: { $0 < 0 || Int($0) >= a.numClasses }) {
                throw DataError("\(path): label \(bad) outside 0..<\(a.numClasses) (diffusion.model.num_classes)"
                                + (bad < 0 ? "; rows without labels train with diffusion.conditioning.kind text or none" : ""))
            }
            return cache.labels.map { .label(Int($0)) }
        case .text:
            guard let captions = cache.captions else {
                throw DataError("\(path) has no captions (written by an older version): re-run 'ldm-train encode'")
            }
            guard captions.contains(where: { !$0.isEmpty }) else {
                throw DataError("\(path): every caption is empty; give the images captions ('text' in metadata.jsonl) "
                                + "or train with diffusion.conditioning.kind class or none")
            }
            return captions.map(Condition.init(caption:))
        }
    }

    @discardableResult
    public func run() throws -> [String: Double] {
        var extra = ["autoencoder": cache.info.autoencoder, "scale_factor": String(cache.info.scaleFactor)]
        var inputs = ["latent_cache": "written \(cache.info.created), \(cache.info.count) rows"]
        if let tokenizer = model.tokenizer {   // learned again at every start: a resume must learn the same one
            extra["tokenizer"] = tokenizer.json
            inputs["tokenizer_identity"] = tokenizer.identity
        }
        if let images { inputs["dataset"] = images.train.split.identity }
        return try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log, extraAttributes: extra,
                             inputs: inputs).run()
    }

    // MARK: TrainingStage

    var kind: String { "latent-diffusion" }
    var arena: ParameterArena { step.arena }
    var optimizer: Adam { step.optimizer }
    var ema: EMA? { step.ema }
    var importable: ImportableState? {
        ImportableState(state: model.stateTensors(), target: .diffusion, tokenizer: model.tokenizer)
    }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { cache.info.count }
    var summary: String {
        var conditioning = stageConfig.conditioning.kind == .none ? "unconditional" : "\(stageConfig.conditioning.kind.rawValue)-conditional"
        if let t = model.tokenizer { conditioning += " (\(t.merges.count) BPE merges, \(t.maxLength) tokens)" }
        if let imageTask {
            let what = imageTask.config.kind == .superResolution ? "super-resolution ×\(imageTask.config.factor)" : "inpainting"
            conditioning += ", \(what) (\(stageConfig.model.concatChannels) channel(s) concatenated to z_t)"
        }
        return "diffusion \(stageConfig.name): \(model.parameterCount()) parameters, \(conditioning), \(cache.info.count) latents from "
            + "\(cache.info.autoencoder), scale_factor \(String(format: "%.5f", cache.info.scaleFactor)), \(stageConfig.schedule.kind.rawValue) schedule T=\(schedule.timesteps)"
    }

    /// The latent cache is held in memory; an image task reads its images ahead.
    func prefetch(_ indices: [Int]) { images?.train.prefetch(indices.map { Int(cache.sourceIndex[$0]) }) }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step number: Int) throws -> [(String, Tally)] {
        let batch = LatentBatch(cache, indices: indices, epoch: epoch, seed: config.seed, timesteps: schedule.timesteps, pUncond: stageConfig.pUncond)
        let batchConditions = zip(indices, batch.dropped).map { $1 ? Condition.none : conditions[$0] }
        var concat: Tensor?
        if let imageTask, let images {   // the condition of the row's image, its mask drawn for this epoch
            let x = try images.train.images(indices.map { Int(cache.sourceIndex[$0]) }, epoch: nil)
            concat = imageTask.concat(imageTask.condition(for: x, indices: indices, epoch: epoch, seed: config.seed))
        }
        let losses = step.accumulate(z0: batch.z0, noise: batch.noise, times: batch.times, conditions: batchConditions, concat: concat, scale: scale)
        return batch.tallies(losses)
    }

    /// A grid of EMA samples, one row per class or prompt (one row for an
    /// unconditional model), or an image task's rows of eight test images, decoded with
    /// the autoencoder. Every rank samples a contiguous share of it, so no rank waits
    /// alone in a collective while another samples (sample i's noise depends on i alone:
    /// the grid is the same at any world size); rank 0 decodes and writes it.
    func writeImages(step number: Int) throws {
        guard let autoencoder else { return }
        let file = "\(options.runDirectory)/samples-\(String(format: "%08d", number)).png"
        if let imageTask, let images {
            let shown = min(8, images.test.split.count), indices = (0..<shown).map { $0 * images.test.split.count / shown }
            let (x, condition, rows) = try TaskEvaluation.testRows(imageTask, images.test, indices, seed: stageConfig.sampling.seed,
                                                                   kind: stageConfig.conditioning.kind)
            guard let y = try sampleShared(rows, concat: imageTask.concat(condition), decoder: autoencoder) else { return }
            let grid = ImageMetrics.grid(imageTask.gridRows(condition, results: y, references: x))
            return try PNGCodec.write(file, width: grid.width, height: grid.height, channels: grid.channels, pixels: grid.pixels)
        }
        let k = min(stageConfig.sampling.perClass, 8)
        let rows = gridRows(stageConfig, captions: cache.captions ?? [])
        guard let images = try sampleShared(rows.flatMap { [Condition](repeating: $0, count: k) }, concat: nil, decoder: autoencoder) else { return }
        try LatentSampler.writeGrid(images, rows: rows.count, to: file)
    }

    /// Samples `conditions` (with an image task's `concat`) with the EMA weights, each
    /// rank a contiguous share; rank 0 gathers and decodes them (nil on the other ranks).
    func sampleShared(_ conditions: [Condition], concat: Tensor?, decoder: FrozenAutoencoder) throws -> Tensor? {
        let sampler = try LatentSampler(model: model, stage: stageConfig, sampling: stageConfig.sampling)
        let latents = try Training.sampleShared(count: conditions.count, stage: stageConfig, communicator: comm) { mine in
            withValues(step.ema.shadow, in: arena) {
                sampler.sample(conditions: Array(conditions[mine]), concat: concat?.slice(axis: 0, mine), firstIndex: mine.lowerBound)
            }
        }
        return latents.map { LatentSampler.decode($0, scaleFactor: cache.info.scaleFactor, autoencoder: decoder.model) }
    }

    /// An image task's model against its baseline on the test split (EMA weights).
    func finish() throws -> [String: Double] {
        guard let imageTask, let images, let autoencoder else { return [:] }
        let e = stageConfig.training.evalImages, count = e > 0 ? min(e, images.test.split.count) : images.test.split.count
        let sampler = try LatentSampler(model: model, stage: stageConfig, sampling: stageConfig.sampling)
        let metrics = try withValues(step.ema.shadow, in: arena) {
            try TaskEvaluation.run(task: imageTask, sampler: sampler, decoder: autoencoder.model, scaleFactor: cache.info.scaleFactor,
                                   test: images.test, count: count, communicator: comm)
        }
        log.say(TaskEvaluation.describe(metrics, kind: imageTask.config.kind, count: count))
        return metrics
    }
}

/// Throws unless the cached latents have the shape stage 2 denoises.
func checkLatentShape(_ cache: LatentCache.Contents, _ s: DiffusionStageConfig) throws {
    let a = s.model
    guard cache.info.channels == a.latentChannels, cache.info.height == a.imageSize, cache.info.width == a.imageSize else {
        throw DataError("\(s.latents): latents are \(cache.info.channels)×\(cache.info.height)×\(cache.info.width), the UNet denoises "
                        + "\(a.latentChannels)×\(a.imageSize)×\(a.imageSize) (diffusion.model.out_channels / image_size)")
    }
}

/// The autoencoder at `path` on every rank, checked to be the one `cache` was encoded with.
func cacheAutoencoder(_ path: String, cache: LatentCache.Contents, latents: String, communicator comm: Communicator) throws -> FrozenAutoencoder {
    let ae = try FrozenAutoencoder.load(path, communicator: comm)
    guard ae.identity == cache.info.autoencoder else {
        throw DataError("\(latents) was encoded by autoencoder \(cache.info.autoencoder), but --autoencoder \(path) is \(ae.identity); "
                        + "re-run 'ldm-train encode' with it")
    }
    return ae
}

/// A micro-batch's diffusion inputs from the latent cache, each sample's from its own
/// (seed, epoch, index) streams: z0 = (mean + exp(logvar/2)·ε)·scale_factor as NHWC,
/// the noise, the time, and whether the sample's condition is dropped (probability p_uncond).
struct LatentBatch {
    let z0: Tensor, noise: Tensor
    let times: [Int]
    let dropped: [Bool]
    let timesteps: Int

    init(_ cache: LatentCache.Contents, indices: [Int], epoch: Int, seed: Int, timesteps T: Int, pUncond: Double) {
        let (c, s) = (cache.info.channels, cache.info.height), per = c * s * s
        let n = indices.count, sf = Float(cache.info.scaleFactor)
        let z0 = Tensor(uninitialized: [n, s, s, c]), noise = Tensor(uninitialized: [n, s, s, c])
        var times: [Int] = [], dropped: [Bool] = []
        var draw = [Float](repeating: 0, count: per)
        for (b, index) in indices.enumerated() {
            sampleStream(seed: seed, .posterior, epoch: epoch, index: index).fillNormal(&draw, count: per)
            for ch in 0..<c { for y in 0..<s { for x in 0..<s {   // NCHW cache → NHWC, z = (μ + σ ε)·scale
                let src = index * per + (ch * s + y) * s + x, nhwc = ((y * s) + x) * c + ch
                z0.pointer[b * per + nhwc] = (cache.mean[src] + exp(0.5 * cache.logvar[src]) * draw[(ch * s + y) * s + x]) * sf
            } } }
            sampleStream(seed: seed, .diffusionNoise, epoch: epoch, index: index).fillNormal(noise.pointer + b * per, count: per)
            var u: [Float] = [0, 0]
            sampleStream(seed: seed, .diffusionTime, epoch: epoch, index: index).fillUniform(&u, count: 2)
            times.append(min(T - 1, Int(u[0] * Float(T))))
            dropped.append(u[1] < Float(pUncond))
        }
        (self.z0, self.noise, self.times, self.dropped, timesteps) = (z0, noise, times, dropped, T)
    }

    /// The logged loss, and the loss by quarter of the time range.
    func tallies(_ losses: [Double]) -> [(String, Tally)] {
        let T = timesteps
        var out: [(String, Tally)] = [("loss", Tally(sum: losses.reduce(0, +), count: Double(losses.count)))]
        for q in 0..<4 {
            let mine = zip(times, losses).filter { $0.0 * 4 / T == q }.map(\.1)
            out.append(("loss_t\(q * T / 4)-\((q + 1) * T / 4 - 1)", Tally(sum: mine.reduce(0, +), count: Double(mine.count))))
        }
        return out
    }
}

/// The rows of a grid: every class; the configured prompts or the first eight
/// distinct training captions; or one unconditional row.
func gridRows(_ stage: DiffusionStageConfig, captions: [String], kind: ConditionKind? = nil) -> [Condition] {
    switch kind ?? stage.conditioning.kind {
    case .none: return [.none]
    case .class: return (0..<stage.model.numClasses).map { .label($0) }
    case .text:
        if !stage.sampling.prompts.isEmpty { return stage.sampling.prompts.map(Condition.init(caption:)) }
        var seen = Set<String>(), out: [Condition] = []
        for c in captions where !c.isEmpty && out.count < 8 && seen.insert(c).inserted { out.append(.caption(c)) }
        return out
    }
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
    let c = d.conditioning
    if d.diffuser == .multiFlow {
        guard c.key == .crossattn, d.task.kind == .generation else {
            throw ConfigError.invalid(path: "diffusion.diffuser", reason: "multi_flow attends to its contexts by cross-attention and generates "
                                      + "images: it needs conditioning.key crossattn and task.kind generation")
        }
        guard !d.flows.isEmpty, Set(d.flows.map(\.flow)).count == d.flows.count else {
            throw ConfigError.invalid(path: "diffusion.flows", reason: "needs at least one flow and each (data, context) pair once, got "
                                      + d.flows.map(\.flow.description).joined(separator: ", "))
        }
        guard !d.hasTextData || d.textPoints >= 1 else {
            throw ConfigError.invalid(path: "diffusion.text_points", reason: "must be ≥ 1, got \(d.textPoints)")
        }
        for (i, f) in d.flows.enumerated() where !(f.weight > 0) || f.steps < 1 || !((0..<1).contains(f.pUncond ?? 0)) {
            throw ConfigError.invalid(path: "diffusion.flows[\(i)]", reason: "needs weight > 0, steps ≥ 1 and p_uncond in [0, 1)")
        }
        for group in ParameterGroup.allCases where !(d.lrMultipliers[group] >= 0) {
            throw ConfigError.invalid(path: "diffusion.lr_multipliers.\(group.rawValue)", reason: "must be ≥ 0, got \(d.lrMultipliers[group])")
        }
    }
    if c.key.usesConcat != (d.task.kind != .generation) {
        throw ConfigError.invalid(path: "diffusion.conditioning.key", reason: c.key.usesConcat
            ? "\(c.key.rawValue) concatenates an image to z_t, and generation has none: set diffusion.task.kind super_resolution or inpainting, "
              + "or use crossattn or adm"
            : "task \(d.task.kind.rawValue) concatenates its condition image to z_t: use concat (or hybrid, to attend to a class or caption too)")
    }
    if c.key == .concat && c.kind != .none {
        throw ConfigError.invalid(path: "diffusion.conditioning.key", reason: "concat gives the UNet the image only, so a \(c.kind.rawValue) condition "
                                  + "would go unused: set conditioning.kind none, or use hybrid to attend to it as well")
    }
    if c.key == .hybrid && c.kind == .none {
        throw ConfigError.invalid(path: "diffusion.conditioning.key", reason: "hybrid also attends to a class or caption, and kind none has neither: use concat")
    }
    if c.key == .adm && c.kind == .none {
        throw ConfigError.invalid(path: "diffusion.conditioning.key", reason: "adm adds the condition to the time embedding; an unconditional model has none")
    }
    if c.kind == .text {
        let t = c.text
        guard t.vocabSize >= BPETokenizer.firstMerge, t.maxSeqLen >= 2, t.nLayer >= 1, t.heads >= 1, m.contextDim % t.heads == 0 else {
            throw ConfigError.invalid(path: "diffusion.conditioning.text", reason: "needs vocab_size ≥ \(BPETokenizer.firstMerge) (bytes and specials), "
                                      + "max_seq_len ≥ 2, n_layer ≥ 1 and heads dividing model.context_dim \(m.contextDim)")
        }
    }
    guard d.schedule.timesteps >= 1, d.schedule.betaStart > 0, d.schedule.betaEnd < 1, d.schedule.betaStart <= d.schedule.betaEnd else {
        throw ConfigError.invalid(path: "diffusion.schedule", reason: "needs timesteps ≥ 1 and 0 < beta_start ≤ beta_end < 1")
    }
}
