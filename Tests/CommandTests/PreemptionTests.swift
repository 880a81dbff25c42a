import Distributed
import Foundation
import Testing
import TestSupport

/// A 2-rank smoke diffusion run long enough to be signalled while it trains.
func preemptibleJob(run: String, steps: Int, signal: ((Process) -> Void)? = nil) throws -> (status: Int32, out: String, err: String, seconds: Double) {
    try mpirunLocal(2, ["ldm-train", "diffusion"] + smoke + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder,
                                                             "--run-dir", run, "--steps", String(steps), "--batch-size", "4",
                                                             "--set", "diffusion.training.log_every=1", "--set", "diffusion.training.checkpoint_every=1000",
                                                             "--set", "diffusion.training.image_every=1000"], during: signal)
}

/// Each thread's name and its blocked and caught signal masks (Name, SigBlk, SigCgt of
/// /proc/PID/task/TID/status).
func signalMasks(of pid: pid_t) -> [(name: String, blocked: UInt64, caught: UInt64)] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.compactMap { tid in
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8) else { return nil }
        func mask(_ field: String) -> UInt64? {
            status.split(separator: "\n").first { $0.hasPrefix(field + ":") }
                .flatMap { UInt64($0.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces), radix: 16) }
        }
        guard let blocked = mask("SigBlk"), let caught = mask("SigCgt"),
              let name = status.split(separator: "\n").first(where: { $0.hasPrefix("Name:") }) else { return nil }
        return (name.dropFirst(5).trimmingCharacters(in: .whitespaces), blocked, caught)
    }
}

/// Waits until the run has logged a step (rank 0's metrics.jsonl has a line).
func waitForTraining(_ run: String, timeout: Double = 60) {
    let start = Date()
    while Date().timeIntervalSince(start) < timeout {
        if let text = try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8), text.contains("\"step\"") { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
}

@Suite("Preemption: a signal on any rank saves and stops every rank at the same step", .serialized)
struct PreemptionTests {
    @Test("SIGTERM to rank 1 mid-run: every rank saves the same step and exits 75; resuming ends bitwise equal to a straight run")
    func sigtermResumesExactly() throws {
        let straight = temporaryRun(), preempted = temporaryRun()
        #expect(try preemptibleJob(run: straight, steps: 120).status == 0)
        let stopped = try preemptibleJob(run: preempted, steps: 120) { _ in
            waitForTraining(preempted)
            let ranks = rankProcesses(preempted)
            if ranks.count == 2 { kill(ranks[1], SIGTERM) }
        }
        #expect(stopped.status == 75, "\(stopped.out) \(stopped.err)")
        let line = stopped.out.split(separator: "\n").first { $0.hasPrefix("preempted (SIGTERM on rank 1) after step ") } ?? ""
        let step = Int(line.split(separator: " ")[7].dropLast()) ?? 0
        #expect(step > 0 && step < 120, "\(stopped.out)")
        #expect(FileManager.default.fileExists(atPath: preempted + String(format: "/step-%08d/index.h5", step)))
        let resumed = try preemptibleJob(run: preempted, steps: 120)
        #expect(resumed.status == 0 && resumed.out.contains("(step \(step))"), "\(resumed.err)")
        let a = try checkpointTensors(straight + "/step-00000120"), b = try checkpointTensors(preempted + "/step-00000120")
        #expect(!a.isEmpty && a.keys.filter { a[$0] != b[$0] }.isEmpty)
    }

    /// What Launch/slurm.sbatch does: Slurm signals the batch shell, which passes
    /// SIGUSR1 to mpirun, which forwards it to every rank.
    @Test("SIGUSR1 to mpirun reaches the ranks: saved and exit 75")
    func sigusr1ThroughMpirun() throws {
        let run = temporaryRun()
        let stopped = try preemptibleJob(run: run, steps: 400) { p in
            waitForTraining(run)
            kill(p.processIdentifier, SIGUSR1)
        }
        // mpirun forwards the signal to one rank after the other: the step whose all-reduce
        // carries the first one may or may not carry the second.
        #expect(stopped.status == 75 && stopped.out.contains("preempted (SIGUSR1 on rank "), "\(stopped.out) \(stopped.err)")
        #expect(!stopped.out.contains("step 400/400"))
    }

    /// A handler runs on the stack of the thread a signal lands on, and oneDNN's JIT f32 GEMM
    /// kernels point rsp into the heap while they run: a signal there once corrupted the heap
    /// (seen as "corrupted size vs. prev_size" a step later). So no thread may take these
    /// signals with a handler: every one blocks them, and one thread receives them with sigwait.
    @Test("every thread of a training rank blocks SIGTERM, SIGUSR1 and SIGINT and none has a handler for them; SIGUSR1 still preempts")
    func noThreadRunsAHandler() throws {
        let run = temporaryRun()
        var threads: [(rank: pid_t, name: String, blocked: UInt64, caught: UInt64)] = []
        let stopped = try preemptibleJob(run: run, steps: 400) { p in
            waitForTraining(run)
            for rank in rankProcesses(run) { threads += signalMasks(of: rank).map { (rank, $0.name, $0.blocked, $0.caught) } }
            kill(p.processIdentifier, SIGUSR1)
        }
        let preemption: UInt64 = Preemption.signals.reduce(0) { $0 | 1 << UInt64($1 - 1) }
        let receivers = threads.filter { $0.name == Preemption.receiverName }, others = threads.filter { $0.name != Preemption.receiverName }
        #expect(Set(threads.map(\.rank)).count == 2 && others.count >= 8 && Set(receivers.map(\.rank)).count == 2 && receivers.count == 2,
                "\(threads)")
        #expect(others.allSatisfy { $0.blocked & preemption == preemption }, "\(threads)")
        #expect(threads.allSatisfy { $0.caught & preemption == 0 }, "\(threads)")
        #expect(stopped.status == 75 && stopped.out.contains("preempted (SIGUSR1 on rank "), "\(stopped.out) \(stopped.err)")
    }

    /// Rank 1 is held stopped, so rank 0 waits in the step's all-reduce after the first
    /// SIGINT (a slow step); the second ends it there.
    @Test("a second signal ends the process at once: SIGINT twice exits 130 without saving")
    func secondSignal() throws {
        let run = temporaryRun()
        let stopped = try preemptibleJob(run: run, steps: 100_000) { _ in
            waitForTraining(run)
            let ranks = rankProcesses(run)
            guard ranks.count == 2 else { return }
            kill(ranks[1], SIGSTOP)
            kill(ranks[0], SIGINT)
            Thread.sleep(forTimeInterval: 0.5)
            kill(ranks[0], SIGINT)
            Thread.sleep(forTimeInterval: 0.5)
            kill(ranks[1], SIGCONT)
        }
        #expect(stopped.status == 130 && stopped.seconds < 60, "\(stopped.status) after \(stopped.seconds) s: \(stopped.out) \(stopped.err)")
        #expect(!stopped.out.contains("preempted ("))
    }

    /// Launch/slurm.sbatch run as Slurm would run it, with stand-ins for the two commands
    /// this machine lacks: mpirun as root (adds --allow-run-as-root) and scontrol (records
    /// its arguments). SIGUSR1 to the script is what `--signal=B:USR1@120` sends.
    @Test("Launch/slurm.sbatch passes Slurm's SIGUSR1 to the ranks, which save and exit 75, and requeues the job")
    func sbatchRequeues() throws {
        let bin = temporaryDirectory(), run = temporaryRun(), requeued = bin.appendingPathComponent("scontrol.log").path
        try "#!/bin/bash\nexec /usr/bin/mpirun --allow-run-as-root --oversubscribe -n 2 \"$@\"\n"
            .write(toFile: bin.appendingPathComponent("mpirun").path, atomically: true, encoding: .utf8)
        try "#!/bin/bash\necho \"$@\" >> \(requeued)\n".write(toFile: bin.appendingPathComponent("scontrol").path, atomically: true, encoding: .utf8)
        for tool in ["mpirun", "scontrol"] { chmod(bin.appendingPathComponent(tool).path, 0o755) }
        var environment = ProcessInfo.processInfo.environment
        (environment["PATH"], environment["SLURM_JOB_ID"], environment["SLURM_SUBMIT_DIR"]) = (bin.path + ":" + (environment["PATH"] ?? ""), "4242", packageRoot.path)
        let p = processWithSignalsUnblocked("/bin/bash", [packageRoot.appendingPathComponent("Launch/slurm.sbatch").path, "diffusion"] + smoke
            + ["--latents", smokeStage1.latents, "--autoencoder", smokeStage1.autoencoder, "--run-dir", run, "--steps", "100000", "--batch-size", "4",
               "--set", "diffusion.training.log_every=1"], environment: environment)
        let out = Pipe()
        (p.standardOutput, p.standardError) = (out, out)
        try p.run()
        waitForTraining(run)
        kill(p.processIdentifier, SIGUSR1)
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 75, "\(text)")
        // mpirun forwards the signal to one rank after the other: the step whose all-reduce
        // carries the first one may or may not carry the second.
        #expect(text.contains("preempted (SIGUSR1 on rank ") && text.contains("requeueing job 4242"), "\(text)")
        #expect((try? String(contentsOfFile: requeued, encoding: .utf8)) == "requeue 4242\n")
    }
}

@Suite("Launchers: a process joins the world its launcher started, or stops")
struct LauncherTests {
    @Test("the launcher's variables give the world size and rank: OpenMPI, MPICH/PMI, Slurm's srun; none: a world of one")
    func environment() {
        #expect(LaunchEnvironment(["OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "SLURM_STEP_NUM_TASKS": "8"])
                == { var e = LaunchEnvironment([:]); (e.size, e.sizeVariable, e.rank) = (4, "OMPI_COMM_WORLD_SIZE", 2); return e }())
        #expect(LaunchEnvironment(["PMI_SIZE": "3", "PMI_RANK": "1"]).size == 3 && LaunchEnvironment(["PMI_SIZE": "3", "PMI_RANK": "1"]).rank == 1)
        #expect(LaunchEnvironment(["SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "5", "PMIX_RANK": "5"]).sizeVariable == "SLURM_STEP_NUM_TASKS")
        #expect(LaunchEnvironment(["SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"]).size == nil)   // a batch script itself is not a task
    }

    @Test("started by a launcher this MPI cannot reach (MPICH's PMI, srun without PMIx): one clear error, nothing written", arguments: [
        ["PMI_SIZE": "2", "PMI_RANK": "0"], ["SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "0"],
    ])
    func unreachableLauncher(_ environment: [String: String]) throws {
        let dir = temporaryDirectory()
        let r = try ldmTrain(["prepare", "--out", dir.appendingPathComponent("d.h5").path], in: dir, environment: environment)
        let variable = environment.keys.first { $0.hasSuffix("SIZE") || $0.hasSuffix("TASKS") }!
        #expect(r.status != 0 && r.err.contains("the launcher started \(environment[variable]!) processes (\(variable)=\(environment[variable]!)), "
                                                   + "but MPI_Init joined this one to a world of 1"), "\(r.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        let one = try ldmTrain(["prepare", "--config", "Launch/configs/fmnist-smoke.yaml", "--out", dir.appendingPathComponent("d.h5").path],
                               environment: [variable: "1"])
        #expect(one.status == 0, "a launcher's world of one runs: \(one.err)")
    }
}
