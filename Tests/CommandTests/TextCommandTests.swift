import Foundation
import Storage
import Testing
import TestSupport

let textSmokeConfig = packageRoot.appendingPathComponent("Launch/configs/fmnist-text-smoke.yaml").path

/// The text smoke recipe run once, as a user would: the captioned Fashion-MNIST folder
/// from Launch/make-fmnist-text-folder (512 images a split), then `ldm-train pipeline`
/// in a fresh directory. Its autoencoder and latent cache serve the other tests.
let textSmoke: (root: URL, pipeline: (status: Int32, out: String, err: String)) = {
    let root = temporaryDirectory("text-smoke")
    _ = try! python(script: packageRoot.appendingPathComponent("Launch/make-fmnist-text-folder").path,
                    [root.appendingPathComponent("Datasets/fmnist-text-smoke").path, "--limit", "512"])
    return (root, try! ldmTrain(["pipeline", "--config", textSmokeConfig], in: root))
}()

var textAutoencoder: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/autoencoder").path }
var textLatents: String { textSmoke.root.appendingPathComponent("Datasets/fmnist-text-smoke-latents").path }
var textDiffusion: String { textSmoke.root.appendingPathComponent("Checkpoints/fmnist-text-smoke/diffusion").path }

func textJob(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
    let r = try mpirunLocal(ranks, ["ldm-train", "diffusion", "--config", textSmokeConfig, "--latents", textLatents,
                                    "--autoencoder", textAutoencoder, "--run-dir", run] + extra)
    return (r.status, r.out, r.err)
}

func textSample(_ extra: [String], diffusion: String = textDiffusion) throws -> (status: Int32, out: String, err: String) {
    try ldmTrain(["sample", "--diffusion", diffusion, "--autoencoder", textAutoencoder, "--steps", "3", "--count", "2"] + extra)
}

@Suite("Text conditioning: the text smoke pipeline, sampling from prompts, unconditional models", .serialized)
struct TextCommandTests {
    @Test("the text smoke pipeline trains τθ with the UNet and samples the config's prompts; a cut caption is reported once; the checkpoint holds its tokenizer")
    func pipeline() throws {
        let r = textSmoke.pipeline
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("text-conditional ("), "\(r.out)")
        #expect(r.out.components(separatedBy: "are longer than max_seq_len 16 tokens and are cut").count == 2, "\(r.out)")
        let check = try python("""
            import h5py, json; f = h5py.File('\(textDiffusion)/samples.h5'); c = h5py.File('\(textLatents)/index.h5')
            s = h5py.File('\(textDiffusion)/step-00000004/index.h5'); t = json.loads(s.attrs['tokenizer'])
            print(f['images'].shape, list(f['prompts'].asstr()[:]), c['caption'].shape, c['caption'].asstr()[0] != '',
                  t['vocab_size'], t['max_length'], len(t['merges']) > 0, 'params/cond_stage_model/transformer/token_emb/weight' in s)
            """)
        let captions = try LatentCache.captions(textLatents), read = try LatentCache.read(textLatents).captions
        #expect(captions?.count == 512 && captions == read && captions!.contains("a sneaker"))
        #expect(check == "(8, 1, 32, 32) ['a sneaker', 'a sneaker', 'a photo of a white sneaker', 'a photo of a white sneaker', "
                + "'dark coat', 'dark coat', '', ''] (512,) True 300 16 True True", "\(check)")
    }

    @Test("2 ranks: 6 steps straight equal 3 + resume + 3, bitwise (UNet and τθ: params, moments, EMA)")
    func exactResume() throws { try checkExactResume(textJob, holding: "ema/cond_stage_model/transformer/token_emb/weight") }

    /// Adam's eps = 1e-3 and a 10× rate, as in the class-conditional test; the control
    /// changes which captions are dropped to "".
    @Test("the text model (UNet and τθ) ends with the same weights, and draws the same grid (shared out among ranks), at 1 and 2 ranks for the same global batch")
    func worldSizeInvariance() throws {
        var runs: [[String: [Float]]] = [], directories: [String] = []
        for (ranks, batch, extra) in [(1, 8, [String]()), (2, 4, []), (2, 4, ["--set", "diffusion.p_uncond=0.5"])] {
            let run = temporaryRun()
            directories.append(run)
            let r = try textJob(ranks, run: run, ["--batch-size", String(batch), "--set", "diffusion.optimizer.eps=1e-3",
                                                  "--set", "diffusion.optimizer.base_lr=1.5625e-5", "--set", "diffusion.training.image_every=100"] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            runs.append(try checkpointTensors(run + "/step-00000004"))
        }
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        #expect(worst < 1e-5, "2 × 4: \(key) differs by \(worst)")
        let tokenKey = "params/cond_stage_model/transformer/token_emb/weight"
        #expect(runs[0][tokenKey] != nil)
        let (control, _) = worstRelativeDifference(runs[0], runs[2])
        #expect(control > 1e-4, "changing which captions are dropped changed nothing: \(control)")
        // The final grid (4 prompts × 2): rank 1 samples the second half; rows in the wrong order would differ by far more.
        let levels = try python("""
            import numpy as np; from PIL import Image
            a, b = (np.asarray(Image.open(d + '/samples-00000004.png'), dtype=float) for d in ('\(directories[0])', '\(directories[1])'))
            print(a.shape == b.shape, round(float(np.abs(a - b).max()), 1))
            """).split(separator: " ").map(String.init)
        #expect(levels[0] == "True" && Double(levels[1])! <= 2, "\(levels)")
    }

    @Test("sample: one grid row per prompt from --prompt and --prompts-file (CRLF, blank lines skipped); an empty prompt samples unconditionally")
    func prompts() throws {
        let out = temporaryDirectory()
        try "a sneaker\r\n\r\nankle boot\n".write(to: out.appendingPathComponent("prompts.txt"), atomically: true, encoding: .utf8)
        let r = try textSample(["--prompt", "", "--prompts-file", out.appendingPathComponent("prompts.txt").path, "--out", out.appendingPathComponent("grid.png").path,
                                "--images-out", out.appendingPathComponent("s.h5").path, "--latents-out", out.appendingPathComponent("latents").path])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("6 samples of 3 prompt(s)"), "\(r.out)")
        let check = try python("""
            import h5py; from PIL import Image; f = h5py.File('\(out.path)/s.h5'); l = h5py.File('\(out.path)/latents/index.h5')
            print(list(f['prompts'].asstr()[:]), 'labels' in f, list(l['caption'].asstr()[:]) == list(f['prompts'].asstr()[:]),
                  Image.open('\(out.path)/grid.png').size)
            """)
        #expect(check == "['', '', 'a sneaker', 'a sneaker', 'ankle boot', 'ankle boot'] False True (70, 104)", "\(check)")
    }

    @Test("bad input: --class for a text model, --prompt for a class model, a prompts file that is not UTF-8 or holds no prompt, a checkpoint without its tokenizer, a text model on captionless latents, a resume whose tokenizer would differ", arguments: [
        "class for text", "prompt for class", "not UTF-8", "no prompts", "no tokenizer", "no captions", "other tokenizer",
    ])
    func badInput(_ case_: String) throws {
        let dir = temporaryDirectory()
        let result: (status: Int32, out: String, err: String), expected: String
        switch case_ {
        case "class for text":
            result = try textSample(["--class", "3"])
            expected = "is a text-conditional model: it takes --prompt TEXT or --prompts-file F, not --class"
        case "prompt for class":
            let run = dir.appendingPathComponent("class").path
            #expect(try textJob(1, run: run, ["--steps", "1", "--set", "diffusion.conditioning.kind=class"]).status == 0)
            result = try textSample(["--prompt", "a sneaker"], diffusion: run)
            expected = "is a class-conditional model: it takes --class, not --prompt or --prompts-file"
        case "not UTF-8":
            let file = dir.appendingPathComponent("p.txt")
            try Data("a sneaker\nan \u{FF}".utf8.map { $0 == 0xC3 ? 0xFF : $0 }).write(to: file)
            result = try textSample(["--prompts-file", file.path])
            expected = "p.txt line 2: not UTF-8 text"
        case "no prompts":
            let file = dir.appendingPathComponent("p.txt")
            try "\n  \n".write(to: file, atomically: true, encoding: .utf8)
            result = try textSample(["--prompts-file", file.path])
            expected = "p.txt holds no prompts"
        case "no tokenizer":
            let copy = dir.appendingPathComponent("copy").path
            try FileManager.default.copyItem(atPath: textDiffusion + "/step-00000004", toPath: copy)
            _ = try python("import h5py; f = h5py.File('\(copy)/index.h5', 'a'); del f.attrs['tokenizer']")
            result = try textSample(["--prompt", "a sneaker"], diffusion: copy)
            expected = "index.h5 has no tokenizer"
        case "other tokenizer":
            let run = dir.appendingPathComponent("run").path
            #expect(try textJob(1, run: run, ["--steps", "2"]).status == 0)
            _ = try python("import h5py; f = h5py.File('\(run)/step-00000002/index.h5', 'a'); f.attrs['tokenizer_identity'] = '40 merges'")
            result = try ldmTrain(["diffusion", "--config", textSmokeConfig, "--latents", textLatents, "--autoencoder", textAutoencoder,
                                   "--run-dir", run, "--steps", "4"])
            expected = "was trained on the tokenizer identity 40 merges; it is now 41 merges"
        default:
            result = try ldmTrain(["diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder,
                                                           "--run-dir", dir.appendingPathComponent("run").path, "--set", "diffusion.conditioning.kind=text"])
            expected = "every caption is empty"
        }
        #expect(result.status != 0)
        #expect(result.err.contains(expected), "\(result.err)")
        #expect(result.err.split(separator: "\n").filter { !$0.isEmpty }.count == 1, "\(result.err)")
    }

    @Test("an unconditional model has no τθ, trains, and samples one row; it refuses --prompt and --class")
    func unconditional() throws {
        let run = temporaryRun(), out = temporaryDirectory()
        let r = try textJob(1, run: run, ["--steps", "2", "--set", "diffusion.conditioning.kind=none", "--set", "diffusion.training.image_every=2"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("unconditional"))
        #expect(try checkpointTensors(run + "/step-00000002").keys.allSatisfy { !$0.contains("cond_stage_model") })
        #expect(FileManager.default.fileExists(atPath: run + "/samples-00000002.png"))
        let s = try textSample(["--images-out", out.appendingPathComponent("u.h5").path, "--out", out.appendingPathComponent("u.png").path], diffusion: run)
        #expect(s.status == 0, "\(s.err)")
        #expect(try python("import h5py; f = h5py.File('\(out.path)/u.h5'); print(f['images'].shape, sorted(f.keys()))") == "(2, 1, 32, 32) ['images']")
        for extra in [["--prompt", "a sneaker"], ["--class", "1"]] {
            let bad = try textSample(extra, diffusion: run)
            #expect(bad.status != 0 && bad.err.contains("is an unconditional model"), "\(bad.err)")
        }
    }
}
