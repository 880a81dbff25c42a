import Foundation
import TensorEngine

/// A denoiser: (x_t, per-sample t) → ε̂ (or v̂), already guided if it should be.
public typealias Denoiser = (_ xt: Tensor, _ t: [Int]) -> Tensor

/// ε = ε_u + w · (ε_c − ε_u) (classifier-free guidance, Ho & Salimans 2022); w = 1
/// gives the conditional prediction, w = 0 the unconditional one.
public func guided(conditional c: Tensor, unconditional u: Tensor, scale w: Float) -> Tensor {
    u + (c - u).scaled(by: w)
}

/// Ancestral sampling of DDPM (Ho et al. 2020, Algorithm 2) over all T steps, with
/// the posterior q(x_{t−1} | x_t, x̂_0) of eq. 6–7 and its variance β̃_t.
public struct DDPMSampler: Sendable {
    public let schedule: NoiseSchedule
    public let prediction: Prediction
    public init(schedule: NoiseSchedule, prediction: Prediction = .epsilon) { (self.schedule, self.prediction) = (schedule, prediction) }

    /// x_T ~ `start`; `noise(i)` gives the fresh N(0, I) of step i (0 = first step taken).
    public func sample(start: Tensor, noise: (Int) -> Tensor, denoise: Denoiser) -> Tensor {
        var x = start
        let n = start.shape[0], T = schedule.timesteps
        for (i, t) in (0..<T).reversed().enumerated() {
            let times = [Int](repeating: t, count: n)
            let (x0, _) = schedule.split(denoise(x, times), xt: x, t: times, prediction: prediction)
            let abar = schedule.alphasCumprod[t], abarPrev = schedule.alphaCumprodPrevious(t), beta = schedule.betas[t]
            let c0 = Float(beta * abarPrev.squareRoot() / (1 - abar))
            let ct = Float((1 - abarPrev) * (1 - beta).squareRoot() / (1 - abar))
            x = x0.scaled(by: c0) + x.scaled(by: ct)
            if t > 0 {
                let variance = beta * (1 - abarPrev) / (1 - abar)
                x = x + noise(i).scaled(by: Float(variance.squareRoot()))
            }
        }
        return x
    }
}

/// DDIM (Song et al. 2021, eq. 12) over `steps` evenly spaced timesteps, with
/// σ_t = η √((1 − ᾱ_{prev})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{prev}); η = 0 is deterministic.
public struct DDIMSampler: Sendable {
    public let schedule: NoiseSchedule
    public let steps: Int
    public let eta: Double
    public let prediction: Prediction

    public init(schedule: NoiseSchedule, steps: Int, eta: Double = 0, prediction: Prediction = .epsilon) {
        precondition(steps >= 1 && steps <= schedule.timesteps, "DDIM steps \(steps) outside 1...\(schedule.timesteps)")
        (self.schedule, self.steps, self.eta, self.prediction) = (schedule, steps, eta, prediction)
    }

    /// The timesteps visited, ascending: i·T/steps for i in 0..<steps.
    public var timesteps: [Int] { (0..<steps).map { $0 * schedule.timesteps / steps } }

    public func sample(start: Tensor, noise: (Int) -> Tensor, denoise: Denoiser) -> Tensor {
        var x = start
        let n = start.shape[0], ts = timesteps
        for (i, k) in ts.indices.reversed().enumerated() {
            let t = ts[k], times = [Int](repeating: t, count: n)
            let (x0, eps) = schedule.split(denoise(x, times), xt: x, t: times, prediction: prediction)
            let abar = schedule.alphasCumprod[t], abarPrev = k > 0 ? schedule.alphasCumprod[ts[k - 1]] : 1
            let sigma = eta * ((1 - abarPrev) / (1 - abar)).squareRoot() * (1 - abar / abarPrev).squareRoot()
            x = x0.scaled(by: Float(abarPrev.squareRoot())) + eps.scaled(by: Float(max(0, 1 - abarPrev - sigma * sigma).squareRoot()))
            if sigma > 0 { x = x + noise(i).scaled(by: Float(sigma)) }
        }
        return x
    }
}
