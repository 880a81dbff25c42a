import Diffusion
import Distributed
import Foundation
import NN
import Storage

/// Which CompVis module an exported file is a state_dict of.
public enum ExportLayout: String, CaseIterable, Sendable {
    /// `ldm.models.autoencoder.AutoencoderKL` or `VQModel`: `encoder.*`, `decoder.*`,
    /// `quant_conv.*`, (VQ) `quantize.embedding.weight`, `post_quant_conv.*`, and with a
    /// discriminator `loss.discriminator.*` and `loss.logvar`.
    case autoencoder
    /// The trainable part of stage 2 alone: `model.diffusion_model.*` (the UNet) and
    /// `cond_stage_model.*` (τθ).
    case diffusion
    /// `ldm.models.diffusion.ddpm.LatentDiffusion`: the diffusion layout plus
    /// `first_stage_model.*` (the autoencoder the latents came from) and the noise
    /// schedule's buffers (`betas`, `alphas_cumprod`, ...).
    case latentDiffusion = "latent_diffusion"
}

/// Weights in the ecosystem's format: safetensors files whose keys are CompVis's, to
/// PyTorch and back. Export reads a finished (or running) stage's checkpoint; import
/// fills a fresh stage's model before its first step.
public enum Interchange {
    static let firstStagePrefix = "first_stage_model."
    /// The buffers CompVis's DDPM registers for its schedule (all persistent).
    public static let scheduleKeys = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                               "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                               "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]

    public struct Exported {
        public let file: String
        public let modelConfig: String
        public let layout: ExportLayout
        public let tensors: Int
        public let bytes: Int
    }

    /// Writes `out` (and the CompVis model config beside it, `out` with `.yaml`) from the
    /// checkpoint at `run` (a run directory's newest valid checkpoint, or a step directory).
    /// `ema`: a diffusion model's EMA weights in place of the trained ones. `autoencoder`:
    /// the stage-1 run of a latent_diffusion export (checked to be the one the latents came from).
    public static func export(run: String, layout asked: ExportLayout?, ema: Bool, autoencoder: String, out: String) throws -> Exported {
        let directory = try CheckpointStore.resolve(run)
        let index = try HDF5File.open("\(directory)/index.h5")
        let kind = try index.stringAttribute("model") ?? "?"
        let config = try TrainedDiffusion.config(directory)
        let step = Int(try index.attribute("step", as: Int64.self) ?? 0)
        var metadata = ["format": "pt", "swiftldm_model": kind, "step": String(step), "ema": String(ema),
                        "config": try index.stringAttribute("config") ?? "", "checkpoint": try CheckpointStore.identity(of: directory)]
        var tensors: [SafeTensor]
        let layout: ExportLayout
        switch kind {
        case AutoencoderKind.kl.checkpointKind, AutoencoderKind.vq.checkpointKind:
            layout = asked ?? .autoencoder
            guard layout == .autoencoder else { throw DataError("\(directory) is an autoencoder: it exports as --layout autoencoder only") }
            guard !ema else { throw DataError("\(directory) is an autoencoder, which keeps no EMA weights: leave out --ema") }
            let trained = try loadAutoencoder(directory, config: config)
            tensors = safeTensors(trained.trained.stateTensors() + trained.buffers)
            if trained.discriminator != nil && config.autoencoder.kind == .kl {   // CompVis's learned output log-variance; SwiftLDM's loss holds it at 0
                tensors.append(SafeTensor(key: "loss.logvar", shape: [], values: [0]))
            }
        case "latent-diffusion":
            layout = asked ?? .latentDiffusion
            guard layout != .autoencoder else { throw DataError("\(directory) is a diffusion model: export it as diffusion or latent_diffusion") }
            if ema { guard index.exists("ema") else { throw DataError("\(directory) has no EMA weights") } }
            let trained = try TrainedDiffusion.load(directory, useEMA: ema)
            tensors = safeTensors(trained.model.stateTensors())
            metadata["scale_factor"] = String(trained.scaleFactor)
            metadata["autoencoder"] = trained.autoencoderIdentity
            if let t = trained.model.tokenizer {
                metadata["tokenizer"] = t.json
                tensors += unusedLogits(config.diffusion)
            }
            if layout == .latentDiffusion {
                let ae = try trained.autoencoder(autoencoder, communicator: SingleProcess())
                tensors = safeTensors(ae.model.stateTensors(prefix: firstStagePrefix)) + tensors + scheduleBuffers(config.diffusion.schedule.schedule)
            }
        default:
            throw DataError("\(directory) holds a '\(kind)' model: export takes autoencoder and single-flow diffusion runs")
        }
        metadata["layout"] = layout.rawValue
        try SafeTensorsFile.write(out, tensors: tensors, metadata: metadata)
        let yamlPath = (out as NSString).deletingPathExtension + ".yaml"
        let yaml = CompVisModelConfig.yaml(layout: layout, config: config, scaleFactor: Double(metadata["scale_factor"] ?? "") ?? 1)
        do { try yaml.write(toFile: yamlPath, atomically: true, encoding: .utf8) } catch {
            throw DataError(FileSystem.describe(error, path: yamlPath, doing: "write the model config"))
        }
        return Exported(file: out, modelConfig: yamlPath, layout: layout, tensors: tensors.count,
                        bytes: tensors.reduce(0) { $0 + $1.values.count * $1.dtype.bytes })
    }

    /// CompVis's TransformerEmbedder keeps x-transformers' `to_logits` head although it only
    /// ever returns embeddings: zeros here, so that a strict load fits (import skips them).
    static let unusedLogitsKey = "cond_stage_model.transformer.to_logits."
    static func unusedLogits(_ s: DiffusionStageConfig) -> [SafeTensor] {
        let (vocabulary, width) = (s.conditioning.text.vocabSize, s.model.contextDim)
        return [SafeTensor(key: unusedLogitsKey + "weight", shape: [vocabulary, width], values: [Float](repeating: 0, count: vocabulary * width)),
                SafeTensor(key: unusedLogitsKey + "bias", shape: [vocabulary], values: [Float](repeating: 0, count: vocabulary))]
    }

    /// A stage-1 checkpoint's autoencoder with its discriminator and running statistics.
    public static func loadAutoencoder(_ directory: String, config: Config) throws -> AutoencoderStep {
        let trained = AutoencoderStep(config: config.autoencoder, seed: 0)
        let store = CheckpointStore(runDirectory: directory, communicator: SingleProcess(), say: { _ in })
        _ = try store.load(directory, into: CheckpointTensor.parameterViews(trained.arena),
                           optional: CheckpointTensor.bufferViews(trained.buffers), expectedKind: config.autoencoder.kind.checkpointKind)
        return trained
    }

    static func safeTensors(_ state: [StateTensor]) -> [SafeTensor] {
        state.map { s in
            SafeTensor(key: s.key, shape: s.shape, dtype: s.isCount ? .i64 : .f32,
                       values: Array(UnsafeBufferPointer(start: s.pointer, count: s.shape.reduce(1, *))))
        }
    }

    /// CompVis DDPM.register_schedule's buffers for `schedule` (v_posterior 0), in float32.
    static func scheduleBuffers(_ schedule: NoiseSchedule) -> [SafeTensor] {
        let betas = schedule.betas, abar = schedule.alphasCumprod, n = betas.count
        let previous: [Double] = [1.0] + abar.dropLast()
        var posterior = [Double](repeating: 0, count: n), coefficient1 = posterior, coefficient2 = posterior
        for t in 0..<n {
            let (beta, a, p) = (betas[t], abar[t], previous[t])
            posterior[t] = beta * (1 - p) / (1 - a)
            coefficient1[t] = beta * p.squareRoot() / (1 - a)
            coefficient2[t] = (1 - p) * (1 - beta).squareRoot() / (1 - a)
        }
        var columns: [[Double]] = [betas, abar, previous]
        columns.append(abar.map { $0.squareRoot() })
        columns.append(abar.map { (1 - $0).squareRoot() })
        columns.append(abar.map { log(1 - $0) })
        columns.append(abar.map { (1 / $0).squareRoot() })
        columns.append(abar.map { (1 / $0 - 1).squareRoot() })
        columns += [posterior, posterior.map { log(max($0, 1e-20)) }, coefficient1, coefficient2]
        return zip(scheduleKeys, columns).map { SafeTensor(key: $0, shape: [n], values: $1.map(Float.init)) }
    }

    // MARK: Import

    /// What an import filled and left.
    public struct Imported: Sendable {
        public var loaded = 0
        /// Tensors of the model the file lacks (kept at their initialisation).
        public var missing: [String] = []
        /// Tensors of the file the model lacks.
        public var unexpected: [String] = []
        /// Tensors of the file that belong to other parts of a LatentDiffusion (not read).
        public var otherParts = 0
        /// The file's `__metadata__`.
        public var metadata: [String: String] = [:]
    }

    /// The parts of a file that a stage does not read: for the autoencoder, all but
    /// `first_stage_model.*` of a LatentDiffusion file, and the loss's `logvar` and LPIPS
    /// weights; for stage 2, `first_stage_model.*`, the schedule's buffers and τθ's unused
    /// `to_logits`.
    public enum Target: Sendable {
        case autoencoder, diffusion
        /// LPIPS: torchvision's VGG16 `features.*` and the heads; a whole VGG16's
        /// `classifier.*` and the LPIPS package's `scaling_layer.*` are not read.
        case perceptual
    }

    /// Fills `state` (CompVis keys) from the safetensors file at `path`. Every missing,
    /// unexpected or mis-shaped tensor is named in one error, unless `partial`, which
    /// loads what matches by key and shape and reports the rest.
    public static func load(_ path: String, into state: [StateTensor], target: Target, partial: Bool) throws -> Imported {
        let file = try SafeTensorsFile.open(path)
        var keys = Set(file.entries.keys)
        var result = Imported()
        result.metadata = file.metadata
        var prefix = ""
        switch target {
        case .autoencoder where keys.contains { $0.hasPrefix(firstStagePrefix) }:
            prefix = firstStagePrefix
            let others = keys.filter { !$0.hasPrefix(firstStagePrefix) }
            (result.otherParts, keys) = (others.count, keys.subtracting(others))
        case .autoencoder:   // the loss's learned log-variance and LPIPS weights, which SwiftLDM's loss has not
            let others = keys.filter { $0.hasPrefix("loss.") && !$0.hasPrefix("loss.discriminator.") }
            (result.otherParts, keys) = (others.count, keys.subtracting(others))
        case .diffusion:
            let others = keys.filter { $0.hasPrefix(firstStagePrefix) || scheduleKeys.contains($0) || $0.hasPrefix(unusedLogitsKey) }
            (result.otherParts, keys) = (others.count, keys.subtracting(others))
        case .perceptual:
            let others = keys.filter { $0.hasPrefix("classifier.") || $0.hasPrefix("scaling_layer.") }
            (result.otherParts, keys) = (others.count, keys.subtracting(others))
        }
        var misShaped: [String] = [], fills: [(StateTensor, String)] = []
        for s in state {
            let key = prefix + s.key
            guard let entry = file.entries[key] else { result.missing.append(s.key); continue }
            keys.remove(key)
            guard entry.count == s.shape.reduce(1, *), entry.shape == s.shape || (s.shape.isEmpty && entry.shape == [1]) else {
                misShaped.append("'\(key)' is \(entry.shape), the model's is \(s.shape)")
                continue
            }
            fills.append((s, key))
        }
        result.unexpected = keys.sorted()
        if !misShaped.isEmpty || (!partial && !(result.missing.isEmpty && result.unexpected.isEmpty)) {
            var parts: [String] = []
            if !misShaped.isEmpty { parts.append("\(misShaped.count) of another shape: " + list(misShaped)) }
            if !partial && !result.missing.isEmpty { parts.append("\(result.missing.count) missing: " + list(result.missing.map { prefix + $0 })) }
            if !partial && !result.unexpected.isEmpty { parts.append("\(result.unexpected.count) unexpected: " + list(result.unexpected)) }
            throw DataError("\(path) does not fit this model (\(state.count) tensors; is it a file for another model or config?): "
                            + parts.joined(separator: "; ") + (misShaped.isEmpty ? "; --init-from-partial loads the tensors that match" : ""))
        }
        for (s, key) in fills {
            guard let values = try file.values(key) else { continue }
            s.pointer.update(from: values, count: values.count)
            result.loaded += 1
        }
        return result
    }

    /// LPIPS's weights from `path`: a safetensors file, or an HDF5 file whose datasets are
    /// named by the same keys (`features.0.weight`, `lin0.model.1.weight`), each checked
    /// for presence and shape.
    public static func loadPerceptual(_ path: String, into lpips: LPIPS) throws {
        let state = lpips.stateTensors()
        if path.hasSuffix(".safetensors") {
            _ = try load(path, into: state, target: .perceptual, partial: false)
            return
        }
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch {
            throw DataError("\(path): not a safetensors or HDF5 file of LPIPS weights (\(error))")
        }
        let missing = state.filter { !file.exists($0.key) }.map(\.key)
        guard missing.isEmpty else {
            throw DataError("\(path) is not a file of LPIPS weights: \(missing.count) missing: " + list(missing))
        }
        for s in state {
            let shape = try file.shape(of: s.key)
            guard shape == s.shape else { throw DataError("\(path): '\(s.key)' is \(shape), LPIPS's is \(s.shape)") }
            try file.read(s.key, into: UnsafeMutableBufferPointer(start: s.pointer, count: s.shape.reduce(1, *)))
        }
    }

    static func list(_ names: [String]) -> String {
        names.prefix(8).joined(separator: ", ") + (names.count > 8 ? ", … (\(names.count - 8) more)" : "")
    }
}
