import Diffusion
import Distributed
import Foundation
import NN
import TensorEngine
import Training

/// One whole-model benchmark result (`ldm-train bench autoencoder|unet --json`).
public struct ModelTiming: Codable, Sendable {
    public var bench: String
    public var batchSize: Int
    public var ranks: Int
    public var threads: Int
    public var steps: Int
    /// Median wall time of one training step (forward, backward, all-reduce, optimizer).
    public var stepMs: Double
    /// Images per second of this rank (of all ranks on rank 0's total line).
    public var imgPerS: Double
    public var peakRssMib: Double
    /// Median time a step waited for gradient all-reduce after backward ended.
    public var exposedCommMs: Double
    /// Gradient reduction overlapped with backward (a communication thread).
    public var overlap: Bool
    /// The engine settings timed (the config's `engine:`).
    public var engine = Engine.options

    enum CodingKeys: String, CodingKey {
        case bench, batchSize = "batch_size", ranks, threads, steps, stepMs = "step_ms", imgPerS = "img_per_s"
        case peakRssMib = "peak_rss_mib", exposedCommMs = "exposed_comm_ms", overlap, engine
    }
}

/// The data-parallel scaling of a model (`ldm-train bench autoencoder|unet
/// --scaling-rounds R` under mpirun): img/s of rank 0 alone, of all ranks running
/// without exchanging anything (the most N processes get from this machine), and
/// of all ranks data-parallel, measured in alternating blocks so that the three
/// see the same machine (a VM's speed drifts over minutes).
public struct ScalingTiming: Codable, Sendable {
    public var bench: String
    public var batchSize: Int
    public var ranks: Int
    public var rounds: Int
    public var stepsPerBlock: Int
    /// Medians over rounds.
    public var soloImgPerS: Double
    public var independentImgPerS: Double
    public var parallelImgPerS: Double
    /// Medians over rounds of the round's ratio to the solo img/s.
    public var scaling: Double
    public var ceiling: Double
    /// Ranks × the slowest rank's img/s when on their own, over the solo img/s: what
    /// ranks in lockstep reach when this VM's cores run at different speeds.
    public var lockstepCeiling: Double
    /// Each round's ratios, in order.
    public var roundScaling: [Double]
    public var roundCeiling: [Double]
    /// Median over the data-parallel steps of the time waited for all-reduce after
    /// backward (slowest rank), and of the data-parallel step time.
    public var exposedCommMs: Double
    public var parallelStepMs: Double

    enum CodingKeys: String, CodingKey {
        case bench, batchSize = "batch_size", ranks, rounds, stepsPerBlock = "steps_per_block", soloImgPerS = "solo_img_per_s"
        case independentImgPerS = "independent_img_per_s", parallelImgPerS = "parallel_img_per_s", scaling, ceiling
        case lockstepCeiling = "lockstep_ceiling"
        case roundScaling = "round_scaling", roundCeiling = "round_ceiling"
        case exposedCommMs = "exposed_comm_ms", parallelStepMs = "parallel_step_ms"
    }
}

/// Times full training steps of a reference model on random data of the real shapes.
public enum ModelBenchmark {
    /// One model's training step, its gradients summed over ranks by the given buckets.
    struct Workload {
        let name: String
        let arena: ParameterArena
        let step: (GradientSynchronizer) throws -> Void
    }

    /// The autoencoder of `config` (the reference recipe by default): forward,
    /// backward, gradient all-reduce and Adam at `batch` images per rank.
    static func autoencoder(config: Config, batch: Int, communicator comm: Communicator) -> Workload {
        let stage = config.autoencoder
        let step = AutoencoderStep(config: stage, seed: 0)
        let r = stage.model.resolution, l = stage.model.latentSize
        let x = Tensor.randomUniform([batch, r, r, stage.model.inChannels], stream: RandomStream(seed: 1, stream: UInt64(comm.rank)),
                                     low: -1, high: 1)
        let noise = Tensor.randomNormal([batch, l, l, stage.model.embedDim], stream: RandomStream(seed: 2))
        return Workload(name: "autoencoder", arena: step.arena) { sync in
            step.arena.zeroGradients()
            sync.beginBackward()
            _ = step.accumulate(x, noise: noise, scale: 1 / Float(comm.size), step: 0)
            try sync.finish()
            step.optimizer.update(lr: 1e-4)
        }
    }

    /// The UNet of `config` with its τθ (class embedder, text encoder or none): the
    /// diffusion objective's forward and backward, gradient all-reduce, AdamW and the
    /// EMA at `batch` latents per rank. A text model reads captions that fill its whole
    /// context (max_seq_len tokens, bytes only), as a padded context costs the same.
    static func unet(config: Config, batch: Int, communicator comm: Communicator) -> Workload {
        let stage = config.diffusion, a = stage.model, text = stage.conditioning.text
        let tokenizer = BPETokenizer(merges: [], vocabularySize: text.vocabSize, maxLength: text.maxSeqLen)
        let step = DiffusionStep(config: stage, tokenizer: stage.conditioning.kind == .text ? tokenizer : nil, seed: 0)
        let z0 = Tensor.randomNormal([batch, a.imageSize, a.imageSize, a.latentChannels], stream: RandomStream(seed: 1, stream: UInt64(comm.rank)))
        let noise = Tensor.randomNormal(z0.shape, stream: RandomStream(seed: 2, stream: UInt64(comm.rank)))
        let times = (0..<batch).map { ($0 * 7919) % stage.schedule.timesteps }
        let conditions: [Condition] = (0..<batch).map { i in
            switch stage.conditioning.kind {
            case .none: return .none
            case .class: return i % (a.numClasses + 1) == a.numClasses ? .none : .label(i % (a.numClasses + 1))
            case .text:
                let letters = (0..<(text.maxSeqLen - 2)).map { j in Character(UnicodeScalar(UInt8(97 + (i * 7 + j * 3) % 26))) }
                return .caption(String(letters))
            }
        }
        return Workload(name: "unet", arena: step.arena) { sync in
            step.arena.zeroGradients()
            sync.beginBackward()
            _ = step.accumulate(z0: z0, noise: noise, times: times, conditions: conditions, scale: 1 / Float(comm.size))
            try sync.finish()
            step.optimizer.update(lr: 1e-4)
            step.ema.update()
        }
    }

    static func workload(_ model: String, config: Config, batch: Int, communicator comm: Communicator) -> Workload {
        model == "unet" ? unet(config: config, batch: batch, communicator: comm) : autoencoder(config: config, batch: batch, communicator: comm)
    }

    /// `steps` timed training steps of `model` (autoencoder or unet) on every rank.
    public static func run(_ model: String, config: Config, batch: Int, steps: Int, communicator comm: Communicator) throws -> ModelTiming {
        let w = workload(model, config: config, batch: batch, communicator: comm)
        let sync = makeSynchronizer(w.arena, config.distributed, comm)
        var exposed: [Double] = []
        let times = try timeSteps(steps) {
            try w.step(sync)
            exposed.append(sync.lastExposedSeconds * 1000)
        }
        return try result(w.name, batch: batch, times: times, exposed: Array(exposed.suffix(steps)), overlap: sync.overlap, comm: comm)
    }

    /// Rounds of three blocks of `steps` steps each: rank 0 alone (the others asleep
    /// in a barrier), every rank on its own (no gradient exchange), and every rank
    /// data-parallel; odd rounds run the blocks in reverse order.
    public static func scaling(_ model: String, config: Config, batch: Int, steps: Int, rounds: Int,
                               communicator comm: Communicator) throws -> ScalingTiming {
        let w = workload(model, config: config, batch: batch, communicator: comm)
        let parallel = makeSynchronizer(w.arena, config.distributed, comm)
        let local = makeSynchronizer(w.arena, config.distributed, SingleProcess())
        for _ in 0..<2 { try w.step(parallel) }
        var solo: [Double] = [], independent: [Double] = [], together: [Double] = [], exposed: [Double] = []
        for round in 0..<rounds {
            for block in round % 2 == 0 ? [0, 1, 2] : [2, 1, 0] {
                try comm.sleepingBarrier()
                switch block {
                case 0 where comm.isRoot: solo.append(median(try timeSteps(steps, warmUp: 0) { try w.step(local) }))
                case 1: independent.append(median(try timeSteps(steps, warmUp: 0) { try w.step(local) }))
                case 2:
                    together.append(median(try timeSteps(steps, warmUp: 0) {
                        try w.step(parallel)
                        exposed.append(parallel.lastExposedSeconds * 1000)
                    }))
                default: break
                }
            }
        }
        try comm.sleepingBarrier()
        // Per round, each rank's img/s; the slowest rank's exposed wait.
        func perRound(_ medians: [Double]) throws -> [[Double]] {
            let all = try comm.allGather(values: medians)
            return (0..<rounds).map { r in (0..<comm.size).map { Double(batch) / all[$0 * rounds + r] * 1000 } }
        }
        let independentRanks = try perRound(independent)
        let independentImg = independentRanks.map { $0.reduce(0, +) }, parallelImg = try perRound(together).map { $0.reduce(0, +) }
        let lockstepImg = independentRanks.map { $0.min()! * Double(comm.size) }
        let soloImg = solo.map { Double(batch) / $0 * 1000 }
        let roundScaling = zip(parallelImg, soloImg).map { $0 / $1 }, roundCeiling = zip(independentImg, soloImg).map { $0 / $1 }
        let exposedAll = try comm.allGather(values: exposed)
        let slowest = exposed.indices.map { i in (0..<comm.size).map { exposedAll[$0 * exposed.count + i] }.max()! }
        return ScalingTiming(bench: w.name, batchSize: batch, ranks: comm.size, rounds: rounds, stepsPerBlock: steps,
                             soloImgPerS: median(soloImg), independentImgPerS: median(independentImg), parallelImgPerS: median(parallelImg),
                             scaling: median(roundScaling), ceiling: median(roundCeiling),
                             lockstepCeiling: median(zip(lockstepImg, soloImg).map { $0 / $1 }),
                             roundScaling: roundScaling, roundCeiling: roundCeiling,
                             exposedCommMs: median(slowest), parallelStepMs: Double(batch * comm.size) / median(parallelImg) * 1000)
    }

    static func median(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.sorted()[v.count / 2] }

    /// Runs `body` `steps` times after `warmUp` untimed ones; wall times in ms.
    static func timeSteps(_ steps: Int, warmUp: Int = 2, _ body: () throws -> Void) throws -> [Double] {
        for _ in 0..<warmUp { try body() }
        return try (0..<steps).map { _ in
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        }
    }

    /// This rank's medians; with several ranks, img/s is the sum over ranks and the
    /// step time and exposed communication the slowest rank's.
    static func result(_ name: String, batch: Int, times: [Double], exposed: [Double], overlap: Bool,
                       comm: Communicator) throws -> ModelTiming {
        var t = ModelTiming(bench: name, batchSize: batch, ranks: comm.size, threads: Threads.count, steps: times.count,
                            stepMs: median(times), imgPerS: Double(batch) / median(times) * 1000,
                            peakRssMib: PeakMemory.residentMiB(), exposedCommMs: median(exposed), overlap: overlap)
        guard comm.size > 1 else { return t }
        t.imgPerS = try comm.sum(t.imgPerS)
        let all = try comm.allGather(values: [t.stepMs, t.exposedCommMs, t.peakRssMib])
        t.stepMs = stride(from: 0, to: all.count, by: 3).map { all[$0] }.max()!
        t.exposedCommMs = stride(from: 1, to: all.count, by: 3).map { all[$0] }.max()!
        t.peakRssMib = stride(from: 2, to: all.count, by: 3).map { all[$0] }.max()!
        return t
    }
}
