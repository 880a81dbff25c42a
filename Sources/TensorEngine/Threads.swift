import Dispatch
import Foundation

/// The one thread-count setting of the engine: Swift kernels split work over this
/// many threads and oneDNN (OpenMP) uses the same number.
public enum Threads {
    nonisolated(unsafe) private static var configured: Int = defaultCount()

    /// Threads per process: all cores for one process; cores ÷ local ranks under
    /// MPI (OpenMPI and Slurm announce the local rank count in the environment).
    public static func defaultCount() -> Int {
        let env = ProcessInfo.processInfo.environment
        if let s = env["LDM_THREADS"], let n = Int(s), n > 0 { return n }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let localRanks = ["OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "MPI_LOCALNRANKS"]
            .lazy.compactMap { env[$0].flatMap(Int.init) }.first ?? 1
        return max(1, cores / max(1, localRanks))
    }

    /// The current thread count.
    public static var count: Int { configured }

    /// Sets the thread count for the engine and for oneDNN.
    public static func configure(_ n: Int) {
        precondition(n >= 1, "thread count must be >= 1, got \(n)")
        configured = n
        DNNL.setThreads(n)
    }
}

/// Runs `body` over `0..<count` split into contiguous chunks, one per thread.
/// Small jobs (below `grain` items) run inline on the caller.
@inline(__always)
public func parallelFor(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
    let threads = min(Threads.count, max(1, count / max(grain, 1)))
    if threads <= 1 {
        body(0..<count)
        return
    }
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let lo = count * t / threads, hi = count * (t + 1) / threads
            if lo < hi { body(lo..<hi) }
        }
    }
}
