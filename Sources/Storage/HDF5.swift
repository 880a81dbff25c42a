import CHDF5
import Foundation

/// The one file that talks to HDF5 (serial: one writer per file). Every failing
/// call becomes an `HDF5Error` naming the file, the object path and what HDF5 said.

/// Debian's HDF5 is built without thread safety, and tests (and a rank's
/// background work) may touch files from several threads: every call into the
/// library, here or anywhere else in the process, holds this one recursive lock.
/// Even a call that only reads a constant enters the library and clears its
/// shared error stack, which another thread may be walking.
public enum HDF5Lock {
    static let lock = NSRecursiveLock()
    public static func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}

/// An HDF5 failure, with the file and object it concerns.
public struct HDF5Error: Error, CustomStringConvertible {
    public let file: String
    public let object: String
    public let operation: String
    public let detail: String
    public var description: String {
        "\(file)\(object.isEmpty ? "" : ": \(object)"): \(operation) failed\(detail.isEmpty ? "" : " (\(detail))")"
    }
}

/// Element types stored in our files.
public protocol HDF5Element {
    static var nativeType: hid_t { get }
    static var typeName: String { get }
}
extension Float: HDF5Element {
    public static var nativeType: hid_t { shim_H5T_NATIVE_FLOAT() }
    public static var typeName: String { "f32" }
}
extension Double: HDF5Element {
    public static var nativeType: hid_t { shim_H5T_NATIVE_DOUBLE() }
    public static var typeName: String { "f64" }
}
extension Int32: HDF5Element {
    public static var nativeType: hid_t { shim_H5T_NATIVE_INT32() }
    public static var typeName: String { "i32" }
}
extension Int64: HDF5Element {
    public static var nativeType: hid_t { shim_H5T_NATIVE_INT64() }
    public static var typeName: String { "i64" }
}
extension UInt8: HDF5Element {
    public static var nativeType: hid_t { shim_H5T_NATIVE_UINT8() }
    public static var typeName: String { "u8" }
}

/// One source of a virtual dataset: rows `rows` of the VDS (along axis 0) come from
/// the whole dataset `dataset` in `file` (a path relative to the VDS's file).
public struct VirtualSource {
    public var file: String
    public var dataset: String
    public var rows: Range<Int>
    public init(file: String, dataset: String, rows: Range<Int>) {
        (self.file, self.dataset, self.rows) = (file, dataset, rows)
    }
}

/// An open HDF5 file. Closed on deinit; `close()` reports errors.
public final class HDF5File {
    public let path: String
    private var id: hid_t

    private init(path: String, id: hid_t) {
        self.path = path
        self.id = id
    }

    /// Creates (or truncates) a file.
    public static func create(_ path: String) throws -> HDF5File {
        return try retryingLockConflicts {
            try HDF5Lock.locked {
                silenceErrorPrinting()
                let fapl = H5Pcreate(shim_H5P_FILE_ACCESS())
                defer { H5Pclose(fapl) }
                H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110)   // VDS needs the 1.10 format
                let id = H5Fcreate(path, shim_H5F_ACC_TRUNC(), shim_H5P_DEFAULT(), fapl)
                guard id >= 0 else { throw error(path, "", "create file") }
                return HDF5File(path: path, id: id)
            }
        }
    }

    /// Opens an existing file.
    public static func open(_ path: String, writable: Bool = false) throws -> HDF5File {
        return try retryingLockConflicts {
            try HDF5Lock.locked {
                silenceErrorPrinting()
                guard FileManager.default.fileExists(atPath: path) else {
                    throw HDF5Error(file: path, object: "", operation: "open", detail: "no such file")
                }
                let id = H5Fopen(path, writable ? shim_H5F_ACC_RDWR() : shim_H5F_ACC_RDONLY(), shim_H5P_DEFAULT())
                guard id >= 0 else { throw error(path, "", "open (not an HDF5 file, or damaged)") }
                return HDF5File(path: path, id: id)
            }
        }
    }

    /// HDF5 takes an flock on every file it opens. A process this one spawns holds a copy
    /// of the descriptor (and so the lock) for the moment between fork and exec, so a file
    /// closed here can look locked for a few milliseconds. Such conflicts are retried for
    /// up to two seconds; a file still locked after that is reported as held elsewhere.
    private static func retryingLockConflicts(_ body: () throws -> HDF5File) throws -> HDF5File {
        let deadline = Date().addingTimeInterval(2)
        while true {
            do {
                return try body()
            } catch let e as HDF5Error where e.detail.contains("unable to lock file") {
                guard Date() < deadline else {
                    throw HDF5Error(file: e.file, object: e.object, operation: e.operation,
                                    detail: "\(e.detail); another process holds the file open")
                }
                usleep(20_000)
            }
        }
    }

    /// Flushes and closes the file; later calls fail.
    public func close() throws {
        try HDF5Lock.locked {
            guard id >= 0 else { return }
            let status = H5Fclose(id)
            id = -1
            guard status >= 0 else { throw Self.error(path, "", "close") }
        }
    }

    deinit { HDF5Lock.locked { if id >= 0 { _ = H5Fclose(id) } } }

    // MARK: Datasets

    /// Writes `data` as dataset `name` (parent groups are created) with `shape`,
    /// chunked along axis 0 by `chunkRows` rows (whole when nil) and with the
    /// Fletcher32 checksum filter on each chunk when `checksum`.
    public func write<T: HDF5Element>(_ name: String, shape: [Int], _ data: UnsafeBufferPointer<T>,
                                      chunkRows: Int? = nil, checksum: Bool = true) throws {
        try HDF5Lock.locked {
            precondition(data.count == shape.reduce(1, *), "\(name): \(data.count) elements for shape \(shape)")
            let space = try dataspace(shape, name)
            defer { H5Sclose(space) }
            let dcpl = H5Pcreate(shim_H5P_DATASET_CREATE())
            defer { H5Pclose(dcpl) }
            if !shape.isEmpty && data.count > 0 {
                var chunk = shape.map { hsize_t(max($0, 1)) }
                chunk[0] = hsize_t(max(1, min(shape[0], chunkRows ?? shape[0])))
                guard H5Pset_chunk(dcpl, Int32(chunk.count), chunk) >= 0 else { throw Self.error(path, name, "set chunk") }
                if checksum { guard H5Pset_fletcher32(dcpl) >= 0 else { throw Self.error(path, name, "set fletcher32") } }
            }
            let lcpl = linkCreationProperties()
            defer { H5Pclose(lcpl) }
            let dset = H5Dcreate2(id, name, T.nativeType, space, lcpl, dcpl, shim_H5P_DEFAULT())
            guard dset >= 0 else { throw Self.error(path, name, "create dataset") }
            defer { H5Dclose(dset) }
            if data.count > 0 {
                guard H5Dwrite(dset, T.nativeType, shim_H5S_ALL(), shim_H5S_ALL(), shim_H5P_DEFAULT(), data.baseAddress) >= 0 else {
                    throw Self.error(path, name, "write")
                }
            }
        }
    }

    /// Convenience: writes an array.
    public func write<T: HDF5Element>(_ name: String, shape: [Int], _ array: [T], chunkRows: Int? = nil,
                                      checksum: Bool = true) throws {
        try array.withUnsafeBufferPointer { try write(name, shape: shape, $0, chunkRows: chunkRows, checksum: checksum) }
    }

    /// The shape of dataset `name`.
    public func shape(of name: String) throws -> [Int] {
        return try HDF5Lock.locked {
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            let space = H5Dget_space(dset)
            defer { H5Sclose(space) }
            let rank = Int(H5Sget_simple_extent_ndims(space))
            guard rank >= 0 else { throw Self.error(path, name, "read shape") }
            var dims = [hsize_t](repeating: 0, count: rank)
            H5Sget_simple_extent_dims(space, &dims, nil)
            return dims.map { Int($0) }
        }
    }

    /// The element type name of dataset `name` ("f32", "u8", ..., "str"; "other" otherwise).
    public func elementType(of name: String) throws -> String {
        return try HDF5Lock.locked {
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            let type = H5Dget_type(dset)
            defer { H5Tclose(type) }
            let candidates: [any HDF5Element.Type] = [Float.self, Double.self, Int32.self, Int64.self, UInt8.self]
            for c in candidates where H5Tequal(type, c.nativeType) > 0 { return c.typeName }
            return H5Tget_class(type) == H5T_STRING ? "str" : "other"
        }
    }

    /// Reads rows `rows` (axis 0; all when nil) of dataset `name` into `out`, which
    /// must hold exactly that many elements. The element type must match `T`.
    public func read<T: HDF5Element>(_ name: String, rows: Range<Int>? = nil, into out: UnsafeMutableBufferPointer<T>) throws {
        try HDF5Lock.locked {
            let shape = try self.shape(of: name)
            let type = try elementType(of: name)
            guard type == T.typeName else {
                throw HDF5Error(file: path, object: name, operation: "read", detail: "holds \(type), expected \(T.typeName)")
            }
            let rowLength = shape.dropFirst().reduce(1, *)
            let selected = rows ?? 0..<(shape.first ?? 1)
            guard shape.isEmpty || (selected.lowerBound >= 0 && selected.upperBound <= shape[0]) else {
                throw HDF5Error(file: path, object: name, operation: "read", detail: "rows \(selected) outside shape \(shape)")
            }
            let expected = shape.isEmpty ? 1 : selected.count * rowLength
            guard out.count == expected else {
                throw HDF5Error(file: path, object: name, operation: "read",
                                detail: "shape \(shape) rows \(selected) is \(expected) elements, buffer holds \(out.count)")
            }
            guard expected > 0 else { return }
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            var fileSpace = shim_H5S_ALL(), memSpace = shim_H5S_ALL()
            if rows != nil && !shape.isEmpty {
                fileSpace = H5Dget_space(dset)
                var start = [hsize_t](repeating: 0, count: shape.count), count = shape.map { hsize_t($0) }
                start[0] = hsize_t(selected.lowerBound)
                count[0] = hsize_t(selected.count)
                H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, start, nil, count, nil)
                memSpace = H5Screate_simple(Int32(count.count), count, nil)
            }
            defer { if rows != nil && !shape.isEmpty { H5Sclose(fileSpace); H5Sclose(memSpace) } }
            guard H5Dread(dset, T.nativeType, memSpace, fileSpace, shim_H5P_DEFAULT(), out.baseAddress) >= 0 else {
                throw Self.error(path, name, "read (checksum mismatch or damaged data)")
            }
        }
    }

    /// Reads a whole dataset: its shape and elements.
    public func read<T: HDF5Element>(_ name: String, as: T.Type = T.self) throws -> (shape: [Int], values: [T]) {
        return try HDF5Lock.locked {
            let shape = try self.shape(of: name)
            var values = [T](unsafeUninitializedCapacity: shape.reduce(1, *)) { _, n in n = shape.reduce(1, *) }
            try values.withUnsafeMutableBufferPointer { try read(name, into: $0) }
            return (shape, values)
        }
    }

    /// True when an object (group or dataset) exists at `name`.
    public func exists(_ name: String) -> Bool {
        return HDF5Lock.locked {
            var prefix = ""
            for part in name.split(separator: "/") {   // H5Lexists needs each parent to exist
                prefix += "/" + part
                guard H5Lexists(id, prefix, shim_H5P_DEFAULT()) > 0 else { return false }
            }
            return true
        }
    }

    /// Every dataset below the root, as full paths without the leading slash, sorted.
    public func datasetNames() throws -> [String] {
        return try HDF5Lock.locked {
            final class Names { var list: [String] = [] }
            let names = Names()
            let status = withExtendedLifetime(names) {
                H5Ovisit2(id, H5_INDEX_NAME, H5_ITER_INC, { _, name, info, context in
                    if let info, info.pointee.type == H5O_TYPE_DATASET, let name {
                        Unmanaged<Names>.fromOpaque(context!).takeUnretainedValue().list.append(String(cString: name))
                    }
                    return 0
                }, Unmanaged.passUnretained(names).toOpaque(), UInt32(H5O_INFO_BASIC))
            }
            guard status >= 0 else { throw Self.error(path, "", "list datasets") }
            return names.list.sorted()
        }
    }

    // MARK: Virtual datasets

    /// Creates a virtual dataset `name` of `shape` whose rows come from `sources`
    /// (each a whole dataset of shape [rows.count] + shape[1...]).
    public func writeVirtual<T: HDF5Element>(_ name: String, shape: [Int], type: T.Type, sources: [VirtualSource]) throws {
        try HDF5Lock.locked { try writeVirtual(name, shape: shape, typeID: T.nativeType, sources: sources) }
    }

    /// The same for variable-length UTF-8 strings ([N] datasets written by `writeStrings`).
    public func writeVirtualStrings(_ name: String, count: Int, sources: [VirtualSource]) throws {
        try HDF5Lock.locked {
            let type = Self.stringType()
            defer { H5Tclose(type) }
            try writeVirtual(name, shape: [count], typeID: type, sources: sources)
        }
    }

    private func writeVirtual(_ name: String, shape: [Int], typeID: hid_t, sources: [VirtualSource]) throws {
        try HDF5Lock.locked {
            let vspace = try dataspace(shape, name)
            defer { H5Sclose(vspace) }
            let dcpl = H5Pcreate(shim_H5P_DATASET_CREATE())
            defer { H5Pclose(dcpl) }
            for s in sources where s.rows.count > 0 || shape.isEmpty {
                var srcShape = shape
                if !srcShape.isEmpty { srcShape[0] = s.rows.count }
                let srcSpace = try dataspace(srcShape, name)
                defer { H5Sclose(srcSpace) }
                if !shape.isEmpty {
                    var start = [hsize_t](repeating: 0, count: shape.count)
                    start[0] = hsize_t(s.rows.lowerBound)
                    let count = srcShape.map { hsize_t($0) }
                    H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start, nil, count, nil)
                }
                guard H5Pset_virtual(dcpl, vspace, s.file, s.dataset, srcSpace) >= 0 else {
                    throw Self.error(path, name, "map virtual source \(s.file):\(s.dataset)")
                }
            }
            H5Sselect_all(vspace)
            let lcpl = linkCreationProperties()
            defer { H5Pclose(lcpl) }
            let dset = H5Dcreate2(id, name, typeID, vspace, lcpl, dcpl, shim_H5P_DEFAULT())
            guard dset >= 0 else { throw Self.error(path, name, "create virtual dataset") }
            H5Dclose(dset)
        }
    }

    /// The sources of virtual dataset `name` (empty for an ordinary dataset).
    public func virtualSources(of name: String) throws -> [(file: String, dataset: String)] {
        return try HDF5Lock.locked {
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            let dcpl = H5Dget_create_plist(dset)
            defer { H5Pclose(dcpl) }
            guard H5Pget_layout(dcpl) == H5D_VIRTUAL else { return [] }
            var count = 0
            H5Pget_virtual_count(dcpl, &count)
            return (0..<count).map { i in
                func string(_ get: (UnsafeMutablePointer<CChar>?, Int) -> Int) -> String {
                    let n = get(nil, 0)
                    var buffer = [CChar](repeating: 0, count: max(n, 0) + 1)
                    _ = get(&buffer, buffer.count)
                    return String(cString: buffer)
                }
                return (string { H5Pget_virtual_filename(dcpl, i, $0, $1) }, string { H5Pget_virtual_dsetname(dcpl, i, $0, $1) })
            }
        }
    }

    // MARK: Row lists and strings

    /// Reads the rows `rows` (axis 0, any order, repeats allowed) of dataset `name`
    /// into `out`, in the order of `rows`, with one read of the union of the rows.
    public func read<T: HDF5Element>(_ name: String, rowList rows: [Int], into out: UnsafeMutableBufferPointer<T>) throws {
        try HDF5Lock.locked {
            let shape = try self.shape(of: name), type = try elementType(of: name)
            guard type == T.typeName else {
                throw HDF5Error(file: path, object: name, operation: "read", detail: "holds \(type), expected \(T.typeName)")
            }
            let rowLength = shape.dropFirst().reduce(1, *)
            guard out.count == rows.count * rowLength else {
                throw HDF5Error(file: path, object: name, operation: "read", detail: "\(rows.count) rows of \(rowLength) for \(out.count) elements")
            }
            let unique = Array(Set(rows)).sorted()
            var sorted = [T](unsafeUninitializedCapacity: unique.count * rowLength) { _, n in n = unique.count * rowLength }
            try sorted.withUnsafeMutableBytes { try readSelected(name, shape: shape, rows: unique, memoryType: T.nativeType, into: $0.baseAddress!) }
            let position = Dictionary(uniqueKeysWithValues: unique.enumerated().map { ($0.element, $0.offset) })
            for (i, r) in rows.enumerated() {
                let from = position[r]! * rowLength
                for k in 0..<rowLength { out[i * rowLength + k] = sorted[from + k] }
            }
        }
    }

    /// Creates a dataset of no rows yet that `appendRows` grows along axis 0: rows of
    /// `rowShape` of `T` (or strings when `T` is nil), chunked by `chunkRows`.
    public func createGrowing<T: HDF5Element>(_ name: String, of type: T.Type, rowShape: [Int], chunkRows: Int, checksum: Bool = true) throws {
        try HDF5Lock.locked { try createGrowing(name, typeID: T.nativeType, rowShape: rowShape, chunkRows: chunkRows, checksum: checksum) }
    }

    /// The same for a 1-D dataset of variable-length UTF-8 strings.
    public func createGrowingStrings(_ name: String, chunkRows: Int) throws {
        try HDF5Lock.locked {
            let type = Self.stringType()
            defer { H5Tclose(type) }
            try createGrowing(name, typeID: type, rowShape: [], chunkRows: chunkRows, checksum: false)
        }
    }

    private func createGrowing(_ name: String, typeID: hid_t, rowShape: [Int], chunkRows: Int, checksum: Bool) throws {
        try HDF5Lock.locked {
            let dims = [hsize_t(0)] + rowShape.map { hsize_t($0) }, maximum = [hsize_t.max] + rowShape.map { hsize_t($0) }
            let space = H5Screate_simple(Int32(dims.count), dims, maximum), dcpl = H5Pcreate(shim_H5P_DATASET_CREATE())
            let lcpl = linkCreationProperties()
            defer { H5Sclose(space); H5Pclose(dcpl); H5Pclose(lcpl) }
            let chunk = [hsize_t(max(1, chunkRows))] + rowShape.map { hsize_t(max($0, 1)) }
            guard H5Pset_chunk(dcpl, Int32(chunk.count), chunk) >= 0 else { throw Self.error(path, name, "set chunk") }
            if checksum { guard H5Pset_fletcher32(dcpl) >= 0 else { throw Self.error(path, name, "set fletcher32") } }
            let dset = H5Dcreate2(id, name, typeID, space, lcpl, dcpl, shim_H5P_DEFAULT())
            guard dset >= 0 else { throw Self.error(path, name, "create dataset") }
            H5Dclose(dset)
        }
    }

    /// Appends whole rows to a dataset made by `createGrowing`.
    public func appendRows<T: HDF5Element>(_ name: String, _ values: [T]) throws {
        try HDF5Lock.locked { try values.withUnsafeBytes { try append(name, typeID: T.nativeType, elements: values.count, $0.baseAddress) } }
    }

    /// Appends strings to a dataset made by `createGrowingStrings`.
    public func appendStrings(_ name: String, _ values: [String]) throws {
        guard !values.isEmpty else { return }
        try HDF5Lock.locked {
            let type = Self.stringType()
            defer { H5Tclose(type) }
            try Self.withCStrings(values) { try append(name, typeID: type, elements: values.count, $0) }
        }
    }

    private func append(_ name: String, typeID: hid_t, elements: Int, _ data: UnsafeRawPointer?) throws {
        try HDF5Lock.locked {
            var shape = try self.shape(of: name).map { hsize_t($0) }
            let rowLength = Int(shape.dropFirst().reduce(1, *))
            precondition(elements % max(rowLength, 1) == 0, "\(name): \(elements) elements are not whole rows of \(rowLength)")
            let rows = hsize_t(elements / max(rowLength, 1))
            guard rows > 0, let data else { return }
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            var start = [hsize_t](repeating: 0, count: shape.count), count = shape
            (start[0], count[0]) = (shape[0], rows)
            shape[0] += rows
            guard H5Dset_extent(dset, shape) >= 0 else { throw Self.error(path, name, "grow") }
            let fileSpace = H5Dget_space(dset), memorySpace = H5Screate_simple(Int32(count.count), count, nil)
            defer { H5Sclose(fileSpace); H5Sclose(memorySpace) }
            H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, start, nil, count, nil)
            guard H5Dwrite(dset, typeID, memorySpace, fileSpace, shim_H5P_DEFAULT(), data) >= 0 else { throw Self.error(path, name, "append") }
        }
    }

    /// Writes `values` as a 1-D dataset of variable-length UTF-8 strings (h5py reads `str`).
    public func writeStrings(_ name: String, _ values: [String]) throws {
        try HDF5Lock.locked {
            let type = Self.stringType(), space = try dataspace([values.count], name), lcpl = linkCreationProperties()
            defer { H5Tclose(type); H5Sclose(space); H5Pclose(lcpl) }
            let dset = H5Dcreate2(id, name, type, space, lcpl, shim_H5P_DEFAULT(), shim_H5P_DEFAULT())
            guard dset >= 0 else { throw Self.error(path, name, "create dataset") }
            defer { H5Dclose(dset) }
            guard !values.isEmpty else { return }
            let status = Self.withCStrings(values) { H5Dwrite(dset, type, shim_H5S_ALL(), shim_H5S_ALL(), shim_H5P_DEFAULT(), $0) }
            guard status >= 0 else { throw Self.error(path, name, "write") }
        }
    }

    /// Rows `rows` (any order; all when nil) of a 1-D string dataset.
    public func readStrings(_ name: String, rowList rows: [Int]? = nil) throws -> [String] {
        try HDF5Lock.locked {
            let shape = try self.shape(of: name)
            guard shape.count == 1, try isStringDataset(name) else {
                throw HDF5Error(file: path, object: name, operation: "read strings", detail: "not a 1-D string dataset")
            }
            let unique = rows.map { Array(Set($0)).sorted() } ?? Array(0..<shape[0])
            guard !unique.isEmpty else { return [] }
            let type = Self.stringType()
            defer { H5Tclose(type) }
            var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: unique.count)
            try pointers.withUnsafeMutableBytes { try readSelected(name, shape: shape, rows: unique, memoryType: type, into: $0.baseAddress!) }
            let strings = pointers.map { $0.map { String(cString: $0) } ?? "" }
            let memory = H5Screate_simple(1, [hsize_t(unique.count)], nil)
            pointers.withUnsafeMutableBytes { _ = H5Dvlen_reclaim(type, memory, shim_H5P_DEFAULT(), $0.baseAddress) }
            H5Sclose(memory)
            guard let rows else { return strings }
            let position = Dictionary(uniqueKeysWithValues: unique.enumerated().map { ($0.element, $0.offset) })
            return rows.map { strings[position[$0]!] }
        }
    }

    /// True when dataset `name` holds strings.
    public func isStringDataset(_ name: String) throws -> Bool {
        try HDF5Lock.locked {
            let dset = try openDataset(name)
            defer { H5Dclose(dset) }
            let type = H5Dget_type(dset)
            defer { H5Tclose(type) }
            return H5Tget_class(type) == H5T_STRING
        }
    }

    /// One read of `rows` (sorted, distinct) of a dataset into `buffer`, in file order.
    private func readSelected(_ name: String, shape: [Int], rows: [Int], memoryType: hid_t, into buffer: UnsafeMutableRawPointer) throws {
        guard let last = rows.last, rows[0] >= 0, last < (shape.first ?? 0) else {
            throw HDF5Error(file: path, object: name, operation: "read", detail: "rows outside shape \(shape)")
        }
        let dset = try openDataset(name)
        let fileSpace = H5Dget_space(dset)
        var count = shape.map { hsize_t($0) }
        let memorySpace = H5Screate_simple(Int32(shape.count), [hsize_t(rows.count)] + count.dropFirst(), nil)
        defer { H5Sclose(memorySpace); H5Sclose(fileSpace); H5Dclose(dset) }
        var start = [hsize_t](repeating: 0, count: shape.count), i = 0, first = true
        while i < rows.count {   // runs of consecutive rows, one hyperslab each
            var j = i + 1
            while j < rows.count && rows[j] == rows[j - 1] + 1 { j += 1 }
            (start[0], count[0]) = (hsize_t(rows[i]), hsize_t(j - i))
            H5Sselect_hyperslab(fileSpace, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, nil, count, nil)
            (first, i) = (false, j)
        }
        guard H5Dread(dset, memoryType, memorySpace, fileSpace, shim_H5P_DEFAULT(), buffer) >= 0 else {
            throw Self.error(path, name, "read (checksum mismatch, damaged data or a missing shard)")
        }
    }

    /// Variable-length UTF-8 strings.
    private static func stringType() -> hid_t {
        let type = H5Tcopy(shim_H5T_C_S1())
        H5Tset_size(type, shim_H5T_VARIABLE())
        H5Tset_cset(type, H5T_CSET_UTF8)
        return type
    }

    /// `body` with a C array of `values` as NUL-terminated UTF-8.
    private static func withCStrings<R>(_ values: [String], _ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        let copies = values.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        return try copies.withUnsafeBytes { try body($0.baseAddress!) }
    }

    // MARK: Attributes

    /// Sets a string attribute on the object at `object` ("/" for the file): a
    /// variable-length UTF-8 string, which h5py reads as `str`.
    public func setAttribute(_ name: String, _ value: String, on object: String = "/") throws {
        try HDF5Lock.locked {
            let type = Self.stringType()
            defer { H5Tclose(type) }
            try writeAttribute(name, on: object, type: type, space: H5Screate(H5S_SCALAR)) { attr in
                value.withCString { c in
                    var p: UnsafePointer<CChar>? = c
                    return H5Awrite(attr, type, &p)
                }
            }
        }
    }

    /// Sets a 1-D attribute of variable-length UTF-8 strings (h5py: an array of `str`).
    public func setAttribute(_ name: String, _ values: [String], on object: String = "/") throws {
        try HDF5Lock.locked {
            let type = Self.stringType()
            defer { H5Tclose(type) }
            let space = values.isEmpty ? H5Screate(H5S_NULL) : H5Screate_simple(1, [hsize_t(values.count)], nil)
            try writeAttribute(name, on: object, type: type, space: space) { attr in
                values.isEmpty ? 0 : Self.withCStrings(values) { H5Awrite(attr, type, $0) }
            }
        }
    }

    /// A string-array attribute, or nil when absent.
    public func stringArrayAttribute(_ name: String, on object: String = "/") throws -> [String]? {
        try HDF5Lock.locked {
            guard let attr = try openAttribute(name, on: object) else { return nil }
            defer { H5Aclose(attr) }
            let space = H5Aget_space(attr)
            defer { H5Sclose(space) }
            let count = Int(H5Sget_simple_extent_npoints(space))
            guard count > 0 else { return [] }
            let type = Self.stringType()
            defer { H5Tclose(type) }
            var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
            guard pointers.withUnsafeMutableBytes({ H5Aread(attr, type, $0.baseAddress) }) >= 0 else {
                throw Self.error(path, "\(object) @\(name)", "read attribute (not an array of strings)")
            }
            defer { pointers.withUnsafeMutableBytes { _ = H5Dvlen_reclaim(type, space, shim_H5P_DEFAULT(), $0.baseAddress) } }
            return pointers.map { $0.map { String(cString: $0) } ?? "" }
        }
    }

    /// Sets a numeric scalar attribute.
    public func setAttribute<T: HDF5Element>(_ name: String, _ value: T, on object: String = "/") throws {
        try HDF5Lock.locked {
            try writeAttribute(name, on: object, type: T.nativeType, space: H5Screate(H5S_SCALAR)) { attr in
                withUnsafePointer(to: value) { H5Awrite(attr, T.nativeType, UnsafeRawPointer($0)) }
            }
        }
    }

    /// A string attribute, or nil when absent.
    public func stringAttribute(_ name: String, on object: String = "/") throws -> String? {
        return try HDF5Lock.locked {
            guard let attr = try openAttribute(name, on: object) else { return nil }
            defer { H5Aclose(attr) }
            try checkScalar(attr, "\(object) @\(name)")
            let type = H5Aget_type(attr)
            defer { H5Tclose(type) }
            guard H5Tget_class(type) == H5T_STRING else {
                throw HDF5Error(file: path, object: "\(object) @\(name)", operation: "read attribute", detail: "not a string")
            }
            if H5Tis_variable_str(type) > 0 {   // written by h5py and other tools
                var p: UnsafeMutablePointer<CChar>?
                guard H5Aread(attr, type, &p) >= 0, let p else { throw Self.error(path, "\(object) @\(name)", "read attribute") }
                defer { H5free_memory(p) }
                return String(cString: p)
            }
            let size = H5Tget_size(type)
            var bytes = [UInt8](repeating: 0, count: size + 1)
            guard H5Aread(attr, type, &bytes) >= 0 else { throw Self.error(path, "\(object) @\(name)", "read attribute") }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// A numeric scalar attribute (converted to `T`), or nil when absent.
    public func attribute<T: HDF5Element>(_ name: String, on object: String = "/", as: T.Type = T.self) throws -> T? {
        return try HDF5Lock.locked {
            guard let attr = try openAttribute(name, on: object) else { return nil }
            defer { H5Aclose(attr) }
            try checkScalar(attr, "\(object) @\(name)")
            var value = [T](unsafeUninitializedCapacity: 1) { _, n in n = 1 }
            let status = value.withUnsafeMutableBufferPointer { H5Aread(attr, T.nativeType, $0.baseAddress) }
            guard status >= 0 else { throw Self.error(path, "\(object) @\(name)", "read attribute") }
            return value[0]
        }
    }

    /// Names of the attributes on `object`.
    public func attributeNames(on object: String = "/") -> [String] {
        HDF5Lock.locked {
            var names: [String] = []
            let count = H5Aget_num_attrs_by_name(object)
            for i in 0..<max(count, 0) {
                let n = H5Aget_name_by_idx(id, object, H5_INDEX_NAME, H5_ITER_INC, hsize_t(i), nil, 0, shim_H5P_DEFAULT())
                var buffer = [CChar](repeating: 0, count: n + 1)
                H5Aget_name_by_idx(id, object, H5_INDEX_NAME, H5_ITER_INC, hsize_t(i), &buffer, buffer.count, shim_H5P_DEFAULT())
                names.append(String(cString: buffer))
            }
            return names
        }
    }

    // MARK: Helpers

    private func H5Aget_num_attrs_by_name(_ object: String) -> Int {
        var info = H5O_info_t()
        guard H5Oget_info_by_name2(id, object, &info, UInt32(H5O_INFO_NUM_ATTRS), shim_H5P_DEFAULT()) >= 0 else { return 0 }
        return Int(info.num_attrs)
    }

    /// Throws unless the attribute holds one value (a read of more would overrun the buffer).
    private func checkScalar(_ attr: hid_t, _ object: String) throws {
        let space = H5Aget_space(attr)
        defer { H5Sclose(space) }
        let count = H5Sget_simple_extent_npoints(space)
        guard count == 1 else {
            throw HDF5Error(file: path, object: object, operation: "read attribute", detail: "holds \(count) values, not one")
        }
    }

    private func openDataset(_ name: String) throws -> hid_t {
        guard exists(name) else { throw HDF5Error(file: path, object: name, operation: "open dataset", detail: "no such dataset") }
        let dset = H5Dopen2(id, name, shim_H5P_DEFAULT())
        guard dset >= 0 else { throw Self.error(path, name, "open dataset") }
        return dset
    }

    private func openAttribute(_ name: String, on object: String) throws -> hid_t? {
        guard object == "/" || exists(object) else {
            throw HDF5Error(file: path, object: object, operation: "read attribute \(name)", detail: "no such object")
        }
        guard H5Aexists_by_name(id, object, name, shim_H5P_DEFAULT()) > 0 else { return nil }
        let attr = H5Aopen_by_name(id, object, name, shim_H5P_DEFAULT(), shim_H5P_DEFAULT())
        guard attr >= 0 else { throw Self.error(path, "\(object) @\(name)", "open attribute") }
        return attr
    }

    private func writeAttribute(_ name: String, on object: String, type: hid_t, space: hid_t,
                                _ write: (hid_t) -> herr_t) throws {
        defer { H5Sclose(space) }
        if H5Aexists_by_name(id, object, name, shim_H5P_DEFAULT()) > 0 {
            H5Adelete_by_name(id, object, name, shim_H5P_DEFAULT())
        }
        let attr = H5Acreate_by_name(id, object, name, type, space, shim_H5P_DEFAULT(), shim_H5P_DEFAULT(), shim_H5P_DEFAULT())
        guard attr >= 0 else { throw Self.error(path, "\(object) @\(name)", "create attribute") }
        defer { H5Aclose(attr) }
        guard write(attr) >= 0 else { throw Self.error(path, "\(object) @\(name)", "write attribute") }
    }

    private func dataspace(_ shape: [Int], _ name: String) throws -> hid_t {
        let space = shape.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(Int32(shape.count), shape.map { hsize_t($0) }, nil)
        guard space >= 0 else { throw Self.error(path, name, "create dataspace \(shape)") }
        return space
    }

    private func linkCreationProperties() -> hid_t {
        let lcpl = H5Pcreate(shim_H5P_LINK_CREATE())
        H5Pset_create_intermediate_group(lcpl, 1)
        return lcpl
    }

    /// HDF5 prints its error stack to stderr by default; we report errors ourselves.
    /// The first call also turns off HDF5's exit handler, before the library starts:
    /// it flushes files still open at exit, and a file whose close failed (a full disk)
    /// made it crash the process on its way out. Every file is closed explicitly.
    private static func silenceErrorPrinting() {
        _ = libraryStart
        H5Eset_auto2(shim_H5E_DEFAULT(), nil, nil)
    }

    private static let libraryStart: Void = { H5dont_atexit() }()

    /// An error for `operation` on `object`, with the innermost message of HDF5's error stack.
    private static func error(_ file: String, _ object: String, _ operation: String) -> HDF5Error {
        final class Message { var text = "" }
        let message = Message()
        _ = withExtendedLifetime(message) {
            H5Ewalk2(shim_H5E_DEFAULT(), H5E_WALK_UPWARD, { _, e, context in
                if let e, let desc = e.pointee.desc {
                    let m = Unmanaged<Message>.fromOpaque(context!).takeUnretainedValue()
                    if m.text.isEmpty { m.text = String(cString: desc) }
                }
                return 0
            }, Unmanaged.passUnretained(message).toOpaque())
        }
        H5Eclear2(shim_H5E_DEFAULT())
        // A failed system call reads "file write failed: time = ..., errno = 28, error message = 'No space left
        // on device', ..." over several lines: keep its first phrase and say the errno in our words.
        var detail = message.text.replacingOccurrences(of: "\n", with: " ")
        if let at = detail.range(of: "errno = "), let code = Int32(detail[at.upperBound...].prefix(while: \.isNumber)) {
            detail = String(detail.prefix { $0 != "," && $0 != ":" }) + ": " + FileSystem.cause(errno: code)
        }
        return HDF5Error(file: file, object: object, operation: operation, detail: detail)
    }
}
