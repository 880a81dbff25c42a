import Foundation
import Storage

/// A folder of images laid out as torchvision's ImageFolder and the Hugging Face
/// imagefolder loader expect:
/// - `*.png`, `*.jpg`, `*.jpeg` (any case), found recursively, in byte order of their paths;
/// - `train/` and `test/` subfolders give the splits; without `test/`, a seeded fraction is held out;
/// - first-level subfolders (of the folder or of each split) give class labels when
///   every image sits in one, their names sorted;
/// - an optional `metadata.jsonl` (in the folder or a split folder) gives per file
///   `{"file_name": ..., "text": ..., "label": ...}`, `file_name` relative to its own
///   folder; its `label` (an integer, or a class name) wins over the subfolder's.
public struct ImageFolder: Sendable {
    /// One image to prepare.
    public struct Item: Sendable, Codable, Equatable {
        public var path: String
        /// Relative to the folder: what the dataset's `file_name` holds.
        public var fileName: String
        public var split: Split
        public var label: Int32
        public var caption: String
    }

    public let root: String
    public let items: [Item]
    public let classNames: [String]

    static let extensions: Set<String> = ["png", "jpg", "jpeg"]

    /// Scans `root`. `testFraction` and `seed` choose the held-out rows when the
    /// folder has no `train/` and `test/` subfolders.
    public init(_ root: String, testFraction: Double, seed: Int) throws {
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError("\(root): no such folder")
        }
        guard (0..<1).contains(testFraction) else { throw DataError("--test-fraction must be in [0, 1), got \(testFraction)") }
        self.root = root
        let splitFolders = Split.allCases.filter { Self.isDirectory("\(root)/\($0)") }
        let layout: [(Split?, String)] = splitFolders.isEmpty ? [(nil, "")] : splitFolders.map { ($0, "\($0.rawValue)/") }
        var found: [(split: Split?, prefix: String, relative: String)] = []
        for (split, prefix) in layout {
            for relative in try Self.images(below: root + "/" + prefix) { found.append((split, prefix, relative)) }
        }
        guard !found.isEmpty else { throw DataError("\(root): no images (*.png, *.jpg, *.jpeg) in the folder or below it") }
        // Class labels from first-level subfolders, when every image has one.
        let folderLabels = found.allSatisfy { $0.relative.contains("/") }
        var names = folderLabels ? Set(found.map { String($0.relative.split(separator: "/")[0]) }) : []
        var metadata: [String: Metadata.Entry] = [:]
        for prefix in Set([""] + layout.map(\.1)).sorted() {
            for (key, entry) in try Metadata.read(root + "/" + prefix + "metadata.jsonl", folder: root + "/" + prefix) {
                metadata[prefix + key] = entry
                if case .name(let n)? = entry.label { names.insert(n) }
            }
        }
        classNames = names.sorted()
        let index = Dictionary(uniqueKeysWithValues: classNames.enumerated().map { ($0.element, Int32($0.offset)) })
        var items = found.map { f -> Item in
            let fileName = f.prefix + f.relative, entry = metadata[fileName]
            var label: Int32 = folderLabels ? index[String(f.relative.split(separator: "/")[0])]! : -1
            switch entry?.label {
            case .number(let n)?: label = n
            case .name(let n)?: label = index[n]!
            case nil: break
            }
            return Item(path: root + "/" + fileName, fileName: fileName, split: f.split ?? .train, label: label, caption: entry?.text ?? "")
        }
        if !splitFolders.contains(.test) { Self.holdOut(&items, fraction: testFraction, seed: seed) }   // no test/: hold some out
        self.items = items
    }

    /// Marks round(fraction × N) items, chosen by a seeded permutation, as test.
    static func holdOut(_ items: inout [Item], fraction: Double, seed: Int) {
        let n = Int((fraction * Double(items.count)).rounded())
        for i in epochPermutation(count: items.count, seed: seed, epoch: 0).prefix(n) { items[i].split = .test }
    }

    static func isDirectory(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// Image files below `folder`, as paths relative to it, sorted by their UTF-8 bytes.
    static func images(below folder: String) throws -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: folder) else { throw DataError("\(folder): cannot list the folder") }
        var out: [String] = []
        while let relative = walker.nextObject() as? String {
            if extensions.contains((relative as NSString).pathExtension.lowercased()), !isDirectory(folder + relative) { out.append(relative) }
        }
        return out.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }
}

/// `metadata.jsonl`: one JSON object per line.
enum Metadata {
    enum Label: Equatable, Decodable {
        case number(Int32), name(String)
        init(from decoder: Decoder) throws {
            let value = try decoder.singleValueContainer()
            if let n = try? value.decode(Int32.self), n >= 0 { self = .number(n); return }
            if let s = try? value.decode(String.self) { self = .name(s); return }
            throw DecodingError.typeMismatch(Label.self, .init(codingPath: decoder.codingPath, debugDescription: "a class name or an integer ≥ 0"))
        }
    }
    struct Entry: Decodable {
        var fileName: String?
        var text: String?
        var label: Label?
        enum CodingKeys: String, CodingKey { case fileName = "file_name", text, label }
    }

    /// Entries by `file_name` (relative to `folder`); none when the file is absent.
    static func read(_ path: String, folder: String) throws -> [String: Entry] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw DataError("\(path): cannot read it as UTF-8 text") }
        var entries: [String: Entry] = [:]
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let at = "\(path):\(number + 1)", data = Data(line.utf8)
            guard (try? JSONSerialization.jsonObject(with: data)) is [String: Any] else { throw DataError("\(at): not a JSON object") }
            let entry: Entry
            do { entry = try JSONDecoder().decode(Entry.self, from: data) } catch let DecodingError.typeMismatch(_, context) {
                let key = context.codingPath.first?.stringValue ?? "?"
                throw DataError("\(at): \"\(key)\" is not \(key == "label" ? "a class name or an integer ≥ 0" : "a string")")
            }
            guard let name = entry.fileName, !name.isEmpty else { throw DataError("\(at): no \"file_name\" string") }
            guard FileManager.default.fileExists(atPath: folder + name) else { throw DataError("\(at): \"file_name\" \(name) names no file in \(folder)") }
            guard entries[name] == nil else { throw DataError("\(at): \(name) is listed twice") }
            entries[name] = entry
        }
        return entries
    }
}
