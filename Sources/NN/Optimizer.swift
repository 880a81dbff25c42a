import Foundation
import TensorEngine

/// Adam (Kingma & Ba, Algorithm 1) and AdamW (Loshchilov & Hutter: decoupled
/// weight decay), stepping every parameter of an arena in one loop over its
/// value, gradient and moment buffers. Matches torch.optim.Adam / AdamW.
public final class Adam {
    public struct Settings: Codable, Equatable, Sendable {
        public var beta1: Double = 0.9
        public var beta2: Double = 0.999
        public var eps: Double = 1e-8
        public var weightDecay: Double = 0
        /// AdamW's decoupled decay when true; Adam's L2 term added to the gradient when false.
        public var decoupled = false
        public init() {}
        enum CodingKeys: String, CodingKey {
            case beta1, beta2, eps, weightDecay = "weight_decay", decoupled
        }
    }

    public let settings: Settings
    public let arena: ParameterArena
    /// First and second moments, laid out like the arena.
    public let m: Tensor, v: Tensor
    /// Steps taken so far (t in the bias corrections).
    public var step: Int = 0

    public init(_ arena: ParameterArena, _ settings: Settings) {
        self.arena = arena
        self.settings = settings
        m = Tensor(zeros: [arena.count])
        v = Tensor(zeros: [arena.count])
    }

    /// A run of the arena stepped with its own learning rate and bias-correction step
    /// (a parameter group's multiplier; a flow's context layers, which only its steps update).
    public struct Segment: Equatable, Sendable {
        public var range: Range<Int>
        public var lr: Double
        /// Updates this run has had, this one included (t in its bias corrections).
        public var step: Int
        public init(range: Range<Int>, lr: Double, step: Int) { (self.range, self.lr, self.step) = (range, lr, step) }
    }

    /// One update with learning rate `lr` from the arena's gradients.
    public func update(lr: Double) {
        step += 1
        update(segments: [Segment(range: 0..<arena.count, lr: lr, step: step)])
    }

    /// One update of the given runs of the arena only (the rest keep their values and
    /// moments, as PyTorch's Adam skips a parameter without a gradient). `step` counts
    /// optimizer steps and is the caller's to advance.
    public func update(segments: [Segment]) {
        let b1 = Float(settings.beta1), b2 = Float(settings.beta2), eps = Float(settings.eps)
        let p = arena.values.pointer, g = arena.gradients.pointer, pm = m.pointer, pv = v.pointer
        for segment in segments where !segment.range.isEmpty {
            precondition(segment.step >= 1 && segment.range.upperBound <= arena.count, "Adam: segment \(segment) outside the arena or unstepped")
            let lr = segment.lr
            let c1 = 1 - pow(settings.beta1, Double(segment.step)), c2 = 1 - pow(settings.beta2, Double(segment.step))
            // p −= lr/c1 · m / (√v/√c2 + eps), the bias corrections folded into two scalars
            // (1/√c2 as a factor: one vector division per element, not two).
            let stepSize = Float(lr / c1), inverseRootC2 = Float(1 / c2.squareRoot())
            let wd = Float(settings.weightDecay), decay = Float(1 - lr * settings.weightDecay)
            // Adam's L2 term joins the gradient; AdamW's decay scales the weight (by 1 otherwise: exact).
            let l2 = settings.decoupled ? 0 : wd, keep = settings.decoupled && wd != 0 ? decay : 1
            let base = segment.range.lowerBound
            // A scalar loop, which LLVM vectorises (SIMD8's squareRoot() takes the
            // root lane by lane, through libm).
            parallelFor(segment.range.count, grain: 1 << 16) { range in
                for j in range {
                    let i = base + j
                    let gi = g[i] + l2 * p[i]
                    let mi = b1 * pm[i] + (1 - b1) * gi
                    let vi = b2 * pv[i] + (1 - b2) * gi * gi
                    pm[i] = mi
                    pv[i] = vi
                    p[i] = p[i] * keep - stepSize * mi / (vectorizableSquareRoot(vi) * inverseRootC2 + eps)
                }
            }
        }
    }
}

/// Learning rate at a step: linear warm-up from 0 over `warmupSteps`, then constant.
public func warmupLearningRate(base: Double, step: Int, warmupSteps: Int) -> Double {
    warmupSteps <= 0 ? base : base * min(1, Double(step + 1) / Double(warmupSteps))
}

/// What the learning rate does after warm-up.
public enum LRDecay: String, Codable, Sendable, CaseIterable {
    /// Stays at the base rate.
    case constant
    /// Half a cosine from the base rate at the end of warm-up down to
    /// `minRatio` × base at `totalSteps` (diffusers' cosine schedule with warm-up).
    case cosine
}

/// Learning rate at `step` of a run of `totalSteps`: warm-up, then `decay`.
public func scheduledLearningRate(base: Double, step: Int, warmupSteps: Int, totalSteps: Int, decay: LRDecay,
                                  minRatio: Double = 0) -> Double {
    let warm = warmupLearningRate(base: base, step: step, warmupSteps: warmupSteps)
    guard decay == .cosine, step >= warmupSteps, totalSteps > warmupSteps else { return warm }
    let progress = min(1, Double(step - warmupSteps) / Double(totalSteps - warmupSteps))
    return base * (minRatio + (1 - minRatio) * 0.5 * (1 + cos(Double.pi * progress)))
}

/// An exponential moving average of an arena's values (the weights sampling uses).
public final class EMA {
    public let arena: ParameterArena
    /// The averaged values, laid out like the arena.
    public let shadow: Tensor
    /// Updates applied so far (LDM's warm-up: decay = min(decay, (1+n)/(10+n))).
    public var updates: Int = 0
    public let decay: Double

    public init(_ arena: ParameterArena, decay: Double) {
        self.arena = arena
        self.decay = decay
        shadow = arena.values.detached()
    }

    public func update() {
        updates += 1
        let d = Float(min(decay, Double(1 + updates) / Double(10 + updates)))
        let s = shadow.pointer, p = arena.values.pointer
        parallelFor(arena.count, grain: 1 << 16) { range in for i in range { s[i] = d * s[i] + (1 - d) * p[i] } }
    }
}

