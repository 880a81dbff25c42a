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
        /// Samples per class or prompt, or per input of an image task.
        public var count = 8
        /// The task asked for (`--task`; nil: the checkpoint's).
        public var task: TaskKind?
        /// An image task's input images (super-resolution: low-resolution ones) and masks.
        public var inputs: [String] = [], masks: [String] = []
        /// An image task on the first N test images instead of --input.
        public var fromTest: Int?
        public var sampler: SamplerKind?, steps: Int?, eta: Double?, guidance: Double?, seed: Int?
        /// A multi-flow diffuser's context encoders (its `context-encoders` run).
        public var contextEncoders = "Checkpoints/context-encoders"
        /// A multi-flow diffuser: images to make variations of (the image→image flow).
        public var imageVariations: [String] = []
        /// A multi-flow diffuser: dual guidance, one image per prompt, and the image context's weight.
        public var images: [String] = []
        public var mix: Double?
        /// A multi-flow diffuser with text flows: images to caption (image→text), captions
        /// to vary (text→text), the text VAE that decodes them, and a JSON-lines output.
        public var captionImages: [String] = [], textVariations: [String] = []
        public var textAutoencoder = "Checkpoints/text-autoencoder"
        public var captionsOut: String?
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
        let say: (String) -> Void = { print($0); fflush(stdout) }
        let resolved = try CheckpointStore.resolve(r.diffusion)
        if try TrainedDiffusion.config(resolved).diffusion.diffuser == .multiFlow {
            return try VersatileSampleStage.run(r, directory: resolved, say: say)
        }
        if !r.imageVariations.isEmpty || !r.images.isEmpty || r.mix != nil || !r.captionImages.isEmpty || !r.textVariations.isEmpty {
            throw SamplingError(description: "\(resolved) is a single-flow model: --image-variation, --image, --mix, --caption-image and "
                                + "--text-variation are for a multi-flow "
                                + "(Versatile Diffusion) diffuser")
        }
        let trained = try TrainedDiffusion.load(r.diffusion, useEMA: r.useEMA)
        let (directory, stage) = (trained.directory, trained.stage)
        if let asked = r.task, asked != stage.task.kind {
            throw SamplingError(description: stage.task.kind == .generation
                ? "\(directory) is a generation model: it was not trained for --task \(asked.argument)"
                : "\(directory) was trained for --task \(stage.task.kind.argument), not \(asked.argument)")
        }
        let imageInputs = !r.inputs.isEmpty || !r.masks.isEmpty || r.fromTest != nil
        if stage.task.kind == .generation && imageInputs {
            throw SamplingError(description: "\(directory) is a generation model: --input, --mask and --from-test are for --task super-resolution or inpainting")
        }
        guard r.count >= 1 else { throw SamplingError(description: "--count must be positive, got \(r.count)") }
        let ae = try trained.autoencoder(r.autoencoder, communicator: SingleProcess())
        let sampler = try trained.sampler(r.sampler, steps: r.steps, eta: r.eta, guidance: r.guidance, seed: r.seed)
        let sampling = sampler.sampling
        if let task = trained.imageTask(ae) { return try runTask(r, task: task, trained: trained, autoencoder: ae, sampler: sampler, say: say) }
        let rows = try conditions(r, stage: stage, checkpoint: directory)
        if let tokenizer = trained.model.tokenizer {
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
        let images = LatentSampler.decode(latents, scaleFactor: trained.scaleFactor, autoencoder: ae.model)
        say(String(format: "sample: %.1f s (%.2f samples/s)", Date().timeIntervalSince(start), Double(conditions.count) / Date().timeIntervalSince(start)))
        if let out = r.out {
            try LatentSampler.writeGrid(images, rows: rows.count, to: out)
            say("wrote \(out)")
        }
        if let path = r.imagesOut {
            try writeHDF5(path, doing: "write the samples") { f in
                try f.write("images", shape: nchwShape(images), nchw(images), chunkRows: 256)
                try writeConditions(conditions, kind: stage.conditioning.kind, to: f)
            }
            say("wrote \(path)")
        }
        if let dir = r.latentsOut {
            try writeLatents(latents, conditions: conditions, scaleFactor: trained.scaleFactor, autoencoder: trained.autoencoderIdentity,
                             factor: ae.config.autoencoder.model.factor, source: directory, to: dir)
            say("wrote \(dir)")
        }
    }

    /// Super-resolution or inpainting of `--input` images (with `--mask`s) or of the
    /// first `--from-test` test images: `count` results per input, a grid with one row
    /// per input, and the inputs, masks, results and references in `--images-out`. A
    /// hybrid model's class or prompt is `--class`/`--prompt` for every input, or each
    /// test image's own.
    static func runTask(_ r: Request, task: ImageTask, trained: TrainedDiffusion, autoencoder ae: FrozenAutoencoder, sampler: LatentSampler,
                        say: (String) -> Void) throws {
        let kind = task.config.kind, conditioning = trained.stage.conditioning.kind
        let asked = r.classes != nil || !r.prompts.isEmpty || r.promptsFile != nil
        var rows: [Condition]? = conditioning == .none || asked ? try conditions(r, stage: trained.stage, checkpoint: trained.directory) : nil
        guard (rows?.count ?? 1) == 1 else {
            throw SamplingError(description: "an image task applies one condition to every input: give one --class or --prompt")
        }
        let condition: ImageCondition, references: Tensor?
        if let n = r.fromTest {
            guard r.inputs.isEmpty && r.masks.isEmpty else { throw SamplingError(description: "give --from-test N or --input, not both") }
            let split = try DatasetSplit.open(ae.config.data.path, split: .test)
            guard n >= 1 && n <= split.count else { throw SamplingError(description: "--from-test must be in 1...\(split.count) (the test split), got \(n)") }
            let batcher = try ImageBatcher(split: split, resolution: task.resolution, flip: false, seed: 0)
            let test = try TaskEvaluation.testRows(task, batcher, Array(0..<n), seed: sampler.sampling.seed, kind: conditioning)
            (condition, references) = (test.condition, test.images)
            if rows == nil { rows = test.rows }
        } else {
            guard !r.inputs.isEmpty else {
                throw SamplingError(description: "\(trained.directory) does \(kind.argument): give --input F.png\(kind == .inpainting ? " --mask M.png" : "") or --from-test N")
            }
            guard rows != nil else {
                throw SamplingError(description: "\(trained.directory) is also \(conditioning.rawValue)-conditional (hybrid): give --\(conditioning == .class ? "class K" : "prompt TEXT") for the inputs")
            }
            condition = try ImageInputs.read(r.inputs, masks: r.masks, task: task, say: say)
            references = nil
        }
        let n = condition.count, k = r.count
        let repeated = (0..<(n * k)).map { $0 / k }
        let perRow = rows!.count == 1 ? [Condition](repeating: rows![0], count: n * k) : repeated.map { rows![$0] }
        let concat = task.concat(condition)
        let perInput = TensorEngine.concat(repeated.map { concat.slice(axis: 0, $0..<($0 + 1)) }, axis: 0)
        say("sample: \(kind.argument), \(k) result(s) for each of \(n) input(s) from \(trained.directory) (\(r.useEMA ? "EMA" : "trained") weights), "
            + "\(sampler.sampling.sampler) \(sampler.sampling.steps) steps, eta \(sampler.sampling.eta), seed \(sampler.sampling.seed)")
        let start = Date()
        let latents = sampler.sample(conditions: perRow, concat: perInput)
        let images = LatentSampler.decode(latents, scaleFactor: trained.scaleFactor, autoencoder: ae.model)
        say(String(format: "sample: %.1f s (%.2f samples/s)", Date().timeIntervalSince(start), Double(n * k) / Date().timeIntervalSince(start)))
        if let out = r.out {
            let grid = ImageMetrics.grid(task.gridRows(condition, results: images, references: references))
            try PNGCodec.write(out, width: grid.width, height: grid.height, channels: grid.channels, pixels: grid.pixels)
            say("wrote \(out)")
        }
        if let path = r.imagesOut {
            try writeHDF5(path, doing: "write the samples") { f in
                try f.write("images", shape: nchwShape(images), nchw(images), chunkRows: 256)
                try f.write("input_index", shape: [n * k], repeated.map(Int64.init))
                switch condition {
                case let .lowResolution(low): try f.write("inputs", shape: nchwShape(low), nchw(low), chunkRows: 256)
                case let .masked(x, masks):
                    try f.write("inputs", shape: nchwShape(x), nchw(x), chunkRows: 256)
                    try f.write("masks", shape: nchwShape(masks), nchw(masks), chunkRows: 256)
                }
                if let references { try f.write("references", shape: nchwShape(references), nchw(references), chunkRows: 256) }
                try writeConditions(perRow, kind: conditioning, to: f)
                try f.setAttribute("task", kind.rawValue)
            }
            say("wrote \(path)")
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

    /// NHWC → NCHW, as PyTorch reads images.
    static func nchw(_ t: Tensor) -> [Float] {
        let (n, h, w, c) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
        var out = [Float](repeating: 0, count: t.count)
        for b in 0..<n { for y in 0..<h { for x in 0..<w { for ch in 0..<c {
            out[((b * c + ch) * h + y) * w + x] = t.pointer[((b * h + y) * w + x) * c + ch]
        } } } }
        return out
    }

    /// What conditioned each image: `labels` [N] i64 for a class model, `prompts` [N]
    /// strings ("" for unconditional rows) for a text model, nothing for none.
    static func writeConditions(_ conditions: [Condition], kind: ConditionKind, to f: HDF5File) throws {
        switch kind {
        case .class: try f.write("labels", shape: [conditions.count], conditions.map { c -> Int64 in if case let .label(k) = c { return Int64(k) }; return -1 })
        case .text: try f.writeStrings("prompts", conditions.map(\.caption))
        case .none: break
        }
    }

    static func nchwShape(_ t: Tensor) -> [Int] { [t.shape[0], t.shape[3], t.shape[1], t.shape[2]] }

    /// Writes an HDF5 file of images in [−1, 1] (`range` attribute) whole or not at all:
    /// `body` fills `<path>.partial`, which then replaces `path`.
    static func writeHDF5(_ path: String, doing: String, _ body: (HDF5File) throws -> Void) throws {
        let partial = path + ".partial"
        do {
            let f = try HDF5File.create(partial)
            try body(f)
            try f.setAttribute("range", "[-1, 1]")
            try f.close()
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: partial, toPath: path)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw error is HDF5Error ? error : DataError(FileSystem.describe(error, path: path, doing: doing))
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
