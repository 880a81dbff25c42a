import Testing
import TensorEngine
import TestSupport

/// What a forward keeps for its backward: only the tensors some backward reads, made
/// again where that is cheap, with the same gradients; and the pool that serves them.
@Suite("Activation memory: what the tape keeps, recomputed inputs, the buffer pool")
struct ActivationMemoryTests {
    @Test("an activation no backward reads is freed as soon as the forward drops it; one a backward reads lives until that backward")
    func unreadActivationsFree() {
        withSeparateTape {
            let x = randn([4, 16], 1)
            x.requiresGrad = true
            weak var unread: TensorStorage?, read: TensorStorage?
            let loss: Tensor
            do {
                let sum = x + x                  // read by no backward: + and scaling need no operand
                unread = sum.storage
                let product = sum.scaled(by: 3) + x
                read = product.storage           // a product's backward reads both factors
                loss = (product * product).sum()
            }
            #expect(unread == nil)
            #expect(read != nil)
            loss.backward()
            #expect(read == nil)
            // d/dx Σ (7x)² = 98 x
            let expected = x.scalars.map { 98 * $0 }
            #expect(zip(x.grad!.scalars, expected).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) })
        }
    }

    /// GroupNorm+SiLU → conv, and upsampling → conv (oneDNN's stride-2 kernel and
    /// Winograd re-transforming, both of which read their input for the weight
    /// gradient), under `options`: the gradients for L = Σ y ⊙ r, and whether the norm's
    /// and the upsampling's outputs were still alive after the forward.
    func normConvUpsampleConv(_ options: EngineOptions) -> (grads: [[Float]], normKept: Bool, upsampledKept: Bool) {
        Engine.withOptions(options) {
            withSeparateTape {
                let x = randn([2, 8, 8, 32], 1), gamma = randn([32], 2, scale: 0.2).adding(1), beta = randn([32], 3, scale: 0.2)
                let w1 = randn([32, 32, 3, 3], 4, scale: 0.1), w2 = randn([32, 32, 3, 3], 5, scale: 0.1)
                for t in [x, gamma, beta, w1, w2] { t.requiresGrad = true }
                weak var norm: TensorStorage?, upsampled: TensorStorage?
                let y: Tensor
                do {
                    let h = groupNorm(x, groups: 8, weight: gamma, bias: beta, thenSiLU: true)
                    norm = h.storage
                    let down = conv2d(h, weight: w1, stride: 2, padding: Padding2D(1))   // 4×4, oneDNN
                    let up = upsampleNearest2x(down)
                    upsampled = up.storage
                    y = conv2d(up, weight: w2, padding: Padding2D(1))                   // 8×8, Winograd
                }
                let (normKept, upsampledKept) = (norm != nil, upsampled != nil)
                (y * randn(y.shape, 6)).sum().backward()
                return ([x, gamma, beta, w1, w2].map { $0.grad!.scalars }, normKept, upsampledKept)
            }
        }
    }

    @Test("conv_input: recompute frees the norm's and the upsampling's outputs after the forward and gives bitwise the gradients of keep")
    func convInputRecompute() {
        let keep = normConvUpsampleConv(EngineOptions(winogradInput: .recompute, convInput: .keep))
        let recompute = normConvUpsampleConv(EngineOptions(winogradInput: .recompute, convInput: .recompute))
        #expect(keep.normKept && keep.upsampledKept)
        #expect(!recompute.normKept && !recompute.upsampledKept)
        #expect(keep.grads == recompute.grads)
        #expect(keep.grads.allSatisfy { g in g.contains { $0 != 0 } })
    }

    @Test("the pool holds live + cached to the most ever alive: a new size returns the buffers idle longest to the system")
    func poolReleasesIdleBuffers() {
        let pool = BufferPool()
        (pool.slackFraction, pool.slackMinimumBytes) = (0, 0)
        let small = 1 << 19, large = 3 << 19   // 2 MiB and 6 MiB: too far apart to serve each other
        let first = (0..<4).map { _ in pool.take(count: small) }
        for p in first { p[small - 1] = 1 }
        for p in first { pool.give(p, count: small) }
        #expect(pool.cachedBytesNow == 4 * small * 4 && pool.unmappedCount == 0)
        let second = pool.take(count: large)
        second[large - 1] = 2
        // 8 MiB was the most alive; 6 live + 8 cached is over it, so 6 MiB of the oldest went back.
        #expect(pool.unmappedCount == 3)
        #expect(pool.liveBytes + pool.cachedBytesNow <= 8 << 20)
        pool.give(second, count: large)
        pool.trim()
        #expect(pool.cachedBytesNow == 0 && pool.liveBytes == 0)
    }

    @Test("a request takes a cached buffer up to twice its size, which goes back to its own size class")
    func poolUpsizes() {
        let pool = BufferPool()
        let big = pool.take(count: 3 << 18)
        pool.give(big, count: 3 << 18)
        let smaller = pool.take(count: 2 << 18)
        #expect(smaller == big && pool.mappedCount == 1)
        #expect(pool.liveBytes == 3 << 20)   // counted at the size it really is
        pool.give(smaller, count: 2 << 18)
        #expect(pool.take(count: 3 << 18) == big && pool.mappedCount == 1)
        pool.give(big, count: 3 << 18)
        #expect(pool.liveBytes == 0)
        pool.trim()
    }
}
