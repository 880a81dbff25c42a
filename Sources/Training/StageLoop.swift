import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// A sum and a count, to average a logged quantity over micro-batches and ranks.
public struct Tally: Sendable {
    public var sum = 0.0, count = 0.0
    public init(sum: Double = 0, count: Double = 0) { (self.sum, self.count) = (sum, count) }
    public var mean: Double { count > 0 ? sum / count : .nan }
    static func + (a: Tally, b: Tally) -> Tally { Tally(sum: a.sum + b.sum, count: a.count + b.count) }
}

/// What a stage (autoencoder, diffusion) plugs into the shared training loop.
protocol TrainingStage: AnyObject {
    /// The model kind recorded in checkpoints ("autoencoder-kl", "latent-diffusion").
    var kind: String { get }
    var arena: ParameterArena { get }
    var optimizer: Adam { get }
    var ema: EMA? { get }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { get }
    var datasetSize: Int { get }
    /// One line about the model for the run's header.
    var summary: String { get }
    /// Forward and backward of the micro-batch of global sample `indices` of
    /// `epoch`, its gradients scaled by `scale` into the arena; logged quantities
    /// ("loss" first, as the progress line shows them).
    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step: Int) throws -> [(String, Tally)]
    /// Starts reading what the micro-batch of `indices` needs, before it is asked for.
    func prefetch(_ indices: [Int])
    /// Image grids at `step`, called on every rank (a stage may share the work out;
    /// rank 0 writes the file).
    func writeImages(step: Int) throws
    /// After the last step: final metrics (every rank takes part), printed and recorded.
    func finish() throws -> [String: Double]
    /// The optimizer update of step `step` (0-based) from the summed gradients.
    func applyUpdate(lr: Double, step: Int)
    /// Module state besides the parameters (BatchNorm's running statistics). Each rank
    /// tracks its own, and rank 0's are the ones kept, as DistributedDataParallel
    /// broadcasts rank 0's buffers: they are broadcast before every save and at start-up.
    var buffers: [StateTensor] { get }
    /// What `--init-from` fills, under CompVis keys (nil: the stage cannot start from a file).
    var importable: ImportableState? { get }
}

/// A stage's weights (and buffers) as a safetensors import fills them.
struct ImportableState {
    var state: [StateTensor]
    var target: Interchange.Target
    /// A text model's tokenizer: a file that names another one cannot fit its token embeddings.
    var tokenizer: BPETokenizer? = nil
}

extension TrainingStage {
    /// No EMA of the weights unless the stage keeps one.
    var ema: EMA? { nil }
    /// Nothing to read ahead unless the stage reads rows from a file.
    func prefetch(_ indices: [Int]) {}
    /// Every parameter at the stage's rate.
    func applyUpdate(lr: Double, step: Int) { optimizer.update(lr: lr) }
    var buffers: [StateTensor] { [] }
    var importable: ImportableState? { nil }
}

/// The loop every stage shares: resume, start-up agreement, micro-batches with
/// gradient buckets, the non-finite check, clipping, the optimizer and EMA, logs,
/// images, checkpoints, and the final metrics with the `complete` marker.
final class StageLoop {
    let stage: TrainingStage
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    let plan: BatchPlan
    let order: EpochOrder
    let sync: GradientSynchronizer
    let trace: SampleTrace?
    let checkpoints: CheckpointStore
    /// Attributes recorded in every checkpoint besides the standard ones.
    let extraAttributes: [String: String]
    /// What the run reads (the dataset, the latent cache), by attribute name: recorded in
    /// every checkpoint, and a resume refuses inputs that have changed since.
    let inputs: [String: String]
    /// Some rank received a preemption signal (agreed in the step's all-reduce).
    var preemptedBy: [String] = []
    /// The global gradient's L2 norm at the last step, before clipping (logged as grad_norm).
    var lastGradientNorm = 0.0

    init(stage: TrainingStage, config: Config, options: RunOptions, communicator: Communicator, log: RunLog,
         extraAttributes: [String: String] = [:], inputs: [String: String] = [:]) throws {
        (self.stage, self.config, self.options, comm, self.log) = (stage, config, options, communicator, log)
        (self.extraAttributes, self.inputs) = (extraAttributes, inputs)
        let t = stage.settings.training
        plan = BatchPlan(datasetSize: stage.datasetSize, perRankBatch: t.batchSize, ranks: comm.size, accumulate: t.accumulate)
        guard plan.stepsPerEpoch >= 1 else {
            throw ConfigError.invalid(path: "training.batch_size", reason: "gives a global batch of \(plan.globalBatch), more than the \(stage.datasetSize) training samples")
        }
        order = EpochOrder(count: stage.datasetSize, seed: config.seed)
        sync = makeSynchronizer(stage.arena, config.distributed, comm)
        trace = SampleTrace(rank: comm.rank)
        checkpoints = CheckpointStore(runDirectory: options.runDirectory, communicator: comm, say: { log.say($0) })
    }

    /// The tensors a checkpoint holds: parameters, Adam's moments and the EMA, by key,
    /// then the module buffers (optional on resume: checkpoints written before
    /// BatchNorm's statistics were kept lack them, and they start over).
    var checkpointTensors: [CheckpointTensor] { stateTensors + CheckpointTensor.bufferViews(stage.buffers) }
    var stateTensors: [CheckpointTensor] { CheckpointTensor.arenaViews(stage.arena, optimizer: stage.optimizer, ema: stage.ema) }

    @discardableResult
    func run() throws -> [String: Double] {
        guard try comm.all(log.problem.isEmpty) else { throw DataError(try comm.broadcast(log.problem)) }
        // Every rank computes in the stage's precision or none starts (nodes can differ).
        let precision = stage.settings.training.precision
        guard try comm.all(precision.isSupported) else {
            throw ConfigError.invalid(path: "training.precision", reason: precision.unsupportedReason ?? "bf16 is not supported on some rank's CPU")
        }
        let outerEngine = Engine.options
        Engine.configure(outerEngine.with(precision: precision))
        defer { Engine.configure(outerEngine) }
        let lock = try RunLock.acquire(options.runDirectory, communicator: comm, say: { self.log.say($0) })
        defer { lock?.release() }
        Preemption.install()
        defer { Preemption.uninstall() }
        defer { sync.shutDown() }   // its thread keeps the stage's arena alive otherwise
        PeakMemory.reset()   // the peak this stage reports is its own, not an earlier stage's
        var state = TrainingCursor()
        if let restored = try checkpoints.restore(options.resume, tensors: stateTensors,
                                                  optional: CheckpointTensor.bufferViews(stage.buffers), expectedKind: stage.kind) {
            state = restored
            stage.optimizer.step = state.step
            stage.ema?.updates = state.emaUpdates
            try checkInputs()
        } else if let file = options.initFrom {
            try initialize(from: file)
        }
        try startUp(state)
        let (t, o) = stage.settings
        let lr = o.effectiveLR(globalBatch: plan.globalBatch)
        log.say("\(stage.summary); \(comm.size) rank(s) × batch \(plan.perRankBatch) × accumulate \(plan.accumulate) = global batch "
                + "\(plan.globalBatch); lr = \(o.baseLR) × \(o.scaleLR ? plan.globalBatch : 1) = \(lr)\(o.decayDescription); steps \(state.step) → \(t.steps), "
                + "\(Threads.count) thread(s) per rank, \(precision.rawValue) compute")
        var window: [(String, Tally)] = [], windowSteps = 0, windowStart = Date(), stepSeconds: [Double] = [], windowExposed = 0.0
        var windowGradientNorm = 0.0
        let runStart = Date(), firstStep = state.step
        while state.step < t.steps {
            let stepStart = Date()
            let stepLR = scheduledLearningRate(base: lr, step: state.step, warmupSteps: o.warmupSteps, totalSteps: t.steps,
                                               decay: o.lrDecay, minRatio: o.minLRRatio)
            let logged = try trainStep(&state, lr: stepLR)
            if !preemptedBy.isEmpty { try stopForPreemption(state) }
            stepSeconds.append(Date().timeIntervalSince(stepStart))
            setWatchdog(config.distributed, stepSeconds, comm)
            window = window.isEmpty ? logged : zip(window, logged).map { ($0.0, $0.1 + $1.1) }
            windowSteps += 1
            windowExposed += sync.lastExposedSeconds
            windowGradientNorm += lastGradientNorm
            let done = state.step == t.steps
            if state.step % t.logEvery == 0 || done {
                let rate = Double(windowSteps * plan.globalBatch) / Date().timeIntervalSince(windowStart)
                let eta = Date().timeIntervalSince(runStart) / Double(state.step - firstStep) * Double(t.steps - state.step)
                let parts = window.dropFirst().filter { $0.1.count > 0 }.map { String(format: "%@ %.4g", $0.0, $0.1.mean) }
                    .joined(separator: ", ")
                // Gradient communication still running when backward ended (rank 0's, per step).
                let exposedMs = 1000 * windowExposed / Double(windowSteps)
                let communication = comm.size > 1 ? String(format: "  all-reduce %.1f ms exposed", exposedMs) : ""
                log.say(String(format: "step %d/%d  loss %.4f (%@)  %.1f img/s%@  ETA %@", state.step, t.steps, window[0].1.mean,
                               parts, rate, communication, RunLog.duration(eta)))
                var fields: [String: Any] = ["step": state.step, "epoch": state.epoch, "lr": stepLR, "img_per_s": rate]
                if comm.size > 1 { fields["exposed_comm_ms"] = exposedMs }
                fields["grad_norm"] = windowGradientNorm / Double(windowSteps)
                for (name, tally) in window where tally.count > 0 { fields[name] = tally.mean }
                log.record(fields)
                guard try comm.all(log.problem.isEmpty) else { throw DataError(try comm.broadcast(log.problem)) }
                (window, windowSteps, windowStart, windowExposed, windowGradientNorm) = ([], 0, Date(), 0, 0)
            }
            if state.step % t.imageEvery == 0 || done {   // every rank takes part and all stop if one failed
                var problem = ""
                do { try stage.writeImages(step: state.step) } catch { problem = "\(error)" }
                if let first = try comm.firstProblem(problem) { throw DataError(first) }
                if comm.isRoot { logImages(step: state.step) }
            }
            if state.step % t.checkpointEvery == 0 || done { try save(state) }
        }
        let metrics = try stage.finish()
        var fields: [String: Any] = ["step": state.step]
        for (k, v) in metrics { fields[k] = v }
        let peak = try comm.allGather(values: [PeakMemory.residentMiB()]).max()!
        log.say(String(format: "peak resident memory of this stage %.0f MiB (largest rank)", peak))
        fields["peak_rss_mib"] = peak
        log.record(fields)
        if comm.isRoot { try Pipeline.markComplete(options.runDirectory, step: state.step, metrics: metrics) }
        return metrics
    }

    /// One optimizer step: every micro-batch's gradients summed into the arena (and
    /// over ranks by the buckets), checked, clipped, applied, then the EMA.
    func trainStep(_ state: inout TrainingCursor, lr: Double) throws -> [(String, Tally)] {
        let (epoch, offset) = plan.batchStart(epoch: state.epoch, offset: state.epochOffset)
        let order = self.order(epoch)
        stage.arena.zeroGradients()
        (comm as? MPICommunicator)?.context = "\(stage.kind) step \(state.step + 1)"
        var logged: [(String, Tally)] = []
        for micro in 0..<plan.accumulate {
            if micro == plan.accumulate - 1 { sync.beginBackward() }   // gradients are reduced on the last micro-batch only
            let indices = plan.positions(offset: offset, rank: comm.rank, micro: micro).map { order[$0] }
            trace?.record(step: state.step + 1, epoch: epoch, indices: indices)
            if micro + 1 < plan.accumulate {   // the next micro-batch's rows, or the next step's, read while this one computes
                stage.prefetch(plan.positions(offset: offset, rank: comm.rank, micro: micro + 1).map { order[$0] })
            } else if plan.batchStart(epoch: epoch, offset: offset + plan.globalBatch) == (epoch, offset + plan.globalBatch) {
                stage.prefetch(plan.positions(offset: offset + plan.globalBatch, rank: comm.rank, micro: 0).map { order[$0] })
            }
            let parts = try stage.microBatch(indices, epoch: epoch, scale: 1 / Float(plan.accumulate * comm.size), step: state.step)
            logged = logged.isEmpty ? parts : zip(logged, parts).map { ($0.0, $0.1 + $1.1) }
        }
        try sync.finish()
        // The logged sums, then each rank's preemption signal in its own slot: the decision
        // to stop rides on the step's one small all-reduce and is the same on every rank.
        var flat = logged.flatMap { [$0.1.sum, $0.1.count] }
        var signals = [Double](repeating: 0, count: comm.size)
        signals[comm.rank] = Double(Preemption.received)
        flat += signals
        try flat.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        preemptedBy = flat.suffix(comm.size).enumerated().filter { $0.element != 0 }
            .map { "\(Preemption.name(Int32($0.element))) on rank \($0.offset)" }
        logged = logged.enumerated().map { ($0.element.0, Tally(sum: flat[2 * $0.offset], count: flat[2 * $0.offset + 1])) }
        let norm = stage.arena.gradientNorm()
        lastGradientNorm = norm
        guard logged[0].1.mean.isFinite, norm.isFinite else {
            try save(state)   // the weights from before this step: the last good ones
            throw TrainingStopped(description: "non-finite loss or gradient at step \(state.step + 1) (loss \(logged[0].1.mean), "
                                  + "gradient norm \(norm)); the weights of step \(state.step) are saved in \(options.runDirectory)")
        }
        let clip = stage.settings.optimizer.gradClip
        if clip > 0 && norm > clip { stage.arena.scaleGradients(by: Float(clip / norm)) }
        stage.applyUpdate(lr: lr, step: state.step)
        stage.ema?.update()
        state.step += 1
        (state.epoch, state.epochOffset) = (epoch, offset + plan.globalBatch)
        state.samplesConsumed += Int64(plan.globalBatch)
        state.emaUpdates = stage.ema?.updates ?? 0
        return logged
    }

    /// Rank 0's weights and optimizer state on every rank, then a check that the
    /// ranks agree on the model, buckets, config and step.
    func startUp(_ state: TrainingCursor) throws {
        guard comm.size > 1 else { return }
        let buffers = [stage.arena.values, stage.optimizer.m, stage.optimizer.v] + (stage.ema.map { [$0.shadow] } ?? [])
        try StartUp.broadcastFromRoot(buffers.map { UnsafeMutableBufferPointer(start: $0.pointer, count: $0.count) }
                                      + moduleBuffers, comm)
        try StartUp.checkAgreement([
            ("parameter names and shapes", stage.arena.entries.map { "\($0.key)\($0.tensor.shape)" }.joined(separator: ";")),
            ("gradient bucket layout", sync.buckets.map { "\($0.range)" }.joined(separator: ";")),
            ("config", try ConfigLoader.yaml(config)),
            ("step", "\(state.step)"),
        ], comm)
    }

    /// The grids the stage just wrote (`<name>-<step>.png`) as TensorBoard images.
    func logImages(step: Int) {
        let suffix = String(format: "-%08d.png", step)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: options.runDirectory)) ?? []
        for name in names.sorted() where name.hasSuffix(suffix) { log.image(step: step, file: "\(options.runDirectory)/\(name)") }
    }

    /// A fresh run's weights from a safetensors file, on every rank (each reads the file;
    /// the ranks agree on the outcome before going on).
    func initialize(from file: String) throws {
        var problem = "", report = ""
        do {
            guard let part = stage.importable else { throw DataError("--init-from: the \(stage.kind) stage cannot start from a file") }
            let result = try Interchange.load(file, into: part.state, target: part.target, partial: options.initFromPartial)
            if let mine = part.tokenizer, let theirs = result.metadata["tokenizer"] {
                guard (try? BPETokenizer(json: theirs)) == mine else {
                    throw DataError("\(file) was trained with another tokenizer than the one this run learned from its captions: "
                                    + "its token embeddings would not line up")
                }
            }
            stage.ema?.shadow.pointer.update(from: stage.arena.values.pointer, count: stage.arena.values.count)
            report = "initialised from \(file): \(result.loaded) tensors"
            if result.otherParts > 0 { report += "; \(result.otherParts) of other parts of the model not read" }
            if !result.missing.isEmpty { report += "; \(result.missing.count) keep their initialisation: " + Interchange.list(result.missing) }
            if !result.unexpected.isEmpty { report += "; \(result.unexpected.count) unused: " + Interchange.list(result.unexpected) }
        } catch { problem = "\(error)" }
        if let first = try comm.firstProblem(problem) { throw DataError(first) }
        log.say(report)
        log.record(["init_from": file, "init_tensors": report])
    }

    /// Throws when the checkpoint just restored was trained on other inputs than the
    /// run's now (a dataset prepared again, a cache encoded again).
    func checkInputs() throws {
        var problem = ""
        if comm.isRoot, let from = checkpoints.restoredFrom {
            let index = try HDF5File.open("\(from)/index.h5")
            for (key, now) in inputs.sorted(by: { $0.key < $1.key }) {
                guard let then = try index.stringAttribute(key), then != now else { continue }
                let name = key.replacingOccurrences(of: "_", with: " ")
                problem = "\(from) was trained on the \(name) \(then); it is now \(now): it has been made again since, so resuming "
                    + "would not continue the same run; use --resume none to start over"
                break
            }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
    }

    /// Saves the step just finished on every rank and stops with `Preempted`.
    func stopForPreemption(_ state: TrainingCursor) throws {
        let start = Date()
        try save(state)
        let seconds = Date().timeIntervalSince(start)
        log.record(["step": state.step, "preempted": preemptedBy.joined(separator: ", "), "save_seconds": seconds])
        let message = "preempted (\(preemptedBy.joined(separator: ", "))) after step \(state.step): checkpoint saved in "
            + String(format: "%.2f s", seconds) + "; run the same command again to resume"
        log.say(message)
        throw Preempted(description: message)
    }

    /// The stage's module buffers as memory to broadcast.
    var moduleBuffers: [UnsafeMutableBufferPointer<Float>] {
        stage.buffers.map { UnsafeMutableBufferPointer(start: $0.pointer, count: $0.shape.reduce(1, *)) }
    }

    func save(_ state: TrainingCursor) throws {
        if comm.size > 1 { try StartUp.broadcastFromRoot(moduleBuffers, comm) }
        var attributes = CheckpointAttributes(
            kind: stage.kind, cursor: state, worldSize: comm.size, seed: config.seed,
            effectiveLR: stage.settings.optimizer.effectiveLR(globalBatch: plan.globalBatch), config: try ConfigLoader.yaml(config))
        attributes.extra = extraAttributes.merging(inputs) { $1 }
        try checkpoints.save(step: state.step, tensors: checkpointTensors, attributes: attributes, keep: stage.settings.training.keep)
    }
}
