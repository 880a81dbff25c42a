import Testing
import TensorEngine
import TestSupport

@Suite("Tape")
struct TapeTests {
    @Test("backward empties the tape and frees intermediate gradients")
    func resetPerStep() {
        // On a tape of its own: tests share worker threads, and a test that records ops
        // without a backward leaves them on its thread's tape.
        withSeparateTape {
            let w = randn([3, 3], 1)
            w.requiresGrad = true
            let h = silu(matmul(w, w))
            let loss = h.sum()
            #expect(Tape.current.count == 3)
            loss.backward()
            #expect(Tape.current.count == 0)
            #expect(h.grad == nil)
            #expect(w.grad != nil)
        }
    }

    @Test("leaf gradients accumulate across backward calls until zeroGrad")
    func accumulation() {
        let w = randn([4], 1)
        w.requiresGrad = true
        (w * w).sum().backward()
        let once = w.grad!.scalars
        (w * w).sum().backward()
        let twice = w.grad!.scalars
        for i in 0..<4 {
            #expect(once[i] == 2 * w.scalars[i])
            #expect(twice[i] == 2 * once[i])
        }
        w.zeroGrad()
        #expect(w.grad == nil)
    }

    @Test("a tensor used twice receives the sum of both paths")
    func fanOut() {
        let x = randn([5], 1)
        x.requiresGrad = true
        (x * x + x.scaled(by: 3)).sum().backward()
        let g = x.grad!.scalars
        for i in 0..<5 { #expect(abs(g[i] - (2 * x.scalars[i] + 3)) < 1e-6) }
    }

    /// These two count the ops on a tape of their own, as `resetPerStep` does: another
    /// test on the same worker thread may have left a forward without a backward.
    @Test("withoutGradient records nothing and nests")
    func noGrad() {
        withSeparateTape {
            let w = randn([3], 1)
            w.requiresGrad = true
            let y = withoutGradient { withoutGradient { exp(w) } + w }
            #expect(Tape.current.count == 0)
            #expect(!y.requiresGrad)
            #expect(Tape.current.isRecording)
        }
    }

    @Test("ops on tensors that need no gradient are not recorded")
    func constants() {
        withSeparateTape {
            let a = randn([3], 1), b = randn([3], 2)
            _ = a * b + a
            #expect(Tape.current.count == 0)
        }
    }

    @Test("gradient views into an arena are zeroed, not dropped")
    func arenaGradients() {
        let arena = Tensor(zeros: [8])
        let w = randn([4], 1)
        w.requiresGrad = true
        w.grad = Tensor(shape: [4], storage: TensorStorage(viewing: arena.pointer + 2, count: 4, owner: arena.storage))
        w.scaled(by: 2).sum().backward()
        #expect(arena.scalars == [0, 0, 2, 2, 2, 2, 0, 0])
        w.zeroGrad()
        #expect(w.grad != nil)
        #expect(arena.scalars.allSatisfy { $0 == 0 })
    }
}
