import Distributed
import Foundation

/// A run directory belongs to one job at a time: `<run>/owner.lock` names the owner
/// (host, pid, job id, start time) and is refreshed while the job runs. Another job
/// stops at once with the owner's name. A lock whose owner is gone (its process no
/// longer runs on this host, or, for another host, it has not been refreshed for
/// `staleAfter` seconds) is taken over with a warning, so a requeued or preempted
/// job always continues. Rank 0 holds the lock for the job; every rank learns the
/// decision.
public final class RunLock {
    /// What the lock file says.
    public struct Owner: Codable, Equatable, Sendable {
        public var host: String
        public var pid: Int32
        public var job: String
        public var started: Date
        public var refreshed: Date

        public init(host: String, pid: Int32, job: String, started: Date, refreshed: Date) {
            (self.host, self.pid, self.job, self.started, self.refreshed) = (host, pid, job, started, refreshed)
        }

        /// This process, now.
        public static var current: Owner {
            let env = ProcessInfo.processInfo.environment
            let job = env["SLURM_JOB_ID"] ?? env["PBS_JOBID"] ?? env["LSB_JOBID"] ?? env["OMPI_MCA_orte_ess_jobid"] ?? ""
            return Owner(host: ProcessInfo.processInfo.hostName, pid: getpid(), job: job, started: Date(), refreshed: Date())
        }

        var name: String { "\(job.isEmpty ? "" : "job \(job), ")pid \(pid) on \(host), started \(ISO8601DateFormatter().string(from: started))" }
    }

    /// How often the owner rewrites `refreshed`, and after how long without that a
    /// lock from another host counts as abandoned.
    public static let refreshEvery: TimeInterval = 60
    public static let staleAfter: TimeInterval = 600

    public let path: String
    private var owner: Owner
    private var timer: DispatchSourceTimer?

    private init(path: String, owner: Owner) { (self.path, self.owner) = (path, owner) }

    /// Takes the lock of `runDirectory` for this job (rank 0; the other ranks learn
    /// the outcome). `say` receives the warning when an abandoned lock is taken over.
    public static func acquire(_ runDirectory: String, communicator comm: Communicator, say: (String) -> Void) throws -> RunLock? {
        var problem = "", lock: RunLock?
        if comm.isRoot {
            do { lock = try acquire(runDirectory, say: say) } catch { problem = "\(error)" }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
        return lock
    }

    /// The single-process part of `acquire`.
    public static func acquire(_ runDirectory: String, say: (String) -> Void) throws -> RunLock {
        let path = runDirectory + "/owner.lock", me = Owner.current
        let lock = RunLock(path: path, owner: me)
        if let existing = read(path) {
            if existing.pid != me.pid || existing.host != me.host {
                guard let reason = abandoned(existing) else { throw inUse(runDirectory, by: existing.name) }
                say("warning: \(runDirectory) was owned by \(existing.name), \(reason); taking it over")
            }
            try lock.write(exclusive: false)
        } else if !(try lock.write(exclusive: true)) {   // another job created it just now
            throw inUse(runDirectory, by: read(path)?.name ?? "a job that is starting")
        }
        lock.startRefreshing()
        return lock
    }

    static func inUse(_ runDirectory: String, by name: String) -> DataError {
        DataError("\(runDirectory) is in use by \(name) (\(runDirectory)/owner.lock); two jobs on one run directory "
                  + "would overwrite each other's checkpoints: stop that job or use another run directory")
    }

    /// Why `owner` no longer holds its lock, or nil while it may.
    static func abandoned(_ owner: Owner) -> String? {
        if owner.host == ProcessInfo.processInfo.hostName {
            return running(owner.pid) ? nil : "a process that no longer runs"
        }
        let age = Date().timeIntervalSince(owner.refreshed)
        return age > staleAfter ? String(format: "not refreshed for %.0f s (its host cannot be checked from here)", age) : nil
    }

    /// True when `pid` is an ldm-train process on this host.
    static func running(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
        return command.contains("ldm-train")
    }

    public static func read(_ path: String) -> Owner? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(Owner.self, from: data)
    }

    /// Writes the lock file whole: a temporary file renamed over it or, when
    /// `exclusive`, linked to its name, which fails (returning false) if the file exists.
    @discardableResult
    private func write(exclusive: Bool) throws -> Bool {
        owner.refreshed = Date()
        let encoder = JSONEncoder()
        (encoder.dateEncodingStrategy, encoder.outputFormatting) = (.iso8601, [.sortedKeys])
        let temporary = "\(path).\(owner.pid).tmp"
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        do {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try encoder.encode(owner).write(to: URL(fileURLWithPath: temporary))
            let status = exclusive ? link(temporary, path) : rename(temporary, path)
            if status != 0 && exclusive && errno == EEXIST { return false }
            guard status == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            return true
        } catch {
            throw DataError(FileSystem.describe(error, path: path, doing: "write the run directory's lock"))
        }
    }

    private func startRefreshing() {
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "swiftldm.runlock"))
        timer.schedule(deadline: .now() + Self.refreshEvery, repeating: Self.refreshEvery)
        timer.setEventHandler { [weak self] in _ = try? self?.write(exclusive: false) }   // a failed refresh shows as a stale lock later
        timer.resume()
        self.timer = timer
    }

    /// Stops refreshing and removes the lock file, if it is still this job's.
    public func release() {
        timer?.cancel()
        timer = nil
        if let current = Self.read(path), current.pid == owner.pid, current.host == owner.host { try? FileManager.default.removeItem(atPath: path) }
    }

    deinit { timer?.cancel() }
}
