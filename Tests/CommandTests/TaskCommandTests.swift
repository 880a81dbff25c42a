import Foundation
import Storage
import Testing
import TestSupport

/// The two image-task smoke recipes, run as a user would after the text smoke recipe:
/// they share its stage 1 (skipped: complete) and train their own stage 2.
enum SmokeTask: String, CaseIterable, CustomTestStringConvertible {
    case sr = "fmnist-sr-smoke", inpaint = "fmnist-inpaint-smoke"
    var config: String { packageRoot.appendingPathComponent("Launch/configs/\(rawValue).yaml").path }
    var run: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/\(self == .sr ? "diffusion-sr" : "diffusion-inpaint")").path }
    var testDescription: String { self == .sr ? "super-resolution" : "inpainting" }

    func job(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        let r = try mpirunLocal(ranks, ["ldm-train", "diffusion", "--config", config, "--latents", textLatents,
                                        "--autoencoder", textAutoencoder, "--run-dir", run] + extra, directory: textSmoke.root)
        return (r.status, r.out, r.err)
    }

    func sample(_ extra: [String], diffusion: String? = nil) throws -> (status: Int32, out: String, err: String) {
        try ldmTrain(["sample", "--diffusion", diffusion ?? run, "--autoencoder", textAutoencoder, "--steps", "3"] + extra, in: textSmoke.root)
    }
}

let taskPipelines: [SmokeTask: (status: Int32, out: String, err: String)] = {
    _ = textSmoke
    return Dictionary(uniqueKeysWithValues: SmokeTask.allCases.map { task in
        (task, try! ldmTrain(["pipeline", "--config", task.config], in: textSmoke.root))
    })
}()

/// Writes an image with Pillow: `mode` L or RGB, `side`, pixels from a pattern.
func writeImage(_ path: String, mode: String = "L", side: Int, pattern: String = "(x * 7 + y * 3) % 256") throws {
    _ = try python("""
        import numpy as np; from PIL import Image
        y, x = np.mgrid[0:\(side), 0:\(side)]; v = (\(pattern)).astype(np.uint8)
        Image.fromarray(v if '\(mode)' == 'L' else np.stack([v, v // 2, 255 - v], -1), '\(mode)').save('\(path)')
        """)
}

@Suite("Image tasks: the super-resolution and inpainting smoke pipelines, sampling, evaluation, bad input", .serialized)
struct TaskCommandTests {
    @Test("the smoke pipeline reuses the text recipe's stage 1, trains, measures the model against its baseline and samples the first test images", arguments: SmokeTask.allCases)
    func pipeline(_ task: SmokeTask) throws {
        let r = taskPipelines[task]!
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("== autoencoder: complete at step 4") && r.out.contains("== encode: ") && r.out.contains("skipped"), "\(r.out)")
        #expect(r.out.contains(task == .sr ? "super-resolution ×2 (1 channel(s) concatenated to z_t)" : "inpainting (3 channel(s) concatenated to z_t)"), "\(r.out)")
        #expect(r.out.contains(task == .sr ? "super-resolution on 16 test images: PSNR" : "inpainting on 16 test images: PSNR inside the hole"), "\(r.out)")
        let check = try python("""
            import h5py, json; f = h5py.File('\(task.run)/samples.h5'); c = json.load(open('\(task.run)/complete'))
            keys = sorted(k for k in c if k != 'step'); m = f['masks'][:] if 'masks' in f else None
            print(f.attrs['task'], {k: f[k].shape for k in sorted(f)}, keys, all(0 < c[k] < 100 for k in keys),
                  None if m is None else bool(((m == 0) | (m == 1)).all() and (0.1 <= m.mean(axis=(1, 2, 3))).all() and (m.mean(axis=(1, 2, 3)) <= 0.5).all()))
            """)
        let expected = task == .sr
            ? "super_resolution {'images': (4, 1, 32, 32), 'input_index': (4,), 'inputs': (4, 1, 16, 16), 'references': (4, 1, 32, 32)} "
              + "['bicubic_psnr', 'bicubic_ssim', 'sr_psnr', 'sr_ssim'] True None"
            : "inpainting {'images': (4, 1, 32, 32), 'input_index': (4,), 'inputs': (4, 1, 32, 32), 'masks': (4, 1, 32, 32), "
              + "'references': (4, 1, 32, 32)} ['inpaint_hole_psnr', 'inpaint_psnr', 'mean_fill_hole_psnr', 'mean_fill_psnr'] True True"
        #expect(check == expected, "\(check)")
    }

    @Test("2 ranks: 6 steps straight equal 3 + resume + 3, bitwise", arguments: SmokeTask.allCases)
    func exactResume(_ task: SmokeTask) throws {
        _ = taskPipelines
        try checkExactResume(task.job, holding: "ema/model/diffusion_model/input_blocks/0/0/weight")
    }

    /// The conditions (low-resolution images, masks and the masked image's latent) come
    /// from each row's own streams, so 1 × 8 and 2 × 4 train the same model and measure
    /// it the same; the control draws other masks (another seed) or trains 1 step less.
    @Test("1 and 2 ranks for the same global batch end with the same weights and the same test figures", arguments: SmokeTask.allCases)
    func worldSizeInvariance(_ task: SmokeTask) throws {
        _ = taskPipelines
        var runs: [[String: [Float]]] = [], figures: [[String: Double]] = []
        let control = task == .sr ? ["--steps", "3"] : ["--seed", "5"]
        for (ranks, batch, extra) in [(1, 8, [String]()), (2, 4, []), (2, 4, control)] {
            let run = temporaryRun()
            let r = try task.job(ranks, run: run, ["--batch-size", String(batch), "--set", "diffusion.optimizer.eps=1e-3",
                                                   "--set", "diffusion.optimizer.base_lr=1.5625e-5", "--set", "diffusion.training.image_every=100"] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            let steps = extra == ["--steps", "3"] ? 3 : 4
            runs.append(try checkpointTensors(run + String(format: "/step-%08d", steps)))
            let data = try Data(contentsOf: URL(fileURLWithPath: run + "/complete"))
            figures.append((try JSONSerialization.jsonObject(with: data) as! [String: Any]).filter { $0.key != "step" }.compactMapValues { $0 as? Double })
        }
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        #expect(worst < 1e-5, "2 × 4: \(key) differs by \(worst)")
        #expect(worstRelativeDifference(runs[0], runs[2]).0 > 1e-4, "the control changed nothing")
        #expect(figures[0].count == 4 && figures[0].keys.allSatisfy { abs(figures[0][$0]! - figures[1][$0]!) < 1e-3 }, "\(figures)")
    }

    @Test("sample --from-test and --input: a grid row per input, results, inputs, masks and references in --images-out")
    func sample() throws {
        _ = taskPipelines
        let dir = temporaryDirectory()
        let r = try SmokeTask.sr.sample(["--from-test", "3", "--count", "2", "--out", dir.appendingPathComponent("sr.png").path,
                                         "--images-out", dir.appendingPathComponent("sr.h5").path])
        #expect(r.status == 0 && r.out.contains("2 result(s) for each of 3 input(s)"), "\(r.err)")
        let low = dir.appendingPathComponent("low.png").path, image = dir.appendingPathComponent("image.png").path
        let mask = dir.appendingPathComponent("mask.png").path
        try writeImage(low, side: 16)
        try writeImage(image, side: 32)
        try writeImage(mask, side: 32, pattern: "np.where(x < 12, 255, np.where(x < 14, 100, 0))")   // columns 12 and 13 grey (100: kept)
        let input = try SmokeTask.sr.sample(["--task", "super-resolution", "--input", low, "--input", low, "--images-out", dir.appendingPathComponent("in.h5").path,
                                             "--out", dir.appendingPathComponent("in.png").path])
        #expect(input.status == 0, "\(input.err)")
        let inpaint = try SmokeTask.inpaint.sample(["--input", image, "--mask", mask, "--images-out", dir.appendingPathComponent("ip.h5").path,
                                                    "--out", dir.appendingPathComponent("ip.png").path])
        #expect(inpaint.status == 0 && inpaint.out.contains("mask.png: 64 pixel(s) neither black nor white, thresholded at 50% (≥ 128 is the hole)"),
                "\(inpaint.out) \(inpaint.err)")
        let check = try python("""
            import h5py, numpy as np; from PIL import Image; d = '\(dir.path)'
            s, i, p = (h5py.File(f'{d}/{n}.h5') for n in ('sr', 'in', 'ip'))
            print(s['images'].shape, list(s['input_index'][:]), s['inputs'].shape, s['references'].shape, Image.open(f'{d}/sr.png').size,
                  i['images'].shape, 'references' in i, Image.open(f'{d}/in.png').size,
                  p['masks'].shape, int(p['masks'][:].sum()), Image.open(f'{d}/ip.png').size,
                  round(float(np.abs(i['inputs'][0, 0] * 127.5 + 127.5 - np.asarray(Image.open('\(low)'), dtype=float)).max()), 3))
            """)
        // SR from test: LR, bicubic, 2 results, reference = 5 columns; from files: LR, bicubic, result; inpainting: image, masked, result.
        #expect(check == "(6, 1, 32, 32) [0, 0, 1, 1, 2, 2] (3, 1, 16, 16) (3, 1, 32, 32) (172, 104) (2, 1, 32, 32) False (104, 70) "
                + "(1, 1, 32, 32) 384 (104, 36) 0.0", "\(check)")
    }

    @Test("hybrid: super-resolution that also attends to the class; --from-test conditions each image on its own class, --input on --class")
    func hybrid() throws {
        _ = taskPipelines
        let run = temporaryRun(), dir = temporaryDirectory()
        let trained = try SmokeTask.sr.job(1, run: run, ["--steps", "2", "--set", "diffusion.conditioning.kind=class", "--set", "diffusion.conditioning.key=hybrid",
                                                         "--set", "diffusion.training.image_every=100", "--set", "diffusion.training.eval_images=4"])
        #expect(trained.status == 0 && trained.out.contains("class-conditional, super-resolution ×2"), "\(trained.err)")
        let fromTest = try SmokeTask.sr.sample(["--from-test", "3", "--images-out", dir.appendingPathComponent("t.h5").path], diffusion: run)
        #expect(fromTest.status == 0, "\(fromTest.err)")
        let low = dir.appendingPathComponent("low.png").path
        try writeImage(low, side: 16)
        let unnamed = try SmokeTask.sr.sample(["--input", low], diffusion: run)
        #expect(unnamed.status != 0 && unnamed.err.contains("is also class-conditional (hybrid): give --class K for the inputs"), "\(unnamed.err)")
        let named = try SmokeTask.sr.sample(["--input", low, "--class", "3", "--count", "2", "--images-out", dir.appendingPathComponent("i.h5").path],
                                            diffusion: run)
        #expect(named.status == 0, "\(named.err)")
        let check = try python("""
            import h5py; t, i = h5py.File('\(dir.path)/t.h5'), h5py.File('\(dir.path)/i.h5')
            d = h5py.File('\(textSmoke.root.path)/Datasets/fmnist-text-smoke.h5')
            print(list(t['labels'][:]) == list(d['test/labels'][:3]), list(i['labels'][:]))
            """)
        #expect(check == "True [3, 3]", "\(check)")
    }

    @Test("evaluate: the model against its baseline on the first test images, the same on 1 and 2 ranks", arguments: SmokeTask.allCases)
    func evaluate(_ task: SmokeTask) throws {
        _ = taskPipelines
        let one = try ldmTrain(["evaluate", "--diffusion", task.run, "--autoencoder", textAutoencoder, "--count", "6", "--steps", "3"], in: textSmoke.root)
        let two = try mpirunLocal(2, ["ldm-train", "evaluate", "--diffusion", task.run, "--autoencoder", textAutoencoder, "--count", "6", "--steps", "3"],
                                  directory: textSmoke.root)
        #expect(one.status == 0 && two.status == 0, "\(one.err) \(two.err)")
        let line = one.out.split(separator: "\n").first { $0.contains("on 6 test images") }.map(String.init) ?? ""
        #expect(line.contains(task == .sr ? "bicubic upsampling PSNR" : "mean-colour fill"), "\(one.out)")
        #expect(two.out.contains(line), "\(two.out)")
    }

    @Test("bad input: one clear error", arguments: [
        "low-resolution input of the wrong size", "input of the wrong channels", "mask of the wrong size", "no mask", "task not trained",
        "task for a generation model", "input for a generation model", "generation model to evaluate", "in_channels before stage 1",
    ])
    func badInput(_ case_: String) throws {
        _ = taskPipelines
        let dir = temporaryDirectory()
        let image = dir.appendingPathComponent("image.png").path, rgb = dir.appendingPathComponent("rgb.png").path
        let mask = dir.appendingPathComponent("mask.png").path
        try writeImage(image, side: 32)
        try writeImage(rgb, mode: "RGB", side: 16)
        try writeImage(mask, side: 28)
        let result: (status: Int32, out: String, err: String), expected: String
        switch case_ {
        case "low-resolution input of the wrong size":
            result = try SmokeTask.sr.sample(["--input", image])
            expected = "image.png: 32×32 pixels; the model's low-resolution input (the image side 32 ÷ 2) is 16×16"
        case "input of the wrong channels":
            result = try SmokeTask.sr.sample(["--input", rgb])
            expected = "rgb.png: 3 channel(s) (RGB); the model takes 1 (gray)"
        case "mask of the wrong size":
            result = try SmokeTask.inpaint.sample(["--input", image, "--mask", mask])
            expected = "mask.png: the mask is 28×28, its image \(image) is 32×32: they must match"
        case "no mask":
            result = try SmokeTask.inpaint.sample(["--input", image])
            expected = "inpainting takes one --mask M.png for each --input (1 input(s), 0 mask(s))"
        case "task not trained":
            result = try SmokeTask.sr.sample(["--task", "inpainting", "--input", image])
            expected = "was trained for --task super-resolution, not inpainting"
        case "task for a generation model":
            result = try SmokeTask.sr.sample(["--task", "super-resolution", "--input", image], diffusion: textDiffusion)
            expected = "is a generation model: it was not trained for --task super-resolution"
        case "input for a generation model":
            result = try SmokeTask.sr.sample(["--input", image, "--prompt", "a bag"], diffusion: textDiffusion)
            expected = "is a generation model: --input, --mask and --from-test are for --task super-resolution or inpainting"
        case "generation model to evaluate":
            result = try ldmTrain(["evaluate", "--diffusion", textDiffusion, "--autoencoder", textAutoencoder], in: textSmoke.root)
            expected = "is a generation model: evaluate measures super-resolution and inpainting models"
        default:
            result = try ldmTrain(["pipeline", "--config", SmokeTask.inpaint.config, "--checkpoints", dir.appendingPathComponent("c").path,
                                   "--set", "diffusion.model.in_channels=4"], in: textSmoke.root)
            expected = "'diffusion.model.in_channels' must be the latent's 2 channels plus the 3 channels inpainting concatenates: 5, got 4"
        }
        #expect(result.status != 0)
        #expect(result.err.contains(expected) && result.err.split(separator: "\n").count == 1, "\(result.err)")
        if case_ == "in_channels before stage 1" { #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("c").path)) }
    }
}
