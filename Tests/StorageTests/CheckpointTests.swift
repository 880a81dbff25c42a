import Distributed
import Foundation
import Storage
import Testing
import TestSupport

/// Tensors backed by memory the test owns.
final class Buffers {
    let keys = ["params/encoder/conv_in/weight", "params/encoder/conv_in/bias", "optim/m/encoder/conv_in/weight"]
    let shapes = [[4, 1, 3, 3], [4], [4, 1, 3, 3]]
    let memory: [UnsafeMutableBufferPointer<Float>]

    init(seed: Float) {
        memory = shapes.enumerated().map { i, s in
            let m = UnsafeMutableBufferPointer<Float>.allocate(capacity: s.reduce(1, *))
            for j in m.indices { m[j] = Float(j) * 0.5 + seed + Float(i) }
            return m
        }
    }
    deinit { memory.forEach { $0.deallocate() } }

    var storage: [[Float]] { memory.map(Array.init) }
    func tensors() -> [CheckpointTensor] {
        (0..<keys.count).map { CheckpointTensor(key: keys[$0], shape: shapes[$0], pointer: memory[$0].baseAddress!) }
    }
}

func attributes(step: Int) -> CheckpointAttributes {
    var cursor = TrainingCursor()
    (cursor.step, cursor.epoch, cursor.samplesConsumed) = (step, step / 10, Int64(step * 64))
    return CheckpointAttributes(kind: "test-model", cursor: cursor, worldSize: 1, seed: 3, effectiveLR: 1e-4, config: "seed: 3\n")
}

@Suite("Checkpoints (one rank)")
struct CheckpointTests {
    let run = temporaryDirectory().appendingPathComponent("run").path

    func store(_ messages: Messages = Messages()) -> CheckpointStore {
        CheckpointStore(runDirectory: run, communicator: SingleProcess(), say: { messages.lines.append($0) })
    }
    final class Messages { var lines: [String] = [] }

    func saveSteps(_ steps: [Int], keep: Int = 5) throws {
        for s in steps {
            let b = Buffers(seed: Float(s))
            try store().save(step: s, tensors: b.tensors(), attributes: attributes(step: s), keep: keep)
        }
    }

    func newestStepRestored(_ messages: Messages = Messages()) throws -> (TrainingCursor?, Buffers) {
        let b = Buffers(seed: -100)
        let cursor = try store(messages).restore("auto", tensors: b.tensors(), expectedKind: "test-model")
        return (cursor, b)
    }

    @Test("save then restore gives the tensors and cursor back; latest names the step; old ones are pruned")
    func roundTrip() throws {
        try saveSteps([2, 4, 6], keep: 2)
        #expect(try String(contentsOfFile: run + "/latest", encoding: .utf8) == "step-00000006\n")
        #expect(CheckpointStore.stepDirectories(run).map(\.name) == ["step-00000006", "step-00000004"])
        let (cursor, b) = try newestStepRestored()
        #expect(cursor?.step == 6 && cursor?.epoch == 0 && cursor?.samplesConsumed == 384)
        #expect(b.storage == Buffers(seed: 6).storage)
        #expect(try store().restore("none", tensors: b.tensors(), expectedKind: "test-model") == nil)
    }

    @Test("h5py reads every tensor through index.h5's virtual datasets, and the attributes")
    func readableByH5py() throws {
        try saveSteps([3])
        let out = try python("""
            import h5py; f = h5py.File('\(run)/step-00000003/index.h5')
            w = f['params/encoder/conv_in/weight'][...]
            print(w.shape, float(w[1, 0, 2, 2]), f.attrs['step'], f.attrs['format'], f.attrs['model'], f.attrs['world_size'])
            """)
        #expect(out == "(4, 1, 3, 3) 11.5 3 swiftldm-checkpoint test-model 1")
    }

    @Test("a damaged newest checkpoint is skipped with the reason, and the previous one loads", arguments: [
        "flip a byte", "truncate", "delete the shard", "delete the index",
    ])
    func fallsBack(_ damage: String) throws {
        try saveSteps([2, 4])
        let shard = run + "/step-00000004/" + CheckpointStore.shardName(rank: 0, of: 1)
        switch damage {
        case "flip a byte":
            var bytes = try Data(contentsOf: URL(fileURLWithPath: shard))
            bytes[bytes.count / 2] ^= 0xFF
            try bytes.write(to: URL(fileURLWithPath: shard))
        case "truncate":
            let bytes = try Data(contentsOf: URL(fileURLWithPath: shard))
            try bytes.prefix(bytes.count - 100).write(to: URL(fileURLWithPath: shard))
        case "delete the shard":
            try FileManager.default.removeItem(atPath: shard)
        default:
            try FileManager.default.removeItem(atPath: run + "/step-00000004/index.h5")
        }
        let messages = Messages()
        let (cursor, b) = try newestStepRestored(messages)
        #expect(cursor?.step == 2)
        #expect(b.storage == Buffers(seed: 2).storage)
        #expect(messages.lines.contains { $0.contains("skipping") && $0.contains("step-00000004") }, "\(messages.lines)")
    }

    @Test("a stale .partial directory is removed and never loaded")
    func stalePartial() throws {
        try saveSteps([2])
        try FileManager.default.createDirectory(atPath: run + "/step-00000009.partial", withIntermediateDirectories: true)
        let messages = Messages()
        let (cursor, _) = try newestStepRestored(messages)
        #expect(cursor?.step == 2)
        #expect(!FileManager.default.fileExists(atPath: run + "/step-00000009.partial"))
        #expect(messages.lines.contains { $0.contains("step-00000009.partial") })
    }

    @Test("another model shape or kind fails naming the tensor and both shapes")
    func mismatch() throws {
        try saveSteps([1])
        let other = UnsafeMutablePointer<Float>.allocate(capacity: 8)
        defer { other.deallocate() }
        let wrong = [CheckpointTensor(key: "params/encoder/conv_in/weight", shape: [8, 1, 1, 1], pointer: other)]
        let e = #expect(throws: CheckpointError.self) { try store().restore("auto", tensors: wrong, expectedKind: "test-model") }
        #expect(e?.description.contains("'params/encoder/conv_in/weight' has shape [4, 1, 3, 3], this model needs [8, 1, 1, 1]") == true)
        let kind = #expect(throws: CheckpointError.self) { try store().restore("auto", tensors: Buffers(seed: 0).tensors(), expectedKind: "unet") }
        #expect(kind?.description.contains("'test-model'") == true)
        let path = #expect(throws: CheckpointError.self) { try store().restore(run + "/step-00000077", tensors: Buffers(seed: 0).tensors(), expectedKind: "test-model") }
        #expect(path?.description.contains("step-00000077") == true)
    }
}
