import Foundation

/// A scheduler's warning before it kills a job (Slurm's `--signal`, a user's Ctrl-C):
/// SIGTERM, SIGUSR1 or SIGINT on any rank sets a flag; the training loop folds it into
/// the all-reduce every step makes, so all ranks see it at the same step boundary, save
/// a checkpoint together and exit with `exitStatus`. A second signal ends the process
/// at once (status 128 + signal).
public enum Preemption {
    /// The signals that ask a run to save and stop.
    public static let signals: [Int32] = [SIGTERM, SIGUSR1, SIGINT]
    /// The exit status of a run that saved and stopped for preemption: 75, EX_TEMPFAIL
    /// ("try again"); `Launch/slurm.sbatch` requeues the job on it.
    public static let exitStatus: Int32 = 75

    /// Installs the handlers with the flag cleared (a training loop's start).
    public static func install() {
        pendingSignal = 0
        for s in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = onPreemptionSignal
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(s, &action, nil)
        }
    }

    /// Restores the default actions (the loop has ended).
    public static func uninstall() { for s in signals { signal(s, SIG_DFL) } }

    /// The signal that asked this rank to stop, or 0.
    public static var received: Int32 { pendingSignal }

    /// SIGTERM, SIGUSR1, ...
    public static func name(_ signal: Int32) -> String {
        [SIGTERM: "SIGTERM", SIGUSR1: "SIGUSR1", SIGINT: "SIGINT"][signal] ?? "signal \(signal)"
    }
}

/// Written by the handler only (an aligned 32-bit store, as sig_atomic_t).
private var pendingSignal: Int32 = 0

private func onPreemptionSignal(_ signal: Int32) {
    if pendingSignal != 0 { _exit(128 + signal) }
    pendingSignal = signal
}

/// Every rank stopped at the same step boundary after saving a checkpoint.
public struct Preempted: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}
