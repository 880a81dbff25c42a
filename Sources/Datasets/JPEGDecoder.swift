import CJPEG
import Foundation
import Storage

/// The one file that talks to libjpeg-turbo: baseline, progressive and grayscale
/// JPEGs decoded to 8-bit gray or RGB with the library's defaults (accurate integer
/// DCT, smooth chroma upsampling: what Pillow uses too).
public enum JPEGDecoder {
    /// True when `bytes` start with a JPEG SOI marker.
    public static func isJPEG(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
    }

    /// Decodes a JPEG held in memory; gray files stay one channel. `name` is used in errors.
    public static func decode(_ bytes: UnsafeRawBufferPointer, name: String) throws -> DecodedImage {
        guard let handle = tjInitDecompress() else { throw DataError("\(name): cannot start the JPEG decoder") }
        defer { tjDestroy(handle) }
        let source = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        guard tjDecompressHeader3(handle, source, UInt(bytes.count), &width, &height, &subsampling, &colorspace) == 0 else {
            throw DataError("\(name): not a readable JPEG (\(String(cString: tjGetErrorStr2(handle))))")
        }
        guard colorspace != Int32(TJCS_CMYK.rawValue), colorspace != Int32(TJCS_YCCK.rawValue) else {
            throw DataError("\(name): CMYK JPEGs are not supported; convert it to RGB")
        }
        guard width > 0, height > 0, width <= 1 << 15, height <= 1 << 15 else {
            throw DataError("\(name): JPEG of \(width)×\(height) pixels is outside 1…32768 per side")
        }
        let gray = colorspace == Int32(TJCS_GRAY.rawValue)
        let channels = gray ? 1 : 3
        var pixels = [UInt8](repeating: 0, count: Int(width) * Int(height) * channels)
        let status = pixels.withUnsafeMutableBufferPointer {
            tjDecompress2(handle, source, UInt(bytes.count), $0.baseAddress, width, 0, height,
                          Int32(gray ? TJPF_GRAY.rawValue : TJPF_RGB.rawValue), 0)
        }
        if status != 0 {
            // A warning (e.g. extraneous bytes between markers) still decodes the whole
            // image; a truncated stream does not, and neither does an error.
            let text = String(cString: tjGetErrorStr2(handle))
            if tjGetErrorCode(handle) != Int32(TJERR_WARNING.rawValue) || text.contains("Premature end") {
                throw DataError("\(name): damaged or truncated JPEG (\(text))")
            }
        }
        return DecodedImage(width: Int(width), height: Int(height), channels: channels, pixels: pixels)
    }
}
