import Foundation
import Testing
import TestSupport

/// This test process's hosts: namespaces and links named with its own prefix, removed
/// when it exits.
nonisolated(unsafe) private var netnsPrefix = "lt\(getpid() % 100_000)"

/// Runs Launch/netns-hosts with this process's prefix.
@discardableResult
func netnsHosts(_ arguments: [String]) throws -> (status: Int32, out: String) {
    let p = Process()
    p.executableURL = packageRoot.appendingPathComponent("Launch/netns-hosts")
    p.arguments = arguments
    p.environment = ProcessInfo.processInfo.environment.merging(["LDM_NETNS_PREFIX": netnsPrefix]) { $1 }
    let out = Pipe()
    (p.standardOutput, p.standardError) = (out, out)
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}

/// Three hosts, made once; false where network namespaces cannot be made (not root,
/// a container without CAP_NET_ADMIN): the tests then say so and skip.
let threeHosts: Bool = {
    guard getuid() == 0, (try? netnsHosts(["up", "3"]))?.status == 0 else { return false }
    atexit { _ = try? netnsHosts(["down"]) }
    return true
}()

/// A 3-rank job on the three hosts (Launch/mpirun-netns); OpenMPI's reports of lost
/// peers go to stderr, so `out` holds both streams.
func netnsJob(_ arguments: [String], during: ((Process) -> Void)? = nil) throws -> (status: Int32, out: String, seconds: Double) {
    let r = try mpirunLocal(3, arguments, environment: ["LDM_NETNS_PREFIX": netnsPrefix, "LDM_THREADS": "1"], launcher: "Launch/mpirun-netns",
                            during: during)
    return (r.status, r.out + r.err, r.seconds)
}

/// The pid of the rank numbered `rank` among ldm-train processes mentioning `marker`.
func rankPid(_ marker: String, rank: Int) -> pid_t? {
    rankProcesses(marker).first { pid in
        guard let environ = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ")) else { return false }
        return environ.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == "OMPI_COMM_WORLD_RANK=\(rank)" }
    }
}

/// Processes still running in this test's namespaces (orted, ranks).
func leftovers() -> String {
    (try? netnsHosts(["pids"]))?.out.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
}

let netnsAutoencoder = ["ldm-train", "autoencoder"] + smoke + ["--set", "autoencoder.optimizer.eps=1e-3", "--set", "autoencoder.optimizer.base_lr=1e-6"]

@Suite("Several hosts: 3 network namespaces, TCP only, one rank a host", .serialized, .enabled(if: threeHosts, "network namespaces cannot be made here"))
struct MultiHostTests {
    @Test("a 3-host run ends with the same weights as a 3-rank run on one host")
    func sameWeights() throws {
        let hosts = temporaryRun(), local = temporaryRun()
        let a = try netnsJob(netnsAutoencoder + ["--data", preparedDataset, "--run-dir", hosts, "--steps", "4", "--batch-size", "4",
                                                 "--set", "autoencoder.training.eval_images=6"])
        #expect(a.status == 0 && a.out.contains("3 rank(s)"), "\(a.out)")
        let b = try mpirunLocal(3, netnsAutoencoder + ["--data", preparedDataset, "--run-dir", local, "--steps", "4", "--batch-size", "4",
                                                                         "--set", "autoencoder.training.eval_images=6"])
        #expect(b.status == 0, "\(b.err)")
        let (worst, key) = worstRelativeDifference(try checkpointTensors(hosts + "/step-00000004"), try checkpointTensors(local + "/step-00000004"))
        #expect(worst < 1e-5, "\(key) differs by \(worst)")
    }

    @Test("kill -9 of the rank on another host ends the job within 10 s, non-zero; the next run resumes from the newest valid checkpoint")
    func killRemoteRank() throws {
        let run = temporaryRun()
        var killedAt = Date()
        let args = netnsAutoencoder + ["--data", preparedDataset, "--run-dir", run, "--batch-size", "4", "--checkpoint-every", "2",
                                       "--set", "autoencoder.training.log_every=1", "--set", "autoencoder.training.eval_images=6"]
        let r = try netnsJob(args + ["--steps", "100000"]) { _ in
            waitForTraining(run)
            Thread.sleep(forTimeInterval: 1)
            if let pid = rankPid(run, rank: 2) { killedAt = Date(); kill(pid, SIGKILL) }
        }
        let ended = Date().timeIntervalSince(killedAt)
        print(String(format: "kill -9 of rank 2 on host 2: the job ended %.1f s later with status %d", ended, r.status))
        #expect(r.status != 0 && ended < 10, "status \(r.status) \(ended) s after the kill: \(r.out.suffix(1500))")
        #expect(leftovers().isEmpty, "left running: \(leftovers())")
        let newest = try String(contentsOfFile: run + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let step = Int(newest.dropFirst("step-".count)) ?? 0
        let again = try netnsJob(args + ["--steps", String(step + 2)])
        #expect(again.status == 0 && again.out.contains("(step \(step))") && again.out.contains("step \(step + 2)/\(step + 2)"), "\(again.out.suffix(1500))")
    }

    @Test("cutting a host's link ends the job within 60 s naming the host, and leaves no process on any host")
    func cutLink() throws {
        let run = temporaryRun()
        var cutAt = Date()
        let r = try netnsJob(netnsAutoencoder + ["--data", preparedDataset, "--run-dir", run, "--steps", "100000", "--batch-size", "4",
                                                 "--set", "autoencoder.training.log_every=1"]) { _ in
            waitForTraining(run)
            cutAt = Date()
            _ = try? netnsHosts(["cut", "2"])
        }
        let ended = Date().timeIntervalSince(cutAt)
        print(String(format: "host 2's link cut: the job ended %.1f s later with status %d", ended, r.status))
        _ = try netnsHosts(["restore", "2"])
        #expect(r.status != 0 && ended < 60, "status \(r.status) \(ended) s after the cut")
        #expect(r.out.contains("10.77.0.3") || r.out.contains("rank 2"), "\(r.out.suffix(1500))")
        Thread.sleep(forTimeInterval: 2)
        #expect(leftovers().isEmpty, "left running: \(leftovers())")
    }

    @Test("a link throttled to 20 Mbit/s (tbf) still trains, and the exposed all-reduce time shows it")
    func throttledLink() throws {
        func exposed(_ out: String) -> [Double] {
            out.split(separator: "\n").compactMap { line in
                guard let r = line.range(of: "all-reduce ") else { return nil }
                return Double(line[r.upperBound...].split(separator: " ")[0])
            }
        }
        let args = netnsAutoencoder + ["--data", preparedDataset, "--steps", "6", "--batch-size", "4", "--set", "autoencoder.training.log_every=1",
                                       "--set", "autoencoder.training.eval_images=6"]
        let fast = try netnsJob(args + ["--run-dir", temporaryRun()])
        _ = try netnsHosts(["throttle", "1", "20mbit"])
        let slow = try netnsJob(args + ["--run-dir", temporaryRun()])
        _ = try netnsHosts(["unthrottle", "1"])
        #expect(fast.status == 0 && slow.status == 0, "\(slow.out.suffix(1500))")
        let (f, s) = (exposed(fast.out).sorted(), exposed(slow.out).sorted())
        print("exposed all-reduce ms per step: \(f) unthrottled, \(s) at 20 Mbit/s")
        #expect(f.count == 6 && s.count == 6 && s[3] > 3 * f[3] && s[3] > 100, "exposed all-reduce ms: \(f) unthrottled, \(s) at 20 Mbit/s")
    }
}
