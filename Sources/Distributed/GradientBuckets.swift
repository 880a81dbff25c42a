import Foundation
import TensorEngine

/// Averages gradients over ranks the way PyTorch DDP's reducer does: parameters
/// are grouped into flat buckets (the first small, ~1 MiB, so communication starts
/// early; then ~25 MiB) over the gradient arena, whose layout follows the order
/// backward finishes gradients (`ParameterArena`); the gradients live in the arena
/// (no copies). During
/// backward, each parameter reports when its gradient is final
/// (`Tape.onGradientReady`), and parameters the forward did not use (cross-attention
/// to one token skips to_q and to_k) count as final when backward starts, as with
/// DDP's find_unused_parameters; a bucket whose parameters are all final is summed
/// over ranks by a communication thread, in bucket order on every rank, while
/// backward goes on. OpenMPI here has no asynchronous progress, so the thread
/// either issues blocking MPI_Allreduce calls, or (`pollInterval`) starts
/// MPI_Iallreduce and calls MPI_Test every `pollInterval` seconds while backward
/// runs, sleeping in between instead of spinning on a core backward needs, then
/// without pause once backward is over; `overlap: false` reduces every bucket after
/// backward instead (to measure what the overlap buys).
public final class GradientSynchronizer {
    /// A run of whole parameters: floats `range` of the arena, parameters `parameters`.
    public struct Bucket: Equatable, Sendable {
        public let range: Range<Int>
        public let parameters: Range<Int>
    }

    public let buckets: [Bucket]
    /// The bucket of each parameter (by its index in the arena's layout order).
    private let bucketOf: [Int]
    private let parameters: [Tensor]
    private let gradients: UnsafeMutablePointer<Float>
    private let comm: Communicator
    public let overlap: Bool
    /// nil: blocking MPI_Allreduce on the thread.
    public let pollInterval: Double?

    // Shared with the communication thread, under `condition`.
    private let condition = NSCondition()
    private var remaining: [Int] = []     // per bucket: parameters not yet final
    private var isFinal: [Bool] = []      // per parameter
    private var completed: [Int] = []     // buckets, in the order they became complete
    private var next = 0                  // the bucket the thread reduces next
    private var active = false
    private var backwardRunning = false
    private var failure: Error?
    private var thread: Thread?
    private var stopping = false
    /// Signalled by the communication thread as it ends.
    private let threadEnded = DispatchSemaphore(value: 0)
    /// Seconds the last `finish()` waited for communication after backward ended.
    public private(set) var lastExposedSeconds = 0.0
    /// The buckets that became complete during the last backward, in that order;
    /// with the arena in gradient order this is 0, 1, 2, ... (the others were
    /// released by `finish()`).
    public private(set) var lastCompletionOrder: [Int] = []

    /// `parameters` are the tensors at `offsets` (in floats) of the arena, in its
    /// order, each with its index as `readyIndex`; buckets close at parameter
    /// boundaries once they reach their size (a parameter larger than a bucket gets
    /// a bucket of its own).
    public init(gradients: UnsafeMutablePointer<Float>, parameters: [Tensor], offsets: [Int], arenaCount: Int,
                communicator: Communicator, firstBucketBytes: Int = 1 << 20, bucketBytes: Int = 25 << 20, overlap: Bool = true,
                pollInterval: Double? = nil) {
        var buckets: [Bucket] = [], bucketOf: [Int] = []
        var start = 0, firstParameter = 0
        precondition(parameters.count == offsets.count && parameters.indices.allSatisfy { parameters[$0].readyIndex == $0 },
                     "gradient buckets need one offset per parameter and each parameter's index as its readyIndex")
        for i in parameters.indices {
            bucketOf.append(buckets.count)
            let end = i + 1 < parameters.count ? offsets[i + 1] : arenaCount
            let limit = (buckets.isEmpty ? firstBucketBytes : bucketBytes) / 4
            if end - start >= limit || i == parameters.count - 1 {
                buckets.append(Bucket(range: start..<end, parameters: firstParameter..<(i + 1)))
                (start, firstParameter) = (end, i + 1)
            }
        }
        self.buckets = buckets
        self.bucketOf = bucketOf
        self.parameters = parameters
        self.gradients = gradients
        self.comm = communicator
        self.overlap = overlap && communicator.size > 1
        self.pollInterval = pollInterval
    }

    deinit { shutDown() }

    /// Ends the communication thread and waits for it (the end of a stage). Its loop
    /// holds the synchronizer, so until this is called neither the synchronizer nor the
    /// stage's arena, optimizer and model it keeps alive can be freed.
    public func shutDown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
        if thread != nil { threadEnded.wait() }
        thread = nil
    }

    /// Hooks into this thread's tape before the forward of the last micro-batch.
    public func beginBackward() {
        condition.lock()
        remaining = buckets.map { $0.parameters.count }
        isFinal = Array(repeating: false, count: parameters.count)
        completed = []
        next = 0
        active = true
        backwardRunning = true
        failure = nil
        condition.unlock()
        if overlap && thread == nil { startThread() }
        let tape = Tape.current
        tape.onGradientReady = { [weak self] index in self?.parametersReady([index]) }
        tape.onBackwardStart = { [weak self] in self?.releaseUnused() }
    }

    /// At the start of each backward: parameters that take gradients but were not
    /// used by the forward (and are not final yet) are final now. A parameter frozen
    /// during this backward (the discriminator during the generator's) is not.
    private func releaseUnused() {
        parametersReady(parameters.indices.filter { parameters[$0].requiresGrad && parameters[$0].pendingUses == 0 && !isFinal[$0] })
    }

    /// Called by the tape when these parameters' gradients are final.
    func parametersReady(_ indices: [Int]) {
        guard !indices.isEmpty else { return }
        condition.lock()
        for index in indices where !isFinal[index] {
            isFinal[index] = true
            let b = bucketOf[index]
            remaining[b] -= 1
            if remaining[b] == 0 {
                completed.append(b)
                condition.broadcast()
            }
        }
        condition.unlock()
    }

    /// After backward: buckets whose parameters were never used are released, and
    /// this waits until every bucket has been summed over ranks.
    public func finish() throws {
        Tape.current.onGradientReady = nil
        Tape.current.onBackwardStart = nil
        let waitStart = Date()
        condition.lock()
        lastCompletionOrder = completed
        backwardRunning = false
        condition.unlock()
        if overlap {
            condition.lock()
            for b in buckets.indices { remaining[b] = 0 }
            condition.broadcast()
            while active && failure == nil { condition.wait() }
            let error = failure
            condition.unlock()
            if let error { throw error }
        } else {
            for bucket in buckets { try reduce(bucket) }
            condition.lock()
            active = false
            condition.unlock()
        }
        lastExposedSeconds = Date().timeIntervalSince(waitStart)
    }

    /// Sums every bucket now (no tape involved): for steps without hooks.
    public func reduceAll() throws {
        for bucket in buckets { try reduce(bucket) }
    }

    private func reduce(_ bucket: Bucket) throws {
        try comm.allReduceSum(UnsafeMutableBufferPointer(start: gradients + bucket.range.lowerBound, count: bucket.range.count))
    }

    /// Blocking, or started and polled (see `pollInterval`).
    private func reduceOnThread(_ bucket: Bucket) throws {
        guard let pollInterval else { return try reduce(bucket) }
        let pending = try comm.startAllReduceSum(UnsafeMutableBufferPointer(start: gradients + bucket.range.lowerBound,
                                                                              count: bucket.range.count))
        while try !pending.poll() {
            condition.lock()
            let pause = backwardRunning
            condition.unlock()
            if pause { usleep(UInt32(pollInterval * 1e6)) }
        }
    }

    private func startThread() {
        let t = Thread { [weak self] in self?.communicate() }
        t.name = "gradient-buckets"
        t.start()
        thread = t
    }

    /// The communication thread: reduces bucket `next` once it is complete, in order.
    private func communicate() {
        condition.lock()
        while !stopping {
            guard active, next < buckets.count, remaining[next] == 0 else {
                condition.wait()
                continue
            }
            let bucket = buckets[next]
            condition.unlock()
            var error: Error?
            do { try reduceOnThread(bucket) } catch let e { error = e }
            condition.lock()
            if let error { failure = error }
            next += 1
            if next == buckets.count || failure != nil {
                active = false
                condition.broadcast()
            }
        }
        condition.unlock()
        threadEnded.signal()
    }
}
