import Foundation

/// Progress lines on rank 0's stdout and `metrics.jsonl` lines in the run
/// directory; silent on other ranks.
public final class RunLog {
    public let isRoot: Bool
    private let metrics: FileHandle?
    private let started = Date()

    public init(runDirectory: String?, isRoot: Bool) throws {
        self.isRoot = isRoot
        if isRoot, let runDirectory {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
            let path = runDirectory + "/metrics.jsonl"
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            metrics = FileHandle(forWritingAtPath: path)
            metrics?.seekToEndOfFile()
        } else {
            metrics = nil
        }
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
        metrics.write(data + Data("\n".utf8))
    }

    /// "1h02m", "3m05s" or "12s".
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }
}
