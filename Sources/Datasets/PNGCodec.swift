import CPNG
import Foundation
import Storage

/// The one file that talks to libpng: decoding any PNG (gray, gray+alpha, RGB, RGBA,
/// palette with or without transparency, 1–16 bits per sample) to 8-bit pixels, and
/// writing 8-bit gray or RGB PNGs (sample grids).
public enum PNGCodec {
    /// True when `bytes` start with the PNG signature.
    public static func isPNG(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 8 && bytes.prefix(8).elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
    }

    /// Decodes a PNG held in memory. The result keeps the file's colour (gray or RGB)
    /// and its alpha (an alpha channel or a tRNS chunk); 16-bit samples are scaled to
    /// 8 bits, palettes expanded. `name` is used in errors.
    public static func decode(_ bytes: UnsafeRawBufferPointer, name: String) throws -> DecodedImage {
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        guard png_image_begin_read_from_memory(&image, bytes.baseAddress, bytes.count) != 0 else {
            throw DataError("\(name): not a readable PNG (\(message(&image)))")
        }
        // Keep colour and alpha, drop a colour map. 16-bit files are read as 16 bits and
        // scaled here: libpng's own 16 → 8 conversion treats the samples as linear light
        // and gamma-encodes them, which no other reader (Pillow, browsers) does.
        let sixteen = image.format & png_uint_32(PNG_FORMAT_FLAG_LINEAR) != 0
        image.format &= png_uint_32(PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA | PNG_FORMAT_FLAG_LINEAR)
        let alpha = image.format & png_uint_32(PNG_FORMAT_FLAG_ALPHA) != 0
        let channels = (image.format & png_uint_32(PNG_FORMAT_FLAG_COLOR) != 0 ? 3 : 1) + (alpha ? 1 : 0)
        let (width, height) = (Int(image.width), Int(image.height))
        guard width > 0, height > 0, width <= 1 << 15, height <= 1 << 15 else {
            throw DataError("\(name): PNG of \(width)×\(height) pixels is outside 1…32768 per side")
        }
        var pixels = [UInt8](repeating: 0, count: width * height * channels)
        var wide = [UInt16](repeating: 0, count: sixteen ? pixels.count : 0)
        let ok = sixteen
            ? wide.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, png_int_32(width * channels), nil) }
            : pixels.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, png_int_32(width * channels), nil) }
        guard ok != 0 else { throw DataError("\(name): damaged or truncated PNG (\(message(&image)))") }
        if sixteen { narrow(wide, into: &pixels, channels: channels, alpha: alpha) }
        return DecodedImage(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// Writes 8-bit gray (1 channel) or RGB (3) pixels, row-major and interleaved,
    /// to `path` (parent directories are created).
    public static func write(_ path: String, width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        precondition(channels == 1 || channels == 3, "PNG: \(channels) channels (1 or 3 supported)")
        precondition(pixels.count == width * height * channels, "PNG: \(pixels.count) bytes for \(width)×\(height)×\(channels)")
        let directory = (path as NSString).deletingLastPathComponent
        do {
            if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        } catch { throw DataError(FileSystem.describe(error, path: directory, doing: "create the directory for \(path)")) }
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        (image.width, image.height) = (png_uint_32(width), png_uint_32(height))
        image.format = channels == 3 ? png_uint_32(PNG_FORMAT_RGB) : 0   // PNG_FORMAT_GRAY is 0
        defer { png_image_free(&image) }
        errno = 0
        let ok = pixels.withUnsafeBytes { png_image_write_to_file(&image, path, 0, $0.baseAddress, png_int_32(width * channels), nil) }
        guard ok != 0 else {   // libpng removes the file it could not finish
            let reason = errno != 0 ? FileSystem.cause(errno: errno) : message(&image)
            throw DataError("\(path): cannot write the PNG: \(reason)")
        }
    }

    /// 16-bit samples to 8 (v·255/65535, rounded). libpng gives 16-bit colour with
    /// alpha premultiplied, so colour is divided by alpha first.
    private static func narrow(_ wide: [UInt16], into pixels: inout [UInt8], channels: Int, alpha: Bool) {
        let colors = alpha ? channels - 1 : channels
        for p in 0..<(wide.count / channels) {
            let a = alpha ? Int(wide[p * channels + colors]) : 65535
            for k in 0..<colors {
                let c = Int(wide[p * channels + k])
                pixels[p * channels + k] = UInt8(a == 0 ? 0 : min(255, (c * 255 + a / 2) / a))
            }
            if alpha { pixels[p * channels + colors] = UInt8((a * 255 + 32767) / 65535) }
        }
    }

    private static func message(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
