import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// `ldm-train text-autoencoder`: Versatile Diffusion's text VAE trained on the dataset's
/// captions. The loss per caption is the decoder's summed token negative log-likelihood
/// (teacher forcing, from z = μ + σ·ε with ε keyed by the caption's sample index) plus
/// β·KL(q(z|caption) ‖ N(0, I)). The stage ends with reconstruction on the test split:
/// token accuracy of the teacher-forced argmax from the posterior mean, and how many
/// captions the decoder recovers exactly from it.
public final class TextAutoencoderTrainer: TrainingStage {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    public let model: TextAutoencoder
    let arenaStorage: ParameterArena
    let adam: Adam
    /// Every training row's caption, and the dataset's test split.
    let captions: [String]
    let test: DatasetSplit
    var stageConfig: TextAutoencoderStageConfig { config.textAutoencoder }

    public init(config: Config, options: RunOptions, communicator: Communicator) throws {
        try validateTextAutoencoder(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let train = try DatasetSplit.open(config.data.path, split: .train)
        test = try DatasetSplit.open(config.data.path, split: .test)
        captions = try train.captions(Array(0..<config.data.trainCount(train.count)))
        guard captions.contains(where: { !$0.isEmpty }) else {
            throw DataError("\(config.data.path): every caption is empty; the text VAE learns from the captions ('text' in metadata.jsonl)")
        }
        let a = config.textAutoencoder.model
        let tokenizer = learnTokenizer(captions, a.text, log: log, key: "text_autoencoder.model.text.max_seq_len")
        model = TextAutoencoder(a, tokenizer: tokenizer, seed: UInt64(bitPattern: Int64(config.seed)))
        arenaStorage = ParameterArena(model)
        adam = Adam(arenaStorage, config.textAutoencoder.optimizer.adam)
    }

    @discardableResult
    public func run() throws -> [String: Double] {
        try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log,
                      extraAttributes: ["tokenizer": model.tokenizer.json],
                      inputs: ["dataset": test.identity, "tokenizer_identity": model.tokenizer.identity]).run()
    }

    // MARK: TrainingStage

    var kind: String { Self.kind }
    static let kind = "text-autoencoder"
    var arena: ParameterArena { arenaStorage }
    var optimizer: Adam { adam }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { captions.count }
    var summary: String {
        let a = stageConfig.model
        return "text VAE \(stageConfig.name): \(model.parameterCount()) parameters, width \(a.width), latent \(a.latentDim), "
            + "\(a.text.nLayer) layers each way, \(model.tokenizer.merges.count) BPE merges, \(captions.count) captions, kl_weight \(stageConfig.klWeight)"
    }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step: Int) throws -> [(String, Tally)] {
        let texts = indices.map { captions[$0] }, d = stageConfig.model.latentDim
        let posterior = model.encode(texts)
        var draws = [Float](repeating: 0, count: indices.count * d)
        for (b, index) in indices.enumerated() {
            sampleStream(seed: config.seed, .posterior, epoch: epoch, index: index).fillNormal(&draws[b * d], count: d)
        }
        let z = posterior.sample(noise: Tensor(shape: [indices.count, d], scalars: draws))
        let rec = model.reconstruction(texts, latent: z)
        let kl = posterior.kl()
        let perSample = rec.nll + kl.scaled(by: Float(stageConfig.klWeight))
        perSample.mean().scaled(by: scale).backward()
        let n = Double(indices.count), tokens = Double(rec.tokens.reduce(0, +))
        return [("loss", Tally(sum: perSample.scalars.reduce(0.0) { $0 + Double($1) }, count: n)),
                ("nll_per_token", Tally(sum: rec.nll.scalars.reduce(0.0) { $0 + Double($1) }, count: tokens)),
                ("kl", Tally(sum: kl.scalars.reduce(0.0) { $0 + Double($1) }, count: n)),
                ("token_accuracy", Tally(sum: Double(rec.correct.reduce(0, +)), count: tokens))]
    }

    func writeImages(step: Int) throws {}

    /// Reconstruction of the test split's first `eval_images` captions from their posterior
    /// means, each rank a contiguous share.
    func finish() throws -> [String: Double] {
        let e = stageConfig.training.evalImages, n = e > 0 ? min(e, test.count) : test.count
        let all = try test.captions(Array(0..<n))
        guard all.contains(where: { !$0.isEmpty }) else {
            log.say("reconstruction skipped: the test split of \(test.path) has no captions")
            return [:]
        }
        let mine = (comm.rank * n / comm.size)..<((comm.rank + 1) * n / comm.size)
        var sums = [Double](repeating: 0, count: 3)   // correct tokens, tokens, exact captions
        var start = mine.lowerBound
        while start < mine.upperBound {
            let rows = Array(start..<min(mine.upperBound, start + 256)), texts = rows.map { all[$0] }
            let (rec, decoded) = withoutGradient { () -> ((nll: Tensor, correct: [Int], tokens: [Int]), [String]) in
                let mean = model.encode(texts).mean
                return (model.reconstruction(texts, latent: mean), model.decode(mean))
            }
            sums[0] += Double(rec.correct.reduce(0, +))
            sums[1] += Double(rec.tokens.reduce(0, +))
            sums[2] += Double(zip(decoded, texts).filter { $0 == model.tokenizer.roundTrip($1) }.count)
            start += rows.count
        }
        try sums.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        let metrics = ["test_token_accuracy": sums[0] / sums[1], "test_exact_recovery": sums[2] / Double(n)]
        log.say(String(format: "reconstruction of %d test captions from their posterior means: token accuracy %.1f%%, exact captions %.1f%%",
                       n, 100 * metrics["test_token_accuracy"]!, 100 * metrics["test_exact_recovery"]!))
        return metrics
    }
}

/// Checks the text_autoencoder section before anything runs.
public func validateTextAutoencoder(_ config: Config) throws {
    let c = config.textAutoencoder
    try c.training.validate(section: "text_autoencoder.training")
    try c.optimizer.validate(section: "text_autoencoder.optimizer")
    let a = c.model, t = a.text
    guard t.vocabSize >= BPETokenizer.firstMerge, t.maxSeqLen >= 3, t.nLayer >= 1, t.heads >= 1, a.width % t.heads == 0, a.latentDim >= 1 else {
        throw ConfigError.invalid(path: "text_autoencoder.model", reason: "needs text.vocab_size ≥ \(BPETokenizer.firstMerge) (bytes and specials), "
                                  + "text.max_seq_len ≥ 3, text.n_layer ≥ 1, text.heads dividing width \(a.width), latent_dim ≥ 1")
    }
    guard c.klWeight >= 0, c.topK >= 1 else {
        throw ConfigError.invalid(path: "text_autoencoder", reason: "kl_weight must be ≥ 0 and top_k ≥ 1, got \(c.klWeight) and \(c.topK)")
    }
}

/// The frozen text VAE of a `text-autoencoder` run.
public typealias FrozenTextAutoencoder = FrozenStage<TextAutoencoder>

extension FrozenStage where Model == TextAutoencoder {
    public static func load(_ path: String, communicator comm: Communicator) throws -> FrozenTextAutoencoder {
        try load(path, option: "--text-autoencoder", kind: { _ in TextAutoencoderTrainer.kind }, communicator: comm) { config, index, directory in
            let a = config.textAutoencoder.model
            return TextAutoencoder(a, tokenizer: try readTokenizer(index, directory: directory, fits: a.text), seed: 0)
        }
    }
}

/// `ldm-train encode-text`: the text latent cache. Every rank encodes a contiguous slice of
/// the train split's captions with the frozen text VAE (posterior mean and log-variance,
/// [latent_dim] per caption, stored as latent_dim × 1 × 1), and the ranks write the cache
/// together with each row's label, caption and source index, the text VAE's identity and
/// the scale factor that gives the sampled latents unit variance.
public enum TextEncodeStage {
    @discardableResult
    public static func run(textAutoencoder path: String, data: String?, out: String, limit: Int? = nil,
                           communicator comm: Communicator) throws -> Int {
        let say: (String) -> Void = { if comm.isRoot { print($0); fflush(stdout) } }
        let vae = try FrozenTextAutoencoder.load(path, communicator: comm)
        let dataPath = data ?? vae.config.data.path
        let split = try DatasetSplit.open(dataPath, split: .train)
        if let limit, limit < 1 { throw DataError("--count must be positive, got \(limit)") }
        let n = min(split.count, limit ?? split.count), rows = (comm.rank * n / comm.size)..<((comm.rank + 1) * n / comm.size)
        let d = vae.config.textAutoencoder.model.latentDim
        var planned = LatentCache.Info()
        (planned.count, planned.channels, planned.height, planned.width) = (n, d, 1, 1)
        try LatentCache.checkSpace(out, info: planned, ranks: comm.size, communicator: comm)
        say("encode-text: \(n) captions of \(dataPath) with \(vae.checkpoint) on \(comm.size) rank(s) → \(out)")
        let captions = try split.captions(Array(rows))
        var mean: [Float] = [], logvar: [Float] = []
        var start = 0
        while start < captions.count {
            let chunk = Array(captions[start..<min(captions.count, start + 256)])
            let posterior = withoutGradient { vae.model.encode(chunk) }
            mean += posterior.mean.scalars
            logvar += posterior.logvar.scalars
            start += chunk.count
        }
        var info = planned
        (info.factor, info.autoencoder, info.dataset, info.split) = (0, vae.identity, dataPath, "train")
        let stats = try LatentCache.writeWithScale(out, rows: LatentCache.Rows(start: rows.lowerBound, mean: mean, logvar: logvar,
                                                                               labels: rows.map { split.labels[$0] }, captions: captions,
                                                                               sourceIndex: rows.map { Int64($0) }),
                                                   info: info, communicator: comm)
        say(String(format: "encode-text: %d text latents of %d, mean %.4f, std %.4f → scale_factor %.5f", n, d, stats.mean, stats.std, 1 / stats.std))
        return n
    }
}
