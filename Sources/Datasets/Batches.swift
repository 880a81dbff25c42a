import Foundation
import Storage
import TensorEngine

/// What a per-sample random number is for; each purpose has its own streams.
public enum SampleRandomness: UInt64, Sendable {
    case shuffle = 1, flip, posterior, diffusionTime, diffusionNoise, conditionDrop, sampling, inpaintingMask, codeReseed
}

/// The random stream of one training sample for one purpose: a pure function of
/// (seed, purpose, epoch, global sample index), never of the rank or the number
/// of ranks, so any world size trains the same model (ARCHITECTURE.md, "Data").
public func sampleStream(seed: Int, _ purpose: SampleRandomness, epoch: Int, index: Int) -> RandomStream {
    precondition(index >= 0 && index < 1 << 32 && epoch >= 0 && epoch < 1 << 24,
                 "sample stream out of range: epoch \(epoch), index \(index)")
    return RandomStream(seed: UInt64(bitPattern: Int64(seed)),
                        stream: purpose.rawValue << 56 | UInt64(epoch) << 32 | UInt64(index))
}

/// The order of an epoch: a permutation of 0..<count from (seed, epoch) by
/// Fisher–Yates with 64-bit Philox draws.
public func epochPermutation(count: Int, seed: Int, epoch: Int) -> [Int] {
    var order = Array(0..<count)
    let stream = sampleStream(seed: seed, .shuffle, epoch: epoch, index: 0)
    var i = count - 1
    while i > 0 {
        let w = stream.block(UInt64(i))
        let r = (UInt64(w[0]) << 32 | UInt64(w[1])) % UInt64(i + 1)
        order.swapAt(i, Int(r))
        i -= 1
    }
    return order
}

/// Which samples each rank sees at each step. A global batch of
/// perRankBatch × ranks × accumulate samples is a contiguous run of the epoch's
/// permutation starting at the data cursor (epoch, offset); rank r takes the r-th
/// slice of it, micro-batch a the a-th part of that. A run that would cross the
/// end of the epoch is dropped and the next epoch starts, so every rank runs the
/// same number of steps. The cursor is in samples, not steps, so a run resumed with
/// another number of ranks continues with no sample repeated or skipped.
public struct BatchPlan: Sendable, Equatable {
    public let datasetSize: Int
    public let perRankBatch: Int
    public let ranks: Int
    public let accumulate: Int

    public init(datasetSize: Int, perRankBatch: Int, ranks: Int, accumulate: Int) {
        (self.datasetSize, self.perRankBatch, self.ranks, self.accumulate) = (datasetSize, perRankBatch, ranks, accumulate)
    }

    public var globalBatch: Int { perRankBatch * ranks * accumulate }
    public var stepsPerEpoch: Int { datasetSize / globalBatch }

    /// Where the next global batch starts for a cursor at (epoch, offset).
    public func batchStart(epoch: Int, offset: Int) -> (epoch: Int, offset: Int) {
        offset + globalBatch > datasetSize ? (epoch + 1, 0) : (epoch, offset)
    }

    /// Positions in the epoch's permutation read by `rank`'s micro-batch `micro` of
    /// the global batch starting at `offset`.
    public func positions(offset: Int, rank: Int, micro: Int) -> Range<Int> {
        let start = offset + (rank * accumulate + micro) * perRankBatch
        return start..<(start + perRankBatch)
    }
}

/// Turns dataset rows into model inputs: u8 [C, H, W] → NHWC float in [−1, 1],
/// zero-padded (−1 after scaling) to the model resolution when smaller (28 → 32 for
/// Fashion-MNIST), optionally flipped left to right with probability ½ per sample
/// and epoch. Rows are read from the file when asked for; `prefetch` starts reading
/// the rows of a coming batch on a background thread, so reading overlaps compute.
public final class ImageBatcher: @unchecked Sendable {
    public let split: DatasetSplit
    public let resolution: Int
    public let flip: Bool
    public let seed: Int
    private let reader: RowPrefetcher

    public init(split: DatasetSplit, resolution: Int, flip: Bool, seed: Int) throws {
        guard resolution >= split.height, resolution >= split.width else {
            throw DataError("\(split.path): images are \(split.height)×\(split.width), larger than the model resolution \(resolution)")
        }
        (self.split, self.resolution, self.flip, self.seed) = (split, resolution, flip, seed)
        reader = RowPrefetcher(split)
    }

    /// Starts reading the rows `indices` in the background (at most two batches ahead).
    public func prefetch(_ indices: [Int]) { reader.prefetch(indices) }

    /// Images `indices` as [indices.count, R, R, C]; flips drawn for `epoch` (none when nil).
    public func images(_ indices: [Int], epoch: Int?) throws -> Tensor {
        let rows = try reader.images(indices)
        let (c, h, w, r) = (split.channels, split.height, split.width, resolution)
        let top = (r - h) / 2, left = (r - w) / 2, per = split.pixelsPerImage
        let out = Tensor(shape: [indices.count, r, r, c], repeating: -1)
        let p = out.pointer
        rows.withUnsafeBufferPointer { images in
            for (b, index) in indices.enumerated() {
                var mirrored = false
                if flip, let epoch {
                    var u: Float = 0
                    sampleStream(seed: seed, .flip, epoch: epoch, index: index).fillUniform(&u, count: 1)
                    mirrored = u < 0.5
                }
                for ch in 0..<c {
                    for y in 0..<h {
                        for x in 0..<w {
                            let v = Float(images[b * per + (ch * h + y) * w + x]) / 127.5 - 1
                            let ox = left + (mirrored ? w - 1 - x : x)
                            p[((b * r + top + y) * r + ox) * c + ch] = v
                        }
                    }
                }
            }
        }
        return out
    }

    /// Labels of `indices` (−1 where a row has none).
    public func labels(_ indices: [Int]) -> [Int] { indices.map { Int(split.labels[$0]) } }
}

/// Reads rows of a split on one background thread, a bounded number of batches
/// ahead; a batch not asked for in advance is read when it is needed.
final class RowPrefetcher: @unchecked Sendable {
    private final class Pending: @unchecked Sendable {
        let rows: [Int]
        var result: Result<[UInt8], Error>?
        let done = DispatchSemaphore(value: 0)
        init(_ rows: [Int]) { self.rows = rows }
    }

    private let split: DatasetSplit
    private let queue = DispatchQueue(label: "swiftldm.rows")
    private let lock = NSLock()
    private var pending: [Pending] = []
    static let depth = 2

    init(_ split: DatasetSplit) { self.split = split }

    func prefetch(_ rows: [Int]) {
        lock.lock()
        defer { lock.unlock() }
        guard !pending.contains(where: { $0.rows == rows }) else { return }
        if pending.count == Self.depth { pending.removeFirst() }
        let job = Pending(rows)
        pending.append(job)
        queue.async { [split] in
            job.result = Result { try split.images(rows) }
            job.done.signal()
        }
    }

    func images(_ rows: [Int]) throws -> [UInt8] {
        lock.lock()
        let job = pending.firstIndex { $0.rows == rows }.map { pending.remove(at: $0) }
        lock.unlock()
        guard let job else { return try split.images(rows) }
        job.done.wait()
        return try job.result!.get()
    }
}
