import Distributed
import Foundation

extension CheckpointStore {
    /// Why the step directory `directory` cannot be loaded, or nil when it verifies:
    /// index.h5 opens and has our format; every shard it lists exists with the
    /// size and CRC-32 recorded at save; every virtual dataset's source is one of
    /// those shards (a missing source would silently read as zeros).
    public static func problem(with directory: String) -> String? {
        let indexPath = "\(directory)/index.h5"
        do {
            let index = try HDF5File.open(indexPath)
            guard try index.stringAttribute("format") == format else { return "index.h5 is not a \(format)" }
            let bytes = try index.read("shards/bytes", as: Int64.self).values
            let crcs = try index.read("shards/crc32", as: Int64.self).values
            guard bytes.count == crcs.count, !bytes.isEmpty else { return "index.h5 lists no shards" }
            for r in bytes.indices {
                let name = shardName(rank: r, of: bytes.count), path = "\(directory)/\(name)"
                guard FileManager.default.fileExists(atPath: path) else { return "\(name) is missing" }
                let (size, crc) = try sizeAndCRC(path)
                guard size == bytes[r] else { return "\(name) has \(size) bytes, \(bytes[r]) were written (truncated?)" }
                guard crc == crcs[r] else { return "\(name) fails its CRC-32 check (damaged)" }
            }
            let shards = Set(bytes.indices.map { shardName(rank: $0, of: bytes.count) })
            for name in try index.datasetNames() where !name.hasPrefix("shards/") {
                for source in try index.virtualSources(of: name) where !shards.contains(source.file) {
                    return "tensor '\(name)' points at \(source.file), which is not one of its shards"
                }
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// Finds the checkpoint to resume from (on rank 0, then shared) and loads it
    /// into `tensors` on every rank. `mode`: "auto" (the newest complete and valid
    /// step directory, falling back to older ones with a warning; none → a fresh
    /// start), "none", or a path (a step directory, or a run directory's newest).
    /// Returns the saved cursor, or nil for a fresh start. `optional` tensors are loaded
    /// when the checkpoint has them and keep their values otherwise (state that older
    /// checkpoints did not save).
    public func restore(_ mode: String, tensors: [CheckpointTensor], optional: [CheckpointTensor] = [],
                        expectedKind: String) throws -> TrainingCursor? {
        var chosen = "", failure = ""
        if comm.isRoot {
            do { chosen = try choose(mode) } catch { failure = "\(error)" }
        }
        failure = try comm.broadcast(failure)
        guard failure.isEmpty else { throw CheckpointError.invalid(path: mode, reason: failure) }
        chosen = try comm.broadcast(chosen)
        guard !chosen.isEmpty else { return nil }
        var cursor: TrainingCursor?
        var problem: Error?
        let started = Date()
        do { cursor = try load(chosen, into: tensors, optional: optional, expectedKind: expectedKind) } catch { problem = error }
        guard try comm.all(problem == nil), let cursor else {
            throw problem ?? CheckpointError.invalid(path: chosen, reason: "another rank could not load it")
        }
        say(String(format: "resumed from %@ (step %d) in %.2f s", chosen, cursor.step, Date().timeIntervalSince(started)))
        restoredFrom = chosen
        return cursor
    }

    /// Rank 0's choice of directory ("" for none).
    private func choose(_ mode: String) throws -> String {
        switch mode {
        case "none":
            return ""
        case "auto":
            removeStalePartials()
            for (_, name) in Self.stepDirectories(runDirectory) {
                let path = "\(runDirectory)/\(name)"
                if let problem = Self.problem(with: path) {
                    say("warning: skipping \(path): \(problem)")
                    continue
                }
                return path
            }
            return ""
        default:
            var path = mode
            if FileManager.default.fileExists(atPath: "\(mode)/latest"), !FileManager.default.fileExists(atPath: "\(mode)/index.h5") {
                guard let newest = Self.stepDirectories(mode).first else { throw CheckpointError.invalid(path: mode, reason: "no step directories") }
                path = "\(mode)/\(newest.name)"
            }
            if let problem = Self.problem(with: path) { throw CheckpointError.invalid(path: path, reason: problem) }
            return path
        }
    }

    /// Leftovers of saves that never completed.
    private func removeStalePartials() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        for name in names where name.hasSuffix(".partial") || name == "latest.tmp" {
            say("removing the incomplete save \(runDirectory)/\(name)")
            try? FileManager.default.removeItem(atPath: "\(runDirectory)/\(name)")
        }
    }

    /// Reads every tensor of a verified step directory into `tensors`.
    public func load(_ directory: String, into tensors: [CheckpointTensor], optional: [CheckpointTensor] = [],
                     expectedKind: String) throws -> TrainingCursor {
        let index = try HDF5File.open("\(directory)/index.h5")
        let kind = try index.stringAttribute("model") ?? "?"
        guard kind == expectedKind else { throw CheckpointError.wrongKind(path: directory, expected: expectedKind, found: kind) }
        for t in tensors + optional.filter({ index.exists($0.key) }) {
            guard index.exists(t.key) else {
                throw CheckpointError.invalid(path: directory, reason: "no tensor '\(t.key)' (a checkpoint of another model?)")
            }
            let shape = try index.shape(of: t.key)
            guard shape == t.shape else { throw CheckpointError.shapeMismatch(path: directory, tensor: t.key, expected: t.shape, found: shape) }
            try index.read(t.key, into: UnsafeMutableBufferPointer(start: t.pointer, count: t.count))
        }
        var cursor = TrainingCursor()
        cursor.step = Int(try index.attribute("step", as: Int64.self) ?? 0)
        cursor.epoch = Int(try index.attribute("epoch", as: Int64.self) ?? 0)
        cursor.epochOffset = Int(try index.attribute("epoch_offset", as: Int64.self) ?? 0)
        cursor.samplesConsumed = try index.attribute("samples_consumed", as: Int64.self) ?? 0
        cursor.emaUpdates = Int(try index.attribute("ema_updates", as: Int64.self) ?? 0)
        return cursor
    }
}

extension CheckpointStore {
    /// A checkpoint's identity: its step directory name and a hash of its shards'
    /// CRC-32s, e.g. "step-00006000/9f3a…" (what a latent cache records of its autoencoder).
    public static func identity(of directory: String) throws -> String {
        let index = try HDF5File.open("\(directory)/index.h5")
        let crcs = try index.read("shards/crc32", as: Int64.self).values
        let hash = StartUp.fnv1a(crcs.map(String.init).joined(separator: ","))
        return "\((directory as NSString).lastPathComponent)/\(String(hash, radix: 16))"
    }

    /// The step directory `path` names: itself, or a run directory's newest valid one.
    public static func resolve(_ path: String) throws -> String {
        if FileManager.default.fileExists(atPath: "\(path)/index.h5") {
            if let problem = problem(with: path) { throw CheckpointError.invalid(path: path, reason: problem) }
            return path
        }
        for (_, name) in stepDirectories(path) where problem(with: "\(path)/\(name)") == nil { return "\(path)/\(name)" }
        throw CheckpointError.invalid(path: path, reason: "no complete checkpoint in it")
    }
}
