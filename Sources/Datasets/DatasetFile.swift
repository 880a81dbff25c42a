import Distributed
import Foundation
import Storage

/// The splits of a dataset file.
public enum Split: String, CaseIterable, Sendable, Codable {
    case train, test
}

/// One row of a dataset: an image and whatever describes it, each part optional
/// but the image.
public struct DatasetRow: Sendable, Equatable {
    /// [C, H, W] bytes.
    public var image: [UInt8]
    /// −1: no label.
    public var label: Int32 = -1
    /// "": no caption.
    public var caption = ""
    /// Where the row came from (a path relative to the source folder, or an IDX file and index).
    public var fileName: String

    public init(image: [UInt8], label: Int32 = -1, caption: String = "", fileName: String) {
        (self.image, self.label, self.caption, self.fileName) = (image, label, caption, fileName)
    }
}

/// Rows of one split held column by column, as they are stored.
public struct DatasetColumns: Sendable {
    public var images: [UInt8] = []
    public var labels: [Int32] = []
    public var captions: [String] = []
    public var fileNames: [String] = []
    public var count: Int { labels.count }
    public init() {}

    public mutating func append(_ row: DatasetRow) {
        images += row.image
        labels.append(row.label)
        captions.append(row.caption)
        fileNames.append(row.fileName)
    }
}

/// A dataset file (`ldm-train prepare`): per split `images` [N, C, H, W] u8 chunked
/// by rows, `labels` [N] i32 (−1: none), `captions` [N] and `file_name` [N] UTF-8
/// strings; `skipped/file_name` and `skipped/reason` for images `--skip-invalid`
/// left out; the class names and the preparation settings as attributes. A prepare
/// writes one shard per rank beside the file, in `<file>.shards/`
/// (`DatasetShardWriter`), and the file maps them as virtual datasets.
public enum DatasetFile {
    public static let format = "swiftldm-dataset"
    public static let version: Int64 = 2

    /// What the file says about itself.
    public struct Description: Sendable, Equatable {
        public var classNames: [String] = []
        public var source = ""
        /// Preparation settings (resolution, channels, background, filter, split rule).
        public var settings: [Setting] = []
        public init() {}
    }

    /// One preparation setting, stored as an attribute of its own type.
    public struct Setting: Sendable, Equatable {
        public enum Value: Sendable, Equatable { case text(String), integer(Int64), real(Double) }
        public var key: String, value: Value
        public init(_ key: String, _ value: Value) { (self.key, self.value) = (key, value) }
    }

    /// Rows per chunk for images of `rowBytes`: chunks of about 64 KiB, so a random
    /// row costs a small read.
    static func chunkRows(rowBytes: Int) -> Int { max(1, 65536 / max(rowBytes, 1)) }

    static func writeDescription(_ file: HDF5File, _ d: Description, skipped: [(String, String)]) throws {
        try file.writeStrings("skipped/file_name", skipped.map(\.0))
        try file.writeStrings("skipped/reason", skipped.map(\.1))
        try file.setAttribute("format", format)
        try file.setAttribute("format_version", version)
        try file.setAttribute("class_names", d.classNames)
        try file.setAttribute("source", d.source)
        for setting in d.settings {
            switch setting.value {
            case .text(let v): try file.setAttribute(setting.key, v)
            case .integer(let v): try file.setAttribute(setting.key, v)
            case .real(let v): try file.setAttribute(setting.key, v)
            }
        }
        try file.setAttribute("created", ISO8601DateFormatter().string(from: Date()))
    }
}

/// A dataset written by every rank: each appends its rows of each split (in rank
/// order, the rows of the whole split) to its own shard as they are made, so no rank
/// holds more than a block of rows; `finish` has rank 0 write the file that maps the
/// shards, and the file appears only when all of it is complete. A world of one writes
/// its rows into the file itself: one self-contained file, free to move or rename.
public final class DatasetShardWriter {
    let out: String, shape: [Int], comm: Communicator
    let published: Published
    private var shard: HDF5File?
    private var counts = [Split: Int]()

    /// Every rank together: rank 0 clears leftovers of an interrupted write; each rank opens its shard.
    public init(_ out: String, shape: [Int], communicator comm: Communicator) throws {
        (self.out, self.shape, self.comm, published) = (out, shape, comm, Published(out))
        var problem = comm.isRoot ? published.prepare(shards: comm.size > 1) : ""
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
        do {
            let file = try HDF5File.create(comm.size == 1 ? published.partial
                                           : "\(published.partialShards)/\(CheckpointStore.shardName(rank: comm.rank, of: comm.size))")
            for split in Split.allCases {
                try file.createGrowing("\(split)/images", of: UInt8.self, rowShape: shape, chunkRows: DatasetFile.chunkRows(rowBytes: shape.reduce(1, *)))
                try file.createGrowing("\(split)/labels", of: Int32.self, rowShape: [], chunkRows: 16384)
                try file.createGrowingStrings("\(split)/captions", chunkRows: 4096)
                try file.createGrowingStrings("\(split)/file_name", chunkRows: 4096)
            }
            shard = file
        } catch { problem = "rank \(comm.rank): \(error)" }
        guard try comm.all(problem.isEmpty) else {
            abandon()
            throw DataError("\(out): cannot start the shards: \(problem)")
        }
    }

    /// Appends this rank's next rows of `split` to its shard.
    public func append(_ split: Split, _ rows: DatasetColumns) throws {
        guard let shard, rows.count > 0 else { return }
        try shard.appendRows("\(split)/images", rows.images)
        try shard.appendRows("\(split)/labels", rows.labels)
        try shard.appendStrings("\(split)/captions", rows.captions)
        try shard.appendStrings("\(split)/file_name", rows.fileNames)
        counts[split, default: 0] += rows.count
    }

    /// Removes what was written (rank 0 removes the partial output of every rank).
    public func abandon() {
        shard = nil
        if comm.isRoot { published.discard() }
    }

    /// Every rank together, once all ranks have appended all rows: `problem` is this
    /// rank's failure ("" for none); any failure on any rank abandons the write on all
    /// of them with the first one's message. Otherwise rank 0 maps the shards and
    /// publishes. `skipped` is this rank's list; all ranks' are kept, in rank order.
    public func finish(problem: String, description: DatasetFile.Description, skipped: [(String, String)]) throws {
        var problem = problem
        if problem.isEmpty && comm.size == 1, let shard {   // the rows are in the file: describe it
            do { try DatasetFile.writeDescription(shard, description, skipped: skipped) } catch { problem = "\(error)" }
        }
        if problem.isEmpty { do { try shard?.close() } catch { problem = "rank \(comm.rank): \(error)" } }
        shard = nil
        if let first = try comm.firstProblem(problem) {
            abandon()
            throw DataError(first)
        }
        let splits = Split.allCases
        let counts = try comm.allGather(values: splits.map { Int64(self.counts[$0] ?? 0) })
        guard stride(from: 0, to: counts.count, by: splits.count).contains(where: { counts[$0] > 0 }) else {
            abandon()
            throw DataError("\(out): no row of the train split could be made")
        }
        let allSkipped = try comm.allGather(strings: skipped.flatMap { [$0.0, $0.1] })
        if comm.isRoot {
            do {
                try published.publish(writingIndex: comm.size == 1 ? nil : { [comm, shape] partial, shardsDirectory in
                    let file = try HDF5File.create(partial)
                    for (s, split) in splits.enumerated() {
                        var sources: [(String) -> VirtualSource] = [], start = 0
                        for r in 0..<comm.size {
                            let n = Int(counts[r * splits.count + s]), rows = start..<(start + n)
                            let name = "\(shardsDirectory)/\(CheckpointStore.shardName(rank: r, of: comm.size))"
                            sources.append { VirtualSource(file: name, dataset: "\(split)/\($0)", rows: rows) }
                            start += n
                        }
                        try file.writeVirtual("\(split)/images", shape: [start] + shape, type: UInt8.self, sources: sources.map { $0("images") })
                        try file.writeVirtual("\(split)/labels", shape: [start], type: Int32.self, sources: sources.map { $0("labels") })
                        for column in ["captions", "file_name"] {
                            try file.writeVirtualStrings("\(split)/\(column)", count: start, sources: sources.map { $0(column) })
                        }
                    }
                    let pairs = allSkipped.flatMap { list in stride(from: 0, to: list.count - 1, by: 2).map { (list[$0], list[$0 + 1]) } }
                    try DatasetFile.writeDescription(file, description, skipped: pairs)
                    try file.close()
                })
            } catch { problem = "\(error)" }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError("\(out): \(problem)") }
    }
}

/// A file and its shard directory made visible together: both are written under
/// `.partial` names, the shards renamed first, the file last, so `path` existing
/// means the whole dataset does.
struct Published {
    let path: String
    init(_ path: String) { self.path = path }
    var shards: String { path + ".shards" }
    var partialShards: String { path + ".shards.partial" }
    var partial: String { path + ".partial" }

    /// Removes leftovers of an interrupted write and makes the partial shard directory
    /// when there are `shards`; returns a problem, or "".
    func prepare(shards: Bool) -> String {
        do {
            let directory = (path as NSString).deletingLastPathComponent
            if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            for leftover in [partial, partialShards] { try? FileManager.default.removeItem(atPath: leftover) }
            if shards { try FileManager.default.createDirectory(atPath: partialShards, withIntermediateDirectories: true) }
            let fd = open(partial, O_CREAT | O_WRONLY | O_TRUNC, 0o644)   // the file can be made here (a clear reason if not)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            close(fd)
            return ""
        } catch { return FileSystem.describe(error, path: path, doing: "prepare the output") }
    }

    func discard() { for leftover in [partial, partialShards] { try? FileManager.default.removeItem(atPath: leftover) } }

    /// Runs `writingIndex(partialFile, shardsDirectoryName)` when given (the partial file
    /// is complete otherwise), then makes the output visible: the old one removed, the
    /// shards renamed, the file last. On failure removes the partial output.
    func publish(writingIndex: ((String, String) throws -> Void)?) throws {
        do {
            try writingIndex?(partial, (shards as NSString).lastPathComponent)
            let manager = FileManager.default
            for old in [path, shards] where manager.fileExists(atPath: old) { try manager.removeItem(atPath: old) }
            if manager.fileExists(atPath: partialShards) { try manager.moveItem(atPath: partialShards, toPath: shards) }
            try manager.moveItem(atPath: partial, toPath: path)
        } catch {
            discard()
            throw error
        }
    }
}
