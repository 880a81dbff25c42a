import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// `ldm-train sample`: loads a diffusion checkpoint (EMA weights by default) and
/// the autoencoder its latents came from, draws samples for classes, prompts or
/// none (an unconditional model), and writes a grid (one row per class or prompt),
/// the latents (latent-cache format) and the decoded images with their conditions (HDF5).
public enum SampleStage {
    public struct Request {
        public var diffusion: String
        public var autoencoder: String
        /// A class-conditional model's classes (nil: every class).
        public var classes: ClassChoice?
        /// A text model's prompts (--prompt, repeatable; "" is unconditional).
        public var prompts: [String] = []
        /// A file of prompts, one per line (blank lines skipped).
        public var promptsFile: String?
        /// Samples per class or prompt.
        public var count = 8
        public var sampler: SamplerKind?, steps: Int?, eta: Double?, guidance: Double?, seed: Int?
        public var useEMA = true
        public var out: String?
        public var latentsOut: String?
        public var imagesOut: String?
        public init(diffusion: String, autoencoder: String) { (self.diffusion, self.autoencoder) = (diffusion, autoencoder) }
    }

    /// `--class`: every class or one.
    public enum ClassChoice: Equatable { case all, one(Int) }

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
        var tokenizer: BPETokenizer?
        if stage.conditioning.kind == .text {
            guard let json = try index.stringAttribute("tokenizer") else {
                throw DataError("\(directory)/index.h5 has no tokenizer: a text-conditional checkpoint carries the one it was trained with")
            }
            do { tokenizer = try BPETokenizer(json: json) } catch {
                throw DataError("\(directory)/index.h5: attribute 'tokenizer' is not a valid tokenizer (\(error))")
            }
            let t = stage.conditioning.text
            guard tokenizer!.vocabularySize <= t.vocabSize, tokenizer!.maxLength == t.maxSeqLen else {
                throw DataError("\(directory)/index.h5: the tokenizer (vocab_size \(tokenizer!.vocabularySize), max_length \(tokenizer!.maxLength)) "
                                + "does not fit the model's τθ (vocab_size \(t.vocabSize), max_seq_len \(t.maxSeqLen))")
            }
        }
        let rows = try conditions(r, stage: stage, checkpoint: directory)
        guard r.count >= 1 else { throw SamplingError(description: "--count must be positive, got \(r.count)") }
        let ae = try FrozenAutoencoder.load(r.autoencoder, communicator: comm)
        guard ae.identity == recorded else {
            throw DataError("\(directory) was trained on latents of autoencoder \(recorded), but --autoencoder \(r.autoencoder) is \(ae.identity)")
        }
        var sampling = stage.sampling
        if let v = r.sampler { sampling.sampler = v }
        if let v = r.steps { sampling.steps = v }
        if let v = r.eta { sampling.eta = v }
        if let v = r.guidance { sampling.guidance = v }
        if let v = r.seed { sampling.seed = v }
        if sampling.sampler == .ddpm && r.steps == nil { sampling.steps = stage.schedule.timesteps }
        let model = LatentDiffusionModel(a, conditioning: stage.conditioning, tokenizer: tokenizer, seed: 0)
        let arena = ParameterArena(model)
        let store = CheckpointStore(runDirectory: r.diffusion, communicator: comm, say: { _ in })
        _ = try store.load(directory, into: CheckpointTensor.parameterViews(arena, group: r.useEMA ? "ema" : "params"),
                           expectedKind: "latent-diffusion")
        let sampler = try LatentSampler(model: model, stage: stage, sampling: sampling)
        if let tokenizer {
            for case let .caption(text) in rows where tokenizer.encode(text).truncated {
                say("sample: the prompt '\(text)' is longer than \(tokenizer.maxLength) tokens and is cut")
            }
        }
        let conditions = rows.flatMap { [Condition](repeating: $0, count: r.count) }
        say("sample: \(conditions.count) samples of \(rows.count) \(stage.conditioning.kind == .text ? "prompt" : "class")(s) from \(directory) "
            + "(\(r.useEMA ? "EMA" : "trained") weights), \(sampling.sampler) \(sampling.steps) steps, eta \(sampling.eta), "
            + "guidance \(sampling.guidance), seed \(sampling.seed)")
        let start = Date()
        let latents = sampler.sample(conditions: conditions)
        let images = LatentSampler.decode(latents, scaleFactor: scaleFactor, autoencoder: ae.model)
        say(String(format: "sample: %.1f s (%.2f samples/s)", Date().timeIntervalSince(start), Double(conditions.count) / Date().timeIntervalSince(start)))
        if let out = r.out {
            try LatentSampler.writeGrid(images, rows: rows.count, to: out)
            say("wrote \(out)")
        }
        if let path = r.imagesOut { try writeImages(images, conditions: conditions, kind: stage.conditioning.kind, to: path); say("wrote \(path)") }
        if let dir = r.latentsOut {
            try writeLatents(latents, conditions: conditions, scaleFactor: scaleFactor, autoencoder: recorded, factor: ae.config.autoencoder.model.factor,
                             source: directory, to: dir)
            say("wrote \(dir)")
        }
    }

    /// The grid rows a request asks for, checked against the model's kind of conditioning.
    static func conditions(_ r: Request, stage: DiffusionStageConfig, checkpoint: String) throws -> [Condition] {
        var prompts = r.prompts
        if let file = r.promptsFile { prompts += try readPrompts(file) }
        let asked = !prompts.isEmpty || r.promptsFile != nil
        switch stage.conditioning.kind {
        case .class:
            guard !asked else {
                throw SamplingError(description: "\(checkpoint) is a class-conditional model: it takes --class, not --prompt or --prompts-file")
            }
            let classes = stage.model.numClasses
            if case let .one(k) = r.classes {
                guard (0..<classes).contains(k) else { throw SamplingError(description: "--class \(k) is outside 0..<\(classes)") }
                return [.label(k)]
            }
            return (0..<classes).map { .label($0) }
        case .text:
            guard r.classes == nil else {
                throw SamplingError(description: "\(checkpoint) is a text-conditional model: it takes --prompt TEXT or --prompts-file F, not --class")
            }
            if r.promptsFile != nil && prompts.isEmpty { throw SamplingError(description: "\(r.promptsFile!) holds no prompts") }
            let rows = asked ? prompts : stage.sampling.prompts
            guard !rows.isEmpty else {
                throw SamplingError(description: "\(checkpoint) is a text-conditional model: give --prompt TEXT (repeatable) or --prompts-file F")
            }
            return rows.map(Condition.init(caption:))
        case .none:
            guard r.classes == nil && !asked else {
                throw SamplingError(description: "\(checkpoint) is an unconditional model: it takes neither --class nor --prompt")
            }
            return [.none]
        }
    }

    /// One prompt per line of a UTF-8 file (a trailing CR dropped, blank lines skipped).
    static func readPrompts(_ path: String) throws -> [String] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw DataError(FileSystem.describe(error, path: path, doing: "read the prompts"))
        }
        var prompts: [String] = []
        for (number, line) in data.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
            guard let text = String(data: Data(line), encoding: .utf8) else {
                throw DataError("\(path) line \(number + 1): not UTF-8 text (prompts files must be UTF-8)")
            }
            let prompt = text.hasSuffix("\r") ? String(text.dropLast()) : text
            if !prompt.trimmingCharacters(in: .whitespaces).isEmpty { prompts.append(prompt) }
        }
        return prompts
    }

    /// `images` [N, C, R, R] f32 in [−1, 1] (NCHW, as PyTorch reads them) with what
    /// conditioned them: `labels` [N] i64 for a class model, `prompts` [N] strings
    /// ("" for unconditional rows) for a text model.
    static func writeImages(_ images: Tensor, conditions: [Condition], kind: ConditionKind, to path: String) throws {
        let (n, r, c) = (images.shape[0], images.shape[1], images.shape[3])
        var nchw = [Float](repeating: 0, count: images.count)
        for b in 0..<n { for y in 0..<r { for x in 0..<r { for ch in 0..<c {
            nchw[((b * c + ch) * r + y) * r + x] = images.pointer[((b * r + y) * r + x) * c + ch]
        } } } }
        let partial = path + ".partial"
        do {
            let f = try HDF5File.create(partial)
            try f.write("images", shape: [n, c, r, r], nchw, chunkRows: 256)
            switch kind {
            case .class: try f.write("labels", shape: [n], conditions.map { c -> Int64 in if case let .label(k) = c { return Int64(k) }; return -1 })
            case .text: try f.writeStrings("prompts", conditions.map(\.caption))
            case .none: break
            }
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
    static func writeLatents(_ latents: Tensor, conditions: [Condition], scaleFactor: Double, autoencoder: String, factor: Int, source: String,
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
                                                          labels: conditions.map { c -> Int32 in if case let .label(k) = c { return Int32(k) }; return -1 },
                                                          captions: conditions.map(\.caption), sourceIndex: (0..<n).map(Int64.init)),
                              info: info, communicator: SingleProcess())
    }
}
