import CZlib
import Distributed
import Foundation

/// A tensor a checkpoint saves and restores in place: its key in the file
/// (`params/encoder/conv_in/weight`), shape, and memory (a view into an arena).
public struct CheckpointTensor {
    public let key: String
    public let shape: [Int]
    public let pointer: UnsafeMutablePointer<Float>
    public var count: Int { shape.reduce(1, *) }

    public init(key: String, shape: [Int], pointer: UnsafeMutablePointer<Float>) {
        (self.key, self.shape, self.pointer) = (key, shape, pointer)
    }

    /// CompVis key with dots → HDF5 path under `group`.
    public static func path(_ group: String, _ key: String) -> String { group + "/" + key.replacingOccurrences(of: ".", with: "/") }
}

/// Where a run stands, as saved with its tensors.
public struct TrainingCursor: Sendable, Equatable {
    public var step = 0
    /// The data cursor: the epoch of the last batch and the position in that
    /// epoch's permutation where the next batch starts.
    public var epoch = 0
    public var epochOffset = 0
    /// Training samples consumed so far, over all ranks.
    public var samplesConsumed: Int64 = 0
    /// EMA updates applied (stage 2).
    public var emaUpdates = 0
    public init() {}
}

/// The attributes of a checkpoint's index.h5.
public struct CheckpointAttributes {
    public var kind: String
    public var cursor: TrainingCursor
    public var worldSize: Int
    public var seed: Int
    public var effectiveLR: Double
    public var config: String
    /// Further string attributes (e.g. the autoencoder a diffusion model's latents came from).
    public var extra: [String: String] = [:]
    public init(kind: String, cursor: TrainingCursor, worldSize: Int, seed: Int, effectiveLR: Double, config: String) {
        (self.kind, self.cursor, self.worldSize, self.seed, self.effectiveLR, self.config) = (kind, cursor, worldSize, seed, effectiveLR, config)
    }
}

/// A checkpoint problem that stops a run: one line naming the directory and tensor.
public enum CheckpointError: Error, CustomStringConvertible {
    case invalid(path: String, reason: String)
    case shapeMismatch(path: String, tensor: String, expected: [Int], found: [Int])
    case wrongKind(path: String, expected: String, found: String)
    case saveFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .invalid(path, reason): return "\(path): not a usable checkpoint: \(reason)"
        case let .shapeMismatch(path, tensor, expected, found):
            return "\(path): tensor '\(tensor)' has shape \(found), this model needs \(expected) (a checkpoint of another model shape?)"
        case let .wrongKind(path, expected, found): return "\(path): holds a '\(found)' model, expected '\(expected)'"
        case let .saveFailed(path, reason): return "\(path): saving the checkpoint failed: \(reason)"
        }
    }
}

/// Sharded, atomic checkpoints in `<run>/step-<N>/` (ARCHITECTURE.md, "Storage formats"):
/// every rank writes a byte-balanced share of the tensors to its own shard file;
/// once all shards are on disk and their sizes and CRC-32s gathered, rank 0 writes
/// index.h5 (attributes and one virtual dataset per tensor), renames
/// `step-<N>.partial` to `step-<N>` and replaces `latest`. A crash at any point
/// leaves the previous checkpoint as it was.
public final class CheckpointStore {
    /// The step directory the last `restore` loaded, if any.
    public internal(set) var restoredFrom: String?
    public static let format = "swiftldm-checkpoint"
    public static let formatVersion: Int64 = 1
    let runDirectory: String
    let comm: Communicator
    let say: (String) -> Void

    public init(runDirectory: String, communicator: Communicator, say: @escaping (String) -> Void) {
        (self.runDirectory, comm, self.say) = (runDirectory, communicator, say)
    }

    public static func directoryName(step: Int) -> String { String(format: "step-%08d", step) }
    public static func shardName(rank: Int, of size: Int) -> String { String(format: "shard-%05d-of-%05d.h5", rank, size) }

    /// Which rank writes each tensor: largest first to the least-loaded rank (ties
    /// to the lower rank), the same on every rank.
    public static func assignment(_ tensors: [CheckpointTensor], ranks: Int) -> [Int] {
        var load = [Int](repeating: 0, count: ranks), owner = [Int](repeating: 0, count: tensors.count)
        for i in tensors.indices.sorted(by: { (tensors[$0].count, $1) > (tensors[$1].count, $0) }) {
            let r = load.indices.min { (load[$0], $0) < (load[$1], $1) }!
            owner[i] = r
            load[r] += tensors[i].count
        }
        return owner
    }

    /// Saves `tensors` as step `step` with every rank; keeps the newest `keep` checkpoints.
    public func save(step: Int, tensors: [CheckpointTensor], attributes: CheckpointAttributes, keep: Int) throws {
        let final = "\(runDirectory)/\(Self.directoryName(step: step))", partial = final + ".partial"
        let started = Date()
        var problem: String?
        if comm.isRoot {
            do {
                try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
                try? FileManager.default.removeItem(atPath: partial)
                // The size of the newest checkpoint (the same tensors, the same chunks), else the tensors'
                // bytes plus a quarter for chunk padding and each file's metadata; refused before a byte is written.
                let previous = Self.stepDirectories(runDirectory).first.map { FileSystem.bytes(below: "\(runDirectory)/\($0.name)") } ?? 0
                let bytes = max(previous, tensors.reduce(Int64(0)) { $0 + Int64($1.count) * 5 } + Int64(comm.size + 1) << 20)
                try FileSystem.checkSpace(for: bytes, at: runDirectory) { CheckpointError.saveFailed(path: partial, reason: $0) }
                try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: false)
            } catch let e as CheckpointError { problem = e.description } catch {
                problem = FileSystem.describe(error, path: partial, doing: "create the checkpoint directory")
            }
        }
        problem = try comm.broadcast(problem ?? "").nonEmpty
        if let problem { throw DataError(problem) }
        // Every rank writes its share and reports (ok, bytes, crc).
        let owner = Self.assignment(tensors, ranks: comm.size)
        let shard = Self.shardName(rank: comm.rank, of: comm.size)
        var report = [Int64](repeating: 0, count: 3)
        do {
            let file = try HDF5File.create("\(partial)/\(shard)")
            var written = 0
            for (t, r) in zip(tensors, owner) where r == comm.rank {
                if written == 1 { FaultInjection.point("save-shards", step: step, rank: comm.rank) }
                written += 1
                try file.write(t.key, shape: t.shape, UnsafeBufferPointer(start: t.pointer, count: t.count),
                               chunkRows: max(1, (1 << 18) / max(1, t.count / max(1, t.shape.first ?? 1))))
            }
            try file.close()
            try fsync(path: "\(partial)/\(shard)")
            let (bytes, crc) = try Self.sizeAndCRC("\(partial)/\(shard)")
            report = [1, bytes, crc]
        } catch {
            problem = "rank \(comm.rank): \(error)"
        }
        let reports = try comm.allGather(values: report)
        if let first = try comm.firstProblem(problem ?? "") {
            if comm.isRoot { try? FileManager.default.removeItem(atPath: partial) }   // every rank is done with it
            throw CheckpointError.saveFailed(path: partial, reason: first)
        }
        if comm.isRoot {
            do {
                try writeIndex(partial, tensors: tensors, owner: owner, attributes: attributes, reports: reports)
                try fsync(path: partial)
                FaultInjection.point("save-rename", step: step, rank: 0)
                if FileManager.default.fileExists(atPath: final) { try FileManager.default.removeItem(atPath: final) }
                try FileManager.default.moveItem(atPath: partial, toPath: final)
                try fsync(path: runDirectory)
                try replaceLatest(with: Self.directoryName(step: step))
                try prune(keep: keep)
            } catch {
                problem = error is CheckpointError || error is HDF5Error ? "\(error)" : FileSystem.describe(error, path: final, doing: "publish the checkpoint")
                try? FileManager.default.removeItem(atPath: partial)
            }
        }
        problem = try comm.broadcast(problem ?? "").nonEmpty
        if let problem { throw CheckpointError.saveFailed(path: final, reason: problem) }
        let bytes = stride(from: 1, to: reports.count, by: 3).reduce(Int64(0)) { $0 + reports[$1] }
        say(String(format: "saved %@ (%.1f MB in %d shard(s)) in %.2f s", final, Double(bytes) / 1e6, comm.size,
                   Date().timeIntervalSince(started)))
    }

    private func writeIndex(_ directory: String, tensors: [CheckpointTensor], owner: [Int], attributes a: CheckpointAttributes,
                            reports: [Int64]) throws {
        let index = try HDF5File.create("\(directory)/index.h5")
        try index.setAttribute("format", Self.format)
        try index.setAttribute("format_version", Self.formatVersion)
        try index.setAttribute("model", a.kind)
        try index.setAttribute("step", Int64(a.cursor.step))
        try index.setAttribute("epoch", Int64(a.cursor.epoch))
        try index.setAttribute("epoch_offset", Int64(a.cursor.epochOffset))
        try index.setAttribute("samples_consumed", a.cursor.samplesConsumed)
        try index.setAttribute("ema_updates", Int64(a.cursor.emaUpdates))
        try index.setAttribute("world_size", Int64(a.worldSize))
        try index.setAttribute("seed", Int64(a.seed))
        try index.setAttribute("effective_lr", a.effectiveLR)
        try index.setAttribute("config", a.config)
        try index.setAttribute("created", ISO8601DateFormatter().string(from: Date()))
        for (k, v) in a.extra { try index.setAttribute(k, v) }
        for (t, r) in zip(tensors, owner) {
            try index.writeVirtual(t.key, shape: t.shape, type: Float.self, sources: [
                VirtualSource(file: Self.shardName(rank: r, of: comm.size), dataset: t.key, rows: 0..<(t.shape.first ?? 1)),
            ])
        }
        let ranks = comm.size
        try index.write("shards/bytes", shape: [ranks], (0..<ranks).map { reports[3 * $0 + 1] })
        try index.write("shards/crc32", shape: [ranks], (0..<ranks).map { reports[3 * $0 + 2] })
        try index.close()
        try fsync(path: "\(directory)/index.h5")
    }

    /// Points `latest` at `name` atomically (write a temporary file, rename over).
    private func replaceLatest(with name: String) throws {
        let tmp = "\(runDirectory)/latest.tmp"
        do { try (name + "\n").write(toFile: tmp, atomically: false, encoding: .utf8) } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw CheckpointError.saveFailed(path: tmp, reason: FileSystem.cause(error))
        }
        try fsync(path: tmp)
        FaultInjection.point("save-latest", step: Int(name.dropFirst(5)) ?? -1, rank: 0)
        guard rename(tmp, "\(runDirectory)/latest") == 0 else { throw CheckpointError.saveFailed(path: tmp, reason: "rename to latest failed") }
        try fsync(path: runDirectory)
    }

    private func prune(keep: Int) throws {
        let steps = Self.stepDirectories(runDirectory)
        for (_, name) in steps.dropFirst(keep) { try FileManager.default.removeItem(atPath: "\(runDirectory)/\(name)") }
    }

    /// Complete step directories of a run, newest first.
    public static func stepDirectories(_ runDirectory: String) -> [(step: Int, name: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("step-"), !name.hasSuffix(".partial"), let n = Int(name.dropFirst(5)) else { return nil }
            return (n, name)
        }.sorted { $0.0 > $1.0 }
    }

    public static func sizeAndCRC(_ path: String) throws -> (Int64, Int64) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw CheckpointError.invalid(path: path, reason: "cannot read") }
        defer { try? handle.close() }
        var crc: uLong = crc32(0, nil, 0), bytes: Int64 = 0
        while true {
            let chunk = handle.readData(ofLength: 8 << 20)
            if chunk.isEmpty { break }
            bytes += Int64(chunk.count)
            crc = chunk.withUnsafeBytes { crc32(crc, $0.bindMemory(to: Bytef.self).baseAddress, uInt($0.count)) }
        }
        return (bytes, Int64(crc))
    }
}

/// Flushes a file or directory to disk.
func fsync(path: String) throws {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw CheckpointError.saveFailed(path: path, reason: "cannot open it to sync: " + FileSystem.cause(errno: errno)) }
    defer { close(fd) }
    guard Glibc.fsync(fd) == 0 else { throw CheckpointError.saveFailed(path: path, reason: "cannot sync it to disk: " + FileSystem.cause(errno: errno)) }
}

extension String {
    /// nil for "", else the string.
    var nonEmpty: String? { isEmpty ? nil : self }
}

/// Crash tests: with LDM_FAULT=<point> and LDM_FAULT_STEP=<step> (and optionally
/// LDM_FAULT_RANK, default 0) the process kills itself with SIGKILL when it reaches
/// that point of that step's save, as a power cut or the OOM killer would.
enum FaultInjection {
    static func point(_ name: String, step: Int, rank: Int) {
        let env = ProcessInfo.processInfo.environment
        guard env["LDM_FAULT"] == name, env["LDM_FAULT_STEP"].flatMap(Int.init) == step,
              (env["LDM_FAULT_RANK"].flatMap(Int.init) ?? 0) == rank else { return }
        kill(getpid(), SIGKILL)
    }
}
