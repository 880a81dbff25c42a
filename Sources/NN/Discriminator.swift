import TensorEngine

/// BatchNorm's running statistics (`running_mean`, `running_var`,
/// `num_batches_tracked`), kept as PyTorch keeps them in training mode so that the
/// module's state matches CompVis's: each forward that tracks folds its batch's
/// mean and unbiased variance in with momentum 0.1. They are state, not parameters:
/// the optimizer never sees them, and training never reads them (the discriminator
/// always normalises with the batch's statistics).
public final class RunningStatistics {
    public let channels: Int
    /// [mean (C), variance (C), batches tracked (1)], in one block.
    public let storage: UnsafeMutablePointer<Float>
    public var mean: UnsafeMutablePointer<Float> { storage }
    public var variance: UnsafeMutablePointer<Float> { storage + channels }
    public var batchesTracked: UnsafeMutablePointer<Float> { storage + 2 * channels }
    public static let momentum = 0.1

    init(channels: Int) {
        self.channels = channels
        storage = .allocate(capacity: 2 * channels + 1)
        storage.initialize(repeating: 0, count: channels)
        variance.initialize(repeating: 1, count: channels)
        batchesTracked.initialize(to: 0)
    }
    deinit { storage.deallocate() }

    /// Folds in the per-channel statistics of x [N, H, W, C].
    func track(_ x: Tensor) {
        let c = channels, n = x.count / c
        guard n > 1 else { return }
        var sum = [Double](repeating: 0, count: c), squares = sum
        let p = x.pointer
        for i in 0..<n { for k in 0..<c { let v = Double(p[i * c + k]); sum[k] += v; squares[k] += v * v } }
        let m = Self.momentum
        for k in 0..<c {
            let mu = sum[k] / Double(n), unbiased = max(squares[k] - Double(n) * mu * mu, 0) / Double(n - 1)
            mean[k] = Float((1 - m) * Double(mean[k]) + m * mu)
            variance[k] = Float((1 - m) * Double(variance[k]) + m * unbiased)
        }
        batchesTracked.pointee += 1
    }
}

/// A tensor of module state that is not a parameter, under its CompVis key.
public struct StateTensor {
    public let key: String
    public let shape: [Int]
    public let pointer: UnsafeMutablePointer<Float>
    /// Stored by PyTorch as int64 (`num_batches_tracked`).
    public let isCount: Bool

    public init(key: String, shape: [Int], pointer: UnsafeMutablePointer<Float>, isCount: Bool) {
        (self.key, self.shape, self.pointer, self.isCount) = (key, shape, pointer, isCount)
    }

    /// The same buffer under `prefix` + its key.
    public func prefixed(_ prefix: String) -> StateTensor { StateTensor(key: prefix + key, shape: shape, pointer: pointer, isCount: isCount) }
}

/// BatchNorm2d in training mode over NHWC: each channel normalised over (N, H, W)
/// with the batch's biased variance, computed as a GroupNorm of the batch viewed
/// as one sample [1, N·H·W, 1, C] with one group per channel. The running
/// statistics are tracked beside it but never used to normalise.
public final class BatchNorm2D: Module {
    public let weight: Tensor
    public let bias: Tensor
    public let statistics: RunningStatistics

    public init(_ channels: Int) {
        weight = Tensor(shape: [channels], repeating: 1, requiresGrad: true)
        bias = Tensor(zeros: [channels], requiresGrad: true)
        statistics = RunningStatistics(channels: channels)
    }

    public func callAsFunction(_ x: Tensor, tracking: Bool = true) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        if tracking { statistics.track(x) }
        return groupNorm(x.reshaped([1, n * h * w, 1, c]), groups: c, weight: weight, bias: bias, eps: 1e-5).reshaped(x.shape)
    }

    /// The running statistics under `prefix` (`main.3.running_mean`, ...).
    func buffers(_ prefix: String) -> [StateTensor] {
        let s = statistics, c = s.channels
        return [StateTensor(key: prefix + "running_mean", shape: [c], pointer: s.mean, isCount: false),
                StateTensor(key: prefix + "running_var", shape: [c], pointer: s.variance, isCount: false),
                StateTensor(key: prefix + "num_batches_tracked", shape: [], pointer: s.batchesTracked, isCount: true)]
    }
}

/// The PatchGAN discriminator of pix2pix as CompVis uses it (NLayerDiscriminator,
/// `main.*` keys): 4×4 convs, stride 2 then 1, LeakyReLU(0.2), BatchNorm after all
/// but the first; one logit per patch. Weights N(0, 0.02), BatchNorm weights N(1, 0.02).
public final class NLayerDiscriminator: Module {
    /// main.0, main.2, main.5, ...: the convs; main.3, main.6, ...: the norms.
    let convs: [Conv2D]
    let norms: [BatchNorm2D]
    /// LeakyReLU's negative slope (0.2 in pix2pix).
    let slope: Float

    /// In nn.Sequential order: conv at 0, LeakyReLU at 1, then conv, BatchNorm,
    /// LeakyReLU per layer, and the last conv.
    override public var explicitChildren: [(String, Any)]? {
        var out: [(String, Any)] = [("main.0", convs[0])]
        var index = 2
        for (conv, norm) in zip(convs.dropFirst(), norms) {
            out += [("main.\(index)", conv), ("main.\(index + 1)", norm)]
            index += 3
        }
        out.append(("main.\(index)", convs.last!))
        return out
    }

    public init(inChannels: Int, channels ndf: Int = 64, layers: Int = 3, slope: Float = 0.2, _ initializer: ParameterInitializer) {
        self.slope = slope
        var convs = [Conv2D(inChannels, ndf, kernel: 4, stride: 2, padding: 1, initializer)]
        var norms: [BatchNorm2D] = []
        var previous = 1
        for n in 1...layers {
            let mult = min(1 << n, 8)
            convs.append(Conv2D(ndf * previous, ndf * mult, kernel: 4, stride: n < layers ? 2 : 1, padding: 1, bias: false, initializer))
            norms.append(BatchNorm2D(ndf * mult))
            previous = mult
        }
        convs.append(Conv2D(ndf * previous, 1, kernel: 4, stride: 1, padding: 1, initializer))
        for conv in convs { conv.weight.pointer.update(from: initializer.normal(conv.weight.shape, std: 0.02).pointer, count: conv.weight.count) }
        for norm in norms { norm.weight.pointer.update(from: initializer.normal(norm.weight.shape, std: 0.02).adding(1).pointer, count: norm.weight.count) }
        for conv in convs { conv.bias?.pointer.update(repeating: 0, count: conv.bias!.count) }
        (self.convs, self.norms) = (convs, norms)
    }

    /// x [N, R, R, C] → patch logits [N, r, r, 1]. With `tracking`, the norms'
    /// running statistics take in this batch, as a PyTorch forward in training mode does.
    public func callAsFunction(_ x: Tensor, tracking: Bool = true) -> Tensor {
        var h = leakyReLU(convs[0](x), slope: slope)
        for (conv, norm) in zip(convs.dropFirst(), norms) { h = leakyReLU(norm(conv(h), tracking: tracking), slope: slope) }
        return convs.last!(h)
    }

    /// The norms' running statistics, under their keys in `main`.
    public var buffers: [StateTensor] {
        zip(norms.indices, norms).flatMap { i, norm in norm.buffers("main.\(3 * i + 3).") }
    }
}
