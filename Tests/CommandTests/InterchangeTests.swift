import Distributed
import Foundation
import NN
import Storage
import TensorEngine
import Testing
import TestSupport
import Training

/// The smoke autoencoder with a small discriminator trained from step 0.
let withDiscriminator = ["--set", "autoencoder.training.eval_images=20", "--set", "autoencoder.loss.disc_enabled=true",
                         "--set", "autoencoder.loss.disc_start=0", "--set", "autoencoder.loss.disc_channels=16"]

/// A smoke autoencoder trained 2 steps with the discriminator on from step 0 (so its
/// BatchNorms have tracked batches), made once per test process.
let discriminatorStage1: String = {
    let run = temporaryRun()
    let r = try! ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "2"] + withDiscriminator)
    precondition(r.status == 0, "smoke autoencoder with a discriminator failed: \(r.err)")
    return run
}()

/// A class-conditional smoke diffusion run on `smokeStage1`'s latents, at a learning
/// rate that moves the zero-initialised output layer enough for ε̂ to be far from 0.
let smokeDiffusion: String = {
    let run = temporaryRun()
    let r = try! diffusionJob(1, run: run, ["--steps", "2", "--set", "diffusion.training.image_every=100",
                                            "--set", "diffusion.optimizer.base_lr=2e-3", "--set", "diffusion.optimizer.warmup_steps=0"])
    precondition(r.status == 0, "smoke diffusion failed: \(r.err)")
    return run
}()

/// Deterministic values in [−1, 1] of `shape`.
func pattern(_ shape: [Int], _ phase: Double = 0) -> Tensor {
    let n = shape.reduce(1, *)
    return Tensor(shape: shape, scalars: (0..<n).map { Float(sin(Double($0) * 0.37 + phase)) })
}

func write(_ tensors: [String: Tensor], ints: [String: [Int64]] = [:], to path: String) throws {
    let f = try HDF5File.create(path)
    for (k, t) in tensors { try f.write(k, shape: t.shape, t.scalars) }
    for (k, v) in ints { try f.write(k, shape: [v.count], v) }
    try f.close()
}

/// What Tests/Scripts/load_exported.py found.
func loadInPyTorch(_ file: String, outputs: String) throws -> [String: Any] {
    let script = packageRoot.appendingPathComponent("Tests/Scripts/load_exported.py").path
    let yaml = (file as NSString).deletingPathExtension + ".yaml"
    let line = try python(script: script, [file, yaml, outputs])
    return try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
}

@Suite("export and import: safetensors with CompVis keys", .serialized)
struct InterchangeTests {
    @Test("an autoencoder with its discriminator: PyTorch loads the export strictly and computes SwiftLDM's moments, images and logits")
    func autoencoderInPyTorch() throws {
        let dir = temporaryRun(), file = dir + "/ae.safetensors"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let r = try ldmTrain(["export", discriminatorStage1, "--out", file])
        #expect(r.status == 0 && r.out.contains("layout autoencoder"), "\(r.err)")
        let directory = try CheckpointStore.resolve(discriminatorStage1)
        let trained = try Interchange.loadAutoencoder(directory, config: try TrainedDiffusion.config(directory))
        let x = pattern([3, 32, 32, 1]), z = pattern([3, 16, 16, 2], 1)
        let (posterior, decoded, logits) = withoutGradient {
            (trained.model.encode(x), trained.model.decode(z), trained.discriminator!(x, tracking: false))
        }
        try write(["x": x, "z": z, "mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded, "logits": logits],
                  to: dir + "/outputs.h5")
        let torch = try loadInPyTorch(file, outputs: dir + "/outputs.h5")
        for key in ["mean", "logvar", "decoded", "logits"] {
            let d = try #require(torch[key] as? Double, "\(key) missing: \(torch)")
            #expect(d < 1e-4, "\(key) differs by \(d)")
        }
        // 2 steps × (D(x̂) for the generator + D(x) + D(x̂) for the hinge), rank 0's.
        #expect(torch["batches_tracked"] as? Int == 6, "\(torch)")
    }

    @Test("a class-conditional LatentDiffusion: PyTorch loads it strictly (schedule buffers included) and predicts SwiftLDM's ε; the diffusion layout with the EMA weights too")
    func latentDiffusionInPyTorch() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let zt = pattern([4, 16, 16, 2]), timesteps = [0, 17, 500, 999], labels = [0, 3, 9, 10]   // 10: the null class
        let conditions = labels.map { $0 == 10 ? Condition.none : .label($0) }
        var outputs: [String: Tensor] = ["zt": zt]
        for ema in [false, true] {
            let trained = try TrainedDiffusion.load(smokeDiffusion, useEMA: ema)
            outputs[ema ? "eps_ema" : "eps"] = withoutGradient { trained.model(zt, timesteps: timesteps, conditions: conditions) }
        }
        try write(outputs, ints: ["t": timesteps.map(Int64.init), "labels": labels.map(Int64.init)], to: dir + "/outputs.h5")
        for (layout, ema) in [("latent_diffusion", false), ("diffusion", true)] {
            let file = "\(dir)/\(layout).safetensors"
            let r = try ldmTrain(["export", smokeDiffusion, "--layout", layout, "--autoencoder", smokeStage1.autoencoder, "--out", file]
                                 + (ema ? ["--ema"] : []))
            #expect(r.status == 0, "\(r.err)")
            let torch = try loadInPyTorch(file, outputs: dir + "/outputs.h5")
            #expect(torch["layout"] as? String == layout)
            let d = try #require(torch["eps"] as? Double, "\(torch)"), scale = try #require(torch["eps_scale"] as? Double)
            #expect(d < 1e-5 * scale && scale > 0.05, "\(layout): ε (largest \(scale)) differs by \(d)")
            #expect((torch["schedule"] as? Double ?? 1) < 1e-6, "\(layout): \(torch)")
        }
    }

    @Test("with the discriminator on, 2 ranks: 6 steps straight equal 3 + resume + 3, bitwise, BatchNorm's running statistics (rank 0's) included")
    func discriminatorResume() throws {
        var last = ""
        try checkExactResume({ ranks, run, extra in
            last = run
            let r = try mpirunLocal(ranks, ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run] + withDiscriminator + extra)
            return (r.status, r.out, r.err)
        }, holding: "buffers/loss/discriminator/main/3/running_var")
        let tracked = try checkpointTensors(last + "/step-00000006")["buffers/loss/discriminator/main/9/num_batches_tracked"]
        #expect(tracked == [18], "3 forwards a step: \(tracked ?? [])")
    }

    @Test("export → import into a fresh model → the checkpoint's weights and statistics, bitwise")
    func roundTripBitwise() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try ldmTrain(["export", discriminatorStage1, "--out", dir + "/ae.safetensors"]).status == 0)
        let directory = try CheckpointStore.resolve(discriminatorStage1)
        let fresh = AutoencoderStep(config: try TrainedDiffusion.config(directory).autoencoder, seed: 12345)
        let result = try Interchange.load(dir + "/ae.safetensors", into: fresh.trained.stateTensors() + fresh.buffers, target: .autoencoder, partial: false)
        #expect(result.missing.isEmpty && result.unexpected.isEmpty && result.otherParts == 1)
        let saved = try checkpointTensors(directory)
        for s in fresh.trained.stateTensors() + fresh.buffers {
            let group = s.key.contains("running_") || s.key.hasSuffix("num_batches_tracked") ? "buffers" : "params"
            #expect(saved[CheckpointTensor.path(group, s.key)] == Array(UnsafeBufferPointer(start: s.pointer, count: max(1, s.shape.reduce(1, *)))),
                    "\(s.key)")
        }
        #expect(result.loaded == fresh.trained.stateTensors().count + fresh.buffers.count)
    }

    @Test("--init-from starts both stages from an export: after one step at learning rate 1e-30 the weights are the file's (1 and 2 ranks)")
    func initFrom() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try ldmTrain(["export", discriminatorStage1, "--out", dir + "/ae.safetensors"]).status == 0)
        #expect(try ldmTrain(["export", smokeDiffusion, "--autoencoder", smokeStage1.autoencoder, "--out", dir + "/ldm.safetensors"]).status == 0)
        let ae = temporaryRun()
        let a = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", ae, "--steps", "1"] + withDiscriminator
                             + ["--set", "autoencoder.optimizer.base_lr=1e-30", "--init-from", dir + "/ae.safetensors"])
        let aeTensors = try SafeTensorsFile.open(dir + "/ae.safetensors").entries.count
        #expect(a.status == 0 && a.out.contains("initialised from \(dir)/ae.safetensors: \(aeTensors - 1) tensors; 1 of other parts"),
                "\(a.out)\(a.err)")
        let d = temporaryRun()
        let b = try diffusionJob(2, run: d, ["--steps", "1", "--batch-size", "4", "--set", "diffusion.optimizer.base_lr=1e-30",
                                             "--set", "diffusion.training.image_every=100", "--init-from", dir + "/ldm.safetensors"])
        #expect(b.status == 0 && b.out.contains("of other parts of the model not read"), "\(b.out)\(b.err)")
        for (run, file) in [(ae, "ae"), (d, "ldm")] {
            let exported = try SafeTensorsFile.open("\(dir)/\(file).safetensors")
            let saved = try checkpointTensors(run + "/step-00000001")
            let parameters = exported.keys.filter {   // not the first stage, the schedule, the loss's logvar or BatchNorm's statistics
                !$0.hasPrefix("first_stage_model.") && !Interchange.scheduleKeys.contains($0) && $0 != "loss.logvar"
                    && !$0.contains("running_") && !$0.hasSuffix("num_batches_tracked")
            }
            var worst: Float = 0
            for key in parameters {
                let now = try #require(saved[CheckpointTensor.path("params", key)], "\(file): \(key)"), then = try #require(try exported.values(key))
                worst = max(worst, zip(now, then).map { abs($0 - $1) }.max() ?? 0)
            }
            #expect(worst <= 1e-28 && parameters.count > 50, "\(file): \(parameters.count) tensors, worst difference \(worst)")
        }
    }

    @Test("a file for another model is refused naming the missing, unexpected and mis-shaped tensors; --init-from-partial loads what fits and lists the rest")
    func wrongModel() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try ldmTrain(["export", smokeStage1.autoencoder, "--out", dir + "/plain.safetensors"]).status == 0)
        func train(_ extra: [String]) throws -> (status: Int32, out: String, err: String) {
            try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", temporaryRun(), "--steps", "1"] + withDiscriminator + extra)
        }
        let strict = try train(["--init-from", dir + "/plain.safetensors"])
        #expect(strict.status != 0 && strict.err.contains("plain.safetensors does not fit this model")
                && strict.err.contains("missing: loss.discriminator.main.0.weight") && strict.err.contains("--init-from-partial"), "\(strict.err)")
        let partial = try train(["--init-from", dir + "/plain.safetensors", "--init-from-partial"])
        #expect(partial.status == 0 && partial.out.contains("keep their initialisation: loss.discriminator.main.0.weight"), "\(partial.err)")
        let diffusion = try diffusionJob(1, run: temporaryRun(), ["--steps", "1", "--init-from", dir + "/plain.safetensors"])
        #expect(diffusion.status != 0 && diffusion.err.contains("unexpected: decoder.") && diffusion.err.contains("missing: model.diffusion_model."),
                "\(diffusion.err)")
        let wider = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", temporaryRun(), "--steps", "1",
                                                            "--set", "autoencoder.model.ch=64", "--init-from", dir + "/plain.safetensors", "--init-from-partial"])
        #expect(wider.status != 0 && wider.err.contains("of another shape: 'encoder.conv_in.weight' is [32, 1, 3, 3], the model's is [64, 1, 3, 3]"),
                "\(wider.err)")
    }

    @Test("a text model starts from its export: τθ's tokenizer in the metadata agrees, its unused to_logits head (zeros) is not read")
    func textInitFrom() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let e = try ldmTrain(["export", textDiffusion, "--layout", "diffusion", "--out", dir + "/text.safetensors"])
        #expect(e.status == 0, "\(e.err)")
        let file = try SafeTensorsFile.open(dir + "/text.safetensors")
        #expect(try file.values("cond_stage_model.transformer.to_logits.bias")?.allSatisfy { $0 == 0 } == true)
        #expect(file.metadata["tokenizer"]?.contains("merges") == true)
        let r = try textJob(1, run: temporaryRun(), ["--steps", "1", "--init-from", dir + "/text.safetensors"])
        #expect(r.status == 0 && r.out.contains("tensors; 2 of other parts of the model not read"), "\(r.out)\(r.err)")
    }

    @Test("encode and sample take the autoencoder from an exported file: the same latents and images as from its run")
    func autoencoderFromFile() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try ldmTrain(["export", smokeStage1.autoencoder, "--out", dir + "/ae.safetensors"]).status == 0)
        for (source, out) in [(smokeStage1.autoencoder, "run"), (dir + "/ae.safetensors", "file")] {
            let e = try ldmTrain(["encode", "--autoencoder", source, "--data", preparedDataset, "--out", "\(dir)/latents-\(out)", "--count", "64"])
            #expect(e.status == 0, "\(e.err)")
            let s = try ldmTrain(["sample", "--diffusion", smokeDiffusion, "--autoencoder", source, "--class", "3", "--count", "2", "--steps", "3",
                                  "--out", "\(dir)/\(out).png", "--images-out", "\(dir)/\(out).h5"])
            #expect(s.status == 0, "\(s.err)")
        }
        let a = try HDF5File.open(dir + "/latents-run/index.h5"), b = try HDF5File.open(dir + "/latents-file/index.h5")
        #expect(try a.read("mean", as: Float.self).values == (try b.read("mean", as: Float.self).values))
        #expect(try a.stringAttribute("autoencoder") == (try b.stringAttribute("autoencoder")))
        #expect(try HDF5File.open(dir + "/run.h5").read("images", as: Float.self).values
                == (try HDF5File.open(dir + "/file.h5").read("images", as: Float.self).values))
    }

    @Test("Python's safetensors reads every layout with its metadata; the file's bytes are the checkpoint's")
    func readBySafetensors() throws {
        let dir = temporaryRun()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try ldmTrain(["export", smokeDiffusion, "--layout", "diffusion", "--out", dir + "/unet.safetensors"]).status == 0)
        let out = try python("""
            from safetensors.numpy import load_file; from safetensors import safe_open; import h5py, os
            d = load_file('\(dir)/unet.safetensors'); m = safe_open('\(dir)/unet.safetensors', 'np').metadata()
            step = open('\(smokeDiffusion)/latest').read().strip()
            c = h5py.File(os.path.join('\(smokeDiffusion)', step, 'index.h5'))
            w = c['params/model/diffusion_model/out/2/weight'][...]
            print(len(d), m['layout'], m['swiftldm_model'], m['step'], m['ema'], 'scale_factor' in m, 'ldm-smoke' in m['config'],
                  bool((d['model.diffusion_model.out.2.weight'] == w).all()), d['cond_stage_model.embedding.weight'].shape)
            """)
        let parts = out.split(separator: " ").map(String.init)
        #expect(parts.count == 10 && parts[1...7] == ["diffusion", "latent-diffusion", "2", "false", "True", "True", "True"], "\(out)")
        #expect(out.hasSuffix("(11, 16)"), "\(out)")
    }
}

@Suite("safetensors files")
struct SafeTensorsTests {
    func file(_ name: String = #function) -> String { temporaryDirectory(name).appendingPathComponent("t.safetensors").path }

    @Test("written then read: keys, shapes, values, metadata; 8-byte aligned data; an i64 counter")
    func roundTrip() throws {
        let path = file()
        try SafeTensorsFile.write(path, tensors: [SafeTensor(key: "a.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5]),
                                                  SafeTensor(key: "n", shape: [], dtype: .i64, values: [7])], metadata: ["step": "3"])
        let f = try SafeTensorsFile.open(path)
        #expect(f.keys == ["a.weight", "n"] && f.metadata == ["step": "3"])
        #expect(try f.values("a.weight") == [1, 2, 3, 4, 5, -6.5] && (try f.values("n")) == [7] && (try f.values("b")) == nil)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        #expect(headerLength % 8 == 0 && bytes.count == 8 + headerLength + 24 + 8)
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))
    }

    /// Each damage is made to a good file's bytes (or header) and must be named.
    @Test("a truncated file, a header that lies about offsets, an unknown dtype, overlapping or gapped ranges: one error naming the file and tensor",
          arguments: ["truncated", "offsets beyond", "wrong size", "dtype", "overlap", "gap", "not json", "short"])
    func damaged(_ damage: String) throws {
        let path = file("damaged-\(damage)")
        try SafeTensorsFile.write(path, tensors: [SafeTensor(key: "w", shape: [4], values: [1, 2, 3, 4]),
                                                  SafeTensor(key: "b", shape: [2], values: [5, 6])], metadata: [:])
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let length = Int(bytes[0]), header = String(decoding: bytes[8..<(8 + length)], as: UTF8.self)
        func replaceHeader(_ text: String) {
            var h = Data(text.utf8)
            h.append(contentsOf: [UInt8](repeating: 0x20, count: max(0, length - h.count)))
            bytes.replaceSubrange(8..<(8 + length), with: h.prefix(length))
        }
        // (what the header says instead, what the error must say)
        let headerEdits: [String: ([(String, String)], String)] = [
            "offsets beyond": ([("[16,24]", "[16,99]")], "end beyond the 24 data bytes"),
            "wrong size": ([("[16,24]", "[12,24]")], "hold 12 bytes, but F32 [2] needs 8"),
            "dtype": ([("\"F32\",\"shape\":[2]", "\"U8\",\"shape\":[2]")], "dtype U8 is not one SwiftLDM reads"),
            "overlap": ([("[16,24]", "[8,16]")], "its bytes overlap the previous tensor's"),
            "gap": ([("[0,16]", "[0,8]"), ("\"shape\":[4]", "\"shape\":[2]")], "a gap of 8 bytes"),
        ]
        var expected: String
        switch damage {
        case "truncated":
            bytes = bytes.prefix(bytes.count - 4)
            expected = "data_offsets [16, 24] end beyond the 20 data bytes"
        case "not json":
            replaceHeader("{\"w\": [")
            expected = "the header is not a JSON object"
        case "short":
            bytes = bytes.prefix(5)
            expected = "too short for a safetensors header length"
        default:
            let (edits, message) = try #require(headerEdits[damage])
            replaceHeader(edits.reduce(header) { $0.replacingOccurrences(of: $1.0, with: $1.1) })
            expected = message
        }
        try bytes.write(to: URL(fileURLWithPath: path))
        let e = #expect(throws: SafeTensorsError.self) { try SafeTensorsFile.open(path) }
        #expect(e?.description.contains(path) == true && e?.description.contains(expected) == true, "\(e?.description ?? "")")
        if damage != "not json" && damage != "short" {
            #expect(e?.description.contains("tensor 'b'") == true, "\(e?.description ?? "")")
        }
    }
}
