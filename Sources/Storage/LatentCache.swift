import Distributed
import Foundation

/// The latent cache z = E(x) (ARCHITECTURE.md, "Storage formats"): every rank writes the
/// rows it encoded to `shard-<r>-of-<R>.h5`; `index.h5` stitches them with virtual
/// datasets `mean` and `logvar` [N, c, h, w] f32 (NCHW, as PyTorch holds them),
/// `label` [N] i32 (−1: none), `caption` [N] UTF-8 strings and `source_index` [N] i64,
/// and records where they came from.
public enum LatentCache {
    public static let format = "swiftldm-latents"

    /// What `index.h5`'s attributes say about a cache.
    public struct Info: Sendable, Equatable {
        public var count = 0
        public var channels = 0, height = 0, width = 0
        public var factor = 0
        public var scaleFactor = 1.0
        public var autoencoder = ""
        public var dataset = ""
        public var split = ""
        /// When the cache was written.
        public var created = ""
        public init() {}
    }

    /// One rank's rows: `start` is its first row in the whole cache; mean and
    /// logvar are NCHW [n, c, h, w]; what conditions each row: its label and caption.
    public struct Rows {
        public var start: Int
        public var mean: [Float], logvar: [Float]
        public var labels: [Int32], captions: [String], sourceIndex: [Int64]
        public init(start: Int, mean: [Float], logvar: [Float], labels: [Int32], captions: [String], sourceIndex: [Int64]) {
            precondition(captions.count == labels.count, "latent rows: \(captions.count) captions for \(labels.count) labels")
            (self.start, self.mean, self.logvar, self.labels, self.captions, self.sourceIndex) = (start, mean, logvar, labels, captions, sourceIndex)
        }
    }

    /// A whole cache in memory. `captions` is nil for a cache written before captions were kept.
    public struct Contents {
        public var info: Info
        public var mean: [Float], logvar: [Float]
        public var labels: [Int32]
        public var captions: [String]?
        /// Each row's index in the dataset split it was encoded from.
        public var sourceIndex: [Int64]
    }

    /// Writes a cache with every rank: shards in `<directory>.partial`, then rank 0's
    /// index, then a rename, so `directory` is either complete or absent.
    public static func write(_ directory: String, rows: Rows, info: Info, communicator comm: Communicator) throws {
        let partial = directory + ".partial"
        var problem = ""
        if comm.isRoot {
            do {
                try? FileManager.default.removeItem(atPath: partial)
                try checkSpace(directory, info: info, ranks: comm.size)
                try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
            } catch let e as DataError { problem = e.description } catch {
                problem = FileSystem.describe(error, path: partial, doing: "create the latent cache directory")
            }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
        let n = rows.labels.count, per = info.channels * info.height * info.width
        let shape = [n, info.channels, info.height, info.width]
        do {
            let f = try HDF5File.create("\(partial)/\(CheckpointStore.shardName(rank: comm.rank, of: comm.size))")
            try f.write("mean", shape: shape, rows.mean, chunkRows: 1024)
            try f.write("logvar", shape: shape, rows.logvar, chunkRows: 1024)
            try f.write("label", shape: [n], rows.labels, chunkRows: 4096)
            try f.writeStrings("caption", rows.captions)
            try f.write("source_index", shape: [n], rows.sourceIndex, chunkRows: 4096)
            try f.close()
        } catch { problem = "rank \(comm.rank): \(error)" }
        if let first = try comm.firstProblem(problem) {
            if comm.isRoot { try? FileManager.default.removeItem(atPath: partial) }   // every rank is done with it
            throw DataError("\(partial): writing the shards failed: \(first)")
        }
        precondition(rows.mean.count == n * per, "latent rows: \(rows.mean.count) values for \(n) × \(per)")
        // Row ranges of every rank, gathered so rank 0 can map them.
        let ranges = try comm.allGather(values: [Int64(rows.start), Int64(n)])
        if comm.isRoot {
            do {
                let index = try HDF5File.create("\(partial)/index.h5")
                let sources = { (dataset: String) in (0..<comm.size).map { r in
                    VirtualSource(file: CheckpointStore.shardName(rank: r, of: comm.size), dataset: dataset,
                                  rows: Int(ranges[2 * r])..<Int(ranges[2 * r] + ranges[2 * r + 1]))
                } }
                let total = info.count
                let full = [total, info.channels, info.height, info.width]
                try index.writeVirtual("mean", shape: full, type: Float.self, sources: sources("mean"))
                try index.writeVirtual("logvar", shape: full, type: Float.self, sources: sources("logvar"))
                try index.writeVirtual("label", shape: [total], type: Int32.self, sources: sources("label"))
                try index.writeVirtualStrings("caption", count: total, sources: sources("caption"))
                try index.writeVirtual("source_index", shape: [total], type: Int64.self, sources: sources("source_index"))
                try index.setAttribute("format", format)
                try index.setAttribute("autoencoder", info.autoencoder)
                try index.setAttribute("f", Int64(info.factor))
                try index.setAttribute("c", Int64(info.channels))
                try index.setAttribute("scale_factor", info.scaleFactor)
                try index.setAttribute("dataset", info.dataset)
                try index.setAttribute("split", info.split)
                try index.setAttribute("world_size", Int64(comm.size))
                try index.setAttribute("created", ISO8601DateFormatter().string(from: Date()))
                try index.close()
                if FileManager.default.fileExists(atPath: directory) { try FileManager.default.removeItem(atPath: directory) }
                try FileManager.default.moveItem(atPath: partial, toPath: directory)
            } catch {
                problem = error is HDF5Error ? "\(error)" : FileSystem.describe(error, path: directory, doing: "publish the latent cache")
                try? FileManager.default.removeItem(atPath: partial)
            }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError("\(directory): writing the index failed: \(problem)") }
    }

    /// Throws, naming the numbers, when the file system of `directory` cannot take a
    /// cache of `info`'s size: mean and logvar (f32), 12 bytes of label and index a row,
    /// and a MiB of metadata per file.
    public static func checkSpace(_ directory: String, info: Info, ranks: Int) throws {
        let bytes = Int64(info.count) * Int64(8 * info.channels * info.height * info.width + 12) + Int64(ranks + 1) << 20
        try FileSystem.checkSpace(for: bytes, at: directory) { DataError("\(directory): cannot write the latent cache: \($0)") }
    }

    /// `checkSpace` on rank 0, its verdict on every rank.
    public static func checkSpace(_ directory: String, info: Info, ranks: Int, communicator comm: Communicator) throws {
        var problem = ""
        if comm.isRoot { do { try checkSpace(directory, info: info, ranks: ranks) } catch { problem = "\(error)" } }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
    }

    /// Writes the cache with the scale factor that gives the latents stage 2 samples,
    /// z = mean + exp(logvar/2)·ε, unit variance, computed exactly instead of from samples:
    /// Var(z) = Var(mean) + E[exp(logvar)], the first by a parallel Welford/Chan merge over
    /// every rank's rows. Returns the mean and standard deviation of z.
    public static func writeWithScale(_ directory: String, rows: Rows, info: Info, communicator comm: Communicator) throws -> (mean: Double, std: Double) {
        var stats = (n: 0.0, mean: 0.0, m2: 0.0), expSum = 0.0
        for i in rows.mean.indices {   // Welford over the means; E[exp(logvar)] alongside
            stats.n += 1
            let d = Double(rows.mean[i]) - stats.mean
            stats.mean += d / stats.n
            stats.m2 += d * (Double(rows.mean[i]) - stats.mean)
            expSum += exp(Double(rows.logvar[i]))
        }
        let gathered = try comm.allGather(values: [stats.n, stats.mean, stats.m2, expSum])
        var total = (n: 0.0, mean: 0.0, m2: 0.0), totalExp = 0.0
        for r in 0..<comm.size {
            total = merge(total, (gathered[4 * r], gathered[4 * r + 1], gathered[4 * r + 2]))
            totalExp += gathered[4 * r + 3]
        }
        let std = (total.m2 / total.n + totalExp / total.n).squareRoot()
        var scaled = info
        scaled.scaleFactor = 1 / std
        try write(directory, rows: rows, info: scaled, communicator: comm)
        return (total.mean, std)
    }

    /// Reads a cache's attributes and checks its shapes.
    public static func info(_ directory: String) throws -> Info {
        let index: HDF5File
        do { index = try HDF5File.open("\(directory)/index.h5") } catch {
            throw DataError("\(directory): not a latent cache (\(error)); make one with 'ldm-train encode'")
        }
        guard try index.stringAttribute("format") == format else { throw DataError("\(directory)/index.h5: not a \(format) file") }
        let shape = try index.shape(of: "mean")
        guard shape.count == 4, try index.shape(of: "logvar") == shape, try index.shape(of: "label") == [shape[0]] else {
            throw DataError("\(directory)/index.h5: mean \(shape), logvar and label shapes do not fit together")
        }
        var info = Info()
        (info.count, info.channels, info.height, info.width) = (shape[0], shape[1], shape[2], shape[3])
        info.factor = Int(try index.attribute("f", as: Int64.self) ?? 0)
        info.scaleFactor = try index.attribute("scale_factor", as: Double.self) ?? 1
        info.autoencoder = try index.stringAttribute("autoencoder") ?? ""
        info.dataset = try index.stringAttribute("dataset") ?? ""
        info.split = try index.stringAttribute("split") ?? ""
        info.created = try index.stringAttribute("created") ?? ""
        return info
    }

    /// Reads the whole cache (mean, logvar NCHW; labels, captions) through the index.
    public static func read(_ directory: String) throws -> Contents {
        let info = try self.info(directory)
        let index = try HDF5File.open("\(directory)/index.h5")
        let ranks = Int(try index.attribute("world_size", as: Int64.self) ?? 1)
        for r in 0..<ranks {   // a missing virtual source would read as zeros
            let shard = "\(directory)/\(CheckpointStore.shardName(rank: r, of: ranks))"
            guard FileManager.default.fileExists(atPath: shard) else { throw DataError("\(shard) is missing (the cache is incomplete)") }
        }
        return Contents(info: info, mean: try index.read("mean", as: Float.self).values, logvar: try index.read("logvar", as: Float.self).values,
                        labels: try index.read("label", as: Int32.self).values, captions: try captions(index),
                        sourceIndex: index.exists("source_index") ? try index.read("source_index", as: Int64.self).values : (0..<Int64(info.count)).map { $0 })
    }

    /// Every row's caption, without reading the latents; nil for a cache written
    /// before captions were kept.
    public static func captions(_ directory: String) throws -> [String]? {
        _ = try info(directory)
        return try captions(try HDF5File.open("\(directory)/index.h5"))
    }

    static func captions(_ index: HDF5File) throws -> [String]? { index.exists("caption") ? try index.readStrings("caption") : nil }

    /// Parallel variance merge (Chan, Golub & LeVeque): (count, mean, M2) of two parts.
    public static func merge(_ a: (n: Double, mean: Double, m2: Double), _ b: (n: Double, mean: Double, m2: Double))
        -> (n: Double, mean: Double, m2: Double) {
        let n = a.n + b.n
        guard n > 0 else { return a }
        let delta = b.mean - a.mean
        return (n, a.mean + delta * b.n / n, a.m2 + b.m2 + delta * delta * a.n * b.n / n)
    }
}
