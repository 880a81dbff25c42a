import CZlib
import Distributed
import Foundation
import Storage

/// Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist, written as a
/// dataset file (one shard, by one process): 60,000 train and 10,000 test rows of
/// 1×28×28, labels 0…9, no captions.
public enum FashionMNIST {
    public static let defaultSource = "/usr/share/datasets/fashion-mnist"
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    static let files: [(Split, images: String, labels: String)] = [
        (.train, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        (.test, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ]

    /// True when `folder` holds the IDX files.
    public static func isSource(_ folder: String) -> Bool {
        FileManager.default.fileExists(atPath: "\(folder)/\(files[0].images)")
    }

    /// Converts the IDX files in `source` into the dataset file `out` (complete or absent).
    public static func prepare(source: String, out: String) throws {
        for (_, images, labels) in files {
            for name in [images, labels] where !FileManager.default.fileExists(atPath: "\(source)/\(name)") {
                throw DataError("\(source)/\(name) not found: Fashion-MNIST comes from the Debian package "
                                + "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
            }
        }
        let writer = try DatasetShardWriter(out, shape: [1, 28, 28], communicator: SingleProcess())
        var problem = ""
        for (split, imagesName, labelsName) in files where problem.isEmpty {
            let images = try readIDX("\(source)/\(imagesName)")
            let labels = try readIDX("\(source)/\(labelsName)")
            guard images.dims.count == 3, labels.dims == [images.dims[0]], images.dims[1] == 28, images.dims[2] == 28 else {
                throw DataError("\(source)/\(imagesName): \(images.dims) images do not match labels \(labels.dims)")
            }
            guard labels.data.allSatisfy({ $0 < 10 }) else { throw DataError("\(source)/\(labelsName): a label is not in 0...9") }
            var columns = DatasetColumns()
            columns.images = images.data
            columns.labels = labels.data.map { Int32($0) }
            columns.captions = [String](repeating: "", count: labels.data.count)
            columns.fileNames = (0..<labels.data.count).map { "\(imagesName)#\($0)" }
            do { try writer.append(split, columns) } catch { problem = "\(error)" }
        }
        var description = DatasetFile.Description()
        description.classNames = classNames
        description.source = "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), Debian dataset-fashion-mnist, \(source)"
        description.settings = [.init("resolution", .integer(28)), .init("channels", .integer(1))]
        try writer.finish(problem: problem, description: description, skipped: [])
    }

    /// An IDX file (LeCun's MNIST format), gzip-compressed: magic 0x0000 08 <rank>
    /// (unsigned bytes), big-endian u32 dimensions, then the data.
    public static func readIDX(_ path: String) throws -> (dims: [Int], data: [UInt8]) {
        let bytes = try gunzip(path)
        guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0, bytes[2] == 8 else {
            throw DataError("\(path): not an IDX file of unsigned bytes")
        }
        let rank = Int(bytes[3])
        guard bytes.count >= 4 + 4 * rank else { throw DataError("\(path): truncated IDX header") }
        let dims = (0..<rank).map { i in (0..<4).reduce(0) { $0 << 8 | Int(bytes[4 + 4 * i + $1]) } }
        let start = 4 + 4 * rank, count = dims.reduce(1, *)
        guard bytes.count == start + count else {
            throw DataError("\(path): IDX dimensions \(dims) need \(count) bytes of data, found \(bytes.count - start)")
        }
        return (dims, Array(bytes[start...]))
    }

    /// The decompressed contents of a gzip file.
    static func gunzip(_ path: String) throws -> [UInt8] {
        guard let gz = gzopen(path, "rb") else { throw DataError("\(path): cannot open") }
        defer { gzclose(gz) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = gzread(gz, &buffer, UInt32(buffer.count))
            guard n >= 0 else { throw DataError("\(path): damaged gzip data") }
            if n == 0 { break }
            out += buffer[0..<Int(n)]
        }
        return out
    }
}
