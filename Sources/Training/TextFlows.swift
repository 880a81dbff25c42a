import Datasets
import Distributed
import Foundation
import NN
import Storage
import TensorEngine

/// What a multi-flow diffuser's text data flows (image→text, text→text) need: the text
/// latent cache, whose row i holds the caption of the image cache's row i, and the frozen
/// text VAE that wrote it, which turns sampled text latents back into captions.
struct TextFlowData {
    let cache: LatentCache.Contents
    let vae: FrozenTextAutoencoder
    /// Judges generated captions by the training captions they resemble.
    let judge: CaptionJudge

    init(stage s: DiffusionStageConfig, imageCache: LatentCache.Contents, textAutoencoder path: String?, communicator comm: Communicator) throws {
        let flows = s.flows.filter { $0.data == .text }.map(\.flow.description).joined(separator: ", ")
        guard let path else { throw DataError("diffusion.flows has text data flows (\(flows)): they need the text VAE run (--text-autoencoder)") }
        cache = try LatentCache.read(s.textLatents)
        vae = try FrozenTextAutoencoder.load(path, communicator: comm)
        let d = vae.config.textAutoencoder.model.latentDim
        guard cache.info.autoencoder == vae.identity, cache.info.channels == d, cache.info.height == 1, cache.info.width == 1 else {
            throw DataError("\(s.textLatents) holds text latents (\(cache.info.channels)×\(cache.info.height)×\(cache.info.width)) of "
                            + "\(cache.info.autoencoder), but --text-autoencoder \(path) is \(vae.identity) (latent_dim \(d)): run 'ldm-train encode-text' again")
        }
        guard cache.info.count >= imageCache.info.count, Array(cache.sourceIndex.prefix(imageCache.info.count)) == imageCache.sourceIndex else {
            throw DataError("\(s.textLatents) (\(cache.info.count) rows) does not hold the captions of the rows of \(s.latents) "
                            + "(\(imageCache.info.count) rows): encode both from the same dataset rows")
        }
        judge = CaptionJudge(captions: cache.captions ?? [], labels: cache.labels.map(Int.init))
    }

    /// The captions of scaled text latents [N, 1, 1, dim], sample i's draws keyed by `firstIndex` + i.
    func decode(_ latents: Tensor, seed: Int, firstIndex: Int = 0) -> [String] {
        Self.decode(latents, vae: vae, scaleFactor: cache.info.scaleFactor, seed: seed, firstIndex: firstIndex)
    }

    static func decode(_ latents: Tensor, vae: FrozenTextAutoencoder, scaleFactor: Double, seed: Int, firstIndex: Int = 0) -> [String] {
        let n = latents.shape[0], z = latents.reshaped([n, latents.count / max(n, 1)]).scaled(by: Float(1 / scaleFactor))
        return withoutGradient { vae.model.decode(z, topK: vae.config.textAutoencoder.topK, seed: UInt64(bitPattern: Int64(seed)), firstIndex: firstIndex) }
    }

    /// Captions sampled for `request` with the trainer's EMA weights, each rank a share (nil
    /// on ranks other than 0).
    func captions(_ request: VersatileSampler.Request, trainer t: VersatileTrainer) throws -> [String]? {
        let sampler = try VersatileSampler(diffuser: t.diffuser, encoders: t.encoders.model, stage: t.stageConfig, sampling: t.stageConfig.sampling)
        let contexts = sampler.contexts(request)
        let latents = try sampleShared(count: contexts.count, stage: t.stageConfig, shape: t.diffuser.sampleShape(.text), communicator: t.comm) { mine in
            withValues(t.emaStorage.shadow, in: t.arenaStorage) { sampler.sample(contexts, rows: mine, data: .text) }
        }
        return latents.map { decode($0, seed: t.stageConfig.sampling.seed) }
    }

    /// The text flows' samples at `step`: captions of the first test images (image→text) and
    /// variations of the grid's prompts (text→text), as JSON lines beside the image grids.
    func writeSamples(step number: Int, trainer t: VersatileTrainer) throws {
        let k = min(t.stageConfig.sampling.perClass, 4)
        for flow in t.stageConfig.flows.filter({ $0.data == .text }).map(\.flow).uniqued() {
            let inputs: [String], request: VersatileSampler.Request
            switch flow.context {
            case .image:
                let shown = min(4, t.images.test.split.count), rows = (0..<shown).map { $0 * t.images.test.split.count / shown }
                inputs = rows.map { "test image \($0)" }
                request = .image(try t.images.test.images(rows, epoch: nil).repeatingRows(k))
            case .text:
                inputs = gridRows(t.stageConfig, captions: cache.captions ?? [], kind: .text).map(\.caption).filter { !$0.isEmpty }
                request = .text(inputs.repeatingRows(k))
            }
            guard let captions = try self.captions(request, trainer: t) else { continue }
            let lines = captions.enumerated().map { i, c in jsonLine(["flow": flow.name, "input": inputs[i / k], "caption": c]) }
            let file = "\(t.options.runDirectory)/samples-\(flow.name)-\(String(format: "%08d", number)).jsonl"
            try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            t.log.say("\(flow): " + captions.enumerated().filter { $0.offset % k == 0 }.map { "\(inputs[$0.offset / k]) → '\($0.element)'" }.joined(separator: "; "))
        }
    }

    /// Image→text on the first `eval_images` test images: how often the caption names the
    /// image's class (by the judge) and its word overlap with the true caption, against the
    /// most common training caption; text→text on their captions: how often a variation
    /// differs from its input and keeps its class.
    func evaluate(trainer t: VersatileTrainer) throws -> [String: Double] {
        let test = t.images.test, e = t.stageConfig.training.evalImages
        let n = e > 0 ? min(e, test.split.count) : test.split.count
        let rows = Array(0..<n), truth = try test.split.captions(rows), labels = test.labels(rows)
        let flows = Set(t.stageConfig.flows.filter { $0.data == .text }.map(\.context))
        var metrics: [String: Double] = [:]
        if flows.contains(.image), let generated = try captions(.image(try test.images(rows, epoch: nil)), trainer: t) {
            metrics.merge(judge.imageToText(generated, truth: truth, labels: labels)) { $1 }
        }
        let inputs = rows.filter { !truth[$0].isEmpty }
        if flows.contains(.text), !inputs.isEmpty, let generated = try captions(.text(inputs.map { truth[$0] }), trainer: t) {
            metrics.merge(judge.variations(generated, inputs: inputs.map { vae.model.tokenizer.roundTrip(truth[$0]) },
                                           labels: inputs.map { labels[$0] })) { $1 }
        }
        let shared = try t.comm.broadcast(jsonLine(metrics.mapValues { $0 as Any }))
        let values = (try? JSONSerialization.jsonObject(with: Data(shared.utf8)) as? [String: Double]) ?? [:]
        t.log.say(CaptionJudge.describe(values, count: n))
        return values
    }
}

/// One JSON object on one line, keys sorted.
func jsonLine(_ object: [String: Any]) -> String {
    String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8), as: UTF8.self)
}

/// Judges generated captions by the training captions: the class a caption names is the
/// most frequent label of the training caption equal to it, or else of the one sharing the
/// largest fraction of its words (Jaccard); overlap with a reference is the F1 of the two
/// word sets. The baseline always emits the most common training caption.
public struct CaptionJudge {
    let exact: [String: Int]
    let known: [(words: Set<String>, label: Int)]
    public let mostCommon: String

    public init(captions: [String], labels: [Int]) {
        var counts: [String: [Int: Int]] = [:], total: [String: Int] = [:], order: [String] = []
        for (c, l) in zip(captions, labels) where !c.isEmpty {
            if total[c] == nil { order.append(c) }
            total[c, default: 0] += 1
            counts[c, default: [:]][l, default: 0] += 1
        }
        let majority = { (c: String) -> Int in counts[c]!.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }!.key }
        exact = Dictionary(uniqueKeysWithValues: order.map { ($0, majority($0)) })
        known = order.map { (Self.words($0), majority($0)) }
        mostCommon = order.max { total[$0]! < total[$1]! || (total[$0]! == total[$1]! && order.firstIndex(of: $0)! > order.firstIndex(of: $1)!) } ?? ""
    }

    /// Lower-cased runs of letters and digits.
    public static func words(_ text: String) -> Set<String> {
        Set(text.lowercased().split { !$0.isLetter && !$0.isNumber }.map(String.init))
    }

    /// The class a caption names (−1: none shares a word with it).
    public func label(of caption: String) -> Int {
        if let l = exact[caption] { return l }
        let w = Self.words(caption)
        var best = (score: 0.0, label: -1)
        for k in known {
            let union = w.union(k.words).count
            let score = union == 0 ? 0 : Double(w.intersection(k.words).count) / Double(union)
            if score > best.score { best = (score, k.label) }
        }
        return best.label
    }

    /// F1 of the word sets of a caption and a reference.
    public static func wordF1(_ caption: String, _ reference: String) -> Double {
        let a = words(caption), b = words(reference), common = Double(a.intersection(b).count)
        guard common > 0 else { return 0 }
        let p = common / Double(a.count), r = common / Double(b.count)
        return 2 * p * r / (p + r)
    }

    func imageToText(_ generated: [String], truth: [String], labels: [Int]) -> [String: Double] {
        let n = Double(generated.count)
        var m: [String: Double] = [
            "i2t_word_f1": zip(generated, truth).reduce(0) { $0 + Self.wordF1($1.0, $1.1) } / n,
            "i2t_baseline_word_f1": truth.reduce(0) { $0 + Self.wordF1(mostCommon, $1) } / n,
        ]
        let labelled = labels.indices.filter { labels[$0] >= 0 }
        if !labelled.isEmpty {
            let baseline = label(of: mostCommon)
            m["i2t_class_accuracy"] = Double(labelled.filter { label(of: generated[$0]) == labels[$0] }.count) / Double(labelled.count)
            m["i2t_baseline_class_accuracy"] = Double(labelled.filter { baseline == labels[$0] }.count) / Double(labelled.count)
        }
        return m
    }

    func variations(_ generated: [String], inputs: [String], labels: [Int]) -> [String: Double] {
        let n = Double(generated.count)
        var m: [String: Double] = [
            "t2t_changed": Double(zip(generated, inputs).filter { $0 != $1 }.count) / n,
            "t2t_word_f1": zip(generated, inputs).reduce(0) { $0 + Self.wordF1($1.0, $1.1) } / n,
        ]
        let labelled = labels.indices.filter { labels[$0] >= 0 }
        if !labelled.isEmpty {
            m["t2t_class_kept"] = Double(labelled.filter { label(of: generated[$0]) == labels[$0] }.count) / Double(labelled.count)
        }
        return m
    }

    static func describe(_ m: [String: Double], count: Int) -> String {
        func pct(_ key: String) -> String { m[key].map { String(format: "%.1f%%", 100 * $0) } ?? "–" }
        func f(_ key: String) -> String { m[key].map { String(format: "%.3f", $0) } ?? "–" }
        var parts: [String] = []
        if m["i2t_word_f1"] != nil {
            parts.append("image→text on \(count) test images: names the class \(pct("i2t_class_accuracy")) (most common caption "
                         + "\(pct("i2t_baseline_class_accuracy"))), word F1 \(f("i2t_word_f1")) (most common caption \(f("i2t_baseline_word_f1")))")
        }
        if m["t2t_changed"] != nil {
            parts.append("text→text on their captions: changed \(pct("t2t_changed")), class kept \(pct("t2t_class_kept")), word F1 with the input \(f("t2t_word_f1"))")
        }
        return parts.joined(separator: "; ")
    }
}
