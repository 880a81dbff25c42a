import Foundation
import Storage
import Testing
import Training

/// The prepared dataset, made once per test process from Debian's package.
let preparedDataset: String = {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftldm-fmnist-\(ProcessInfo.processInfo.processIdentifier).h5").path
    try! ImageDataset.prepareFashionMNIST(source: "/usr/share/datasets/fashion-mnist", out: path)
    return path
}()

@Suite("Data")
struct DataTests {
    @Test("prepare converts Debian's Fashion-MNIST: 60000 + 10000 images, 6000 and 1000 of each class")
    func prepare() throws {
        let train = try ImageDataset.load(preparedDataset, split: "train")
        let test = try ImageDataset.load(preparedDataset, split: "test")
        #expect((train.count, train.channels, train.height, train.width) == (60000, 1, 28, 28))
        #expect(test.count == 10000 && test.images.count == 10000 * 784)
        for c in 0..<10 {
            #expect(train.labels.filter { $0 == c }.count == 6000)
            #expect(test.labels.filter { $0 == c }.count == 1000)
        }
        #expect(!FileManager.default.fileExists(atPath: preparedDataset + ".partial"))
    }

    @Test("prepare without the package says which apt package to install")
    func prepareMissing() {
        let e = #expect(throws: DataError.self) { try ImageDataset.prepareFashionMNIST(source: "/nonexistent", out: "/tmp/x.h5") }
        #expect(e?.description.contains("apt-get install dataset-fashion-mnist") == true)
    }

    @Test("a dataset file with the wrong image shape or a missing split is named in the error")
    func badDataset() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftldm-bad-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("bad.h5").path
        let f = try HDF5File.create(path)
        try f.write("train/images", shape: [4, 28, 28], [UInt8](repeating: 0, count: 4 * 784))
        try f.write("train/labels", shape: [4], [UInt8](repeating: 0, count: 4))
        try f.close()
        let shape = #expect(throws: DataError.self) { try ImageDataset.load(path, split: "train") }
        #expect(shape?.description.contains("'train/images' has shape [4, 28, 28]") == true)
        let split = #expect(throws: DataError.self) { try ImageDataset.load(path, split: "test") }
        #expect(split?.description.contains("test/images") == true)
        let garbage = dir.appendingPathComponent("garbage.h5").path
        try Data(repeating: 7, count: 1000).write(to: URL(fileURLWithPath: garbage))
        let notHDF5 = #expect(throws: DataError.self) { try ImageDataset.load(garbage, split: "train") }
        #expect(notHDF5?.description.contains(garbage) == true)
    }

    @Test("an epoch's order is a permutation, fixed by (seed, epoch), different across epochs")
    func permutation() {
        let a = epochPermutation(count: 1000, seed: 3, epoch: 0)
        #expect(a.sorted() == Array(0..<1000))
        #expect(a == epochPermutation(count: 1000, seed: 3, epoch: 0))
        #expect(a != epochPermutation(count: 1000, seed: 3, epoch: 1))
        #expect(a != epochPermutation(count: 1000, seed: 4, epoch: 0))
        #expect(a.enumerated().filter { $0.offset == $0.element }.count < 10)
    }

    @Test("a global batch is the same set of samples for any split into ranks and micro-batches")
    func batchPlan() {
        let layouts = [(8, 1, 1), (4, 2, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1), (1, 1, 8)]
        for offset in [0, 8, 56, 88] {
            var sets: [[Int]] = []
            for (b, ranks, acc) in layouts {
                let plan = BatchPlan(datasetSize: 100, perRankBatch: b, ranks: ranks, accumulate: acc)
                #expect(plan.globalBatch == 8 && plan.stepsPerEpoch == 12)
                var all: [Int] = []
                for r in 0..<ranks { for m in 0..<acc { all += Array(plan.positions(offset: offset, rank: r, micro: m)) } }
                sets.append(all.sorted())
            }
            #expect(sets.allSatisfy { $0 == sets[0] })
            #expect(sets[0] == Array(offset..<(offset + 8)))
        }
        let plan = BatchPlan(datasetSize: 100, perRankBatch: 8, ranks: 1, accumulate: 1)
        #expect(plan.batchStart(epoch: 0, offset: 88) == (0, 88))
        #expect(plan.batchStart(epoch: 0, offset: 96) == (1, 0))   // 4 left: dropped
    }

    @Test("images are padded to 32 with −1, scaled to [−1, 1], and flipped per (seed, epoch, sample)")
    func batcher() throws {
        let split = try ImageDataset.load(preparedDataset, split: "test")
        let plain = try ImageBatcher(split: split, resolution: 32, flip: false, seed: 0)
        let x = plain.images([5], epoch: 0)
        #expect(x.shape == [1, 32, 32, 1])
        let v = x.scalars
        #expect(v[0] == -1 && v[32 * 32 - 1] == -1)
        let pixel: Float = Float(split.images[5 * 784 + 10 * 28 + 14]) / 127.5 - 1
        let at = (2 + 10) * 32 + 2 + 14
        #expect(v[at] == pixel)
        let flipping = try ImageBatcher(split: split, resolution: 32, flip: true, seed: 0)
        var flipped = 0
        for i in 0..<200 {
            let a = plain.images([i], epoch: 0).scalars, b = flipping.images([i], epoch: 0).scalars
            #expect(b == flipping.images([i], epoch: 0).scalars)
            if a != b {
                flipped += 1
                let mirrored = (2 + 10) * 32 + 2 + 24, original = (2 + 10) * 32 + 2 + 3
                #expect(b[mirrored] == a[original])
            }
        }
        #expect(flipped > 70 && flipped < 130)
    }
}
