import CZlib
import Foundation

/// The element types a safetensors file may hold, by their header names. Reading
/// converts the floating-point ones to Float (so fp16 and bf16 weights from
/// elsewhere load), writing uses `f32` and, for counters, `i64`.
public enum SafeTensorsDType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64", i64 = "I64", i32 = "I32"

    public var bytes: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16: return 2
        case .f64, .i64: return 8
        }
    }
}

/// One tensor to write: its key, shape, type and values (as Float; an `i64`
/// tensor's values are whole numbers and are written as 64-bit integers).
public struct SafeTensor {
    public var key: String
    public var shape: [Int]
    public var dtype: SafeTensorsDType
    public var values: [Float]
    public init(key: String, shape: [Int], dtype: SafeTensorsDType = .f32, values: [Float]) {
        (self.key, self.shape, self.dtype, self.values) = (key, shape, dtype, values)
    }
}

/// A problem with a safetensors file: one line naming the file and, where it
/// concerns one, the tensor.
public struct SafeTensorsError: Error, CustomStringConvertible {
    public let file: String
    public let tensor: String?
    public let reason: String
    public var description: String { "\(file)\(tensor.map { ": tensor '\($0)'" } ?? ""): \(reason)" }
}

/// A safetensors file (the format of Hugging Face's `safetensors`): an 8-byte
/// little-endian header length, a JSON header mapping each key to its dtype, shape
/// and byte range in the data that follows, and `__metadata__` (string → string).
/// Reading checks the header against the file before any tensor is used: the ranges
/// must lie inside the data, match dtype × shape, and neither overlap nor leave gaps.
public struct SafeTensorsFile {
    public struct Entry {
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        public let range: Range<Int>
        public var count: Int { shape.reduce(1, *) }
    }

    public let path: String
    public let metadata: [String: String]
    /// The entries by key.
    public let entries: [String: Entry]
    private let data: Data
    private let dataStart: Int

    /// Keys in file order (by offset).
    public var keys: [String] { entries.sorted { $0.value.range.lowerBound < $1.value.range.lowerBound }.map(\.key) }

    public static func open(_ path: String) throws -> SafeTensorsFile {
        func fail(_ reason: String, _ tensor: String? = nil) -> SafeTensorsError { SafeTensorsError(file: path, tensor: tensor, reason: reason) }
        guard FileManager.default.fileExists(atPath: path) else { throw fail("no such file") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw fail("cannot read: \(FileSystem.cause(error))")
        }
        guard data.count >= 8 else { throw fail("\(data.count) bytes: too short for a safetensors header length (truncated?)") }
        let headerLength = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard headerLength <= UInt64(data.count - 8) else {
            throw fail("the header says it is \(headerLength) bytes, but only \(data.count - 8) follow (truncated, or not a safetensors file)")
        }
        let start = 8 + Int(headerLength)
        guard let json = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<start)), let header = json as? [String: Any] else {
            throw fail("the header is not a JSON object (not a safetensors file?)")
        }
        var metadata: [String: String] = [:], entries: [String: Entry] = [:]
        if let m = header["__metadata__"] {
            guard let m = m as? [String: Any] else { throw fail("__metadata__ is not an object") }
            for (k, v) in m {
                guard let s = v as? String else { throw fail("__metadata__ '\(k)' is not a string") }
                metadata[k] = s
            }
        }
        let available = data.count - start
        for (key, value) in header where key != "__metadata__" {
            guard let e = value as? [String: Any], let name = e["dtype"] as? String,
                  let shape = (e["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  let offsets = (e["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  shape.count == (e["shape"] as? [Any])?.count, offsets.count == 2 else {
                throw fail("header entry without dtype, shape and two data_offsets", key)
            }
            guard let dtype = SafeTensorsDType(rawValue: name) else {
                throw fail("dtype \(name) is not one SwiftLDM reads (F32, F16, BF16, F64, I64, I32)", key)
            }
            guard shape.allSatisfy({ $0 >= 0 }), offsets[0] >= 0, offsets[0] <= offsets[1] else { throw fail("negative shape or offsets", key) }
            guard offsets[1] <= available else {
                throw fail("data_offsets \(offsets) end beyond the \(available) data bytes in the file (truncated, or a header that lies)", key)
            }
            let expected = shape.reduce(1, *) * dtype.bytes
            guard offsets[1] - offsets[0] == expected else {
                throw fail("data_offsets \(offsets) hold \(offsets[1] - offsets[0]) bytes, but \(name) \(shape) needs \(expected)", key)
            }
            entries[key] = Entry(dtype: dtype, shape: shape, range: offsets[0]..<offsets[1])
        }
        var end = 0   // the ranges, by offset, must tile the data exactly
        for (key, e) in entries.sorted(by: { $0.value.range.lowerBound < $1.value.range.lowerBound }) {
            guard e.range.lowerBound == end else {
                throw fail(e.range.lowerBound < end ? "its bytes overlap the previous tensor's" : "a gap of \(e.range.lowerBound - end) bytes before it", key)
            }
            end = e.range.upperBound
        }
        guard end == available else { throw fail("\(available - end) bytes after the last tensor that no header entry accounts for") }
        return SafeTensorsFile(path: path, metadata: metadata, entries: entries, data: data, dataStart: start)
    }

    /// The values of `key` converted to Float, or nil when the file lacks it.
    public func values(_ key: String) throws -> [Float]? {
        guard let e = entries[key] else { return nil }
        let base = dataStart + e.range.lowerBound
        return data.withUnsafeBytes { raw -> [Float] in
            func at<T>(_ i: Int, _: T.Type) -> T { raw.loadUnaligned(fromByteOffset: base + i * MemoryLayout<T>.size, as: T.self) }
            return (0..<e.count).map { i -> Float in
                switch e.dtype {
                case .f32: return Float(bitPattern: UInt32(littleEndian: at(i, UInt32.self)))
                case .f64: return Float(Double(bitPattern: UInt64(littleEndian: at(i, UInt64.self))))
                case .bf16: return Float(bitPattern: UInt32(UInt16(littleEndian: at(i, UInt16.self))) << 16)
                case .f16: return Float(Float16(bitPattern: UInt16(littleEndian: at(i, UInt16.self))))
                case .i64: return Float(Int64(littleEndian: at(i, Int64.self)))
                case .i32: return Float(Int32(littleEndian: at(i, Int32.self)))
                }
            }
        }
    }

    /// Writes `tensors` (in that order) and `metadata` to `path` atomically: a
    /// `.partial` file is written, synced, read back and compared by CRC-32 with what
    /// was meant, then renamed over `path`.
    public static func write(_ path: String, tensors: [SafeTensor], metadata: [String: String]) throws {
        func fail(_ reason: String, _ tensor: String? = nil) -> SafeTensorsError { SafeTensorsError(file: path, tensor: tensor, reason: reason) }
        var seen = Set<String>()
        for t in tensors {
            guard seen.insert(t.key).inserted else { throw fail("written twice", t.key) }
            guard t.values.count == t.shape.reduce(1, *) else { throw fail("\(t.values.count) values for shape \(t.shape)", t.key) }
            guard t.dtype == .f32 || t.dtype == .i64 else { throw fail("SwiftLDM writes F32 and I64 only, not \(t.dtype.rawValue)", t.key) }
        }
        var header: [String: Any] = [:], offset = 0
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        for t in tensors {
            let bytes = t.values.count * t.dtype.bytes
            header[t.key] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes])
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))   // data 8-byte aligned
        var file = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        for t in tensors {
            switch t.dtype {
            case .i64: for v in t.values { withUnsafeBytes(of: Int64(v).littleEndian) { file.append(contentsOf: $0) } }
            default: t.values.withUnsafeBytes { file.append(contentsOf: $0) }   // x86-64 and arm64 are little-endian
            }
        }
        let partial = path + ".partial"
        do {
            try FileSystem.checkSpace(for: Int64(file.count), at: (path as NSString).deletingLastPathComponent.nonEmpty ?? ".") {
                fail($0)
            }
            try file.write(to: URL(fileURLWithPath: partial))
            try fsync(path: partial)
            let written = try Data(contentsOf: URL(fileURLWithPath: partial))
            guard written.count == file.count, crc(written) == crc(file) else {
                throw fail("what was read back after writing differs from what was written (\(written.count) of \(file.count) bytes)")
            }
            guard rename(partial, path) == 0 else { throw fail("cannot rename \(partial) over it: " + FileSystem.cause(errno: errno)) }
        } catch let e as SafeTensorsError {
            try? FileManager.default.removeItem(atPath: partial)
            throw e
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw fail(FileSystem.describe(error, path: partial, doing: "write"))
        }
    }

    private static func crc(_ data: Data) -> uLong {
        data.withUnsafeBytes { crc32(crc32(0, nil, 0), $0.bindMemory(to: Bytef.self).baseAddress, uInt($0.count)) }
    }
}
