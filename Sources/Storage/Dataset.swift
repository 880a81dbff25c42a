import CZlib
import Foundation

/// A data or input-file problem, stated in one line naming the file.
public struct DataError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One split of an image dataset held in memory: images [N, C, H, W] u8 (the
/// stored layout, as in the IDX files and PyTorch) and labels [N].
public struct ImageSplit: Sendable {
    public let images: [UInt8]
    public let labels: [UInt8]
    public let count: Int, channels: Int, height: Int, width: Int

    public var pixelsPerImage: Int { channels * height * width }
}

/// `Datasets/fashion-mnist.h5`: `train/images` [60000,1,28,28] u8, `train/labels`
/// [60000] u8, and the same under `test/`, made by `ldm-train prepare`.
public enum ImageDataset {
    public static let splits = ["train", "test"]

    /// Reads one split, checking its datasets' shapes and types.
    public static func load(_ path: String, split: String) throws -> ImageSplit {
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch let e as HDF5Error {
            throw DataError("\(path): cannot open the dataset (\(e.detail)); make it with 'ldm-train prepare'")
        }
        let imagesKey = "\(split)/images", labelsKey = "\(split)/labels"
        for key in [imagesKey, labelsKey] where !file.exists(key) {
            throw DataError("\(path): no dataset '\(key)' (expected \(imagesKey) [N,C,H,W] u8 and \(labelsKey) [N] u8)")
        }
        let shape = try file.shape(of: imagesKey)
        guard shape.count == 4, shape[1] >= 1, shape[2] >= 1, shape[3] >= 1 else {
            throw DataError("\(path): '\(imagesKey)' has shape \(shape), expected [N, C, H, W]")
        }
        guard try file.shape(of: labelsKey) == [shape[0]] else {
            throw DataError("\(path): '\(labelsKey)' has shape \(try file.shape(of: labelsKey)), expected [\(shape[0])]")
        }
        for key in [imagesKey, labelsKey] where try file.elementType(of: key) != "u8" {
            throw DataError("\(path): '\(key)' holds \(try file.elementType(of: key)), expected u8")
        }
        return ImageSplit(images: try file.read(imagesKey, as: UInt8.self).values,
                          labels: try file.read(labelsKey, as: UInt8.self).values,
                          count: shape[0], channels: shape[1], height: shape[2], width: shape[3])
    }

    /// Converts the IDX files of Debian's dataset-fashion-mnist in `source` into
    /// `out`. Written to a temporary name and renamed, so `out` is complete or absent.
    public static func prepareFashionMNIST(source: String, out: String) throws {
        let files = [("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                     ("test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
        for (_, images, labels) in files {
            for name in [images, labels] where !FileManager.default.fileExists(atPath: "\(source)/\(name)") {
                throw DataError("\(source)/\(name) not found: Fashion-MNIST comes from the Debian package "
                                + "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
            }
        }
        let directory = (out as NSString).deletingLastPathComponent
        if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let partial = out + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        let file = try HDF5File.create(partial)
        for (split, imagesName, labelsName) in files {
            let images = try readIDX("\(source)/\(imagesName)")
            let labels = try readIDX("\(source)/\(labelsName)")
            guard images.dims.count == 3, labels.dims == [images.dims[0]] else {
                throw DataError("\(source)/\(imagesName): \(images.dims) images do not match labels \(labels.dims)")
            }
            guard labels.data.allSatisfy({ $0 < 10 }) else { throw DataError("\(source)/\(labelsName): a label is not in 0...9") }
            let shape = [images.dims[0], 1, images.dims[1], images.dims[2]]
            try file.write("\(split)/images", shape: shape, images.data, chunkRows: 1024)
            try file.write("\(split)/labels", shape: [labels.dims[0]], labels.data)
        }
        try file.setAttribute("source", "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), Debian dataset-fashion-mnist, \(source)")
        try file.setAttribute("classes", "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot")
        try file.close()
        if FileManager.default.fileExists(atPath: out) { try FileManager.default.removeItem(atPath: out) }
        try FileManager.default.moveItem(atPath: partial, toPath: out)
    }

    /// An IDX file (LeCun's MNIST format), gzip-compressed: magic 0x0000 08 <rank>
    /// (unsigned bytes), big-endian u32 dimensions, then the data.
    static func readIDX(_ path: String) throws -> (dims: [Int], data: [UInt8]) {
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
