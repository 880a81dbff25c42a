import Distributed
import Foundation
import NN

// What every stage's loop needs around the model: gradient buckets, the watchdog
// deadline, and the optional sample trace.

/// Gradient buckets over `arena` (each parameter reports readiness by its index
/// in the arena's layout).
public func makeSynchronizer(_ arena: ParameterArena, _ config: DistributedConfig, _ comm: Communicator) -> GradientSynchronizer {
    for (i, e) in arena.entries.enumerated() { e.tensor.readyIndex = i }
    return GradientSynchronizer(gradients: arena.gradients.pointer, parameters: arena.entries.map(\.tensor), offsets: arena.entries.map(\.offset),
                                arenaCount: arena.count, communicator: comm,
                                firstBucketBytes: Int(config.firstBucketMiB * 1_048_576), bucketBytes: Int(config.bucketMiB * 1_048_576),
                                overlap: config.overlap, pollInterval: config.pollMicroseconds > 0 ? config.pollMicroseconds / 1e6 : nil)
}

/// The watchdog's deadline: the configured seconds, or max(120 s, 20× the median of
/// the recent step times).
func setWatchdog(_ config: DistributedConfig, _ stepSeconds: [Double], _ comm: Communicator) {
    guard let mpi = comm as? MPICommunicator else { return }
    if config.watchdogSeconds > 0 {
        mpi.deadline = config.watchdogSeconds
    } else {
        let recent = stepSeconds.suffix(50).sorted()
        mpi.deadline = max(120, 20 * (recent.isEmpty ? 0 : recent[recent.count / 2]))
    }
}

/// With LDM_TRACE_SAMPLES=PATH, each rank appends "step epoch i,j,..." lines to
/// PATH.rank<r>: the global sample indices it trained on, so tests can check that
/// no sample is repeated or skipped across resumes and world sizes.
final class SampleTrace {
    private let handle: FileHandle

    init?(rank: Int) {
        guard let base = ProcessInfo.processInfo.environment["LDM_TRACE_SAMPLES"] else { return nil }
        let path = "\(base).rank\(rank)"
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { return nil }
        h.seekToEndOfFile()
        handle = h
    }

    func record(step: Int, epoch: Int, indices: [Int]) {
        handle.write(Data("\(step) \(epoch) \(indices.map(String.init).joined(separator: ","))\n".utf8))
    }
}
