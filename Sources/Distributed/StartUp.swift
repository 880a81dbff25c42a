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

/// What the launcher that started this process says about its world, read from the
/// variables each launcher sets: OpenMPI's mpirun (`OMPI_COMM_WORLD_*`), MPICH's
/// Hydra and PMI-1/PMI-2 launchers (`PMI_SIZE`, `PMI_RANK`), and Slurm's srun
/// (`SLURM_STEP_NUM_TASKS`, `SLURM_PROCID`, with or without PMIx). Nothing set: a
/// process started on its own, a world of one.
public struct LaunchEnvironment: Equatable, Sendable {
    /// The world size the launcher started, and the variable that says so.
    public var size: Int?, sizeVariable = ""
    /// This process's rank as the launcher numbers it (0 when not launched).
    public var rank = 0

    public init(_ environment: [String: String] = ProcessInfo.processInfo.environment) {
        let pairs = [("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"), ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID")]
        for (sizeName, rankName) in pairs {
            guard let text = environment[sizeName], let n = Int(text) else { continue }
            (size, sizeVariable, rank) = (n, sizeName, environment[rankName].flatMap(Int.init) ?? 0)
            return
        }
    }
}

/// The communicator of this process: MPI when a launcher started it, a world of one
/// otherwise. A process that the launcher counts in a larger world but that MPI cannot
/// join to it stops here, before it writes anything, instead of training alone.
public func makeCommunicator(_ launch: LaunchEnvironment = LaunchEnvironment()) throws -> Communicator {
    guard let expected = launch.size else { return SingleProcess() }
    let comm = try MPICommunicator()
    guard comm.size == expected else {
        throw MPIError(call: "Init", detail: "the launcher started \(expected) processes (\(launch.sizeVariable)=\(expected)), but MPI_Init joined this one "
                       + "to a world of \(comm.size): this MPI library cannot reach that launcher. Start the ranks with this MPI's own mpirun "
                       + "(Launch/mpirun-local on one machine), or with srun --mpi=pmix when OpenMPI was built with Slurm's PMIx")
    }
    return comm
}
