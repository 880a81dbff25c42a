/// The collective operations data-parallel training needs. Every rank calls the
/// same collectives in the same order; a world of one process is `SingleProcess`,
/// the same code path as N ranks with every collective trivially complete.
public protocol Communicator: AnyObject {
    /// This process's rank in 0..<size.
    var rank: Int { get }
    /// Number of ranks.
    var size: Int { get }
    /// Ranks on this node (for threads per rank).
    var localSize: Int { get }

    /// Element-wise sum over ranks, in place.
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws
    /// Starts an in-place sum over ranks that completes while `poll()` is called
    /// (MPI_Iallreduce; OpenMPI here progresses it only inside MPI calls). The
    /// buffer must not be touched until `poll()` has returned true.
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingReduction
    /// Copies `root`'s bytes into every rank's buffer.
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws
    /// Every rank's `bytes` (same length on all ranks), concatenated in rank order.
    func allGather(_ bytes: [UInt8]) throws -> [UInt8]
    func barrier() throws
    /// A barrier for ranks that may wait long while another works: it sleeps
    /// between checks instead of spinning as MPI's waits do, so a waiting rank
    /// leaves its core to the ranks still working.
    func sleepingBarrier() throws
    /// Ends every rank of the job with `code` (MPI_Abort under MPI).
    func abort(code: Int32) -> Never
}

/// A sum over ranks in flight.
public protocol PendingReduction: AnyObject {
    /// True once the sum is in the buffer; each call lets MPI make progress.
    func poll() throws -> Bool
}

/// A reduction that finished when it started (one rank; or done blocking).
final class CompletedReduction: PendingReduction {
    func poll() throws -> Bool { true }
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }

    /// Sum of one value over ranks.
    public func sum(_ value: Double) throws -> Double {
        var v = [value]
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        return v[0]
    }

    /// Sum of one integer over ranks.
    public func sum(_ value: Int64) throws -> Int64 {
        var v = [value]
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        return v[0]
    }

    /// True on every rank when `flag` is true on every rank: the way all ranks reach
    /// the same decision (an error on one rank stops them all, none left waiting).
    public func all(_ flag: Bool) throws -> Bool { try sum(flag ? 0 : Int64(1)) == 0 }

    /// Every rank's `values` (same count on all ranks), concatenated in rank order.
    public func allGather<T: BitwiseCopyable>(values: [T]) throws -> [T] {
        try allGather(values.withUnsafeBytes { Array($0) }).withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
    }

    /// Every rank's list of strings (of any length), in rank order.
    public func allGather(strings: [String]) throws -> [[String]] {
        let bytes = Array(strings.joined(separator: "\u{0}").utf8)
        let lengths = try allGather(values: [Int64(bytes.count), Int64(strings.count)])
        let width = Int(stride(from: 0, to: lengths.count, by: 2).map { lengths[$0] }.max() ?? 0)
        let gathered = try allGather(bytes + [UInt8](repeating: 0, count: width - bytes.count))
        return (0..<size).map { r in
            guard lengths[2 * r + 1] > 0 else { return [] }
            let own = gathered[(r * width)..<(r * width + Int(lengths[2 * r]))]
            return own.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    /// The first non-empty `problem` in rank order, on every rank (nil when no rank has
    /// one): how ranks that each did their own part agree on one message.
    public func firstProblem(_ problem: String) throws -> String? {
        try allGather(strings: [problem]).flatMap { $0 }.first { !$0.isEmpty }
    }

    /// Root's string on every rank.
    public func broadcast(_ string: String, root: Int = 0) throws -> String {
        var length = [Int64(string.utf8.count)]
        try length.withUnsafeMutableBytes { try broadcast($0, root: root) }
        var bytes = rank == root ? Array(string.utf8) : [UInt8](repeating: 0, count: Int(length[0]))
        try bytes.withUnsafeMutableBytes { try broadcast($0, root: root) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A world of one: collectives return at once with the buffer unchanged (a sum over
/// one rank), so a single-process run takes the same path as an MPI one.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var localSize: Int { 1 }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {}
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingReduction { CompletedReduction() }
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root == 0, "broadcast from rank \(root) in a world of one")
    }
    public func allGather(_ bytes: [UInt8]) throws -> [UInt8] { bytes }
    public func barrier() throws {}
    public func sleepingBarrier() throws {}
    public func abort(code: Int32) -> Never { exit(code) }
}

#if canImport(Glibc)
import Glibc
#endif
