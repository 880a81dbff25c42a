import Foundation
import NN
import Testing

@Suite("Byte-level BPE tokenizer")
struct TokenizerTests {
    static let captions = ["red apple", "green apple", "apple pie", "red heart", "red car", "flag: Japan", "grinning face",
                           "grinning cat", "cat face", "red apple"]

    @Test("any UTF-8 text round-trips: ASCII, accents, CJK, emoji with ZWJ and skin tones, combining marks, empty")
    func roundTrip() {
        let t = BPETokenizer.learn(from: Self.captions, vocabularySize: 300, maxLength: 77)
        #expect(!t.merges.isEmpty)
        for text in ["red apple", "Crème brûlée", "日本の旗", "👩🏽‍💻 technologist", "e\u{301}\u{302}", "", " two  spaces ", "tab\tand\nnewline"] {
            let e = t.encode(text)
            #expect(!e.truncated)
            #expect(e.ids.first == BPETokenizer.start && e.ids.last == BPETokenizer.end)
            #expect(e.ids.allSatisfy { $0 >= 0 && $0 < t.vocabularySize })
            #expect(t.decode(e.ids) == text, "\(text)")
        }
    }

    @Test("learning merges the most frequent pair first and never across words; encoding a seen word uses its merges")
    func learning() {
        let t = BPETokenizer.learn(from: Self.captions, vocabularySize: 300, maxLength: 77)
        // "re" (red ×4, green) and " a" (apple ×3 after a space) are among the first merges; no merge holds a space after a letter.
        let first = t.decode([BPETokenizer.firstMerge])
        #expect(["re", "ed", " a", "ap", "pp", "pl", "le"].contains(first), "\(first)")
        for i in t.merges.indices { #expect(!t.decode([BPETokenizer.firstMerge + i]).dropFirst().contains(" ")) }
        #expect(t.encode("red apple").ids.count < 2 + "red apple".utf8.count)
        #expect(BPETokenizer.learn(from: Self.captions.reversed(), vocabularySize: 300, maxLength: 77) == t)
    }

    @Test("text longer than max_length − 2 tokens is cut to max_length and says so; the end token stays last")
    func truncation() {
        let t = BPETokenizer.learn(from: Self.captions, vocabularySize: 300, maxLength: 8)
        let long = t.encode("a caption much longer than eight tokens")
        #expect(long.truncated && long.ids.count == 8 && long.ids.last == BPETokenizer.end)
        #expect(!t.decode(long.ids).isEmpty && "a caption much longer than eight tokens".hasPrefix(t.decode(long.ids)))
        let batch = t.batch(["red", "a caption much longer than eight tokens", ""])
        #expect(batch.ids.count == 24 && batch.truncated == 1 && batch.lengths == [t.encode("red").ids.count, 8, 2])
        #expect(Array(batch.ids[16..<24]) == [BPETokenizer.start, BPETokenizer.end] + [Int](repeating: BPETokenizer.pad, count: 6))
    }

    @Test("the stored JSON gives the same tokenizer; corrupt JSON is refused with the reason")
    func stored() throws {
        let t = BPETokenizer.learn(from: Self.captions, vocabularySize: 300, maxLength: 77)
        #expect(try BPETokenizer(json: t.json) == t)
        let bad = t.json.replacingOccurrences(of: "\"merges\":[[", with: "\"merges\":[[999,")
        #expect(throws: DecodingError.self) { try BPETokenizer(json: bad) }
        let small = t.json.replacingOccurrences(of: "\"vocab_size\":300", with: "\"vocab_size\":260")
        #expect(throws: DecodingError.self) { try BPETokenizer(json: small) }
    }
}
