import Foundation
import NN
import Storage
import TensorEngine
import Testing
import TestSupport
import Training

let versatileSmokeConfig = packageRoot.appendingPathComponent("Launch/configs/fmnist-versatile-smoke.yaml").path

/// The multi-flow smoke recipe run as a user would after the text smoke recipe: it
/// shares its stage 1 and trains the context encoders and the diffuser.
let versatileSmoke: (status: Int32, out: String, err: String) = {
    _ = textSmoke
    return try! ldmTrain(["pipeline", "--config", versatileSmokeConfig], in: textSmoke.root)
}()

var contextEncodersRun: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/context-encoders").path }
var versatileRun: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/diffusion-versatile").path }

func versatileJob(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
    _ = versatileSmoke
    let r = try mpirunLocal(ranks, ["ldm-train", "diffusion", "--config", versatileSmokeConfig, "--latents", textLatents, "--autoencoder", textAutoencoder,
                                    "--context-encoders", contextEncodersRun, "--run-dir", run] + extra, directory: textSmoke.root)
    return (r.status, r.out, r.err)
}

func versatileSample(_ extra: [String], diffusion: String? = nil) throws -> (status: Int32, out: String, err: String) {
    _ = versatileSmoke
    return try ldmTrain(["sample", "--diffusion", diffusion ?? versatileRun, "--autoencoder", textAutoencoder, "--context-encoders", contextEncodersRun,
                         "--steps", "3", "--count", "2"] + extra, in: textSmoke.root)
}

@Suite("Versatile Diffusion: context encoders and the multi-flow diffuser, trained and sampled", .serialized)
struct VersatileCommandTests {
    @Test("the smoke pipeline trains the context encoders (retrieval reported), then one diffuser for text→image and image→image, with a grid per flow and both flows sampled")
    func pipeline() throws {
        let r = versatileSmoke
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("== autoencoder: complete at step 4") && r.out.contains("retrieval on 128 test pairs"), "\(r.out)")
        #expect(r.out.contains("flows text→image ×1 (weight 1.0), image→image ×1 (weight 1.0)"), "\(r.out)")
        for file in ["samples-text-00000004.png", "samples-image-00000004.png", "samples.png", "variations.png"] {
            #expect(FileManager.default.fileExists(atPath: "\(versatileRun)/\(file)"), "\(file)")
        }
        let check = try python("""
            import h5py, json
            c = json.load(open('\(contextEncodersRun)/complete')); s = h5py.File('\(versatileRun)/samples.h5'); v = h5py.File('\(versatileRun)/variations.h5')
            k = h5py.File('\(versatileRun)/step-00000004/index.h5')
            print(sorted(x for x in c if x.startswith('retrieval')), s['images'].shape, list(s['prompts'].asstr()[:2]), s.attrs['flow'],
                  v['images'].shape, v['inputs'].shape, list(v['labels'][:3]), v.attrs['flow'], float(v.attrs['mean_abs_distance_to_input']) > 0,
                  'params/diffuser/text/middle_block/1/transformer_blocks/0/attn2/to_k/weight' in k,
                  'params/diffuser/image/middle_block/1/transformer_blocks/0/attn2/to_k/weight' in k, k.attrs['model'])
            """)
        #expect(check == "['retrieval_i2t_top1', 'retrieval_i2t_top5', 'retrieval_t2i_top1', 'retrieval_t2i_top5'] (8, 1, 32, 32) "
                + "['a sneaker', 'a sneaker'] text (16, 1, 32, 32) (8, 1, 32, 32) [9, 9, 2] image True True True versatile-diffusion", "\(check)")
    }

    /// Adam's eps = 1e-3 as in the other world-size tests; the control changes the
    /// images (no flips), so the same check would see a real difference.
    @Test("the context encoders end with the same weights at 1 and 2 ranks for the same global batch (negatives all-gathered)")
    func contextEncodersWorldSize() throws {
        _ = versatileSmoke
        var runs: [[String: [Float]]] = []
        for (ranks, batch, extra) in [(1, 16, [String]()), (2, 8, []), (2, 8, ["--set", "data.flip=false"])] {
            let run = temporaryRun()
            let r = try mpirunLocal(ranks, ["ldm-train", "context-encoders", "--config", versatileSmokeConfig, "--run-dir", run, "--batch-size", String(batch),
                                            "--set", "context_encoders.optimizer.eps=1e-3", "--set", "context_encoders.optimizer.base_lr=2e-5"] + extra,
                                    directory: textSmoke.root)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            runs.append(try checkpointTensors(run + "/step-00000006"))
        }
        #expect(runs[0]["params/logit_scale"] != nil && runs[0]["params/vision_model/stem/weight"] != nil)
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        #expect(worst < 1e-5, "2 × 8: \(key) differs by \(worst)")
        let (control, _) = worstRelativeDifference(runs[0], runs[2])
        #expect(control > 1e-4, "changing the images changed nothing: \(control)")
    }

    @Test("multi-flow training, 2 ranks: 6 steps straight equal 3 + resume + 3, bitwise (both context-layer sets, moments, EMA)")
    func exactResume() throws { try checkExactResume(versatileJob, holding: "ema/diffuser/text/middle_block/1/proj_in/weight") }

    @Test("multi-flow training ends with the same weights at 1 and 2 ranks for the same global batch; a flow's steps leave the other context set untouched")
    func worldSizeInvariance() throws {
        var runs: [[String: [Float]]] = []
        for (ranks, batch, extra) in [(1, 8, [String]()), (2, 4, []), (2, 4, ["--set", "diffusion.p_uncond=0.5"])] {
            let run = temporaryRun()
            let r = try versatileJob(ranks, run: run, ["--batch-size", String(batch), "--set", "diffusion.optimizer.eps=1e-3",
                                                       "--set", "diffusion.optimizer.base_lr=1.5625e-5", "--set", "diffusion.training.image_every=100"] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            runs.append(try checkpointTensors(run + "/step-00000004"))
        }
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        #expect(worst < 1e-5, "2 × 4: \(key) differs by \(worst)")
        let (control, _) = worstRelativeDifference(runs[0], runs[2])
        #expect(control > 1e-4, "changing which contexts are dropped changed nothing: \(control)")
        // Two text steps (the zero-initialised output conv passes no gradient back in the first): the image
        // context layers keep zero moments, the text ones move.
        let run = temporaryRun()
        #expect(try versatileJob(1, run: run, ["--steps", "2", "--set", "diffusion.training.image_every=100",
                                               "--set", "diffusion.flows=[{context: text, steps: 2}, {context: image}]"]).status == 0)
        let one = try checkpointTensors(run + "/step-00000002")
        #expect(one["optim/m/diffuser/image/middle_block/1/proj_out/weight"]?.allSatisfy { $0 == 0 } == true)
        #expect(one["optim/m/diffuser/text/middle_block/1/proj_out/weight"]?.contains { $0 != 0 } == true)
    }

    /// A run of 12 steps at a high rate, so that the context layers (zero-initialised
    /// projections) have moved and the two contexts give different images.
    @Test("sample: --prompt (text flow, with its latents), --image-variation (image flow), and dual guidance whose --mix 0 and 1 reproduce the two flows")
    func sampling() throws {
        let out = temporaryDirectory(), trained = out.appendingPathComponent("run").path
        let t = try versatileJob(1, run: trained, ["--steps", "12", "--set", "diffusion.optimizer.base_lr=2e-4", "--set", "diffusion.training.image_every=100"])
        #expect(t.status == 0, "\(t.err)")
        try writeImage(out.appendingPathComponent("in.png").path, side: 32)
        func run(_ name: String, _ extra: [String]) throws -> [Float] {
            let r = try versatileSample(extra + ["--images-out", out.appendingPathComponent("\(name).h5").path, "--out", out.appendingPathComponent("\(name).png").path],
                                        diffusion: trained)
            #expect(r.status == 0, "\(name): \(r.err)")
            let f = try HDF5File.open(out.appendingPathComponent("\(name).h5").path)
            return try f.read("images", as: Float.self).values
        }
        let text = try run("text", ["--prompt", "a sneaker", "--latents-out", out.appendingPathComponent("latents").path])
        #expect(try LatentCache.captions(out.appendingPathComponent("latents").path) == ["a sneaker", "a sneaker"])
        let image = try run("image", ["--image-variation", out.appendingPathComponent("in.png").path])
        let mix0 = try run("mix0", ["--prompt", "a sneaker", "--image", out.appendingPathComponent("in.png").path, "--mix", "0"])
        let mix1 = try run("mix1", ["--prompt", "a sneaker", "--image", out.appendingPathComponent("in.png").path, "--mix", "1"])
        let half = try run("half", ["--prompt", "a sneaker", "--image", out.appendingPathComponent("in.png").path, "--mix", "0.3"])
        func distance(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max()! }
        #expect(text.count == 2 * 32 * 32 && distance(text, mix0) < 1e-3 && distance(image, mix1) < 1e-3)
        #expect(distance(text, image) > 1e-2 && distance(half, text) > 1e-3 && distance(half, image) > 1e-3)
        let check = try python("""
            import h5py; from PIL import Image; f = h5py.File('\(out.path)/half.h5')
            print(f.attrs['flow'], f.attrs['mix'], list(f['prompts'].asstr()[:]), f['inputs'].shape, Image.open('\(out.path)/image.png').size)
            """)
        #expect(check == "dual 0.3 ['a sneaker', 'a sneaker'] (1, 1, 32, 32) (104, 36)", "\(check)")
    }

    @Test("bad input gives one clear error", arguments: [
        "wrong image size", "missing flow", "single-flow model", "unknown flow key", "mix out of range", "image without prompt", "other encoders",
    ])
    func badInput(_ case_: String) throws {
        let dir = temporaryDirectory()
        let result: (status: Int32, out: String, err: String), expected: String
        switch case_ {
        case "wrong image size":
            try writeImage(dir.appendingPathComponent("small.png").path, side: 28)
            result = try versatileSample(["--image-variation", dir.appendingPathComponent("small.png").path])
            expected = "small.png: 28×28 pixels; the model's --image-variation image (the image encoder's input) is 32×32"
        case "missing flow":
            let run = dir.appendingPathComponent("text-only").path
            #expect(try versatileJob(1, run: run, ["--steps", "1", "--set", "diffusion.flows=[{context: text}]"]).status == 0)
            try writeImage(dir.appendingPathComponent("in.png").path, side: 32)
            result = try versatileSample(["--image-variation", dir.appendingPathComponent("in.png").path], diffusion: run)
            expected = "has no image→image flow (it trained text→image): --image-variation needs one"
        case "single-flow model":
            try writeImage(dir.appendingPathComponent("in.png").path, side: 32)
            result = try textSample(["--image-variation", dir.appendingPathComponent("in.png").path])
            expected = "is a single-flow model: --image-variation, --image and --mix are for a multi-flow"
        case "unknown flow key":
            result = try ldmTrain(["diffusion", "--config", versatileSmokeConfig, "--set", "diffusion.flows=[{context: text, wieght: 2}]"])
            expected = "unknown key 'diffusion.flows.0.wieght' (did you mean 'diffusion.flows.0.weight'?)"
        case "mix out of range":
            try writeImage(dir.appendingPathComponent("in.png").path, side: 32)
            result = try versatileSample(["--prompt", "a bag", "--image", dir.appendingPathComponent("in.png").path, "--mix", "1.5"])
            expected = "dual guidance needs --mix in [0, 1]"
        case "image without prompt":
            try writeImage(dir.appendingPathComponent("in.png").path, side: 32)
            result = try versatileSample(["--image", dir.appendingPathComponent("in.png").path, "--mix", "0.5"])
            expected = "dual guidance takes one --image for each --prompt (0 prompt(s), 1 image(s))"
        default:
            let other = dir.appendingPathComponent("ce").path
            #expect(try ldmTrain(["context-encoders", "--config", versatileSmokeConfig, "--run-dir", other, "--steps", "2"], in: textSmoke.root).status == 0)
            result = try ldmTrain(["sample", "--diffusion", versatileRun, "--autoencoder", textAutoencoder, "--context-encoders", other, "--prompt", "a bag"],
                                  in: textSmoke.root)
            expected = "was trained with context encoders step-00000006/"
        }
        #expect(result.status != 0)
        #expect(result.err.contains(expected), "\(result.err)")
        #expect(result.err.split(separator: "\n").filter { !$0.isEmpty }.count == 1, "\(result.err)")
    }
}

@Suite("Flow schedule and retrieval metrics")
struct FlowScheduleTests {
    @Test("flows take turns by their steps; each context's update count is the number of its steps so far")
    func schedule() {
        var text = FlowConfig(context: .text), image = FlowConfig(context: .image)
        (text.steps, image.steps) = (2, 1)
        let s = FlowSchedule([text, image])
        #expect((0..<7).map { s.flow(at: $0).context } == [.text, .text, .image, .text, .text, .image, .text])
        for step in 0..<20 {
            for type in ContextType.allCases {
                #expect(s.updates(of: type, through: step) == (0...step).filter { s.flow(at: $0).context == type }.count)
            }
        }
    }

    @Test("retrieval: perfect embeddings score 100%; a caption shared by images is one candidate; chance follows the caption frequencies")
    func retrieval() {
        let e = Tensor(shape: [4, 3], scalars: [1, 0, 0, 0, 1, 0, 0, 0, 1, 0.6, 0.8, 0])
        let m = RetrievalMetrics(images: e, texts: e, captions: ["a", "b", "c", "d"], labels: [0, 1, 2, 3])
        #expect(m.values["retrieval_i2t_top1"] == 1 && m.values["retrieval_t2i_top1"] == 1 && m.values["chance_i2t_top1"] == 0.25)
        let shared = RetrievalMetrics(images: e, texts: e, captions: ["a", "a", "b", "c"], labels: [0, 0, 1, 2])
        // candidates a, b, c; image 1 (caption a) is nearest to caption row 1, whose text is "a" but which is not a candidate: row 0 stands for "a"
        #expect(shared.values["chance_i2t_top1"] == 1.0 / 3 && abs(shared.values["chance_t2i_top1"]! - (0.5 + 0.25 + 0.25) / 3) < 1e-12)
        #expect(shared.values["class_i2t_top1"] != nil && shared.values["chance_class_i2t_top1"] == 1.0 / 3)
    }
}
