import Foundation
import Storage

/// A decoded image: 8-bit samples, row-major, channels interleaved: 1 gray, 2 gray +
/// alpha, 3 RGB, 4 RGBA.
public struct DecodedImage: Sendable, Equatable {
    public var width: Int, height: Int, channels: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * channels, "image: \(pixels.count) bytes for \(width)×\(height)×\(channels)")
        (self.width, self.height, self.channels, self.pixels) = (width, height, channels, pixels)
    }

    var hasAlpha: Bool { channels == 2 || channels == 4 }
    var colorChannels: Int { hasAlpha ? channels - 1 : channels }

    /// Decodes a PNG or JPEG file, recognised by its first bytes, not its name.
    public static func read(_ path: String) throws -> DecodedImage {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw DataError("\(path): cannot read (\((error as NSError).localizedDescription))")
        }
        return try data.withUnsafeBytes { bytes in
            if PNGCodec.isPNG(bytes) { return try PNGCodec.decode(bytes, name: path) }
            if JPEGDecoder.isJPEG(bytes) { return try JPEGDecoder.decode(bytes, name: path) }
            throw DataError("\(path): neither a PNG nor a JPEG file (\(bytes.isEmpty ? "empty" : "unknown signature"))")
        }
    }
}

extension DecodedImage {
    /// Resized as Pillow's `Image.resize((width, height), filter)` does, to the byte
    /// (antialiased when reducing: the filter widens by the reduction factor).
    public func resized(width: Int, height: Int, filter: ResizeFilter) -> DecodedImage {
        var p = ImagePreparation(resolution: max(width, height), channels: channels)
        p.filter = filter
        return p.resize(self, width: width, height: height)
    }
}

/// The resampling filters of Pillow's `Image.resize` (the same names and kernels).
public enum ResizeFilter: String, Codable, Sendable, CaseIterable {
    case box, bilinear, bicubic, lanczos

    var support: Double { [.box: 0.5, .bilinear: 1, .bicubic: 2, .lanczos: 3][self]! }

    func weight(_ t: Double) -> Double {
        let x = abs(t)
        switch self {
        case .box: return t > -0.5 && t <= 0.5 ? 1 : 0   // Pillow's half-open interval
        case .bilinear: return x < 1 ? 1 - x : 0
        case .bicubic:   // Keys' cubic with a = −0.5
            let a = -0.5
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        case .lanczos:
            func sinc(_ v: Double) -> Double { v == 0 ? 1 : sin(.pi * v) / (.pi * v) }
            return x < 3 ? sinc(x) * sinc(x / 3) : 0
        }
    }
}

/// How an image of any size becomes a dataset row: alpha composited over
/// `background`, converted to `channels` (1 or 3, as Pillow's `convert` does),
/// the shorter side resized to `resolution` (antialiased: the filter widens by the
/// reduction factor) and the centre cropped to resolution × resolution (the
/// arithmetic of torchvision's Resize and CenterCrop).
public struct ImagePreparation: Sendable, Equatable {
    public var resolution: Int
    public var channels: Int
    public var background: [UInt8] = [255, 255, 255]
    public var filter = ResizeFilter.bicubic

    public init(resolution: Int, channels: Int) { (self.resolution, self.channels) = (resolution, channels) }

    /// The row: channels-first [C, R, R] bytes.
    public func apply(_ image: DecodedImage) -> [UInt8] {
        let flat = composited(converted(image))
        let (w, h) = (flat.width, flat.height), short = min(w, h), long = max(w, h)
        let newLong = Int(Double(resolution) * Double(long) / Double(short))   // torchvision truncates
        let (rw, rh) = w <= h ? (resolution, newLong) : (newLong, resolution)
        let resized = resize(flat, width: rw, height: rh)
        let top = Int((Double(rh - resolution) / 2).rounded(.toNearestOrEven))   // Python's round(), as CenterCrop
        let left = Int((Double(rw - resolution) / 2).rounded(.toNearestOrEven))
        let c = channels, r = resolution
        var out = [UInt8](repeating: 0, count: c * r * r)
        for ch in 0..<c { for y in 0..<r { for x in 0..<r {
            out[(ch * r + y) * r + x] = resized.pixels[((top + y) * rw + left + x) * c + ch]
        } } }
        return out
    }

    /// Colour channels converted to `channels`, alpha kept: RGB → L by ITU-R 601-2
    /// luma in Pillow's fixed point, L → RGB by copying.
    func converted(_ image: DecodedImage) -> DecodedImage {
        let from = image.colorChannels, alpha = image.hasAlpha ? 1 : 0
        guard from != channels else { return image }
        let outChannels = channels + alpha
        var out = [UInt8](repeating: 0, count: image.width * image.height * outChannels)
        for p in 0..<(image.width * image.height) {
            let src = p * image.channels, dst = p * outChannels
            if channels == 1 {
                out[dst] = Self.luma(image.pixels[src], image.pixels[src + 1], image.pixels[src + 2])
            } else {
                for k in 0..<3 { out[dst + k] = image.pixels[src] }
            }
            if alpha == 1 { out[dst + channels] = image.pixels[src + from] }
        }
        return DecodedImage(width: image.width, height: image.height, channels: outChannels, pixels: out)
    }

    /// Pillow's L = R·299/1000 + G·587/1000 + B·114/1000, in 16-bit fixed point, rounded.
    static func luma(_ r: UInt8, _ g: UInt8, _ b: UInt8) -> UInt8 {
        let sum: Int = Int(r) * 19595 + Int(g) * 38470 + Int(b) * 7471
        return UInt8((sum + 0x8000) >> 16)
    }

    /// Alpha removed by compositing over the background: c·α + bg·(255 − α), /255 rounded.
    func composited(_ image: DecodedImage) -> DecodedImage {
        guard image.hasAlpha else { return image }
        let c = image.colorChannels
        let bg = c == 1 ? [Self.luma(background[0], background[1], background[2])] : background
        var out = [UInt8](repeating: 0, count: image.width * image.height * c)
        for p in 0..<(image.width * image.height) {
            let a = Int(image.pixels[p * (c + 1) + c])
            for k in 0..<c {
                out[p * c + k] = UInt8((Int(image.pixels[p * (c + 1) + k]) * a + Int(bg[k]) * (255 - a) + 127) / 255)
            }
        }
        return DecodedImage(width: image.width, height: image.height, channels: c, pixels: out)
    }

    /// Pillow's two-pass resampling of 8-bit images (horizontal, then vertical, with an
    /// 8-bit image between), coefficients normalised and rounded to 22 fraction bits, so
    /// the result matches `Image.resize(size, filter)` to the byte.
    func resize(_ image: DecodedImage, width: Int, height: Int) -> DecodedImage {
        var current = image
        if width != image.width {
            let (bounds, weights, k) = Self.coefficients(input: image.width, output: width, filter: filter)
            current = Self.pass(current, outWidth: width, outHeight: current.height, bounds: bounds, weights: weights, k: k, horizontal: true)
        }
        if height != image.height {
            let (bounds, weights, k) = Self.coefficients(input: image.height, output: height, filter: filter)
            current = Self.pass(current, outWidth: current.width, outHeight: height, bounds: bounds, weights: weights, k: k, horizontal: false)
        }
        return current
    }

    static let precisionBits = 22

    /// For each output position: the first input index and count, and `k` weights in fixed point.
    static func coefficients(input: Int, output: Int, filter: ResizeFilter) -> (bounds: [(Int, Int)], weights: [Int], k: Int) {
        let scale = Double(input) / Double(output), filterScale = max(scale, 1)
        let support = filter.support * filterScale
        let k = Int(support.rounded(.up)) * 2 + 1
        var bounds: [(Int, Int)] = [], weights = [Int](repeating: 0, count: output * k)
        for o in 0..<output {
            let center = (Double(o) + 0.5) * scale
            let lo = max(0, Int(center - support + 0.5)), hi = min(input, Int(center + support + 0.5))
            var w = (lo..<hi).map { filter.weight((Double($0) - center + 0.5) / filterScale) }
            let total = w.reduce(0, +)
            if total != 0 { w = w.map { $0 / total } }
            for (i, v) in w.enumerated() {
                weights[o * k + i] = Int(v < 0 ? -0.5 + v * Double(1 << precisionBits) : 0.5 + v * Double(1 << precisionBits))
            }
            bounds.append((lo, hi - lo))
        }
        return (bounds, weights, k)
    }

    static func pass(_ image: DecodedImage, outWidth: Int, outHeight: Int, bounds: [(Int, Int)], weights: [Int], k: Int,
                     horizontal: Bool) -> DecodedImage {
        let c = image.channels
        var out = [UInt8](repeating: 0, count: outWidth * outHeight * c)
        image.pixels.withUnsafeBufferPointer { src in
            for y in 0..<outHeight { for x in 0..<outWidth {
                let (first, count) = bounds[horizontal ? x : y], w = (horizontal ? x : y) * k
                for ch in 0..<c {
                    var sum = 1 << (precisionBits - 1)
                    for i in 0..<count {
                        let (sx, sy) = horizontal ? (first + i, y) : (x, first + i)
                        sum += Int(src[(sy * image.width + sx) * c + ch]) * weights[w + i]
                    }
                    out[(y * outWidth + x) * c + ch] = sum <= 0 ? 0 : sum >= 1 << (precisionBits + 8) ? 255 : UInt8(sum >> precisionBits)
                }
            } }
        }
        return DecodedImage(width: outWidth, height: outHeight, channels: c, pixels: out)
    }
}
