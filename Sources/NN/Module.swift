import TensorEngine

/// A layer or a model: a class whose stored properties hold its parameters
/// (`Tensor`) and its sub-modules (`Module`, arrays of them, optionals). The
/// parameters are found by walking those properties, and each gets a stable
/// hierarchical name equal to the CompVis state_dict key
/// (`encoder.down.1.block.0.nin_shortcut.weight`), so weights map one-to-one to
/// the PyTorch world and double as checkpoint keys.
///
/// A property's key is its name in snake_case (`ninShortcut` → `nin_shortcut`);
/// a module's `keys` override that where the PyTorch name does not follow the rule
/// (`block1` → `block_1`, a dotted path such as `inConv` → `in_layers.2`, or "" to
/// put a child's parameters directly under the parent's key). Array
/// elements are keyed by their index. Every `Tensor` property is a trainable parameter.
open class Module {
    public init() {}

    /// Property name → key, for the properties whose key is not their snake_case name.
    open class var keys: [String: String] { [:] }

    /// (key, child) pairs used instead of the stored properties, for modules whose
    /// PyTorch keys are positions in an nn.Sequential with gaps (`main.0`, `main.2`).
    open var explicitChildren: [(String, Any)]? { nil }

    /// (key, child) pairs in the order backward finishes their gradients, for a
    /// module whose forward does not use its children in declaration order (the
    /// decoder runs its `up` levels from the last). nil: reverse declaration order.
    open var childrenInGradientOrder: [(String, Any)]? { nil }

    /// Every parameter with its full key, in declaration order (depth first).
    public final func namedParameters() -> [(key: String, tensor: Tensor)] {
        var out: [(key: String, tensor: Tensor)] = []
        visit(self, prefix: "", inGradientOrder: false) { out.append(($0, $1)) }
        return out
    }

    /// Every parameter in the order backward finishes its gradient: declaration
    /// order reversed, except where a module's `childrenInGradientOrder` says otherwise. The
    /// parameter arena is laid out in this order, so gradient buckets complete one
    /// after another while backward runs.
    public final func namedParametersInGradientOrder() -> [(key: String, tensor: Tensor)] {
        var out: [(key: String, tensor: Tensor)] = []
        visit(self, prefix: "", inGradientOrder: true) { out.append(($0, $1)) }
        return out
    }

    /// The parameters, in the order of `namedParameters()`.
    public final func parameters() -> [Tensor] { namedParameters().map(\.tensor) }

    /// Total number of scalars in the parameters.
    public final func parameterCount() -> Int { parameters().reduce(0) { $0 + $1.count } }
}

/// Calls `found(key, tensor)` for each parameter reachable from `value`, in
/// declaration order or in gradient order (see `Module.childrenInGradientOrder`).
private func visit(_ value: Any, prefix: String, inGradientOrder reversed: Bool, _ found: (String, Tensor) -> Void) {
    func join(_ key: String) -> String { key.isEmpty ? prefix : prefix.isEmpty ? key : prefix + "." + key }
    func ordered<C: Collection>(_ children: C) -> [C.Element] { reversed ? children.reversed() : Array(children) }
    switch value {
    case let t as Tensor:
        found(prefix, t)
    case let m as Module where reversed && m.childrenInGradientOrder != nil:
        for (key, child) in m.childrenInGradientOrder! { visit(child, prefix: join(key), inGradientOrder: true, found) }
    case let m as Module where m.explicitChildren != nil:
        for (key, child) in ordered(m.explicitChildren!) { visit(child, prefix: join(key), inGradientOrder: reversed, found) }
    case let m as Module:
        var mirror: Mirror? = Mirror(reflecting: m)
        var levels: [Mirror] = []
        while let current = mirror { levels.append(current); mirror = current.superclassMirror }
        let overrides = type(of: m).keys
        for child in ordered(levels.reversed().flatMap(\.children)) {   // declared: superclass properties first
            guard let label = child.label else { continue }
            visit(child.value, prefix: join(overrides[label] ?? snakeCase(label)), inGradientOrder: reversed, found)
        }
    default:
        let mirror = Mirror(reflecting: value)
        switch mirror.displayStyle {
        case .optional:
            if let wrapped = mirror.children.first { visit(wrapped.value, prefix: prefix, inGradientOrder: reversed, found) }
        case .collection:
            for (i, child) in ordered(mirror.children.enumerated()) {
                visit(child.value, prefix: join(String(i)), inGradientOrder: reversed, found)
            }
        default:
            break   // configuration values: Int, Float, Bool, enums, ...
        }
    }
}

/// `ninShortcut` → `nin_shortcut`; digits stay attached (`conv1`).
func snakeCase(_ name: String) -> String {
    var out = ""
    for ch in name {
        if ch.isUppercase {
            if !out.isEmpty { out.append("_") }
            out.append(contentsOf: ch.lowercased())
        } else {
            out.append(ch)
        }
    }
    return out
}

extension Module {
    /// The parameters as state tensors under `prefix` + their keys, in declaration
    /// order: what an exported file holds and an imported one fills.
    public func stateTensors(prefix: String = "") -> [StateTensor] {
        namedParameters().map { StateTensor(key: prefix + $0.key, shape: $0.tensor.shape, pointer: $0.tensor.pointer, isCount: false) }
    }
}
