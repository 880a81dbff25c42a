import NN
import Testing
import TensorEngine
import TestSupport

@Suite("Patch discriminator")
struct DiscriminatorTests {
    @Test("keys and shapes are CompVis's NLayerDiscriminator (input 1, ndf 64, 3 layers)")
    func keys() {
        let d = NLayerDiscriminator(inChannels: 1, channels: 64, layers: 3, ParameterInitializer(seed: 1))
        let expected: [(String, [Int])] = [
            ("main.0.weight", [64, 1, 4, 4]), ("main.0.bias", [64]), ("main.2.weight", [128, 64, 4, 4]),
            ("main.3.weight", [128]), ("main.3.bias", [128]), ("main.5.weight", [256, 128, 4, 4]), ("main.6.weight", [256]),
            ("main.6.bias", [256]), ("main.8.weight", [512, 256, 4, 4]), ("main.9.weight", [512]), ("main.9.bias", [512]),
            ("main.11.weight", [1, 512, 4, 4]), ("main.11.bias", [1]),
        ]
        let ours = d.namedParameters()
        #expect(ours.map(\.key) == expected.map(\.0))
        #expect(ours.map(\.tensor.shape) == expected.map(\.1))
        #expect(withoutGradient { d(randn([2, 32, 32, 1], 1)) }.shape == [2, 2, 2, 1])
    }

    @Test("BatchNorm2D normalises each channel over (N, H, W)")
    func batchNorm() {
        let bn = BatchNorm2D(3)
        let x = randn([4, 2, 5, 3], 1, scale: 2).adding(3)
        let y = withoutGradient { bn(x) }.scalars, v = x.scalars
        for c in 0..<3 {
            let xs = stride(from: c, to: v.count, by: 3).map { Double(v[$0]) }, ys = stride(from: c, to: y.count, by: 3).map { Double(y[$0]) }
            let mean = xs.reduce(0, +) / Double(xs.count), variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
            for (a, b) in zip(xs, ys) { #expect(abs((a - mean) / (variance + 1e-5).squareRoot() - b) < 1e-4) }
        }
    }

    /// LeakyReLU's kink makes central differences across it a secant (an error
    /// proportional to the step), so the composition is checked with slope 1 here;
    /// LeakyReLU itself has its own row in the op table.
    @Test("gradient with respect to the input and the weights (tiny discriminator, convs and BatchNorm)")
    func gradients() {
        let d = NLayerDiscriminator(inChannels: 1, channels: 8, layers: 2, slope: 1, ParameterInitializer(seed: 2))
        let x = randn([2, 16, 16, 1], 3)
        let report = gradCheck([x], directions: 3) { d($0[0]) }
        #expect(report.worstError < 2e-3, "\(report)")
        let weights = d.parameters().filter { $0.rank == 4 }.prefix(2) + d.parameters().filter { $0.rank == 1 }.prefix(2)
        let w = gradCheckInPlace(Array(weights), directions: 3) { d(x) }
        #expect(w.worstError < 2e-3, "\(w)")
    }
}
