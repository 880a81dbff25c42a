import Distributed
import Foundation
import TensorEngine
import Training

/// Where one training step's memory goes (`ldm-train bench autoencoder|unet --memory`):
/// the tensor memory alive before the step, the most alive at once during it and
/// where on the tape that was, and what the forward keeps for the backward, by op.
/// Tensor memory is what `BufferPool` has handed out and not had back; the peak RSS
/// adds the code, oneDNN's kernels and buffers the pool holds for reuse.
public struct MemoryProfile: Codable, Sendable {
    /// The net memory one kind of op left alive during the forward.
    public struct OpMemory: Codable, Sendable {
        public var op: String
        public var count: Int
        public var mib: Double
    }

    /// Where in the step the peak fell.
    public enum Phase: String, Codable, Sendable {
        case forward, backward
        /// The last backward, the all-reduce or the optimizer.
        case afterBackward = "after backward"
    }

    public var bench: String
    public var batchSize: Int
    /// Parameters, their gradients, the optimizer's state and the batch.
    public var beforeStepMib: Double
    public var peakLiveMib: Double
    public var peakPhase: Phase
    /// The op in whose forward or backward the peak fell, its place on the tape and the tape's length.
    public var peakOp: String
    public var peakOpIndex: Int
    public var tapeLength: Int
    /// What the pool held for reuse at the end of the step.
    public var cachedMib: Double
    /// Large buffers the pool mapped anew and gave back to the system during the step
    /// (0 and 0 once it has settled: nothing is page-faulted in again each step).
    public var mappedDuringStep: Int
    public var unmappedDuringStep: Int
    /// Alive at the end of the forward beyond `beforeStepMib`.
    public var keptByForwardMib: Double
    /// Largest first.
    public var keptByOp: [OpMemory]
    public var peakRssMib: Double
    /// The process's resident set before the warm-up steps: code, libraries, the model.
    public var residentAtStartMib: Double
    public var engine = Engine.options

    enum CodingKeys: String, CodingKey {
        case bench, batchSize = "batch_size", beforeStepMib = "before_step_mib", peakLiveMib = "peak_live_mib"
        case peakPhase = "peak_phase", peakOp = "peak_op", peakOpIndex = "peak_op_index", tapeLength = "tape_length"
        case cachedMib = "cached_mib", mappedDuringStep = "mapped_during_step", unmappedDuringStep = "unmapped_during_step", keptByForwardMib = "kept_by_forward_mib", keptByOp = "kept_by_op"
        case peakRssMib = "peak_rss_mib", residentAtStartMib = "resident_at_start_mib", engine
    }

    /// Profiles one step of `model` after `warmUp` unprofiled ones (kernels and caches built).
    public static func run(_ model: String, config: Config, batch: Int, warmUp: Int = 2,
                           communicator comm: Communicator) throws -> MemoryProfile {
        let w = ModelBenchmark.workload(model, config: config, batch: batch, communicator: comm)
        let sync = makeSynchronizer(w.arena, config.distributed, comm)
        let resident = PeakMemory.currentMiB()
        for _ in 0..<warmUp { try w.step(sync) }
        let pool = BufferPool.shared, mib = { (bytes: Int) in Double(bytes) / 1_048_576 }
        let before = pool.liveBytes
        pool.resetPeak()
        var recorder = Recorder(before: before)
        let tape = Tape.current
        tape.observer = { recorder.observe($0, pool) }
        defer { tape.observer = nil }
        let mapped = (pool.mappedCount, pool.unmappedCount)
        try w.step(sync)
        recorder.finish(pool)
        let kept = recorder.kept.map { OpMemory(op: $0.key, count: recorder.counts[$0.key] ?? 0, mib: mib($0.value)) }
        return MemoryProfile(bench: w.name, batchSize: batch, beforeStepMib: mib(before), peakLiveMib: mib(pool.peakLiveBytes),
                             peakPhase: recorder.peak.phase, peakOp: recorder.peak.op, peakOpIndex: recorder.peak.index,
                             tapeLength: recorder.tapeLength, cachedMib: mib(pool.cachedBytesNow),
                             mappedDuringStep: pool.mappedCount - mapped.0, unmappedDuringStep: pool.unmappedCount - mapped.1,
                             keptByForwardMib: mib(recorder.forwardEnd - before),
                             keptByOp: kept.sorted { $0.mib > $1.mib }, peakRssMib: PeakMemory.residentMiB(),
                             residentAtStartMib: resident)
    }

    /// Samples the pool at every tape event. The peak rose within the interval that
    /// ends at an event: an op's forward ends with its recording, while a backward
    /// event starts an op's backward, so the interval before it was the previous op's.
    private struct Recorder {
        var lastLive: Int, lastPeak: Int
        var kept: [String: Int] = [:], counts: [String: Int] = [:]
        var forwardEnd = 0, tapeLength = 0
        var previous: (phase: Phase, op: String, index: Int) = (.forward, "(before the first op)", 0)
        var peak: (phase: Phase, op: String, index: Int) = (.forward, "(before the first op)", 0)
        var inForward = true

        init(before: Int) { (lastLive, lastPeak) = (before, before) }

        mutating func observe(_ event: TapeEvent, _ pool: BufferPool) {
            let (live, peakNow) = (pool.liveBytes, pool.peakLiveBytes)
            switch event {
            case let .recorded(op, index):
                let name = Self.name(op)
                kept[name, default: 0] += live - lastLive
                counts[name, default: 0] += 1
                if peakNow > lastPeak { peak = (.forward, name, index) }
                previous = (.forward, name, index)
                tapeLength = index + 1
            case let .backward(op, index):
                if inForward { (inForward, forwardEnd) = (false, live) }
                if peakNow > lastPeak { peak = previous.phase == .forward ? (.forward, "(the loss, before backward)", tapeLength) : previous }
                previous = (.backward, Self.name(op), index)
            }
            (lastLive, lastPeak) = (live, peakNow)
        }

        mutating func finish(_ pool: BufferPool) {
            if pool.peakLiveBytes > lastPeak { peak = (.afterBackward, "(the last backward, all-reduce or optimizer)", previous.index) }
        }

        /// "conv2d(_:weight:bias:stride:padding:)" → "conv2d".
        static func name(_ op: StaticString) -> String {
            let s = op.description
            return String(s.prefix(while: { $0 != "(" }))
        }
    }
}
