import Foundation
import Storage
import Testing
import TestSupport

/// A job started through Launch/mpirun-local (the way users start ranks; `launcher`:
/// another script of Launch/ with its arguments), with a time limit, in the package
/// root or `directory`; `during` runs while it is running (to stop or kill a rank).
func mpirunLocal(_ ranks: Int, _ arguments: [String], timeout: Double = 300, environment: [String: String] = [:], directory: URL = packageRoot,
                 launcher: String = "Launch/mpirun-local", during: ((Process) -> Void)? = nil) throws
    -> (status: Int32, out: String, err: String, seconds: Double) {
    // Only this job sees these variables (tests run concurrently; setenv would leak into their jobs).
    let p = processWithSignalsUnblocked(packageRoot.appendingPathComponent(launcher).path, ["-n", String(ranks)] + arguments,
                                        environment: ProcessInfo.processInfo.environment.merging(environment) { $1 })
    p.currentDirectoryURL = directory
    let outFile = testScratch.appendingPathComponent("mpirun-\(UUID().uuidString).out")
    let errFile = testScratch.appendingPathComponent("mpirun-\(UUID().uuidString).err")
    FileManager.default.createFile(atPath: outFile.path, contents: nil)
    FileManager.default.createFile(atPath: errFile.path, contents: nil)
    p.standardOutput = try FileHandle(forWritingTo: outFile)
    p.standardError = try FileHandle(forWritingTo: errFile)
    let start = Date()
    try p.run()
    during?(p)
    while p.isRunning && Date().timeIntervalSince(start) < timeout { Thread.sleep(forTimeInterval: 0.1) }
    if p.isRunning { p.terminate(); Thread.sleep(forTimeInterval: 1); kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
    let seconds = Date().timeIntervalSince(start)
    return (p.terminationStatus, try String(contentsOf: outFile, encoding: .utf8), try String(contentsOf: errFile, encoding: .utf8), seconds)
}

/// A process that runs `executable` with no signal blocked, as a shell would start it:
/// the test process blocks signals its children inherit, and mpirun (or a batch script)
/// could then not receive or forward the signals a test sends it.
func processWithSignalsUnblocked(_ executable: String, _ arguments: [String], environment: [String: String]) -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    p.arguments = ["-c", "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])",
                   executable] + arguments
    p.environment = environment
    return p
}

/// PIDs of ldm-train processes whose command line mentions `marker`, ascending.
func rankProcesses(_ marker: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
              comm.trimmingCharacters(in: .whitespacesAndNewlines) == "ldm-train",
              let cmdline = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return false }
        return String(decoding: cmdline, as: UTF8.self).contains(marker)
    }.sorted()
}

/// Waits until `path` exists (a sign the job is training), up to `seconds`.
func waitFor(_ path: String, seconds: Double) -> Bool {
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        if FileManager.default.fileExists(atPath: path) { return true }
        Thread.sleep(forTimeInterval: 0.2)
    }
    return false
}

/// Largest ‖a − b‖ / max(‖a‖, 1e-4·√n) over the parameters of two checkpoints, and
/// where. The floor is for tensors that stay at zero (zero-initialised output convs
/// whose gradients are zero in exact arithmetic hold values ~1e-15 of pure float
/// noise): it is an average magnitude of 1e-4 per element, far below any trained
/// weight (~1e-2) and far above that noise.
func worstRelativeDifference(_ a: [String: [Float]], _ b: [String: [Float]]) -> (Double, String) {
    var worst = (0.0, "")
    for (key, x) in a where key.hasPrefix("params/") {
        guard let y = b[key], y.count == x.count else { return (.infinity, key) }
        var d = 0.0, n = 0.0
        for i in x.indices { d += Double(x[i] - y[i]) * Double(x[i] - y[i]); n += Double(x[i]) * Double(x[i]) }
        let r = d.squareRoot() / max(n.squareRoot(), 1e-4 * Double(x.count).squareRoot())
        if r > worst.0 { worst = (r, key) }
    }
    return worst
}

@Suite("Data parallel over real mpirun", .serialized)
struct DistributedTests {
    @Test("collectives and gradient buckets sum exactly at 2, 3 and 8 ranks (odd sizes, buckets smaller than a parameter)",
          arguments: [2, 3, 8])
    func collectives(ranks: Int) throws {
        let check = packageRoot.appendingPathComponent(".build/release/CollectiveCheck").path
        for (sizes, bucket, first) in [("7,1,300,13,64,5", "40", "16"), ("7,1,300,13,64,5", "1048576", "64"), ("1000", "4", "4")] {
            let r = try mpirunLocal(ranks, [check, sizes, bucket, first], timeout: 120)
            #expect(r.status == 0, "\(sizes) \(bucket): \(r.err)")
            #expect(r.out.split(separator: "\n").filter { $0.hasPrefix("ok ") }.count == ranks, "\(r.out)")
        }
    }

    /// 4 steps of the smoke autoencoder at 1 × 8, 2 × 4 and 4 × 2. Adam normalises
    /// each gradient element, so parameters whose gradient is zero in exact
    /// arithmetic (conv biases in front of one-channel GroupNorm groups, attention's
    /// k bias) would turn float summation noise into full-size steps; eps = 1e-3 and
    /// a small learning rate keep those steps proportional to their gradients, so
    /// what remains is summation order. Turning the flips off changes what the
    /// samples are and must show up far above the tolerance.
    @Test("the autoencoder ends with the same weights at 1, 2 and 4 ranks for the same global batch")
    func worldSizeInvariance() throws {
        let common = ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--set", "autoencoder.training.eval_images=100",
                                                             "--set", "autoencoder.optimizer.eps=1e-3", "--set", "autoencoder.optimizer.base_lr=1e-6"]
        var results: [String: [Float]] = [:]
        var runs: [[String: [Float]]] = []
        for (ranks, batch, extra) in [(1, 8, [String]()), (2, 4, []), (4, 2, []), (2, 4, ["--set", "data.flip=false"])] {
            let run = temporaryRun()
            let r = try mpirunLocal(ranks, common + ["--run-dir", run, "--batch-size", String(batch)] + extra)
            #expect(r.status == 0, "\(ranks) ranks: \(r.err)")
            results = try checkpointTensors(run + "/step-00000004")
            runs.append(results)
        }
        for (i, label) in [(1, "2 × 4"), (2, "4 × 2")] {
            let (worst, key) = worstRelativeDifference(runs[0], runs[i])
            #expect(worst < 1e-5, "\(label): \(key) differs by \(worst)")
        }
        let (control, _) = worstRelativeDifference(runs[0], runs[3])
        #expect(control > 1e-3, "turning flips off changed nothing: \(control)")
    }

    @Test("bench --scaling-rounds at 2 ranks: every round's solo, independent and data-parallel blocks, and medians that agree with them")
    func scalingBench() throws {
        let r = try mpirunLocal(2, ["ldm-train", "bench", "unet", "--json", "--threads", "1", "--batch-size", "2", "--steps", "2",
                                    "--scaling-rounds", "3"], timeout: 120)
        #expect(r.status == 0, "\(r.err)")
        let line = try #require(r.out.split(separator: "\n").last)
        let t = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
        #expect(t["ranks"] as? Int == 2 && t["rounds"] as? Int == 3)
        let rounds = try #require(t["round_scaling"] as? [Double]), ceilings = try #require(t["round_ceiling"] as? [Double])
        #expect(rounds.count == 3 && ceilings.count == 3)
        #expect(rounds.allSatisfy { $0 > 0.2 && $0 < 4 } && ceilings.allSatisfy { $0 > 0.2 && $0 < 4 }, "\(rounds) \(ceilings)")
        #expect(t["scaling"] as? Double == rounds.sorted()[1] && t["ceiling"] as? Double == ceilings.sorted()[1])
        let lockstep = try #require(t["lockstep_ceiling"] as? Double)   // 2 × the slower rank ≤ the sum of both
        #expect(lockstep > 0 && lockstep <= ceilings.sorted()[1] * (1 + 1e-12), "\(lockstep) \(ceilings)")
        let step = try #require(t["parallel_step_ms"] as? Double), parallel = try #require(t["parallel_img_per_s"] as? Double)
        #expect(abs(step * parallel / 1000 - 4) < 1e-6)   // 2 ranks × batch 2 per step
        #expect((t["exposed_comm_ms"] as? Double).map { $0 >= 0 && $0 < step } == true)
    }

    @Test("an error every rank meets (a config typo) is reported once, by rank 0, and ends the job non-zero")
    func errorOnEveryRank() throws {
        let r = try mpirunLocal(2, ["ldm-train", "autoencoder"] + smoke + ["--run-dir", temporaryRun(), "--set", "autoencoder.model.ch_mul=3"],
                                timeout: 60)
        #expect(r.status != 0)
        #expect(r.err.components(separatedBy: "Error:").count - 1 == 1, "\(r.err)")
        #expect(r.err.contains("did you mean 'autoencoder.model.ch_mult'"))
    }

    @Test("a rank killed mid-run ends the whole job with a non-zero exit within seconds")
    func rankKilled() throws {
        let run = temporaryRun()
        var killedAt = Date()
        let r = try mpirunLocal(2, ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "5000"],
                                timeout: 120) { _ in
            _ = waitFor(run + "/step-00000002", seconds: 60)
            let ranks = rankProcesses(run)
            if let victim = ranks.last { kill(victim, SIGKILL) }
            killedAt = Date()
        }
        #expect(r.status != 0)
        #expect(Date().timeIntervalSince(killedAt) < 15, "the job took \(Date().timeIntervalSince(killedAt)) s to end")
        #expect(rankProcesses(run).isEmpty)
    }

    @Test("a stopped rank (SIGSTOP) trips the watchdog, which names rank and step and ends the job")
    func rankStopped() throws {
        let run = temporaryRun()
        var stopped: pid_t = 0
        var stoppedAt = Date()
        let r = try mpirunLocal(2, ["ldm-train", "autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "5000",
                                                                            "--set", "distributed.watchdog_seconds=4"], timeout: 120) { _ in
            _ = waitFor(run + "/step-00000002", seconds: 60)
            stopped = rankProcesses(run).last ?? 0
            if stopped > 0 { kill(stopped, SIGSTOP) }
            stoppedAt = Date()
        }
        if stopped > 0 { kill(stopped, SIGKILL) }
        #expect(r.status != 0)
        #expect(Date().timeIntervalSince(stoppedAt) < 30)
        #expect(r.err.contains("has not finished after"), "\(r.err)")
        #expect(r.err.contains("autoencoder-kl step"), "\(r.err)")
    }
}
