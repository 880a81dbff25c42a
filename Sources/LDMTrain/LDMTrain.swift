import ArgumentParser

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

/// A stage whose issue has not landed yet: one clear line and a non-zero exit.
struct NotBuiltYet: Error, CustomStringConvertible {
    let command: String
    let issue: Int
    var description: String { "'ldm-train \(command)' is not built yet (tracked in issue \(issue))" }
}
