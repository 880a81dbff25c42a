import Foundation

/// Byte-level byte-pair encoding (Sennrich et al. 2016, over UTF-8 bytes as in GPT-2),
/// learned from a dataset's captions. Tokens 0–255 are the bytes, so any text
/// tokenizes; then come the start, end and padding tokens, then one token per merge.
/// Text is cut into words before each space (" apple" is a word) and merges never
/// cross words. A caption becomes [start, tokens…, end], at most `maxLength` long.
public struct BPETokenizer: Codable, Equatable, Sendable {
    public static let start = 256, end = 257, pad = 258
    /// The first merged token.
    public static let firstMerge = 259
    static let format = "swiftldm-bpe"

    /// A merge of two tokens into the token `firstMerge + its index`.
    public struct Pair: Hashable, Codable, Sendable, Comparable {
        public var left: Int, right: Int
        public static func < (a: Pair, b: Pair) -> Bool { (a.left, a.right) < (b.left, b.right) }
    }

    public let merges: [Pair]
    /// Rows of the token embedding: bytes, specials and merges fit in it.
    public let vocabularySize: Int
    public let maxLength: Int
    private let ranks: [Pair: Int]

    public init(merges: [Pair], vocabularySize: Int, maxLength: Int) {
        precondition(Self.firstMerge + merges.count <= vocabularySize, "BPE: \(merges.count) merges do not fit \(vocabularySize) tokens")
        precondition(maxLength >= 2, "BPE: max length \(maxLength) leaves no room for start and end")
        (self.merges, self.vocabularySize, self.maxLength) = (merges, vocabularySize, maxLength)
        ranks = Dictionary(uniqueKeysWithValues: merges.enumerated().map { ($1, $0) })
    }

    /// Learns up to `vocabularySize − 259` merges from `texts`: each round merges the
    /// most frequent adjacent pair (ties: the smallest pair), stopping early when no
    /// pair occurs twice. The same texts give the same tokenizer on every rank.
    public static func learn(from texts: [String], vocabularySize: Int, maxLength: Int) -> BPETokenizer {
        var counts: [[UInt8]: Int] = [:]
        for text in texts { for word in words(text) { counts[word, default: 0] += 1 } }
        var words = counts.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { $0.map(Int.init) }
        let frequency = counts.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { counts[$0]! }
        var merges: [Pair] = []
        while firstMerge + merges.count < vocabularySize {
            var pairs: [Pair: Int] = [:]
            for (w, f) in zip(words, frequency) where w.count > 1 {
                for i in 0..<(w.count - 1) { pairs[Pair(left: w[i], right: w[i + 1]), default: 0] += f }
            }
            guard let best = pairs.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }), best.value >= 2 else { break }
            let token = firstMerge + merges.count
            merges.append(best.key)
            for i in words.indices where words[i].count > 1 { words[i] = merge(words[i], best.key, into: token) }
        }
        return BPETokenizer(merges: merges, vocabularySize: vocabularySize, maxLength: maxLength)
    }

    /// `text` as [start, tokens…, end]; `truncated` when tokens were dropped to fit `maxLength`.
    public func encode(_ text: String) -> (ids: [Int], truncated: Bool) {
        var ids: [Int] = []
        for word in Self.words(text) {
            var symbols = word.map(Int.init)
            while symbols.count > 1 {   // the lowest-ranked pair present merges first
                var best: (rank: Int, pair: Pair)?
                for i in 0..<(symbols.count - 1) {
                    let pair = Pair(left: symbols[i], right: symbols[i + 1])
                    if let r = ranks[pair], r < best?.rank ?? .max { best = (r, pair) }
                }
                guard let best else { break }
                symbols = Self.merge(symbols, best.pair, into: Self.firstMerge + best.rank)
            }
            ids += symbols
        }
        let room = maxLength - 2
        return ([Self.start] + ids.prefix(room) + [Self.end], ids.count > room)
    }

    /// The text of `ids` (special tokens skipped; a cut UTF-8 sequence becomes U+FFFD).
    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        func append(_ id: Int) {
            if id < 256 { bytes.append(UInt8(id)) } else if id >= Self.firstMerge && id - Self.firstMerge < merges.count {
                let m = merges[id - Self.firstMerge]
                append(m.left)
                append(m.right)
            }
        }
        ids.forEach(append)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// What a text is once tokenized and decoded back: itself, unless it was cut to `maxLength`.
    public func roundTrip(_ text: String) -> String { decode(encode(text).ids) }

    /// A batch of texts as `maxLength` tokens each (padded), with each one's length
    /// before padding and how many were truncated.
    public func batch(_ texts: [String]) -> (ids: [Int], lengths: [Int], truncated: Int) {
        var ids: [Int] = [], lengths: [Int] = [], truncated = 0
        for text in texts {
            let e = encode(text)
            ids += e.ids + [Int](repeating: Self.pad, count: maxLength - e.ids.count)
            lengths.append(e.ids.count)
            if e.truncated { truncated += 1 }
        }
        return (ids, lengths, truncated)
    }

    /// The UTF-8 bytes of `text` cut before each space.
    static func words(_ text: String) -> [[UInt8]] {
        var out: [[UInt8]] = [], current: [UInt8] = []
        for byte in text.utf8 {
            if byte == 0x20 && !current.isEmpty { out.append(current); current = [] }
            current.append(byte)
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    static func merge(_ symbols: [Int], _ pair: Pair, into token: Int) -> [Int] {
        var out: [Int] = [], i = 0
        out.reserveCapacity(symbols.count)
        while i < symbols.count {
            if i + 1 < symbols.count && symbols[i] == pair.left && symbols[i + 1] == pair.right {
                out.append(token)
                i += 2
            } else {
                out.append(symbols[i])
                i += 1
            }
        }
        return out
    }

    // MARK: Stored form (a checkpoint attribute)

    enum CodingKeys: String, CodingKey { case format, merges, vocabularySize = "vocab_size", maxLength = "max_length" }

    public func encode(to encoder: Swift.Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Self.format, forKey: .format)
        try c.encode(merges.map { [$0.left, $0.right] }, forKey: .merges)
        try c.encode(vocabularySize, forKey: .vocabularySize)
        try c.encode(maxLength, forKey: .maxLength)
    }

    public init(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard try c.decode(String.self, forKey: .format) == Self.format else {
            throw DecodingError.dataCorruptedError(forKey: .format, in: c, debugDescription: "not a \(Self.format) tokenizer")
        }
        let vocabularySize = try c.decode(Int.self, forKey: .vocabularySize), maxLength = try c.decode(Int.self, forKey: .maxLength)
        let pairs = try c.decode([[Int]].self, forKey: .merges)
        var merges: [Pair] = []
        for (i, p) in pairs.enumerated() {   // a merge may only use tokens made before it
            guard p.count == 2, p.allSatisfy({ $0 >= 0 && $0 < Self.firstMerge + i && !(256..<Self.firstMerge).contains($0) }) else {
                throw DecodingError.dataCorruptedError(forKey: .merges, in: c, debugDescription: "merge \(i) \(p) is not a pair of earlier tokens")
            }
            merges.append(Pair(left: p[0], right: p[1]))
        }
        guard maxLength >= 2, Self.firstMerge + merges.count <= vocabularySize else {
            throw DecodingError.dataCorruptedError(forKey: .vocabularySize, in: c,
                                                   debugDescription: "\(merges.count) merges, vocab_size \(vocabularySize), max_length \(maxLength) do not fit")
        }
        self.init(merges: merges, vocabularySize: vocabularySize, maxLength: maxLength)
    }

    /// A short identity: sizes and a 64-bit FNV-1a hash of the merges.
    public var identity: String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for m in merges { for v in [m.left, m.right] { h = (h ^ UInt64(v)) &* 0x100_0000_01b3 } }
        return "\(merges.count) merges, vocab_size \(vocabularySize), max_length \(maxLength), hash \(String(h, radix: 16))"
    }

    /// The JSON stored in a checkpoint's `tokenizer` attribute.
    public var json: String { String(decoding: try! JSONEncoder().encode(self), as: UTF8.self) }

    public init(json: String) throws { self = try JSONDecoder().decode(BPETokenizer.self, from: Data(json.utf8)) }
}

extension BPETokenizer {
    /// Stops, naming `model`, when this tokenizer's vocabulary or length does not fit the
    /// text transformer `a` it is to feed (a programmer error: stages check configs first).
    func checkFits(_ a: TextEncoderArchitecture, _ model: String) {
        precondition(vocabularySize <= a.vocabSize && maxLength == a.maxSeqLen,
                     "the tokenizer (\(vocabularySize) tokens, length \(maxLength)) does not fit \(model)")
    }
}
