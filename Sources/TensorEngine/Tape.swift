import Foundation

/// Reverse-mode autodiff: every differentiable op run while recording appends one
/// entry (its output and a closure mapping the output's gradient to its inputs'
/// gradients). `backward()` replays the entries in reverse and empties the tape, so
/// each training step starts with an empty tape. One tape per thread.
public final class Tape {
    struct Entry {
        /// The function that recorded it (a memory profile names ops by it).
        let op: StaticString
        /// The output's gradient side only: the values stay alive only if the
        /// backward closure (or the caller) keeps the output.
        let output: GradientSlot
        /// The op's inputs that are watched leaves (see `Tensor.readyIndex`).
        let watched: [GradientSlot]
        let backward: (_ dOutput: Tensor) -> Void
    }

    var entries: [Entry] = []
    /// False inside `withoutGradient`.
    public internal(set) var isRecording = true

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { if let p = $0 { Unmanaged<Tape>.fromOpaque(p).release() } }
        return key
    }()

    /// The calling thread's tape.
    public static var current: Tape {
        if let p = pthread_getspecific(key) { return Unmanaged<Tape>.fromOpaque(p).takeUnretainedValue() }
        let tape = Tape()
        pthread_setspecific(key, Unmanaged.passRetained(tape).toOpaque())
        return tape
    }

    static func setCurrent(_ tape: Tape) {
        if let p = pthread_getspecific(key) { Unmanaged<Tape>.fromOpaque(p).release() }
        pthread_setspecific(key, Unmanaged.passRetained(tape).toOpaque())
    }

    /// Number of recorded ops not yet consumed by backward().
    public var count: Int { entries.count }

    /// Called during backward with a watched leaf's `readyIndex` as soon as the last
    /// op using it has added its gradient: data-parallel training starts reducing
    /// gradient buckets while backward goes on.
    public var onGradientReady: ((Int) -> Void)?
    /// Called when backward starts, before any op's backward runs: the forward is
    /// over, so a watched leaf whose `pendingUses` is 0 was not used by it.
    public var onBackwardStart: (() -> Void)?

    /// Told of each op as it is recorded and again just before its backward runs,
    /// with its place on the tape (a memory profile samples the live bytes here).
    public var observer: ((TapeEvent) -> Void)?

    /// Drops recorded ops without running them (an evaluation pass, an aborted step).
    public func reset() {
        for entry in entries { for t in entry.watched { t.pendingUses = 0 } }
        entries.removeAll(keepingCapacity: true)
    }

    /// True when an op over these inputs must be recorded.
    @inline(__always)
    static func needsGrad(_ inputs: Tensor?...) -> Bool { needsGrad(inputs) }

    @inline(__always)
    static func needsGrad(_ inputs: [Tensor?]) -> Bool {
        guard inputs.contains(where: { $0?.requiresGrad == true }) else { return false }
        return current.isRecording
    }

    /// Records `output` as produced from `inputs` by an op whose backward is `backward`.
    static func record(_ output: Tensor, inputs: [Tensor?], op: StaticString = #function,
                       backward: @escaping (_ dOutput: Tensor) -> Void) {
        output.requiresGrad = true
        var watched: [GradientSlot] = []
        for case let t? in inputs where t.readyIndex != nil && t.requiresGrad {
            t.slot.pendingUses += 1
            watched.append(t.slot)
        }
        let tape = current
        tape.entries.append(Entry(op: op, output: output.slot, watched: watched, backward: backward))
        tape.observer?(.recorded(op: op, index: tape.entries.count - 1))
    }
}

/// What `Tape.observer` is told: an op recorded by the forward, or about to run its backward.
public enum TapeEvent {
    case recorded(op: StaticString, index: Int)
    case backward(op: StaticString, index: Int)
}

/// Runs `body` on a fresh tape of its own, then puts the caller's tape back. A
/// backward inside sees only the ops recorded inside: e.g. gradients of a loss
/// with respect to a detached output, while the model's own ops wait on the outer tape.
public func withSeparateTape<R>(_ body: () throws -> R) rethrows -> R {
    let outer = Tape.current
    let inner = Tape()
    Tape.setCurrent(inner)
    defer { Tape.setCurrent(outer) }
    return try body()
}

/// Runs `body` without recording ops on this thread's tape (inference, EMA, metrics).
public func withoutGradient<R>(_ body: () throws -> R) rethrows -> R {
    let tape = Tape.current
    let was = tape.isRecording
    tape.isRecording = false
    defer { tape.isRecording = was }
    return try body()
}

extension Tensor {
    /// Backpropagates from this tensor: seeds its gradient with `gradient` (ones
    /// when nil, which needs a one-element tensor), runs the tape in reverse, and
    /// empties it. Leaf gradients accumulate across calls until `zeroGrad()`;
    /// intermediate gradients are freed as soon as they have been used.
    public func backward(gradient seed: Tensor? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require grad (shape \(shape))")
        if let seed {
            precondition(seed.shape == shape, "gradient shape \(seed.shape) does not match tensor shape \(shape)")
            grad = seed
        } else {
            precondition(count == 1, "backward() without a gradient needs one element, shape is \(shape)")
            grad = Tensor(shape: shape, repeating: 1)
        }
        let tape = Tape.current
        tape.onBackwardStart?()
        // Each entry leaves the tape before its backward runs, so what its closure keeps
        // (the op's inputs and output) is freed as soon as that backward is done, unless
        // an earlier op or the caller still holds it: activations go as backward passes them.
        while let entry = tape.entries.popLast() {
            tape.observer?(.backward(op: entry.op, index: tape.entries.count))
            if let dOutput = entry.output.grad {
                entry.backward(dOutput)
                entry.output.grad = nil
            }
            for t in entry.watched {
                t.pendingUses -= 1
                if t.pendingUses == 0, let index = t.readyIndex { tape.onGradientReady?(index) }
            }
        }
    }

    @inline(__always)
    func withGradient(_ body: (_ dSelf: UnsafeMutablePointer<Float>, _ accumulate: Bool) -> Void) { slot.withGradient(body) }

    @inline(__always)
    func withZeroedGradient(_ body: (_ dSelf: UnsafeMutablePointer<Float>) -> Void) { slot.withZeroedGradient(body) }
}
