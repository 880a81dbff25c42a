import Datasets
import Foundation
import Storage
import Testing
import TestSupport

/// Runs a command, returning its exit status.
@discardableResult
func shell(_ arguments: [String]) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = arguments
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}

/// A tmpfs of `megabytes` mounted on a fresh directory (nil where this machine does not allow mounting).
func smallDisk(megabytes: Double) -> String? {
    let point = temporaryDirectory().appendingPathComponent("disk").path
    try? FileManager.default.createDirectory(atPath: point, withIntermediateDirectories: true)
    return shell(["mount", "-t", "tmpfs", "-o", "size=\(Int(megabytes * 1024))k", "tmpfs", point]) == 0 ? point : nil
}

let mountingAllowed: Bool = {
    guard let point = smallDisk(megabytes: 1) else { return false }
    shell(["umount", point])
    return true
}()

/// The lines of a job's stderr that are ours (mpirun adds its own report).
func errorLines(_ err: String) -> [Substring] { err.split(separator: "\n").filter { $0.hasPrefix("Error:") } }

@Suite("Storage faults", .serialized, .enabled(if: mountingAllowed, "needs to mount tmpfs (root, mount allowed)"))
struct StorageFaultTests {
    @Test("a checkpoint that does not fit is refused before writing, with the numbers; the previous one survives and a later run resumes from it")
    func fullDiskCheckpoint() throws {
        let disk = try #require(smallDisk(megabytes: 14))
        defer { shell(["umount", "-l", disk]) }
        let run = disk + "/run"
        let full = try smokeJob(2, run: run, [])   // the 8 MB checkpoint of step 2 fits, the one of step 4 does not
        #expect(full.status != 0)
        #expect(errorLines(full.err).count == 1 && full.err.contains("not enough space: need"), "\(full.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasSuffix(".partial") }.isEmpty)
        #expect(CheckpointStore.problem(with: run + "/step-00000002") == nil)
        #expect(shell(["mount", "-o", "remount,size=40m", disk]) == 0)
        let resumed = try smokeJob(2, run: run, [])
        #expect(resumed.status == 0 && resumed.out.contains("(step 2)"), "\(resumed.err)")
        // A latent cache of the whole split does not fit either: refused up front, nothing left.
        let encode = try mpirunLocal(2, ["ldm-train", "encode", "--autoencoder", run, "--data", preparedDataset, "--out", disk + "/latents"])
        #expect(encode.status != 0)
        #expect(errorLines(encode.err).count == 1 && encode.err.contains("cannot write the latent cache: not enough space: need"), "\(encode.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: disk).filter { $0.hasPrefix("latents") }.isEmpty)
    }

    @Test("no space left while a dataset's shards are written: one line naming the shard and the cause, nothing left on the disk")
    func fullDiskWrite() throws {
        let folder = try imageFolder()
        let disk = try #require(smallDisk(megabytes: 0.06))
        defer { shell(["umount", "-l", disk]) }
        let r = try mpirunLocal(2, ["ldm-train", "prepare", "--source", folder, "--out", disk + "/pets.h5", "--resolution", "64", "--channels", "3"])
        #expect(r.status != 0)
        #expect(errorLines(r.err).count == 1 && r.err.contains("no space left on the device") && r.err.contains("shard-0000"), "\(r.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: disk).isEmpty)
    }

    @Test("a read-only file system or a file where a directory should be is named in a sentence", arguments: [
        ("read-only", ["autoencoder"], "cannot create the run directory: the file system is read-only"),
        ("read-only", ["prepare"], "cannot prepare the output: the file system is read-only"),
        ("not-a-directory", ["autoencoder"], "is a file, not a directory"),
    ])
    func unwritable(kind: String, command: [String], message: String) throws {
        let disk = try #require(smallDisk(megabytes: 1))
        defer { shell(["umount", "-l", disk]) }
        FileManager.default.createFile(atPath: disk + "/file", contents: Data("x".utf8))
        if kind == "read-only" { #expect(shell(["mount", "-o", "remount,ro", disk]) == 0) }
        let target = kind == "read-only" ? disk + "/out" : disk + "/file/out"
        let arguments = command == ["prepare"] ? ["prepare", "--out", target + ".h5"]
            : ["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", target]
        let r = try ldmTrain(arguments)
        #expect(r.status != 0)
        #expect(errorLines(r.err).count == 1 && r.err.contains(message) && !r.err.contains("NSCocoaErrorDomain"), "\(r.err)")
    }
}

@Suite("A run directory belongs to one job", .serialized)
struct RunLockTests {
    @Test("a second job on a running job's directory stops at once naming the owner; after a kill -9 the next job takes the lock over and resumes")
    func twoJobs() throws {
        let run = temporaryRun()
        let first = Process()
        first.executableURL = packageRoot.appendingPathComponent(".build/release/ldm-train")
        first.arguments = ["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "2000", "--threads", "1"]
        first.currentDirectoryURL = packageRoot
        (first.standardOutput, first.standardError) = (FileHandle.nullDevice, FileHandle.nullDevice)
        try first.run()
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let deadline = Date().addingTimeInterval(60)   // the lock, then a first checkpoint (every 2 steps)
        while Date() < deadline && !FileManager.default.fileExists(atPath: run + "/latest") { Thread.sleep(forTimeInterval: 0.1) }
        let owner = try #require(RunLock.read(run + "/owner.lock"))
        #expect(owner.pid == first.processIdentifier)
        let second = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "2000"])
        #expect(second.status != 0)
        #expect(errorLines(second.err).count == 1 && second.err.contains("is in use by pid \(first.processIdentifier) on "), "\(second.err)")
        #expect(first.isRunning)
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let third = try ldmTrain(["autoencoder"] + smoke + ["--data", preparedDataset, "--run-dir", run, "--steps", "2",
                                                            "--set", "autoencoder.training.eval_images=20"])
        #expect(third.status == 0, "\(third.err)")
        #expect(third.out.contains("a process that no longer runs; taking it over") && third.out.contains("resumed from"), "\(third.out)")
        #expect(!FileManager.default.fileExists(atPath: run + "/owner.lock"))   // released at the end
    }

    @Test("a lock from another host is honoured while it is refreshed and taken over once it is stale")
    func otherHost() throws {
        let run = temporaryDirectory().path
        func plant(refreshed: Date) throws {
            let owner = RunLock.Owner(host: "node-that-is-not-here", pid: 4242, job: "77", started: refreshed, refreshed: refreshed)
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            try encoder.encode(owner).write(to: URL(fileURLWithPath: run + "/owner.lock"))
        }
        try plant(refreshed: Date())
        var said: [String] = []
        let e = #expect(throws: DataError.self) { try RunLock.acquire(run, say: { said.append($0) }) }
        #expect(e?.description.contains("in use by job 77, pid 4242 on node-that-is-not-here") == true)
        try plant(refreshed: Date().addingTimeInterval(-RunLock.staleAfter - 60))
        let lock = try RunLock.acquire(run, say: { said.append($0) })
        #expect(said.count == 1 && said[0].contains("not refreshed for") && said[0].contains("taking it over"))
        #expect(RunLock.read(run + "/owner.lock")?.pid == getpid())
        lock.release()
        #expect(!FileManager.default.fileExists(atPath: run + "/owner.lock"))
    }
}

@Suite("Inputs that change under a run", .serialized)
struct ChangedInputTests {
    @Test("a dataset prepared again under an open reader is refused at the next read, never mixed")
    func replacedWhileReading() throws {
        let folder = try imageFolder(), out = folder + ".h5"
        let args = ["ldm-train", "prepare", "--source", folder, "--out", out, "--resolution", "8"]
        #expect(try mpirunLocal(2, args).status == 0)
        let split = try DatasetSplit.open(out, split: .train)
        let before = try split.images([0, 5])
        #expect(try mpirunLocal(2, args).status == 0)   // the same folder again: new shard files under the same names
        let e = #expect(throws: DataError.self) { try split.images([0, 5]) }
        #expect(e?.description.contains("changed while this run was reading") == true)
        #expect(try DatasetSplit.open(out, split: .train).images([0, 5]) == before)   // opened anew, it reads the new file
    }

    @Test("resuming on a dataset prepared again since the checkpoint is refused; --resume none starts over")
    func resumeOnNewData() throws {
        let data = temporaryDirectory().appendingPathComponent("fmnist.h5").path
        try FileManager.default.copyItem(atPath: preparedDataset, toPath: data)   // prepared by one process: one file
        let run = temporaryRun()
        let common = ["autoencoder"] + smoke + ["--data", data, "--run-dir", run, "--set", "autoencoder.training.eval_images=20"]
        #expect(try ldmTrain(common + ["--steps", "2"]).status == 0)
        Thread.sleep(forTimeInterval: 1.1)   // the "created" stamp has one-second resolution
        #expect(try ldmTrain(["prepare", "--out", data]).status == 0)
        let resumed = try ldmTrain(common + ["--steps", "4"])
        #expect(resumed.status != 0)
        #expect(errorLines(resumed.err).count == 1 && resumed.err.contains("has been made again since"), "\(resumed.err)")
        #expect(try ldmTrain(common + ["--steps", "4", "--resume", "none"]).status == 0)
    }
}
