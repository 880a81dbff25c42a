import Datasets
import Foundation
import Storage
import Testing
import TestSupport
import Training

let scripts = packageRoot.appendingPathComponent("Tests/Scripts").path

/// A generated image folder (Tests/Scripts/make_image_folder.py): 13 images of every
/// PNG colour type and JPEG kind, 17×23 to 300×200, in cat/ and dog/, with a
/// metadata.jsonl of non-ASCII captions; `bad` adds one bad input of that kind.
func imageFolder(bad: String? = nil, splits: Bool = false) throws -> String {
    let folder = temporaryDirectory().appendingPathComponent("images").path
    _ = try python(script: "\(scripts)/make_image_folder.py", [folder] + (bad.map { ["--bad", $0] } ?? []) + (splits ? ["--splits"] : []))
    return folder
}

let fixtureFiles = ["cat/gray.png", "cat/gray_alpha.png", "cat/palette.png", "cat/palette_transparent.png", "cat/rgb.png", "cat/rgba.png",
                    "dog/baseline.jpg", "dog/gray.jpeg", "dog/gray16.png", "dog/progressive.JPG", "dog/rgb16.png", "dog/rgba16.png"]

/// Every column of both splits, for comparing two dataset files.
func datasetContents(_ path: String) throws -> [String] {
    try Split.allCases.flatMap { split -> [String] in
        let s = try DatasetSplit.open(path, split: split)
        return try s.rows(Array(0..<s.count)).map { "\($0.fileName)|\($0.label)|\($0.caption)|\($0.image)" } + ["\(s.classNames)"]
    }
}

@Suite("Image folders", .serialized)
struct ImageFolderTests {
    @Test("prepared pixels equal Pillow's for every PNG colour type and JPEG kind, RGB and gray, with two filters",
          arguments: [(3, 32, "bicubic"), (1, 20, "lanczos")])
    func matchesPillow(channels: Int, resolution: Int, filter: String) throws {
        let folder = try imageFolder(), out = folder + ".h5"
        let r = try ldmTrain(["prepare", "--source", folder, "--out", out, "--resolution", "\(resolution)", "--channels", "\(channels)",
                              "--filter", filter])
        #expect(r.status == 0, "\(r.err)")
        let json = try python(script: "\(scripts)/compare_with_pil.py", [out, folder])
        let differences = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Int]
        #expect(differences.keys.sorted() == fixtureFiles.sorted())
        // 8-bit sources: byte for byte (same decoders, Pillow's resampling arithmetic). 16-bit
        // sources: within 2 levels, since Pillow keeps the high byte where we round v·255/65535.
        for (name, d) in differences { #expect(d <= (name.contains("16") ? 2 : 0), "\(name) differs by \(d)") }
    }

    @Test("labels from subfolders, captions and label names from metadata.jsonl, a seeded held-out split, h5py reads str")
    func layout() throws {
        let folder = try imageFolder(), out = folder + ".h5"
        #expect(try ldmTrain(["prepare", "--source", folder, "--out", out, "--resolution", "16", "--channels", "3"]).status == 0)
        let train = try DatasetSplit.open(out, split: .train), test = try DatasetSplit.open(out, split: .test)
        #expect(train.count == 11 && test.count == 1 && train.classNames == ["cat", "dog"])
        let rows = try train.rows(Array(0..<train.count)) + test.rows([0])
        #expect(Set(rows.map(\.fileName)) == Set(fixtureFiles))
        for row in rows {
            let expected: Int32 = row.fileName.hasPrefix("cat/") || row.fileName == "dog/baseline.jpg" ? 0 : 1   // metadata relabels one
            #expect(row.label == expected, "\(row.fileName)")
        }
        let captions = Dictionary(uniqueKeysWithValues: rows.map { ($0.fileName, $0.caption) })
        #expect(captions["cat/rgb.png"] == "Eine Katze, die „schnurrt“ 🐈" && captions["dog/baseline.jpg"] == "犬が走る")
        #expect(captions["dog/gray16.png"] == "")
        let read = try python("""
            import h5py; f = h5py.File('\(out)', 'r'); c = f['train/captions']
            print(h5py.check_string_dtype(c.dtype).encoding, type(c.asstr()[0]).__name__, list(f.attrs['class_names']), f.attrs['resolution'],
                  sorted(c.asstr()[:])[-1])
            """)
        #expect(read == "utf-8 str ['cat', 'dog'] 16 犬が走る")
        // The same folder with train/ and test/ subfolders: the folders are the splits.
        let split = try imageFolder(splits: true), splitOut = split + ".h5"
        #expect(try ldmTrain(["prepare", "--source", split, "--out", splitOut, "--resolution", "16", "--channels", "1"]).status == 0)
        let heldOut = try DatasetSplit.open(splitOut, split: .test)
        #expect(try DatasetSplit.open(splitOut, split: .train).count == 12 && heldOut.count == 2)
        #expect(try heldOut.fileNames([0, 1]) == ["test/cat/held.png", "test/dog/held.jpg"] && heldOut.labels == [0, 1])
    }

    @Test("1 rank and 2 ranks prepare the same dataset; 2 ranks write 2 shards mapped by the file")
    func ranks() throws {
        let folder = try imageFolder(), one = folder + "-1.h5", two = folder + "-2.h5"
        let args = ["--source", folder, "--resolution", "24", "--channels", "3", "--test-fraction", "0.25"]
        #expect(try ldmTrain(["prepare", "--out", one] + args).status == 0)
        let r = try mpirunLocal(2, ["ldm-train", "prepare", "--out", two] + args)
        #expect(r.status == 0, "\(r.err)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: two + ".shards").sorted()
                == ["shard-00000-of-00002.h5", "shard-00001-of-00002.h5"])
        #expect(try DatasetSplit.open(two, split: .test).count == 3)
        #expect(try datasetContents(one) == datasetContents(two))
        #expect(try ldmTrain(["inspect", two]).out.contains("verification: ok"))
        // Without its shard the file would read zeros: opening and inspect say which shard is missing.
        try FileManager.default.removeItem(atPath: two + ".shards/shard-00001-of-00002.h5")
        let e = #expect(throws: DataError.self) { try DatasetSplit.open(two, split: .train) }
        #expect(e?.description.contains("shard-00001-of-00002.h5 is missing") == true)
        #expect(try ldmTrain(["inspect", two]).out.contains("verification: FAILED"))
    }

    @Test("a folder larger than a rank's block of rows: shards grow block by block and keep the folder's order")
    func manyImages() throws {
        let folder = temporaryDirectory().appendingPathComponent("many").path
        _ = try python("""
            import os; from PIL import Image
            os.makedirs('\(folder)')
            for i in range(1200): Image.new('L', (5, 7), i % 251).save('\(folder)/%04d.png' % i)
            """)
        let out = folder + ".h5"
        let r = try mpirunLocal(2, ["ldm-train", "prepare", "--source", folder, "--out", out, "--resolution", "4", "--channels", "1",
                                    "--test-fraction", "0"])
        #expect(r.status == 0, "\(r.err)")
        let train = try DatasetSplit.open(out, split: .train)
        #expect(train.count == 1200 && train.labels.allSatisfy { $0 == -1 })
        let rows = Array(0..<1200)
        #expect(try train.fileNames(rows) == rows.map { String(format: "%04d.png", $0) })
        let images = try train.images(rows)
        #expect(rows.allSatisfy { i in images[(i * 16)..<((i + 1) * 16)].allSatisfy { Int($0) == i % 251 } })
    }

    @Test("bad input: one line naming the file (and line), a non-zero exit, no output left behind", arguments: [
        ("json", "metadata.jsonl:4: not a JSON object"),
        ("missing", "metadata.jsonl:4: \"file_name\" cat/nowhere.png names no file"),
        ("caption", "metadata.jsonl:4: \"text\" is not a string"),
        ("truncated", "cat/truncated.png: damaged or truncated PNG"),
        ("truncated-jpeg", "dog/cut.jpg: damaged or truncated JPEG"),
        ("not-image", "dog/notes.png: neither a PNG nor a JPEG file"),
        ("dangling", "dog/dangling.png: cannot read"),
        ("empty", "no images (*.png, *.jpg, *.jpeg)"),
    ])
    func badInput(kind: String, message: String) throws {
        let folder = try imageFolder(bad: kind == "empty" ? nil : kind)
        if kind == "empty" { for entry in try FileManager.default.contentsOfDirectory(atPath: folder) { try FileManager.default.removeItem(atPath: "\(folder)/\(entry)") } }
        let out = folder + ".h5"
        for ranks in kind == "truncated" ? [1, 2] : [1] {   // under mpirun too: every rank stops, none hangs
            let r: (status: Int32, out: String, err: String)
            if ranks == 1 {
                r = try ldmTrain(["prepare", "--source", folder, "--out", out])
            } else {
                let m = try mpirunLocal(2, ["ldm-train", "prepare", "--source", folder, "--out", out], timeout: 120)
                r = (m.status, m.out, m.err)
            }
            #expect(r.status != 0)
            #expect(r.err.contains(message), "\(r.err)")
            #expect(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count == 1, "\(r.err)")
            let left = try FileManager.default.contentsOfDirectory(atPath: (out as NSString).deletingLastPathComponent)
            #expect(left.filter { $0.hasPrefix("images.h5") }.isEmpty, "left behind: \(left)")
        }
    }

    @Test("--skip-invalid leaves bad images out, lists them with reasons in the file and prints the count")
    func skipInvalid() throws {
        let folder = try imageFolder(bad: "truncated")
        try Data("plain text".utf8).write(to: URL(fileURLWithPath: folder + "/dog/notes.png"))
        let out = folder + ".h5"
        let r = try mpirunLocal(2, ["ldm-train", "prepare", "--source", folder, "--out", out, "--resolution", "16", "--skip-invalid"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("skipped 2 invalid image(s)"))
        let train = try DatasetSplit.open(out, split: .train), test = try DatasetSplit.open(out, split: .test)
        #expect(train.count + test.count == 12)
        let skipped = try train.skipped()
        #expect(skipped.map(\.fileName).sorted() == ["cat/truncated.png", "dog/notes.png"])
        #expect(skipped.allSatisfy { $0.reason.contains($0.fileName) })
    }

    @Test("ldm-train runs outside the repository: with no config it prepares Fashion-MNIST under the current directory; an image-folder recipe runs prepare and the autoencoder there")
    func anyDirectory() throws {
        let here = temporaryDirectory()
        let prepared = try ldmTrain(["prepare"], in: here)
        #expect(prepared.status == 0, "\(prepared.err)")
        #expect(try DatasetSplit.open(here.appendingPathComponent("Datasets/fashion-mnist.h5").path, split: .test).count == 10000)
        let folder = try imageFolder()
        let config = here.appendingPathComponent("pets.yaml").path
        try """
            data: {path: Datasets/pets.h5, source: \(folder), resolution: 16, channels: 3, flip: false}
            autoencoder:
              model: {in_channels: 3, out_ch: 3, resolution: 16, ch: 32, ch_mult: [1, 2], z_channels: 2, embed_dim: 2}
              training: {steps: 2, batch_size: 4, log_every: 1, image_every: 2, checkpoint_every: 2, eval_images: 1}
            pipeline: {last_stage: autoencoder}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let run = try ldmTrain(["pipeline", "--config", config], in: here)
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.contains("train 11, test 1 rows, 2 classes") && run.out.contains("last_stage: autoencoder"), "\(run.out)")
        #expect(Pipeline.completedStep(here.appendingPathComponent("Checkpoints/autoencoder").path) == 2)
        #expect(FileManager.default.fileExists(atPath: here.appendingPathComponent("Checkpoints/autoencoder/reconstructions-00000002.png").path))
    }
}
