import TensorEngine

/// Draws initial parameter values in construction order from one counter-based
/// stream, so a model built with the same seed has the same weights on every rank.
public final class ParameterInitializer {
    private let stream: RandomStream
    private var offset: UInt64 = 0

    public init(seed: UInt64) { stream = RandomStream(seed: seed, stream: 0x1A17) }

    /// U(−bound, bound), PyTorch's default for conv and linear layers with
    /// bound = 1/√fan_in (kaiming_uniform with a = √5; the bias uses the same bound).
    public func uniform(_ shape: [Int], bound: Float) -> Tensor {
        let t = Tensor.randomUniform(shape, stream: stream, offset: offset, low: -bound, high: bound)
        offset += UInt64(t.count)
        t.requiresGrad = true
        return t
    }

    /// N(0, std²), PyTorch's default for embeddings (std 1).
    public func normal(_ shape: [Int], std: Float = 1) -> Tensor {
        let t = Tensor.randomNormal(shape, stream: stream, offset: offset, std: std)
        offset += UInt64(t.count)
        t.requiresGrad = true
        return t
    }
}

func constant(_ shape: [Int], _ value: Float) -> Tensor { Tensor(shape: shape, repeating: value, requiresGrad: true) }

/// 2-D convolution, NHWC activations: weight [out, in, k, k], bias [out].
public final class Conv2D: Module {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int
    public let padding: Padding2D

    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1, padding: Int? = nil,
                bias: Bool = true, zeroInit: Bool = false, _ initializer: ParameterInitializer) {
        let bound = 1 / Float(inChannels * kernel * kernel).squareRoot()
        let shape = [outChannels, inChannels, kernel, kernel]
        weight = zeroInit ? constant(shape, 0) : initializer.uniform(shape, bound: bound)
        self.bias = bias ? (zeroInit ? constant([outChannels], 0) : initializer.uniform([outChannels], bound: bound)) : nil
        self.stride = stride
        self.padding = Padding2D(padding ?? kernel / 2)
    }

    /// x [N, H, W, in] → [N, H', W', out]; `padding` overrides the layer's own.
    public func callAsFunction(_ x: Tensor, padding: Padding2D? = nil) -> Tensor {
        conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding ?? self.padding)
    }
}

/// y = x·Wᵀ + b: weight [out, in], bias [out].
public final class Linear: Module {
    public let weight: Tensor
    public let bias: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, zeroInit: Bool = false, _ initializer: ParameterInitializer) {
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = zeroInit ? constant([outFeatures, inFeatures], 0) : initializer.uniform([outFeatures, inFeatures], bound: bound)
        self.bias = bias ? (zeroInit ? constant([outFeatures], 0) : initializer.uniform([outFeatures], bound: bound)) : nil
    }

    /// x [..., in] → [..., out].
    public func callAsFunction(_ x: Tensor) -> Tensor { linear(x, weight: weight, bias: bias) }
}

/// GroupNorm over NHWC activations (32 groups and eps 1e-6 in the LDM models).
public final class GroupNorm: Module {
    public let weight: Tensor
    public let bias: Tensor
    public let groups: Int
    public let eps: Float

    public init(_ channels: Int, groups: Int = 32, eps: Float = 1e-6) {
        precondition(channels % groups == 0, "GroupNorm: \(channels) channels do not split into \(groups) groups")
        weight = constant([channels], 1)
        bias = constant([channels], 0)
        (self.groups, self.eps) = (groups, eps)
    }

    /// The normalised x, passed through SiLU in the same pass when `thenSiLU`.
    public func callAsFunction(_ x: Tensor, thenSiLU: Bool = false) -> Tensor {
        groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps, thenSiLU: thenSiLU)
    }
}

/// LayerNorm over the last axis.
public final class LayerNorm: Module {
    public let weight: Tensor
    public let bias: Tensor
    public let eps: Float

    public init(_ features: Int, eps: Float = 1e-5) {
        weight = constant([features], 1)
        bias = constant([features], 0)
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, weight: weight, bias: bias, eps: eps) }
}

/// A lookup table [count, features].
public final class Embedding: Module {
    public let weight: Tensor

    /// Rows drawn from N(0, std²) (PyTorch's default: std 1).
    public init(_ count: Int, _ features: Int, _ initializer: ParameterInitializer, std: Float = 1) {
        weight = initializer.normal([count, features], std: std)
    }

    /// Rows for `indices` → [indices.count, features].
    public func callAsFunction(_ indices: [Int]) -> Tensor { embedding(weight, indices: indices) }
}
