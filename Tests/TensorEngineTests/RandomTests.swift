import Testing
import TensorEngine

@Suite("Counter-based random numbers")
struct RandomTests {
    /// Known-answer vectors of Philox-4x32-10 from Random123's kat_vectors.
    @Test("Philox-4x32-10 known answers", arguments: [
        (SIMD4<UInt32>(0, 0, 0, 0), SIMD2<UInt32>(0, 0), SIMD4<UInt32>(0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8)),
        (SIMD4<UInt32>(repeating: .max), SIMD2<UInt32>(repeating: .max),
         SIMD4<UInt32>(0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd)),
        (SIMD4<UInt32>(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344), SIMD2<UInt32>(0xa409_3822, 0x299f_31d0),
         SIMD4<UInt32>(0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1)),
    ])
    func knownAnswers(_ counter: SIMD4<UInt32>, _ key: SIMD2<UInt32>, _ expected: SIMD4<UInt32>) {
        #expect(Philox.block(counter: counter, key: key) == expected)
    }

    @Test("any slice of a stream equals the same elements of the whole stream")
    func pureFunctionOfIndex() {
        let stream = RandomStream(seed: 42, stream: 7)
        let whole = Tensor.randomNormal([1000], stream: stream).scalars
        for (offset, count) in [(0, 1), (3, 10), (5, 1), (997, 3), (400, 200)] {
            let part = Tensor.randomNormal([count], stream: stream, offset: UInt64(offset)).scalars
            #expect(part == Array(whole[offset..<(offset + count)]))
        }
        let uniformWhole = Tensor.randomUniform([64], stream: stream).scalars
        #expect(Tensor.randomUniform([7], stream: stream, offset: 30).scalars == Array(uniformWhole[30..<37]))
    }

    @Test("streams and seeds are independent")
    func independence() {
        let a = Tensor.randomNormal([256], stream: RandomStream(seed: 1, stream: 0)).scalars
        let b = Tensor.randomNormal([256], stream: RandomStream(seed: 1, stream: 1)).scalars
        let c = Tensor.randomNormal([256], stream: RandomStream(seed: 2, stream: 0)).scalars
        #expect(a != b && a != c && b != c)
        var corr = 0.0
        for i in 0..<256 { corr += Double(a[i]) * Double(b[i]) }
        #expect(abs(corr / 256) < 0.2)
    }

    @Test("normal samples have mean 0 and variance 1; uniform samples lie in [0, 1)")
    func moments() {
        let n = 200_000
        let x = Tensor.randomNormal([n], stream: RandomStream(seed: 3)).scalars.map(Double.init)
        let mean = x.reduce(0, +) / Double(n)
        let variance = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n)
        #expect(abs(mean) < 0.01)          // 4.5 standard errors
        #expect(abs(variance - 1) < 0.015)
        let u = Tensor.randomUniform([n], stream: RandomStream(seed: 4)).scalars
        #expect(u.allSatisfy { $0 >= 0 && $0 < 1 })
        #expect(abs(u.map(Double.init).reduce(0, +) / Double(n) - 0.5) < 0.005)
    }
}
