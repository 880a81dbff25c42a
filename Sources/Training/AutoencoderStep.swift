import Foundation
import NN
import TensorEngine

/// The loss parts of one micro-batch (per-sample means, before the 1/accumulate scale).
public struct AutoencoderLosses: Sendable {
    public var total = 0.0
    public var reconstruction = 0.0
    public var kl = 0.0

    public static func + (a: Self, b: Self) -> Self {
        Self(total: a.total + b.total, reconstruction: a.reconstruction + b.reconstruction, kl: a.kl + b.kl)
    }
    public func scaled(by s: Double) -> Self { Self(total: total * s, reconstruction: reconstruction * s, kl: kl * s) }
}

/// Stage 1's model, its parameter arena and optimizer, and one training step:
/// loss = rec(x, D(z)) + kl_weight · KL(q(z|x) ‖ N(0, I)), z = μ + σ·ε, with rec the
/// L1 (or squared) error summed over pixels and both terms averaged over the batch
/// (CompVis LPIPSWithDiscriminator without the perceptual term).
public final class AutoencoderStep {
    public let config: AutoencoderStageConfig
    public let model: AutoencoderKL
    public let arena: ParameterArena
    public let optimizer: Adam

    public init(config: AutoencoderStageConfig, seed: Int) {
        self.config = config
        model = AutoencoderKL(config.model, seed: UInt64(bitPattern: Int64(seed)))
        arena = ParameterArena(model)
        optimizer = Adam(arena, config.optimizer.adam)
    }

    /// Forward and backward of one micro-batch, adding `scale` × its gradients to
    /// the arena. `noise` is ε for the posterior sample, [N, h, w, embed_dim].
    public func accumulate(_ x: Tensor, noise: Tensor, scale: Float, step: Int) -> AutoencoderLosses {
        let posterior = model.encode(x)
        let z = posterior.sample(noise: noise)
        let (lastInput, reconstruction) = model.decodeWithLastInput(z)
        let pixels = Float(x.count / x.shape[0])
        let rec = (config.loss.reconstruction == "l2" ? mseLoss(reconstruction, x) : l1Loss(reconstruction, x)).scaled(by: pixels)
        let kl = posterior.kl().mean()
        let total = rec + kl.scaled(by: Float(config.loss.klWeight))
        let losses = AutoencoderLosses(total: Double(total.item), reconstruction: Double(rec.item), kl: Double(kl.item))
        _ = lastInput
        total.scaled(by: scale).backward()
        return losses
    }
}
