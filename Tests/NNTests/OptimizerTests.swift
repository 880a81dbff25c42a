import Foundation
import NN
import Testing
import TensorEngine
import TestSupport

/// A module with two parameters, for arena and optimizer tests.
final class TwoTensors: Module {
    let a: Tensor, b: Tensor
    init(_ a: [Float], _ b: [Float]) {
        self.a = Tensor(shape: [a.count], scalars: a, requiresGrad: true)
        self.b = Tensor(shape: [b.count], scalars: b, requiresGrad: true)
    }
}

@Suite("Optimizers and the parameter arena")
struct OptimizerTests {
    @Test("the arena keeps values, makes gradients views, and lays parameters out in reverse order, 64-byte aligned")
    func arena() {
        let m = TwoTensors([1, 2, 3], [4, 5])
        let arena = ParameterArena(m)
        #expect(arena.entries.map(\.key) == ["b", "a"])
        #expect(arena.entries.map(\.offset) == [0, 16])
        #expect(m.a.scalars == [1, 2, 3] && m.b.scalars == [4, 5])
        #expect(arena.values.pointer[16] == 1 && arena.values.pointer[1] == 5)
        (m.a * m.a).sum().backward()
        #expect(arena.gradients.pointer[16 + 2] == 6)
        #expect(abs(arena.gradientNorm() - (4 + 16 + 36 as Double).squareRoot()) < 1e-6)
        arena.zeroGradients()
        #expect(m.a.grad!.scalars == [0, 0, 0])
    }

    /// torch.optim.Adam / AdamW written out in Double from the papers' algorithms.
    func reference(_ p0: [Double], grads: [[Double]], lr: Double, b1: Double, b2: Double, eps: Double, wd: Double,
                   decoupled: Bool) -> [Double] {
        var p = p0, m = [Double](repeating: 0, count: p.count), v = m
        for (t, g0) in grads.enumerated() {
            for i in p.indices {
                var g = g0[i]
                if decoupled { p[i] *= 1 - lr * wd } else { g += wd * p[i] }
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                let mh = m[i] / (1 - pow(b1, Double(t + 1))), vh = v[i] / (1 - pow(b2, Double(t + 1)))
                p[i] -= lr * mh / (vh.squareRoot() + eps)
            }
        }
        return p
    }

    @Test("Adam and AdamW match the reference update over four steps", arguments: [false, true])
    func adam(decoupled: Bool) {
        let m = TwoTensors([0.5, -1, 2], [3, -0.25])
        let arena = ParameterArena(m)
        var s = Adam.Settings()
        (s.beta1, s.beta2, s.eps, s.weightDecay, s.decoupled) = (0.5, 0.9, 1e-8, 0.1, decoupled)
        let adam = Adam(arena, s)
        let grads: [[Double]] = [[0.1, -0.2, 0.3, 1, -1], [0.5, 0.5, -0.1, 0.2, 0], [-1, 2, 0.01, 0.3, 0.3], [0, 0, 0, 1e-3, -4]]
        let start = m.a.scalars.map(Double.init) + m.b.scalars.map(Double.init)
        for g in grads {
            for i in 0..<3 { m.a.grad!.pointer[i] = Float(g[i]) }
            for i in 0..<2 { m.b.grad!.pointer[i] = Float(g[3 + i]) }
            adam.update(lr: 0.01)
        }
        let expected = reference(start, grads: grads, lr: 0.01, b1: 0.5, b2: 0.9, eps: 1e-8, wd: 0.1, decoupled: decoupled)
        let got = m.a.scalars.map(Double.init) + m.b.scalars.map(Double.init)
        #expect(closeness(got, expected, rtol: 1e-5, atol: 1e-6).ratio <= 1, "\(got) vs \(expected)")
        #expect(adam.step == 4)
    }

    @Test("EMA follows decay = min(d, (1+n)/(10+n)) and starts at the weights")
    func ema() {
        let m = TwoTensors([1, 1, 1], [1, 1])
        let arena = ParameterArena(m)
        let ema = EMA(arena, decay: 0.9999)
        for i in 0..<3 { m.a.pointer[i] = 2 }
        ema.update()   // decay (1+1)/(10+1) = 2/11
        let d = 2.0 / 11
        #expect(abs(Double(ema.shadow.pointer[16]) - (d * 1 + (1 - d) * 2)) < 1e-6)
        #expect(ema.shadow.pointer[0] == 1)
    }

    @Test("warm-up rises linearly to the base rate, then stays")
    func warmup() {
        #expect(warmupLearningRate(base: 1, step: 0, warmupSteps: 4) == 0.25)
        #expect(warmupLearningRate(base: 1, step: 3, warmupSteps: 4) == 1)
        #expect(warmupLearningRate(base: 1, step: 100, warmupSteps: 4) == 1)
        #expect(warmupLearningRate(base: 2, step: 0, warmupSteps: 0) == 2)
    }

    @Test("cosine decay: base rate after warm-up, half-way at the middle, the floor at the end")
    func cosineDecay() {
        func lr(_ step: Int) -> Double {
            scheduledLearningRate(base: 2, step: step, warmupSteps: 10, totalSteps: 110, decay: .cosine, minRatio: 0.1)
        }
        #expect(lr(0) == 0.2)
        #expect(abs(lr(10) - 2) < 1e-12)
        #expect(abs(lr(60) - 1.1) < 1e-12)
        #expect(abs(lr(110) - 0.2) < 1e-12)
        #expect((11..<110).allSatisfy { lr($0) < lr($0 - 1) })
        #expect(scheduledLearningRate(base: 2, step: 60, warmupSteps: 10, totalSteps: 110, decay: .constant) == 2)
    }
}
