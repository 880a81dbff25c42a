import Foundation
import Storage
import Testing
import TestSupport

@Suite("HDF5 files")
struct HDF5Tests {
    @Test("datasets of each type round-trip with their shapes; row ranges read the right rows")
    func roundTrip() throws {
        let path = temporaryDirectory().appendingPathComponent("a.h5").path
        let floats = (0..<60).map { Float($0) * 0.5 - 3 }
        do {
            let f = try HDF5File.create(path)
            try f.write("params/encoder/conv_in/weight", shape: [3, 4, 5], floats, chunkRows: 1)
            try f.write("labels", shape: [6], [UInt8](arrayLiteral: 0, 9, 3, 255, 7, 1))
            try f.write("index", shape: [2], [Int64.max, -5])
            try f.write("class", shape: [2], [Int32(-1), 7])
            try f.write("scalar", shape: [], [2.5])
            try f.close()
        }
        let f = try HDF5File.open(path)
        #expect(try f.shape(of: "params/encoder/conv_in/weight") == [3, 4, 5])
        #expect(try f.read("params/encoder/conv_in/weight", as: Float.self).values == floats)
        #expect(try f.read("labels", as: UInt8.self).values == [0, 9, 3, 255, 7, 1])
        #expect(try f.read("index", as: Int64.self).values == [Int64.max, -5])
        #expect(try f.read("class", as: Int32.self).values == [-1, 7])
        #expect(try f.read("scalar", as: Double.self).values == [2.5])
        var rows = [Float](repeating: 0, count: 40)
        try rows.withUnsafeMutableBufferPointer { try f.read("params/encoder/conv_in/weight", rows: 1..<3, into: $0) }
        #expect(rows == Array(floats[20..<60]))
        #expect(try f.datasetNames() == ["class", "index", "labels", "params/encoder/conv_in/weight", "scalar"])
        #expect(try f.elementType(of: "labels") == "u8")
    }

    @Test("attributes: strings (also UTF-8 and YAML text), integers and doubles; absent ones are nil")
    func attributes() throws {
        let path = temporaryDirectory().appendingPathComponent("a.h5").path
        let yaml = "model:\n  ch: 64\n  ch_mult: [1, 2, 4]\nname: \"kl-f4 · fmnist\"\n"
        do {
            let f = try HDF5File.create(path)
            try f.write("x", shape: [1], [Float(1)])
            try f.setAttribute("config", yaml)
            try f.setAttribute("empty", "")
            try f.setAttribute("step", Int64(1234))
            try f.setAttribute("scale_factor", 0.1875)
            try f.setAttribute("kind", "tensor", on: "x")
            try f.close()
        }
        let f = try HDF5File.open(path)
        #expect(try f.stringAttribute("config") == yaml)
        #expect(try f.stringAttribute("empty") == "")
        #expect(try f.attribute("step", as: Int64.self) == 1234)
        #expect(try f.attribute("scale_factor", as: Double.self) == 0.1875)
        #expect(try f.stringAttribute("kind", on: "x") == "tensor")
        #expect(try f.stringAttribute("missing") == nil)
        #expect(Set(f.attributeNames()) == ["config", "empty", "step", "scale_factor"])
        #expect(try python("import h5py; f = h5py.File('\(path)'); print(f.attrs['step'], f.attrs['scale_factor'], f['x'].attrs['kind'])")
                == "1234 0.1875 tensor")
    }

    @Test("a virtual dataset stitches rows from two shard files; h5py reads it whole")
    func virtualDatasets() throws {
        let dir = temporaryDirectory()
        let a = (0..<12).map(Float.init), b = (12..<20).map(Float.init)
        for (name, values, rows) in [("shard-0.h5", a, 3), ("shard-1.h5", b, 2)] {
            let f = try HDF5File.create(dir.appendingPathComponent(name).path)
            try f.write("mean", shape: [rows, 2, 2], values)
            try f.close()
        }
        let index = dir.appendingPathComponent("index.h5").path
        do {
            let f = try HDF5File.create(index)
            try f.writeVirtual("mean", shape: [5, 2, 2], type: Float.self, sources: [
                VirtualSource(file: "shard-0.h5", dataset: "mean", rows: 0..<3),
                VirtualSource(file: "shard-1.h5", dataset: "mean", rows: 3..<5),
            ])
            try f.close()
        }
        let f = try HDF5File.open(index)
        #expect(try f.read("mean", as: Float.self).values == a + b)
        #expect(try f.virtualSources(of: "mean").map(\.file) == ["shard-0.h5", "shard-1.h5"])
        let fromPython = try python("""
            import h5py, os; os.chdir('/'); f = h5py.File('\(index)'); m = f['mean'][...]
            print(m.shape, float(m.sum()), float(m[4, 1, 1]))
            """)
        #expect(fromPython == "(5, 2, 2) 190.0 19.0")
    }

    @Test("a flipped byte inside a chunk is caught by the Fletcher32 checksum and named")
    func checksum() throws {
        let path = temporaryDirectory().appendingPathComponent("a.h5").path
        let values = (0..<4096).map { Float($0) + 0.25 }
        do {
            let f = try HDF5File.create(path)
            try f.write("weights", shape: [4096], values)
            try f.close()
        }
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let needle = values[1000..<1004].withUnsafeBytes { Data($0) }
        let at = try #require(bytes.range(of: needle))
        bytes[at.lowerBound + 1] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: path))
        let f = try HDF5File.open(path)
        let error = #expect(throws: HDF5Error.self) { try f.read("weights", as: Float.self) }
        #expect(error?.description.contains("weights") == true)
        #expect(error?.description.contains(path) == true)
    }

    @Test("missing files, missing datasets, wrong element types and non-HDF5 files give errors naming them")
    func errors() throws {
        let dir = temporaryDirectory()
        let missing = #expect(throws: HDF5Error.self) { try HDF5File.open(dir.appendingPathComponent("nope.h5").path) }
        #expect(missing?.description.contains("nope.h5") == true)
        let text = dir.appendingPathComponent("text.h5").path
        try "not hdf5".write(toFile: text, atomically: true, encoding: .utf8)
        let notHDF5 = #expect(throws: HDF5Error.self) { try HDF5File.open(text) }
        #expect(notHDF5?.description.contains("text.h5") == true)
        let path = dir.appendingPathComponent("a.h5").path
        let f = try HDF5File.create(path)
        try f.write("labels", shape: [2], [UInt8(1), 2])
        let absent = #expect(throws: HDF5Error.self) { try f.read("images", as: UInt8.self) }
        #expect(absent?.description.contains("images") == true)
        let wrongType = #expect(throws: HDF5Error.self) { try f.read("labels", as: Float.self) }
        #expect(wrongType?.description.contains("u8") == true)
    }

    @Test("a file another process locks for a moment opens once it is free; a longer lock is named as one")
    func lockConflicts() throws {
        let path = temporaryDirectory().appendingPathComponent("a.h5").path
        do {
            let f = try HDF5File.create(path)
            try f.write("x", shape: [2], [Float(1), 2])
            try f.close()
        }
        /// Holds an exclusive flock (as HDF5 does for a writer) for `seconds`, returning once it is taken.
        func holdLock(seconds: Double) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            p.arguments = ["-c", "import fcntl, time; f = open('\(path)', 'rb'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(\(seconds))"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            _ = out.fileHandleForReading.availableData   // blocks until "locked"
            return p
        }
        let brief = try holdLock(seconds: 0.3)
        #expect(try HDF5File.open(path).read("x", as: Float.self).values == [1, 2])
        brief.waitUntilExit()

        let long = try holdLock(seconds: 30)
        defer { kill(long.processIdentifier, SIGKILL); long.waitUntilExit() }   // SIGTERM may be blocked in children
        let error = #expect(throws: HDF5Error.self) { try HDF5File.open(path) }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("another process holds the file open") == true)
    }
}
