import CMPI
import Foundation

/// An MPI call that failed: which call, and MPI's own words for the error.
public struct MPIError: Error, CustomStringConvertible {
    public let call: String
    public let detail: String
    public var description: String { "MPI \(call) failed: \(detail)" }
}

/// The communicator of a job started by mpirun: the one file that talks to MPI.
/// MPI_Init_thread asks for MPI_THREAD_MULTIPLE (gradient buckets are reduced on a
/// communication thread); every return code goes through `check`. A watchdog
/// thread ends the job when a collective has not finished within `deadline`
/// seconds (a peer that hangs or was stopped), naming rank, context and collective.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localSize: Int
    private let world: MPI_Comm

    /// Seconds a collective may take before the watchdog aborts the job.
    public var deadline: Double {
        get { watch.withLock { $0.deadline } }
        set { watch.withLock { $0.deadline = newValue } }
    }
    /// What the rank is doing, for the watchdog's message (e.g. "step 12").
    public var context: String {
        get { watch.withLock { $0.context } }
        set { watch.withLock { $0.context = newValue } }
    }
    private let watch = Mutex(WatchState())
    struct WatchState {
        var deadline = 120.0
        var context = "starting"
        var collective: String?
        var since = Date()
    }

    public init() throws {
        var provided: Int32 = 0
        try Self.check(MPI_Init_thread(nil, nil, shim_MPI_THREAD_MULTIPLE(), &provided), "Init_thread")
        guard provided >= shim_MPI_THREAD_MULTIPLE() else {
            throw MPIError(call: "Init_thread", detail: "this MPI gives thread level \(provided), SwiftLDM needs MPI_THREAD_MULTIPLE")
        }
        world = shim_MPI_COMM_WORLD()
        try Self.check(MPI_Comm_set_errhandler(world, shim_MPI_ERRORS_RETURN()), "Comm_set_errhandler")
        var r: Int32 = 0, n: Int32 = 0
        try Self.check(MPI_Comm_rank(world, &r), "Comm_rank")
        try Self.check(MPI_Comm_size(world, &n), "Comm_size")
        var node: MPI_Comm?
        try Self.check(MPI_Comm_split_type(world, shim_MPI_COMM_TYPE_SHARED(), r, shim_MPI_INFO_NULL(), &node), "Comm_split_type")
        var local: Int32 = 0
        try Self.check(MPI_Comm_size(node, &local), "Comm_size (node)")
        MPI_Comm_free(&node)
        (rank, size, localSize) = (Int(r), Int(n), Int(local))
        startWatchdog()
    }

    /// Leaves MPI; call once, when every rank is done.
    public func finalize() { MPI_Finalize() }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try allReduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, type: shim_MPI_FLOAT(), size: 4)
    }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        try allReduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, type: shim_MPI_DOUBLE(), size: 8)
    }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {
        try allReduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, type: shim_MPI_INT64_T(), size: 8)
    }

    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingReduction {
        guard let base = buffer.baseAddress, buffer.count > 0, buffer.count <= 1 << 30 else {
            try allReduceSum(buffer)   // empty, or too large for one MPI count: done blocking
            return CompletedReduction()
        }
        return try start("all-reduce of \(buffer.count) elements", "Iallreduce") {
            MPI_Iallreduce(shim_MPI_IN_PLACE(), base, Int32(buffer.count), shim_MPI_FLOAT(), shim_MPI_SUM(), world, &$0)
        }
    }

    /// Starts a nonblocking collective (`call` fills in the request), watched by the
    /// watchdog until it completes.
    private func start(_ what: String, _ name: String, _ call: (inout MPI_Request?) -> Int32) throws -> MPIPending {
        watch.withLock { $0.collective = what; $0.since = Date() }
        var request = shim_MPI_REQUEST_NULL()
        do {
            try Self.check(call(&request), name)
        } catch {
            watch.withLock { $0.collective = nil }
            throw error
        }
        return MPIPending(request: request, watch: watch)
    }

    /// In-place sum, in pieces of at most 2^30 elements (MPI counts are Int32).
    private func allReduce(_ base: UnsafeMutableRawPointer?, count: Int, type: MPI_Datatype, size: Int) throws {
        guard let base, count > 0 else { return }
        try watched("all-reduce of \(count) elements") {
            var offset = 0
            while offset < count {
                let n = min(count - offset, 1 << 30)
                try Self.check(MPI_Allreduce(shim_MPI_IN_PLACE(), base + offset * size, Int32(n), type, shim_MPI_SUM(), world), "Allreduce")
                offset += n
            }
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try watched("broadcast of \(buffer.count) bytes") {
            var offset = 0
            while offset < buffer.count {
                let n = min(buffer.count - offset, 1 << 30)
                try Self.check(MPI_Bcast(base + offset, Int32(n), shim_MPI_BYTE(), Int32(root), world), "Bcast")
                offset += n
            }
        }
    }

    public func allGather(_ bytes: [UInt8]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: bytes.count * size)
        try watched("all-gather") {
            try bytes.withUnsafeBytes { send in
                try out.withUnsafeMutableBytes { receive in
                    try Self.check(MPI_Allgather(send.baseAddress, Int32(bytes.count), shim_MPI_BYTE(), receive.baseAddress,
                                                 Int32(bytes.count), shim_MPI_BYTE(), world), "Allgather")
                }
            }
        }
        return out
    }

    public func barrier() throws { try watched("barrier") { try Self.check(MPI_Barrier(world), "Barrier") } }

    /// MPI_Ibarrier, then MPI_Test every millisecond (OpenMPI progresses it only
    /// inside those calls), sleeping in between.
    public func sleepingBarrier() throws {
        let pending = try start("barrier", "Ibarrier") { MPI_Ibarrier(world, &$0) }
        while try !pending.poll() { usleep(1000) }
    }

    public func abort(code: Int32) -> Never {
        MPI_Abort(world, code)
        exit(code)
    }

    // MARK: watchdog

    /// Runs a collective with the watchdog looking.
    private func watched<R>(_ what: String, _ body: () throws -> R) rethrows -> R {
        watch.withLock { $0.collective = what; $0.since = Date() }
        defer { watch.withLock { $0.collective = nil } }
        return try body()
    }

    private func startWatchdog() {
        let thread = Thread { [watch, rank] in
            while true {
                Thread.sleep(forTimeInterval: 1)
                let state = watch.withLock { $0 }
                guard let what = state.collective else { continue }
                let waited = Date().timeIntervalSince(state.since)
                if waited > state.deadline {
                    let line = String(format: "rank %d: %@: the %@ has not finished after %.0f s (deadline %.0f s): a peer rank "
                                      + "has stopped or hung; ending the job\n", rank, state.context, what, waited, state.deadline)
                    FileHandle.standardError.write(Data(line.utf8))
                    // MPI_Abort may never return when a peer's host is unreachable: this
                    // process ends itself regardless, so nothing is left running.
                    Thread.detachNewThread { Thread.sleep(forTimeInterval: 10); _exit(3) }
                    MPI_Abort(shim_MPI_COMM_WORLD(), 3)
                    _exit(3)
                }
            }
        }
        thread.name = "mpi-watchdog"
        thread.start()
    }

    /// Every MPI return code passes here.
    static func check(_ code: Int32, _ call: String) throws {
        guard code != MPI_SUCCESS else { return }
        var text = [CChar](repeating: 0, count: Int(shim_MPI_MAX_ERROR_STRING()) + 1)
        var length: Int32 = 0
        MPI_Error_string(code, &text, &length)
        throw MPIError(call: call, detail: String(cString: text))
    }
}

/// A nonblocking collective in flight, under the watchdog until it completes.
final class MPIPending: PendingReduction {
    private var request: MPI_Request?
    private var done = false
    private let watch: Mutex<MPICommunicator.WatchState>

    init(request: MPI_Request?, watch: Mutex<MPICommunicator.WatchState>) { (self.request, self.watch) = (request, watch) }

    func poll() throws -> Bool {
        guard !done else { return true }
        var flag: Int32 = 0
        try MPICommunicator.check(MPI_Test(&request, &flag, shim_MPI_STATUS_IGNORE()), "Test")
        if flag != 0 {
            done = true
            watch.withLock { $0.collective = nil }
        }
        return done
    }
}

/// A value behind a lock.
final class Mutex<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
