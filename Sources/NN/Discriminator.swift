import TensorEngine

/// BatchNorm2d in training mode over NHWC: each channel normalised over (N, H, W)
/// with the batch's biased variance. The discriminator only ever runs in training,
/// so no running statistics are kept. Computed as a GroupNorm of the batch viewed
/// as one sample [1, N·H·W, 1, C] with one group per channel.
public final class BatchNorm2D: Module {
    public let weight: Tensor
    public let bias: Tensor

    public init(_ channels: Int) {
        weight = Tensor(shape: [channels], repeating: 1, requiresGrad: true)
        bias = Tensor(zeros: [channels], requiresGrad: true)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        return groupNorm(x.reshaped([1, n * h * w, 1, c]), groups: c, weight: weight, bias: bias, eps: 1e-5).reshaped(x.shape)
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

    /// x [N, R, R, C] → patch logits [N, r, r, 1].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = leakyReLU(convs[0](x), slope: slope)
        for (conv, norm) in zip(convs.dropFirst(), norms) { h = leakyReLU(norm(conv(h)), slope: slope) }
        return convs.last!(h)
    }
}
