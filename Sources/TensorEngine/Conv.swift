import Foundation

/// 2-D convolution over NHWC activations with OIHW weights, through oneDNN.

/// Zero padding of a 2-D convolution; asymmetric for the LDM downsample (0,1,0,1).
public struct Padding2D: Hashable, Sendable {
    public var top, bottom, left, right: Int
    public init(top: Int, bottom: Int, left: Int, right: Int) {
        (self.top, self.bottom, self.left, self.right) = (top, bottom, left, right)
    }
    /// The same padding on every side.
    public init(_ p: Int) { self.init(top: p, bottom: p, left: p, right: p) }
}

/// Which activation layout a oneDNN conv kernel runs in (`EngineOptions.convLayout`).
/// Tensors are NHWC either way; `.auto` lets oneDNN pick for wide 3×3 convs (blocked
/// nChw8c on AVX2, up to 30% faster) and reorders around the call.
public enum ConvLayout: String, Codable, CaseIterable, Sendable { case auto, nhwc }

/// y[n, oh, ow, o] = b[o] + Σ_{c, i, j} x[n, oh·s + i − top, ow·s + j − left, c] · w[o, c, i, j].
/// x: [N, H, W, C]; weight: [O, C, kH, kW]; bias: [O]; result [N, H', W', O].
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1,
                   padding: Padding2D = Padding2D(0)) -> Tensor {
    precondition(x.rank == 4 && weight.rank == 4 && weight.shape[1] == x.shape[3],
                 "conv2d: input \(x.shape) (NHWC) and weight \(weight.shape) (OIHW) do not match")
    precondition(bias == nil || bias!.shape == [weight.shape[0]],
                 "conv2d: bias \(bias!.shape) does not match weight \(weight.shape)")
    precondition(stride >= 1 && [padding.top, padding.bottom, padding.left, padding.right].allSatisfy { $0 >= 0 },
                 "conv2d: stride \(stride) and padding \(padding) must be positive / non-negative")
    let g = ConvGeometry(n: x.shape[0], h: x.shape[1], w: x.shape[2], c: x.shape[3],
                         o: weight.shape[0], kh: weight.shape[2], kw: weight.shape[3], stride: stride,
                         padTop: padding.top, padBottom: padding.bottom, padLeft: padding.left, padRight: padding.right,
                         hasBias: bias != nil)
    precondition(g.outH >= 1 && g.outW >= 1, "conv2d: input \(x.shape) too small for weight \(weight.shape) with \(padding)")
    let kernels = convKernels(g)
    let y = Tensor(uninitialized: [g.n, g.outH, g.outW, g.o])
    kernels.forward(x: x.pointer, w: weight.pointer, b: bias?.pointer, y: y.pointer)
    if Tape.needsGrad(x, weight, bias) {
        let weightsNeedGrad = weight.requiresGrad || bias?.requiresGrad == true
        let input = weightsNeedGrad && kernels.readsInputForWeights ? SavedInput(x) : nil   // else only x's gradient slot is kept
        Tape.record(y, inputs: [x, weight, bias]) { [slot = x.slot] dy in
            if slot.requiresGrad {
                slot.withGradient { dx, accumulate in
                    if accumulate {
                        let tmp = Tensor(uninitialized: slot.shape)
                        kernels.backwardData(dy: dy.pointer, w: weight.pointer, dx: tmp.pointer)
                        addInPlace(dx, tmp.pointer, tmp.count)
                    } else {
                        kernels.backwardData(dy: dy.pointer, w: weight.pointer, dx: dx)
                    }
                }
            }
            if weightsNeedGrad {
                let dw = Tensor(uninitialized: weight.shape)
                let db = bias.map { Tensor(uninitialized: $0.shape) }
                let x = input?.values()
                kernels.backwardWeights(x: x?.pointer, dy: dy.pointer, dw: dw.pointer, db: db?.pointer)
                withExtendedLifetime(x) {}
                weight.accumulateGradient(dw)
                if let bias, let db { bias.accumulateGradient(db) }
            }
        }
    }
    return y
}

/// An input a backward reads: the tensor, or how to make it again when its producer
/// left a way (`Tensor.remake`), so that the tensor itself is freed after the forward.
enum SavedInput {
    case kept(Tensor)
    case remade(() -> Tensor)

    init(_ x: Tensor) { self = x.remake.map { .remade($0) } ?? .kept(x) }

    func values() -> Tensor {
        switch self {
        case let .kept(x): x
        case let .remade(make): make()
        }
    }
}

/// The three passes of a convolution for one geometry.
protocol ConvKernels {
    /// y = conv(x, w) + b.
    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>?,
                 y: UnsafeMutablePointer<Float>)
    /// dx = conv_transpose(dy, w) (overwrites dx).
    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>)
    /// dw = Σ x ⋆ dy in OIHW and db = Σ dy (both overwritten). x is nil when
    /// `readsInputForWeights` is false.
    func backwardWeights(x: UnsafeMutablePointer<Float>?, dy: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                         db: UnsafeMutablePointer<Float>?)
    var readsInputForWeights: Bool { get }
}

extension ConvKernels {
    /// Whether the weight gradient reads the input x (so the conv's backward keeps x),
    /// asked after the forward: Winograd may keep its transform of x instead.
    var readsInputForWeights: Bool { true }

    /// The input a weight gradient reads.
    func input(_ x: UnsafeMutablePointer<Float>?) -> UnsafeMutablePointer<Float> {
        guard let x else { preconditionFailure("conv backward: the weight gradient of \(Self.self) needs its input") }
        return x
    }
}

/// The kernels of a geometry, a rule on the geometry alone (so every rank and every
/// run computes the same way): Winograd, the direct single-output kernel or the
/// window gemm where they apply (NarrowConv.swift), oneDNN's convolution otherwise.
func convKernels(_ g: ConvGeometry) -> ConvKernels {
    if let winograd = winogradKernels(g, Engine.options.winograd) { return winograd }
    if SingleOutputConv.applies(to: g) { return SingleOutputConv(g: g) }
    if WindowGemmConv.applies(to: g) { return WindowGemmConv(g: g) }
    return DNNL.conv(g)
}

/// d[i] += s[i] for i in 0..<n, split across threads.
func addInPlace(_ d: UnsafeMutablePointer<Float>, _ s: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelFor(n, grain: 65536) { r in for i in r { d[i] += s[i] } }
}

extension Tensor {
    /// Adds `g` (same shape) into this tensor's gradient, taking it over when there is none.
    func accumulateGradient(_ g: Tensor) { slot.accumulate(g) }
}
