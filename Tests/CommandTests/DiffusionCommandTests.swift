import Foundation
import NN
import TensorEngine
import Training
import Storage
import Testing
import TestSupport

/// A smoke autoencoder and its latent cache (512 images), made once per test process.
let smokeStage1: (autoencoder: String, latents: String) = {
    let ae = temporaryRun(), latents = temporaryRun()
    let train = try! ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", ae, "--steps", "2",
                                                         "--set", "autoencoder.training.eval_images=20"])
    precondition(train.status == 0, "smoke autoencoder failed: \(train.err)")
    let encode = try! ldmTrain(["encode", "--autoencoder", ae, "--data", preparedDataset, "--out", latents, "--count", "512"])
    precondition(encode.status == 0, "smoke encode failed: \(encode.err)")
    return (ae, latents)
}()

func diffusionJob(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
    let r = try mpirunLocal(ranks, ["ldm-train", "diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder,
                                                                         "--run-dir", run] + extra)
    return (r.status, r.out, r.err)
}

/// Trains `job` 6 steps straight and 3 + resume + 3 on 2 ranks, and expects the two
/// step-6 checkpoints (holding `key`) to be bitwise equal.
func checkExactResume(_ job: (Int, String, [String]) throws -> (status: Int32, out: String, err: String), holding key: String) throws {
    let straight = temporaryRun(), resumed = temporaryRun()
    let args = ["--batch-size", "4", "--checkpoint-every", "3", "--set", "diffusion.training.image_every=100"]
    #expect(try job(2, straight, args + ["--steps", "6"]).status == 0)
    #expect(try job(2, resumed, args + ["--steps", "3"]).status == 0)
    let rest = try job(2, resumed, args + ["--steps", "6"])
    #expect(rest.status == 0 && rest.out.contains("(step 3)"), "\(rest.err)")
    let a = try checkpointTensors(straight + "/step-00000006"), b = try checkpointTensors(resumed + "/step-00000006")
    #expect(a.keys.contains(key))
    #expect(!a.isEmpty && a.keys.filter { a[$0] != b[$0] }.isEmpty)
}

@Suite("ldm-train diffusion and sample", .serialized)
struct DiffusionCommandTests {
    @Test("2 ranks: 6 steps straight equal 3 + resume + 3, bitwise (params, moments, EMA)")
    func exactResume() throws { try checkExactResume(diffusionJob, holding: "ema/model/diffusion_model/out/2/weight") }

    /// As for the autoencoder (see DistributedTests): Adam's eps = 1e-3 keeps float
    /// summation noise on zero-gradient parameters from being amplified; a 10× learning
    /// rate makes the four steps move the weights enough that the control (which
    /// samples drop their class) shows far above the tolerance.
    @Test("the UNet ends with the same weights at 1, 2 and 4 ranks for the same global batch")
    func worldSizeInvariance() throws {
        var runs: [[String: [Float]]] = []
        for (ranks, batch, extra) in [(1, 8, [String]()), (2, 4, []), (4, 2, []), (2, 4, ["--set", "diffusion.p_uncond=0.5"])] {
            let run = temporaryRun()
            let r = try diffusionJob(ranks, run: run, ["--batch-size", String(batch), "--set", "diffusion.optimizer.eps=1e-3",
                                                      "--set", "diffusion.optimizer.base_lr=1.5625e-5",
                                                      "--set", "diffusion.training.image_every=100"] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            runs.append(try checkpointTensors(run + "/step-00000004"))
        }
        for (i, label) in [(1, "2 × 4"), (2, "4 × 2")] {
            let (worst, key) = worstRelativeDifference(runs[0], runs[i])
            #expect(worst < 1e-5, "\(label): \(key) differs by \(worst)")
        }
        let (control, _) = worstRelativeDifference(runs[0], runs[3])
        #expect(control > 1e-4, "changing which samples drop their class changed nothing: \(control)")
    }

    @Test("sample writes a grid, images [N,1,32,32] with labels, and latents that h5py reads; EMA and trained weights differ")
    func sample() throws {
        let run = temporaryRun()
        #expect(try diffusionJob(1, run: run, ["--set", "diffusion.training.image_every=100"]).status == 0)
        let out = temporaryRun()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let r = try ldmTrain(["sample", "--diffusion", run, "--autoencoder", smokeStage1.autoencoder, "--count", "2", "--steps", "4",
                              "--out", out + "/grid.png", "--images-out", out + "/images.h5", "--latents-out", out + "/latents"])
        #expect(r.status == 0, "\(r.err)")
        #expect(FileManager.default.fileExists(atPath: out + "/grid.png"))
        let check = try python("""
            import h5py, numpy as np; f = h5py.File('\(out)/images.h5'); x, y = f['images'][...], f['labels'][...]
            l = h5py.File('\(out)/latents/index.h5')
            print(x.shape, x.dtype, float(x.min()) >= -1, float(x.max()) <= 1, list(y), y.dtype, l['mean'].shape, l.attrs['split'])
            """)
        #expect(check == "(20, 1, 32, 32) float32 True True [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9] int64 (20, 2, 16, 16) sampled")
        let one = try ldmTrain(["sample", "--diffusion", run, "--autoencoder", smokeStage1.autoencoder, "--class", "3", "--count", "2",
                                "--steps", "4", "--out", out + "/three.png", "--images-out", out + "/three.h5"])
        #expect(one.status == 0, "\(one.err)")
        #expect(try python("import h5py; print(list(h5py.File('\(out)/three.h5')['labels'][...]))") == "[3, 3]")
    }

    /// A width-128 autoencoder's arena, Adam moments and gradients (~100 MiB a rank)
    /// stayed alive through stage 2 while its gradient thread held them (741 against
    /// 638 MiB when this test was written); now the pipeline's diffusion stage peaks
    /// within a few percent of the same stage run on its own (660 MiB).
    @Test("nothing outlives its stage: the pipeline's diffusion stage peaks at the RSS of a standalone diffusion run on the same latents (2 ranks)")
    func stagePeakResident() throws {
        let root = temporaryRun()
        func peak(_ run: String) throws -> Double {
            let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            let last = try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as! [String: Any]
            return last["peak_rss_mib"] as! Double
        }
        let pipeline = try mpirunLocal(2, ["ldm-train", "pipeline", "--config", "Launch/configs/fmnist-smoke.yaml", "--checkpoints", root,
                                           "--set", "data.path=\(preparedDataset)", "--set", "diffusion.latents=\(root)/latents",
                                           "--set", "autoencoder.model.ch=128", "--set", "autoencoder.training.batch_size=8"])
        #expect(pipeline.status == 0, "\(pipeline.err)")
        let alone = try mpirunLocal(2, ["ldm-train", "diffusion"] + smoke + ["--latents", root + "/latents", "--autoencoder", root + "/autoencoder",
                                                                           "--run-dir", root + "/alone"])
        #expect(alone.status == 0, "\(alone.err)")
        let (inPipeline, standalone) = (try peak(root + "/diffusion"), try peak(root + "/alone"))
        #expect(inPipeline < 1.08 * standalone && standalone > 100, "diffusion stage peak \(inPipeline) MiB in the pipeline, \(standalone) MiB alone")
    }

    /// 10 DDPM samples of 1000 steps take each rank several seconds for its half; drawn by rank 0
    /// alone (~16 s), the other rank would wait past the 8 s deadline in the next collective.
    @Test("a DDPM grid on 2 ranks is shared out: no rank waits in a collective past an 8 s watchdog")
    func ddpmGridNoFalseAlarm() throws {
        let r = try diffusionJob(2, run: temporaryRun(), ["--steps", "2", "--batch-size", "4", "--set", "diffusion.sampling.sampler=ddpm",
                                                         "--set", "diffusion.sampling.steps=1000", "--set", "diffusion.sampling.per_class=1",
                                                         "--set", "distributed.watchdog_seconds=8"])
        #expect(r.status == 0 && !r.err.contains("has not finished"), "\(r.err)")
    }

    @Test("bad input: another autoencoder's cache, wrong latent shapes, class out of range, guidance < 0, steps > T", arguments: [
        "another autoencoder", "wrong shapes", "class", "guidance", "steps",
    ])
    func badInput(_ case_: String) throws {
        let run = temporaryRun()
        var result: (status: Int32, out: String, err: String)
        switch case_ {
        case "another autoencoder":
            let other = temporaryRun()
            #expect(try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", other, "--steps", "2", "--seed", "7",
                                                           "--set", "autoencoder.training.eval_images=20"]).status == 0)
            result = try ldmTrain(["diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", other, "--run-dir", run])
            #expect(result.err.contains("was encoded by autoencoder step-00000002/"), "\(result.err)")
        case "wrong shapes":
            result = try ldmTrain(["diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder,
                                                           "--run-dir", run, "--set", "diffusion.model.in_channels=4", "--set", "diffusion.model.out_channels=4"])
            #expect(result.err.contains("latents are 2×16×16, the UNet denoises 4×16×16"), "\(result.err)")
        default:
            #expect(try ldmTrain(["diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder,
                                                          "--run-dir", run, "--steps", "1"]).status == 0)
            let option = ["class": ["--class", "12"], "guidance": ["--guidance=-1"], "steps": ["--steps", "1001"]][case_]!
            result = try ldmTrain(["sample", "--diffusion", run, "--autoencoder", smokeStage1.autoencoder, "--out", run + "/x.png"] + option)
            let expected = ["class": "--class 12 is outside 0..<10", "guidance": "--guidance must be ≥ 0", "steps": "--steps must be in 1...1000"][case_]!
            #expect(result.err.contains(expected), "\(result.err)")
        }
        #expect(result.status != 0)
        #expect(result.err.split(separator: "\n").filter { !$0.isEmpty }.count == 1, "\(result.err)")
    }

    @Test("the pipeline runs every stage on 2 ranks, then skips them all on a second run; after the autoencoder trains further it encodes again and refuses the stale diffusion run")
    func pipeline() throws {
        let root = temporaryRun()
        let args = ["ldm-train", "pipeline", "--config", "Launch/configs/fmnist-smoke.yaml", "--checkpoints", root,
                    "--set", "data.path=\(preparedDataset)", "--set", "diffusion.latents=\(root)/latents"]
        let first = try mpirunLocal(2, args)
        #expect(first.status == 0, "\(first.err)")
        for stage in ["== autoencoder →", "== encode →", "== diffusion →", "== sample →", "== done"] { #expect(first.out.contains(stage), "\(stage)") }
        #expect(FileManager.default.fileExists(atPath: root + "/diffusion/samples.png"))
        let second = try mpirunLocal(2, args)
        #expect(second.status == 0, "\(second.err)")
        for stage in ["autoencoder: complete", "encode: \(root)/latents holds", "diffusion: complete"] { #expect(second.out.contains(stage), "\(stage)") }
        #expect(!second.out.contains("step 2/4"))
        // The autoencoder trained further: the cache is encoded again, and the diffusion run, trained on the old latents, is not kept.
        let diffusionFiles = try FileManager.default.contentsOfDirectory(atPath: root + "/diffusion").sorted()
        let third = try mpirunLocal(2, args + ["--set", "autoencoder.training.steps=6"])
        #expect(third.status != 0 && third.out.contains("step 6/6") && third.out.contains("== encode →"), "\(third.out)")
        #expect(third.err.contains("\(root)/diffusion was trained on latents of autoencoder step-00000004/") && third.err.contains("is now step-00000006/"),
                "\(third.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/diffusion").sorted() == diffusionFiles)
    }
}

@Suite("Sampling in chunks")
struct SamplingChunkTests {
    @Test("more samples than a chunk are drawn chunk by chunk, each sample as if drawn on its own index")
    func chunks() throws {
        var stage = Config().diffusion
        (stage.model.imageSize, stage.model.inChannels, stage.model.outChannels, stage.model.modelChannels) = (4, 2, 2, 32)
        (stage.model.channelMult, stage.model.numResBlocks, stage.model.numHeadChannels, stage.model.contextDim) = ([1], 1, 16, 8)
        stage.model.attentionResolutions = [1]
        stage.sampling.steps = 3
        let model = LatentDiffusionModel(stage.model, seed: 1)
        for p in model.namedParameters() where p.key.hasSuffix("out.2.weight") || p.key.hasSuffix("out_layers.3.weight") {
            p.tensor.pointer.update(from: randn(p.tensor.shape, 5, scale: 0.1).pointer, count: p.tensor.count)   // zero-initialised
        }
        let sampler = try LatentSampler(model: model, stage: stage, sampling: stage.sampling)
        let n = LatentSampler.chunk + 7
        let conditions: [Condition] = (0..<n).map { $0 % 3 == 0 ? .none : .label($0 % 10) }
        let all = sampler.sample(conditions: conditions)
        let tail = sampler.sample(conditions: Array(conditions[(n - 9)...]), firstIndex: n - 9)   // across the chunk boundary
        #expect(all.shape == [n, 4, 4, 2])
        // Batch size may change a kernel's rounding, not which noise a sample gets: a wrong index would differ by O(1).
        #expect(isClose(all.slice(axis: 0, (n - 9)..<n), tail.scalars.map(Double.init), rtol: 1e-4, atol: 1e-5))
        let head = sampler.sample(conditions: Array(conditions[..<5]))
        #expect(isClose(all.slice(axis: 0, 0..<5), head.scalars.map(Double.init), rtol: 1e-4, atol: 1e-5))
    }
}
