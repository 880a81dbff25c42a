import Distributed
import Foundation
import Storage

/// `ldm-train prepare`: a folder of Fashion-MNIST IDX files or of images becomes a
/// dataset file. An image folder is prepared by every rank: each decodes its slice
/// of every split and writes a shard, so the result does not depend on the number
/// of ranks.
public enum Prepare {
    public struct Options: Sendable {
        public var source: String
        public var out: String
        public var preparation: ImagePreparation
        /// Held out as the test split when the folder has no train/ and test/.
        public var testFraction = 0.05
        public var seed = 0
        /// Skip images that do not decode (listed in the file) instead of stopping.
        public var skipInvalid = false
        public init(source: String, out: String, preparation: ImagePreparation) {
            (self.source, self.out, self.preparation) = (source, out, preparation)
        }
    }

    /// What a prepare made.
    public struct Summary: Sendable {
        public var rows: [Split: Int] = [:]
        public var classNames: [String] = []
        public var skipped: [(fileName: String, reason: String)] = []
        /// Images decoded and written per second, per rank (slowest rank's time).
        public var imagesPerSecondPerRank = 0.0

        public var description: String {
            let counts = Split.allCases.map { "\($0) \(rows[$0] ?? 0)" }.joined(separator: ", ")
            return "\(counts) rows" + (classNames.isEmpty ? "" : ", \(classNames.count) classes")
                + (skipped.isEmpty ? "" : "; skipped \(skipped.count) invalid image(s)")
                + (imagesPerSecondPerRank > 0 ? String(format: "; %.0f img/s per rank", imagesPerSecondPerRank) : "")
        }
    }

    @discardableResult
    public static func run(_ options: Options, communicator comm: Communicator) throws -> Summary {
        if FashionMNIST.isSource(options.source) {
            var problem = ""
            if comm.isRoot { do { try FashionMNIST.prepare(source: options.source, out: options.out) } catch { problem = "\(error)" } }
            problem = try comm.broadcast(problem)
            guard problem.isEmpty else { throw DataError(problem) }
            return try summary(options.out)
        }
        return try imageFolder(options, comm)
    }

    static func imageFolder(_ options: Options, _ comm: Communicator) throws -> Summary {
        let p = options.preparation
        guard [1, 3].contains(p.channels), p.resolution >= 1, p.background.count == 3 else {
            throw DataError("prepare: channels must be 1 or 3 and resolution positive, got \(p.channels) and \(p.resolution)")
        }
        // Rank 0 scans the folder; every rank gets the same list.
        var listing = "", problem = ""
        if comm.isRoot {
            do {
                let folder = try ImageFolder(options.source, testFraction: options.testFraction, seed: options.seed)
                listing = String(decoding: try JSONEncoder().encode(Listing(items: folder.items, classNames: folder.classNames)), as: UTF8.self)
            } catch { problem = "\(error)" }
        }
        problem = try comm.broadcast(problem)
        guard problem.isEmpty else { throw DataError(problem) }
        let folder = try JSONDecoder().decode(Listing.self, from: Data(try comm.broadcast(listing).utf8))
        // Each rank decodes its contiguous slice of every split, a block at a time, into its shard.
        let start = Date()
        let writer = try DatasetShardWriter(options.out, shape: [p.channels, p.resolution, p.resolution], communicator: comm)
        var skipped: [(String, String)] = []
        for split in Split.allCases where problem.isEmpty {
            let items = folder.items.filter { $0.split == split }
            let own = items[(comm.rank * items.count / comm.size)..<((comm.rank + 1) * items.count / comm.size)]
            for blockStart in stride(from: own.startIndex, to: own.endIndex, by: Self.blockRows) where problem.isEmpty {
                var block = DatasetColumns()
                for item in own[blockStart..<min(own.endIndex, blockStart + Self.blockRows)] where problem.isEmpty {
                    do {
                        let image = try DecodedImage.read(item.path)
                        block.append(DatasetRow(image: p.apply(image), label: item.label, caption: item.caption, fileName: item.fileName))
                    } catch {
                        if options.skipInvalid { skipped.append((item.fileName, "\(error)")) } else { problem = "\(error) (--skip-invalid skips such images)" }
                    }
                }
                do { try writer.append(split, block) } catch { problem = "rank \(comm.rank): \(error)" }
            }
        }
        var description = DatasetFile.Description()
        description.classNames = folder.classNames
        description.source = options.source
        description.settings = [
            .init("resolution", .integer(Int64(p.resolution))), .init("channels", .integer(Int64(p.channels))),
            .init("background", .text(p.background.map(String.init).joined(separator: ","))),
            .init("resize_filter", .text(p.filter.rawValue)), .init("test_fraction", .real(options.testFraction)),
            .init("split_seed", .integer(Int64(options.seed))),
        ]
        try writer.finish(problem: problem, description: description, skipped: skipped)
        let seconds = try comm.allGather(values: [Date().timeIntervalSince(start)]).max()!
        var summary = try summary(options.out)
        let images = summary.rows.values.reduce(0, +) + summary.skipped.count
        summary.imagesPerSecondPerRank = Double(images) / seconds / Double(comm.size)
        return summary
    }

    /// What the dataset file at `out` holds, read back from it.
    static func summary(_ out: String) throws -> Summary {
        let train = try DatasetSplit.open(out, split: .train), test = try DatasetSplit.open(out, split: .test)
        return Summary(rows: [.train: train.count, .test: test.count], classNames: train.classNames, skipped: try train.skipped())
    }

    /// Rows decoded before they are appended to the shard: what a rank holds at once.
    static let blockRows = 256

    struct Listing: Codable {
        var items: [ImageFolder.Item]
        var classNames: [String]
    }
}
