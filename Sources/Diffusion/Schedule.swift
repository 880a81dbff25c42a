import Foundation
import TensorEngine

/// The forward process of DDPM (Ho et al. 2020): β_t over T steps, α_t = 1 − β_t,
/// ᾱ_t = Π_{s≤t} α_s, all in Double (ᾱ near t = T is ~4e-5 and loses digits in
/// Float). Time indices are 0-based: t ∈ 0..<T.
public struct NoiseSchedule: Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// β linear from β_start to β_end (DDPM: 1e-4 → 0.02).
        case linear
        /// √β linear from √β_start to √β_end (the LDM default).
        case scaledLinear = "scaled_linear"
        /// ᾱ_t = cos²((t/T + s)/(1 + s) · π/2), s = 0.008 (Nichol & Dhariwal 2021, eq. 17), β clipped to 0.999.
        case cosine
    }

    public let kind: Kind
    public let betas: [Double]
    public let alphasCumprod: [Double]
    public var timesteps: Int { betas.count }

    public init(_ kind: Kind, timesteps T: Int = 1000, betaStart: Double = 1e-4, betaEnd: Double = 0.02) {
        precondition(T >= 1, "a schedule needs at least one step, got \(T)")
        self.kind = kind
        switch kind {
        case .linear:
            betas = (0..<T).map { betaStart + (betaEnd - betaStart) * Double($0) / Double(max(T - 1, 1)) }
        case .scaledLinear:
            let a = betaStart.squareRoot(), b = betaEnd.squareRoot()
            betas = (0..<T).map { let r = a + (b - a) * Double($0) / Double(max(T - 1, 1)); return r * r }
        case .cosine:
            let s = 0.008
            func f(_ t: Double) -> Double { let c = cos((t / Double(T) + s) / (1 + s) * Double.pi / 2); return c * c }
            betas = (0..<T).map { min(1 - f(Double($0 + 1)) / f(Double($0)), 0.999) }
        }
        var product = 1.0
        alphasCumprod = betas.map { product *= 1 - $0; return product }
    }

    /// ᾱ_{t−1}, with ᾱ_{−1} = 1.
    public func alphaCumprodPrevious(_ t: Int) -> Double { t == 0 ? 1 : alphasCumprod[t - 1] }

    /// q(z_t | z_0) sample (eq. 4): √ᾱ_t z_0 + √(1 − ᾱ_t) ε, per sample t. z0, noise: [N, ...].
    public func qSample(_ z0: Tensor, t: [Int], noise: Tensor) -> Tensor {
        precondition(z0.shape == noise.shape && z0.shape[0] == t.count, "qSample: z0 \(z0.shape), noise \(noise.shape), \(t.count) times")
        let a = perSample(t.map { Float(alphasCumprod[$0].squareRoot()) }, like: z0)
        let b = perSample(t.map { Float((1 - alphasCumprod[$0]).squareRoot()) }, like: z0)
        return z0 * a + noise * b
    }

    /// v = √ᾱ_t ε − √(1 − ᾱ_t) z_0 (Salimans & Ho 2022), the v-prediction target.
    public func velocity(_ z0: Tensor, t: [Int], noise: Tensor) -> Tensor {
        let a = perSample(t.map { Float(alphasCumprod[$0].squareRoot()) }, like: z0)
        let b = perSample(t.map { Float((1 - alphasCumprod[$0]).squareRoot()) }, like: z0)
        return noise * a - z0 * b
    }

    /// x̂_0 from x_t and predicted ε (eq. 15 rearranged): (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t.
    public func predictStartFromNoise(_ xt: Tensor, t: [Int], noise: Tensor) -> Tensor {
        let a = perSample(t.map { Float(1 / alphasCumprod[$0].squareRoot()) }, like: xt)
        let b = perSample(t.map { Float((1 / alphasCumprod[$0] - 1).squareRoot()) }, like: xt)
        return xt * a - noise * b
    }

    /// (x̂_0, ε̂) from a model output of the given parameterisation.
    public func split(_ output: Tensor, xt: Tensor, t: [Int], prediction: Prediction) -> (x0: Tensor, eps: Tensor) {
        switch prediction {
        case .epsilon:
            return (predictStartFromNoise(xt, t: t, noise: output), output)
        case .velocity:
            // x0 = √ᾱ x_t − √(1−ᾱ) v,  ε = √(1−ᾱ) x_t + √ᾱ v
            let a = perSample(t.map { Float(alphasCumprod[$0].squareRoot()) }, like: xt)
            let b = perSample(t.map { Float((1 - alphasCumprod[$0]).squareRoot()) }, like: xt)
            return (xt * a - output * b, xt * b + output * a)
        }
    }

    /// A [N, 1, ..., 1] tensor of per-sample values that broadcasts against `like`.
    func perSample(_ values: [Float], like: Tensor) -> Tensor {
        Tensor(shape: [values.count] + [Int](repeating: 1, count: like.rank - 1), scalars: values)
    }
}

/// What the denoiser predicts.
public enum Prediction: String, Codable, Sendable {
    case epsilon = "eps"
    case velocity = "v"
}
