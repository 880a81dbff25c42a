import ArgumentParser
import Distributed
import Foundation

/// `ldm-train`: trains a two-stage Latent Diffusion Model. With no subcommand it
/// runs the whole pipeline with the default config and data.
@main
struct LDMTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldm-train",
        abstract: "Train a two-stage Latent Diffusion Model (autoencoder, then latent diffusion) on CPU ranks.",
        discussion: "Start N ranks on this machine with Launch/mpirun-local -n N ldm-train ...",
        subcommands: [PipelineCommand.self, Prepare.self, Autoencoder.self, Encode.self, ContextEncodersCommand.self, TextAutoencoderCommand.self, EncodeText.self, Diffusion.self, Sample.self,
                      Evaluate.self, Inspect.self, Export.self, Plot.self, Bench.self],
        defaultSubcommand: PipelineCommand.self)

    /// Errors become one line and exit status 1. Under mpirun only rank 0 reports at
    /// once; another rank waits a moment, since an error every rank hits (a bad
    /// config, a missing file) ends the job from rank 0 first, and speaks ("rank r:
    /// ...") only when the job is still running, i.e. when the failure is its own.
    static func main() {
        Preemption.start()   // before MPI or any library starts a thread: see Preemption
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch is Preempted {   // every rank saved and said so; all stop with the status that means "run again"
            Foundation.exit(Preemption.exitStatus)
        } catch {
            let rank = LaunchEnvironment().rank
            if rank == 0 { exit(withError: error) }
            Thread.sleep(forTimeInterval: 3)
            FileHandle.standardError.write(Data("Error: rank \(rank): \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}

/// Runs `body` with this process's communicator (MPI under mpirun, else a world of
/// one), and leaves MPI when it is done, or when every rank stopped for preemption.
func distributed(_ body: (Communicator) throws -> Void) throws {
    let comm = try makeCommunicator()
    do { try body(comm) } catch let stop as Preempted {
        (comm as? MPICommunicator)?.finalize()
        throw stop
    }
    (comm as? MPICommunicator)?.finalize()
}
