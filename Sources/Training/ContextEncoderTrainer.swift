import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// `ldm-train context-encoders`: Versatile Diffusion's text and image context encoders,
/// trained together with CLIP's symmetric InfoNCE loss on the dataset's image–caption
/// pairs, then frozen for a multi-flow diffuser.
///
/// The negatives are the whole global batch at any rank count: every rank all-gathers
/// the embeddings and computes the global batch's loss, its own rows' embeddings being
/// the only ones with a gradient. The gradient each rank's rows receive from every
/// other rank's loss terms is thus computed where the rows live (what all-gather's
/// backward would send back to them), and the gradient all-reduce sums the ranks'
/// parameter gradients into that of the global loss. Only rank 0 passes a gradient to
/// the temperature, which every rank uses.
public final class ContextEncoderTrainer: TrainingStage {
    let config: Config
    let options: RunOptions
    let comm: Communicator
    let log: RunLog
    public let model: ContextEncoders
    let arenaStorage: ParameterArena
    let adam: Adam
    let train: ImageBatcher, test: ImageBatcher
    /// Every training row's caption.
    let captions: [String]
    var stageConfig: ContextEncodersStageConfig { config.contextEncoders }

    public init(config: Config, options: RunOptions, communicator: Communicator) throws {
        try validateContextEncoders(config)
        (self.config, self.options, comm) = (config, options, communicator)
        log = RunLog(runDirectory: options.runDirectory, isRoot: communicator.isRoot)
        let a = config.contextEncoders.model
        let trainSplit = try DatasetSplit.open(config.data.path, split: .train), testSplit = try DatasetSplit.open(config.data.path, split: .test)
        guard trainSplit.channels == a.inChannels, trainSplit.height <= a.imageSize, trainSplit.width <= a.imageSize else {
            throw DataError("\(config.data.path): images are \(trainSplit.channels)×\(trainSplit.height)×\(trainSplit.width), the image encoder takes "
                            + "\(a.inChannels)×\(a.imageSize)×\(a.imageSize) (context_encoders.model.in_channels / image_size)")
        }
        let count = config.data.trainCount(trainSplit.count)
        captions = try trainSplit.captions(Array(0..<count))
        guard captions.contains(where: { !$0.isEmpty }) else {
            throw DataError("\(config.data.path): every caption is empty; the context encoders learn from image–caption pairs "
                            + "('text' in metadata.jsonl)")
        }
        train = try ImageBatcher(split: trainSplit, resolution: a.imageSize, flip: config.data.flip, seed: config.seed)
        test = try ImageBatcher(split: testSplit, resolution: a.imageSize, flip: false, seed: config.seed)
        let tokenizer = learnTokenizer(captions, a.text, log: log, key: "context_encoders.model.text.max_seq_len")
        model = ContextEncoders(a, tokenizer: tokenizer, seed: UInt64(bitPattern: Int64(config.seed)))
        arenaStorage = ParameterArena(model)
        adam = Adam(arenaStorage, config.contextEncoders.optimizer.adam)
    }

    @discardableResult
    public func run() throws -> [String: Double] {
        try StageLoop(stage: self, config: config, options: options, communicator: comm, log: log,
                      extraAttributes: ["tokenizer": model.tokenizer.json],
                      inputs: ["dataset": train.split.identity, "tokenizer_identity": model.tokenizer.identity]).run()
    }

    // MARK: TrainingStage

    var kind: String { ContextEncoderTrainer.kind }
    static let kind = "context-encoders"
    var arena: ParameterArena { arenaStorage }
    var optimizer: Adam { adam }
    var settings: (training: TrainingConfig, optimizer: OptimizerConfig) { (stageConfig.training, stageConfig.optimizer) }
    var datasetSize: Int { captions.count }
    var summary: String {
        let a = stageConfig.model
        return "context encoders \(stageConfig.name): \(model.parameterCount()) parameters, width \(a.width), embedding \(a.embedDim), "
            + "\(a.imageTokens) image tokens, \(model.tokenizer.merges.count) BPE merges, \(captions.count) image–caption pairs; "
            + "negatives: the global batch"
    }

    func prefetch(_ indices: [Int]) { train.prefetch(indices) }

    func microBatch(_ indices: [Int], epoch: Int, scale: Float, step: Int) throws -> [(String, Tally)] {
        let x = try train.images(indices, epoch: epoch)
        let imageEmbeddings = model.embedding(model.imageContext(x), of: .image)
        let textEmbeddings = model.embedding(model.textContext(indices.map { captions[$0] }), of: .text)
        let images = try gatherWithLocalGradient(imageEmbeddings), texts = try gatherWithLocalGradient(textEmbeddings)
        let temperature = comm.isRoot ? model.temperatureScale() : model.temperatureScale().detached()
        let loss = symmetricInfoNCE(images: images.all, texts: texts.all, scale: temperature)
        // Each rank holds the whole loss; the all-reduce sums, not averages, the ranks' shares of its gradient.
        loss.scaled(by: scale * Float(comm.size)).backward()
        let n = Double(indices.count)
        let logits = withoutGradient { matmul(imageEmbeddings, texts.all, transposeB: true) }
        var correct = 0.0
        for r in 0..<indices.count {   // is the row's own caption its image's best match in the global batch?
            let row = Array(UnsafeBufferPointer(start: logits.pointer + r * logits.shape[1], count: logits.shape[1]))
            if row.indices.max(by: { row[$0] < row[$1] }) == images.offset + r { correct += 1 }
        }
        return [("loss", Tally(sum: Double(loss.item) * n, count: n)), ("batch_i2t_top1", Tally(sum: correct, count: n)),
                ("logit_scale", Tally(sum: model.scale * n, count: n))]
    }

    /// Every rank's rows of `local` [n, D] in rank order, this rank's being `local` itself
    /// (with its gradient) and the others constants; and where this rank's rows start.
    func gatherWithLocalGradient(_ local: Tensor) throws -> (all: Tensor, offset: Int) {
        let d = local.shape[1]
        let counts = try comm.allGather(values: [Int64(local.shape[0])]).map(Int.init), widest = counts.max()!
        var padded = local.scalars
        padded += [Float](repeating: 0, count: (widest - counts[comm.rank]) * d)
        let gathered = try comm.allGather(values: padded)
        let rows = { (r: Int) in Tensor(shape: [counts[r], d], scalars: Array(gathered[(r * widest * d)..<((r * widest + counts[r]) * d)])) }
        let parts = (0..<comm.size).filter { counts[$0] > 0 }.map { $0 == comm.rank ? local : rows($0) }
        return (concat(parts, axis: 0), counts[..<comm.rank].reduce(0, +))
    }

    func writeImages(step: Int) throws {}

    /// Retrieval on the test split's first `eval_images` pairs, each rank embedding a share.
    func finish() throws -> [String: Double] {
        let e = stageConfig.training.evalImages, n = e > 0 ? min(e, test.split.count) : test.split.count
        guard try test.split.captions(Array(0..<n)).contains(where: { !$0.isEmpty }) else {
            log.say("retrieval skipped: the test split of \(test.split.path) has no captions (give the test images captions in metadata.jsonl; "
                    + "Launch/make-fmnist-text-folder writes them)")
            return [:]
        }
        let (images, texts) = try embedShared(model, test: test, count: n, communicator: comm)
        let metrics = RetrievalMetrics(images: images, texts: texts, captions: try test.split.captions(Array(0..<n)),
                                       labels: test.labels(Array(0..<n)))
        log.say(metrics.description)
        return metrics.values
    }
}

/// The image and text embeddings of a test split's first `count` pairs, [count, D] each,
/// on every rank; each rank embeds a contiguous share.
func embedShared(_ model: ContextEncoders, test: ImageBatcher, count n: Int, communicator comm: Communicator) throws -> (Tensor, Tensor) {
    let share = { (r: Int) in (r * n / comm.size)..<((r + 1) * n / comm.size) }
    let mine = share(comm.rank), widest = (0..<comm.size).map { share($0).count }.max()!, d = model.architecture.embedDim
    var values = [Float](repeating: 0, count: 2 * widest * d)
    var start = mine.lowerBound
    while start < mine.upperBound {
        let rows = Array(start..<min(mine.upperBound, start + 256))
        let x = try test.images(rows, epoch: nil), captions = try test.split.captions(rows)
        let (i, t) = withoutGradient { (model.embedding(model.imageContext(x), of: .image), model.embedding(model.textContext(captions), of: .text)) }
        let at = (start - mine.lowerBound) * d
        for j in 0..<(rows.count * d) { (values[at + j], values[widest * d + at + j]) = (i.pointer[j], t.pointer[j]) }
        start += rows.count
    }
    let gathered = try comm.allGather(values: values)
    func part(_ half: Int) -> Tensor {
        var scalars: [Float] = []
        for r in 0..<comm.size {
            let start = (2 * r + half) * widest * d
            scalars += gathered[start..<(start + share(r).count * d)]
        }
        return Tensor(shape: [n, d], scalars: scalars)
    }
    return (part(0), part(1))
}

/// Image↔caption retrieval among test pairs by cosine similarity. Captions repeat (many
/// images share a phrasing), so a caption is a candidate once, and a hit is any
/// candidate or image with the query's own caption; chance is what a random ranking
/// scores. With labels, `class_i2t_top1` counts a best caption of the image's class.
public struct RetrievalMetrics: CustomStringConvertible {
    public var values: [String: Double] = [:]
    let count: Int, candidates: Int

    public init(images: Tensor, texts: Tensor, captions: [String], labels: [Int]) {
        let n = captions.count
        var firstRow: [String: Int] = [:], distinct: [String] = []
        for (i, c) in captions.enumerated() where firstRow[c] == nil { firstRow[c] = i; distinct.append(c) }
        let candidateRows = distinct.map { firstRow[$0]! }
        let similarity = withoutGradient { matmul(images, texts, transposeB: true) }   // [n, n]: image i · caption j
        let s = similarity.pointer
        var frequency: [String: Int] = [:]
        for c in captions { frequency[c, default: 0] += 1 }
        (count, candidates) = (n, distinct.count)
        func topK<C: Collection>(_ scores: C, _ k: Int) -> [Int] where C.Element == (Int, Float) {
            scores.sorted { $0.1 > $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }.prefix(k).map(\.0)
        }
        var i2t = [0.0, 0.0], t2i = [0.0, 0.0], t2iChance = [0.0, 0.0], classTop1 = 0.0
        for i in 0..<n {   // image → the distinct captions
            let ranked = topK(candidateRows.map { ($0, s[i * n + $0]) }, 5)
            if captions[ranked[0]] == captions[i] { i2t[0] += 1 }
            if ranked.contains(where: { captions[$0] == captions[i] }) { i2t[1] += 1 }
            if labels[ranked[0]] >= 0 && labels[ranked[0]] == labels[i] { classTop1 += 1 }
        }
        for j in candidateRows {   // caption → all images
            let ranked = topK((0..<n).map { ($0, s[$0 * n + j]) }, 5)
            if captions[ranked[0]] == captions[j] { t2i[0] += 1 }
            if ranked.contains(where: { captions[$0] == captions[j] }) { t2i[1] += 1 }
            let m = Double(frequency[captions[j]]!)   // P(one of the first k of a random order has it)
            t2iChance[0] += m / Double(n)
            var miss = 1.0
            for r in 0..<min(5, n) { miss *= max(0, Double(n) - m - Double(r)) / Double(n - r) }
            t2iChance[1] += 1 - miss
        }
        let q = Double(distinct.count), images = Double(n)
        values["retrieval_i2t_top1"] = i2t[0] / images
        values["retrieval_i2t_top5"] = i2t[1] / images
        values["retrieval_t2i_top1"] = t2i[0] / q
        values["retrieval_t2i_top5"] = t2i[1] / q
        values["chance_i2t_top1"] = 1 / q
        values["chance_i2t_top5"] = min(1, 5 / q)
        values["chance_t2i_top1"] = t2iChance[0] / q
        values["chance_t2i_top5"] = t2iChance[1] / q
        if labels.contains(where: { $0 >= 0 }) {
            values["class_i2t_top1"] = classTop1 / Double(n)
            let classes = Set(labels.filter { $0 >= 0 }).count
            values["chance_class_i2t_top1"] = 1 / Double(max(classes, 1))
        }
    }

    public var description: String {
        func pct(_ key: String) -> String { String(format: "%.1f%%", 100 * (values[key] ?? .nan)) }
        var text = "retrieval on \(count) test pairs (\(candidates) distinct captions): image→caption top-1 \(pct("retrieval_i2t_top1")) "
            + "(chance \(pct("chance_i2t_top1"))), top-5 \(pct("retrieval_i2t_top5")) (chance \(pct("chance_i2t_top5"))); "
            + "caption→image top-1 \(pct("retrieval_t2i_top1")) (chance \(pct("chance_t2i_top1"))), top-5 \(pct("retrieval_t2i_top5")) "
            + "(chance \(pct("chance_t2i_top5")))"
        if values["class_i2t_top1"] != nil {
            text += "; best caption of the image's class \(pct("class_i2t_top1")) (chance \(pct("chance_class_i2t_top1")))"
        }
        return text
    }
}

/// The BPE tokenizer learned from `captions` (the same on every rank), saying how many
/// captions `text.max_seq_len` cuts.
func learnTokenizer(_ captions: [String], _ text: TextEncoderArchitecture, log: RunLog, key: String) -> BPETokenizer {
    let t = BPETokenizer.learn(from: captions, vocabularySize: text.vocabSize, maxLength: text.maxSeqLen)
    let cut = captions.filter { t.encode($0).truncated }.count
    if cut > 0 {
        log.say("tokenizer: \(cut) of \(captions.count) captions are longer than max_seq_len \(t.maxLength) tokens and are cut (\(key))")
    }
    return t
}

/// Checks the context_encoders section before anything runs.
public func validateContextEncoders(_ config: Config) throws {
    let c = config.contextEncoders
    try c.training.validate(section: "context_encoders.training")
    try c.optimizer.validate(section: "context_encoders.optimizer")
    guard c.training.accumulate == 1 else {
        throw ConfigError.invalid(path: "context_encoders.training.accumulate", reason: "must be 1: the contrastive loss takes its negatives "
                                  + "from the whole global batch at once, which micro-batches would split; raise batch_size instead")
    }
    let a = c.model, t = a.text
    guard t.vocabSize >= BPETokenizer.firstMerge, t.maxSeqLen >= 2, t.nLayer >= 1, t.heads >= 1, a.width % t.heads == 0 else {
        throw ConfigError.invalid(path: "context_encoders.model.text", reason: "needs vocab_size ≥ \(BPETokenizer.firstMerge) (bytes and specials), "
                                  + "max_seq_len ≥ 2, n_layer ≥ 1 and heads dividing model.width \(a.width)")
    }
    guard !a.imageChannels.isEmpty, a.imageChannels.allSatisfy({ $0 > 0 && $0 % 32 == 0 }), a.imageSize % (1 << a.imageChannels.count) == 0,
          a.imageLayers >= 0, a.imageHeads >= 1, a.width % a.imageHeads == 0, a.embedDim >= 1, [1, 3].contains(a.inChannels) else {
        throw ConfigError.invalid(path: "context_encoders.model", reason: "needs image_channels multiples of 32 (GroupNorm's 32 groups), "
                                  + "image_size divisible by 2^len(image_channels), image_heads dividing width, in_channels 1 or 3")
    }
}
