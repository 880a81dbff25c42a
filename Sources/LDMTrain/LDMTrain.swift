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
        subcommands: [PipelineCommand.self, Prepare.self, Autoencoder.self, Encode.self, Diffusion.self, Sample.self,
                      Inspect.self, Bench.self],
        defaultSubcommand: PipelineCommand.self)
}

/// Runs `body` with this process's communicator (MPI under mpirun, else a world of
/// one). Errors: rank 0 reports them (through ArgumentParser: one line, exit 1);
/// another rank stays silent for a moment, since an error every rank hit ends the
/// job from rank 0, and only speaks ("rank r: ...") when the job is still running,
/// i.e. when the failure is its own.
func distributed(_ body: (Communicator) throws -> Void) throws {
    let comm = try makeCommunicator()
    do {
        try body(comm)
    } catch {
        if comm.rank == 0 { throw error }
        Thread.sleep(forTimeInterval: 3)
        FileHandle.standardError.write(Data("Error: rank \(comm.rank): \(error)\n".utf8))
        exit(1)
    }
    (comm as? MPICommunicator)?.finalize()
}
