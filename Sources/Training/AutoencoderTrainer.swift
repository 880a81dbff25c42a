import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// What the command line adds to a config for one training run.
public struct RunOptions: Sendable {
    public var runDirectory: String
    public var resume = "auto"
    /// A safetensors file with CompVis keys whose weights a fresh run starts from
    /// (a resumed run keeps its checkpoint's).
    public var initFrom: String?
    /// Load what matches by key and shape, and train the rest from its initialisation.
    public var initFromPartial = false
    public init(runDirectory: String) { self.runDirectory = runDirectory }
}

/// Why a run stopped early with its weights kept.
public struct TrainingStopped: Error, CustomStringConvertible {
    public let description: String
}

/// Stage 1: trains the autoencoder on the dataset's train split, data-parallel over
/// the communicator's ranks; evaluates PSNR/SSIM on the test split at the end.
public final class AutoencoderTrainer: TrainingStage {
    let config: Config
    let comm: Communicator
    let log: RunLog
    let step: AutoencoderStep
    let train: ImageBatcher
    let test: ImageBatcher
    let options: RunOptions
    var stageConfig: AutoencoderStageConfig { config.autoencoder }

    public init(config: Config, options: RunOptions, communicator: Communicator) throws {
        try validate(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let trainSplit = try DatasetSplit.open(config.data.path, split: .train)
        let testSplit = try DatasetSplit.open(config.data.path, split: .test)
        guard testSplit.count > 0 else { throw DataError("\(config.data.path): the test split is empty (prepare with a test fraction above 0)") }
        let model = config.autoencoder.model
        guard trainSplit.channels == model.inChannels else {
            throw DataError("\(config.data.path): images have \(trainSplit.channels) channels, the model takes \(model.inChannels)")
        }
        guard config.data.resolution == model.resolution else {
            throw ConfigError.invalid(path: "data.resolution", reason: "is \(config.data.resolution) but the model's resolution is \(model.resolution)")
        }
        train = try ImageBatcher(split: trainSplit, resolution: config.data.resolution, flip: config.data.flip, seed: config.seed)
        test = try ImageBatcher(split: testSplit, resolution: config.data.resolution, flip: false, seed: config.seed)
        step = AutoencoderStep(config: config.autoencoder, seed: config.seed, perceptual: try Self.perceptual(config.autoencoder.loss, communicator))
    }

    /// Trains to `training.steps`, checkpointing on the way and at the end; returns the test metrics.
    @discardableResult
    public func run() throws -> [String: Double] {
        try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log, inputs: ["dataset": train.split.identity]).run()
    }

    /// LPIPS with the weights of `loss.perceptual_weights`, on every rank (the ranks
    /// agree on the outcome), when the perceptual term is on.
    static func perceptual(_ loss: AutoencoderLossConfig, _ comm: Communicator) throws -> LPIPS? {
        guard loss.perceptualWeight > 0 else { return nil }
        var problem = ""
        let lpips = LPIPS(seed: 0)
        do { try Interchange.loadPerceptual(loss.perceptualWeights, into: lpips) } catch {
            problem = "autoencoder.loss.perceptual_weights: \(error)"
        }
        if let first = try comm.firstProblem(problem) { throw DataError(first) }
        return lpips
    }

    /// Kind vq: this step's micro-batches' samples, pre-quantisation latents and codes.
    var stepLatents: [(indices: [Int], latents: Tensor, codes: [Int])] = []

    /// Adam's update, then (kind vq, every reseed_dead_codes_every steps) the dead codes re-seeded.
    func applyUpdate(lr: Double, step number: Int) {
        optimizer.update(lr: lr)
        defer { stepLatents = [] }
        let every = stageConfig.loss.reseedDeadCodesEvery
        guard let quantize = step.model.quantize, every > 0, (number + 1) % every == 0 else { return }
        do {
            let moved = try reseedDeadCodes(quantize, step: number)
            if moved > 0 { log.record(["step": number + 1, "reseeded_codes": moved]) }
        } catch {
            reseedProblem = "\(error)"
        }
    }
    /// A collective of the last re-seeding that failed, reported by the next micro-batch.
    var reseedProblem = ""

    /// Moves the codes that no latent of this step's global batch chose onto latents of
    /// the batch, the same on every rank and at any world size. The global code counts
    /// are summed over ranks. Each sample offers `candidatesPerSample` of its latents
    /// at positions drawn from its (seed, step, index) stream; the offers are gathered and
    /// ordered by a key from the same stream, so every rank sees the same list, whatever
    /// the split. Dead codes then take candidates in that order, skipping any closer than
    /// 3% of the candidates' RMS length to a live code or to one already placed: copies of
    /// one latent (a plain background) would otherwise sit on top of each other, and which
    /// of two coincident codes a latent picks would turn on rounding.
    static let candidatesPerSample = 4
    func reseedDeadCodes(_ quantize: VectorQuantizer, step number: Int) throws -> Int {
        let codes = quantize.codes, d = step.model.architecture.embedDim, k = Self.candidatesPerSample
        var counts = [Double](repeating: 0, count: codes)
        for part in stepLatents { for c in part.codes { counts[c] += 1 } }
        try counts.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        let dead = counts.indices.filter { counts[$0] == 0 }
        guard !dead.isEmpty else { return 0 }
        // This rank's offers: per sample, its key, then k latents.
        var offers: [Float] = []
        for part in stepLatents {
            let positions = part.latents.count / (part.indices.count * d)
            for (b, index) in part.indices.enumerated() {
                let stream = sampleStream(seed: config.seed, .codeReseed, epoch: number, index: index)
                let w = stream.block(0)
                offers += [Float(bitPattern: w[0]), Float(bitPattern: w[1]), Float(index)]
                for c in 0..<k {
                    let source = part.latents.pointer + (b * positions + Int(stream.block(UInt64(1 + c))[0]) % positions) * d
                    offers += Array(UnsafeBufferPointer(start: source, count: d))
                }
            }
        }
        let all = try comm.allGather(values: offers), stride = 3 + k * d
        let samples = (0..<(all.count / stride)).sorted {
            let (a, b) = (all[$0 * stride..<($0 * stride + 3)].map(\.bitPattern), all[$1 * stride..<($1 * stride + 3)].map(\.bitPattern))
            return a.lexicographicallyPrecedes(b)
        }
        let candidates = samples.flatMap { s in (0..<k).map { c in Array(all[(s * stride + 3 + c * d)..<(s * stride + 3 + (c + 1) * d)]) } }
        let meanSquare = candidates.reduce(0) { $0 + $1.reduce(0) { $0 + $1 * $1 } } / Float(max(candidates.count, 1))
        let separation = 0.03 * 0.03 * meanSquare
        let table = quantize.embedding.weight.pointer, deadSet = Set(dead)
        var placed: [[Float]] = (0..<codes).filter { !deadSet.contains($0) }.map { Array(UnsafeBufferPointer(start: table + $0 * d, count: d)) }
        var next = 0, moved = 0
        for code in dead {
            while next < candidates.count {
                let c = candidates[next]
                next += 1
                guard placed.allSatisfy({ zip($0, c).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } > separation }) else { continue }
                for j in 0..<d { table[code * d + j] = c[j] }
                placed.append(c)
                moved += 1
                break
            }
        }
        return moved
    }

    // MARK: TrainingStage

    var kind: String { stageConfig.kind.checkpointKind }
    var arena: ParameterArena { step.arena }
    var optimizer: Adam { step.optimizer }
    var buffers: [StateTensor] { step.buffers }
    var importable: ImportableState? { ImportableState(state: step.trained.stateTensors() + step.buffers, target: .autoencoder) }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { config.data.trainCount(train.split.count) }
    var summary: String { "autoencoder \(stageConfig.name): \(step.model.parameterCount()) parameters" }

    func prefetch(_ indices: [Int]) { train.prefetch(indices) }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step n: Int) throws -> [(String, Tally)] {
        guard reseedProblem.isEmpty else { throw DataError("re-seeding dead codes after step \(n): \(reseedProblem)") }
        let latent = [stageConfig.model.latentSize, stageConfig.model.latentSize, stageConfig.model.embedDim]
        let per = latent.reduce(1, *)
        let noise = Tensor(uninitialized: [indices.count] + latent)
        for (b, index) in indices.enumerated() {
            sampleStream(seed: config.seed, .posterior, epoch: epoch, index: index).fillNormal(noise.pointer + b * per, count: per)
        }
        let l = step.accumulate(try train.images(indices, epoch: epoch), noise: noise, scale: scale, step: n)
        if let latents = l.latents { stepLatents.append((indices, latents, l.codes)) }
        let count = Double(indices.count)
        var out = [("loss", Tally(sum: l.total * count, count: count)), ("rec", Tally(sum: l.reconstruction * count, count: count))]
        if stageConfig.loss.perceptualWeight > 0 { out.append(("lpips", Tally(sum: l.perceptual * count, count: count))) }
        if stageConfig.kind == .vq {   // the micro-batches' perplexities, averaged
            out += [("codebook", Tally(sum: l.codebook * count, count: count)), ("perplexity", Tally(sum: l.perplexity * count, count: count))]
        } else {
            out.append(("kl", Tally(sum: l.kl * count, count: count)))
        }
        if stageConfig.loss.discEnabled {   // always listed, so every step logs the same quantities (count 0 before disc_start)
            for (name, value) in [("g_loss", l.generator), ("d_weight", l.adaptiveWeight), ("disc_loss", l.discriminator)] {
                out.append((name, value.map { Tally(sum: $0 * count, count: count) } ?? Tally()))
            }
        }
        return out
    }

    /// Inputs (8 test images spread over the split, which is in file order) above their
    /// reconstructions (posterior mean).
    /// Rank 0 reconstructs 8 test images (one batch: the other ranks do not wait long).
    func writeImages(step n: Int) throws {
        guard comm.isRoot else { return }
        let count = test.split.count, shown = min(8, count)
        let x = try test.images((0..<shown).map { $0 * count / shown }, epoch: nil)
        let y = withoutGradient { step.model.decode(step.model.encode(x).mean) }
        let grid = ImageMetrics.grid([x, y])
        try PNGCodec.write("\(options.runDirectory)/reconstructions-\(String(format: "%08d", n)).png", width: grid.width,
                      height: grid.height, channels: grid.channels, pixels: grid.pixels)
    }

    /// Mean PSNR and SSIM over the test split (or its first eval_images), from the
    /// posterior mean, on the unpadded image; the images are divided among ranks.
    func finish() throws -> [String: Double] {
        let n = stageConfig.training.evalImages > 0 ? min(stageConfig.training.evalImages, test.split.count) : test.split.count
        let batch = 100
        let crop = (top: (config.data.resolution - test.split.height) / 2, left: (config.data.resolution - test.split.width) / 2,
                    height: test.split.height, width: test.split.width)
        let codes = step.model.quantize?.codes ?? 0
        var sums = [Double](repeating: 0, count: 2 + codes)   // PSNR, SSIM, and a VQ model's code counts
        var start = comm.rank * batch
        while start < n {
            let indices = Array(start..<min(n, start + batch))
            let next = start + batch * comm.size
            if next < n { test.prefetch(Array(next..<min(n, next + batch))) }
            let x = try test.images(indices, epoch: nil)
            let latent = withoutGradient { step.model.encode(x).mean }
            let y = withoutGradient { step.model.decode(latent) }
            if let quantize = step.model.quantize { for i in quantize.nearest(latent) { sums[2 + i] += 1 } }
            sums[0] += ImageMetrics.psnr(y, x, crop: crop).reduce(0, +)
            sums[1] += ImageMetrics.ssim(y, x, crop: crop).reduce(0, +)
            start += batch * comm.size
        }
        try sums.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        let (psnr, ssim) = (sums[0] / Double(n), sums[1] / Double(n))
        log.say(String(format: "test split (%d images): PSNR %.2f dB, SSIM %.4f", n, psnr, ssim))
        guard codes > 0 else { return ["test_psnr": psnr, "test_ssim": ssim] }
        let counts = Array(sums.dropFirst(2))
        let used = Double(counts.filter { $0 > 0 }.count) / Double(codes)
        let perplexity = AutoencoderStep.perplexity(counts: counts)
        log.say(String(format: "codebook: %.1f%% of %d codes used on the test split, perplexity %.1f", 100 * used, codes, perplexity))
        return ["test_psnr": psnr, "test_ssim": ssim, "codebook_usage": used, "test_perplexity": perplexity]
    }
}

/// Checks the values a config needs before anything runs (ranges, choices, shapes).
public func validate(_ config: Config) throws {
    try config.autoencoder.training.validate(section: "autoencoder.training")
    try config.autoencoder.optimizer.validate(section: "autoencoder.optimizer")
    try config.distributed.validate()
    try config.data.validate()
    let m = config.autoencoder.model
    guard !m.chMult.isEmpty, m.chMult.allSatisfy({ $0 > 0 }), m.ch > 0, m.ch % 32 == 0 else {
        throw ConfigError.invalid(path: "autoencoder.model", reason: "needs ch a multiple of 32 (GroupNorm) and positive ch_mult, got ch \(m.ch), ch_mult \(m.chMult)")
    }
    guard m.resolution % m.factor == 0, m.zChannels > 0, m.embedDim > 0 else {
        throw ConfigError.invalid(path: "autoencoder.model", reason: "resolution \(m.resolution) must be divisible by f = \(m.factor), z_channels and embed_dim positive")
    }
    let kind = config.autoencoder.kind
    guard m.doubleZ == (kind == .kl) else {
        throw ConfigError.invalid(path: "autoencoder.model.double_z", reason: "must be \(kind == .kl) for kind \(kind.rawValue) "
                                  + "(a KL posterior has a mean and a log-variance; a VQ latent is one vector)")
    }
    guard kind == .kl || m.nEmbed >= 2 else {
        throw ConfigError.invalid(path: "autoencoder.model.n_embed", reason: "a codebook needs at least 2 entries, got \(m.nEmbed)")
    }
    let loss = config.autoencoder.loss
    guard loss.perceptualWeight >= 0, loss.perceptualWeight == 0 || !loss.perceptualWeights.isEmpty else {
        throw ConfigError.invalid(path: "autoencoder.loss.perceptual_weights", reason: "perceptual_weight \(loss.perceptualWeight) needs the "
                                  + "file of LPIPS's VGG16 and head weights (see README, 'The perceptual loss')")
    }
    guard ["l1", "l2"].contains(config.autoencoder.loss.reconstruction) else {
        throw ConfigError.invalid(path: "autoencoder.loss.reconstruction", reason: "must be l1 or l2, got '\(config.autoencoder.loss.reconstruction)'")
    }
}
