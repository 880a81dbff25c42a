import Foundation
import NN
import TensorEngine
import Testing
import TestSupport
import Training

/// An autoencoder geometry: 32×32 gray images, f = 4 (8×8 latents) unless told.
func taskAutoencoder(resolution: Int = 32, channels: Int = 1, levels: Int = 3) -> AutoencoderArchitecture {
    var a = AutoencoderArchitecture()
    (a.resolution, a.inChannels, a.outCh, a.ch, a.chMult, a.numResBlocks, a.zChannels, a.embedDim) =
        (resolution, channels, channels, 32, Array([1, 2, 4, 4].prefix(levels)), 1, 2, 2)
    return a
}

/// 8-bit images as a tensor in [−1, 1] and as bytes (NHWC).
func randomImages(_ n: Int, side: Int, channels: Int, seed: UInt64) -> (tensor: Tensor, bytes: [UInt8]) {
    let u = Tensor.randomUniform([n, side, side, channels], stream: RandomStream(seed: seed), low: 0, high: 256)
    let bytes = u.scalars.map { UInt8(min(255, Int($0))) }
    return (Tensor(shape: u.shape, scalars: bytes.map { Float($0) / 127.5 - 1 }), bytes)
}

@Suite("Image tasks: super-resolution and inpainting conditions, masks, baselines and metrics")
struct ImageTaskTests {
    @Test("super-resolution downsamples and bicubic-upsamples to Pillow's bytes (antialiased bicubic), gray and RGB", arguments: [1, 3])
    func pillowResize(_ channels: Int) throws {
        let (x, bytes) = randomImages(2, side: 32, channels: channels, seed: 3)
        var config = TaskConfig()
        config.kind = .superResolution
        let task = ImageTask(config, autoencoder: taskAutoencoder(channels: channels), encoder: nil, scaleFactor: 1)
        guard case let .lowResolution(low) = task.condition(for: x, indices: [0, 1], epoch: 0, seed: 0) else { Issue.record("not SR"); return }
        let up = task.baseline(.lowResolution(low))
        let mine = (low.scalars + up.scalars).map { Int((($0 + 1) * 127.5).rounded()) }
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let pillow = try python("""
            import numpy as np; from PIL import Image
            a = np.frombuffer(bytes.fromhex('\(hex)'), dtype=np.uint8).reshape(2, 32, 32, \(channels))
            def img(i): return Image.fromarray(a[i, :, :, 0] if \(channels) == 1 else a[i])
            low = [img(i).resize((16, 16), Image.BICUBIC) for i in range(2)]
            up = [l.resize((32, 32), Image.BICUBIC) for l in low]
            print(' '.join(str(v) for v in np.concatenate([np.asarray(i).ravel() for i in low + up])))
            """).split(separator: " ").map { Int($0)! }
        #expect(low.shape == [2, 16, 16, channels] && up.shape == [2, 32, 32, channels])
        #expect(mine == pillow, "\(zip(mine, pillow).filter { $0 != $1 }.count) of \(mine.count) bytes differ from Pillow")
    }

    @Test("a low-resolution image larger than the latent grid is folded into channels (space-to-depth), one equal to it is concatenated as it is")
    func latentGrid() throws {
        var config = TaskConfig()
        (config.kind, config.factor) = (.superResolution, 2)
        let low = randn([2, 16, 16, 3], 5)
        let folded = ImageTask(config, autoencoder: taskAutoencoder(channels: 3), encoder: nil, scaleFactor: 1).concat(.lowResolution(low))
        #expect(folded.shape == [2, 8, 8, 12])
        #expect(try ImageTask.concatChannels(config, autoencoder: taskAutoencoder(channels: 3)) == 12)
        var worst: Float = 0
        for b in 0..<2 { for y in 0..<16 { for x in 0..<16 { for ch in 0..<3 {   // pixel (y, x) → cell (y/2, x/2), channel ((y%2)·2 + x%2)·3 + ch
            let source = low.pointer[((b * 16 + y) * 16 + x) * 3 + ch]
            let target = folded.pointer[((b * 8 + y / 2) * 8 + x / 2) * 12 + ((y % 2) * 2 + x % 2) * 3 + ch]
            worst = max(worst, abs(source - target))
        } } } }
        #expect(worst == 0)
        config.factor = 4   // 8×8 is the grid: as it is
        let same = ImageTask(config, autoencoder: taskAutoencoder(channels: 3), encoder: nil, scaleFactor: 1)
        #expect(same.concat(.lowResolution(low.slice(axis: 0, 0..<1).reshaped([1, 16, 16, 3]).slice(axis: 1, 0..<8).slice(axis: 2, 0..<8))).shape == [1, 8, 8, 3])
        #expect(try ImageTask.concatChannels(config, autoencoder: taskAutoencoder(channels: 3)) == 3)
    }

    @Test("inpainting masks: 0/1, coverage inside the configured range, a pure function of (seed, epoch, index)", arguments: [32, 64])
    func masks(_ side: Int) throws {
        var config = TaskConfig()
        (config.kind, config.maskCoverage) = (.inpainting, [0.15, 0.4])
        let ae = Autoencoder(taskAutoencoder(resolution: side), seed: 1)
        let task = ImageTask(config, autoencoder: taskAutoencoder(resolution: side), encoder: ae, scaleFactor: 1)
        let indices = Array(0..<200)
        let m = task.masks(indices, epoch: 3, seed: 7)
        #expect(m.shape == [200, side, side, 1] && m.scalars.allSatisfy { $0 == 0 || $0 == 1 })
        let coverage = (0..<200).map { b in m.slice(axis: 0, b..<(b + 1)).scalars.reduce(0, +) / Float(side * side) }
        #expect(coverage.allSatisfy { $0 >= 0.15 - 1 / Float(side * side) && $0 <= 0.4 }, "\(coverage.min()!)…\(coverage.max()!)")
        #expect(abs(coverage.reduce(0, +) / 200 - 0.275) < 0.02)   // uniform over the range
        let again = task.masks([5, 0], epoch: 3, seed: 7)
        #expect(again.slice(axis: 0, 0..<1).scalars == m.slice(axis: 0, 5..<6).scalars)   // the row, not its place in the batch
        #expect(task.masks([5], epoch: 4, seed: 7).scalars != again.slice(axis: 0, 0..<1).scalars)
    }

    @Test("inpainting concatenates E(x with the hole mid-grey)·scale_factor and the hole fraction of each latent cell; the baseline fills the hole with the visible mean")
    func inpaintingCondition() throws {
        var config = TaskConfig()
        config.kind = .inpainting
        let a = taskAutoencoder(), ae = Autoencoder(a, seed: 2)
        let task = ImageTask(config, autoencoder: a, encoder: ae, scaleFactor: 0.5)
        let (x, _) = randomImages(2, side: 32, channels: 1, seed: 9)
        guard case let .masked(_, masks) = task.condition(for: x, indices: [4, 8], epoch: 0, seed: 1) else { Issue.record("not inpainting"); return }
        let c = task.concat(.masked(images: x, masks: masks))
        #expect(c.shape == [2, 8, 8, 3])
        #expect(try ImageTask.concatChannels(config, autoencoder: a) == 3)
        let hole = x.detached()
        for i in 0..<masks.count where masks.pointer[i] == 1 { hole.pointer[i] = 0 }
        let z = withoutGradient { ae.encode(hole).mean }
        let parts = c.split(sizes: [2, 1], axis: -1)
        #expect(isClose(parts[0], z.scalars.map { Double($0) * 0.5 }, rtol: 1e-5, atol: 1e-6))
        var pooled = [Double](repeating: 0, count: 2 * 64)
        for b in 0..<2 { for y in 0..<32 { for x in 0..<32 { pooled[b * 64 + (y / 4) * 8 + x / 4] += Double(masks.pointer[(b * 32 + y) * 32 + x]) / 16 } } }
        #expect(isClose(parts[1], pooled, rtol: 1e-6, atol: 1e-7))
        let filled = task.baseline(.masked(images: x, masks: masks))
        for b in 0..<2 {
            let range = (b * 1024)..<((b + 1) * 1024)
            let visible = range.filter { masks.pointer[$0] == 0 }
            let mean = visible.map { x.pointer[$0] }.reduce(0, +) / Float(visible.count)
            #expect(range.allSatisfy { masks.pointer[$0] == 0 ? filled.pointer[$0] == x.pointer[$0] : abs(filled.pointer[$0] - mean) < 1e-5 })
        }
    }

    /// b = 2a + 3 makes S_b = 4 S_a, so the distance is ||mu_a − mu_b||² + Tr S_a exactly;
    /// a set against itself is 0; an orthogonal rotation of centred features changes the means only.
    @Test("Launch/classify-samples' Fréchet distance: 0 for a set against itself, ||Δμ||² + Tr S for b = 2a + 3")
    func frechetDistance() throws {
        let out = try python("""
            import sys; sys.path.insert(0, '\(packageRoot.appendingPathComponent("Launch").path)'); import numpy as np; from frechet import frechet
            a = np.random.default_rng(0).normal(size=(400, 6)) @ np.diag([1, 2, 3, 1, 1, 0.5]); b = 2 * a + 3
            exact = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(np.cov(a.T))
            print(abs(frechet(a, a)) < 1e-9, abs(frechet(a, b) - exact) / exact < 1e-9, frechet(a, a + 1) > 5.9)
            """)
        #expect(out == "True True True", "\(out)")
    }

    @Test("PSNR inside a mask counts the hole's pixels only")
    func maskedPSNR() {
        let x = Tensor(shape: [1, 4, 4, 1], repeating: 0), y = x.detached(), m = Tensor(shape: [1, 4, 4, 1], repeating: 0)
        for i in [0, 1, 4, 5] { m.pointer[i] = 1; y.pointer[i] = 0.2 }   // a 0.1 error in [0, 1] inside the hole
        y.pointer[15] = -1   // a large error outside it
        let psnr = ImageMetrics.maskedPSNR(y, x, masks: m, crop: (0, 0, 4, 4))[0]
        #expect(abs(psnr - 20) < 1e-5, "\(psnr)")
    }

    @Test("the UNet's gradient through a hybrid input (concatenated image channels and cross-attention to a class) matches finite differences on a random projection")
    func hybridGradient() throws {
        var a = UNetArchitecture()
        (a.imageSize, a.inChannels, a.outChannels, a.modelChannels, a.channelMult, a.numResBlocks, a.attentionResolutions) = (4, 5, 2, 32, [1], 1, [1])
        (a.numHeadChannels, a.contextDim, a.numClasses) = (16, 16, 3)
        var c = ConditioningConfig()
        (c.kind, c.key) = (.class, .hybrid)
        let model = LatentDiffusionModel(a, conditioning: c, seed: 4)
        for (i, p) in model.namedParameters().enumerated() where p.key.hasSuffix("out.2.weight") || p.key.contains("proj_out") {
            p.tensor.pointer.update(from: randn(p.tensor.shape, 40 + UInt64(i), scale: 0.2).pointer, count: p.tensor.count)   // zero-initialised
        }
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.key, $0.tensor) })
        let z = randn([2, 4, 4, 2], 11), image = randn([2, 4, 4, 3], 12)
        let y = withoutGradient { model(z, timesteps: [3, 7], conditions: [.label(1), .label(2)], concat: image) }
        let other = withoutGradient { model(z, timesteps: [3, 7], conditions: [.label(1), .label(2)], concat: image.scaled(by: 0.5)) }
        #expect(y.shape == [2, 4, 4, 2] && y.scalars != other.scalars)   // the image reaches the output
        let report = gradCheckInPlace([named["model.diffusion_model.input_blocks.0.0.weight"]!, named["cond_stage_model.embedding.weight"]!],
                                      directions: 3) { model(z, timesteps: [3, 7], conditions: [.label(1), .none], concat: image) }
        #expect(report.worstError < 2e-3, "\(report)")
    }

    @Test("config: the task and conditioning_key must agree; in_channels must be the latent's plus the task's; a factor or coverage that does not fit is named", arguments: [
        "concat for generation", "crossattn for a task", "concat with a class", "hybrid without one", "in_channels", "factor 3", "coverage",
    ])
    func configErrors(_ case_: String) throws {
        var config = Config()
        (config.diffusion.task.kind, config.diffusion.conditioning.key, config.diffusion.conditioning.kind) = (.superResolution, .concat, .none)
        (config.diffusion.model.inChannels, config.diffusion.model.outChannels) = (8, 4)
        var ae = taskAutoencoder()
        ae.embedDim = 4
        #expect(throws: Never.self) { try validateDiffusion(config); try ImageTask.checkChannels(config.diffusion, autoencoder: ae) }
        let expected: String
        switch case_ {
        case "concat for generation": config.diffusion.task.kind = .generation; expected = "concat concatenates an image to z_t, and generation has none"
        case "crossattn for a task": config.diffusion.conditioning.key = .crossattn; expected = "task super_resolution concatenates its condition image"
        case "concat with a class": config.diffusion.conditioning.kind = .class; expected = "so a class condition would go unused"
        case "hybrid without one": config.diffusion.conditioning.key = .hybrid; expected = "hybrid also attends to a class or caption"
        case "in_channels": config.diffusion.model.inChannels = 5; expected = "'diffusion.model.in_channels' must be the latent's 4 channels plus the 4 channels super_resolution concatenates: 8, got 5"
        case "factor 3": config.diffusion.task.factor = 3; expected = "'diffusion.task.factor' must be 2 or 4"
        default: (config.diffusion.task.kind, config.diffusion.task.maskCoverage) = (.inpainting, [0.5, 0.2]); expected = "'diffusion.task.mask_coverage' must be [low, high]"
        }
        do {
            try validateDiffusion(config)
            try ImageTask.checkChannels(config.diffusion, autoencoder: ae)
            Issue.record("no error for \(case_)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }
}
