import Distributed
import Foundation
import NN
import Storage
import TensorEngine
import Testing
import TestSupport
import Training

let vqSmokeConfig = ["--config", "Launch/configs/fmnist-vq-smoke.yaml"]

func vqAutoencoderJob(_ ranks: Int, run: String, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
    let r = try mpirunLocal(ranks, ["ldm-train", "autoencoder"] + vqSmokeConfig + ["--data", preparedDataset, "--run-dir", run,
                                                                                  "--set", "autoencoder.training.eval_images=20"] + extra)
    return (r.status, r.out, r.err)
}

/// LPIPS with random weights written as a safetensors file with torchvision's and LPIPS's names.
func randomLPIPSWeights(_ directory: String, seed: UInt64 = 7) throws -> (lpips: LPIPS, file: String) {
    let lpips = LPIPS(seed: seed), file = directory + "/lpips.safetensors"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try SafeTensorsFile.write(file, tensors: lpips.stateTensors().map {
        SafeTensor(key: $0.key, shape: $0.shape, values: Array(UnsafeBufferPointer(start: $0.pointer, count: $0.shape.reduce(1, *))))
    }, metadata: [:])
    return (lpips, file)
}

@Suite("VQ first stage: the quantiser, the VQ pipeline, world-size invariance, resume")
struct VQTests {
    @Test("the quantiser picks the nearest code by squared distance; straight-through: ∂(Σ r·zq)/∂z = r; the codes get 2(zq − z)/n of the codebook term")
    func quantiser() {
        var a = AutoencoderArchitecture()
        (a.doubleZ, a.nEmbed, a.embedDim) = (false, 16, 3)
        let model = Autoencoder(a, kind: .vq, seed: 3), q = model.quantize!
        let table = q.embedding.weight.scalars
        let z = Tensor(shape: [2, 2, 2, 3], scalars: (0..<24).map { Float(sin(Double($0) * 1.7)) / 100 }, requiresGrad: true)
        let brute = (0..<8).map { i in
            (0..<16).min { k, l in
                (0..<3).map { pow(z.scalars[i * 3 + $0] - table[k * 3 + $0], 2) }.reduce(0, +)
                    < (0..<3).map { pow(z.scalars[i * 3 + $0] - table[l * 3 + $0], 2) }.reduce(0, +)
            }!
        }
        #expect(q.nearest(z) == brute)
        let r = Tensor(shape: z.shape, scalars: (0..<24).map { Float(cos(Double($0))) })
        let out = q(z, beta: 0.25)
        (out.quantized * r).sum().backward()
        #expect(z.grad!.scalars == r.scalars)
        z.zeroGrad(); q.embedding.weight.zeroGrad()
        q(z, beta: 0.25).loss.backward()
        let g = q.embedding.weight.grad!.scalars
        var expected = [Float](repeating: 0, count: 48)
        for (i, k) in brute.enumerated() { for j in 0..<3 { expected[k * 3 + j] += 2 * (table[k * 3 + j] - z.scalars[i * 3 + j]) / 24 } }
        #expect(zip(g, expected).allSatisfy { abs($0 - $1) < 1e-6 }, "\(g) against \(expected)")
        #expect(model.namedParameters().map(\.key).contains("quantize.embedding.weight"))
        #expect(model.namedParameters().first { $0.key == "quant_conv.weight" }?.tensor.shape == [3, 4, 1, 1])
    }

    @Test("the VQ smoke pipeline: stage 1 reports codebook use, the cache holds the pre-quantisation latents (log-variance −∞), stage 2 trains and samples; export writes a VQModel")
    func pipeline() throws {
        let root = temporaryRun()
        let r = try ldmTrain(["pipeline"] + vqSmokeConfig + ["--checkpoints", root, "--set", "data.path=\(preparedDataset)",
                                                              "--set", "diffusion.latents=\(root)/latents"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("codes used on the test split, perplexity") && r.out.contains("perplexity"), "\(r.out)")
        let check = try python("""
            import h5py, numpy as np; c = h5py.File('\(root)/latents/index.h5'); s = h5py.File('\(root)/diffusion/samples.h5')
            a = h5py.File('\(root)/autoencoder/' + open('\(root)/autoencoder/latest').read().strip() + '/index.h5')
            print(a.attrs['model'], c['mean'].shape, bool(np.isneginf(c['logvar'][...]).all()), bool(np.isfinite(c['mean'][...]).all()),
                  s['images'].shape, bool(np.isfinite(s['images'][...]).all()), a['params/quantize/embedding/weight'].shape)
            """)
        #expect(check == "vq-model (512, 2, 16, 16) True True (20, 1, 32, 32) True (64, 2)", "\(check)")
        let out = root + "/vq.safetensors"
        let e = try ldmTrain(["export", root + "/autoencoder", "--out", out])
        #expect(e.status == 0, "\(e.err)")
        let yaml = try String(contentsOfFile: root + "/vq.yaml", encoding: .utf8)
        #expect(yaml.contains("target: ldm.models.autoencoder.VQModel") && yaml.contains("n_embed: 64") && yaml.contains("double_z: false"))
        #expect(try SafeTensorsFile.open(out).entries["quantize.embedding.weight"]?.shape == [64, 2])
        // PyTorch: the VQModel loads strictly, encodes to SwiftLDM's latents and decodes its codes to its images
        // (z made of the codes themselves, so that no rounding can tip a nearest-code choice).
        let ae = try FrozenAutoencoder.load(root + "/autoencoder", communicator: SingleProcess())
        let table = ae.model.quantize!.embedding.weight.scalars
        let x = pattern([2, 32, 32, 1]), z = Tensor(shape: [2, 16, 16, 2], scalars: (0..<1024).map { table[($0 / 2) % 64 * 2 + $0 % 2] })
        let (latent, decoded) = withoutGradient { (ae.model.encode(x).mean, ae.model.decode(z)) }
        try write(["x": x, "z": z, "mean": latent, "decoded": decoded], to: root + "/outputs.h5")
        let torch = try loadInPyTorch(out, outputs: root + "/outputs.h5")
        for key in ["mean", "decoded"] { #expect((torch[key] as? Double).map { $0 < 1e-4 } == true, "\(key): \(torch)") }
    }

    /// Re-seeding every 2 steps takes part (its picks are keyed by sample, not rank).
    @Test("the VQ autoencoder ends with the same weights at 1 and 2 ranks for the same global batch, dead codes re-seeded")
    func worldSizeInvariance() throws {
        var runs: [[String: [Float]]] = []
        for (ranks, batch, every) in [(1, 8, 2), (2, 4, 2), (2, 4, 0)] {
            let run = temporaryRun()
            let r = try vqAutoencoderJob(ranks, run: run, ["--batch-size", String(batch), "--steps", "4", "--set", "autoencoder.optimizer.eps=1e-3",
                                                           "--set", "autoencoder.loss.reseed_dead_codes_every=\(every)"])
            #expect(r.status == 0, "\(r.err)")
            #expect(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).contains("reseeded_codes") == (every > 0))
            runs.append(try checkpointTensors(run + "/step-00000004"))
        }
        let (control, _) = worstRelativeDifference(runs[1], runs[2])
        #expect(control > 1e-2, "re-seeding changed nothing: \(control)")
        let (worst, key) = worstRelativeDifference(runs[0], runs[1])
        // Float noise between the splits (as for the KL model, eps 1e-3) moves latents a little, and a latent
        // near the boundary between two codes amplifies it: a looser bound than the KL test's 1e-5.
        #expect(worst < 2e-4, "2 × 4: \(key) differs by \(worst)")
    }

    @Test("2 ranks: 6 VQ steps straight equal 3 + resume + 3, bitwise; a resume with another codebook size names the tensor")
    func exactResume() throws {
        try checkExactResume(vqAutoencoderJob, holding: "params/quantize/embedding/weight")
        let run = temporaryRun()
        #expect(try vqAutoencoderJob(1, run: run, ["--steps", "2"]).status == 0)
        let other = try vqAutoencoderJob(1, run: run, ["--steps", "4", "--set", "autoencoder.model.n_embed=32"])
        #expect(other.status != 0 && other.err.contains("quantize") && other.err.contains("[64, 2]") && other.err.contains("[32, 2]"), "\(other.err)")
    }

    @Test("kind and double_z must agree; a codebook needs two codes")
    func config() throws {
        for (set, expected) in [("autoencoder.model.double_z=true", "autoencoder.model.double_z"), ("autoencoder.model.n_embed=1", "n_embed")] {
            let r = try ldmTrain(["autoencoder"] + vqSmokeConfig + ["--data", preparedDataset, "--run-dir", temporaryRun(), "--set", set])
            #expect(r.status != 0 && r.err.contains(expected), "\(r.err)")
        }
    }
}

@Suite("LPIPS: the perceptual loss")
struct PerceptualTests {
    @Test("LPIPS and its gradients with respect to both images match a PyTorch implementation on the same weights (RGB and gray)",
          arguments: [3, 1])
    func againstPyTorch(_ channels: Int) throws {
        let dir = temporaryRun()
        let (lpips, file) = try randomLPIPSWeights(dir)
        let x0 = Tensor(shape: [2, 32, 32, channels], scalars: (0..<(2048 * channels)).map { Float(sin(Double($0) * 0.13)) }, requiresGrad: true)
        let x1 = Tensor(shape: [2, 32, 32, channels], scalars: (0..<(2048 * channels)).map { Float(sin(Double($0) * 0.13 + 0.4 * cos(Double($0)))) },
                        requiresGrad: true)
        let r = Tensor(shape: [2], scalars: [0.7, -1.3])   // a random projection of the two distances
        let d = lpips(x0, x1)
        (d * r).sum().backward()
        try write(["x0": x0, "x1": x1, "r": r, "value": d, "grad0": x0.grad!, "grad1": x1.grad!], to: dir + "/io.h5")
        let line = try python(script: packageRoot.appendingPathComponent("Tests/Scripts/lpips_reference.py").path, [file, dir + "/io.h5"])
        let torch = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double])
        for key in ["value", "grad0", "grad1"] { #expect(torch[key].map { $0 < 1e-4 } == true, "\(key): \(torch)") }
        #expect(d.scalars.allSatisfy { $0 > 0 } && withoutGradient { lpips(x0, x0) }.scalars.allSatisfy { $0 == 0 })
    }

    @Test("a run with perceptual_weight > 0 logs LPIPS and resumes bitwise (2 ranks, 6 = 3 + 3); a missing or wrong weights file is one clear error")
    func training() throws {
        let (_, file) = try randomLPIPSWeights(temporaryRun())
        let perceptual = ["--set", "autoencoder.loss.perceptual_weight=0.5", "--set", "autoencoder.loss.perceptual_weights=\(file)"]
        try checkExactResume({ ranks, run, extra in
            let r = try mpirunLocal(ranks, ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run,
                                                                                   "--set", "autoencoder.training.eval_images=20"] + perceptual + extra)
            #expect(r.out.contains("lpips"), "\(r.out)")
            return (r.status, r.out, r.err)
        }, holding: "params/decoder/conv_out/weight")
        for (path, expected) in [("/nonexistent/lpips.safetensors", "no such file"), (smokeStage1.autoencoder + "/latest", "not a safetensors or HDF5 file")] {
            let r = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", temporaryRun(),
                                                            "--set", "autoencoder.loss.perceptual_weight=1", "--set", "autoencoder.loss.perceptual_weights=\(path)"])
            #expect(r.status != 0 && r.err.contains("autoencoder.loss.perceptual_weights") && r.err.contains(expected), "\(r.err)")
        }
        let wrong = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", temporaryRun(), "--set", "autoencoder.loss.perceptual_weight=1",
                                                            "--set", "autoencoder.loss.perceptual_weights=\(try exportedAutoencoder())"])
        #expect(wrong.status != 0 && wrong.err.contains("missing: features.0.weight"), "\(wrong.err)")
    }
}

/// The smoke autoencoder exported once (a safetensors file of another model).
func exportedAutoencoder() throws -> String {
    let out = temporaryRun() + ".safetensors"
    let r = try ldmTrain(["export", smokeStage1.autoencoder, "--out", out])
    guard r.status == 0 else { throw DataError(r.err) }
    return out
}
