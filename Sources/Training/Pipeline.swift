import Datasets
import Distributed
import Foundation
import Storage
import TensorEngine

/// `ldm-train` with no arguments: prepare → autoencoder → encode → diffusion →
/// sample, each stage skipped when its output is complete (the sample stage is
/// cheap and always runs), so running it again resumes where it stopped instead
/// of starting over.
public enum Pipeline {
    /// Where the pipeline keeps each stage's output.
    public struct Layout: Sendable {
        public var autoencoderRun: String
        public var diffusionRun: String
        /// A multi-flow diffuser's context encoders, and its text VAE (text flows).
        public var contextEncodersRun: String
        public var textAutoencoderRun: String
        /// Runs under `checkpoints/autoencoder`, `checkpoints/context-encoders`,
        /// `checkpoints/text-autoencoder` and `checkpoints/<diffusion>`.
        public init(checkpoints: String = "Checkpoints", diffusion: String = "diffusion") {
            autoencoderRun = checkpoints + "/autoencoder"
            contextEncodersRun = checkpoints + "/context-encoders"
            textAutoencoderRun = checkpoints + "/text-autoencoder"
            diffusionRun = checkpoints + "/" + diffusion
        }
    }

    public static func run(config: Config, layout: Layout = Layout(), communicator comm: Communicator) throws {
        let say: (String) -> Void = { if comm.isRoot { print($0); fflush(stdout) } }
        // 1. prepare, unless the dataset file is there in the current format (every rank takes part)
        var problem = ""
        if (try? DatasetSplit.open(config.data.path, split: .train)) == nil {
            say("== prepare: \(config.data.source) → \(config.data.path)")
            var options = Prepare.Options(source: config.data.source, out: config.data.path, preparation: config.data.preparation)
            (options.testFraction, options.seed) = (config.data.testFraction, config.seed)
            say("   " + (try Prepare.run(options, communicator: comm)).description)
        } else {
            say("== prepare: \(config.data.path) is there, skipped")
        }
        guard config.pipeline.lastStage > .prepare else { return }
        // 2. autoencoder
        /// Trains a stage into `run` unless it is complete at its configured steps.
        func train(_ name: String, _ run: String, steps: Int, _ make: (RunOptions) throws -> Void) throws {
            if let done = completedStep(run), done >= steps { return say("== \(name): complete at step \(done) in \(run), skipped") }
            say("== \(name) → \(run)")
            try make(RunOptions(runDirectory: run))
            BufferPool.shared.trim()   // the next stage's tensors have other sizes: give the cached ones back
        }
        try train("autoencoder", layout.autoencoderRun, steps: config.autoencoder.training.steps) {
            try AutoencoderTrainer(config: config, options: $0, communicator: comm).run()
        }
        guard config.pipeline.lastStage > .autoencoder else { return say("== done (pipeline.last_stage: autoencoder): \(layout.autoencoderRun)") }
        // 3. encode, unless the cache holds this autoencoder's latents of the whole split
        let identity = try CheckpointStore.identity(of: try CheckpointStore.resolve(layout.autoencoderRun))
        let cache = try? LatentCache.info(config.diffusion.latents)
        let wanted = config.data.trainCount(try DatasetSplit.open(config.data.path, split: .train).count)
        if let cache, cache.autoencoder == identity, cache.count == wanted {
            say("== encode: \(config.diffusion.latents) holds the latents of \(identity), skipped")
        } else {
            say("== encode → \(config.diffusion.latents)")
            try EncodeStage.run(autoencoder: layout.autoencoderRun, data: config.data.path, out: config.diffusion.latents, limit: wanted,
                                communicator: comm)
            BufferPool.shared.trim()   // 256-image encoder batches: gigabytes the diffusion stage would never reuse
        }
        guard config.pipeline.lastStage > .encode else { return say("== done (pipeline.last_stage: encode): \(config.diffusion.latents)") }
        // 3b. a multi-flow diffuser's context encoders, trained on the dataset's image–caption pairs
        let multiFlow = config.diffusion.diffuser == .multiFlow
        if multiFlow {
            try train("context encoders", layout.contextEncodersRun, steps: config.contextEncoders.training.steps) {
                try ContextEncoderTrainer(config: config, options: $0, communicator: comm).run()
            }
        }
        guard config.pipeline.lastStage > .contextEncoders else {
            return say("== done (pipeline.last_stage: context_encoders): \(multiFlow ? layout.contextEncodersRun : "nothing to do for a single-flow model")")
        }
        // 3c. text flows: the text VAE on the captions, then the text latent cache of the same rows
        let textData = config.diffusion.hasTextData
        if textData {
            try train("text autoencoder", layout.textAutoencoderRun, steps: config.textAutoencoder.training.steps) {
                try TextAutoencoderTrainer(config: config, options: $0, communicator: comm).run()
            }
            let vae = try CheckpointStore.identity(of: try CheckpointStore.resolve(layout.textAutoencoderRun))
            if let cache = try? LatentCache.info(config.diffusion.textLatents), cache.autoencoder == vae, cache.count == wanted {
                say("== encode text: \(config.diffusion.textLatents) holds the text latents of \(vae), skipped")
            } else {
                say("== encode text → \(config.diffusion.textLatents)")
                try TextEncodeStage.run(textAutoencoder: layout.textAutoencoderRun, data: config.data.path, out: config.diffusion.textLatents,
                                        limit: wanted, communicator: comm)
            }
        }
        guard config.pipeline.lastStage > .textAutoencoder else {
            return say("== done (pipeline.last_stage: text_autoencoder): \(textData ? config.diffusion.textLatents : "no text data flows")")
        }
        // 4. diffusion, never continued or kept on latents of another autoencoder
        if let stale = try trainedOnOtherLatents(layout.diffusionRun, autoencoder: identity) {
            throw DataError("\(layout.diffusionRun) was trained on latents of autoencoder \(stale), but \(layout.autoencoderRun) is now \(identity) "
                            + "(trained further or again) and \(config.diffusion.latents) holds its latents: move \(layout.diffusionRun) aside "
                            + "to train stage 2 again on them, or restore that autoencoder")
        }
        if let done = completedStep(layout.diffusionRun), done >= config.diffusion.training.steps {
            say("== diffusion: complete at step \(done) in \(layout.diffusionRun), skipped")
        } else {
            say("== diffusion → \(layout.diffusionRun)")
            let options = RunOptions(runDirectory: layout.diffusionRun)
            if multiFlow {
                try VersatileTrainer(config: config, options: options, autoencoder: layout.autoencoderRun, contextEncoders: layout.contextEncodersRun,
                                     textAutoencoder: textData ? layout.textAutoencoderRun : nil, communicator: comm).run()
            } else {
                try DiffusionTrainer(config: config, options: options, autoencoder: layout.autoencoderRun, communicator: comm).run()
            }
        }
        guard config.pipeline.lastStage > .diffusion else { return say("== done (pipeline.last_stage: diffusion): \(layout.diffusionRun)") }
        // 5. sample: a grid and the images with their conditions, from the EMA weights (rank 0)
        let grid = "\(layout.diffusionRun)/samples.png", images = "\(layout.diffusionRun)/samples.h5"
        if comm.isRoot {
            var request = SampleStage.Request(diffusion: layout.diffusionRun, autoencoder: layout.autoencoderRun)
            (request.count, request.out, request.imagesOut) = (config.diffusion.sampling.perClass, grid, images)
            request.contextEncoders = layout.contextEncodersRun
            var requests = [request]
            if config.diffusion.task.kind != .generation {   // an image task: one result for each of the first test images
                (requests[0].fromTest, requests[0].count) = (config.diffusion.sampling.perClass, 1)
            } else if multiFlow {   // each flow: the prompts' grid, and variations of the first test images
                let flows = config.diffusion.flows.filter { $0.data == .image }.map(\.context)
                var variations = request
                (variations.fromTest, variations.out, variations.imagesOut) = (8, "\(layout.diffusionRun)/variations.png", "\(layout.diffusionRun)/variations.h5")
                requests = (flows.contains(.text) ? [request] : []) + (flows.contains(.image) ? [variations] : [])
            }
            let textToImage = config.diffusion.flows.contains { $0.data == .image && $0.context == .text }
            if !requests.isEmpty && config.diffusion.task.kind == .generation && config.diffusion.sampling.prompts.isEmpty
                && (multiFlow ? textToImage : config.diffusion.conditioning.kind == .text) {
                do {   // the training grid's captions
                    let captions = try LatentCache.captions(config.diffusion.latents) ?? []
                    requests[0].prompts = gridRows(config.diffusion, captions: captions, kind: .text).map(\.caption)
                } catch { problem = "\(error)" }
            }
            for r in requests where problem.isEmpty {
                say("== sample → \(r.out ?? ""), \(r.imagesOut ?? "")")
                do { try SampleStage.run(r) } catch { problem = "\(error)" }
            }
        }
        try waitForRoot(comm)
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw SamplingError(description: problem) }
        say("== done: autoencoder in \(layout.autoencoderRun), latents in \(config.diffusion.latents), diffusion model and samples in \(layout.diffusionRun)")
    }

    /// The other ranks wait, asleep and with no collective deadline, while rank 0
    /// works alone for as long as it takes (the sample stage): it is computing, not hung.
    static func waitForRoot(_ comm: Communicator) throws {
        let mpi = comm as? MPICommunicator, deadline = mpi?.deadline
        mpi?.deadline = .infinity
        defer { if let deadline { mpi?.deadline = deadline } }
        try comm.sleepingBarrier()
    }

    /// The autoencoder a diffusion run's newest checkpoint was trained on, when it is not
    /// `identity` (nil: no checkpoint yet, or the same one).
    static func trainedOnOtherLatents(_ run: String, autoencoder identity: String) throws -> String? {
        guard let newest = try? CheckpointStore.resolve(run) else { return nil }
        let recorded = try HDF5File.open("\(newest)/index.h5").stringAttribute("autoencoder") ?? ""
        return recorded == identity ? nil : recorded
    }

    /// The step recorded in a run's `complete` marker (written when a stage finishes), if any.
    public static func completedStep(_ runDirectory: String) -> Int? {
        guard let text = try? String(contentsOfFile: runDirectory + "/complete", encoding: .utf8),
              let data = text.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return object["step"] as? Int
    }

    /// Marks a stage's run directory complete at `step`, with its final metrics.
    static func markComplete(_ runDirectory: String, step: Int, metrics: [String: Double]) throws {
        var object: [String: Any] = metrics
        object["step"] = step
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try data.write(to: URL(fileURLWithPath: runDirectory + "/complete"), options: .atomic)
    }
}
