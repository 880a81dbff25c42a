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

    enum CodingKeys: String, CodingKey {
        case bench, batchSize = "batch_size", ranks, threads, steps, stepMs = "step_ms", imgPerS = "img_per_s"
        case peakRssMib = "peak_rss_mib"
    }
}

/// Times full training steps of a reference model on random data of the real shapes.
public enum ModelBenchmark {
    /// The autoencoder of `config` (the reference recipe by default): forward,
    /// backward, gradient all-reduce and Adam at `batch` images per rank.
    public static func autoencoder(config: AutoencoderStageConfig, batch: Int, steps: Int,
                                   communicator comm: Communicator) throws -> ModelTiming {
        let step = AutoencoderStep(config: config, seed: 0)
        let r = config.model.resolution, l = config.model.latentSize
        let x = Tensor.randomUniform([batch, r, r, config.model.inChannels], stream: RandomStream(seed: 1), low: -1, high: 1)
        let noise = Tensor.randomNormal([batch, l, l, config.model.embedDim], stream: RandomStream(seed: 2))
        let g = step.arena.gradients
        let times = try timeSteps(steps) {
            step.arena.zeroGradients()
            _ = step.accumulate(x, noise: noise, scale: 1 / Float(comm.size), step: 0)
            try comm.allReduceSum(UnsafeMutableBufferPointer(start: g.pointer, count: g.count))
            step.optimizer.update(lr: 1e-4)
        }
        return result("autoencoder", batch: batch, times: times, comm: comm)
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

    static func result(_ name: String, batch: Int, times: [Double], comm: Communicator) -> ModelTiming {
        let median = times.sorted()[times.count / 2]
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return ModelTiming(bench: name, batchSize: batch, ranks: comm.size, threads: Threads.count, steps: times.count,
                           stepMs: median, imgPerS: Double(batch) / median * 1000, peakRssMib: Double(usage.ru_maxrss) / 1024)
    }
}
