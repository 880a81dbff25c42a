import Foundation
import Storage

/// Progress lines on rank 0's stdout and `metrics.jsonl` lines in the run
/// directory; silent on other ranks.
public final class RunLog {
    public let isRoot: Bool
    private var metrics: FileHandle?
    private var path: String?
    private let started = Date()
    /// TensorBoard's copy of what is recorded, opened with the first record.
    private var events: TensorBoardEvents?

    /// Opens (rank 0) `<runDirectory>/metrics.jsonl` for appending. A failure is kept in
    /// `problem`, which the stage loop turns into an error that every rank agrees on.
    public init(runDirectory: String?, isRoot: Bool) {
        self.isRoot = isRoot
        (metrics, path) = (nil, nil)
        guard isRoot, let runDirectory else { return }
        let path = runDirectory + "/metrics.jsonl"
        do {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        } catch {
            problem = FileSystem.describe(error, path: runDirectory, doing: "create the run directory")
            return
        }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            problem = "\(path): cannot open the metrics log for writing: " + FileSystem.cause(errno: errno)
            return
        }
        handle.seekToEndOfFile()
        (metrics, self.path) = (handle, path)
    }

    /// A progress line (rank 0 only).
    public func say(_ line: String) {
        guard isRoot else { return }
        print(line)
        fflush(stdout)
    }

    /// One JSON object on a line of metrics.jsonl (rank 0 only); keys sorted.
    public func record(_ fields: [String: Any]) {
        guard isRoot, let metrics else { return }
        var object = fields
        object["time"] = (Date().timeIntervalSince(started) * 1000).rounded() / 1000
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        do { try metrics.write(contentsOf: data + Data("\n".utf8)) } catch {
            if problem.isEmpty { problem = FileSystem.describe(error, path: path ?? "metrics.jsonl", doing: "append to the metrics log") }
        }
        guard let step = fields["step"] as? Int else { return }
        let scalars = fields.compactMap { key, value -> (tag: String, value: Double)? in
            guard !["step", "epoch"].contains(key) else { return nil }
            if let v = value as? Double { return (key, v) }
            if let v = value as? Int { return (key, Double(v)) }
            return nil
        }.sorted { $0.tag < $1.tag }
        if !scalars.isEmpty { tensorBoard { try $0.scalars(step: step, scalars) } }
    }

    /// A PNG grid written at `step` as a TensorBoard image, tagged with its file name
    /// without the step ("reconstructions", "samples-text").
    public func image(step: Int, file: String) {
        guard isRoot, metrics != nil else { return }
        var tag = ((file as NSString).lastPathComponent as NSString).deletingPathExtension
        if let dash = tag.lastIndex(of: "-"), Int(tag[tag.index(after: dash)...]) == step { tag = String(tag[..<dash]) }
        tensorBoard { try $0.image(step: step, tag: tag, png: try Data(contentsOf: URL(fileURLWithPath: file))) }
    }

    private func tensorBoard(_ write: (TensorBoardEvents) throws -> Void) {
        guard let directory = (path as NSString?)?.deletingLastPathComponent else { return }
        do {
            if events == nil { events = try TensorBoardEvents(directory: directory) }
            try write(events!)
        } catch {
            if problem.isEmpty { problem = "\(error)" }
        }
    }

    /// Why writing the metrics log failed ("" when it has not): the stage loop stops the run on it.
    public private(set) var problem = ""

    /// "1h02m", "3m05s" or "12s".
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }
}
