import Foundation
import Yams

/// A configuration problem, naming the file and the key path.
public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case unreadable(file: String, reason: String)
    case unknownKey(file: String, path: String, suggestion: String?)
    case wrongType(file: String, path: String, expected: String)
    case invalid(path: String, reason: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason): return "\(file): \(reason)"
        case let .unknownKey(file, path, suggestion):
            return "\(file): unknown key '\(path)'" + (suggestion.map { " (did you mean '\($0)'?)" } ?? "")
        case let .wrongType(file, path, expected): return "\(file): '\(path)' should be \(expected)"
        case let .invalid(path, reason): return "config: '\(path)' \(reason)"
        }
    }
}

/// Reads a YAML config over the defaults of `Config()`: every key in the file must
/// exist in the defaults (typos are errors, with a "did you mean"), each value must
/// have the default's shape (mapping, list or scalar) and decode to its type.
public enum ConfigLoader {
    /// Loads `path` (nil: the built-in reference recipe, `ReferenceRecipe.yaml`), then
    /// applies `overrides` ("a.b=value", YAML values).
    /// A run's engine must be able to compute as its config asks (a recorded config, read
    /// back from a checkpoint, need not: the run reading it brings its own).
    public static func load(_ path: String?, overrides: [String] = []) throws -> Config {
        let config: Config
        if let path {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigError.unreadable(file: path, reason: "cannot read the config file")
            }
            config = try load(text: text, file: path, overrides: overrides)
        } else {
            config = try load(text: ReferenceRecipe.yaml, file: "the built-in reference recipe", overrides: overrides)
        }
        if let reason = config.engine.precision.unsupportedReason { throw ConfigError.invalid(path: "engine.precision", reason: reason) }
        return config
    }

    /// YAML `text` (named `file` in errors) over the defaults, then `overrides`.
    static func load(text: String, file path: String, overrides: [String]) throws -> Config {
        var node = try defaultsNode()
        let user: Node?
        do { user = try Yams.compose(yaml: text) } catch {
            throw ConfigError.unreadable(file: path, reason: "not valid YAML: \(error)")
        }
        if let user { node = try merge(node, user, path: "", file: path) }
        for override in overrides {
            guard let eq = override.firstIndex(of: "="), eq != override.startIndex else {
                throw ConfigError.unreadable(file: "--set", reason: "'\(override)' is not key.path=value")
            }
            let keyPath = String(override[..<eq]), text = String(override[override.index(after: eq)...])
            guard let value = try? Yams.compose(yaml: text.isEmpty ? "''" : text) else {
                throw ConfigError.unreadable(file: "--set", reason: "'\(text)' is not a YAML value")
            }
            node = try set(node, keyPath.split(separator: ".").map(String.init), value, done: [], file: "--set")
        }
        let config: Config
        do {
            config = try YAMLDecoder().decode(Config.self, from: node)
        } catch let DecodingError.typeMismatch(type, context) {
            throw ConfigError.wrongType(file: path, path: dotted(context.codingPath), expected: describe(type))
        } catch let DecodingError.dataCorrupted(context) {
            if let unknown = context.underlyingError as? UnknownKey {   // in a list's item: the merge with the defaults cannot see it
                let at = dotted(context.codingPath)
                throw ConfigError.unknownKey(file: path, path: at + "." + unknown.key, suggestion: closest(unknown.key, unknown.known).map { at + "." + $0 })
            }
            throw ConfigError.wrongType(file: path, path: dotted(context.codingPath), expected: "a valid value")
        } catch let DecodingError.valueNotFound(type, context) {
            throw ConfigError.wrongType(file: path, path: dotted(context.codingPath), expected: describe(type))
        }
        return config
    }

    /// A config from YAML text (what a checkpoint records), named `source` in errors.
    public static func load(yamlText text: String, source: String) throws -> Config {
        do { return try load(text: text, file: source, overrides: []) } catch let e as ConfigError {
            throw ConfigError.unreadable(file: source, reason: "its recorded config does not load: \(e)")
        }
    }

    /// The YAML text of a config (what checkpoints record).
    public static func yaml(_ config: Config) throws -> String { try YAMLEncoder().encode(config) }

    static func defaultsNode() throws -> Node {
        guard let node = try Yams.compose(yaml: try yaml(Config())) else { preconditionFailure("the default config encodes to nothing") }
        return node
    }

    /// `base` with `user`'s values laid over it; unknown keys and shape changes throw.
    static func merge(_ base: Node, _ user: Node, path: String, file: String) throws -> Node {
        switch (base, user) {
        case let (.mapping(b), .mapping(u)):
            var merged = b
            for (k, v) in u {
                let key = k.string ?? ""
                let child = path.isEmpty ? key : path + "." + key
                guard let existing = b[key] else {
                    let known = Array(b.keys.compactMap(\.string))
                    throw ConfigError.unknownKey(file: location(file, k), path: child, suggestion: closest(key, known).map {
                        path.isEmpty ? $0 : path + "." + $0
                    })
                }
                merged[key] = try merge(existing, v, path: child, file: file)
            }
            return .mapping(merged)
        case (.mapping, _):
            throw ConfigError.wrongType(file: location(file, user), path: path, expected: "a mapping of keys")
        case (.sequence, .sequence), (.scalar, .scalar):
            return user
        case (.sequence, .scalar(let s)) where s.string == "[]" || s.string.isEmpty:
            return .sequence(.init([]))
        case (.sequence, _):
            throw ConfigError.wrongType(file: location(file, user), path: path, expected: "a list")
        case (.scalar, _):
            throw ConfigError.wrongType(file: location(file, user), path: path, expected: "a single value")
        default:
            return user
        }
    }

    /// Replaces the value at `keys` below `node`.
    static func set(_ node: Node, _ keys: [String], _ value: Node, done: [String], file: String) throws -> Node {
        guard let key = keys.first else { return try merge(node, value, path: done.joined(separator: "."), file: file) }
        guard case .mapping(var mapping) = node else {
            throw ConfigError.unknownKey(file: file, path: (done + keys).joined(separator: "."), suggestion: nil)
        }
        guard let child = mapping[key] else {
            let suggestion = closest(key, Array(mapping.keys.compactMap(\.string))).map { (done + [$0]).joined(separator: ".") }
            throw ConfigError.unknownKey(file: file, path: (done + [key]).joined(separator: "."), suggestion: suggestion)
        }
        mapping[key] = try set(child, Array(keys.dropFirst()), value, done: done + [key], file: file)
        return .mapping(mapping)
    }

    private static func location(_ file: String, _ node: Node) -> String {
        node.mark.map { "\(file):\($0.line)" } ?? file
    }

    private static func dotted(_ path: [CodingKey]) -> String {
        path.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        default: return "\(type)"
        }
    }

    /// The known key nearest to `key` by edit distance, when it is close.
    static func closest(_ key: String, _ known: [String]) -> String? {
        let best = known.map { ($0, editDistance(key, $0)) }.min { $0.1 < $1.1 }
        guard let best, best.1 <= max(2, key.count / 3) else { return nil }
        return best.0
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(b.count, 1) where !b.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
