import Foundation
import Storage
import Testing
import TestSupport

/// Runs the release `ldm-train` (built by Launch/test before the tests) in the package root (or `directory`),
/// with `environment` added to the test's.
func ldmTrain(_ arguments: [String], in directory: URL = packageRoot, environment extra: [String: String] = [:]) throws
    -> (status: Int32, out: String, err: String) {
    let binary = packageRoot.appendingPathComponent(".build/release/ldm-train").path
    guard FileManager.default.isExecutableFile(atPath: binary) else {
        throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "\(binary) missing: run Launch/test (it builds release first)"])
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: binary)
    p.arguments = arguments
    p.currentDirectoryURL = directory
    var environment = ProcessInfo.processInfo.environment
    environment["LDM_THREADS"] = "1"
    p.environment = environment.merging(extra) { $1 }
    let out = Pipe(), err = Pipe()
    (p.standardOutput, p.standardError) = (out, err)
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

func temporaryRun() -> String {
    testScratch.appendingPathComponent("run-\(UUID().uuidString.prefix(8))").path
}

/// Every float tensor of a checkpoint directory, by key.
func checkpointTensors(_ directory: String) throws -> [String: [Float]] {
    let index = try HDF5File.open(directory + "/index.h5")
    var out: [String: [Float]] = [:]
    for name in try index.datasetNames() where !name.hasPrefix("shards/") { out[name] = try index.read(name, as: Float.self).values }
    return out
}

let smoke = ["--config", "Launch/configs/fmnist-smoke.yaml"]

@Suite("ldm-train autoencoder", .serialized)
struct AutoencoderCommandTests {
    @Test("a smoke run trains, logs, draws its grid, checkpoints, evaluates; a second run resumes and has nothing to do")
    func smokeRun() throws {
        let run = temporaryRun()
        let first = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run])
        #expect(first.status == 0, "\(first.err)")
        #expect(first.out.contains("step 4/4"))
        #expect(first.out.contains("PSNR"))
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(metrics.count == 3)
        #expect(metrics.last?.contains("test_psnr") == true)
        #expect(FileManager.default.fileExists(atPath: run + "/reconstructions-00000004.png"))
        #expect(try String(contentsOfFile: run + "/latest", encoding: .utf8) == "step-00000004\n")
        let second = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run])
        #expect(second.status == 0, "\(second.err)")
        #expect(second.out.contains("resumed from \(run)/step-00000004 (step 4)"))
        #expect(!second.out.contains("step 2/4"))
    }

    @Test("stopping at step 2 and resuming to 4 gives bitwise the weights and moments of a straight run to 4, in fp32 and in bf16",
          arguments: ["fp32", "bf16"])
    func exactResume(_ precision: String) throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        let common = ["autoencoder"] + smoke + ["--data", preparedDataset, "--set", "autoencoder.training.eval_images=100",
                                                "--set", "autoencoder.training.precision=\(precision)"]
        let first = try ldmTrain(common + ["--run-dir", straight])
        #expect(first.status == 0 && first.out.contains("\(precision) compute"), "\(first.err)")
        #expect(try ldmTrain(common + ["--run-dir", resumed, "--steps", "2"]).status == 0)
        let rest = try ldmTrain(common + ["--run-dir", resumed, "--steps", "4"])
        #expect(rest.status == 0 && rest.out.contains("(step 2)"), "\(rest.err)")
        let a = try checkpointTensors(straight + "/step-00000004"), b = try checkpointTensors(resumed + "/step-00000004")
        #expect(a.count > 100 && a.keys.sorted() == b.keys.sorted())
        let differing = a.keys.filter { a[$0] != b[$0] }
        #expect(differing.isEmpty, "differ: \(differing.sorted().prefix(5))")
        #expect(a.keys.contains("optim/v/decoder/conv_out/weight"))
    }

    @Test("bad input gives one clear line naming the problem and a non-zero exit", arguments: [
        (["--data", "/nonexistent/data.h5"], "/nonexistent/data.h5"),
        (["--steps=-1"], "autoencoder.training.steps"),
        (["--set", "autoencoder.model.ch_mul=[1]"], "did you mean 'autoencoder.model.ch_mult'"),
        (["--set", "autoencoder.training.batch_size=lots"], "'autoencoder.training.batch_size' should be an integer"),
        (["--set", "autoencoder.training.precision=fp16"], "'autoencoder.training.precision' should be"),
        (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["--resume", "/nonexistent/step-00000003"], "/nonexistent/step-00000003"),
    ])
    func badInput(_ extra: [String], _ expected: String) throws {
        var arguments = ["autoencoder"] + smoke + ["--run-dir", temporaryRun()]
        if !extra.contains("--data") { arguments += ["--data", preparedDataset] }
        if extra.contains("--config") { arguments = ["autoencoder", "--run-dir", temporaryRun()] }
        let result = try ldmTrain(arguments + extra)
        #expect(result.status != 0)
        let lines = result.err.split(separator: "\n").filter { !$0.isEmpty }
        #expect(lines.count == 1, "\(result.err)")
        #expect(result.err.contains(expected), "\(result.err)")
    }

    @Test("with the patch discriminator on from step 2, the run trains both and logs λ and the hinge loss")
    func discriminator() throws {
        let run = temporaryRun()
        let r = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "4",
                                                       "--set", "autoencoder.loss.disc_enabled=true", "--set", "autoencoder.loss.disc_start=2",
                                                       "--set", "autoencoder.training.eval_images=20"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("d_weight") && r.out.contains("disc_loss"))
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.contains("\"disc_loss\""))
        let t = try checkpointTensors(run + "/step-00000004")
        let before = try checkpointTensors(run + "/step-00000002")
        #expect(t["params/loss/discriminator/main/0/weight"] != before["params/loss/discriminator/main/0/weight"])
    }

    @Test("a non-finite loss stops the run naming the step and keeps the last good weights")
    func nonFinite() throws {
        let run = temporaryRun()
        let result = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "30",
                                                           "--set", "autoencoder.optimizer.base_lr=1e30"])
        #expect(result.status != 0)
        #expect(result.err.contains("non-finite loss or gradient at step"), "\(result.err)")
        let newest = try #require(CheckpointStore.stepDirectories(run).first)
        let tensors = try checkpointTensors(run + "/" + newest.name)
        #expect(tensors.values.allSatisfy { $0.allSatisfy(\.isFinite) })
    }
}

@Suite("ldm-train bench: the engine settings come from the config")
struct BenchEngineTests {
    @Test("bench unet times the config's engine settings and reports them: fp32, f4 and oneDNN's layout by default; --set engine.*, the stage's precision and --precision otherwise")
    func engineFromConfig() throws {
        func timed(_ extra: [String]) throws -> [String: String] {
            let r = try ldmTrain(["bench", "unet"] + smoke + ["--json", "--threads", "1", "--batch-size", "2", "--steps", "1"] + extra)
            #expect(r.status == 0, "\(r.err)")
            let line = try #require(r.out.split(separator: "\n").last)
            let t = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect((t["step_ms"] as? Double).map { $0 > 0 } == true)
            return try #require(t["engine"] as? [String: String])
        }
        #expect(try timed([]) == ["precision": "fp32", "winograd": "f4", "winograd_input": "keep", "conv_input": "recompute", "conv_layout": "auto"])
        #expect(try timed(["--set", "engine.winograd=off", "--set", "engine.winograd_input=recompute", "--set", "engine.conv_input=keep",
                           "--set", "engine.conv_layout=nhwc"])
                == ["precision": "fp32", "winograd": "off", "winograd_input": "recompute", "conv_input": "keep", "conv_layout": "nhwc"])
        #expect(try timed(["--set", "diffusion.training.precision=bf16"])["precision"] == "bf16")
        #expect(try timed(["--set", "diffusion.training.precision=bf16", "--precision", "fp32"])["precision"] == "fp32")
        #expect(try timed(["--precision", "bf16"])["precision"] == "bf16")
    }

    @Test("bench --memory profiles one step: the peak is at least what was alive before it and falls on the tape; convolutions keep the most; re-transforming Winograd's input keeps less")
    func memoryProfile() throws {
        func profile(_ extra: [String]) throws -> [String: Any] {
            let r = try ldmTrain(["bench", "autoencoder"] + smoke + ["--json", "--memory", "--threads", "1", "--batch-size", "4"] + extra)
            #expect(r.status == 0, "\(r.err)")
            let line = try #require(r.out.split(separator: "\n").last)
            return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        let keep = try profile([]), lean = try profile(["--set", "engine.winograd_input=recompute"])
        for p in [keep, lean] {
            let before = try #require(p["before_step_mib"] as? Double), peak = try #require(p["peak_live_mib"] as? Double)
            #expect(before > 0 && peak > before)
            let index = try #require(p["peak_op_index"] as? Int), length = try #require(p["tape_length"] as? Int)
            #expect(index >= 0 && index <= length && length > 20)
            let ops = try #require(p["kept_by_op"] as? [[String: Any]])
            #expect(ops.first?["op"] as? String == "conv2d")
            #expect((p["peak_rss_mib"] as? Double ?? 0) >= peak)
        }
        let kept = { (p: [String: Any]) in p["kept_by_forward_mib"] as? Double ?? 0 }
        #expect(kept(lean) < kept(keep))
        #expect((lean["engine"] as? [String: String])?["winograd_input"] == "recompute")
    }
}
