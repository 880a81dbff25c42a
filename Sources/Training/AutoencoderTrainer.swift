import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// What the command line adds to a config for one training run.
public struct RunOptions: Sendable {
    public var runDirectory: String
    public var resume = "auto"
    public init(runDirectory: String) { self.runDirectory = runDirectory }
}

/// Why a run stopped early with its weights kept.
public struct TrainingStopped: Error, CustomStringConvertible {
    public let description: String
}

/// Stage 1: trains the autoencoder on the dataset's train split, data-parallel over
/// the communicator's ranks; evaluates PSNR/SSIM on the whole test split at the end.
public final class AutoencoderTrainer {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    let step: AutoencoderStep
    let train: ImageBatcher
    let test: ImageBatcher
    let plan: BatchPlan
    let checkpoints: CheckpointStore
    let stage: AutoencoderStageConfig
    let order: EpochOrder
    let sync: GradientSynchronizer
    let trace: SampleTrace?

    public init(config: Config, options: RunOptions, communicator: Communicator) throws {
        self.config = config
        self.options = options
        comm = communicator
        stage = config.autoencoder
        try validate(config)
        log = try RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let trainSplit = try ImageDataset.load(config.data.path, split: "train")
        let testSplit = try ImageDataset.load(config.data.path, split: "test")
        guard trainSplit.channels == stage.model.inChannels else {
            throw DataError("\(config.data.path): images have \(trainSplit.channels) channels, the model takes \(stage.model.inChannels)")
        }
        guard config.data.resolution == stage.model.resolution else {
            throw ConfigError.invalid(path: "data.resolution", reason: "is \(config.data.resolution) but the model's resolution is \(stage.model.resolution)")
        }
        train = try ImageBatcher(split: trainSplit, resolution: config.data.resolution, flip: config.data.flip, seed: config.seed)
        test = try ImageBatcher(split: testSplit, resolution: config.data.resolution, flip: false, seed: config.seed)
        plan = BatchPlan(datasetSize: trainSplit.count, perRankBatch: stage.training.batchSize, ranks: comm.size,
                         accumulate: stage.training.accumulate)
        guard plan.stepsPerEpoch >= 1 else {
            throw ConfigError.invalid(path: "autoencoder.training.batch_size",
                                      reason: "gives a global batch of \(plan.globalBatch), more than the \(trainSplit.count) training images")
        }
        step = AutoencoderStep(config: stage, seed: config.seed)
        order = EpochOrder(count: trainSplit.count, seed: config.seed)
        sync = makeSynchronizer(step.arena, config.distributed, comm)
        trace = SampleTrace(rank: comm.rank)
        let log = self.log
        checkpoints = CheckpointStore(runDirectory: options.runDirectory, communicator: comm, say: { log.say($0) })
    }

    /// Trains to `training.steps`, checkpointing on the way and at the end; returns the test metrics.
    @discardableResult
    public func run() throws -> (psnr: Double, ssim: Double) {
        var state = TrainingCursor()
        if let restored = try checkpoints.restore(options.resume, tensors: checkpointTensors(), expectedKind: "autoencoder-kl") {
            state = restored
            step.optimizer.step = state.step
        }
        try startUp(state)
        let lr = stage.optimizer.effectiveLR(globalBatch: plan.globalBatch)
        let total = stage.training.steps
        log.say("autoencoder \(stage.name): \(step.model.parameterCount()) parameters, \(comm.size) rank(s) × batch "
                + "\(plan.perRankBatch) × accumulate \(plan.accumulate) = global batch \(plan.globalBatch); lr = "
                + "\(stage.optimizer.baseLR) × \(stage.optimizer.scaleLR ? plan.globalBatch : 1) = \(lr); "
                + "steps \(state.step) → \(total), \(Threads.count) thread(s) per rank")
        var window = (losses: AutoencoderLosses(), steps: 0, started: Date())
        let runStart = Date(), firstStep = state.step
        var stepSeconds: [Double] = []
        while state.step < total {
            let stepStart = Date()
            let losses = try trainStep(&state, lr: warmupLearningRate(base: lr, step: state.step, warmupSteps: stage.optimizer.warmupSteps))
            stepSeconds.append(Date().timeIntervalSince(stepStart))
            setWatchdog(config.distributed, stepSeconds, comm)
            window.losses = window.losses + losses
            window.steps += 1
            let done = state.step == total
            if state.step % stage.training.logEvery == 0 || done {
                let seconds = Date().timeIntervalSince(window.started)
                let imagesPerSecond = Double(window.steps * plan.globalBatch) / seconds
                let mean = window.losses.scaled(by: 1 / Double(window.steps))
                let eta = Date().timeIntervalSince(runStart) / Double(state.step - firstStep) * Double(total - state.step)
                log.say(String(format: "step %d/%d  loss %.4f (rec %.4f, kl %.1f)  %.1f img/s  ETA %@", state.step, total,
                               mean.total, mean.reconstruction, mean.kl, imagesPerSecond, RunLog.duration(eta)))
                log.record(["step": state.step, "epoch": state.epoch, "loss": mean.total, "rec": mean.reconstruction,
                            "kl": mean.kl, "lr": lr, "img_per_s": imagesPerSecond])
                window = (AutoencoderLosses(), 0, Date())
            }
            if state.step % stage.training.imageEvery == 0 || done { try writeGrid(step: state.step) }
            if state.step % stage.training.checkpointEvery == 0 || done { try save(state) }
        }
        let metrics = try evaluate()
        let evaluated = stage.training.evalImages > 0 ? min(stage.training.evalImages, test.split.count) : test.split.count
        log.say(String(format: "test split (%d images): PSNR %.2f dB, SSIM %.4f", evaluated, metrics.psnr, metrics.ssim))
        log.record(["step": state.step, "test_psnr": metrics.psnr, "test_ssim": metrics.ssim])
        if comm.isRoot {
            try Pipeline.markComplete(options.runDirectory, step: state.step, metrics: ["test_psnr": metrics.psnr, "test_ssim": metrics.ssim])
        }
        return metrics
    }

    /// One optimizer step: every micro-batch's gradients summed into the arena,
    /// averaged over ranks, checked, clipped, applied.
    func trainStep(_ state: inout TrainingCursor, lr: Double) throws -> AutoencoderLosses {
        let (epoch, offset) = plan.batchStart(epoch: state.epoch, offset: state.epochOffset)
        let order = self.order(epoch)
        step.arena.zeroGradients()
        var losses = AutoencoderLosses()
        let latent = [stage.model.latentSize, stage.model.latentSize, stage.model.embedDim]
        (comm as? MPICommunicator)?.context = "autoencoder step \(state.step + 1)"
        for micro in 0..<plan.accumulate {
            if micro == plan.accumulate - 1 { sync.beginBackward() }   // gradients are reduced on the last micro-batch only
            let indices = plan.positions(offset: offset, rank: comm.rank, micro: micro).map { order[$0] }
            trace?.record(step: state.step + 1, epoch: epoch, indices: indices)
            let x = train.images(indices, epoch: epoch)
            let noise = Tensor(uninitialized: [indices.count] + latent)
            let per = latent.reduce(1, *)
            for (b, index) in indices.enumerated() {
                sampleStream(seed: config.seed, .posterior, epoch: epoch, index: index).fillNormal(noise.pointer + b * per, count: per)
            }
            losses = losses + step.accumulate(x, noise: noise, scale: 1 / Float(plan.accumulate * comm.size), step: state.step)
        }
        try sync.finish()
        var parts = [losses.total, losses.reconstruction, losses.kl]
        try parts.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        let mean = AutoencoderLosses(total: parts[0], reconstruction: parts[1], kl: parts[2])
            .scaled(by: 1 / Double(plan.accumulate * comm.size))
        let norm = step.arena.gradientNorm()
        guard mean.total.isFinite, norm.isFinite else {
            try save(state)   // the weights from before this step: the last good ones
            throw TrainingStopped(description: "non-finite loss or gradient at step \(state.step + 1) (loss \(mean.total), "
                                  + "gradient norm \(norm)); the weights of step \(state.step) are saved in \(options.runDirectory)")
        }
        if stage.optimizer.gradClip > 0 && norm > stage.optimizer.gradClip {
            step.arena.scaleGradients(by: Float(stage.optimizer.gradClip / norm))
        }
        step.optimizer.update(lr: lr)
        state.step += 1
        (state.epoch, state.epochOffset) = (epoch, offset + plan.globalBatch)
        state.samplesConsumed += Int64(plan.globalBatch)
        return mean
    }

    /// Rank 0's weights and optimizer state on every rank, then a check that the
    /// ranks agree on the model, buckets, config and step.
    func startUp(_ state: TrainingCursor) throws {
        guard comm.size > 1 else { return }
        let arenas = [step.arena.values, step.optimizer.m, step.optimizer.v]
        try StartUp.broadcastFromRoot(arenas.map { UnsafeMutableBufferPointer(start: $0.pointer, count: $0.count) }, comm)
        try StartUp.checkAgreement([
            ("parameter names and shapes", step.arena.entries.map { "\($0.key)\($0.tensor.shape)" }.joined(separator: ";")),
            ("gradient bucket layout", sync.buckets.map { "\($0.range)" }.joined(separator: ";")),
            ("config", try ConfigLoader.yaml(config)),
            ("step", "\(state.step)"),
        ], comm)
    }

    /// The tensors a checkpoint holds: parameters and Adam's moments, by key.
    func checkpointTensors() -> [CheckpointTensor] {
        CheckpointTensor.arenaViews(step.arena, optimizer: step.optimizer, ema: nil)
    }

    func save(_ state: TrainingCursor) throws {
        try checkpoints.save(step: state.step, tensors: checkpointTensors(), attributes: CheckpointAttributes(
            kind: "autoencoder-kl", cursor: state, worldSize: comm.size, seed: config.seed,
            effectiveLR: stage.optimizer.effectiveLR(globalBatch: plan.globalBatch), config: try ConfigLoader.yaml(config)),
            keep: stage.training.keep)
    }

    /// Inputs (first 8 test images) above their reconstructions (posterior mean).
    func writeGrid(step n: Int) throws {
        guard comm.isRoot else { return }
        let x = test.images(Array(0..<8), epoch: nil)
        let y = withoutGradient { step.model.decode(step.model.encode(x).mean) }
        let grid = ImageMetrics.grid([x, y])
        try PNG.write("\(options.runDirectory)/reconstructions-\(String(format: "%08d", n)).png", width: grid.width,
                      height: grid.height, channels: grid.channels, pixels: grid.pixels)
    }

    /// Mean PSNR and SSIM over the whole test split, reconstructing from the
    /// posterior mean, on the unpadded image; the split is divided among ranks.
    func evaluate() throws -> (psnr: Double, ssim: Double) {
        let n = stage.training.evalImages > 0 ? min(stage.training.evalImages, test.split.count) : test.split.count
        let batch = 100
        let crop = (top: (config.data.resolution - test.split.height) / 2, left: (config.data.resolution - test.split.width) / 2,
                    height: test.split.height, width: test.split.width)
        var sums = [0.0, 0.0]
        var start = comm.rank * batch
        while start < n {
            let indices = Array(start..<min(n, start + batch))
            let x = test.images(indices, epoch: nil)
            let y = withoutGradient { step.model.decode(step.model.encode(x).mean) }
            sums[0] += ImageMetrics.psnr(y, x, crop: crop).reduce(0, +)
            sums[1] += ImageMetrics.ssim(y, x, crop: crop).reduce(0, +)
            start += batch * comm.size
        }
        try sums.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        return (sums[0] / Double(n), sums[1] / Double(n))
    }
}

/// Checks the values a config needs before anything runs (ranges, choices, shapes).
public func validate(_ config: Config) throws {
    let t = config.autoencoder.training
    for (path, value) in [("steps", t.steps), ("batch_size", t.batchSize), ("accumulate", t.accumulate),
                          ("log_every", t.logEvery), ("image_every", t.imageEvery), ("checkpoint_every", t.checkpointEvery),
                          ("keep", t.keep)] where value < (path == "steps" ? 0 : 1) {
        throw ConfigError.invalid(path: "autoencoder.training.\(path)", reason: "must be \(path == "steps" ? "≥ 0" : "positive"), got \(value)")
    }
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
    guard config.autoencoder.optimizer.baseLR > 0 else {
        throw ConfigError.invalid(path: "autoencoder.optimizer.base_lr", reason: "must be positive")
    }
}
