import Foundation
import NN
import TensorEngine

/// The loss parts of one micro-batch (per-sample means, before the 1/accumulate scale).
public struct AutoencoderLosses: Sendable {
    public var total = 0.0
    public var reconstruction = 0.0
    public var kl = 0.0
    /// With the discriminator on: −mean D(x̂), the adaptive weight, and D's hinge loss.
    public var generator: Double?, adaptiveWeight: Double?, discriminator: Double?
}

/// What stage 1 trains: the autoencoder and, with the GAN loss on, CompVis's
/// `loss.discriminator`, in one module (so one arena, one all-reduce, one Adam
/// over both; the discriminator's moments stay zero until it trains).
public final class AutoencoderWithLoss: Module {
    public let autoencoder: AutoencoderKL
    public let loss: DiscriminatorLoss?
    override public class var keys: [String: String] { ["autoencoder": ""] }
    /// The discriminator's backward (its hinge loss) runs after the autoencoder's.
    override public var childrenInGradientOrder: [(String, Any)]? { [("", autoencoder), ("loss", loss as Any)] }

    init(_ autoencoder: AutoencoderKL, _ loss: DiscriminatorLoss?) { (self.autoencoder, self.loss) = (autoencoder, loss) }
}

public final class DiscriminatorLoss: Module {
    public let discriminator: NLayerDiscriminator
    init(_ d: NLayerDiscriminator) { discriminator = d }
}

/// Stage 1's model, its parameter arena and optimizer, and one training step:
/// loss = rec(x, D(z)) + kl_weight · KL(q(z|x) ‖ N(0, I)), z = μ + σ·ε, with rec the
/// L1 (or squared) error summed over pixels and both terms averaged over the batch
/// (CompVis LPIPSWithDiscriminator without the perceptual term and learned logvar);
/// from `disc_start` on, + λ·(−mean D(x̂)) with the adaptive λ, and D trains on the
/// hinge loss.
public final class AutoencoderStep {
    public let config: AutoencoderStageConfig
    public let model: AutoencoderKL
    public let trained: AutoencoderWithLoss
    public let arena: ParameterArena
    public let optimizer: Adam

    public init(config: AutoencoderStageConfig, seed: Int) {
        self.config = config
        model = AutoencoderKL(config.model, seed: UInt64(bitPattern: Int64(seed)))
        let disc = config.loss.discEnabled
            ? DiscriminatorLoss(NLayerDiscriminator(inChannels: config.model.outCh, channels: config.loss.discChannels,
                                                    layers: config.loss.discLayers, ParameterInitializer(seed: UInt64(bitPattern: Int64(seed)) &+ 1)))
            : nil
        trained = AutoencoderWithLoss(model, disc)
        arena = ParameterArena(trained)
        optimizer = Adam(arena, config.optimizer.adam)
    }

    public var discriminator: NLayerDiscriminator? { trained.loss?.discriminator }

    /// The discriminator's BatchNorm running statistics, under CompVis's keys.
    public var buffers: [StateTensor] {
        (discriminator?.buffers ?? []).map { $0.prefixed("loss.discriminator.") }
    }

    /// Forward and backward of one micro-batch, adding `scale` × its gradients to
    /// the arena. `noise` is ε for the posterior sample, [N, h, w, embed_dim].
    public func accumulate(_ x: Tensor, noise: Tensor, scale: Float, step: Int) -> AutoencoderLosses {
        let posterior = model.encode(x)
        let (lastInput, reconstruction) = model.decodeWithLastInput(posterior.sample(noise: noise))
        let pixels = Float(x.count / x.shape[0])
        func nll(_ r: Tensor) -> Tensor {
            (config.loss.reconstruction == "l2" ? mseLoss(r, x) : l1Loss(r, x)).scaled(by: pixels)
        }
        let rec = nll(reconstruction)
        let kl = posterior.kl().mean()
        var total = rec + kl.scaled(by: Float(config.loss.klWeight))
        var losses = AutoencoderLosses(total: Double(total.item), reconstruction: Double(rec.item), kl: Double(kl.item))
        guard let d = discriminator, step >= config.loss.discStart else {
            total.scaled(by: scale).backward()
            return losses
        }
        // Generator: D frozen, its score of the reconstruction weighted adaptively.
        setTrainable(d, false)
        let weight = adaptiveWeight(reconstruction: reconstruction, lastInput: lastInput, nll: nll, discriminator: d)
        let g = d(reconstruction).mean().scaled(by: -1)
        total = total + g.scaled(by: weight)
        (losses.total, losses.generator, losses.adaptiveWeight) = (Double(total.item), Double(g.item), Double(weight))
        total.scaled(by: scale).backward()
        // Discriminator: hinge loss on real images and detached reconstructions.
        setTrainable(d, true)
        let real = relu(d(x).scaled(by: -1).adding(1)).mean(), fake = relu(d(reconstruction.detached()).adding(1)).mean()
        let hinge = (real + fake).scaled(by: 0.5)
        losses.discriminator = Double(hinge.item)
        hinge.scaled(by: scale).backward()
        return losses
    }

    /// λ = ‖∇_W nll‖ / (‖∇_W g‖ + 1e-4), clamped to [0, 1e4], × disc_weight, with W
    /// the decoder's last conv (LDM's calculate_adaptive_weight). Each gradient is
    /// found on a tape of its own: the loss's gradient with respect to the
    /// reconstruction, then the last conv's weight gradient from it.
    func adaptiveWeight(reconstruction: Tensor, lastInput: Tensor, nll: (Tensor) -> Tensor, discriminator d: NLayerDiscriminator) -> Float {
        let w = model.decoder.lastLayerWeight
        func lastLayerGradientNorm(_ loss: (Tensor) -> Tensor) -> Double {
            withSeparateTape {
                let leaf = reconstruction.detached()
                leaf.requiresGrad = true
                loss(leaf).backward()
                let weight = w.detached(), input = lastInput.detached()
                weight.requiresGrad = true
                conv2d(input, weight: weight, padding: Padding2D(1)).backward(gradient: leaf.grad!)
                return weight.grad!.scalars.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
            }
        }
        let nllNorm = lastLayerGradientNorm(nll)
        let gNorm = lastLayerGradientNorm { d($0, tracking: false).mean().scaled(by: -1) }   // a second look, not a batch
        return Float(min(max(nllNorm / (gNorm + 1e-4), 0), 1e4) * config.loss.discWeight)
    }

    private func setTrainable(_ module: Module, _ on: Bool) { for p in module.parameters() { p.requiresGrad = on } }
}
