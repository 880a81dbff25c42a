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
        step = AutoencoderStep(config: config.autoencoder, seed: config.seed)
    }

    /// Trains to `training.steps`, checkpointing on the way and at the end; returns the test metrics.
    @discardableResult
    public func run() throws -> [String: Double] {
        try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log, inputs: ["dataset": train.split.identity]).run()
    }

    // MARK: TrainingStage

    var kind: String { "autoencoder-kl" }
    var arena: ParameterArena { step.arena }
    var optimizer: Adam { step.optimizer }
    var ema: EMA? { nil }
    var buffers: [StateTensor] { step.buffers }
    var importable: ImportableState? { ImportableState(state: step.trained.stateTensors() + step.buffers, target: .autoencoder) }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { config.data.trainCount(train.split.count) }
    var summary: String { "autoencoder \(stageConfig.name): \(step.model.parameterCount()) parameters" }

    func prefetch(_ indices: [Int]) { train.prefetch(indices) }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step n: Int) throws -> [(String, Tally)] {
        let latent = [stageConfig.model.latentSize, stageConfig.model.latentSize, stageConfig.model.embedDim]
        let per = latent.reduce(1, *)
        let noise = Tensor(uninitialized: [indices.count] + latent)
        for (b, index) in indices.enumerated() {
            sampleStream(seed: config.seed, .posterior, epoch: epoch, index: index).fillNormal(noise.pointer + b * per, count: per)
        }
        let l = step.accumulate(try train.images(indices, epoch: epoch), noise: noise, scale: scale, step: n)
        let count = Double(indices.count)
        var out = [("loss", Tally(sum: l.total * count, count: count)), ("rec", Tally(sum: l.reconstruction * count, count: count)),
                   ("kl", Tally(sum: l.kl * count, count: count))]
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
        var sums = [0.0, 0.0]
        var start = comm.rank * batch
        while start < n {
            let indices = Array(start..<min(n, start + batch))
            let next = start + batch * comm.size
            if next < n { test.prefetch(Array(next..<min(n, next + batch))) }
            let x = try test.images(indices, epoch: nil)
            let y = withoutGradient { step.model.decode(step.model.encode(x).mean) }
            sums[0] += ImageMetrics.psnr(y, x, crop: crop).reduce(0, +)
            sums[1] += ImageMetrics.ssim(y, x, crop: crop).reduce(0, +)
            start += batch * comm.size
        }
        try sums.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        let (psnr, ssim) = (sums[0] / Double(n), sums[1] / Double(n))
        log.say(String(format: "test split (%d images): PSNR %.2f dB, SSIM %.4f", n, psnr, ssim))
        return ["test_psnr": psnr, "test_ssim": ssim]
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
    guard m.resolution % m.factor == 0, m.zChannels > 0, m.embedDim > 0, m.doubleZ else {
        throw ConfigError.invalid(path: "autoencoder.model", reason: "resolution \(m.resolution) must be divisible by f = \(m.factor), z_channels and embed_dim positive, double_z true")
    }
    guard ["l1", "l2"].contains(config.autoencoder.loss.reconstruction) else {
        throw ConfigError.invalid(path: "autoencoder.loss.reconstruction", reason: "must be l1 or l2, got '\(config.autoencoder.loss.reconstruction)'")
    }
}
