import Benchmarks
import Testing
import Training

@Suite("Reference model shapes")
struct ReferenceShapeTests {
    /// The autoencoder issue measured 8.4 GFLOP per image for forward + backward.
    @Test("the autoencoder's convs and matmuls add up to ~8.4 GFLOP per image")
    func autoencoderFlops() {
        let shapes = ReferenceShapes.autoencoder(batch: 64)
        let perImage = shapes.map { Double($0.count) * $0.trainingFlops }.reduce(0, +) / 64 / 1e9
        #expect(abs(perImage - 8.4) < 0.3, "got \(perImage) GFLOP per image")
    }

    @Test("every conv of both models has a valid output size and each name appears once")
    func wellFormed() {
        for shapes in [ReferenceShapes.autoencoder(batch: 2), ReferenceShapes.unet(batch: 2)] {
            #expect(Set(shapes.map(\.name)).count == shapes.count)
            for s in shapes where s.kind == .conv {
                #expect((s.h + s.padding[0] + s.padding[1] - s.k) / s.stride + 1 >= 1, "\(s.name)")
            }
        }
    }
}
