import TensorEngine

/// The LPIPS perceptual distance (Zhang et al. 2018, the "vgg" variant CompVis trains
/// its first stages with): both images, in [−1, 1], are shifted and scaled per channel
/// (LPIPS's ScalingLayer; a gray image is repeated to RGB), run through VGG16's
/// convolutions, and at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 each feature
/// vector is divided by its length over channels; the squared differences are weighted
/// by a learned 1×1 head per layer (no bias), averaged over space and summed over the
/// layers: one distance per sample. Gradients flow to both images; the weights are
/// frozen, and come from a file (torchvision's `features.N.*` names, LPIPS's
/// `linK.model.1.weight` heads).
public final class LPIPS: Module {
    /// VGG16's convolutions at their index in torchvision's `features` Sequential.
    let convs: [(index: Int, conv: Conv2D)]
    let heads: [Conv2D]
    /// After which convolutions (by position in `convs`) a layer is tapped, and after
    /// which it is max-pooled.
    static let taps: Set<Int> = [1, 3, 6, 9, 12]
    static let pools: Set<Int> = [1, 3, 6, 9]
    /// VGG16's convolution widths (configuration D).
    public static let widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    static let shift: [Float] = [-0.030, -0.088, -0.188], scale: [Float] = [0.458, 0.448, 0.450]

    override public var explicitChildren: [(String, Any)]? {
        convs.map { ("features.\($0.index)", $0.conv as Any) } + heads.enumerated().map { ("lin\($0.offset).model.1", $0.element as Any) }
    }

    /// Random weights (PyTorch's default initialisation), frozen: for tests; real use loads a file over them.
    public init(seed: UInt64) {
        let initializer = ParameterInitializer(seed: seed)
        var convs: [(Int, Conv2D)] = [], index = 0, inChannels = 3
        for (i, width) in Self.widths.enumerated() {
            convs.append((index, Conv2D(inChannels, width, kernel: 3, initializer)))
            inChannels = width
            index += Self.pools.contains(i) ? 3 : 2   // conv, ReLU (, max pool)
        }
        self.convs = convs
        heads = Self.taps.sorted().map { Conv2D(Self.widths[$0], 1, kernel: 1, bias: false, initializer) }
        super.init()
        for p in parameters() { p.requiresGrad = false }
    }

    /// The tapped features of x [N, R, R, 1 or 3] in [−1, 1], each unit-normalised over channels.
    func features(_ x: Tensor) -> [Tensor] {
        let rgb = x.shape[3] == 1 ? concat([x, x, x], axis: 3) : x
        var h = (rgb - Tensor(shape: [1, 1, 1, 3], scalars: Self.shift)) / Tensor(shape: [1, 1, 1, 3], scalars: Self.scale)
        var out: [Tensor] = []
        for (i, layer) in convs.enumerated() {
            h = relu(layer.conv(h))
            if Self.taps.contains(i) { out.append(h / sqrt((h * h).sum(axes: [3], keepDims: true)).adding(1e-10)) }
            if Self.pools.contains(i) { h = maxPool2x2(h) }
        }
        return out
    }

    /// The distance between x0 and x1 [N, R, R, C] (R divisible by 16) per sample: [N].
    public func callAsFunction(_ x0: Tensor, _ x1: Tensor) -> Tensor {
        precondition(x0.shape == x1.shape && x0.shape[1] % 16 == 0, "LPIPS: images \(x0.shape) and \(x1.shape) (sides divisible by 16)")
        let (f0, f1) = (features(x0), features(x1))
        var total: Tensor?
        for (k, head) in heads.enumerated() {
            let d = f0[k] - f1[k]
            let layer = head(d * d).mean(axes: [1, 2, 3])
            total = total.map { $0 + layer } ?? layer
        }
        return total!
    }
}
