import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// `ldm-train sample` for a multi-flow diffuser: text-to-image (`--prompt`), image
/// variation (`--image-variation F.png`, or the first `--from-test N` test images) and
/// dual guidance (`--prompt T --image F.png --mix r`: one image per prompt, the image
/// context weighted r and the text 1 − r in every context layer); with text flows,
/// captions of images (`--caption-image F.png`) and variations of captions
/// (`--text-variation TEXT`), decoded by the text VAE.
enum VersatileSampleStage {
    /// A multi-flow checkpoint loaded for sampling, with the frozen parts it needs.
    struct Loaded {
        let directory: String
        let config: Config
        let diffuser: VersatileDiffuser
        let encoders: FrozenContextEncoders
        let autoencoder: FrozenAutoencoder
        let scaleFactor: Double
        var stage: DiffusionStageConfig { config.diffusion }

        init(_ r: SampleStage.Request, directory: String) throws {
            let index = try HDF5File.open("\(directory)/index.h5")
            config = try TrainedDiffusion.config(directory)
            var textData: (dim: Int, points: Int)?
            if config.diffusion.hasTextData {
                guard let dim = Int(try index.stringAttribute("text_latent_dim") ?? "") else {
                    throw DataError("\(directory)/index.h5 has no text_latent_dim: not a checkpoint of a diffuser with text flows")
                }
                textData = (dim, config.diffusion.textPoints)
            }
            diffuser = VersatileDiffuser(config.diffusion.model, textData: textData, seed: 0)
            let arena = ParameterArena(diffuser)
            let store = CheckpointStore(runDirectory: r.diffusion, communicator: SingleProcess(), say: { _ in })
            _ = try store.load(directory, into: CheckpointTensor.parameterViews(arena, group: r.useEMA ? "ema" : "params"),
                               expectedKind: VersatileTrainer.kind)
            encoders = try FrozenContextEncoders.load(r.contextEncoders, communicator: SingleProcess())
            let wanted = try index.stringAttribute("context_encoders") ?? ""
            guard encoders.identity == wanted else {
                throw DataError("\(directory) was trained with context encoders \(wanted), but --context-encoders \(r.contextEncoders) is \(encoders.identity)")
            }
            autoencoder = try FrozenAutoencoder.load(r.autoencoder, communicator: SingleProcess())
            let latents = try index.stringAttribute("autoencoder") ?? ""
            guard autoencoder.identity == latents else {
                throw DataError("\(directory) was trained on latents of autoencoder \(latents), but --autoencoder \(r.autoencoder) is \(autoencoder.identity)")
            }
            scaleFactor = Double(try index.stringAttribute("scale_factor") ?? "") ?? 1
            self.directory = directory
        }

        /// Throws unless the checkpoint trained a flow with this context (and data type).
        func requireFlow(_ context: Modality, data: Modality = .image, for option: String) throws {
            let trained = stage.flows.map(\.flow), wanted = Flow(data: data, context: context)
            guard trained.contains(wanted) else {
                throw SamplingError(description: "\(directory) has no \(wanted) flow (it trained "
                                    + trained.map(\.description).joined(separator: ", ") + "): \(option) needs one")
            }
        }
    }

    static func run(_ r: SampleStage.Request, directory: String, say: (String) -> Void) throws {
        let m = try Loaded(r, directory: directory)
        guard r.classes == nil, r.task == nil, r.inputs.isEmpty, r.masks.isEmpty else {
            throw SamplingError(description: "\(directory) is a multi-flow diffuser: it takes --prompt, --image-variation, --from-test, or --prompt "
                                + "with --image and --mix")
        }
        guard r.count >= 1 else { throw SamplingError(description: "--count must be positive, got \(r.count)") }
        let sampling = m.stage.sampling(r.sampler, steps: r.steps, eta: r.eta, guidance: r.guidance, seed: r.seed)
        let sampler = try VersatileSampler(diffuser: m.diffuser, encoders: m.encoders.model, stage: m.stage, sampling: sampling)
        if !r.captionImages.isEmpty || !r.textVariations.isEmpty {
            return try runText(r, m, sampler: sampler, say: say)
        }
        let e = m.encoders.config.contextEncoders.model
        var prompts = r.prompts
        if let file = r.promptsFile { prompts += try SampleStage.readPrompts(file) }

        // The rows: what each conditions on, and the image a variation row starts from.
        let request: VersatileSampler.Request, sources: Tensor?, labels: [Int]?
        if !r.images.isEmpty || r.mix != nil {
            try m.requireFlow(.text, for: "--image with --mix")
            try m.requireFlow(.image, for: "--image with --mix")
            guard let mix = r.mix, (0...1).contains(mix) else { throw SamplingError(description: "dual guidance needs --mix in [0, 1] (the image context's weight)") }
            guard r.images.count == prompts.count, r.imageVariations.isEmpty, r.fromTest == nil else {
                throw SamplingError(description: "dual guidance takes one --image for each --prompt (\(prompts.count) prompt(s), \(r.images.count) image(s)), "
                                    + "without --image-variation or --from-test")
            }
            let x = try readImages(r.images, side: e.imageSize, channels: e.inChannels, role: "--image")
            (sources, labels) = (x, nil)
            request = .dual(prompts.repeatingRows(r.count), x.repeatingRows(r.count), mix: mix)
        } else if !r.imageVariations.isEmpty || r.fromTest != nil {
            try m.requireFlow(.image, for: r.fromTest != nil ? "--from-test" : "--image-variation")
            guard prompts.isEmpty, r.imageVariations.isEmpty || r.fromTest == nil else {
                throw SamplingError(description: "give --image-variation F.png or --from-test N, without --prompt (for dual guidance use --image and --mix)")
            }
            if let n = r.fromTest {
                let split = try DatasetSplit.open(m.autoencoder.config.data.path, split: .test)
                guard n >= 1 && n <= split.count else { throw SamplingError(description: "--from-test must be in 1...\(split.count) (the test split), got \(n)") }
                let batcher = try ImageBatcher(split: split, resolution: e.imageSize, flip: false, seed: 0)
                let x = try batcher.images(Array(0..<n), epoch: nil)
                let known = batcher.labels(Array(0..<n))
                (sources, labels) = (x, known.allSatisfy { $0 >= 0 } ? known : nil)
            } else {
                (sources, labels) = (try readImages(r.imageVariations, side: e.imageSize, channels: e.inChannels, role: "--image-variation"), nil)
            }
            request = .image(sources!.repeatingRows(r.count))
        } else {
            try m.requireFlow(.text, for: "--prompt")
            let rows = prompts.isEmpty ? m.stage.sampling.prompts : prompts
            guard !rows.isEmpty else { throw SamplingError(description: "\(directory): give --prompt TEXT, --image-variation F.png, or --from-test N") }
            for text in rows where m.encoders.model.tokenizer.encode(text).truncated {
                say("sample: the prompt '\(text)' is longer than \(m.encoders.model.tokenizer.maxLength) tokens and is cut")
            }
            (sources, labels, prompts) = (nil, nil, rows)
            request = .text(rows.repeatingRows(r.count))
        }
        let contexts = sampler.contexts(request), flow = request.flow
        let rows = contexts.count / r.count
        say("sample: \(contexts.count) samples, \(rows) row(s), \(flow) flow\(r.mix != nil ? String(format: " (mix %.2f)", r.mix!) : "") from "
            + "\(directory) (\(r.useEMA ? "EMA" : "trained") weights), \(sampling.sampler) \(sampling.steps) steps, eta \(sampling.eta), "
            + "guidance \(sampling.guidance), seed \(sampling.seed)")
        let start = Date()
        let latents = sampler.sample(contexts, rows: 0..<contexts.count)
        let images = LatentSampler.decode(latents, scaleFactor: m.scaleFactor, autoencoder: m.autoencoder.model)
        say(String(format: "sample: %.1f s (%.2f samples/s)", Date().timeIntervalSince(start), Double(contexts.count) / Date().timeIntervalSince(start)))
        var distance: Double?
        if let sources {   // how far results are from the images they started from
            let x = sources.repeatingRows(r.count)
            var total = 0.0
            for i in 0..<x.count { total += Double(abs(images.pointer[i] - x.pointer[i])) }
            distance = total / Double(x.count) / 2
            say(String(format: "sample: mean |result − input image| %.4f per pixel (0…1 scale)", distance!))
        }
        if let out = r.out {
            try VersatileSampler.writeGrid(images, perRow: r.count, sources: sources, to: out)
            say("wrote \(out)")
        }
        if let path = r.imagesOut {
            try SampleStage.writeHDF5(path, doing: "write the samples") { f in
                try f.write("images", shape: SampleStage.nchwShape(images), SampleStage.nchw(images), chunkRows: 256)
                let index = (0..<contexts.count).map { Int64($0 / r.count) }
                try f.write("input_index", shape: [index.count], index)
                if let sources { try f.write("inputs", shape: SampleStage.nchwShape(sources), SampleStage.nchw(sources), chunkRows: 256) }
                if let labels { try f.write("labels", shape: [index.count], index.map { Int64(labels[Int($0)]) }) }
                if !prompts.isEmpty { try f.writeStrings("prompts", prompts.repeatingRows(r.count)) }
                try f.setAttribute("flow", flow)
                if let mix = r.mix { try f.setAttribute("mix", String(mix)) }
                if let distance { try f.setAttribute("mean_abs_distance_to_input", String(distance)) }
            }
            say("wrote \(path)")
        }
        if let dir = r.latentsOut {   // with the prompt of each text or dual sample
            let conditions = prompts.isEmpty ? [Condition](repeating: .none, count: contexts.count) : prompts.repeatingRows(r.count).map(Condition.init(caption:))
            try SampleStage.writeLatents(latents, conditions: conditions, scaleFactor: m.scaleFactor, autoencoder: m.autoencoder.identity,
                                         factor: m.autoencoder.config.autoencoder.model.factor, source: directory, to: dir)
            say("wrote \(dir)")
        }
    }

    /// Captions of images (image→text) or variations of captions (text→text): printed, and
    /// written as JSON lines to `--captions-out`.
    static func runText(_ r: SampleStage.Request, _ m: Loaded, sampler: VersatileSampler, say: (String) -> Void) throws {
        guard r.captionImages.isEmpty || r.textVariations.isEmpty, r.prompts.isEmpty, r.imageVariations.isEmpty, r.images.isEmpty,
              r.mix == nil, r.fromTest == nil else {
            throw SamplingError(description: "give --caption-image F.png or --text-variation TEXT, without other inputs")
        }
        let captioning = !r.captionImages.isEmpty
        try m.requireFlow(captioning ? .image : .text, data: .text, for: captioning ? "--caption-image" : "--text-variation")
        if let empty = r.textVariations.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            throw SamplingError(description: "--text-variation \(empty + 1) is empty: give a caption to vary (the empty caption is the null context)")
        }
        let index = try HDF5File.open("\(m.directory)/index.h5")
        let vae = try FrozenTextAutoencoder.load(r.textAutoencoder, communicator: SingleProcess())
        let wanted = try index.stringAttribute("text_autoencoder") ?? ""
        guard vae.identity == wanted else {
            throw DataError("\(m.directory) was trained on text latents of \(wanted), but --text-autoencoder \(r.textAutoencoder) is \(vae.identity)")
        }
        let scale = Double(try index.stringAttribute("text_scale_factor") ?? "") ?? 1
        let e = m.encoders.config.contextEncoders.model
        let inputs = captioning ? r.captionImages : r.textVariations
        let request: VersatileSampler.Request = captioning
            ? .image(try readImages(r.captionImages, side: e.imageSize, channels: e.inChannels, role: "--caption-image").repeatingRows(r.count))
            : .text(r.textVariations.repeatingRows(r.count))
        let contexts = sampler.contexts(request), flow = Flow(data: .text, context: captioning ? .image : .text)
        say("sample: \(contexts.count) captions, \(flow) flow from \(m.directory) (\(r.useEMA ? "EMA" : "trained") weights), "
            + "\(sampler.sampler.sampling.sampler) \(sampler.sampler.sampling.steps) steps, guidance \(sampler.sampler.sampling.guidance), "
            + "seed \(sampler.sampler.sampling.seed), decoded by \(vae.checkpoint)")
        let latents = sampler.sample(contexts, rows: 0..<contexts.count, data: .text)
        let captions = TextFlowData.decode(latents, vae: vae, scaleFactor: scale, seed: sampler.sampler.sampling.seed)
        for (i, c) in captions.enumerated() { say("\(inputs[i / r.count]) → \(c)") }
        if let path = r.captionsOut {
            let lines = captions.enumerated().map { i, c in jsonLine(["flow": flow.name, "input": inputs[i / r.count], "input_index": i / r.count, "caption": c]) }
            do { try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8) } catch {
                throw DataError(FileSystem.describe(error, path: path, doing: "write the captions"))
            }
            say("wrote \(path)")
        }
    }

    /// Image files of exactly side × side with the encoder's channels, as [N, R, R, C] in [−1, 1].
    static func readImages(_ paths: [String], side: Int, channels: Int, role: String) throws -> Tensor {
        let x = Tensor(uninitialized: [paths.count, side, side, channels]), per = side * side * channels
        for (i, path) in paths.enumerated() {
            let image = try ImageInputs.read(path, side: side, channels: channels, role: "\(role) image (the image encoder's input)")
            for (j, v) in image.pixels.enumerated() { x.pointer[i * per + j] = Float(v) / 127.5 - 1 }
        }
        return x
    }
}
