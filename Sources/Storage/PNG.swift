import CZlib
import Foundation

/// Writes 8-bit grayscale or RGB PNG files (signature, IHDR, one zlib IDAT, IEND).
public enum PNG {
    /// `pixels` row-major, `channels` (1 or 3) interleaved, width × height × channels bytes.
    public static func write(_ path: String, width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        precondition(channels == 1 || channels == 3, "PNG: \(channels) channels (1 or 3 supported)")
        precondition(pixels.count == width * height * channels, "PNG: \(pixels.count) bytes for \(width)×\(height)×\(channels)")
        var raw = [UInt8]()
        raw.reserveCapacity((width * channels + 1) * height)
        for y in 0..<height {   // filter type 0 (none) before each row
            raw.append(0)
            raw += pixels[(y * width * channels)..<((y + 1) * width * channels)]
        }
        var compressedLength = compressBound(uLong(raw.count))
        var compressed = [UInt8](repeating: 0, count: Int(compressedLength))
        guard compress2(&compressed, &compressedLength, raw, uLong(raw.count), 6) == Z_OK else {
            throw DataError("\(path): compressing the image failed")
        }
        var header = [UInt8]()
        for v in [UInt32(width), UInt32(height)] { header += bigEndian(v) }
        header += [8, channels == 1 ? 0 : 2, 0, 0, 0]   // depth 8, gray/RGB, deflate, no filter method, no interlace
        var file: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        file += chunk("IHDR", header)
        file += chunk("IDAT", Array(compressed[0..<Int(compressedLength)]))
        file += chunk("IEND", [])
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        guard FileManager.default.createFile(atPath: path, contents: Data(file)) else { throw DataError("\(path): cannot write") }
    }

    private static func bigEndian(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    private static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        let crc = body.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, uInt($0.count))) }
        return bigEndian(UInt32(data.count)) + body + bigEndian(crc)
    }
}
