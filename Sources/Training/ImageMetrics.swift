import Foundation
import TensorEngine

/// Image quality of reconstructions: PSNR and SSIM on images mapped from [−1, 1]
/// to [0, 1] and clamped, over a crop (the unpadded image).
public enum ImageMetrics {
    /// Pixel values of image `b` of an NHWC tensor in the crop, mapped to [0, 1], as [c][y][x].
    static func pixels(_ t: Tensor, _ b: Int, crop: (top: Int, left: Int, height: Int, width: Int)) -> [[Double]] {
        let (r, c) = (t.shape[2], t.shape[3])
        let p = t.pointer + b * t.shape[1] * r * c
        return (0..<c).map { ch in
            var out = [Double](repeating: 0, count: crop.height * crop.width)
            for y in 0..<crop.height {
                for x in 0..<crop.width {
                    let v = Double(p[((crop.top + y) * r + crop.left + x) * c + ch])
                    out[y * crop.width + x] = min(max((v + 1) / 2, 0), 1)
                }
            }
            return out
        }
    }

    /// Per image: PSNR in dB = 10·log10(1 / MSE) (capped at 100 dB for exact copies).
    public static func psnr(_ x: Tensor, _ y: Tensor, crop: (top: Int, left: Int, height: Int, width: Int)) -> [Double] {
        (0..<x.shape[0]).map { b in
            let a = pixels(x, b, crop: crop), c = pixels(y, b, crop: crop)
            var se = 0.0, n = 0
            for (u, v) in zip(a, c) { for i in u.indices { se += (u[i] - v[i]) * (u[i] - v[i]) }; n += u.count }
            return se == 0 ? 100 : min(100, 10 * log10(Double(n) / se))
        }
    }

    /// Per image: PSNR over the pixels where `masks` [N, R, R, 1] is 1 (all channels), in the crop.
    public static func maskedPSNR(_ x: Tensor, _ y: Tensor, masks: Tensor, crop: (top: Int, left: Int, height: Int, width: Int)) -> [Double] {
        let r = masks.shape[1]
        return (0..<x.shape[0]).map { b in
            let a = pixels(x, b, crop: crop), c = pixels(y, b, crop: crop)
            var se = 0.0, n = 0
            for yy in 0..<crop.height { for xx in 0..<crop.width where masks.pointer[(b * r + crop.top + yy) * r + crop.left + xx] > 0.5 {
                for (u, v) in zip(a, c) { let i = yy * crop.width + xx; se += (u[i] - v[i]) * (u[i] - v[i]); n += 1 }
            } }
            return n == 0 || se == 0 ? 100 : min(100, 10 * log10(Double(n) / se))
        }
    }

    /// Per image: mean SSIM (Wang et al. 2004) with an 11×11 Gaussian window of σ 1.5,
    /// K1 0.01, K2 0.03, data range 1, over the positions where the window fits
    /// (skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
    /// use_sample_covariance=False, data_range=1)`), averaged over channels.
    public static func ssim(_ x: Tensor, _ y: Tensor, crop: (top: Int, left: Int, height: Int, width: Int)) -> [Double] {
        let radius = 5, sigma = 1.5
        var kernel = (-radius...radius).map { exp(-Double($0 * $0) / (2 * sigma * sigma)) }
        let total = kernel.reduce(0, +)
        kernel = kernel.map { $0 / total }
        let (h, w) = (crop.height, crop.width)
        let c1 = 0.01 * 0.01, c2 = 0.03 * 0.03
        // The window is separable: filter rows, then columns, of u, v, u², v², uv.
        func filtered(_ f: [Double]) -> [Double] {
            let ow = w - 2 * radius, oh = h - 2 * radius
            var rows = [Double](repeating: 0, count: h * ow)
            for y in 0..<h { for x in 0..<ow { var s = 0.0; for k in 0...(2 * radius) { s += kernel[k] * f[y * w + x + k] }; rows[y * ow + x] = s } }
            var out = [Double](repeating: 0, count: oh * ow)
            for y in 0..<oh { for x in 0..<ow { var s = 0.0; for k in 0...(2 * radius) { s += kernel[k] * rows[(y + k) * ow + x] }; out[y * ow + x] = s } }
            return out
        }
        return (0..<x.shape[0]).map { b in
            let a = pixels(x, b, crop: crop), c = pixels(y, b, crop: crop)
            var sum = 0.0, count = 0
            for (u, v) in zip(a, c) {
                let mu = filtered(u), mv = filtered(v)
                let uu = filtered(u.map { $0 * $0 }), vv = filtered(v.map { $0 * $0 }), uv = filtered(zip(u, v).map { $0 * $1 })
                for i in mu.indices {
                    let su = uu[i] - mu[i] * mu[i], sv = vv[i] - mv[i] * mv[i], suv = uv[i] - mu[i] * mv[i]
                    sum += ((2 * mu[i] * mv[i] + c1) * (2 * suv + c2)) / ((mu[i] * mu[i] + mv[i] * mv[i] + c1) * (su + sv + c2))
                    count += 1
                }
            }
            return sum / Double(max(count, 1))
        }
    }

    /// A grid of NHWC images in [−1, 1] as 8-bit pixels: `rows` tensors, each one row
    /// of its images, 2-pixel gaps. Returns (width, height, channels, pixels).
    public static func grid(_ rows: [Tensor]) -> (width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        let (r, c) = (rows[0].shape[1], rows[0].shape[3])
        let columns = rows.map { $0.shape[0] }.max() ?? 0, gap = 2
        let width = columns * (r + gap) + gap, height = rows.count * (r + gap) + gap
        var pixels = [UInt8](repeating: 255, count: width * height * c)
        for (row, t) in rows.enumerated() {
            for b in 0..<t.shape[0] {
                for y in 0..<r {
                    for x in 0..<r {
                        for ch in 0..<c {
                            let v = t.pointer[((b * r + y) * r + x) * c + ch]
                            let byte = UInt8(min(max((v + 1) * 127.5, 0), 255).rounded())
                            pixels[((gap + row * (r + gap) + y) * width + gap + b * (r + gap) + x) * c + ch] = byte
                        }
                    }
                }
            }
        }
        return (width, height, c, pixels)
    }
}
