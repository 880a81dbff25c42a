/// Element type of a tensor. Float32 today; kept explicit so bf16 storage can join.
public enum DType: Sendable { case float32 }

/// An n-dimensional float32 array, contiguous and row-major, with an optional
/// gradient. Layout convention: activations are NHWC (channels last, [N, H, W, C]),
/// convolution weights are OIHW ([out, in, kH, kW], PyTorch's layout), linear
/// weights are [out, in].
public final class Tensor {
    public let shape: [Int]
    public private(set) var storage: TensorStorage
    public var dtype: DType { .float32 }
    /// The gradient side of this tensor, apart from its values: the tape and the
    /// backward closures of ops that do not read this tensor's values hold only this,
    /// so an activation no backward needs is freed as soon as the forward drops it.
    public let slot: GradientSlot
    /// Whether backward() computes a gradient for this tensor.
    public var requiresGrad: Bool {
        get { slot.requiresGrad }
        set { slot.requiresGrad = newValue }
    }
    /// The accumulated gradient (same shape), or nil before the first backward.
    public var grad: Tensor? {
        get { slot.grad }
        set { slot.grad = newValue }
    }
    /// Set on a leaf (a parameter) to be told when backward has finished its
    /// gradient: `Tape.onGradientReady` receives this index.
    public var readyIndex: Int? {
        get { slot.readyIndex }
        set { slot.readyIndex = newValue }
    }
    /// Recorded ops that use this watched leaf and have not run backward yet (0 when
    /// backward starts: the forward did not use it).
    public var pendingUses: Int { slot.pendingUses }
    /// How to make these values again from what the producing op keeps for its own
    /// backward (a norm's input and statistics, an upsampling's source), set when
    /// that is cheap and `engine.conv_input` is `recompute`: a conv's backward then
    /// keeps this instead of the tensor (`SavedInput`).
    var remake: (() -> Tensor)?

    /// A tensor over existing storage; `storage.count` must equal the shape's size.
    public init(shape: [Int], storage: TensorStorage, requiresGrad: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(storage.count == shape.reduce(1, *),
                     "storage of \(storage.count) floats does not fit shape \(shape)")
        self.shape = shape
        self.storage = storage
        self.slot = GradientSlot(shape: shape, requiresGrad: requiresGrad)
    }

    /// Uninitialised memory: every element must be written before it is read.
    public convenience init(uninitialized shape: [Int]) {
        self.init(shape: shape, storage: TensorStorage(count: shape.reduce(1, *)))
    }

    public convenience init(shape: [Int], repeating value: Float, requiresGrad: Bool = false) {
        self.init(uninitialized: shape)
        pointer.update(repeating: value, count: count)
        self.requiresGrad = requiresGrad
    }

    public convenience init(zeros shape: [Int], requiresGrad: Bool = false) {
        self.init(shape: shape, repeating: 0, requiresGrad: requiresGrad)
    }

    public convenience init(shape: [Int], scalars: [Float], requiresGrad: Bool = false) {
        precondition(scalars.count == shape.reduce(1, *),
                     "\(scalars.count) scalars do not fill shape \(shape)")
        self.init(uninitialized: shape)
        scalars.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: count) }
        self.requiresGrad = requiresGrad
    }

    /// A scalar (shape []).
    public convenience init(_ value: Float) {
        self.init(shape: [], scalars: [value])
    }

    public var count: Int { storage.count }
    public var rank: Int { shape.count }
    public var pointer: UnsafeMutablePointer<Float> { storage.base }
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// The single element of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "item needs one element, shape is \(shape)")
        return pointer[0]
    }

    /// A copy of the data with no gradient history.
    public func detached() -> Tensor {
        let t = Tensor(uninitialized: shape)
        t.pointer.update(from: pointer, count: count)
        return t
    }

    /// Moves this tensor's values into `newStorage` (same size) and keeps them there,
    /// e.g. a parameter joining its model's arena. Tensors that shared the old
    /// storage (reshapes) keep the old copy.
    public func moveStorage(to newStorage: TensorStorage) {
        precondition(newStorage.count == count, "moveStorage: \(newStorage.count) floats for shape \(shape)")
        newStorage.base.update(from: pointer, count: count)
        storage = newStorage
    }

    /// Sets the gradient to nil (the next backward allocates and overwrites it).
    public func zeroGrad() {
        if let g = grad, g.storage.isView {
            g.pointer.update(repeating: 0, count: g.count)   // a view into an arena: keep it
        } else {
            grad = nil
        }
    }
}

/// A tensor's gradient and its bookkeeping on the tape, without its values.
public final class GradientSlot {
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
    public var requiresGrad: Bool
    public var grad: Tensor?
    public var readyIndex: Int?
    public internal(set) var pendingUses = 0

    init(shape: [Int], requiresGrad: Bool) {
        self.shape = shape
        self.requiresGrad = requiresGrad
    }

    /// Adds `g` (same shape) into the gradient, taking `g` over when there is none:
    /// `g` must not be another slot's gradient.
    func accumulate(_ g: Tensor) {
        guard requiresGrad else { return }
        if let existing = grad {
            addInPlace(existing.pointer, g.pointer, existing.count)
        } else {
            grad = g
        }
    }

    /// Gives `body` the gradient buffer. `accumulate` is false when the buffer is
    /// fresh (uninitialised): the kernel must overwrite it, not add to it.
    @inline(__always)
    func withGradient(_ body: (_ dSelf: UnsafeMutablePointer<Float>, _ accumulate: Bool) -> Void) {
        if let g = grad {
            body(g.pointer, true)
        } else {
            let g = Tensor(uninitialized: shape)
            body(g.pointer, false)
            grad = g
        }
    }

    /// Like `withGradient`, but a fresh buffer is zeroed first, for kernels that
    /// only know how to accumulate (broadcast reductions, scatter).
    @inline(__always)
    func withZeroedGradient(_ body: (_ dSelf: UnsafeMutablePointer<Float>) -> Void) {
        if grad == nil { grad = Tensor(zeros: shape) }
        body(grad!.pointer)
    }
}

/// Contiguous row-major strides of a shape.
@inline(__always)
func contiguousStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var s = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = s
        s *= shape[i]
    }
    return strides
}

/// Normalises a possibly negative axis.
@inline(__always)
func normalizedAxis(_ axis: Int, rank: Int) -> Int {
    let a = axis < 0 ? axis + rank : axis
    precondition(a >= 0 && a < rank, "axis \(axis) out of range for rank \(rank)")
    return a
}
