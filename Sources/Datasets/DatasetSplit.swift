import Foundation
import Storage

/// One split of a dataset file, read row by row: only its labels (4 bytes a row)
/// are held in memory; images, captions and file names are read for the rows asked.
public final class DatasetSplit: @unchecked Sendable {
    public let path: String
    public let split: Split
    public let count: Int, channels: Int, height: Int, width: Int
    /// [count], −1 where a row has no label.
    public let labels: [Int32]
    public let classNames: [String]
    /// What a checkpoint records of its data: when it was prepared and its rows (not its
    /// path, so a copy on another disk is the same dataset).
    public let identity: String
    private let file: HDF5File
    /// The file and its shards as they were when opened (see `checkUnchanged`).
    private let files: [String], stamps: [String]

    public var pixelsPerImage: Int { channels * height * width }

    private init(path: String, split: Split, file: HDF5File, shape: [Int], labels: [Int32], classNames: [String], created: String,
                 shards: [String]) {
        (self.path, self.split, self.file, self.labels, self.classNames) = (path, split, file, labels, classNames)
        (count, channels, height, width) = (shape[0], shape[1], shape[2], shape[3])
        identity = "prepared \(created), \(split) \(shape[0]) rows"
        files = [path] + shards
        stamps = files.map(FileSystem.stamp)
    }

    /// Throws when the file or one of its shards has been replaced or rewritten since
    /// it was opened (prepared again under a running job): rows would mix old and new.
    public func checkUnchanged() throws {
        for (f, stamp) in zip(files, stamps) where FileSystem.stamp(f) != stamp {
            throw DataError("\(f) changed while this run was reading \(path) (prepared again?); its rows would mix old and new: "
                            + "start the run again")
        }
    }

    /// Opens `split` of the dataset file at `path`, checking its format and shapes.
    public static func open(_ path: String, split: Split) throws -> DatasetSplit {
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch let e as HDF5Error {
            throw DataError("\(path): cannot open the dataset (\(e.detail)); make it with 'ldm-train prepare'")
        }
        guard try file.stringAttribute("format") == DatasetFile.format else {
            throw DataError("\(path): not a dataset made by 'ldm-train prepare' (no format attribute \(DatasetFile.format))")
        }
        let version = try file.attribute("format_version", as: Int64.self) ?? 0
        guard version == DatasetFile.version else {
            throw DataError("\(path): dataset format version \(version), this ldm-train reads \(DatasetFile.version); run 'ldm-train prepare' again")
        }
        let keys = ["images", "labels", "captions", "file_name"].map { "\(split)/\($0)" }
        for key in keys where !file.exists(key) { throw DataError("\(path): no dataset '\(key)'") }
        let shape = try file.shape(of: keys[0])
        guard shape.count == 4, shape[1] >= 1, shape[2] >= 1, shape[3] >= 1, try file.elementType(of: keys[0]) == "u8" else {
            throw DataError("\(path): '\(keys[0])' is \(try file.elementType(of: keys[0])) \(shape), expected u8 [N, C, H, W]")
        }
        guard try file.shape(of: keys[1]) == [shape[0]], try file.elementType(of: keys[1]) == "i32" else {
            throw DataError("\(path): '\(keys[1])' is \(try file.elementType(of: keys[1])) \(try file.shape(of: keys[1])), expected i32 [\(shape[0])]")
        }
        for key in keys.suffix(2) where try file.shape(of: key) != [shape[0]] || !file.isStringDataset(key) {
            throw DataError("\(path): '\(key)' is not [\(shape[0])] strings")
        }
        let directory = (path as NSString).deletingLastPathComponent
        let shards = Array(Set(try file.virtualSources(of: keys[0]).map { "\(directory)/\($0.file)" })).sorted()
        for shard in shards where !FileManager.default.fileExists(atPath: shard) {
            throw DataError("\(path): its shard \(shard) is missing (keep \((path as NSString).lastPathComponent).shards/ beside the file)")
        }
        let labels = shape[0] > 0 ? try file.read(keys[1], as: Int32.self).values : []
        return DatasetSplit(path: path, split: split, file: file, shape: shape, labels: labels,
                            classNames: try file.stringArrayAttribute("class_names") ?? [], created: try file.stringAttribute("created") ?? "?",
                            shards: shards)
    }

    /// Images of `rows` (any order) as [rows.count, C, H, W] bytes.
    public func images(_ rows: [Int]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows.count * pixelsPerImage)
        guard !rows.isEmpty else { return out }
        try unchanged { try out.withUnsafeMutableBufferPointer { try file.read("\(split)/images", rowList: rows, into: $0) } }
        return out
    }

    public func captions(_ rows: [Int]) throws -> [String] { try unchanged { try file.readStrings("\(split)/captions", rowList: rows) } }
    public func fileNames(_ rows: [Int]) throws -> [String] { try unchanged { try file.readStrings("\(split)/file_name", rowList: rows) } }

    /// `read`, with the files checked before and after it.
    private func unchanged<R>(_ read: () throws -> R) throws -> R {
        try checkUnchanged()
        let result = try read()
        try checkUnchanged()
        return result
    }

    /// The rows `rows` whole.
    public func rows(_ rows: [Int]) throws -> [DatasetRow] {
        let (images, captions, names) = (try images(rows), try captions(rows), try fileNames(rows))
        return rows.indices.map { i in
            DatasetRow(image: Array(images[(i * pixelsPerImage)..<((i + 1) * pixelsPerImage)]), label: labels[rows[i]],
                       caption: captions[i], fileName: names[i])
        }
    }

    /// The images skipped at preparation (`--skip-invalid`), with their reasons.
    public func skipped() throws -> [(fileName: String, reason: String)] {
        guard file.exists("skipped/file_name") else { return [] }
        return Array(zip(try file.readStrings("skipped/file_name"), try file.readStrings("skipped/reason")))
    }
}
