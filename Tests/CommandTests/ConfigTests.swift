import Foundation
import NN
import TensorEngine
import Testing
import TestSupport
import Training

/// The package root, for the configs in Launch/configs.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

func writeTemporary(_ text: String, name: String = "config.yaml") -> String {
    let dir = testScratch.appendingPathComponent("config-\(UUID().uuidString.prefix(8))")
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent(name).path
    try! text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite("Configs")
struct ConfigTests {
    @Test("fmnist.yaml holds the reference autoencoder kl-f4-fmnist")
    func reference() throws {
        let c = try ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/fmnist.yaml").path)
        let m = c.autoencoder.model
        #expect(m.inChannels == 1 && m.outCh == 1 && m.resolution == 32 && m.ch == 64 && m.chMult == [1, 2, 4])
        #expect(m.numResBlocks == 1 && m.attnResolutions.isEmpty && m.zChannels == 4 && m.doubleZ && m.embedDim == 4)
        // The recipe trains with L2 (it optimises PSNR, the measure); the default stays CompVis's L1.
        #expect(c.autoencoder.loss.klWeight == 1e-6 && c.autoencoder.loss.reconstruction == "l2")
        #expect(Config().autoencoder.loss.reconstruction == "l1")
        #expect(c.autoencoder.optimizer.beta1 == 0.5 && c.autoencoder.optimizer.beta2 == 0.9)
        // Tuned for time to quality: batch 16 a rank, lr 1e-3 at 2 ranks, 3700 steps (25 minutes of fp32 here).
        #expect(c.autoencoder.training.batchSize == 16 && c.autoencoder.training.steps == 3700)
        #expect(abs(c.autoencoder.optimizer.baseLR * 32 - 1e-3) < 1e-12)
        #expect(m.factor == 4 && m.latentSize == 8)
        try validate(c)
        try validate(try ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/fmnist-smoke.yaml").path))
    }

    @Test("a file overrides only what it names; --set overrides after the file")
    func overrides() throws {
        let path = writeTemporary("autoencoder:\n  model:\n    ch_mult: [1, 2]\n  training:\n    steps: 7\n")
        let c = try ConfigLoader.load(path, overrides: ["autoencoder.training.steps=9", "autoencoder.loss.kl_weight=0.5",
                                                       "data.flip=false"])
        #expect(c.autoencoder.model.chMult == [1, 2])
        #expect(c.autoencoder.model.ch == Config().autoencoder.model.ch)
        #expect(c.autoencoder.training.steps == 9)
        #expect(c.autoencoder.loss.klWeight == 0.5)
        #expect(c.data.flip == false)
    }

    @Test("an unknown key names its path, line and the closest known key")
    func unknownKey() throws {
        let path = writeTemporary("autoencoder:\n  model:\n    ch_mul: [1, 2]\n")
        let error = #expect(throws: ConfigError.self) { try ConfigLoader.load(path) }
        #expect(error?.description == "\(path):3: unknown key 'autoencoder.model.ch_mul' (did you mean 'autoencoder.model.ch_mult'?)")
        let set = #expect(throws: ConfigError.self) { try ConfigLoader.load(nil, overrides: ["autoencoder.trainig.steps=3"]) }
        #expect(set?.description.contains("'autoencoder.trainig'") == true)
        #expect(set?.description.contains("did you mean 'autoencoder.training'") == true)
    }

    @Test("a wrong type names the key and what it should be")
    func wrongType() throws {
        let text = writeTemporary("autoencoder:\n  training:\n    steps: many\n")
        let e1 = #expect(throws: ConfigError.self) { try ConfigLoader.load(text) }
        #expect(e1?.description == "\(text): 'autoencoder.training.steps' should be an integer")
        let list = writeTemporary("autoencoder:\n  model:\n    ch_mult: 4\n")
        let e2 = #expect(throws: ConfigError.self) { try ConfigLoader.load(list) }
        #expect(e2?.description.contains("'autoencoder.model.ch_mult' should be a list") == true)
        let mapping = writeTemporary("data: 3\n")
        let e3 = #expect(throws: ConfigError.self) { try ConfigLoader.load(mapping) }
        #expect(e3?.description.contains("'data' should be a mapping") == true)
    }

    @Test("values out of range are rejected with their key path")
    func invalid() throws {
        for (set, key) in [("autoencoder.training.steps=-1", "steps"), ("autoencoder.training.batch_size=0", "batch_size"),
                           ("autoencoder.loss.reconstruction=l3", "reconstruction"), ("autoencoder.model.ch=48", "model"),
                           ("autoencoder.optimizer.base_lr=0", "autoencoder.optimizer.base_lr"),
                           ("distributed.bucket_mib=0", "distributed.bucket_mib"),
                           ("distributed.poll_microseconds=-5", "distributed.poll_microseconds"),
                           ("data.channels=2", "data.channels"), ("data.background=[1, 2]", "data.background"),
                           ("data.test_fraction=1", "data.test_fraction")] {
            let c = try ConfigLoader.load(nil, overrides: [set])
            let e = #expect(throws: ConfigError.self) { try validate(c) }
            #expect(e?.description.contains(key) == true, "\(set)")
        }
        for (set, key) in [("diffusion.optimizer.min_lr_ratio=1.5", "diffusion.optimizer.min_lr_ratio"),
                           ("diffusion.optimizer.warmup_steps=-1", "diffusion.optimizer.warmup_steps"),
                           ("diffusion.training.keep=0", "diffusion.training.keep"),
                           ("diffusion.conditioning.key=concat", "diffusion.conditioning.key"),
                           ("diffusion.conditioning.kind=text\", \"diffusion.conditioning.text.heads=3", "diffusion.conditioning.text")] {
            let c = try ConfigLoader.load(nil, overrides: set.components(separatedBy: "\", \""))
            let e = #expect(throws: ConfigError.self) { try validateDiffusion(c) }
            #expect(e?.description.contains(key) == true, "\(set)")
        }
        for set in ["diffusion.conditioning.kind=image", "diffusion.conditioning.key=cross", "diffusion.sampling.sampler=plms"] {
            let e = #expect(throws: ConfigError.self) { try ConfigLoader.load(nil, overrides: [set]) }
            #expect(e?.description.contains(String(set.prefix { $0 != "=" })) == true, "\(set): \(String(describing: e))")
        }
        let missing = #expect(throws: ConfigError.self) { try ConfigLoader.load("/nonexistent/config.yaml") }
        #expect(missing?.description.contains("/nonexistent/config.yaml") == true)
    }

    @Test("the built-in recipe is Launch/configs/fmnist.yaml, word for word, and loads when no config is named")
    func builtIn() throws {
        let file = try String(contentsOf: packageRoot.appendingPathComponent("Launch/configs/fmnist.yaml"), encoding: .utf8)
        #expect(file == ReferenceRecipe.yaml + "\n")
        #expect(try ConfigLoader.load(nil) == ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/fmnist.yaml").path))
        let filter = #expect(throws: ConfigError.self) { try ConfigLoader.load(nil, overrides: ["data.resize_filter=cubic"]) }
        #expect(filter?.description.contains("'data.resize_filter'") == true)
        let emoji = try ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/emoji.yaml").path)
        try validate(emoji)
        #expect(emoji.data.channels == 3 && emoji.autoencoder.model.resolution == 64 && emoji.autoencoder.model.latentSize == 16)
    }

    @Test("every recipe in Launch/configs loads and passes validation; the text recipes are text-conditional, the image-task ones have their task")
    func recipes() throws {
        for name in ["fmnist", "fmnist-smoke", "emoji", "fmnist-text", "fmnist-text-smoke", "fmnist-sr", "fmnist-sr-smoke", "fmnist-inpaint",
                     "fmnist-inpaint-smoke", "emoji-sr"] {
            let c = try ConfigLoader.load(packageRoot.appendingPathComponent("Launch/configs/\(name).yaml").path)
            try validate(c)
            try validateDiffusion(c)
            try ImageTask.checkChannels(c.diffusion, autoencoder: c.autoencoder.model)
            #expect((c.diffusion.task.kind != .generation) == (name.contains("-sr") || name.contains("inpaint")), "\(name)")
            #expect((c.diffusion.conditioning.kind == .text) == (name.contains("text") || name == "emoji"), "\(name)")
        }
    }

    @Test("engine settings: f4 and oneDNN's own layout by default, set by file or --set; an unknown choice names its key")
    func engine() throws {
        #expect(try ConfigLoader.load(nil).engine == EngineOptions(winograd: .f4, winogradInput: .keep, convLayout: .auto))
        #expect(try ConfigLoader.load(nil, overrides: ["engine.winograd_input=recompute"]).engine.winogradInput == .recompute)
        let path = writeTemporary("engine:\n  winograd: off\n")
        #expect(try ConfigLoader.load(path, overrides: ["engine.conv_layout=nhwc"]).engine == EngineOptions(winograd: .off, convLayout: .nhwc))
        #expect(try ConfigLoader.load(nil, overrides: ["engine.winograd=f2"]).engine.winograd == .f2)
        let wrong = #expect(throws: ConfigError.self) { try ConfigLoader.load(nil, overrides: ["engine.winograd=f3"]) }
        #expect(wrong?.description.contains("'engine.winograd'") == true, "\(String(describing: wrong))")
    }

    @Test("precision: fp32 for every stage and the engine by default; each stage sets its own; an unknown one names its key")
    func precision() throws {
        let defaults = try ConfigLoader.load(nil)
        #expect(defaults.engine.precision == .fp32 && defaults.autoencoder.training.precision == .fp32
                && defaults.diffusion.training.precision == .fp32)
        let c = try ConfigLoader.load(writeTemporary("autoencoder:\n  training:\n    precision: bf16\n"),
                                      overrides: ["engine.precision=bf16"])
        #expect(c.autoencoder.training.precision == .bf16 && c.diffusion.training.precision == .fp32 && c.engine.precision == .bf16)
        let wrong = #expect(throws: ConfigError.self) { try ConfigLoader.load(nil, overrides: ["diffusion.training.precision=fp16"]) }
        #expect(wrong?.description.contains("'diffusion.training.precision'") == true, "\(String(describing: wrong))")
    }

    @Test("the config round-trips through its YAML text (what checkpoints record)")
    func roundTrip() throws {
        let c = try ConfigLoader.load(nil, overrides: ["seed=5", "autoencoder.model.ch_mult=[1, 1, 2, 2]",
                                                      "diffusion.conditioning.kind=text", "diffusion.sampling.prompts=[\"red car\", \"\"]"])
        #expect(c.diffusion.sampling.prompts == ["red car", ""])
        let path = writeTemporary(try ConfigLoader.yaml(c))
        #expect(try ConfigLoader.load(path) == c)
    }
}
