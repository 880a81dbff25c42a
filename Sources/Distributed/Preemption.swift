import Foundation

/// A scheduler's warning before it kills a job (Slurm's `--signal`, a user's Ctrl-C):
/// SIGTERM, SIGUSR1 or SIGINT on any rank sets a flag; the training loop folds it into
/// the all-reduce every step makes, so all ranks see it at the same step boundary, save
/// a checkpoint together and exit with `exitStatus`. A second signal ends the process
/// at once (status 128 + signal).
///
/// No thread of the process ever runs a handler for these signals. `start()`, the first
/// thing `ldm-train` does, blocks them before any other thread exists (MPI's, oneDNN's,
/// the gradient buckets'), so every later thread inherits the mask, and one thread takes
/// them with sigwait. A handler would run on the stack of whichever thread the signal
/// landed on, and oneDNN 2.x's JIT f32 GEMM kernels (the batched matrix products of the
/// Winograd convolutions) point rsp into the heap while they run: a signal there writes
/// its frame into live heap memory, which then fails far from the cause.
/// Outside a training loop a signal keeps its default meaning: the process ends by it.
public enum Preemption {
    /// The signals that ask a run to save and stop.
    public static let signals: [Int32] = [SIGTERM, SIGUSR1, SIGINT]
    /// The exit status of a run that saved and stopped for preemption: 75, EX_TEMPFAIL
    /// ("try again"); `Launch/slurm.sbatch` requeues the job on it.
    public static let exitStatus: Int32 = 75

    /// The receiving thread's name (as /proc and debuggers show it); while it waits in
    /// sigwait the kernel lifts its block of these signals.
    public static let receiverName = "ldm-signals"

    private struct State {
        var started = false
        var armed = false
        var pending: Int32 = 0
    }
    private static let state = Mutex(State())

    /// Blocks the signals in this thread (and so in every thread it starts from now on)
    /// and starts the thread that receives them. Call at the top of `main`, before MPI
    /// or any library starts a thread; later calls do nothing.
    public static func start() {
        let first = state.withLock { s -> Bool in
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        var set = signalSet
        pthread_sigmask(SIG_BLOCK, &set, nil)
        for s in signals { signal(s, SIG_DFL) }   // not ignored, though a parent shell may have ignored SIGINT
        Thread.detachNewThread {
            try? Data(receiverName.utf8).write(to: URL(fileURLWithPath: "/proc/thread-self/comm"))
            receive()
        }
    }

    /// A training loop begins: from now a signal asks it to save and stop (flag cleared).
    /// Starts the receiving thread if `main` did not (a process that hosts the library).
    public static func install() {
        start()
        state.withLock { $0.armed = true; $0.pending = 0 }
    }

    /// The loop has ended: a signal ends the process again.
    public static func uninstall() { state.withLock { $0.armed = false } }

    /// The signal that asked this rank to stop, or 0.
    public static var received: Int32 { state.withLock { $0.pending } }

    /// SIGTERM, SIGUSR1, ...
    public static func name(_ signal: Int32) -> String {
        [SIGTERM: "SIGTERM", SIGUSR1: "SIGUSR1", SIGINT: "SIGINT"][signal] ?? "signal \(signal)"
    }

    private static var signalSet: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        return set
    }

    /// The receiving thread: records the first signal of a training loop, ends the process
    /// on a second one, and outside a loop lets the signal take its default action.
    private static func receive() {
        var set = signalSet
        while true {
            var number: Int32 = 0
            guard sigwait(&set, &number) == 0 else { continue }
            let (armed, earlier) = state.withLock { s -> (Bool, Int32) in
                let earlier = s.pending
                if s.armed && earlier == 0 { s.pending = number }
                return (s.armed, earlier)
            }
            if !armed { endBy(number) }
            if earlier != 0 { _exit(128 + number) }
        }
    }

    /// Ends the process by signal `number` with its default action, as if it had never been blocked.
    private static func endBy(_ number: Int32) -> Never {
        signal(number, SIG_DFL)
        var one = sigset_t()
        sigemptyset(&one)
        sigaddset(&one, number)
        pthread_sigmask(SIG_UNBLOCK, &one, nil)
        raise(number)
        _exit(128 + number)
    }
}

/// Every rank stopped at the same step boundary after saving a checkpoint.
public struct Preempted: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}
