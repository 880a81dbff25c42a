import Foundation

/// File-system failures in the project's words: what was being done, the path, and
/// the cause as a sentence ("no space left on the device", "the file system is
/// read-only"), instead of Foundation's or HDF5's dumps.
public enum FileSystem {
    /// The cause of `error` (a Foundation, POSIX or HDF5 error) as a short phrase.
    public static func cause(_ error: Error) -> String {
        if let code = posixCode(error) { return cause(errno: code) }
        if let e = error as? HDF5Error { return e.detail.isEmpty ? e.operation + " failed" : e.detail }
        return (error as NSError).localizedDescription
    }

    /// A phrase for an errno value.
    public static func cause(errno code: Int32) -> String {
        switch code {
        case ENOSPC: return "no space left on the device"
        case EDQUOT: return "the disk quota is exceeded"
        case EROFS: return "the file system is read-only"
        case EACCES, EPERM: return "permission denied"
        case ENOTDIR: return "a part of the path is not a directory"
        case ENOENT: return "no such file or directory (is a parent directory missing?)"
        case EIO: return "input/output error (a failing disk or network file system)"
        case EEXIST: return "it already exists"
        default: return String(cString: strerror(code)).lowercased()
        }
    }

    /// "<path>: cannot <doing>: <cause>". When the error names no cause, the path is
    /// examined: a parent that is a file, or a parent this process may not write.
    public static func describe(_ error: Error, path: String, doing: String) -> String {
        let reason = posixCode(error) == nil && !(error is HDF5Error) ? diagnose(path) ?? cause(error) : cause(error)
        return "\(path): cannot \(doing): \(reason)"
    }

    /// Why `path` cannot be written, found by looking at its nearest existing ancestor.
    static func diagnose(_ path: String) -> String? {
        var probe = (path as NSString).deletingLastPathComponent
        while !probe.isEmpty, probe != "/", !FileManager.default.fileExists(atPath: probe) { probe = (probe as NSString).deletingLastPathComponent }
        var isDirectory: ObjCBool = false
        guard !probe.isEmpty, FileManager.default.fileExists(atPath: probe, isDirectory: &isDirectory) else { return nil }
        if !isDirectory.boolValue { return "\(probe) is a file, not a directory" }
        return access(probe, W_OK) == 0 ? nil : cause(errno: errno) + " (in \(probe))"
    }

    /// The errno behind a Foundation error (its underlying POSIX error, or the Cocoa
    /// code's meaning), if any.
    static func posixCode(_ error: Error) -> Int32? {
        let e = error as NSError
        if e.domain == NSPOSIXErrorDomain { return Int32(e.code) }
        if let underlying = e.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return Int32(underlying.code)
        }
        guard e.domain == NSCocoaErrorDomain else { return nil }
        switch CocoaError.Code(rawValue: e.code) {
        case .fileWriteOutOfSpace: return ENOSPC
        case .fileWriteVolumeReadOnly: return EROFS
        case .fileWriteNoPermission, .fileReadNoPermission: return EACCES
        case .fileNoSuchFile, .fileReadNoSuchFile: return ENOENT
        default: return nil
        }
    }

    /// Free bytes for an unprivileged writer on the file system holding `path` (or its
    /// nearest existing parent), and whether it is mounted read-only; nil when it cannot be told.
    static func space(at path: String) -> (free: Int64, readOnly: Bool)? {
        var probe = path
        while !FileManager.default.fileExists(atPath: probe), probe != "/", !probe.isEmpty {
            probe = (probe as NSString).deletingLastPathComponent
        }
        var stats = statvfs()
        guard statvfs(probe.isEmpty ? "." : probe, &stats) == 0 else { return nil }
        return (Int64(stats.f_bavail) * Int64(stats.f_frsize), stats.f_flag & UInt(ST_RDONLY) != 0)
    }

    /// Throws `make(reason)` when the file system holding `path` is read-only or has
    /// less than `bytes` free.
    public static func checkSpace(for bytes: Int64, at path: String, _ make: (String) -> Error) throws {
        guard let (free, readOnly) = space(at: path) else { return }
        if readOnly { throw make(cause(errno: EROFS)) }
        guard free < bytes else { return }
        throw make(String(format: "not enough space: need %.1f MB, %.1f MB free", Double(bytes) / 1e6, Double(free) / 1e6))
    }

    /// Which file is at `path` now: device, inode, size and modification time ("" when
    /// there is none). A file replaced or rewritten gets another stamp.
    public static func stamp(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return "" }
        return "\(info.st_dev):\(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }

    /// The bytes of the files in `directory` (not below its subdirectories).
    public static func bytes(below directory: String) -> Int64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.reduce(Int64(0)) { total, name in
            var info = stat()
            return total + (stat("\(directory)/\(name)", &info) == 0 ? Int64(info.st_size) : 0)
        }
    }
}
