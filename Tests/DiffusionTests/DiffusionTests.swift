import Diffusion
import Foundation
import Testing
import TensorEngine
import TestSupport

@Suite("Diffusion")
struct DiffusionTests {
    @Test("schedules: ᾱ strictly decreasing in (0, 1); the DDPM endpoints; √β linear for scaled_linear",
          arguments: NoiseSchedule.Kind.allCases)
    func schedules(_ kind: NoiseSchedule.Kind) {
        let s = NoiseSchedule(kind, timesteps: 1000)
        #expect(s.alphasCumprod.count == 1000)
        #expect(zip(s.alphasCumprod, s.alphasCumprod.dropFirst()).allSatisfy { $0 > $1 })
        #expect(s.alphasCumprod.allSatisfy { $0 > 0 && $0 < 1 })
        #expect(s.alphasCumprod.last! < 0.05)
        switch kind {
        case .linear: #expect(abs(s.betas[0] - 1e-4) < 1e-15 && abs(s.betas[999] - 0.02) < 1e-15)
        case .scaledLinear: #expect(abs(s.betas[500].squareRoot() - (0.01 + (0.02.squareRoot() - 0.01) * 500 / 999)) < 1e-12)
        case .cosine: #expect(s.betas.allSatisfy { $0 <= 0.999 })
        }
    }

    @Test("qSample at t = 0 is ≈ z0; at T−1 nearly pure noise; the mixing follows √ᾱ_t")
    func qSample() {
        let s = NoiseSchedule(.linear)
        let z0 = randn([2, 3, 3, 4], 1), eps = randn([2, 3, 3, 4], 2)
        let x = s.qSample(z0, t: [0, 999], noise: eps)
        let a = x.scalars, z = z0.scalars, e = eps.scalars
        for i in 0..<36 { #expect(abs(a[i] - z[i]) < 0.02 * (1 + abs(z[i]))) }
        let ab = s.alphasCumprod[999]
        for i in 36..<72 { #expect(abs(Double(a[i]) - (ab.squareRoot() * Double(z[i]) + (1 - ab).squareRoot() * Double(e[i]))) < 1e-5) }
        // predictStartFromNoise inverts qSample given the true noise
        let back = s.predictStartFromNoise(x, t: [0, 999], noise: eps).scalars
        for i in 0..<72 { #expect(abs(back[i] - z[i]) < 2e-3) }
    }

    @Test("the objective: a model predicting the true ε (or v) has zero loss; otherwise each sample's loss is its mean squared error",
          arguments: [Prediction.epsilon, .velocity])
    func objective(_ prediction: Prediction) {
        let schedule = NoiseSchedule(.scaledLinear, timesteps: 1000, betaStart: 0.0015, betaEnd: 0.0195)
        let objective = DiffusionObjective(schedule: schedule, prediction: prediction)
        let z0 = randn([3, 2, 2, 4], 1), noise = randn([3, 2, 2, 4], 2), times = [0, 400, 999]
        let target = prediction == .epsilon ? noise : schedule.velocity(z0, t: times, noise: noise)
        let exact = objective.perSampleLoss(z0: z0, noise: noise, times: times) { xt, t in
            #expect(t == times && isClose(xt, schedule.qSample(z0, t: times, noise: noise).scalars.map(Double.init)))
            return target
        }
        #expect(exact.shape == [3] && exact.scalars.allSatisfy { $0 == 0 })
        let zero = objective.perSampleLoss(z0: z0, noise: noise, times: times) { xt, _ in xt.scaled(by: 0) }
        for n in 0..<3 {
            let t = target.slice(axis: 0, n..<(n + 1)).scalars.map(Double.init)
            #expect(abs(Double(zero.scalars[n]) - t.map { $0 * $0 }.reduce(0, +) / 16) < 1e-5)
        }
    }

    @Test("v-prediction: x0 and ε recovered from the true v")
    func velocity() {
        let s = NoiseSchedule(.scaledLinear)
        let z0 = randn([2, 2, 2, 3], 1), eps = randn([2, 2, 2, 3], 2), t = [10, 900]
        let xt = s.qSample(z0, t: t, noise: eps)
        let (x0, e) = s.split(s.velocity(z0, t: t, noise: eps), xt: xt, t: t, prediction: .velocity)
        #expect(isClose(x0, z0.scalars.map(Double.init), rtol: 1e-4, atol: 1e-4))
        #expect(isClose(e, eps.scalars.map(Double.init), rtol: 1e-4, atol: 1e-4))
    }

    @Test("DDIM with η = 0 is deterministic and ignores the noise source; η = 1 uses it")
    func ddimDeterministic() {
        let s = NoiseSchedule(.linear)
        let start = randn([2, 2, 2, 2], 1)
        let denoise: Denoiser = { x, _ in x.scaled(by: 0.1) }
        let ddim = DDIMSampler(schedule: s, steps: 20, eta: 0)
        let a = ddim.sample(start: start, noise: { i in randn([2, 2, 2, 2], UInt64(100 + i)) }, denoise: denoise)
        let b = ddim.sample(start: start, noise: { i in randn([2, 2, 2, 2], UInt64(900 + i)) }, denoise: denoise)
        #expect(a.scalars == b.scalars)
        let noisy = DDIMSampler(schedule: s, steps: 20, eta: 1)
        let c = noisy.sample(start: start, noise: { i in randn([2, 2, 2, 2], UInt64(100 + i)) }, denoise: denoise)
        let d = noisy.sample(start: start, noise: { i in randn([2, 2, 2, 2], UInt64(900 + i)) }, denoise: denoise)
        #expect(c.scalars != d.scalars)
        #expect(ddim.timesteps == (0..<20).map { $0 * 50 })
    }

    @Test("with the true noise as the prediction, DDIM and DDPM return the start they noised")
    func exactDenoiser() {
        let s = NoiseSchedule(.linear, timesteps: 100)
        let z0 = randn([1, 2, 2, 2], 1), eps = randn([1, 2, 2, 2], 2)
        let xT = s.qSample(z0, t: [99], noise: eps)
        // ε̂ = (x_t − √ᾱ_t z0)/√(1 − ᾱ_t): an oracle that knows z0
        let oracle: Denoiser = { x, t in
            let a = Float(s.alphasCumprod[t[0]].squareRoot()), b = Float((1 - s.alphasCumprod[t[0]]).squareRoot())
            return (x - z0.scaled(by: a)).scaled(by: 1 / b)
        }
        let ddim = DDIMSampler(schedule: s, steps: 10).sample(start: xT, noise: { _ in randn([1, 2, 2, 2], 3) }, denoise: oracle)
        #expect(isClose(ddim, z0.scalars.map(Double.init), rtol: 1e-3, atol: 1e-3))
        let ddpm = DDPMSampler(schedule: s).sample(start: xT, noise: { i in randn([1, 2, 2, 2], UInt64(10 + i)) }, denoise: oracle)
        #expect(isClose(ddpm, z0.scalars.map(Double.init), rtol: 1e-3, atol: 1e-3))
    }

    @Test("guidance: w = 1 is the conditional prediction, w = 0 the unconditional")
    func guidance() {
        let c = randn([2, 3], 1), u = randn([2, 3], 2)
        #expect(isClose(guided(conditional: c, unconditional: u, scale: 1), c.scalars.map(Double.init), rtol: 1e-6, atol: 1e-6))
        #expect(guided(conditional: c, unconditional: u, scale: 0).scalars == u.scalars)
        let g = guided(conditional: c, unconditional: u, scale: 3).scalars
        for i in 0..<6 { #expect(abs(g[i] - (u.scalars[i] + 3 * (c.scalars[i] - u.scalars[i]))) < 1e-5) }
    }
}
