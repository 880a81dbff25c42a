import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// `ldm-train sample`: loads a diffusion checkpoint (EMA weights by default) and
/// the autoencoder its latents came from, draws class-conditional samples, and
/// writes a grid (one row per class), the latents (latent-cache format) and the
/// decoded images with labels (HDF5).
public enum SampleStage {
    public struct Request {
        public var diffusion: String
        public var autoencoder: String
        /// nil: every class.
        public var classIndex: Int?
        /// Samples per class.
        public var count = 8
        public var sampler: String?, steps: Int?, eta: Double?, guidance: Double?, seed: Int?
        public var useEMA = true
        public var out: String?
        public var latentsOut: String?
        public var imagesOut: String?
        public init(diffusion: String, autoencoder: String) { (self.diffusion, self.autoencoder) = (diffusion, autoencoder) }
    }

    /// Runs in one process (sampling is not split over ranks).
    public static func run(_ r: Request) throws {
        let comm = SingleProcess()
        let say: (String) -> Void = { print($0); fflush(stdout) }
        let directory = try CheckpointStore.resolve(r.diffusion)
        let index = try HDF5File.open("\(directory)/index.h5")
        let config = try ConfigLoader.load(yamlText: try index.stringAttribute("config") ?? "", source: directory)
        let stage = config.diffusion, a = stage.model
        let recorded = try index.stringAttribute("autoencoder") ?? ""
        let scaleFactor = Double(try index.stringAttribute("scale_factor") ?? "") ?? 1
        let ae = try FrozenAutoencoder.load(r.autoencoder, communicator: comm)
        guard ae.identity == recorded else {
            throw DataError("\(directory) was trained on latents of autoencoder \(recorded), but --autoencoder \(r.autoencoder) is \(ae.identity)")
        }
        if let k = r.classIndex, k < 0 || k >= a.numClasses {
            throw SamplingError(description: "--class \(k) is outside 0..<\(a.numClasses)")
        }
        guard r.count >= 1 else { throw SamplingError(description: "--count must be positive, got \(r.count)") }
        var sampling = stage.sampling
        if let v = r.sampler { sampling.sampler = v }
        if let v = r.steps { sampling.steps = v }
        if let v = r.eta { sampling.eta = v }
        if let v = r.guidance { sampling.guidance = v }
        if let v = r.seed { sampling.seed = v }
        if sampling.sampler == "ddpm" && r.steps == nil { sampling.steps = stage.schedule.timesteps }
        let model = LatentDiffusionModel(a, seed: 0)
        let arena = ParameterArena(model)
        let store = CheckpointStore(runDirectory: r.diffusion, communicator: comm, say: { _ in })
        _ = try store.load(directory, into: CheckpointTensor.parameterViews(arena, group: r.useEMA ? "ema" : "params"),
                           expectedKind: "latent-diffusion")
        let sampler = try LatentSampler(model: model, stage: stage, sampling: sampling)
        let classes = r.classIndex.map { [$0] } ?? Array(0..<a.numClasses)
        let labels = classes.flatMap { [Int](repeating: $0, count: r.count) }
        say("sample: \(labels.count) samples of \(classes.count) class(es) from \(directory) (\(r.useEMA ? "EMA" : "trained") weights), "
            + "\(sampling.sampler) \(sampling.steps) steps, eta \(sampling.eta), guidance \(sampling.guidance), seed \(sampling.seed)")
        let start = Date()
        let latents = sampler.sample(labels: labels)
        let images = LatentSampler.decode(latents, scaleFactor: scaleFactor, autoencoder: ae.model)
        say(String(format: "sample: %.1f s (%.2f samples/s)", Date().timeIntervalSince(start), Double(labels.count) / Date().timeIntervalSince(start)))
        if let out = r.out {
            try LatentSampler.writeGrid(images, rows: classes.count, to: out)
            say("wrote \(out)")
        }
        if let path = r.imagesOut { try writeImages(images, labels: labels, to: path); say("wrote \(path)") }
        if let dir = r.latentsOut {
            try writeLatents(latents, labels: labels, scaleFactor: scaleFactor, autoencoder: recorded, factor: ae.config.autoencoder.model.factor,
                             source: directory, to: dir)
            say("wrote \(dir)")
        }
    }

    /// `images` [N, 1, R, R] f32 in [−1, 1] (NCHW, as PyTorch reads them) and `labels` [N] i64.
    static func writeImages(_ images: Tensor, labels: [Int], to path: String) throws {
        let (n, r, c) = (images.shape[0], images.shape[1], images.shape[3])
        var nchw = [Float](repeating: 0, count: images.count)
        for b in 0..<n { for y in 0..<r { for x in 0..<r { for ch in 0..<c {
            nchw[((b * c + ch) * r + y) * r + x] = images.pointer[((b * r + y) * r + x) * c + ch]
        } } } }
        let partial = path + ".partial"
        do {
            let f = try HDF5File.create(partial)
            try f.write("images", shape: [n, c, r, r], nchw, chunkRows: 256)
            try f.write("labels", shape: [n], labels.map(Int64.init))
            try f.setAttribute("range", "[-1, 1]")
            try f.close()
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: partial, toPath: path)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw error is HDF5Error ? error : DataError(FileSystem.describe(error, path: path, doing: "write the samples"))
        }
    }

    /// The sampled latents, divided by the scale factor (the autoencoder's latent
    /// space), in the latent-cache format: mean = z, logvar = −30 (a point mass).
    static func writeLatents(_ latents: Tensor, labels: [Int], scaleFactor: Double, autoencoder: String, factor: Int, source: String,
                             to dir: String) throws {
        let (n, s, c) = (latents.shape[0], latents.shape[1], latents.shape[3])
        var mean = [Float](repeating: 0, count: latents.count)
        for b in 0..<n { for y in 0..<s { for x in 0..<s { for ch in 0..<c {
            mean[((b * c + ch) * s + y) * s + x] = latents.pointer[((b * s + y) * s + x) * c + ch] / Float(scaleFactor)
        } } } }
        var info = LatentCache.Info()
        (info.count, info.channels, info.height, info.width) = (n, c, s, s)
        (info.scaleFactor, info.autoencoder, info.dataset, info.split, info.factor) = (scaleFactor, autoencoder, source, "sampled", factor)
        try LatentCache.write(dir, rows: LatentCache.Rows(start: 0, mean: mean, logvar: [Float](repeating: -30, count: mean.count),
                                                          labels: labels.map(Int32.init), sourceIndex: (0..<n).map(Int64.init)),
                              info: info, communicator: SingleProcess())
    }
}
