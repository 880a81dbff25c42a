import Foundation

/// How the engine computes what it is asked: settings a run takes from its config
/// (`engine:`), the same on every rank and for the length of a stage. Every choice
/// computes the same function; they differ in speed and in rounding.
public struct EngineOptions: Codable, Equatable, Sendable {
    /// Which Winograd variant serves the 3×3, stride-1, pad-1 convolutions with ≥ 32
    /// input and output channels (Winograd.swift).
    public enum Winograd: String, Codable, CaseIterable, Sendable {
        /// F(4×4, 3×3) from 4×4 outputs up, F(2×2, 3×3) below: the fastest.
        case f4
        /// F(2×2, 3×3) everywhere: slower, with less rounding error than F(4×4).
        case f2
        /// No Winograd: those convolutions go to oneDNN.
        case off
    }

    /// What a Winograd convolution's forward keeps for its weight gradient.
    public enum WinogradInput: String, Codable, CaseIterable, Sendable {
        /// Its transformed input (α²/m² = 2.25× the input for F(4×4)): no second transform.
        case keep
        /// Nothing: backward transforms the input again, which the tape keeps anyway.
        case recompute
    }

    /// What a convolution's backward keeps of an input that is cheap to make again:
    /// the output of a GroupNorm (with its SiLU) or of an upsampling.
    public enum ConvInput: String, Codable, CaseIterable, Sendable {
        /// The input itself.
        case keep
        /// How to make it from what its producer keeps anyway (the norm's input and
        /// statistics, the upsampling's source): one more elementwise pass in backward.
        case recompute
    }

    /// What the convolutions and matrix products compute in (stages set their own,
    /// `training.precision`).
    public var precision = Precision.fp32
    public var winograd = Winograd.f4
    public var winogradInput = WinogradInput.keep
    public var convInput = ConvInput.recompute
    /// The activation layout oneDNN's convolutions run in.
    public var convLayout = ConvLayout.auto

    public init(precision: Precision = .fp32, winograd: Winograd = .f4, winogradInput: WinogradInput = .keep,
                convInput: ConvInput = .recompute, convLayout: ConvLayout = .auto) {
        (self.precision, self.winograd, self.winogradInput, self.convInput, self.convLayout)
            = (precision, winograd, winogradInput, convInput, convLayout)
    }

    /// These settings with `precision` instead of theirs.
    public func with(precision: Precision) -> EngineOptions {
        var o = self
        o.precision = precision
        return o
    }

    enum CodingKeys: String, CodingKey {
        case precision, winograd, winogradInput = "winograd_input", convInput = "conv_input", convLayout = "conv_layout"
    }
}

/// The number type the convolutions and matrix products multiply in. Tensors,
/// parameters, optimizer state, gradients and checkpoints are float32 either way.
public enum Precision: String, Codable, CaseIterable, Sendable {
    /// float32 throughout.
    case fp32
    /// Operands rounded to bfloat16, products summed in float32 (BFloat16.swift).
    case bf16
}

/// The process's engine settings, and a thread's own for the length of a call.
public enum Engine {
    nonisolated(unsafe) private static var current = EngineOptions()
    private static let lock = NSLock()

    private final class Scoped {
        let options: EngineOptions
        init(_ options: EngineOptions) { self.options = options }
    }
    private static let scopedKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { if let p = $0 { Unmanaged<Scoped>.fromOpaque(p).release() } }
        return key
    }()

    /// The settings the calling thread's next operations use.
    public static var options: EngineOptions {
        if let p = pthread_getspecific(scopedKey) { return Unmanaged<Scoped>.fromOpaque(p).takeUnretainedValue().options }
        return lock.withLock { current }
    }

    /// The process's settings from the next operation on.
    public static func configure(_ options: EngineOptions) { lock.withLock { current = options } }

    /// Runs `body` with `options` on this thread only (other threads keep theirs): for
    /// comparing the choices side by side in one process.
    public static func withOptions<R>(_ options: EngineOptions, _ body: () throws -> R) rethrows -> R {
        let outer = pthread_getspecific(scopedKey)
        pthread_setspecific(scopedKey, Unmanaged.passRetained(Scoped(options)).toOpaque())
        defer {
            if let p = pthread_getspecific(scopedKey) { Unmanaged<Scoped>.fromOpaque(p).release() }
            pthread_setspecific(scopedKey, outer)
        }
        return try body()
    }
}
