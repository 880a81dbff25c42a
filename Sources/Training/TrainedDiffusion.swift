import Distributed
import Foundation
import NN
import Storage

/// A stage-2 checkpoint loaded to sample or evaluate: its config, the model with its
/// EMA (or trained) weights and tokenizer, the latents' scale factor and the identity
/// of the autoencoder they came from.
public struct TrainedDiffusion {
    public let directory: String
    public let config: Config
    public let model: LatentDiffusionModel
    public let scaleFactor: Double
    /// The identity of the autoencoder whose latents it was trained on.
    public let autoencoderIdentity: String
    public var stage: DiffusionStageConfig { config.diffusion }

    /// `path`: a run directory (its newest valid checkpoint) or a step directory.
    public static func load(_ path: String, useEMA: Bool) throws -> TrainedDiffusion {
        let directory = try CheckpointStore.resolve(path)
        let index = try HDF5File.open("\(directory)/index.h5")
        let config = try Self.config(directory)
        let stage = config.diffusion
        let tokenizer = stage.conditioning.kind == .text ? try readTokenizer(index, directory: directory, fits: stage.conditioning.text) : nil
        let model = LatentDiffusionModel(stage.model, conditioning: stage.conditioning, tokenizer: tokenizer, seed: 0)
        let arena = ParameterArena(model)
        let store = CheckpointStore(runDirectory: path, communicator: SingleProcess(), say: { _ in })
        _ = try store.load(directory, into: CheckpointTensor.parameterViews(arena, group: useEMA ? "ema" : "params"), expectedKind: "latent-diffusion")
        return TrainedDiffusion(directory: directory, config: config, model: model,
                                scaleFactor: Double(try index.stringAttribute("scale_factor") ?? "") ?? 1,
                                autoencoderIdentity: try index.stringAttribute("autoencoder") ?? "")
    }

    /// The config a checkpoint (step directory) was trained with.
    public static func config(_ directory: String) throws -> Config {
        let index = try HDF5File.open("\(directory)/index.h5")
        return try ConfigLoader.load(yamlText: try index.stringAttribute("config") ?? "", source: directory)
    }

    /// The autoencoder at `path`, checked to be the one the model's latents came from.
    public func autoencoder(_ path: String, communicator: Communicator) throws -> FrozenAutoencoder {
        let ae = try FrozenAutoencoder.load(path, config: config, communicator: communicator)
        guard ae.identity == autoencoderIdentity else {
            throw DataError("\(directory) was trained on latents of autoencoder \(autoencoderIdentity), but --autoencoder \(path) is \(ae.identity)")
        }
        return ae
    }

    /// A sampler with the config's sampling settings and any of them given on the
    /// command line; DDPM without --steps takes all T steps.
    public func sampler(_ kind: SamplerKind? = nil, steps: Int? = nil, eta: Double? = nil, guidance: Double? = nil, seed: Int? = nil)
        throws -> LatentSampler {
        try LatentSampler(model: model, stage: stage, sampling: stage.sampling(kind, steps: steps, eta: eta, guidance: guidance, seed: seed))
    }

    /// The image task the model was trained for, with this autoencoder (nil: generation).
    public func imageTask(_ ae: FrozenAutoencoder) -> ImageTask? {
        stage.task.kind == .generation ? nil
            : ImageTask(stage.task, autoencoder: ae.config.autoencoder.model, encoder: ae.model, scaleFactor: scaleFactor)
    }
}
