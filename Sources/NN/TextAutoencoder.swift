import Foundation
import TensorEngine

// Versatile Diffusion's text VAE (Optimus: a BERT encoder and a GPT-2 decoder around a
// latent vector) at this project's scale: a bidirectional transformer encoder pooled into
// the mean and log-variance of a latent vector, and a causal transformer decoder that
// sees the latent added to every token embedding (Optimus's "embedding" injection) and
// predicts the next token. Both take the BPE tokens of the captions.

/// The shapes of the text VAE (`text_autoencoder.model`).
public struct TextAutoencoderArchitecture: Codable, Equatable, Sendable {
    /// Token width of the encoder and the decoder.
    public var width = 64
    /// The latent vector a caption becomes: what the text flows of a multi-flow diffuser denoise.
    public var latentDim = 32
    /// The tokenizer's size and caption length, and the layers and heads of each of the
    /// encoder and the decoder.
    public var text: TextEncoderArchitecture = {
        var t = TextEncoderArchitecture()
        (t.vocabSize, t.maxSeqLen) = (512, 24)
        return t
    }()

    public init() {}
    enum CodingKeys: String, CodingKey { case width, latentDim = "latent_dim", text }
}

/// Caption → posterior over the latent: the transformer, the mean of its real tokens'
/// outputs, a linear map to mean and log-variance.
public final class TextVAEEncoder: Module {
    let transformer: TextTransformer
    let toMoments: Linear
    override public class var keys: [String: String] { ["toMoments": "to_moments"] }

    init(_ a: TextAutoencoderArchitecture, _ initializer: ParameterInitializer) {
        transformer = TextTransformer(a.text, width: a.width, initializer)
        toMoments = Linear(a.width, 2 * a.latentDim, initializer)
    }

    func callAsFunction(ids: [Int], keyMask: KeyMask) -> DiagonalGaussian {
        DiagonalGaussian(moments: toMoments(Context(tokens: transformer(ids, keyMask: keyMask), keyMask: keyMask).pooled))
    }
}

/// Latent and the tokens so far → the next token's logits: a causal transformer whose
/// every input embedding has the projected latent added, and a linear head over the vocabulary.
public final class TextVAEDecoder: Module {
    let latentProj: Linear
    let transformer: TextTransformer
    let lmHead: Linear
    override public class var keys: [String: String] { ["latentProj": "latent_proj", "lmHead": "lm_head"] }

    init(_ a: TextAutoencoderArchitecture, _ initializer: ParameterInitializer) {
        latentProj = Linear(a.latentDim, a.width, initializer)
        transformer = TextTransformer(a.text, width: a.width, initializer)
        lmHead = Linear(a.width, a.text.vocabSize, initializer)
    }

    /// Logits [N, L, V]: position p predicts token p + 1 from tokens 0...p.
    public func callAsFunction(latent z: Tensor, ids: [Int]) -> Tensor {
        let width = transformer.width
        return lmHead(transformer(ids, keyMask: nil, causal: true, shift: latentProj(z).reshaped([z.shape[0], 1, width])))
    }
}

/// The text VAE: captions ↔ latent vectors [N, latent_dim]. Its tokenizer is learned from
/// the training captions and stored with its checkpoints.
public final class TextAutoencoder: Module {
    public let architecture: TextAutoencoderArchitecture
    public let encoder: TextVAEEncoder
    public let decoder: TextVAEDecoder
    public let tokenizer: BPETokenizer

    public init(_ a: TextAutoencoderArchitecture, tokenizer: BPETokenizer, seed: UInt64) {
        tokenizer.checkFits(a.text, "the text VAE")
        let initializer = ParameterInitializer(seed: seed)
        architecture = a
        encoder = TextVAEEncoder(a, initializer)
        decoder = TextVAEDecoder(a, initializer)
        self.tokenizer = tokenizer
    }

    /// The posterior of each caption: mean and log-variance [N, latent_dim].
    public func encode(_ captions: [String]) -> DiagonalGaussian {
        let batch = tokenizer.batch(captions)
        return encoder(ids: batch.ids, keyMask: KeyMask(lengths: batch.lengths, keys: tokenizer.maxLength))
    }

    /// The teacher-forced prediction of each caption's tokens from latents z [N, latent_dim]:
    /// per-sample negative log-likelihood [N] (summed over the caption's tokens after the
    /// start token, its end token included), and how many of those tokens the argmax predicts.
    public func reconstruction(_ captions: [String], latent z: Tensor) -> (nll: Tensor, correct: [Int], tokens: [Int]) {
        let batch = tokenizer.batch(captions), l = tokenizer.maxLength, n = captions.count
        let logits = decoder(latent: z, ids: batch.ids)
        var rows: [Int] = [], targets: [Int] = [], owner: [Float] = []
        for (s, length) in batch.lengths.enumerated() {
            for p in 0..<(length - 1) {
                rows.append(s * l + p)
                targets.append(batch.ids[s * l + p + 1])
            }
        }
        let m = rows.count, v = architecture.text.vocabSize
        owner = [Float](repeating: 0, count: n * m)
        var k = 0
        for (s, length) in batch.lengths.enumerated() {
            for _ in 0..<(length - 1) { owner[s * m + k] = 1; k += 1 }
        }
        let picked = embedding(logits.reshaped([n * l, v]), indices: rows)   // [M, V]
        let nll = matmul(Tensor(shape: [n, m], scalars: owner), crossEntropy(picked, targets: targets).reshaped([m, 1])).reshaped([n])
        var correct = [Int](repeating: 0, count: n), tokens = [Int](repeating: 0, count: n)
        k = 0
        for (s, length) in batch.lengths.enumerated() {
            for _ in 0..<(length - 1) {
                let row = picked.pointer + k * v
                var best = 0
                for j in 1..<v where row[j] > row[best] { best = j }
                if best == targets[k] { correct[s] += 1 }
                tokens[s] += 1
                k += 1
            }
        }
        return (nll, correct, tokens)
    }

    /// Captions decoded from latents z [N, latent_dim], one token at a time: the most likely
    /// token (`topK` 1), or one drawn from the `topK` most likely by their softmax weights,
    /// sample i's draws keyed by (`seed`, `firstIndex` + i, position). Stops at the end token.
    public func decode(_ z: Tensor, topK: Int = 1, seed: UInt64 = 0, firstIndex: Int = 0) -> [String] {
        let n = z.shape[0], l = tokenizer.maxLength, v = architecture.text.vocabSize
        var ids = [Int](repeating: BPETokenizer.pad, count: n * l), done = [Bool](repeating: false, count: n)
        for s in 0..<n { ids[s * l] = BPETokenizer.start }
        let allowed = (0..<tokenizer.vocabularySize).filter { $0 != BPETokenizer.start && $0 != BPETokenizer.pad }
        for p in 0..<(l - 1) where done.contains(false) {
            let logits = withoutGradient { decoder(latent: z, ids: ids) }
            for s in 0..<n where !done[s] {
                let row = logits.pointer + (s * l + p) * v
                let next: Int
                if topK <= 1 {
                    next = allowed.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) }!
                } else {
                    let top = allowed.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }.prefix(topK)
                    let m = row[top.first!]
                    let weights = top.map { Double(Foundation.exp(row[$0] - m)) }
                    let u = RandomStream(seed: seed, stream: UInt64(firstIndex + s)).block(UInt64(p))
                    var r = Double(u.x) / 4_294_967_296 * weights.reduce(0, +)
                    var chosen = top.last!
                    for (t, w) in zip(top, weights) {
                        if r < w { chosen = t; break }
                        r -= w
                    }
                    next = chosen
                }
                ids[s * l + p + 1] = next
                if next == BPETokenizer.end || p + 2 == l { done[s] = true }
            }
        }
        return (0..<n).map { s in
            let tokens = ids[(s * l + 1)..<((s + 1) * l)].prefix { $0 != BPETokenizer.end && $0 != BPETokenizer.pad }
            return tokenizer.decode(Array(tokens))
        }
    }
}
