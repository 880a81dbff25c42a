import Datasets
import Foundation
import Storage
import Testing
import TestSupport
import Training

/// The prepared dataset, made once per test process from Debian's package.
let preparedDataset: String = {
    let path = testScratch.appendingPathComponent("fashion-mnist.h5").path
    try! FashionMNIST.prepare(source: FashionMNIST.defaultSource, out: path)
    return path
}()

@Suite("Data")
struct DataTests {
    @Test("prepare converts Debian's Fashion-MNIST: 60000 + 10000 images, 6000 and 1000 of each class, rows traceable to the IDX file")
    func prepare() throws {
        let train = try DatasetSplit.open(preparedDataset, split: .train)
        let test = try DatasetSplit.open(preparedDataset, split: .test)
        #expect((train.count, train.channels, train.height, train.width) == (60000, 1, 28, 28))
        #expect(test.count == 10000 && train.classNames == FashionMNIST.classNames)
        for c in Int32(0)..<10 {
            #expect(train.labels.filter { $0 == c }.count == 6000)
            #expect(test.labels.filter { $0 == c }.count == 1000)
        }
        let rows = try test.rows([9999, 3])
        #expect(rows[0].fileName == "t10k-images-idx3-ubyte.gz#9999" && rows[1].caption.isEmpty && rows[1].label == test.labels[3])
        let idx = try FashionMNIST.readIDX("\(FashionMNIST.defaultSource)/t10k-images-idx3-ubyte.gz").data
        #expect(rows[1].image == Array(idx[(3 * 784)..<(4 * 784)]))
        #expect(!FileManager.default.fileExists(atPath: preparedDataset + ".partial"))
    }

    @Test("prepare without the package says which apt package to install")
    func prepareMissing() {
        let e = #expect(throws: DataError.self) { try FashionMNIST.prepare(source: "/nonexistent", out: "/tmp/x.h5") }
        #expect(e?.description.contains("apt-get install dataset-fashion-mnist") == true)
    }

    @Test("batches read from the file: any row order, prefetched or not, equal the stored rows")
    func streaming() throws {
        let split = try DatasetSplit.open(preparedDataset, split: .train)
        let batcher = try ImageBatcher(split: split, resolution: 28, flip: false, seed: 0)
        let rows = [59999, 7, 31000, 7, 0]
        let direct = try batcher.images(rows, epoch: nil).scalars
        batcher.prefetch(rows)
        batcher.prefetch([1, 2, 3])
        #expect(try batcher.images(rows, epoch: nil).scalars == direct)
        #expect(try batcher.images([1, 2, 3], epoch: nil).scalars == (try batcher.images([1, 2, 3], epoch: nil)).scalars)
        let idx = try FashionMNIST.readIDX("\(FashionMNIST.defaultSource)/train-images-idx3-ubyte.gz").data
        for (b, row) in rows.enumerated() {
            let stored: [Float] = idx[(row * 784)..<((row + 1) * 784)].map { Float($0) / 127.5 - 1 }
            #expect(Array(direct[(b * 784)..<((b + 1) * 784)]) == stored)
        }
    }

    @Test("a dataset file with the wrong image shape, a missing split, an old format or no format is named in the error")
    func badDataset() throws {
        let dir = temporaryDirectory()
        let path = dir.appendingPathComponent("bad.h5").path
        let f = try HDF5File.create(path)
        try f.write("train/images", shape: [4, 28, 28], [UInt8](repeating: 0, count: 4 * 784))
        try f.write("train/labels", shape: [4], [Int32](repeating: 0, count: 4))
        try f.writeStrings("train/captions", ["", "", "", ""])
        try f.writeStrings("train/file_name", ["a", "b", "c", "d"])
        try f.setAttribute("format", DatasetFile.format)
        try f.setAttribute("format_version", DatasetFile.version)
        try f.close()
        let shape = #expect(throws: DataError.self) { try DatasetSplit.open(path, split: .train) }
        #expect(shape?.description.contains("'train/images' is u8 [4, 28, 28], expected u8 [N, C, H, W]") == true)
        let split = #expect(throws: DataError.self) { try DatasetSplit.open(path, split: .test) }
        #expect(split?.description.contains("no dataset 'test/images'") == true)
        let old = try HDF5File.open(path, writable: true)
        try old.setAttribute("format_version", Int64(1))
        try old.close()
        let version = #expect(throws: DataError.self) { try DatasetSplit.open(path, split: .train) }
        #expect(version?.description.contains("run 'ldm-train prepare' again") == true)
        let legacy = dir.appendingPathComponent("legacy.h5").path
        try HDF5File.create(legacy).close()
        let unformatted = #expect(throws: DataError.self) { try DatasetSplit.open(legacy, split: .train) }
        #expect(unformatted?.description.contains("\(legacy): not a dataset made by 'ldm-train prepare'") == true)
        let garbage = dir.appendingPathComponent("garbage.h5").path
        try Data(repeating: 7, count: 1000).write(to: URL(fileURLWithPath: garbage))
        let notHDF5 = #expect(throws: DataError.self) { try DatasetSplit.open(garbage, split: .train) }
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
        let split = try DatasetSplit.open(preparedDataset, split: .test)
        let plain = try ImageBatcher(split: split, resolution: 32, flip: false, seed: 0)
        let x = try plain.images([5], epoch: 0)
        #expect(x.shape == [1, 32, 32, 1])
        let v = x.scalars
        #expect(v[0] == -1 && v[32 * 32 - 1] == -1)
        let pixel: Float = Float(try split.images([5])[10 * 28 + 14]) / 127.5 - 1
        let at = (2 + 10) * 32 + 2 + 14
        #expect(v[at] == pixel)
        let flipping = try ImageBatcher(split: split, resolution: 32, flip: true, seed: 0)
        var flipped = 0
        for i in 0..<200 {
            let a = try plain.images([i], epoch: 0).scalars, b = try flipping.images([i], epoch: 0).scalars
            #expect(b == (try flipping.images([i], epoch: 0)).scalars)
            if a != b {
                flipped += 1
                let mirrored = (2 + 10) * 32 + 2 + 24, original = (2 + 10) * 32 + 2 + 3
                #expect(b[mirrored] == a[original])
            }
        }
        #expect(flipped > 70 && flipped < 130)
    }
}
