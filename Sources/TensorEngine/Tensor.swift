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
    /// Whether backward() computes a gradient for this tensor.
    public var requiresGrad: Bool
    /// The accumulated gradient (same shape), or nil before the first backward.
    public var grad: Tensor?
    /// True when this tensor was produced by a recorded op (not a leaf).
    var hasTapeEntry = false
    /// Set on a leaf (a parameter) to be told when backward has finished its
    /// gradient: `Tape.onGradientReady` receives this index.
    public var readyIndex: Int?
    /// Recorded ops that use this watched leaf and have not run backward yet (0 when
    /// backward starts: the forward did not use it).
    public internal(set) var pendingUses = 0

    /// A tensor over existing storage; `storage.count` must equal the shape's size.
    public init(shape: [Int], storage: TensorStorage, requiresGrad: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(storage.count == shape.reduce(1, *),
                     "storage of \(storage.count) floats does not fit shape \(shape)")
        self.shape = shape
        self.storage = storage
        self.requiresGrad = requiresGrad
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
