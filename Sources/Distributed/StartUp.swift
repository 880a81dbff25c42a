import Foundation

/// Start of a data-parallel run: every rank takes rank 0's values, then the ranks
/// compare fingerprints of what must agree (parameter names and shapes, bucket
/// layout, config, step); a mismatch stops every rank with the same message.
public enum StartUp {
    /// Copies rank 0's `buffers` to every rank.
    public static func broadcastFromRoot(_ buffers: [UnsafeMutableBufferPointer<Float>], _ comm: Communicator) throws {
        for b in buffers { try comm.broadcast(UnsafeMutableRawBufferPointer(b), root: 0) }
    }

    /// Checks that each named component hashes the same on every rank.
    public static func checkAgreement(_ components: [(name: String, value: String)], _ comm: Communicator) throws {
        let mine = components.map { fnv1a($0.value) }
        let all = try comm.allGather(values: mine)
        for r in 1..<comm.size {
            for (i, component) in components.enumerated() where all[r * components.count + i] != all[i] {
                throw StartUpMismatch(component: component.name, rank: r)
            }
        }
    }

    /// FNV-1a, 64 bits: a stable hash (Swift's Hasher is seeded per process).
    public static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in s.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return h
    }
}

public struct StartUpMismatch: Error, CustomStringConvertible {
    public let component: String
    public let rank: Int
    public var description: String {
        "ranks disagree at start-up: rank \(rank)'s \(component) differs from rank 0's (different code, config or checkpoint on that rank?)"
    }
}

/// The communicator of this process: MPI under mpirun, a world of one otherwise.
public func makeCommunicator() throws -> Communicator {
    MPICommunicator.launchedByMPI ? try MPICommunicator() : SingleProcess()
}
