import Foundation

/// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
/// SC'11): a counter-based generator, so the n-th number of a stream is computed
/// directly, with no state to carry, split, or keep in step across ranks.
public enum Philox {
    /// The 4×32-bit output block for a 128-bit counter and a 64-bit key.
    @inline(__always)
    public static func block(counter: SIMD4<UInt32>, key: SIMD2<UInt32>) -> SIMD4<UInt32> {
        var c = counter, k = key
        for round in 0..<10 {
            if round > 0 { k &+= SIMD2(0x9E37_79B9, 0xBB67_AE85) }    // Weyl key schedule
            let p0 = UInt64(0xD251_1F53) &* UInt64(c[0]), p1 = UInt64(0xCD9E_8D57) &* UInt64(c[2])
            c = SIMD4(UInt32(truncatingIfNeeded: p1 >> 32) ^ c[1] ^ k[0], UInt32(truncatingIfNeeded: p1),
                      UInt32(truncatingIfNeeded: p0 >> 32) ^ c[3] ^ k[1], UInt32(truncatingIfNeeded: p0))
        }
        return c
    }
}

/// An endless sequence of random numbers, a pure function of (seed, stream, index):
/// block b of stream s under seed k is Philox(counter = (b, s), key = k), and each
/// block gives four 32-bit words. Later stages key streams by (seed, epoch, global
/// sample index) so results never depend on the rank or the number of ranks.
public struct RandomStream: Sendable, Hashable {
    public let seed: UInt64
    public let stream: UInt64

    public init(seed: UInt64, stream: UInt64 = 0) {
        self.seed = seed
        self.stream = stream
    }

    /// The four 32-bit words of block `index`.
    @inline(__always)
    public func block(_ index: UInt64) -> SIMD4<UInt32> {
        Philox.block(counter: SIMD4(UInt32(truncatingIfNeeded: index), UInt32(truncatingIfNeeded: index >> 32),
                                    UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32)),
                     key: SIMD2(UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)))
    }

    /// Uniform in [0, 1) from the top 24 bits of a word.
    @inline(__always)
    static func unit(_ w: UInt32) -> Float { Float(w >> 8) * 0x1p-24 }

    /// Writes elements `offset ..< offset + count` of the stream's uniform [0, 1) sequence.
    public func fillUniform(_ out: UnsafeMutablePointer<Float>, count: Int, offset: UInt64 = 0) {
        fill(out, count: count, offset: offset) { w in SIMD4(Self.unit(w[0]), Self.unit(w[1]), Self.unit(w[2]), Self.unit(w[3])) }
    }

    /// Writes elements `offset ..< offset + count` of the stream's standard normal
    /// sequence (Box–Muller on word pairs (0,1) and (2,3) of each block).
    public func fillNormal(_ out: UnsafeMutablePointer<Float>, count: Int, offset: UInt64 = 0) {
        fill(out, count: count, offset: offset) { w in
            func pair(_ a: UInt32, _ b: UInt32) -> (Float, Float) {
                let u1 = (Double(a >> 8) + 0.5) * 0x1p-24          // in (0, 1): log is finite
                let u2 = Double(b >> 8) * 0x1p-24
                let r = (-2 * Foundation.log(u1)).squareRoot(), theta = 2 * Double.pi * u2
                return (Float(r * Foundation.cos(theta)), Float(r * Foundation.sin(theta)))
            }
            let (a, b) = pair(w[0], w[1]), (c, d) = pair(w[2], w[3])
            return SIMD4(a, b, c, d)
        }
    }

    private func fill(_ out: UnsafeMutablePointer<Float>, count: Int, offset: UInt64,
                      _ transform: (SIMD4<UInt32>) -> SIMD4<Float>) {
        var i = 0
        while i < count {
            let position = offset + UInt64(i)
            let values = transform(block(position / 4))
            var lane = Int(position % 4)
            while lane < 4 && i < count {
                out[i] = values[lane]
                lane += 1
                i += 1
            }
        }
    }
}

extension Tensor {
    /// Normal(mean, std²) samples: elements `offset…` of `stream`'s normal sequence.
    public static func randomNormal(_ shape: [Int], stream: RandomStream, offset: UInt64 = 0,
                                    mean: Float = 0, std: Float = 1) -> Tensor {
        let t = Tensor(uninitialized: shape)
        stream.fillNormal(t.pointer, count: t.count, offset: offset)
        if mean != 0 || std != 1 { for i in 0..<t.count { t.pointer[i] = mean + std * t.pointer[i] } }
        return t
    }

    /// Uniform [low, high) samples: elements `offset…` of `stream`'s uniform sequence.
    public static func randomUniform(_ shape: [Int], stream: RandomStream, offset: UInt64 = 0,
                                     low: Float = 0, high: Float = 1) -> Tensor {
        let t = Tensor(uninitialized: shape)
        stream.fillUniform(t.pointer, count: t.count, offset: offset)
        for i in 0..<t.count { t.pointer[i] = low + (high - low) * t.pointer[i] }
        return t
    }
}
