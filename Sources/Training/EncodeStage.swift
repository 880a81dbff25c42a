import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// A finished stage's model loaded frozen from its newest valid checkpoint (a run
/// directory or a step directory) on every rank, with the config it was trained with
/// and its identity: the autoencoder of stage 1, a multi-flow diffuser's context encoders.
public struct FrozenStage<Model: Module> {
    public let model: Model
    /// The config the model was trained with (recorded in its checkpoint).
    public let config: Config
    public let checkpoint: String
    /// Step directory and content hash, e.g. "step-00006000/9f3a…".
    public let identity: String

    /// Rank 0 resolves `path` (errors name `option`); every rank builds the model from the
    /// recorded config and the checkpoint's index and loads its weights.
    static func load(_ path: String, option: String, kind: (Config) -> String, communicator comm: Communicator,
                     build: (Config, HDF5File, String) throws -> Model) throws -> FrozenStage {
        var chosen = "", problem = ""
        if comm.isRoot { do { chosen = try CheckpointStore.resolve(path) } catch { problem = "\(error)" } }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError("\(option) \(problem)") }
        chosen = try comm.broadcast(chosen)
        let index = try HDF5File.open("\(chosen)/index.h5")
        let config = try ConfigLoader.load(yamlText: try index.stringAttribute("config") ?? "", source: chosen)
        let model = try build(config, index, chosen)
        let store = CheckpointStore(runDirectory: path, communicator: comm, say: { _ in })
        _ = try store.load(chosen, into: CheckpointTensor.parameterViews(ParameterArena(model)), expectedKind: kind(config))
        for p in model.parameters() { p.requiresGrad = false }
        return FrozenStage(model: model, config: config, checkpoint: chosen, identity: try CheckpointStore.identity(of: chosen))
    }
}

/// A frozen stage-1 autoencoder.
public typealias FrozenAutoencoder = FrozenStage<Autoencoder>

extension FrozenStage where Model == Autoencoder {
    /// `path`: a run or step directory, or a safetensors file with CompVis keys (an
    /// AutoencoderKL's or VQModel's, or a LatentDiffusion's `first_stage_model.*`). A file exported by
    /// ldm-train carries its config and the identity of the checkpoint it came from;
    /// another file is read as the architecture of `config` says, and is identified by
    /// its name and CRC-32.
    public static func load(_ path: String, config fallback: Config? = nil, communicator comm: Communicator) throws -> FrozenAutoencoder {
        guard path.hasSuffix(".safetensors") else {
            return try load(path, option: "--autoencoder", kind: { $0.autoencoder.kind.checkpointKind }, communicator: comm) { config, _, _ in
                Autoencoder(config.autoencoder.model, kind: config.autoencoder.kind, seed: 0)
            }
        }
        var problem = ""
        var loaded: FrozenAutoencoder?
        do {
            let file = try SafeTensorsFile.open(path)
            var config = fallback ?? Config()
            if let yaml = file.metadata["config"] { config = try ConfigLoader.load(yamlText: yaml, source: path) }
            let model = Autoencoder(config.autoencoder.model, kind: config.autoencoder.kind, seed: 0)
            _ = try Interchange.load(path, into: model.stateTensors(), target: .autoencoder, partial: false)
            for p in model.parameters() { p.requiresGrad = false }
            let identity = try file.metadata["checkpoint"]
                ?? String(format: "%@/%08x", (path as NSString).lastPathComponent, CheckpointStore.sizeAndCRC(path).1)
            loaded = FrozenAutoencoder(model: model, config: config, checkpoint: path, identity: identity)
        } catch { problem = "--autoencoder \(error)" }
        if let first = try comm.firstProblem(problem) { throw DataError(first) }
        return loaded!
    }
}

/// `ldm-train encode`: every rank encodes a contiguous slice of the train split
/// with the frozen encoder (posterior mean and log-variance), and the ranks write
/// the latent cache together, with each row's label and caption and the scale factor
/// that gives the latents stage 2 samples unit variance (`LatentCache.writeWithScale`).
public enum EncodeStage {
    @discardableResult
    /// `config`: the architecture of an autoencoder given as a safetensors file that does not carry its own.
    public static func run(autoencoder path: String, config: Config? = nil, data: String?, out: String, limit: Int? = nil,
                           communicator comm: Communicator) throws -> (images: Int, imagesPerSecond: Double) {
        let say: (String) -> Void = { if comm.isRoot { print($0); fflush(stdout) } }
        let ae = try FrozenAutoencoder.load(path, config: config, communicator: comm)
        let dataPath = data ?? ae.config.data.path
        let split = try DatasetSplit.open(dataPath, split: .train)
        let a = ae.config.autoencoder.model
        let batcher = try ImageBatcher(split: split, resolution: a.resolution, flip: false, seed: 0)
        if let limit, limit < 1 { throw DataError("--count must be positive, got \(limit)") }
        let n = min(split.count, limit ?? split.count), rows = (comm.rank * n / comm.size)..<((comm.rank + 1) * n / comm.size)
        let (h, c) = (a.latentSize, a.embedDim), per = h * h * c
        var planned = LatentCache.Info()   // refused before any encoding when it cannot be written
        (planned.count, planned.channels, planned.height, planned.width) = (n, c, h, h)
        try LatentCache.checkSpace(out, info: planned, ranks: comm.size, communicator: comm)
        say("encode: \(n) images of \(dataPath) with \(ae.checkpoint) on \(comm.size) rank(s) → \(out)")
        var mean = [Float](repeating: 0, count: rows.count * per), logvar = mean
        let start = Date()
        var b = rows.lowerBound
        while b < rows.upperBound {
            let indices = Array(b..<min(rows.upperBound, b + 256))
            if indices.last! + 1 < rows.upperBound { batcher.prefetch(Array((indices.last! + 1)..<min(rows.upperBound, indices.last! + 257))) }
            let x = try batcher.images(indices, epoch: nil)
            let posterior = withoutGradient { ae.model.encode(x) }
            for (k, _) in indices.enumerated() {   // NHWC → NCHW rows
                let row = (indices[0] - rows.lowerBound + k) * per
                for y in 0..<h { for x in 0..<h { for ch in 0..<c {
                    let src = ((k * h + y) * h + x) * c + ch, dst = row + (ch * h + y) * h + x
                    mean[dst] = posterior.mean.pointer[src]
                    logvar[dst] = posterior.logvar.pointer[src]
                } } }
            }
            b += indices.count
        }
        let seconds = Date().timeIntervalSince(start)
        var info = planned
        (info.factor, info.autoencoder, info.dataset, info.split) = (a.factor, ae.identity, dataPath, "train")
        let stats = try LatentCache.writeWithScale(out, rows: LatentCache.Rows(start: rows.lowerBound, mean: mean, logvar: logvar,
                                                                               labels: rows.map { split.labels[$0] },
                                                                               captions: try split.captions(Array(rows)),
                                                                               sourceIndex: rows.map { Int64($0) }),
                                                   info: info, communicator: comm)
        let slowest = try comm.allGather(values: [seconds]).max()!
        let rate = Double(n) / slowest
        say(String(format: "encode: %d latents %d×%d×%d, mean %.4f, std %.4f → scale_factor %.5f; %.0f img/s over %d rank(s)",
                   n, c, h, h, stats.mean, stats.std, 1 / stats.std, rate, comm.size))
        return (n, rate)
    }
}
