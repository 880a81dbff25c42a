import Foundation

/// `ldm-train inspect PATH`: what a checkpoint (step or run directory), latent
/// cache or dataset file holds, and whether it verifies.
public enum Inspect {
    public static func describe(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw DataError("\(path): no such file or directory")
        }
        if !isDirectory.boolValue { return try file(path) }
        if FileManager.default.fileExists(atPath: "\(path)/index.h5") {
            let format = try HDF5File.open("\(path)/index.h5").stringAttribute("format")
            return format == LatentCache.format ? try cache(path) : try checkpoint(path)
        }
        let steps = CheckpointStore.stepDirectories(path)
        guard !steps.isEmpty else { throw DataError("\(path): neither a checkpoint, a run directory, a latent cache nor an HDF5 file") }
        var lines = ["\(path): run directory, \(steps.count) checkpoint(s)"
                     + ((try? String(contentsOfFile: "\(path)/latest", encoding: .utf8)).map { ", latest → \($0.trimmingCharacters(in: .whitespacesAndNewlines))" } ?? "")]
        for (_, name) in steps {
            lines.append("  \(name): " + (CheckpointStore.problem(with: "\(path)/\(name)").map { "INVALID: \($0)" } ?? "valid"))
        }
        if let newest = steps.first(where: { CheckpointStore.problem(with: "\(path)/\($0.name)") == nil }) {
            lines.append("")
            lines.append(try checkpoint("\(path)/\(newest.name)"))
        }
        return lines.joined(separator: "\n")
    }

    static func checkpoint(_ directory: String) throws -> String {
        let index = try HDF5File.open("\(directory)/index.h5")
        func int(_ name: String) -> String { (try? index.attribute(name, as: Int64.self)).flatMap { $0 }.map(String.init) ?? "?" }
        let model = try index.stringAttribute("model") ?? "?"
        var lines = ["\(directory): checkpoint (\(try index.stringAttribute("format") ?? "?") v\(int("format_version"))), model \(model)"]
        lines.append("  step \(int("step")), epoch \(int("epoch")) at offset \(int("epoch_offset")), samples consumed \(int("samples_consumed")), "
                     + "EMA updates \(int("ema_updates")), world size \(int("world_size")), seed \(int("seed")), "
                     + "effective lr \((try? index.attribute("effective_lr", as: Double.self)).flatMap { $0 }.map { "\($0)" } ?? "?"), "
                     + "created \(try index.stringAttribute("created") ?? "?")")
        lines.append(try tensorSummary(index, skip: "shards/"))
        let bytes = try index.read("shards/bytes", as: Int64.self).values
        lines.append("  shards: \(bytes.count), " + bytes.map { mib(Double($0)) }.joined(separator: ", "))
        lines.append("  verification: " + (CheckpointStore.problem(with: directory).map { "FAILED: \($0)" } ?? "ok (sizes, CRC-32s, virtual sources)"))
        return lines.joined(separator: "\n")
    }

    static func cache(_ directory: String) throws -> String {
        let info = try LatentCache.info(directory)
        var lines = ["\(directory): latent cache, \(info.count) latents \(info.channels)×\(info.height)×\(info.width) (f = \(info.factor)) "
                     + "of \(info.dataset) (\(info.split)), scale_factor \(info.scaleFactor), autoencoder \(info.autoencoder)"]
        let index = try HDF5File.open("\(directory)/index.h5")
        lines.append(try tensorSummary(index, skip: nil))
        do {
            _ = try LatentCache.read(directory)
            lines.append("  verification: ok (every shard present, checksums of every chunk)")
        } catch {
            lines.append("  verification: FAILED: \(error)")
        }
        return lines.joined(separator: "\n")
    }

    static func file(_ path: String) throws -> String {
        let f = try HDF5File.open(path)
        var lines = ["\(path): HDF5 file" + (f.exists("train/images") ? " (dataset)" : "")]
        for name in try f.datasetNames() {
            lines.append("  \(name): \(try f.elementType(of: name)) \(try f.shape(of: name))")
        }
        for name in f.attributeNames() {
            let list = (try? f.stringArrayAttribute(name)).flatMap { $0 }.map { "[\($0.joined(separator: ", "))]" }
            let number = (try? f.attribute(name, as: Double.self)).flatMap { $0 }.map { String(format: "%g", $0) }
            let value = (try? f.stringAttribute(name)).flatMap { $0 } ?? number ?? list ?? "?"
            lines.append("  @\(name): \(value.prefix(120))")
        }
        if try f.stringAttribute("format") == "swiftldm-dataset" {
            lines.append("  verification: " + ((try? verifyRows(f)).map { "FAILED: \($0)" } ?? "ok (every shard present, checksums of every chunk)"))
        }
        return lines.joined(separator: "\n")
    }

    /// The first problem found reading every row of every numeric dataset (a missing shard
    /// would read as zeros, so shards are checked first); nil when all is well.
    static func verifyRows(_ f: HDF5File) throws -> String? {
        let directory = (f.path as NSString).deletingLastPathComponent
        for name in try f.datasetNames() {
            for source in try f.virtualSources(of: name) where !FileManager.default.fileExists(atPath: "\(directory)/\(source.file)") {
                return "\(name): its shard \(directory)/\(source.file) is missing"
            }
            let shape = try f.shape(of: name), type = try f.elementType(of: name)
            guard let rows = shape.first, type == "u8" || type == "i32" else { continue }
            let per = shape.dropFirst().reduce(1, *), block = max(1, (1 << 24) / max(per, 1))
            var buffer = [Int32](repeating: 0, count: block * per)
            for start in stride(from: 0, to: rows, by: block) {
                let range = start..<min(rows, start + block)
                do {
                    try buffer.withUnsafeMutableBytes { raw in
                        if type == "u8" {
                            try f.read(name, rows: range, into: UnsafeMutableBufferPointer(start: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), count: range.count * per))
                        } else {
                            try f.read(name, rows: range, into: UnsafeMutableBufferPointer(start: raw.baseAddress!.assumingMemoryBound(to: Int32.self), count: range.count * per))
                        }
                    }
                } catch { return "\(error)" }
            }
        }
        return nil
    }

    private static func tensorSummary(_ index: HDF5File, skip: String?) throws -> String {
        var groups: [String: Int] = [:], total = 0, largest = ("", [Int](), 0)
        for name in try index.datasetNames() where skip.map({ !name.hasPrefix($0) }) ?? true {
            let shape = try index.shape(of: name)
            let size = ["f64": 8, "i64": 8, "u8": 1][try index.elementType(of: name)] ?? 4
            let bytes = shape.reduce(1, *) * size
            let group = name.split(separator: "/").prefix(name.hasPrefix("optim/") ? 2 : 1).joined(separator: "/")
            groups[group, default: 0] += 1
            total += bytes
            if bytes > largest.2 { largest = (name, shape, bytes) }
        }
        let counts = groups.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        return "  tensors: \(groups.values.reduce(0, +)) (\(counts)), \(mib(Double(total))); largest \(largest.0) \(largest.1) \(mib(Double(largest.2)))"
    }

    private static func mib(_ bytes: Double) -> String { String(format: "%.2f MiB", bytes / 1_048_576) }
}
