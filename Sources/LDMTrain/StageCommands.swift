import ArgumentParser
import Datasets
import Distributed
import Foundation
import Storage
import TensorEngine
import Training

/// Options every training command shares (README.md, "The command line").
struct TrainingOptions: ParsableArguments {
    @Option(help: "Config file (YAML; default: the built-in Fashion-MNIST recipe, Launch/configs/fmnist.yaml).") var config: String?
    @Option(help: "Train until global optimizer step N.") var steps: Int?
    @Option(name: .customLong("batch-size"), help: "Per-rank batch size.") var batchSize: Int?
    @Option(help: "Micro-batches per optimizer step.") var accumulate: Int?
    @Option(help: "Random seed.") var seed: Int?
    @Option(help: "auto, none, or a checkpoint path.") var resume = "auto"
    @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps.") var checkpointEvery: Int?
    @Option(help: "Checkpoints to keep.") var keep: Int?
    @Option(name: .customLong("set"), help: "Config override key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "Threads per rank for the engine and oneDNN (default: cores ÷ ranks on this node).") var threads: Int?

    /// The config file with these options laid over `stage`'s section (autoencoder or diffusion).
    func load(stage: String, data: String? = nil) throws -> Config {
        var sets: [String] = []
        if let seed { sets.append("seed=\(seed)") }
        if let data { sets.append("data.path=\(data)") }
        for (key, value) in [("steps", steps), ("batch_size", batchSize), ("accumulate", accumulate),
                             ("checkpoint_every", checkpointEvery), ("keep", keep)] {
            if let value { sets.append("\(stage).training.\(key)=\(value)") }
        }
        if let threads {
            guard threads > 0 else { throw ValidationError("--threads must be positive, got \(threads)") }
            Threads.configure(threads)
        }
        let loaded = try ConfigLoader.load(config, overrides: sets + overrides)
        Engine.configure(loaded.engine)
        return loaded
    }

    /// Loads the config for `stage`'s section and runs the stage `make` builds on every rank
    /// into `runDir`, resuming as `--resume` says.
    func run(stage: String, data: String?, runDir: String, _ make: @escaping (Config, RunOptions, Communicator) throws -> Void) throws {
        let config = try load(stage: stage, data: data)
        var options = RunOptions(runDirectory: runDir)
        options.resume = resume
        try distributed { comm in try make(config, options, comm) }
    }
}

struct PipelineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "prepare → autoencoder → encode → diffusion → sample, skipping complete stages.",
        discussion: "Outputs go to Datasets/ and Checkpoints/<stage>; run it again to resume.")
    @Option(help: "Config file (YAML; default: the built-in Fashion-MNIST recipe, Launch/configs/fmnist.yaml).") var config: String?
    @Option(help: "Where the stages' runs go (<dir>/autoencoder, <dir>/diffusion; default: pipeline.checkpoints).") var checkpoints: String?
    @Option(help: "Random seed.") var seed: Int?
    @Option(name: .customLong("set"), help: "Config override key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "Threads per rank (default: cores ÷ ranks on this node).") var threads: Int?

    func run() throws {
        if let threads {
            guard threads > 0 else { throw ValidationError("--threads must be positive, got \(threads)") }
            Threads.configure(threads)
        }
        let loaded = try ConfigLoader.load(config, overrides: (seed.map { ["seed=\($0)"] } ?? []) + overrides)
        Engine.configure(loaded.engine)
        try Training.validate(loaded)
        try validateDiffusion(loaded)
        if loaded.diffusion.diffuser == .multiFlow { try validateContextEncoders(loaded) }
        if loaded.diffusion.hasTextData { try validateTextAutoencoder(loaded) }
        if loaded.pipeline.lastStage >= .diffusion {   // before stage 1, not after it
            try ImageTask.checkChannels(loaded.diffusion, autoencoder: loaded.autoencoder.model)
        }
        let layout = Training.Pipeline.Layout(checkpoints: checkpoints ?? loaded.pipeline.checkpoints, diffusion: loaded.pipeline.diffusionRun)
        try distributed { comm in try Training.Pipeline.run(config: loaded, layout: layout, communicator: comm) }
    }
}

struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a dataset file from Fashion-MNIST's IDX files or a folder of PNG/JPEG images.",
        discussion: """
            An image folder: *.png, *.jpg, *.jpeg found recursively; class labels from first-level \
            subfolders; train/ and test/ subfolders as splits (else --test-fraction held out); \
            captions and labels from metadata.jsonl ({"file_name": ..., "text": ..., "label": ...}). \
            Under mpirun every rank decodes a slice. Defaults come from the config's data section.
            """)
    @Option(help: "Config whose data section gives the defaults (default: the built-in recipe).") var config: String?
    @Option(help: "IDX folder or image folder (default: data.source).") var source: String?
    @Option(help: "Output HDF5 file (default: data.path).") var out: String?
    @Option(help: "Side of the square images (default: data.resolution).") var resolution: Int?
    @Option(help: "1 (gray) or 3 (RGB) (default: data.channels).") var channels: Int?
    @Option(name: .customLong("test-fraction"), help: "Held out when there is no test/ folder (default: data.test_fraction).")
    var testFraction: Double?
    @Option(help: "Background for transparent pixels, R,G,B (default: data.background).") var background: String?
    @Option(help: "Resize filter: box, bilinear, bicubic or lanczos (default: data.resize_filter).") var filter: String?
    @Option(help: "Seed of the held-out split (default: the config's seed).") var seed: Int?
    @Flag(name: .customLong("skip-invalid"), help: "Skip images that do not decode (listed in the file) instead of stopping.")
    var skipInvalid = false

    func run() throws {
        var sets: [String] = []
        for (key, value) in [("resolution", resolution.map(String.init)), ("channels", channels.map(String.init)),
                             ("test_fraction", testFraction.map { "\($0)" }), ("background", background.map { "[\($0)]" }),
                             ("resize_filter", filter)] {
            if let value { sets.append("data.\(key)=\(value)") }
        }
        if let seed { sets.append("seed=\(seed)") }
        let loaded = try ConfigLoader.load(config, overrides: sets)
        try Training.validate(loaded)
        var options = Datasets.Prepare.Options(source: source ?? loaded.data.source, out: out ?? loaded.data.path,
                                               preparation: loaded.data.preparation)
        (options.testFraction, options.seed, options.skipInvalid) = (loaded.data.testFraction, loaded.seed, skipInvalid)
        try distributed { comm in
            let summary = try Datasets.Prepare.run(options, communicator: comm)
            guard comm.isRoot else { return }
            print("wrote \(options.out): \(summary.description)")
            for (name, reason) in summary.skipped.prefix(20) { print("  skipped \(name): \(reason)") }
            if summary.skipped.count > 20 { print("  … and \(summary.skipped.count - 20) more (the file's skipped/ lists them all)") }
        }
    }
}

/// Starting a fresh run from weights trained elsewhere.
struct InitOptions: ParsableArguments {
    @Option(name: .customLong("init-from"), help: "A safetensors file with CompVis keys (ldm-train export's, or CompVis's) to start a fresh run from.")
    var initFrom: String?
    @Flag(name: .customLong("init-from-partial"), help: "Load the tensors that match by key and shape; the rest keep their initialisation (listed).")
    var partial = false

    func apply(_ options: inout RunOptions) throws {
        guard initFrom != nil || !partial else { throw ValidationError("--init-from-partial needs --init-from") }
        (options.initFrom, options.initFromPartial) = (initFrom, partial)
    }
}

struct Autoencoder: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stage 1: train the autoencoder.")
    @OptionGroup var training: TrainingOptions
    @Option(help: "Dataset file (default: the config's data.path).") var data: String?
    @Option(name: .customLong("run-dir"), help: "Run directory.") var runDir = "Checkpoints/autoencoder"
    @OptionGroup var initialization: InitOptions
    func run() throws {
        let config = try training.load(stage: "autoencoder", data: data)
        var options = RunOptions(runDirectory: runDir)
        options.resume = training.resume
        try initialization.apply(&options)
        try distributed { comm in try AutoencoderTrainer(config: config, options: options, communicator: comm).run() }
    }
}

struct ContextEncodersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "context-encoders",
        abstract: "Train a multi-flow diffuser's text and image context encoders (contrastive, on image–caption pairs).",
        discussion: "Symmetric InfoNCE over the global batch at any rank count; ends with image↔caption retrieval on the test split.")
    @OptionGroup var training: TrainingOptions
    @Option(help: "Dataset file (default: the config's data.path).") var data: String?
    @Option(name: .customLong("run-dir"), help: "Run directory.") var runDir = "Checkpoints/context-encoders"
    func run() throws {
        try training.run(stage: "context_encoders", data: data, runDir: runDir) { try ContextEncoderTrainer(config: $0, options: $1, communicator: $2).run() }
    }
}

struct TextAutoencoderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "text-autoencoder",
        abstract: "Train a multi-flow diffuser's text VAE on the dataset's captions.",
        discussion: "A transformer encoder to a latent vector and a causal transformer decoder; ends with reconstruction on the test split.")
    @OptionGroup var training: TrainingOptions
    @Option(help: "Dataset file (default: the config's data.path).") var data: String?
    @Option(name: .customLong("run-dir"), help: "Run directory.") var runDir = "Checkpoints/text-autoencoder"
    func run() throws {
        try training.run(stage: "text_autoencoder", data: data, runDir: runDir) { try TextAutoencoderTrainer(config: $0, options: $1, communicator: $2).run() }
    }
}

struct EncodeText: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "encode-text", abstract: "Write the text latent cache of the captions with a text VAE.")
    @Option(name: .customLong("text-autoencoder"), help: "Text VAE run directory (its newest valid checkpoint) or step directory.")
    var textAutoencoder = "Checkpoints/text-autoencoder"
    @Option(help: "Dataset file (default: the one the text VAE was trained on).") var data: String?
    @Option(help: "Output directory.") var out = "Datasets/fashion-mnist-text-latents"
    @Option(help: "Encode only the first N training captions (default: all).") var count: Int?
    @Option(help: "Threads per rank (default: cores ÷ ranks on this node).") var threads: Int?
    func run() throws {
        if let threads { Threads.configure(max(1, threads)) }
        try distributed { comm in try TextEncodeStage.run(textAutoencoder: textAutoencoder, data: data, out: out, limit: count, communicator: comm) }
    }
}

struct Encode: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write the latent cache z = E(x).")
    @Option(help: "Autoencoder run directory (its newest valid checkpoint), step directory, or safetensors file (CompVis keys).")
    var autoencoder: String
    @Option(help: "A safetensors autoencoder without ldm-train's metadata: the config whose autoencoder.model it is.") var config: String?
    @Option(help: "Dataset file (default: the one the autoencoder was trained on).") var data: String?
    @Option(help: "Output directory.") var out = "Datasets/fashion-mnist-latents"
    @Option(help: "Encode only the first N training images (default: all).") var count: Int?
    @Option(help: "Threads per rank (default: cores ÷ ranks on this node).") var threads: Int?
    func run() throws {
        if let threads { Threads.configure(max(1, threads)) }
        let architecture = try config.map { try ConfigLoader.load($0) }
        try distributed { comm in
            try EncodeStage.run(autoencoder: autoencoder, config: architecture, data: data, out: out, limit: count, communicator: comm)
        }
    }
}

struct Diffusion: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stage 2: train the latent diffusion UNet.")
    @OptionGroup var training: TrainingOptions
    @Option(help: "Latent cache directory (default: the config's diffusion.latents).") var latents: String?
    @Option(help: "The autoencoder run the cache came from: checked against the cache, and decodes the sample grids.")
    var autoencoder = "Checkpoints/autoencoder"
    @Option(name: .customLong("context-encoders"), help: "A multi-flow diffuser: the context-encoders run its contexts come from.")
    var contextEncoders = "Checkpoints/context-encoders"
    @Option(name: .customLong("text-autoencoder"), help: "A multi-flow diffuser with text flows: the text VAE run of diffusion.text_latents.")
    var textAutoencoder = "Checkpoints/text-autoencoder"
    @Option(name: .customLong("run-dir"), help: "Run directory.") var runDir = "Checkpoints/diffusion"
    @OptionGroup var initialization: InitOptions
    func run() throws {
        var config = try training.load(stage: "diffusion")
        if let latents { config.diffusion.latents = latents }
        var options = RunOptions(runDirectory: runDir)
        options.resume = training.resume
        try initialization.apply(&options)
        let ae = FileManager.default.fileExists(atPath: autoencoder) ? autoencoder : nil
        try distributed { comm in
            if config.diffusion.diffuser == .multiFlow {
                try VersatileTrainer(config: config, options: options, autoencoder: ae, contextEncoders: contextEncoders,
                                     textAutoencoder: config.diffusion.hasTextData ? textAutoencoder : nil, communicator: comm).run()
            } else {
                try DiffusionTrainer(config: config, options: options, autoencoder: ae, communicator: comm).run()
            }
        }
    }
}

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Sample images (and export latents) from a trained model.")
    @Option(help: "Diffusion run directory (its newest checkpoint) or step directory.") var diffusion = "Checkpoints/diffusion"
    @Option(help: "Autoencoder run directory, step directory or safetensors file (must be the one the latents came from).")
    var autoencoder = "Checkpoints/autoencoder"
    @Option(name: .customLong("class"), help: "A class-conditional model: a class index, or all.") var classes: String?
    @Option(help: "A text model: a prompt, one grid row (repeatable; \"\" samples unconditionally).") var prompt: [String] = []
    @Option(name: .customLong("prompts-file"), help: "A text model: a UTF-8 file of prompts, one per line.") var promptsFile: String?
    @Option(help: "Samples per class or prompt, or per input of an image task (default: 8; 1 for an image task).") var count: Int?
    @Option(help: "super-resolution or inpainting: checked against what the checkpoint was trained for.") var task: TaskKind?
    @Option(help: "An image task's input (repeatable): the low-resolution image (super-resolution), or the image to inpaint.")
    var input: [String] = []
    @Option(help: "Inpainting: the mask of each --input (white: the hole to fill, black: kept; grey thresholded at 50%).")
    var mask: [String] = []
    @Option(name: .customLong("from-test"), help: "An image task on the first N test images (with their references); a multi-flow diffuser: their variations.")
    var fromTest: Int?
    @Option(name: .customLong("image-variation"), help: "A multi-flow diffuser: variations of this image (repeatable; the image encoder's size).")
    var imageVariation: [String] = []
    @Option(help: "A multi-flow diffuser, dual guidance: the image mixed with each --prompt (one per prompt).") var image: [String] = []
    @Option(help: "Dual guidance: the image context's weight in [0, 1] (the text's is 1 − mix).") var mix: Double?
    @Option(name: .customLong("context-encoders"), help: "A multi-flow diffuser's context-encoders run.") var contextEncoders = "Checkpoints/context-encoders"
    @Option(name: .customLong("caption-image"), help: "A multi-flow diffuser with text flows: caption this image (repeatable; image→text).")
    var captionImage: [String] = []
    @Option(name: .customLong("text-variation"), help: "A multi-flow diffuser with text flows: variations of this caption (repeatable; text→text).")
    var textVariation: [String] = []
    @Option(name: .customLong("text-autoencoder"), help: "The text VAE that decodes the text flows' latents.") var textAutoencoder = "Checkpoints/text-autoencoder"
    @Option(name: .customLong("captions-out"), help: "Write the generated captions here as JSON lines.") var captionsOut: String?
    @Option(help: "ddim or ddpm (default: the config's).") var sampler: SamplerKind?
    @Option(help: "Sampling steps (DDIM; DDPM uses all T).") var steps: Int?
    @Option(help: "DDIM η (0: deterministic).") var eta: Double?
    @Option(help: "Classifier-free guidance scale w (1: conditional only).") var guidance: Double?
    @Option(help: "Seed of the sampling noise.") var seed: Int?
    @Option(help: "Grid PNG, one row per class or prompt.") var out = "samples.png"
    @Option(name: .customLong("latents-out"), help: "Write the sampled latents (latent-cache format) here.") var latentsOut: String?
    @Option(name: .customLong("images-out"), help: "Write images [N,C,R,R] f32 with labels [N] i64 or prompts [N] to this HDF5 file.")
    var imagesOut: String?
    @Flag(name: .customLong("no-ema"), help: "Use the trained weights instead of their EMA.") var noEMA = false
    @Option(help: "Threads (default: all cores).") var threads: Int?

    func run() throws {
        if let threads { Threads.configure(max(1, threads)) }
        var r = SampleStage.Request(diffusion: diffusion, autoencoder: autoencoder)
        if let classes {
            guard classes == "all" || Int(classes) != nil else { throw ValidationError("--class must be a class index or all, got '\(classes)'") }
            r.classes = Int(classes).map { .one($0) } ?? .all
        }
        (r.prompts, r.promptsFile) = (prompt, promptsFile)
        (r.task, r.inputs, r.masks, r.fromTest) = (task, input, mask, fromTest)
        (r.imageVariations, r.images, r.mix, r.contextEncoders) = (imageVariation, image, mix, contextEncoders)
        (r.captionImages, r.textVariations, r.textAutoencoder, r.captionsOut) = (captionImage, textVariation, textAutoencoder, captionsOut)
        let imageTask = task != nil || !input.isEmpty || fromTest != nil
        (r.count, r.sampler, r.steps, r.eta, r.guidance, r.seed) = (count ?? (imageTask ? 1 : 8), sampler, steps, eta, guidance, seed)
        (r.useEMA, r.out, r.latentsOut, r.imagesOut) = (!noEMA, out, latentsOut, imagesOut)
        try SampleStage.run(r)
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "What a checkpoint, latent cache or dataset holds.")
    @Argument(help: "A checkpoint (step or run directory), latent cache directory, or HDF5 file.") var path: String
    func run() throws { print(try Storage.Inspect.describe(path)) }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure an image-task model on the test split against its baseline.",
        discussion: "Super-resolution: PSNR and SSIM against bicubic upsampling. Inpainting: PSNR inside the hole against "
            + "the mean-colour fill. Under mpirun the ranks share the images.")
    @Option(help: "Diffusion run directory (its newest checkpoint) or step directory.") var diffusion = "Checkpoints/diffusion"
    @Option(help: "Autoencoder run directory or step directory (the one the latents came from).") var autoencoder = "Checkpoints/autoencoder"
    @Option(help: "Test images (default: the config's diffusion.training.eval_images; 0: all).") var count: Int?
    @Option(help: "Sampling steps (default: the config's).") var steps: Int?
    @Option(help: "DDIM η (default: the config's).") var eta: Double?
    @Option(help: "Seed of the sampling noise and the masks.") var seed: Int?
    @Flag(name: .customLong("no-ema"), help: "Use the trained weights instead of their EMA.") var noEMA = false
    @Option(help: "Threads per rank (default: cores ÷ ranks on this node).") var threads: Int?

    func run() throws {
        if let threads { Threads.configure(max(1, threads)) }
        try distributed { comm in
            let trained = try TrainedDiffusion.load(diffusion, useEMA: !noEMA)
            let ae = try trained.autoencoder(autoencoder, communicator: comm)
            guard let task = trained.imageTask(ae) else {
                throw SamplingError(description: "\(trained.directory) is a generation model: evaluate measures super-resolution and inpainting "
                                    + "models; judge generated samples with Launch/classify-samples")
            }
            let sampler = try trained.sampler(steps: steps, eta: eta, seed: seed)
            let test = try ImageBatcher(split: try DatasetSplit.open(ae.config.data.path, split: .test), resolution: task.resolution, flip: false, seed: 0)
            let asked = count ?? trained.stage.training.evalImages
            guard asked >= 0 else { throw ValidationError("--count must be ≥ 0, got \(asked)") }
            let n = asked > 0 ? min(asked, test.split.count) : test.split.count
            let metrics = try TaskEvaluation.run(task: task, sampler: sampler, decoder: ae.model, scaleFactor: trained.scaleFactor, test: test,
                                                 count: n, communicator: comm)
            guard comm.isRoot else { return }
            print(TaskEvaluation.describe(metrics, kind: task.config.kind, count: n))
            let json = try JSONSerialization.data(withJSONObject: metrics, options: [.sortedKeys])
            print(String(decoding: json, as: UTF8.self))
        }
    }
}

extension SamplerKind: ExpressibleByArgument {}

/// `--task super-resolution` or `inpainting` (the config's super_resolution is accepted too).
extension TaskKind: ExpressibleByArgument {
    public init?(argument: String) {
        guard let kind = TaskKind.allCases.first(where: { $0.argument == argument || $0.rawValue == argument }) else { return nil }
        self = kind
    }
    public static var allValueStrings: [String] { allCases.map(\.argument) }
}

extension ExportLayout: ExpressibleByArgument {}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a run's weights as safetensors with CompVis's keys, and the CompVis model config beside it.",
        discussion: "An autoencoder run exports as AutoencoderKL; a diffusion run as LatentDiffusion (with first_stage_model.* from "
            + "--autoencoder and the schedule's buffers) or, with --layout diffusion, the UNet and τθ alone.")
    @Argument(help: "Run directory (its newest valid checkpoint) or step directory.") var runDirectory: String
    @Option(help: "autoencoder, diffusion or latent_diffusion (default: autoencoder for stage 1, latent_diffusion for stage 2).")
    var layout: ExportLayout?
    @Flag(help: "A diffusion model's EMA weights in place of the trained ones.") var ema = false
    @Option(help: "latent_diffusion: the autoencoder run the latents came from.") var autoencoder = "Checkpoints/autoencoder"
    @Option(help: "Output file (.safetensors; the model config goes to the same name with .yaml).") var out: String
    func run() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must end in .safetensors, got \(out)") }
        let e = try Interchange.export(run: runDirectory, layout: layout, ema: ema, autoencoder: autoencoder, out: out)
        print(String(format: "exported %d tensors (%.1f MB, layout %@) to %@; CompVis model config %@", e.tensors, Double(e.bytes) / 1e6,
                     e.layout.rawValue, e.file, e.modelConfig))
    }
}

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Draw a run's training curves (metrics.jsonl) as a PNG, for those without TensorBoard.")
    @Argument(help: "Run directory.") var runDirectory: String
    @Option(help: "Output PNG (default: <run>/curves.png).") var out: String?
    func run() throws {
        let file = out ?? runDirectory + "/curves.png"
        let names = try LossPlot.draw(metrics: runDirectory + "/metrics.jsonl", out: file,
                                      title: (runDirectory as NSString).lastPathComponent)
        print("plotted \(names.joined(separator: ", ")) to \(file)")
    }
}
