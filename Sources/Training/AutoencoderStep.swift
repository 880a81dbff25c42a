import Foundation
import NN
import TensorEngine

/// The loss parts of one micro-batch (per-sample means, before the 1/accumulate scale).
public struct AutoencoderLosses {
    public var total = 0.0
    public var reconstruction = 0.0
    /// KL to N(0, I) (kind kl), or the quantiser's loss (kind vq).
    public var kl = 0.0
    public var codebook = 0.0
    /// Kind vq: exp of the entropy of the codes the micro-batch used.
    public var perplexity = 0.0
    /// LPIPS between the images and their reconstructions (with perceptual_weight > 0).
    public var perceptual = 0.0
    /// Kind vq: the pre-quantisation latents [N, h, w, d] (no gradient) and their codes.
    public var latents: Tensor?
    public var codes: [Int] = []
    /// With the discriminator on: −mean D(x̂), the adaptive weight, and D's hinge loss.
    public var generator: Double?, adaptiveWeight: Double?, discriminator: Double?
}

/// What stage 1 trains: the autoencoder and, with the GAN loss on, CompVis's
/// `loss.discriminator`, in one module (so one arena, one all-reduce, one Adam
/// over both; the discriminator's moments stay zero until it trains).
public final class AutoencoderWithLoss: Module {
    public let autoencoder: Autoencoder
    public let loss: DiscriminatorLoss?
    override public class var keys: [String: String] { ["autoencoder": ""] }
    /// The discriminator's backward (its hinge loss) runs after the autoencoder's.
    override public var childrenInGradientOrder: [(String, Any)]? { [("", autoencoder), ("loss", loss as Any)] }

    init(_ autoencoder: Autoencoder, _ loss: DiscriminatorLoss?) { (self.autoencoder, self.loss) = (autoencoder, loss) }
}

public final class DiscriminatorLoss: Module {
    public let discriminator: NLayerDiscriminator
    init(_ d: NLayerDiscriminator) { discriminator = d }
}

/// Stage 1's model, its parameter arena and optimizer, and one training step:
/// loss = rec(x, D(z)) + kl_weight · KL(q(z|x) ‖ N(0, I)), z = μ + σ·ε, with rec the
/// L1 (or squared) error summed over pixels and both terms averaged over the batch
/// (CompVis LPIPSWithDiscriminator without the perceptual term and learned logvar);
/// for a VQ first stage z is the quantised code and the quantiser's loss, weighted by
/// codebook_weight, takes the KL term's place (CompVis VQLPIPSWithDiscriminator);
/// from `disc_start` on, + λ·(−mean D(x̂)) with the adaptive λ, and D trains on the
/// hinge loss.
public final class AutoencoderStep {
    public let config: AutoencoderStageConfig
    public let model: Autoencoder
    public let trained: AutoencoderWithLoss
    public let arena: ParameterArena
    public let optimizer: Adam
    /// The frozen LPIPS network of the perceptual term (outside the arena: never trained).
    public let perceptual: LPIPS?

    /// `perceptual`: LPIPS with its weights, when loss.perceptual_weight > 0.
    public init(config: AutoencoderStageConfig, seed: Int, perceptual: LPIPS? = nil) {
        self.config = config
        self.perceptual = perceptual
        model = Autoencoder(config.model, kind: config.kind, seed: UInt64(bitPattern: Int64(seed)))
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
        let latent: Tensor, regulariser: Tensor
        var losses = AutoencoderLosses()
        if let quantize = model.quantize {
            let q = quantize(posterior.mean, beta: Float(config.loss.commitmentBeta))
            (latent, regulariser) = (q.quantized, q.loss.scaled(by: Float(config.loss.codebookWeight)))
            (losses.codebook, losses.perplexity) = (Double(q.loss.item), Self.perplexity(q.indices, codes: quantize.codes))
            (losses.latents, losses.codes) = (posterior.mean.detached(), q.indices)
        } else {
            let kl = posterior.kl().mean()
            (latent, regulariser) = (posterior.sample(noise: noise), kl.scaled(by: Float(config.loss.klWeight)))
            losses.kl = Double(kl.item)
        }
        let (lastInput, reconstruction) = model.decodeWithLastInput(latent, quantized: true)
        let pixels = Float(x.count / x.shape[0])
        let perceptualWeight = Float(config.loss.perceptualWeight)
        // Per pixel, CompVis adds the sample's LPIPS × perceptual_weight to the reconstruction error.
        func nllParts(_ r: Tensor) -> (loss: Tensor, perceptual: Tensor?) {
            let base = (config.loss.reconstruction == "l2" ? mseLoss(r, x) : l1Loss(r, x)).scaled(by: pixels)
            guard let lpips = perceptual, perceptualWeight > 0 else { return (base, nil) }
            let p = lpips(x, r).mean()
            return (base + p.scaled(by: perceptualWeight * pixels), p)
        }
        func nll(_ r: Tensor) -> Tensor { nllParts(r).loss }
        let (rec, lpips) = nllParts(reconstruction)
        losses.perceptual = lpips.map { Double($0.item) } ?? 0
        var total = rec + regulariser
        (losses.total, losses.reconstruction) = (Double(total.item), Double(rec.item))
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

    /// exp(−Σ p log p) over the frequencies of `indices` among `codes` codes.
    public static func perplexity(_ indices: [Int], codes: Int) -> Double {
        var counts = [Double](repeating: 0, count: codes)
        for i in indices { counts[i] += 1 }
        return perplexity(counts: counts)
    }

    /// exp(−Σ p log p) for code `counts`.
    public static func perplexity(counts: [Double]) -> Double {
        let n = counts.reduce(0, +)
        var entropy = 0.0
        for c in counts where c > 0 { entropy -= c / n * log(c / n) }
        return exp(entropy)
    }

    private func setTrainable(_ module: Module, _ on: Bool) { for p in module.parameters() { p.requiresGrad = on } }
}
