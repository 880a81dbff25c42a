import Foundation
import NN
import Storage
import TensorEngine
import Testing
import TestSupport
import Training

let versatileSmokeConfig = packageRoot.appendingPathComponent("Launch/configs/fmnist-versatile-smoke.yaml").path

/// The multi-flow smoke recipe run as a user would after the text smoke recipe: it
/// shares its stage 1 and trains the context encoders, the text VAE and the diffuser.
let versatileSmoke: (status: Int32, out: String, err: String) = {
    _ = textSmoke
    return try! ldmTrain(["pipeline", "--config", versatileSmokeConfig], in: textSmoke.root)
}()

var contextEncodersRun: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/context-encoders").path }
var versatileRun: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/diffusion-versatile").path }
var textVAERun: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/text-autoencoder").path }
var textLatentCache: String { textSmoke.root.appendingPathComponent("Datasets/fmnist-text-smoke-text-latents").path }

func versatileJob(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
    _ = versatileSmoke
    let r = try mpirunLocal(ranks, ["ldm-train", "diffusion", "--config", versatileSmokeConfig, "--latents", textLatents, "--autoencoder", textAutoencoder,
                                    "--context-encoders", contextEncodersRun, "--text-autoencoder", textVAERun, "--run-dir", run] + extra,
                            directory: textSmoke.root)
    return (r.status, r.out, r.err)
}

func versatileSample(_ extra: [String], diffusion: String? = nil) throws -> (status: Int32, out: String, err: String) {
    _ = versatileSmoke
    return try ldmTrain(["sample", "--diffusion", diffusion ?? versatileRun, "--autoencoder", textAutoencoder, "--context-encoders", contextEncodersRun,
                         "--text-autoencoder", textVAERun, "--steps", "3", "--count", "2"] + extra, in: textSmoke.root)
}

@Suite("Versatile Diffusion: context encoders and the multi-flow diffuser, trained and sampled", .serialized)
struct VersatileCommandTests {
    @Test("the smoke pipeline trains the context encoders (retrieval reported) and the text VAE (reconstruction reported), encodes the captions, then one diffuser for four flows, with a grid or captions per flow and the image flows sampled")
    func pipeline() throws {
        let r = versatileSmoke
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("== autoencoder: complete at step 4") && r.out.contains("retrieval on 128 test pairs"), "\(r.out)")
        #expect(r.out.contains("reconstruction of 64 test captions from their posterior means: token accuracy")
                && r.out.contains("encode-text: 512 text latents of 8"), "\(r.out)")
        #expect(r.out.contains("flows text→image ×1 (weight 1.0), image→image ×1 (weight 1.0), image→text ×1 (weight 1.0), text→text ×1 (weight 1.0)"), "\(r.out)")
        #expect(r.out.contains("image→text on 32 test images: names the class") && r.out.contains("text→text on their captions: changed"), "\(r.out)")
        for file in ["samples-text-00000004.png", "samples-image-00000004.png", "samples.png", "variations.png", "samples-image_to_text-00000004.jsonl",
                     "samples-text_to_text-00000004.jsonl"] {
            #expect(FileManager.default.fileExists(atPath: "\(versatileRun)/\(file)"), "\(file)")
        }
        let text = try python("""
            import h5py, json
            c = h5py.File('\(textLatentCache)/index.h5'); d = json.load(open('\(versatileRun)/complete')); v = json.load(open('\(textVAERun)/complete'))
            lines = [json.loads(l) for l in open('\(versatileRun)/samples-image_to_text-00000004.jsonl')]
            k = h5py.File('\(versatileRun)/step-00000004/index.h5')
            print(c['mean'].shape, c['logvar'].shape, c.attrs['autoencoder'].startswith('step-00000006/'), list(c['source_index'][:3]), c['caption'].asstr()[0] != '',
                  sorted(x for x in d if x.startswith(('i2t', 't2t'))), sorted(x for x in v if x.startswith('test_')), len(lines), lines[0]['flow'],
                  'params/diffuser/text/input_blocks/0/0/weight' in k, k.attrs['text_latent_dim'])
            """)
        #expect(text == "(512, 8, 1, 1) (512, 8, 1, 1) True [0, 1, 2] True ['i2t_baseline_class_accuracy', 'i2t_baseline_word_f1', 'i2t_class_accuracy', "
                + "'i2t_word_f1', 't2t_changed', 't2t_class_kept', 't2t_word_f1'] ['test_exact_recovery', 'test_token_accuracy'] 8 image_to_text True 8", "\(text)")
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

    @Test("multi-flow training, 2 ranks: 6 steps straight equal 3 + resume + 3, bitwise (both context-layer sets, the text data layers, moments, EMA)")
    func exactResume() throws { try checkExactResume(versatileJob, holding: "ema/diffuser/text/input_blocks/0/0/weight") }

    @Test("the text VAE ends with the same weights at 1 and 2 ranks for the same global batch, and resumes bitwise")
    func textVAE() throws {
        _ = versatileSmoke
        func job(_ ranks: Int, _ run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
            let r = try mpirunLocal(ranks, ["ldm-train", "text-autoencoder", "--config", versatileSmokeConfig, "--run-dir", run,
                                            "--set", "text_autoencoder.optimizer.eps=1e-3", "--set", "text_autoencoder.optimizer.base_lr=1e-4"] + extra,
                                    directory: textSmoke.root)
            return (r.status, r.out, r.err)
        }
        var runs: [[String: [Float]]] = []
        for (ranks, batch, extra) in [(1, 16, [String]()), (2, 8, []), (2, 8, ["--set", "text_autoencoder.kl_weight=0.5"])] {
            let run = temporaryRun()
            let r = try job(ranks, run, ["--batch-size", String(batch)] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            runs.append(try checkpointTensors(run + "/step-00000006"))
        }
        #expect(runs[0]["params/decoder/lm_head/weight"] != nil && runs[0]["params/encoder/to_moments/weight"] != nil)
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        #expect(worst < 1e-5, "2 × 8: \(key) differs by \(worst)")
        let (control, _) = worstRelativeDifference(runs[0], runs[2])
        #expect(control > 1e-4, "changing the KL weight changed nothing: \(control)")
        let straight = temporaryRun(), resumed = temporaryRun()
        #expect(try job(2, straight, ["--batch-size", "8", "--steps", "6"]).status == 0)
        #expect(try job(2, resumed, ["--batch-size", "8", "--steps", "3"]).status == 0)
        let rest = try job(2, resumed, ["--batch-size", "8", "--steps", "6"])
        #expect(rest.status == 0 && rest.out.contains("(step 3)"), "\(rest.err)")
        let a = try checkpointTensors(straight + "/step-00000006"), b = try checkpointTensors(resumed + "/step-00000006")
        #expect(a.keys.contains("optim/v/decoder/lm_head/weight") && a.keys.filter { a[$0] != b[$0] }.isEmpty)
    }

    @Test("sample: --caption-image (image→text) and --text-variation (text→text) print captions and write them as JSON lines; the same seed gives the same captions")
    func textSampling() throws {
        let out = temporaryDirectory()
        try writeImage(out.appendingPathComponent("in.png").path, side: 32)
        func run(_ name: String, _ extra: [String]) throws -> [[String: Any]] {
            let file = out.appendingPathComponent("\(name).jsonl").path
            let r = try versatileSample(extra + ["--captions-out", file])
            #expect(r.status == 0 && r.out.contains(" → "), "\(name): \(r.err)")
            return try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").map {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            }
        }
        let captions = try run("i2t", ["--caption-image", out.appendingPathComponent("in.png").path])
        #expect(captions.count == 2 && captions.allSatisfy { $0["flow"] as? String == "image_to_text" && $0["caption"] is String && $0["input_index"] as? Int == 0 })
        let variations = try run("t2t", ["--text-variation", "a white sneaker", "--text-variation", "dark coat", "--seed", "3"])
        #expect(variations.count == 4 && variations.map { $0["input"] as? String } == ["a white sneaker", "a white sneaker", "dark coat", "dark coat"])
        let again = try run("t2t-again", ["--text-variation", "a white sneaker", "--text-variation", "dark coat", "--seed", "3"])
        #expect(again.map { $0["caption"] as? String } == variations.map { $0["caption"] as? String })
    }

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

    /// A run of 12 steps of the two image flows at a high rate, so that the context layers
    /// (zero-initialised projections) have moved and the two contexts give different images.
    @Test("sample: --prompt (text flow, with its latents), --image-variation (image flow), and dual guidance whose --mix 0 and 1 reproduce the two flows")
    func sampling() throws {
        let out = temporaryDirectory(), trained = out.appendingPathComponent("run").path
        let t = try versatileJob(1, run: trained, ["--steps", "12", "--set", "diffusion.optimizer.base_lr=2e-4", "--set", "diffusion.training.image_every=100",
                                                   "--set", "diffusion.flows=[{context: text}, {context: image}]"])
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
        "empty caption", "no text flows", "other text VAE",
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
            expected = "is a single-flow model: --image-variation, --image, --mix, --caption-image and --text-variation are for a multi-flow"
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
        case "empty caption":
            result = try versatileSample(["--text-variation", "a bag", "--text-variation", " "])
            expected = "--text-variation 2 is empty: give a caption to vary (the empty caption is the null context)"
        case "no text flows":
            let run = dir.appendingPathComponent("image-flows").path
            #expect(try versatileJob(1, run: run, ["--steps", "1", "--set", "diffusion.flows=[{context: text}, {context: image}]"]).status == 0)
            try writeImage(dir.appendingPathComponent("in.png").path, side: 32)
            result = try versatileSample(["--caption-image", dir.appendingPathComponent("in.png").path], diffusion: run)
            expected = "has no image→text flow (it trained text→image, image→image): --caption-image needs one"
        case "other text VAE":
            let other = dir.appendingPathComponent("vae").path
            #expect(try ldmTrain(["text-autoencoder", "--config", versatileSmokeConfig, "--run-dir", other, "--steps", "2"], in: textSmoke.root).status == 0)
            result = try ldmTrain(["sample", "--diffusion", versatileRun, "--autoencoder", textAutoencoder, "--context-encoders", contextEncodersRun,
                                   "--text-autoencoder", other, "--text-variation", "a bag"], in: textSmoke.root)
            expected = "was trained on text latents of step-00000006/"
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
            for type in Modality.allCases {
                #expect(s.updates(through: step) { $0.context == type } == (0...step).filter { s.flow(at: $0).context == type }.count)
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
