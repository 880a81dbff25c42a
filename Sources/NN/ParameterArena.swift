import TensorEngine

/// All parameters of a model in one flat buffer and all their gradients in another
/// (llm.c style), so zeroing, all-reducing, clipping and the optimizer step are
/// each one loop. Each parameter's storage and gradient become views into them.
///
/// Layout: parameters in the order backward finishes their gradients
/// (`Module.namedParametersInGradientOrder()`), so gradient buckets are contiguous
/// runs that complete one after another; each at a 16-float (64-byte) aligned
/// offset; the padding stays zero.
public final class ParameterArena {
    public struct Entry {
        public let key: String
        public let tensor: Tensor
        /// Offset in floats of this parameter inside the arenas.
        public let offset: Int
    }

    /// In layout order.
    public let entries: [Entry]
    /// The entries in declaration order (the order of the model's `namedParameters()`,
    /// which is CompVis's state_dict order).
    public let declarationOrder: [Entry]
    /// Every parameter value, [count].
    public let values: Tensor
    /// Every gradient, [count], zeroed by `zeroGradients()`.
    public let gradients: Tensor

    /// Moves `module`'s parameters into a new arena.
    public init(_ module: Module) {
        let layout = module.namedParametersInGradientOrder()
        var offsets: [Int] = []
        var total = 0
        for (_, t) in layout {
            offsets.append(total)
            total += (t.count + 15) / 16 * 16
        }
        values = Tensor(zeros: [total])
        gradients = Tensor(zeros: [total])
        var entries: [Entry] = []
        for ((key, t), offset) in zip(layout, offsets) {
            t.moveStorage(to: TensorStorage(viewing: values.pointer + offset, count: t.count, owner: values.storage))
            t.grad = Tensor(shape: t.shape, storage: TensorStorage(viewing: gradients.pointer + offset, count: t.count,
                                                                    owner: gradients.storage))
            t.requiresGrad = true
            entries.append(Entry(key: key, tensor: t, offset: offset))
        }
        self.entries = entries
        let byKey = Dictionary(entries.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        let declared = module.namedParameters()
        precondition(byKey.count == entries.count && declared.count == entries.count && declared.allSatisfy { byKey[$0.key] != nil },
                     "\(type(of: module)): the parameters in gradient order are not the declared ones")
        declarationOrder = declared.map { byKey[$0.key]! }
    }

    /// Number of floats in each arena (parameters plus alignment padding).
    public var count: Int { values.count }

    public func zeroGradients() { gradients.pointer.update(repeating: 0, count: count) }

    /// ‖gradients‖₂ over the whole model, accumulated in Double.
    public func gradientNorm() -> Double {
        let g = gradients.pointer
        var total = 0.0
        var i = 0
        while i < count {
            let end = min(count, i + 4096)
            var s: Float = 0
            for j in i..<end { s += g[j] * g[j] }
            total += Double(s)
            i = end
        }
        return total.squareRoot()
    }

    /// Multiplies every gradient by `s`.
    public func scaleGradients(by s: Float) {
        let g = gradients.pointer
        parallelFor(count, grain: 1 << 16) { r in for i in r { g[i] *= s } }
    }

    /// True when every gradient is finite.
    public func gradientsAreFinite() -> Bool {
        let g = gradients.pointer
        var bad: Float = 0
        for i in 0..<count { bad += g[i] * 0 }   // NaN·0 and Inf·0 are NaN; finite·0 is 0
        return bad == 0
    }
}
