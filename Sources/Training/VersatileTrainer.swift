import Datasets
import Diffusion
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// The frozen context encoders of a `context-encoders` run.
public typealias FrozenContextEncoders = FrozenStage<ContextEncoders>

extension FrozenStage where Model == ContextEncoders {
    public static func load(_ path: String, communicator comm: Communicator) throws -> FrozenContextEncoders {
        try load(path, option: "--context-encoders", kind: { _ in ContextEncoderTrainer.kind }, communicator: comm) { config, index, directory in
            ContextEncoders(config.contextEncoders.model,
                            tokenizer: try readTokenizer(index, directory: directory, fits: config.contextEncoders.model.text), seed: 0)
        }
    }
}

/// The tokenizer a checkpoint carries (attribute `tokenizer`), checked to fit `text`.
func readTokenizer(_ index: HDF5File, directory: String, fits t: TextEncoderArchitecture) throws -> BPETokenizer {
    guard let json = try index.stringAttribute("tokenizer") else {
        throw DataError("\(directory)/index.h5 has no tokenizer: a checkpoint with a text encoder carries the one it was trained with")
    }
    let tokenizer: BPETokenizer
    do { tokenizer = try BPETokenizer(json: json) } catch {
        throw DataError("\(directory)/index.h5: attribute 'tokenizer' is not a valid tokenizer (\(error))")
    }
    guard tokenizer.vocabularySize <= t.vocabSize, tokenizer.maxLength == t.maxSeqLen else {
        throw DataError("\(directory)/index.h5: the tokenizer (vocab_size \(tokenizer.vocabularySize), max_length \(tokenizer.maxLength)) "
                        + "does not fit the model's text encoder (vocab_size \(t.vocabSize), max_seq_len \(t.maxSeqLen))")
    }
    return tokenizer
}

/// Which flow each optimizer step trains: the flows in turn, each for its `steps`.
public struct FlowSchedule: Sendable {
    public let flows: [FlowConfig]
    public init(_ flows: [FlowConfig]) { self.flows = flows }
    var period: Int { flows.reduce(0) { $0 + $1.steps } }

    /// The flow of optimizer step `step` (0-based).
    public func flow(at step: Int) -> FlowConfig {
        var k = step % period
        for f in flows {
            if k < f.steps { return f }
            k -= f.steps
        }
        preconditionFailure("unreachable")
    }

    /// How many of the steps 0...step train a flow `trains` picks (the bias-correction
    /// step of layers only those flows update: a data type's, a context type's).
    public func updates(through step: Int, of trains: (FlowConfig) -> Bool) -> Int {
        let per = flows.filter(trains).reduce(0) { $0 + $1.steps }
        let full = (step + 1) / period, rest = (step + 1) % period
        var partial = 0, k = 0
        for f in flows {
            if trains(f) { partial += max(0, min(f.steps, rest - k)) }
            k += f.steps
        }
        return full * per + partial
    }
}

/// Stage 2 as Versatile Diffusion trains it: one diffuser, several flows. Each
/// optimizer step trains the flow the schedule names: the row's image latent or its
/// caption's text latent, attending to the frozen encoders' text context (the row's
/// caption) or image context (the row's own image, as VD's image variation learns),
/// each with its loss weight and its null context for guidance (the empty caption, a
/// mid-grey image). Only the flow's parameters are stepped (the global layers, its data
/// type's data layers, its context type's context layers); every group has its
/// learning-rate multiplier.
public final class VersatileTrainer: TrainingStage {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    public let diffuser: VersatileDiffuser
    let arenaStorage: ParameterArena
    let adam: Adam
    let emaStorage: EMA
    let objective: DiffusionObjective
    let cache: LatentCache.Contents
    let encoders: FrozenContextEncoders
    let images: (train: ImageBatcher, test: ImageBatcher)
    let autoencoder: FrozenAutoencoder?
    let schedule: FlowSchedule
    /// Runs of the arena by parameter group and modality (data or context type).
    let runs: [(range: Range<Int>, group: ParameterGroup, modality: Modality?)]
    /// The text flows' latents and decoder (nil without text data flows).
    let text: TextFlowData?
    var stageConfig: DiffusionStageConfig { config.diffusion }

    /// `textAutoencoder`: the text VAE run whose latents `diffusion.text_latents` holds (text data flows only).
    public init(config: Config, options: RunOptions, autoencoder path: String?, contextEncoders: String, textAutoencoder: String? = nil,
                communicator: Communicator) throws {
        try validateDiffusion(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let s = config.diffusion, a = s.model
        let cache = try LatentCache.read(s.latents)
        self.cache = cache
        try checkLatentShape(cache, s)
        if s.flows.contains(where: { $0.context == .text }) && !(cache.captions ?? []).contains(where: { !$0.isEmpty }) {
            throw DataError("\(s.latents) has no captions: the text flow needs them (re-run 'ldm-train encode' on a dataset with captions)")
        }
        encoders = try FrozenContextEncoders.load(contextEncoders, communicator: communicator)
        let e = encoders.config.contextEncoders.model
        guard e.width == a.contextDim else {
            throw ConfigError.invalid(path: "diffusion.model.context_dim", reason: "must be the context encoders' width \(e.width) "
                                      + "(\(encoders.checkpoint)), got \(a.contextDim)")
        }
        let dataset = cache.info.dataset
        let train = try DatasetSplit.open(dataset, split: .train), test = try DatasetSplit.open(dataset, split: .test)
        guard train.channels == e.inChannels, train.height <= e.imageSize, let last = cache.sourceIndex.max(), last < train.count else {
            throw DataError("\(dataset) (\(train.count) rows of \(train.channels)×\(train.height)×\(train.width)) is not the dataset \(s.latents) was "
                            + "encoded from, or does not fit the image encoder (\(e.inChannels)×\(e.imageSize)×\(e.imageSize))")
        }
        images = (try ImageBatcher(split: train, resolution: e.imageSize, flip: false, seed: config.seed),
                  try ImageBatcher(split: test, resolution: e.imageSize, flip: false, seed: config.seed))
        autoencoder = try path.map { try cacheAutoencoder($0, cache: cache, latents: s.latents, communicator: communicator) }
        text = s.hasTextData ? try TextFlowData(stage: s, imageCache: cache, textAutoencoder: textAutoencoder, communicator: communicator) : nil
        diffuser = VersatileDiffuser(a, textData: text.map { ($0.cache.info.channels, s.textPoints) }, seed: UInt64(bitPattern: Int64(config.seed)))
        arenaStorage = ParameterArena(diffuser)
        adam = Adam(arenaStorage, s.optimizer.adam)
        emaStorage = EMA(arenaStorage, decay: s.emaDecay)
        objective = DiffusionObjective(schedule: s.schedule.schedule, prediction: s.prediction)
        schedule = FlowSchedule(s.flows)
        var runs: [(range: Range<Int>, group: ParameterGroup, modality: Modality?)] = []
        let entries = arenaStorage.entries
        for (i, entry) in entries.enumerated() {
            let (group, modality) = diffuser.group(of: entry.key)
            let end = i + 1 < entries.count ? entries[i + 1].offset : arenaStorage.count
            if let last = runs.last, last.group == group, last.modality == modality, last.range.upperBound == entry.offset {
                runs[runs.count - 1].range = last.range.lowerBound..<end
            } else {
                runs.append((entry.offset..<end, group, modality))
            }
        }
        self.runs = runs
    }

    @discardableResult
    public func run() throws -> [String: Double] {
        var extra = ["autoencoder": cache.info.autoencoder, "scale_factor": String(cache.info.scaleFactor), "context_encoders": encoders.identity]
        var inputs = ["latent_cache": "written \(cache.info.created), \(cache.info.count) rows", "dataset": images.train.split.identity,
                      "context_encoders_identity": encoders.identity]
        if let text {
            (extra["text_autoencoder"], extra["text_scale_factor"]) = (text.cache.info.autoencoder, String(text.cache.info.scaleFactor))
            extra["text_latent_dim"] = String(text.cache.info.channels)
            inputs["text_latent_cache"] = "written \(text.cache.info.created), \(text.cache.info.count) rows"
        }
        return try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log, extraAttributes: extra,
                             inputs: inputs).run()
    }

    // MARK: TrainingStage

    var kind: String { Self.kind }
    static let kind = "versatile-diffusion"
    var arena: ParameterArena { arenaStorage }
    var optimizer: Adam { adam }
    var ema: EMA? { emaStorage }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { cache.info.count }
    var summary: String {
        var counts: [ParameterGroup: Int] = [:]
        for e in arenaStorage.entries { counts[diffuser.group(of: e.key).group, default: 0] += e.tensor.count }
        let groups = ParameterGroup.allCases.map { "\($0.rawValue) \(counts[$0] ?? 0) (lr × \(stageConfig.lrMultipliers[$0]))" }.joined(separator: ", ")
        let flows = stageConfig.flows.map { "\($0.flow) ×\($0.steps) (weight \($0.weight))" }.joined(separator: ", ")
        return "versatile diffusion \(stageConfig.name): \(diffuser.parameterCount()) parameters (\(groups)); flows \(flows); contexts from "
            + "\(encoders.checkpoint); \(cache.info.count) latents from \(cache.info.autoencoder), scale_factor "
            + String(format: "%.5f", cache.info.scaleFactor)
            + (text.map { "; text latents (\($0.cache.info.channels)) from \($0.cache.info.autoencoder), scale_factor " + String(format: "%.5f", $0.cache.info.scaleFactor) } ?? "")
    }

    func prefetch(_ indices: [Int]) { images.train.prefetch(indices.map { Int(cache.sourceIndex[$0]) }) }

    /// The frozen encoders' context of `type` for cached rows `indices`, the null one where `dropped`.
    func context(_ type: Modality, rows indices: [Int], dropped: [Bool]) throws -> Context {
        switch type {
        case .text:
            let captions = zip(indices, dropped).map { $1 ? "" : (cache.captions?[$0] ?? "") }
            return withoutGradient { encoders.model.textContext(captions) }
        case .image:
            let x = try images.train.images(indices.map { Int(cache.sourceIndex[$0]) }, epoch: nil)
            let per = x.count / max(indices.count, 1)
            for (b, drop) in dropped.enumerated() where drop { (x.pointer + b * per).update(repeating: 0, count: per) }   // the mid-grey null image
            return withoutGradient { encoders.model.imageContext(x) }
        }
    }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step: Int) throws -> [(String, Tally)] {
        let flow = schedule.flow(at: step)
        let batch = LatentBatch(flow.data == .text ? text!.cache : cache, indices: indices, epoch: epoch, seed: config.seed,
                                timesteps: objective.schedule.timesteps, pUncond: flow.pUncond ?? stageConfig.pUncond)
        let c = try context(flow.context, rows: indices, dropped: batch.dropped)
        let perSample = objective.perSampleLoss(z0: batch.z0, noise: batch.noise, times: batch.times) {
            diffuser($0, data: flow.data, timesteps: $1, contexts: [(flow.context, c, 1)])
        }
        perSample.mean().scaled(by: scale * Float(flow.weight)).backward()
        let losses = perSample.scalars.map(Double.init), n = Double(indices.count)
        return batch.tallies(losses) + stageConfig.flows.map(\.flow).uniqued().map { f in
            ("loss_\(f.name)", f == flow.flow ? Tally(sum: losses.reduce(0, +), count: n) : Tally())
        }
    }

    /// The runs of the flow of `step`: the global layers, its data type's data layers and
    /// its context type's context layers, each at its group's rate and with its own
    /// bias-correction step (the number of steps that have trained it).
    func applyUpdate(lr: Double, step: Int) {
        adam.step += 1
        let flow = schedule.flow(at: step)
        let segments = runs.compactMap { run -> Adam.Segment? in
            let rate = lr * stageConfig.lrMultipliers[run.group]
            switch (run.group, run.modality) {
            case let (.data, type?):
                guard type == flow.data else { return nil }
                return Adam.Segment(range: run.range, lr: rate, step: schedule.updates(through: step) { $0.data == type })
            case let (.context, type?):
                guard type == flow.context else { return nil }
                return Adam.Segment(range: run.range, lr: rate, step: schedule.updates(through: step) { $0.context == type })
            default:
                return Adam.Segment(range: run.range, lr: rate, step: adam.step)
            }
        }
        adam.update(segments: segments)
    }

    /// A grid per flow: text rows (the config's prompts or the first distinct captions)
    /// and variations of the first test images (the image first in its row).
    func writeImages(step number: Int) throws {
        guard let autoencoder else { return }
        let sampler = try VersatileSampler(diffuser: diffuser, encoders: encoders.model, stage: stageConfig, sampling: stageConfig.sampling)
        let k = min(stageConfig.sampling.perClass, 8)
        if let text { try text.writeSamples(step: number, trainer: self) }
        for flow in stageConfig.flows.filter({ $0.data == .image }).map(\.context).uniqued() {
            let request: VersatileSampler.Request
            var sources: Tensor?
            switch flow {
            case .text:
                let prompts = gridRows(stageConfig, captions: cache.captions ?? [], kind: .text).map(\.caption)
                request = .text(prompts.repeatingRows(k))
            case .image:
                let shown = min(4, images.test.split.count)
                let x = try images.test.images((0..<shown).map { $0 * images.test.split.count / shown }, epoch: nil)
                sources = x
                request = .image(x.repeatingRows(k))
            }
            let contexts = sampler.contexts(request)
            let latents = try sampleShared(count: contexts.count, stage: stageConfig, communicator: comm) { mine in
                withValues(emaStorage.shadow, in: arenaStorage) { sampler.sample(contexts, rows: mine) }
            }
            guard let latents else { continue }
            let decoded = LatentSampler.decode(latents, scaleFactor: cache.info.scaleFactor, autoencoder: autoencoder.model)
            let file = "\(options.runDirectory)/samples-\(flow.rawValue)-\(String(format: "%08d", number)).png"
            try VersatileSampler.writeGrid(decoded, perRow: k, sources: sources, to: file)
        }
    }

    /// With text data flows: captions of test images and variations of test captions,
    /// judged against the most common caption (EMA weights).
    func finish() throws -> [String: Double] {
        guard let text else { return [:] }
        return try text.evaluate(trainer: self)
    }
}

extension Sequence where Element: Hashable {
    /// The elements in order, each once.
    func uniqued() -> [Element] {
        var seen = Set<Element>()
        return filter { seen.insert($0).inserted }
    }
}

extension Array {
    /// Each element `k` times in a row.
    func repeatingRows(_ k: Int) -> [Element] { flatMap { [Element](repeating: $0, count: k) } }
}

extension Tensor {
    /// Each sample (along axis 0) `k` times in a row.
    func repeatingRows(_ k: Int) -> Tensor {
        k == 1 ? self : TensorEngine.concat((0..<shape[0]).flatMap { i in [Tensor](repeating: slice(axis: 0, i..<(i + 1)), count: k) }, axis: 0)
    }
}

/// Draws latents from a multi-flow diffuser: text-to-image, image variation, and
/// dual guidance (text and image contexts mixed in every context layer, VD's
/// `attention` mixing), with classifier-free guidance against the null contexts.
public struct VersatileSampler {
    public let diffuser: VersatileDiffuser
    public let encoders: ContextEncoders
    public let sampler: LatentSampler

    /// What to draw: one sample per caption, per image [N, R, R, C], or per (caption,
    /// image) pair with the image context's weight `mix` (the text's is 1 − mix).
    public enum Request {
        case text([String])
        case image(Tensor)
        case dual([String], Tensor, mix: Double)

        /// Its name in logs and in `--images-out` (`flow` attribute).
        public var flow: String {
            switch self {
            case .text: return "text"
            case .image: return "image"
            case .dual: return "dual"
            }
        }
    }

    /// The encoded contexts of a request: per context type used, its weight and the
    /// conditional and null contexts of every sample.
    public struct Contexts {
        var parts: [(type: Modality, weight: Float, conditional: Context, null: Context)]
        public var count: Int { parts[0].conditional.tokens.shape[0] }
    }

    /// Writes a grid PNG of `perRow` results a row, each row led by the image it started
    /// from when there are `sources` (one per row).
    public static func writeGrid(_ images: Tensor, perRow k: Int, sources: Tensor?, to path: String) throws {
        let rows = (0..<(images.shape[0] / k)).map { r -> Tensor in
            let results = images.slice(axis: 0, (r * k)..<((r + 1) * k))
            return sources.map { TensorEngine.concat([$0.slice(axis: 0, r..<(r + 1)), results], axis: 0) } ?? results
        }
        let grid = ImageMetrics.grid(rows)
        try PNGCodec.write(path, width: grid.width, height: grid.height, channels: grid.channels, pixels: grid.pixels)
    }

    public init(diffuser: VersatileDiffuser, encoders: ContextEncoders, stage: DiffusionStageConfig, sampling: SamplingConfig) throws {
        (self.diffuser, self.encoders) = (diffuser, encoders)
        sampler = try LatentSampler(model: nil, stage: stage, sampling: sampling)
    }

    public func contexts(_ request: Request) -> Contexts {
        withoutGradient {
            func part(_ type: Modality, _ weight: Double, _ c: Context) -> (Modality, Float, Context, Context) {
                (type, Float(weight), c, encoders.nullContext(type, count: c.tokens.shape[0]))
            }
            switch request {
            case let .text(captions): return Contexts(parts: [part(.text, 1, encoders.textContext(captions))])
            case let .image(x): return Contexts(parts: [part(.image, 1, encoders.imageContext(x))])
            case let .dual(captions, x, mix):
                return Contexts(parts: [part(.text, 1 - mix, encoders.textContext(captions)), part(.image, mix, encoders.imageContext(x))])
            }
        }
    }

    /// Scaled latents of the samples `rows` of `contexts` (sample i's noise keyed by i):
    /// image latents, or with `data` text the text latents [N, 1, 1, dim].
    public func sample(_ contexts: Contexts, rows: Range<Int>, data: Modality = .image) -> Tensor {
        sampler.sample(count: rows.count, firstIndex: rows.lowerBound, shape: diffuser.sampleShape(data), conditional: true) { x, t, chunk, halves in
            let absolute = (rows.lowerBound + chunk.lowerBound)..<(rows.lowerBound + chunk.upperBound)
            let routes = contexts.parts.map { p in
                (type: p.type, context: Context.joined(halves.map { ($0 ? p.null : p.conditional).rows(absolute) }), weight: p.weight)
            }
            return diffuser(x, data: data, timesteps: t, contexts: routes)
        }
    }
}
