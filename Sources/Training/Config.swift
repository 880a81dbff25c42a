import Datasets
import Diffusion
import Foundation
import NN
import TensorEngine

/// The whole configuration of a run: what `Launch/configs/*.yaml` holds. Every
/// field has a default; a YAML file overrides any subset, and `--set a.b=value`
/// overrides single keys after that. Keys are snake_case as in CompVis configs.
public struct Config: Codable, Equatable, Sendable {
    public var seed = 0
    public var data = DataConfig()
    public var autoencoder = AutoencoderStageConfig()
    public var diffusion = DiffusionStageConfig()
    /// Versatile Diffusion's frozen text and image encoders (a multi-flow diffuser's contexts).
    public var contextEncoders = ContextEncodersStageConfig()
    /// Versatile Diffusion's text VAE (the latents of a multi-flow diffuser's text flows).
    public var textAutoencoder = TextAutoencoderStageConfig()
    public var distributed = DistributedConfig()
    public var pipeline = PipelineConfig()
    /// How the engine computes (Winograd variant, oneDNN's convolution layout): the
    /// commands that read a config apply it before they compute.
    public var engine = EngineOptions()

    public init() {}
    enum CodingKeys: String, CodingKey {
        case seed, data, autoencoder, diffusion, contextEncoders = "context_encoders", textAutoencoder = "text_autoencoder", distributed, pipeline
        case engine
    }
}

public struct DataConfig: Codable, Equatable, Sendable {
    /// The prepared dataset (`ldm-train prepare`); the pipeline prepares it from
    /// `source` when it is missing.
    public var path = "Datasets/fashion-mnist.h5"
    /// A folder of Fashion-MNIST IDX files, or of images (PNG/JPEG; class subfolders,
    /// train/ and test/, metadata.jsonl with captions).
    public var source = FashionMNIST.defaultSource
    /// The model's input side: an image folder is prepared at resolution ×
    /// resolution; smaller stored images are padded (Fashion-MNIST: 28 → 32).
    public var resolution = 32
    /// Channels an image folder is prepared with: 1 (gray) or 3 (RGB).
    public var channels = 1
    /// RGB that transparent pixels are composited over.
    public var background: [Int] = [255, 255, 255]
    /// The resampling filter of the shorter-side resize (Pillow's kernels).
    public var resizeFilter = ResizeFilter.bicubic
    /// Held out as the test split when the folder has no train/ and test/.
    public var testFraction = 0.05
    /// Random horizontal flips of training images.
    public var flip = true
    /// Use only the first N training images (0: all), for quick experiments.
    public var trainImages = 0

    enum CodingKeys: String, CodingKey {
        case path, source, resolution, channels, background, resizeFilter = "resize_filter", testFraction = "test_fraction", flip
        case trainImages = "train_images"
    }

    /// The number of training images used out of `available`.
    public func trainCount(_ available: Int) -> Int { trainImages > 0 ? min(trainImages, available) : available }

    /// How `prepare` turns a folder's images into rows.
    public var preparation: ImagePreparation {
        var p = ImagePreparation(resolution: resolution, channels: channels)
        (p.background, p.filter) = (background.map { UInt8(clamping: $0) }, resizeFilter)
        return p
    }

    /// Throws for channels other than 1 or 3, a background that is not 3 bytes, or a fraction outside [0, 1).
    func validate() throws {
        guard [1, 3].contains(channels) else { throw ConfigError.invalid(path: "data.channels", reason: "must be 1 or 3, got \(channels)") }
        guard background.count == 3, background.allSatisfy({ (0...255).contains($0) }) else {
            throw ConfigError.invalid(path: "data.background", reason: "must be three values in 0…255, got \(background)")
        }
        guard (0..<1).contains(testFraction) else { throw ConfigError.invalid(path: "data.test_fraction", reason: "must be in [0, 1), got \(testFraction)") }
        guard resolution >= 1 else { throw ConfigError.invalid(path: "data.resolution", reason: "must be positive, got \(resolution)") }
    }
}

/// The stages of `ldm-train pipeline`, in order.
public enum PipelineStage: String, Codable, Sendable, CaseIterable, Comparable {
    case prepare, autoencoder, encode
    /// A multi-flow diffuser's context encoders (skipped for a single-flow model).
    case contextEncoders = "context_encoders"
    /// A multi-flow diffuser's text VAE and the text latent cache (skipped without text data flows).
    case textAutoencoder = "text_autoencoder"
    case diffusion, sample
    public static func < (a: Self, b: Self) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

/// What `ldm-train pipeline` runs.
public struct PipelineConfig: Codable, Equatable, Sendable {
    /// The pipeline stops after this stage (e.g. `autoencoder` for data without class labels).
    public var lastStage = PipelineStage.sample
    /// Where the stages' runs go (`<checkpoints>/autoencoder`, `<checkpoints>/<diffusion_run>`); `--checkpoints` overrides it.
    public var checkpoints = "Checkpoints"
    /// The diffusion run's folder under `checkpoints`: several stage-2 models (generation,
    /// super-resolution, inpainting) can share one autoencoder and latent cache.
    public var diffusionRun = "diffusion"
    enum CodingKeys: String, CodingKey { case lastStage = "last_stage", checkpoints, diffusionRun = "diffusion_run" }
}

/// Stage 2: the latent diffusion model and how it trains and samples.
public struct DiffusionStageConfig: Codable, Equatable, Sendable {
    public var name = "ldm-fmnist"
    /// The latent cache (`ldm-train encode`).
    public var latents = "Datasets/fashion-mnist-latents"
    public var model = UNetArchitecture()
    /// What the model is conditioned on (class, text, none) and how (conditioning_key).
    public var conditioning = ConditioningConfig()
    /// What it learns: generation, or an image-to-image task whose condition image is
    /// concatenated to z_t (conditioning.key concat or hybrid).
    public var task = TaskConfig()
    public var schedule = ScheduleConfig()
    /// "eps" (ε-prediction) or "v".
    public var prediction = Prediction.epsilon
    /// Probability of replacing the condition with the null one (the null class token,
    /// the empty caption) in training, for classifier-free guidance.
    public var pUncond = 0.1
    public var emaDecay = 0.9999
    public var optimizer: OptimizerConfig = {
        var o = OptimizerConfig(baseLR: 1.5625e-6, beta1: 0.9, beta2: 0.999)
        (o.weightDecay, o.decoupledWeightDecay, o.warmupSteps) = (0.01, true, 500)
        return o
    }()
    public var training: TrainingConfig = {
        var t = TrainingConfig()
        (t.steps, t.imageEvery, t.checkpointEvery, t.evalImages) = (6000, 2000, 1000, 1000)
        return t
    }()
    public var sampling = SamplingConfig()
    /// One flow (`single`: CompVis's LatentDiffusion, conditioned as `conditioning` says) or
    /// Versatile Diffusion's multi-flow diffuser over the context encoders' contexts.
    public var diffuser = DiffuserKind.single
    /// multi_flow: the flows trained, in the order of the schedule (each runs `steps`
    /// consecutive optimizer steps, then the next, round and round).
    public var flows = [FlowConfig(context: .text), FlowConfig(context: .image)]
    /// multi_flow: the learning rate of each parameter group is the stage's × this.
    public var lrMultipliers = GroupMultipliers()
    /// multi_flow with text data flows: the text latent cache (`ldm-train encode-text`).
    public var textLatents = "Datasets/fashion-mnist-text-latents"
    /// multi_flow with text data flows: the positions the text UNet spreads a text latent
    /// over (Versatile Diffusion's `second_dim`); its SpatialTransformers see them as tokens.
    public var textPoints = 4

    enum CodingKeys: String, CodingKey {
        case name, latents, model, conditioning, task, schedule, prediction, pUncond = "p_uncond", emaDecay = "ema_decay", optimizer, training, sampling
        case diffuser, flows, lrMultipliers = "lr_multipliers", textLatents = "text_latents", textPoints = "text_points"
    }

    /// The text data flows need a text VAE, its latent cache and the text UNet.
    public var hasTextData: Bool { diffuser == .multiFlow && flows.contains { $0.data == .text } }
}

extension DiffusionStageConfig {
    /// The sampling settings with any of them given on the command line; DDPM without
    /// `steps` takes all T steps.
    public func sampling(_ kind: SamplerKind?, steps: Int?, eta: Double?, guidance: Double?, seed: Int?) -> SamplingConfig {
        var s = sampling
        if let kind { s.sampler = kind }
        if let steps { s.steps = steps }
        if let eta { s.eta = eta }
        if let guidance { s.guidance = guidance }
        if let seed { s.seed = seed }
        if s.sampler == .ddpm && steps == nil { s.steps = schedule.timesteps }
        return s
    }
}

/// What stage 2 trains (`diffusion.diffuser`).
public enum DiffuserKind: String, Codable, Sendable, CaseIterable {
    /// One UNet for one flow (CompVis's LatentDiffusion).
    case single
    /// Versatile Diffusion's diffuser: global, data and per-context-type context layers, several flows.
    case multiFlow = "multi_flow"
}

/// One flow of a multi-flow diffuser (`diffusion.flows[i]`): data of one type attending
/// to context of one type.
public struct FlowConfig: Codable, Equatable, Sendable {
    /// What it denoises: image latents, or the text VAE's latents of the captions.
    public var data = Modality.image
    public var context: Modality
    /// Its loss is multiplied by this.
    public var weight = 1.0
    /// Consecutive optimizer steps it takes each turn of the schedule.
    public var steps = 1
    /// Probability of its null context in training (nil: diffusion.p_uncond).
    public var pUncond: Double?

    public init(data: Modality = .image, context: Modality) { (self.data, self.context) = (data, context) }
    enum CodingKeys: String, CodingKey, CaseIterable { case data, context, weight, steps, pUncond = "p_uncond" }

    public var flow: Flow { Flow(data: data, context: context) }

    public init(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let other = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
            .filter { key in !CodingKeys.allCases.contains { $0.stringValue == key } }
        if let key = other.first {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "unknown key '\(key)' in a flow",
                                                    underlyingError: UnknownKey(key: key, known: CodingKeys.allCases.map(\.stringValue))))
        }
        context = try c.decode(Modality.self, forKey: .context)
        data = try c.decodeIfPresent(Modality.self, forKey: .data) ?? .image
        weight = try c.decodeIfPresent(Double.self, forKey: .weight) ?? 1
        steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? 1
        pUncond = try c.decodeIfPresent(Double.self, forKey: .pUncond)
    }
}

/// A key inside a list item that its type does not know (decoding fails with it).
struct UnknownKey: Error {
    let key: String, known: [String]
}

/// Any key of a mapping, to list the ones a type does not know.
struct AnyKey: CodingKey {
    var stringValue: String, intValue: Int?
    init?(stringValue: String) { (self.stringValue, intValue) = (stringValue, nil) }
    init?(intValue: Int) { (stringValue, self.intValue) = (String(intValue), intValue) }
}

/// The learning-rate multiplier of each parameter group of a multi-flow diffuser.
public struct GroupMultipliers: Codable, Equatable, Sendable {
    public var global = 1.0
    public var data = 1.0
    public var context = 1.0
    public init() {}
    public subscript(group: ParameterGroup) -> Double {
        switch group {
        case .global: return global
        case .data: return data
        case .context: return context
        }
    }
}

/// Versatile Diffusion's context encoders as a stage of their own (`context_encoders`):
/// trained contrastively on the dataset's image–caption pairs, then frozen.
public struct ContextEncodersStageConfig: Codable, Equatable, Sendable {
    public var name = "clip-fmnist"
    public var model = ContextEncoderArchitecture()
    /// CLIP's optimiser: AdamW, β₂ 0.98, weight decay 0.2, warm-up and cosine decay.
    public var optimizer: OptimizerConfig = {
        var o = OptimizerConfig(baseLR: 2e-6, beta1: 0.9, beta2: 0.98)
        (o.eps, o.weightDecay, o.decoupledWeightDecay, o.warmupSteps, o.lrDecay, o.minLRRatio) = (1e-6, 0.2, true, 100, .cosine, 0.05)
        return o
    }()
    public var training: TrainingConfig = {
        var t = TrainingConfig()
        (t.steps, t.batchSize, t.logEvery, t.imageEvery, t.checkpointEvery, t.evalImages) = (1500, 128, 50, 1_000_000, 500, 2000)
        return t
    }()
    enum CodingKeys: String, CodingKey { case name, model, optimizer, training }
}

/// Versatile Diffusion's text VAE as a stage of its own (`text_autoencoder`): trained on
/// the dataset's captions, then frozen; its latents are what the text flows denoise.
public struct TextAutoencoderStageConfig: Codable, Equatable, Sendable {
    public var name = "text-vae-fmnist"
    public var model = TextAutoencoderArchitecture()
    /// β of the KL term (per caption, summed over the latent) against the summed token
    /// negative log-likelihood; small, so the latent keeps the caption (Optimus anneals β low).
    public var klWeight = 1e-3
    /// Decoding: 1 takes the most likely token each step (greedy); k > 1 draws among the k most likely.
    public var topK = 1
    public var optimizer: OptimizerConfig = {
        var o = OptimizerConfig(baseLR: 5e-6, beta1: 0.9, beta2: 0.999)
        (o.weightDecay, o.decoupledWeightDecay, o.warmupSteps, o.lrDecay, o.minLRRatio) = (0.01, true, 100, .cosine, 0.1)
        return o
    }()
    public var training: TrainingConfig = {
        var t = TrainingConfig()
        (t.steps, t.batchSize, t.logEvery, t.imageEvery, t.checkpointEvery, t.evalImages) = (1500, 128, 50, 1_000_000, 500, 1000)
        return t
    }()
    enum CodingKeys: String, CodingKey { case name, model, klWeight = "kl_weight", topK = "top_k", optimizer, training }
}

/// What a latent diffusion model learns (`diffusion.task.kind`).
public enum TaskKind: String, Codable, Sendable, CaseIterable {
    /// Images from noise, under the model's conditioning (class, text, none).
    case generation
    /// The image from its low-resolution version (downsampled by `factor`).
    case superResolution = "super_resolution"
    /// The image from its visible part: a mask's hole is filled.
    case inpainting

    /// The spelling of `ldm-train sample --task`.
    public var argument: String { rawValue.replacingOccurrences(of: "_", with: "-") }
}

/// An image-to-image task (`diffusion.task`).
public struct TaskConfig: Codable, Equatable, Sendable {
    public var kind = TaskKind.generation
    /// super_resolution: the low-resolution side is the image's divided by this (2 or 4).
    public var factor = 2
    /// inpainting: each mask covers a fraction of the image drawn uniformly from this
    /// range, made of random rectangles and thick strokes.
    public var maskCoverage = [0.1, 0.5]
    public init() {}
    enum CodingKeys: String, CodingKey { case kind, factor, maskCoverage = "mask_coverage" }
}

public struct ScheduleConfig: Codable, Equatable, Sendable {
    public var kind = NoiseSchedule.Kind.scaledLinear
    public var timesteps = 1000
    public var betaStart = 0.0015
    public var betaEnd = 0.0195
    public var schedule: NoiseSchedule { NoiseSchedule(kind, timesteps: timesteps, betaStart: betaStart, betaEnd: betaEnd) }
    enum CodingKeys: String, CodingKey { case kind, timesteps, betaStart = "beta_start", betaEnd = "beta_end" }
}

/// The sampler of `ldm-train sample` and the training grids.
public enum SamplerKind: String, Codable, Sendable, CaseIterable {
    /// DDIM over `steps` steps (η = 0: deterministic).
    case ddim
    /// Ancestral DDPM over all T steps.
    case ddpm
}

/// How samples are drawn (training grids and `ldm-train sample` defaults).
public struct SamplingConfig: Codable, Equatable, Sendable {
    public var sampler = SamplerKind.ddim
    public var steps = 50
    public var eta = 0.0
    public var guidance = 3.0
    /// Samples per grid row (a class or a prompt).
    public var perClass = 8
    public var seed = 0
    /// A text model's grid rows (training grids, and `sample` without --prompt);
    /// empty: the first distinct training captions.
    public var prompts: [String] = []
    enum CodingKeys: String, CodingKey { case sampler, steps, eta, guidance, perClass = "per_class", seed, prompts }
}

/// How gradients are averaged over ranks (README.md, "Ranks").
public struct DistributedConfig: Codable, Equatable, Sendable {
    /// The first bucket is small so communication starts early in backward.
    public var firstBucketMiB = 1.0
    public var bucketMiB = 25.0
    /// Reduce buckets on a communication thread during backward (false: after it).
    public var overlap = true
    /// > 0: the thread starts each bucket's MPI_Iallreduce and polls it every this
    /// many microseconds while backward runs, sleeping between polls; 0: blocking MPI_Allreduce.
    public var pollMicroseconds = 0.0
    /// Seconds a collective may take before the job is ended (0: max(120 s, 20× the median step)).
    public var watchdogSeconds = 0.0

    enum CodingKeys: String, CodingKey {
        case firstBucketMiB = "first_bucket_mib", bucketMiB = "bucket_mib", overlap, pollMicroseconds = "poll_microseconds"
        case watchdogSeconds = "watchdog_seconds"
    }

    /// Throws for a bucket size that is not positive or a negative interval.
    public func validate() throws {
        for (key, value) in [("first_bucket_mib", firstBucketMiB), ("bucket_mib", bucketMiB)] where !(value > 0) {
            throw ConfigError.invalid(path: "distributed.\(key)", reason: "must be positive, got \(value)")
        }
        for (key, value) in [("poll_microseconds", pollMicroseconds), ("watchdog_seconds", watchdogSeconds)] where !(value >= 0) {
            throw ConfigError.invalid(path: "distributed.\(key)", reason: "must be ≥ 0, got \(value)")
        }
    }
}

public struct AutoencoderStageConfig: Codable, Equatable, Sendable {
    /// The reference model's name, for logs and checkpoints.
    public var name = "kl-f4-fmnist"
    /// kl (AutoencoderKL) or vq (VQModel: model.double_z false, model.n_embed codes).
    public var kind = AutoencoderKind.kl
    public var model = AutoencoderArchitecture()
    public var loss = AutoencoderLossConfig()
    public var optimizer = OptimizerConfig(baseLR: 4.5e-6, beta1: 0.5, beta2: 0.9)
    public var training = TrainingConfig()
}

public struct AutoencoderLossConfig: Codable, Equatable, Sendable {
    /// "l1" or "l2", summed over pixels and averaged over the batch.
    public var reconstruction = "l1"
    /// Weight of the KL term (summed over latent elements, averaged over the batch; kind kl).
    public var klWeight = 1e-6
    /// Kind vq: weight of the quantiser's loss, and β of its commitment term (CompVis: 1, 0.25).
    public var codebookWeight = 1.0
    public var commitmentBeta = 0.25
    /// Kind vq: every this many steps (0: never), the codes no latent of that step's global
    /// batch chose are moved onto latents of the batch (dead codes re-seeded).
    public var reseedDeadCodesEvery = 0
    /// Weight of the LPIPS term (0: off), added per pixel to the reconstruction error as
    /// CompVis does; `perceptual_weights` is the file of its VGG16 and head weights
    /// (safetensors or HDF5, torchvision's and LPIPS's names).
    public var perceptualWeight = 0.0
    public var perceptualWeights = ""
    /// The patch discriminator (hinge loss) joins at step `disc_start` when enabled.
    public var discEnabled = false
    public var discStart = 50001
    public var discWeight = 0.5
    public var discLayers = 3
    public var discChannels = 64

    enum CodingKeys: String, CodingKey {
        case reconstruction, klWeight = "kl_weight", codebookWeight = "codebook_weight", commitmentBeta = "commitment_beta"
        case perceptualWeight = "perceptual_weight", perceptualWeights = "perceptual_weights", reseedDeadCodesEvery = "reseed_dead_codes_every"
        case discEnabled = "disc_enabled", discStart = "disc_start"
        case discWeight = "disc_weight", discLayers = "disc_layers", discChannels = "disc_channels"
    }
}

public struct OptimizerConfig: Codable, Equatable, Sendable {
    /// Learning rate per sample of the global batch (CompVis's base_learning_rate):
    /// the effective rate is base_lr × global batch when `scale_lr`, else base_lr.
    public var baseLR: Double
    public var scaleLR = true
    public var beta1: Double
    public var beta2: Double
    public var eps = 1e-8
    public var weightDecay = 0.0
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    public var decoupledWeightDecay = false
    public var warmupSteps = 0
    /// After warm-up: `constant` or `cosine` (down to `min_lr_ratio` × lr at the last step).
    public var lrDecay = LRDecay.constant
    public var minLRRatio = 0.0
    /// Clip the global gradient norm to this (0: no clipping).
    public var gradClip = 0.0

    public init(baseLR: Double, beta1: Double, beta2: Double) {
        (self.baseLR, self.beta1, self.beta2) = (baseLR, beta1, beta2)
    }

    /// Throws for a rate that is not positive, a negative warm-up or a floor outside [0, 1].
    func validate(section: String) throws {
        guard baseLR > 0 else { throw ConfigError.invalid(path: "\(section).base_lr", reason: "must be positive, got \(baseLR)") }
        guard warmupSteps >= 0 else { throw ConfigError.invalid(path: "\(section).warmup_steps", reason: "must be ≥ 0, got \(warmupSteps)") }
        guard (0...1).contains(minLRRatio) else {
            throw ConfigError.invalid(path: "\(section).min_lr_ratio", reason: "must be in [0, 1], got \(minLRRatio)")
        }
    }

    /// How the start-up line describes the schedule after warm-up.
    var decayDescription: String { lrDecay == .cosine ? ", cosine decay to \(minLRRatio) × lr" : "" }

    /// The learning rate the optimizer uses for a global batch of `globalBatch` samples.
    public func effectiveLR(globalBatch: Int) -> Double { scaleLR ? baseLR * Double(globalBatch) : baseLR }

    public var adam: Adam.Settings {
        var s = Adam.Settings()
        (s.beta1, s.beta2, s.eps, s.weightDecay, s.decoupled) = (beta1, beta2, eps, weightDecay, decoupledWeightDecay)
        return s
    }

    enum CodingKeys: String, CodingKey {
        case baseLR = "base_lr", scaleLR = "scale_lr", beta1, beta2, eps, weightDecay = "weight_decay"
        case decoupledWeightDecay = "decoupled_weight_decay", warmupSteps = "warmup_steps", gradClip = "grad_clip"
        case lrDecay = "lr_decay", minLRRatio = "min_lr_ratio"
    }
}

/// How long and how a stage trains; the command line's --steps, --batch-size,
/// --accumulate, --checkpoint-every and --keep override these.
public struct TrainingConfig: Codable, Equatable, Sendable {
    /// Train until this global optimizer step.
    public var steps = 6000
    /// Per-rank micro-batch.
    public var batchSize = 64
    /// Micro-batches per optimizer step.
    public var accumulate = 1
    public var logEvery = 50
    /// Steps between PNG grids and metrics lines with images.
    public var imageEvery = 1000
    public var checkpointEvery = 1000
    public var keep = 3
    /// Test images for the final evaluation: the autoencoder's PSNR/SSIM, an image
    /// task's metrics against its baseline (0: the whole test split).
    public var evalImages = 0
    /// What the stage's convolutions and matrix products compute in (fp32, or bf16 on a
    /// CPU with AVX512-BF16); weights, optimizer state and checkpoints stay float32.
    public var precision = Precision.fp32

    /// Throws for negative steps or a count that must be positive and is not.
    func validate(section: String) throws {
        for (key, value) in [("steps", steps), ("batch_size", batchSize), ("accumulate", accumulate), ("log_every", logEvery),
                             ("image_every", imageEvery), ("checkpoint_every", checkpointEvery), ("keep", keep)]
            where value < (key == "steps" ? 0 : 1) {
            throw ConfigError.invalid(path: "\(section).\(key)", reason: "must be \(key == "steps" ? "≥ 0" : "positive"), got \(value)")
        }
        if let reason = precision.unsupportedReason { throw ConfigError.invalid(path: "\(section).precision", reason: reason) }
    }

    enum CodingKeys: String, CodingKey {
        case steps, batchSize = "batch_size", accumulate, logEvery = "log_every", imageEvery = "image_every"
        case checkpointEvery = "checkpoint_every", keep, evalImages = "eval_images", precision
    }
}

extension AutoencoderStageConfig {
    enum CodingKeys: String, CodingKey { case name, kind, model, loss, optimizer, training }
}
