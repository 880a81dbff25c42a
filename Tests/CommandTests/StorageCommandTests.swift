import Datasets
import Distributed
import Foundation
import NN
import Storage
import Testing
import TestSupport
import Training

/// The sample trace a job wrote (LDM_TRACE_SAMPLES): per step, the indices of every rank in rank order.
func readTrace(_ base: String, ranks: Int) throws -> [Int: [Int]] {
    var steps: [Int: [Int]] = [:]
    for r in 0..<ranks {
        for line in try String(contentsOfFile: "\(base).rank\(r)", encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: " ")
            steps[Int(parts[0])!, default: []] += parts[2].split(separator: ",").map { Int($0)! }
        }
    }
    return steps
}

/// Runs the smoke autoencoder under mpirun with extra environment.
func smokeJob(_ ranks: Int, run: String, _ extra: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
    let r = try mpirunLocal(ranks, ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run,
                                                                          "--set", "autoencoder.training.eval_images=50"] + extra,
                            environment: environment)
    return (r.status, r.out, r.err)
}

@Suite("Checkpoints and latent cache under mpirun", .serialized)
struct StorageCommandTests {
    @Test("2 ranks: 6 steps straight equal 3 steps, stop, resume, 3 more, bitwise (params, moments)")
    func exactResume() throws {
        let straight = temporaryRun(), resumed = temporaryRun()
        let args = ["--batch-size", "4", "--checkpoint-every", "3"]
        #expect(try smokeJob(2, run: straight, args + ["--steps", "6"]).status == 0)
        #expect(try smokeJob(2, run: resumed, args + ["--steps", "3"]).status == 0)
        let rest = try smokeJob(2, run: resumed, args + ["--steps", "6"])
        #expect(rest.status == 0 && rest.out.contains("(step 3)"), "\(rest.err)")
        let a = try checkpointTensors(straight + "/step-00000006"), b = try checkpointTensors(resumed + "/step-00000006")
        #expect(!a.isEmpty && a.keys.sorted() == b.keys.sorted())
        #expect(a.keys.filter { a[$0] != b[$0] }.isEmpty)
    }

    @Test("saved by 2 ranks, resumed by 1 and by 3: weights load bitwise and the data cursor neither repeats nor skips")
    func reshard() throws {
        let run = temporaryRun(), trace = run + "-trace"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        #expect(try smokeJob(2, run: run, ["--batch-size", "4", "--steps", "3"], environment: ["LDM_TRACE_SAMPLES": trace + "-a"]).status == 0)
        // Loading the 2-rank checkpoint in a world of one gives exactly what the shards hold.
        let config = try ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/fmnist-smoke.yaml").path)
        let model = Autoencoder(config.autoencoder.model, seed: 99)
        let arena = ParameterArena(model)
        let store = CheckpointStore(runDirectory: run, communicator: SingleProcess(), say: { _ in })
        _ = try store.restore("auto", tensors: arena.declarationOrder.map {
            CheckpointTensor(key: CheckpointTensor.path("params", $0.key), shape: $0.tensor.shape, pointer: $0.tensor.pointer)
        }, expectedKind: "autoencoder-kl")
        let saved = try checkpointTensors(run + "/step-00000003")
        for e in arena.declarationOrder { #expect(e.tensor.scalars == saved[CheckpointTensor.path("params", e.key)], "\(e.key)") }
        // Resume the same run at 1 rank (global batch 4) and, from a copy, at 3 ranks (global batch 12).
        let copy = temporaryRun()
        try FileManager.default.copyItem(atPath: run, toPath: copy)
        #expect(try smokeJob(1, run: run, ["--batch-size", "4", "--steps", "6"], environment: ["LDM_TRACE_SAMPLES": trace + "-b"]).status == 0)
        #expect(try smokeJob(3, run: copy, ["--batch-size", "4", "--steps", "5"], environment: ["LDM_TRACE_SAMPLES": trace + "-c"]).status == 0)
        let order = epochPermutation(count: config.data.trainCount(60000), seed: config.seed, epoch: 0)
        let a = try readTrace(trace + "-a", ranks: 2), b = try readTrace(trace + "-b", ranks: 1), c = try readTrace(trace + "-c", ranks: 3)
        let first = (1...3).flatMap { a[$0]! }
        #expect(first == Array(order[0..<24]))
        #expect((4...6).flatMap { b[$0]! } == Array(order[24..<36]))
        #expect((4...5).flatMap { c[$0]! } == Array(order[24..<48]))
    }

    @Test("a rank killed during a save, at each phase: the next run resumes from the newest valid checkpoint and ends as a straight run",
          arguments: [("save-shards", "1"), ("save-rename", "0"), ("save-latest", "0")])
    func crashDuringSave(_ point: String, _ rank: String) throws {
        let straight = temporaryRun(), crashed = temporaryRun()
        let args = ["--batch-size", "4", "--checkpoint-every", "2", "--steps", "6"]
        #expect(try smokeJob(2, run: straight, args).status == 0)
        let crash = try smokeJob(2, run: crashed, args, environment: ["LDM_FAULT": point, "LDM_FAULT_STEP": "4", "LDM_FAULT_RANK": rank])
        #expect(crash.status != 0)
        let after = try smokeJob(2, run: crashed, args)
        #expect(after.status == 0, "\(after.err)")
        if point == "save-latest" {
            #expect(after.out.contains("(step 4)"), "\(after.out)")   // step-4 was complete; only `latest` lagged
        } else {
            #expect(after.out.contains("(step 2)"), "\(after.out)")
            #expect(after.out.contains("removing the incomplete save"), "\(after.out)")
        }
        let a = try checkpointTensors(straight + "/step-00000006"), b = try checkpointTensors(crashed + "/step-00000006")
        #expect(a.keys.filter { a[$0] != b[$0] }.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: crashed + "/step-00000004.partial"))
    }

    @Test("the latent cache is the same at 1 and 2 ranks; h5py reads it through the index; the scale factor is 1/std(z)")
    func latentCache() throws {
        let ae = temporaryRun()
        #expect(try smokeJob(1, run: ae, ["--steps", "2"]).status == 0)
        let one = temporaryRun(), two = temporaryRun()
        let e1 = try mpirunLocal(1, ["ldm-train", "encode", "--autoencoder", ae, "--data", preparedDataset, "--out", one, "--count", "300"])
        let e2 = try mpirunLocal(2, ["ldm-train", "encode", "--autoencoder", ae, "--data", preparedDataset, "--out", two, "--count", "300"])
        #expect(e1.status == 0 && e2.status == 0, "\(e1.err) \(e2.err)")
        let a = try LatentCache.read(one), b = try LatentCache.read(two)
        #expect(a.mean == b.mean && a.logvar == b.logvar && a.labels == b.labels)
        #expect(a.info.count == 300 && a.info.channels == 2 && a.info.height == 16 && a.info.factor == 2)
        #expect(a.info.autoencoder.hasPrefix("step-00000002/"))
        #expect(abs(a.info.scaleFactor - b.info.scaleFactor) < 1e-12)
        let out = try python("""
            import h5py, numpy as np; f = h5py.File('\(two)/index.h5')
            m, lv, y, s = f['mean'][...], f['logvar'][...], f['label'][...], f['source_index'][...]
            std = np.sqrt(m.astype(np.float64).var() + np.exp(lv.astype(np.float64)).mean())
            d = h5py.File('\(preparedDataset)')['train/labels'][:300]
            print(m.shape, y.dtype, (s == np.arange(300)).all(), (y == d).all(), abs(std * f.attrs['scale_factor'] - 1) < 1e-9)
            """)
        #expect(out == "(300, 2, 16, 16) int32 True True True")
    }
}
