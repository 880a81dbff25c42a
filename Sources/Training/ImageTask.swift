import Datasets
import Foundation
import Storage
import NN
import TensorEngine

/// An image-to-image task's condition for a batch, before it is brought to the latent grid.
public enum ImageCondition {
    /// Super-resolution: low-resolution images [N, r, r, C] in [−1, 1], r = R / factor.
    case lowResolution(Tensor)
    /// Inpainting: images [N, R, R, C] in [−1, 1] and masks [N, R, R, 1] (1: the hole to
    /// fill, 0: kept).
    case masked(images: Tensor, masks: Tensor)

    public var count: Int {
        switch self {
        case let .lowResolution(x): return x.shape[0]
        case let .masked(x, _): return x.shape[0]
        }
    }

    /// Rows `rows` of the batch.
    public func rows(_ rows: Range<Int>) -> ImageCondition {
        switch self {
        case let .lowResolution(x): return .lowResolution(x.slice(axis: 0, rows))
        case let .masked(x, m): return .masked(images: x.slice(axis: 0, rows), masks: m.slice(axis: 0, rows))
        }
    }
}

/// What an image task (`diffusion.task`) concatenates to z_t:
/// - super-resolution: the image downsampled by `factor` with Pillow's antialiased
///   bicubic filter (8-bit arithmetic, so `Image.resize` gives the same bytes), brought
///   to the latent grid: folded into channels (space-to-depth) when it is larger than
///   the grid, upsampled bicubically when smaller, as it is when equal;
/// - inpainting: [E(x ⊙ (1 − m))·scale_factor, m over the latent grid], Stable
///   Diffusion's inpainting layout, the encoder's posterior mean for E and each latent
///   cell's hole fraction for the mask. The masked image is encoded at every step
///   (masks are drawn per epoch, so it cannot be cached).
public struct ImageTask {
    public let config: TaskConfig
    public let autoencoder: AutoencoderArchitecture
    /// Inpainting's encoder and the cache's scale factor.
    let encoder: Autoencoder?
    let scaleFactor: Float

    public init(_ config: TaskConfig, autoencoder: AutoencoderArchitecture, encoder: Autoencoder?, scaleFactor: Double) {
        precondition(config.kind != .generation, "generation has no image condition")
        precondition(config.kind != .inpainting || encoder != nil, "inpainting encodes the masked image")
        (self.config, self.autoencoder, self.encoder, self.scaleFactor) = (config, autoencoder, encoder, Float(scaleFactor))
    }

    public var resolution: Int { autoencoder.resolution }
    public var channels: Int { autoencoder.inChannels }
    /// Super-resolution's input side, R / factor.
    public var lowResolution: Int { resolution / config.factor }

    /// The channels `kind` concatenates to z_t with this autoencoder; throws when the
    /// task's settings do not fit its geometry.
    public static func concatChannels(_ t: TaskConfig, autoencoder a: AutoencoderArchitecture) throws -> Int {
        switch t.kind {
        case .generation: return 0
        case .superResolution:
            guard [2, 4].contains(t.factor), a.resolution % t.factor == 0 else {
                throw ConfigError.invalid(path: "diffusion.task.factor", reason: "must be 2 or 4 and divide the image side \(a.resolution), got \(t.factor)")
            }
            let low = a.resolution / t.factor, s = a.latentSize
            guard low % s == 0 || s % low == 0 else {
                throw ConfigError.invalid(path: "diffusion.task.factor", reason: "the low-resolution side \(low) must be a multiple or a divisor "
                                          + "of the latent side \(s)")
            }
            return low >= s ? a.inChannels * (low / s) * (low / s) : a.inChannels
        case .inpainting:
            let c = t.maskCoverage
            guard c.count == 2, c[0] > 0, c[0] <= c[1], c[1] <= 1 else {
                throw ConfigError.invalid(path: "diffusion.task.mask_coverage", reason: "must be [low, high] with 0 < low ≤ high ≤ 1, got \(c)")
            }
            return a.embedDim + 1
        }
    }

    /// Throws unless the UNet takes the latent's channels (out_channels) plus the task's.
    public static func checkChannels(_ stage: DiffusionStageConfig, autoencoder a: AutoencoderArchitecture) throws {
        let k = try concatChannels(stage.task, autoencoder: a), m = stage.model
        guard m.outChannels == a.embedDim else {
            throw ConfigError.invalid(path: "diffusion.model.out_channels", reason: "must be the latent's channels, the autoencoder's embed_dim \(a.embedDim), got \(m.outChannels)")
        }
        guard m.inChannels == m.outChannels + k else {
            let what = stage.task.kind == .generation ? "" : " plus the \(k) channels \(stage.task.kind.rawValue) concatenates"
            throw ConfigError.invalid(path: "diffusion.model.in_channels", reason: "must be the latent's \(m.outChannels) channels\(what): "
                                      + "\(m.outChannels + k), got \(m.inChannels)")
        }
    }

    /// The condition of images x [N, R, R, C] that are rows `indices`: an inpainting mask
    /// comes from its row's (seed, epoch, index) stream.
    public func condition(for images: Tensor, indices: [Int], epoch: Int, seed: Int) -> ImageCondition {
        switch config.kind {
        case .generation: preconditionFailure("generation has no image condition")
        case .superResolution: return .lowResolution(Self.resize(images, to: lowResolution))
        case .inpainting: return .masked(images: images, masks: masks(indices, epoch: epoch, seed: seed))
        }
    }

    /// The channels concatenated to z_t, [N, s, s, in_channels − out_channels].
    public func concat(_ condition: ImageCondition) -> Tensor {
        switch condition {
        case let .lowResolution(low): return toLatentGrid(low)
        case let .masked(images, masks):
            let z = withoutGradient { encoder!.encode(Self.masked(images, masks)).mean }.scaled(by: scaleFactor)
            return TensorEngine.concat([z, Self.averagePool(masks, to: autoencoder.latentSize)], axis: -1)
        }
    }

    /// What the task is measured against: bicubic upsampling of the low-resolution
    /// image, or the hole filled with the mean colour of the image's visible pixels.
    public func baseline(_ condition: ImageCondition) -> Tensor {
        switch condition {
        case let .lowResolution(low): return Self.resize(low, to: resolution)
        case let .masked(images, masks): return Self.meanFilled(images, masks)
        }
    }

    /// A low-resolution batch [N, r, r, C] on the latent grid [N, s, s, k].
    func toLatentGrid(_ low: Tensor) -> Tensor {
        let (n, r, c, s) = (low.shape[0], low.shape[1], low.shape[3], autoencoder.latentSize)
        if r < s { return Self.resize(low, to: s) }
        let f = r / s, out = Tensor(uninitialized: [n, s, s, c * f * f])
        for b in 0..<n { for y in 0..<s { for x in 0..<s { for dy in 0..<f { for dx in 0..<f { for ch in 0..<c {
            out.pointer[((b * s + y) * s + x) * c * f * f + (dy * f + dx) * c + ch] = low.pointer[((b * r + y * f + dy) * r + x * f + dx) * c + ch]
        } } } } } }
        return out
    }

    /// Images [N, R, R, C] in [−1, 1] resized to side × side by Pillow's `Image.resize`
    /// arithmetic on 8-bit pixels (values are rounded to 8 bits first: dataset images
    /// are 8-bit already).
    public static func resize(_ x: Tensor, to side: Int, filter: ResizeFilter = .bicubic) -> Tensor {
        let (n, r, c) = (x.shape[0], x.shape[1], x.shape[3]), per = r * r * c, out = Tensor(uninitialized: [n, side, side, c])
        for b in 0..<n {
            let pixels = (0..<per).map { UInt8(clamping: Int(((x.pointer[b * per + $0] + 1) * 127.5).rounded())) }
            let resized = DecodedImage(width: r, height: r, channels: c, pixels: pixels).resized(width: side, height: side, filter: filter)
            for (i, v) in resized.pixels.enumerated() { out.pointer[b * side * side * c + i] = Float(v) / 127.5 - 1 }
        }
        return out
    }

    /// x ⊙ (1 − m): the hole set to 0, mid-grey.
    static func masked(_ x: Tensor, _ m: Tensor) -> Tensor {
        let out = x.detached(), c = x.shape[3]
        for i in 0..<m.count where m.pointer[i] > 0.5 { for ch in 0..<c { out.pointer[i * c + ch] = 0 } }
        return out
    }

    /// Each image's hole filled with the per-channel mean of its visible pixels.
    static func meanFilled(_ x: Tensor, _ m: Tensor) -> Tensor {
        let out = x.detached(), (n, c) = (x.shape[0], x.shape[3]), per = m.count / n
        for b in 0..<n {
            let visible = (b * per..<(b + 1) * per).filter { m.pointer[$0] <= 0.5 }
            for ch in 0..<c {
                let mean = visible.isEmpty ? 0 : visible.reduce(Float(0)) { $0 + x.pointer[$1 * c + ch] } / Float(visible.count)
                for i in b * per..<(b + 1) * per where m.pointer[i] > 0.5 { out.pointer[i * c + ch] = mean }
            }
        }
        return out
    }

    /// Masks [N, R, R, 1] → each s × s cell's hole fraction [N, s, s, 1].
    static func averagePool(_ m: Tensor, to s: Int) -> Tensor {
        let (n, r) = (m.shape[0], m.shape[1]), f = r / s, out = Tensor(shape: [n, s, s, 1], repeating: 0)
        for b in 0..<n { for y in 0..<r { for x in 0..<r {
            out.pointer[(b * s + y / f) * s + x / f] += m.pointer[(b * r + y) * r + x] / Float(f * f)
        } } }
        return out
    }

    /// Masks [N, R, R, 1] for rows `indices` of `epoch`.
    public func masks(_ indices: [Int], epoch: Int, seed: Int) -> Tensor {
        let r = resolution, out = Tensor(uninitialized: [indices.count, r, r, 1])
        for (b, index) in indices.enumerated() {
            let m = Self.mask(side: r, coverage: config.maskCoverage[0]...config.maskCoverage[1],
                              stream: sampleStream(seed: seed, .inpaintingMask, epoch: epoch, index: index))
            (out.pointer + b * r * r).update(from: m, count: r * r)
        }
        return out
    }

    /// One mask of side × side: random rectangles and thick strokes (polylines of 2–4
    /// segments drawn with a round brush) until it covers a fraction drawn uniformly from
    /// `coverage`: painting stops at that fraction, in the middle of a shape if need be.
    static func mask(side r: Int, coverage: ClosedRange<Double>, stream: RandomStream) -> [Float] {
        var u = [Float](repeating: 0, count: 1024)
        stream.fillUniform(&u, count: u.count)
        var next = 0
        func draw() -> Double { next += 1; return Double(u[(next - 1) % u.count]) }
        let target = Int((coverage.lowerBound + draw() * (coverage.upperBound - coverage.lowerBound)) * Double(r * r)).clamped(1, r * r)
        var m = [Float](repeating: 0, count: r * r), covered = 0
        func paint(_ x: Int, _ y: Int) {
            guard covered < target, (0..<r).contains(x), (0..<r).contains(y), m[y * r + x] == 0 else { return }
            m[y * r + x] = 1
            covered += 1
        }
        var shapes = 0
        while covered < target && shapes < 64 {
            shapes += 1
            if draw() < 0.5 {
                let w = max(1, Int((0.15 + 0.35 * draw()) * Double(r))), h = max(1, Int((0.15 + 0.35 * draw()) * Double(r)))
                let x0 = Int(draw() * Double(r - w + 1)), y0 = Int(draw() * Double(r - h + 1))
                for y in y0..<(y0 + h) { for x in x0..<(x0 + w) { paint(x, y) } }
            } else {
                let radius = Double(r) * (0.04 + 0.05 * draw()) + 0.5
                var (x, y) = (draw() * Double(r), draw() * Double(r))
                for _ in 0..<(2 + Int(draw() * 3)) {
                    let angle = draw() * 2 * .pi, length = (0.2 + 0.4 * draw()) * Double(r)
                    let (nx, ny) = ((x + cos(angle) * length).clamped(0, Double(r - 1)), (y + sin(angle) * length).clamped(0, Double(r - 1)))
                    let steps = max(1, Int(length))
                    for t in 0...steps {
                        let (cx, cy) = (x + (nx - x) * Double(t) / Double(steps), y + (ny - y) * Double(t) / Double(steps))
                        let reach = Int(radius.rounded(.up))
                        for dy in -reach...reach { for dx in -reach...reach where Double(dx * dx + dy * dy) <= radius * radius {
                            paint(Int(cx.rounded()) + dx, Int(cy.rounded()) + dy)
                        } }
                    }
                    (x, y) = (nx, ny)
                }
            }
        }
        return m
    }

    /// One grid row per input: super-resolution shows the low-resolution input (nearest
    /// upsampling), its bicubic upsampling, the results and the reference when known;
    /// inpainting shows the image, the masked image (the hole mid-grey), the results and,
    /// when the image is not the reference already, the reference.
    public func gridRows(_ condition: ImageCondition, results: Tensor, references: Tensor?) -> [Tensor] {
        let n = condition.count, k = results.shape[0] / n
        let shown: [Tensor]
        switch condition {
        case let .lowResolution(low): shown = [Self.resize(low, to: resolution, filter: .box), baseline(condition)]
        case let .masked(images, masks): shown = [images, Self.masked(images, masks)]
        }
        return (0..<n).map { i in
            var columns = shown.map { $0.slice(axis: 0, i..<(i + 1)) } + [results.slice(axis: 0, (i * k)..<((i + 1) * k))]
            if let references, config.kind == .superResolution { columns.append(references.slice(axis: 0, i..<(i + 1))) }
            return TensorEngine.concat(columns, axis: 0)
        }
    }
}

extension Comparable {
    func clamped(_ low: Self, _ high: Self) -> Self { min(max(self, low), high) }
}

/// `ldm-train sample --input F.png [--mask M.png]` files as an image task's condition.
enum ImageInputs {
    static func read(_ inputs: [String], masks: [String], task: ImageTask, say: (String) -> Void) throws -> ImageCondition {
        let (c, r) = (task.channels, task.resolution)
        switch task.config.kind {
        case .generation: preconditionFailure("generation takes no input images")
        case .superResolution:
            guard masks.isEmpty else { throw SamplingError(description: "--mask is for inpainting; super-resolution takes --input only") }
            let side = task.lowResolution
            let x = Tensor(uninitialized: [inputs.count, side, side, c])
            for (i, path) in inputs.enumerated() {
                let image = try read(path, side: side, channels: c, role: "low-resolution input (the image side \(r) ÷ \(task.config.factor))")
                for (j, v) in image.pixels.enumerated() { x.pointer[i * side * side * c + j] = Float(v) / 127.5 - 1 }
            }
            return .lowResolution(x)
        case .inpainting:
            guard masks.count == inputs.count else {
                throw SamplingError(description: "inpainting takes one --mask M.png for each --input (\(inputs.count) input(s), \(masks.count) mask(s))")
            }
            let x = Tensor(uninitialized: [inputs.count, r, r, c]), m = Tensor(uninitialized: [inputs.count, r, r, 1])
            for (i, (path, maskPath)) in zip(inputs, masks).enumerated() {
                let image = try read(path, side: r, channels: c, role: "input")
                for (j, v) in image.pixels.enumerated() { x.pointer[i * r * r * c + j] = Float(v) / 127.5 - 1 }
                let mask = try DecodedImage.read(maskPath)
                guard mask.width == r && mask.height == r else {
                    throw DataError("\(maskPath): the mask is \(mask.width)×\(mask.height), its image \(path) is \(r)×\(r): they must match")
                }
                let colours = mask.channels == 2 || mask.channels == 4 ? mask.channels - 1 : mask.channels
                var grey = 0
                for p in 0..<(r * r) {   // the colour channels' mean; alpha is ignored
                    let level = (0..<colours).reduce(0) { $0 + Int(mask.pixels[p * mask.channels + $1]) } / colours
                    if level != 0 && level != 255 { grey += 1 }
                    m.pointer[i * r * r + p] = level >= 128 ? 1 : 0
                }
                if grey > 0 { say("sample: \(maskPath): \(grey) pixel(s) neither black nor white, thresholded at 50% (≥ 128 is the hole)") }
            }
            return .masked(images: x, masks: m)
        }
    }

    /// An image file that must be side × side with the model's channels (1 gray, 3 RGB).
    static func read(_ path: String, side: Int, channels: Int, role: String) throws -> DecodedImage {
        let image = try DecodedImage.read(path)
        guard image.width == side && image.height == side else {
            throw DataError("\(path): \(image.width)×\(image.height) pixels; the model's \(role) is \(side)×\(side)")
        }
        let names = [1: "gray", 2: "gray + alpha", 3: "RGB", 4: "RGBA"]
        guard image.channels == channels else {
            throw DataError("\(path): \(image.channels) channel(s) (\(names[image.channels] ?? "?")); the model takes \(channels) (\(names[channels]!))")
        }
        return image
    }
}
