import Foundation

/// A TensorBoard event file (`events.out.tfevents.<time>.<host>.<pid>`), as
/// `tensorboard --logdir` and its Python readers take it: TFRecord framing (length,
/// masked CRC-32C of the length, the record, masked CRC-32C of the record) around
/// `Event` protocol buffers: the file version first, then summaries of scalars
/// (`simple_value`) and PNG images. Each event is flushed as it is written, so a run
/// that stops keeps every event before it; a resumed run starts a file of its own,
/// which TensorBoard merges with the earlier ones in the directory.
public final class TensorBoardEvents {
    public let path: String
    private let handle: FileHandle

    public init(directory: String) throws {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count)
        let name = String(format: "events.out.tfevents.%010d.%@.%d.swiftldm", Int(Date().timeIntervalSince1970), String(cString: host),
                          getpid())
        path = directory + "/" + name
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw DataError("\(path): cannot create the TensorBoard event file: " + FileSystem.cause(errno: errno))
        }
        self.handle = handle
        var event = Proto()
        event.double(1, Date().timeIntervalSince1970)
        event.bytes(3, Data("brain.Event:2".utf8))
        try write(event.data)
    }

    deinit { try? handle.close() }

    /// One event holding a scalar summary per (tag, value).
    public func scalars(step: Int, _ values: [(tag: String, value: Double)]) throws {
        var summary = Proto()
        for (tag, value) in values {
            var v = Proto()
            v.bytes(1, Data(tag.utf8))
            v.float(2, Float(value))
            summary.bytes(1, v.data)
        }
        try write(summary: summary, step: step)
    }

    /// One event holding an image summary of a PNG file's bytes.
    public func image(step: Int, tag: String, png: Data) throws {
        guard png.count > 26, png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else {
            throw DataError("\(tag): not a PNG image")
        }
        func be32(_ at: Int) -> Int { png[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        let colorType = png[25]   // IHDR: 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA
        var image = Proto()
        image.varint(1, UInt64(be32(20)))
        image.varint(2, UInt64(be32(16)))
        image.varint(3, colorType == 0 ? 1 : colorType == 4 ? 2 : colorType == 6 ? 4 : 3)
        image.bytes(4, png)
        var v = Proto()
        v.bytes(1, Data(tag.utf8))
        v.bytes(4, image.data)
        var summary = Proto()
        summary.bytes(1, v.data)
        try write(summary: summary, step: step)
    }

    private func write(summary: Proto, step: Int) throws {
        var event = Proto()
        event.double(1, Date().timeIntervalSince1970)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.bytes(5, summary.data)
        try write(event.data)
    }

    private func write(_ record: Data) throws {
        var out = Data()
        var length = UInt64(record.count).littleEndian
        let lengthBytes = Data(bytes: &length, count: 8)
        out.append(lengthBytes)
        Self.appendLE(&out, Self.maskedCRC(lengthBytes))
        out.append(record)
        Self.appendLE(&out, Self.maskedCRC(record))
        do { try handle.write(contentsOf: out) } catch { throw DataError(FileSystem.describe(error, path: path, doing: "append an event")) }
    }

    private static func appendLE(_ data: inout Data, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) }
    }

    /// TFRecord's masked CRC-32C: rotated right by 15 bits, plus a constant.
    static func maskedCRC(_ data: Data) -> UInt32 {
        let c = crc32c(data)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }

    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
    public static func crc32c(_ data: Data) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in data { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    private static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }
}

/// The few protocol-buffer encodings an event needs: varints, fixed 64- and 32-bit
/// numbers and length-delimited bytes, each after its field's key.
struct Proto {
    var data = Data()

    mutating func key(_ field: Int, _ wireType: UInt64) { appendVarint(UInt64(field) << 3 | wireType) }
    mutating func appendVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { data.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        data.append(UInt8(v))
    }
    mutating func varint(_ field: Int, _ value: UInt64) { key(field, 0); appendVarint(value) }
    mutating func double(_ field: Int, _ value: Double) {
        key(field, 1)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
    }
    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
    }
    mutating func bytes(_ field: Int, _ value: Data) { key(field, 2); appendVarint(UInt64(value.count)); data.append(value) }
}
