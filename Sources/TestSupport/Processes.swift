import Foundation

/// The directory every file a test process makes lives under
/// (`$TMPDIR/swiftldm-tests-<pid>`), removed when the process exits: runs, datasets
/// and fixtures of many test runs would otherwise pile up in the temporary directory.
public let testScratch: URL = {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftldm-tests-\(ProcessInfo.processInfo.processIdentifier)")
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: testScratchPath) }
    return url
}()

/// `testScratch`'s path for the exit handler, which cannot capture.
private let testScratchPath = FileManager.default.temporaryDirectory
    .appendingPathComponent("swiftldm-tests-\(ProcessInfo.processInfo.processIdentifier)").path

/// A fresh temporary directory per test.
public func temporaryDirectory(_ name: String = #function) -> URL {
    let url = testScratch.appendingPathComponent("dir-\(UUID().uuidString.prefix(8))")
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Runs a Python snippet with Debian's python3 (h5py), returning stdout.
public func python(_ code: String) throws -> String { try runPython(["-c", code]) }

/// Runs a Python script with Debian's python3 (h5py, Pillow, NumPy), returning stdout.
public func python(script: String, _ arguments: [String]) throws -> String { try runPython([script] + arguments) }

/// PyPI packages the checks read files with where Debian has none (safetensors,
/// tensorboard), installed here by Launch/test.
public let pythonPackages = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent(".build/python-packages").path

private func runPython(_ arguments: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    p.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["PYTHONPATH"] = ([pythonPackages] + (environment["PYTHONPATH"].map { [$0] } ?? [])).joined(separator: ":")
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    let errors = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: String(decoding: errors, as: UTF8.self)])
    }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

