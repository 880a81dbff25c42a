import ArgumentParser
import Benchmarks
import Distributed
import Foundation
import TensorEngine
import Training

extension Precision: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time the engine: every conv/matmul shape of the reference models (ops), or whole training steps.",
        discussion: "Launch/bench-vs-pytorch runs 'bench ops' beside PyTorch on the same shapes and prints the ratios.")

    enum Target: String, ExpressibleByArgument, CaseIterable { case ops, autoencoder, unet }

    @Argument(help: "ops, autoencoder or unet.") var target: Target
    @Option(name: .customLong("batch-size"), help: "Batch size of the shapes.") var batchSize = 64
    @Option(help: "Model steps to time (autoencoder, unet; per block with --scaling-rounds).") var steps = 10
    @Option(name: .customLong("scaling-rounds"),
            help: "autoencoder, unet under mpirun: alternate this many rounds of rank 0 alone, every rank without exchange, and every rank data-parallel, and report the scaling.")
    var scalingRounds: Int?
    @Option(help: "Threads for the engine and oneDNN (default: cores ÷ local ranks).") var threads: Int?
    @Option(help: "ops: autoencoder, unet or all.") var model = "all"
    @Option(help: "ops: seconds of measuring per shape.") var seconds = 0.5
    @Option(help: "ops: only shapes whose name contains this text.") var filter: String?
    @Option(help: "fp32 or bf16: what the convolutions and matrix products compute in (default: the config's autoencoder.training.precision, diffusion.training.precision, or engine.precision for ops).")
    var precision: Precision?
    @Flag(help: "autoencoder, unet: profile one step's memory instead of timing steps: what is alive before it, the peak and where on the tape it falls, and what the forward keeps for the backward, by op.")
    var memory = false
    @Flag(help: "One JSON object per line.") var json = false
    @Flag(help: "ops: print the shapes as JSON lines without timing them.") var list = false

    func validate() throws {
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive, got \(batchSize)") }
        guard steps > 0 else { throw ValidationError("--steps must be positive, got \(steps)") }
        guard (scalingRounds ?? 1) > 0 else { throw ValidationError("--scaling-rounds must be positive, got \(scalingRounds!)") }
        guard (threads ?? 1) > 0 else { throw ValidationError("--threads must be positive, got \(threads!)") }
        guard ["autoencoder", "unet", "all"].contains(model) else {
            throw ValidationError("--model must be autoencoder, unet or all, got '\(model)'")
        }
    }

    @Option(help: "Config whose model (autoencoder, unet) and engine settings are timed (default: the built-in recipe).") var config: String?
    @Option(name: .customLong("set"), help: "Config override key.path=value (repeatable), e.g. engine.winograd=off.") var overrides: [String] = []

    func run() throws {
        if let threads { Threads.configure(threads) } else { Threads.configure(Threads.count) }
        let loaded = try ConfigLoader.load(config, overrides: overrides)
        if let reason = precision?.unsupportedReason { throw ValidationError("--precision: \(reason)") }
        let configured: Precision = switch target {
        case .ops: loaded.engine.precision
        case .autoencoder: loaded.autoencoder.training.precision
        case .unet: loaded.diffusion.training.precision
        }
        Engine.configure(loaded.engine.with(precision: precision ?? configured))
        switch target {
        case .ops: try runOps()
        case .autoencoder, .unet:
            try loaded.distributed.validate()
            try distributed { comm in
                if memory {
                    let profile = try MemoryProfile.run(target.rawValue, config: loaded, batch: batchSize, communicator: comm)
                    if comm.isRoot { try report(profile) }
                } else if let rounds = scalingRounds {
                    let timing = try ModelBenchmark.scaling(target.rawValue, config: loaded, batch: batchSize, steps: steps, rounds: rounds,
                                                            communicator: comm)
                    if comm.isRoot { try report(timing) }
                } else {
                    let timing = try ModelBenchmark.run(target.rawValue, config: loaded, batch: batchSize, steps: steps, communicator: comm)
                    if comm.isRoot { try report(timing) }
                }
            }
        }
    }

    private func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    private func report(_ t: ScalingTiming) throws {
        if json {
            try printJSON(t)
        } else {
            print(String(format: "bench %@ scaling: batch %d per rank, %d rounds of %d steps per block: rank 0 alone %.1f img/s, "
                         + "%d ranks data-parallel %.1f img/s (%.2f×, exposed all-reduce %.1f ms of %.1f ms), "
                         + "%d ranks without exchange %.1f img/s (%.2f×; %.2f× at the slowest rank's speed)",
                         t.bench, t.batchSize, t.rounds, t.stepsPerBlock, t.soloImgPerS, t.ranks, t.parallelImgPerS, t.scaling,
                         t.exposedCommMs, t.parallelStepMs, t.ranks, t.independentImgPerS, t.ceiling, t.lockstepCeiling))
        }
    }

    private func report(_ p: MemoryProfile) throws {
        guard !json else { return try printJSON(p) }
        print(String(format: "memory %@: batch %d, %@, Winograd %@ (input %@), tensor memory in MiB", p.bench, p.batchSize,
                     p.engine.precision.rawValue, p.engine.winograd.rawValue, p.engine.winogradInput.rawValue))
        print(String(format: "  before the step  %7.0f  parameters, gradients, optimizer state, batch", p.beforeStepMib))
        print(String(format: "  peak             %7.0f  %@, op %d of %d on the tape: %@", p.peakLiveMib, p.peakPhase.rawValue,
                     p.peakOpIndex + 1, p.tapeLength, p.peakOp))
        print(String(format: "  kept by forward  %7.0f  net, by the op that recorded it:", p.keptByForwardMib))
        for op in p.keptByOp where abs(op.mib) >= 0.5 {
            print("    " + op.op.padding(toLength: 20, withPad: " ", startingAt: 0) + String(format: "%7.0f  (%d ops)", op.mib, op.count))
        }
        print(String(format: "  pool cache       %7.0f  free buffers kept for reuse after the step; %d mapped and %d returned during it",
                     p.cachedMib, p.mappedDuringStep, p.unmappedDuringStep))
        print(String(format: "  peak RSS         %7.0f  the process (code, oneDNN kernels, pool cache included); %.0f before the first step",
                     p.peakRssMib, p.residentAtStartMib))
    }

    private func report(_ t: ModelTiming) throws {
        if json {
            try printJSON(t)
        } else {
            print(String(format: "bench %@: batch %d × %d rank(s), %d thread(s), %@, Winograd %@: %.1f ms/step, %.1f img/s (all ranks), "
                         + "peak RSS %.0f MiB, all-reduce waited on after backward %.1f ms (%.1f%%, overlap %@)",
                         t.bench, t.batchSize, t.ranks, t.threads, t.engine.precision.rawValue, t.engine.winograd.rawValue, t.stepMs, t.imgPerS, t.peakRssMib,
                         t.exposedCommMs, 100 * t.exposedCommMs / t.stepMs, t.overlap ? "on" : "off"))
        }
    }

    private func runOps() throws {
        var shapes: [OpShape] = []
        if model != "unet" { shapes += ReferenceShapes.autoencoder(batch: batchSize) }
        if model != "autoencoder" { shapes += ReferenceShapes.unet(batch: batchSize) }
        if let filter { shapes = shapes.filter { $0.name.localizedCaseInsensitiveContains(filter) } }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        if list {
            for s in shapes { print(String(decoding: try encoder.encode(s), as: UTF8.self)) }
            return
        }
        if !json {
            print("bench ops: forward + backward, batch \(batchSize), \(Threads.count) thread(s), \(Engine.options.precision.rawValue), Winograd "
                  + "\(Engine.options.winograd.rawValue), oneDNN conv layout \(Engine.options.convLayout.rawValue), median of repeats")
            print(pad("model", 12) + pad("op", 46) + pad("shape", 34) + pad("ms", 10) + "rate")
        }
        let timings = OpBenchmark.run(shapes, seconds: seconds) { t in
            if json {
                print(String(decoding: (try? encoder.encode(t)) ?? Data(), as: UTF8.self))
            } else {
                let rate = t.gflops.map { String(format: "%7.1f GFLOP/s", $0) } ?? String(format: "%7.1f GB/s", t.gbps ?? 0)
                print(pad(t.model, 12) + pad(t.name, 46) + pad(t.shape, 34) + pad(String(format: "%.3f", t.ms), 10) + rate)
            }
            fflush(stdout)
        }
        if !json {
            for m in Set(shapes.map(\.model)).sorted() {
                let rows = zip(shapes, timings).filter { $0.0.model == m }
                let ms = rows.map { Double($0.0.count) * $0.1.ms }.reduce(0, +)
                let flops = rows.map { Double($0.0.count) * $0.0.trainingFlops }.reduce(0, +)
                print(String(format: "%@: these ops take %.1f ms per step of %d images (%.2f GFLOP/image, %.0f GFLOP/s)",
                             m, ms, batchSize, flops / Double(batchSize) / 1e9, flops / (ms * 1e6)))
            }
        }
    }

    private func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
    }
}
