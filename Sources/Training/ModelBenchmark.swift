import Diffusion
import Distributed
import Foundation
import NN
import TensorEngine

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

    enum CodingKeys: String, CodingKey {
        case bench, batchSize = "batch_size", ranks, threads, steps, stepMs = "step_ms", imgPerS = "img_per_s"
        case peakRssMib = "peak_rss_mib", exposedCommMs = "exposed_comm_ms", overlap
    }
}

/// Times full training steps of a reference model on random data of the real shapes.
public enum ModelBenchmark {
    /// The autoencoder of `config` (the reference recipe by default): forward,
    /// backward, gradient all-reduce and Adam at `batch` images per rank.
    public static func autoencoder(config: Config, batch: Int, steps: Int, communicator comm: Communicator) throws -> ModelTiming {
        let stage = config.autoencoder
        let step = AutoencoderStep(config: stage, seed: 0)
        let sync = makeSynchronizer(step.arena, config.distributed, comm)
        let r = stage.model.resolution, l = stage.model.latentSize
        let x = Tensor.randomUniform([batch, r, r, stage.model.inChannels], stream: RandomStream(seed: 1, stream: UInt64(comm.rank)),
                                     low: -1, high: 1)
        let noise = Tensor.randomNormal([batch, l, l, stage.model.embedDim], stream: RandomStream(seed: 2))
        var exposed: [Double] = []
        let times = try timeSteps(steps) {
            step.arena.zeroGradients()
            sync.beginBackward()
            _ = step.accumulate(x, noise: noise, scale: 1 / Float(comm.size), step: 0)
            try sync.finish()
            exposed.append(sync.lastExposedSeconds * 1000)
            step.optimizer.update(lr: 1e-4)
        }
        return try result("autoencoder", batch: batch, times: times, exposed: Array(exposed.suffix(steps)), overlap: sync.overlap, comm: comm)
    }

    /// The UNet of `config` with its class embedder: ε-prediction loss, forward,
    /// backward, gradient all-reduce, AdamW and the EMA at `batch` latents per rank.
    public static func unet(config: Config, batch: Int, steps: Int, communicator comm: Communicator) throws -> ModelTiming {
        let stage = config.diffusion, a = stage.model
        let model = LatentDiffusionModel(a, seed: 0)
        let arena = ParameterArena(model)
        let optimizer = Adam(arena, stage.optimizer.adam)
        let ema = EMA(arena, decay: stage.emaDecay)
        let sync = makeSynchronizer(arena, config.distributed, comm)
        let schedule = stage.schedule.schedule
        let z0 = Tensor.randomNormal([batch, a.imageSize, a.imageSize, a.inChannels], stream: RandomStream(seed: 1, stream: UInt64(comm.rank)))
        let noise = Tensor.randomNormal(z0.shape, stream: RandomStream(seed: 2, stream: UInt64(comm.rank)))
        let times = (0..<batch).map { ($0 * 7919) % schedule.timesteps }, labels = (0..<batch).map { $0 % (a.numClasses + 1) }
        var exposed: [Double] = []
        let timesList = try timeSteps(steps) {
            arena.zeroGradients()
            sync.beginBackward()
            let diff = model(schedule.qSample(z0, t: times, noise: noise), timesteps: times, labels: labels) - noise
            (diff * diff).mean().scaled(by: 1 / Float(comm.size)).backward()
            try sync.finish()
            exposed.append(sync.lastExposedSeconds * 1000)
            optimizer.update(lr: 1e-4)
            ema.update()
        }
        return try result("unet", batch: batch, times: timesList, exposed: Array(exposed.suffix(steps)), overlap: sync.overlap, comm: comm)
    }

    /// Runs `body` `steps` times after two warm-up steps; wall times in ms.
    static func timeSteps(_ steps: Int, _ body: () throws -> Void) throws -> [Double] {
        try body(); try body()
        return try (0..<steps).map { _ in
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        }
    }

    /// This process's peak resident set (VmHWM of /proc/self/status). Not getrusage's
    /// ru_maxrss: Linux carries that over fork and exec, so a process started by a large
    /// one (the Python side of the PyTorch comparison) would report its parent's peak.
    static func peakResidentMiB() -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return 0 }
        return kib / 1024
    }

    /// This rank's medians; with several ranks, img/s is the sum over ranks and the
    /// step time and exposed communication the slowest rank's.
    static func result(_ name: String, batch: Int, times: [Double], exposed: [Double], overlap: Bool,
                       comm: Communicator) throws -> ModelTiming {
        func median(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.sorted()[v.count / 2] }
        var t = ModelTiming(bench: name, batchSize: batch, ranks: comm.size, threads: Threads.count, steps: times.count,
                            stepMs: median(times), imgPerS: Double(batch) / median(times) * 1000,
                            peakRssMib: peakResidentMiB(), exposedCommMs: median(exposed), overlap: overlap)
        guard comm.size > 1 else { return t }
        t.imgPerS = try comm.sum(t.imgPerS)
        let all = try comm.allGather([t.stepMs, t.exposedCommMs, t.peakRssMib].withUnsafeBytes { Array($0) })
            .withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
        t.stepMs = stride(from: 0, to: all.count, by: 3).map { all[$0] }.max()!
        t.exposedCommMs = stride(from: 1, to: all.count, by: 3).map { all[$0] }.max()!
        t.peakRssMib = stride(from: 2, to: all.count, by: 3).map { all[$0] }.max()!
        return t
    }
}
