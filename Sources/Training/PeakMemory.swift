import Foundation

/// This process's peak resident set, which every stage and benchmark reports.
public enum PeakMemory {
    /// The peak so far in MiB: VmHWM of /proc/self/status. Not getrusage's ru_maxrss:
    /// Linux carries that over fork and exec, so a process started by a large one (the
    /// Python side of the PyTorch comparison) would report its parent's peak.
    public static func residentMiB() -> Double { status("VmHWM:") }

    /// The resident set now in MiB (VmRSS).
    public static func currentMiB() -> Double { status("VmRSS:") }

    private static func status(_ key: String) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key) }),
              let kib = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return 0 }
        return kib / 1024
    }

    /// Starts the peak afresh at the current resident size (Linux: "5" to clear_refs).
    public static func reset() {
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
    }
}
