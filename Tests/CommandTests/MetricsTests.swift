import Foundation
import Storage
import Testing
import TestSupport
import Training

@Suite("metrics where users look: TensorBoard event files and ldm-train plot", .serialized)
struct MetricsTests {
    /// Every numeric field of metrics.jsonl at its step, as TensorBoard's own reader
    /// (its record loader checks each record's CRC-32C; its Event proto parses them) finds it.
    @Test("TensorBoard's reader finds every logged scalar (losses, lr, img/s, grad norm, eval figures) at its step, and the grid PNG as an image")
    func tensorBoard() throws {
        let run = discriminatorStage1
        let events = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasPrefix("events.out.tfevents.") }
        #expect(events.count == 1, "\(events)")
        let out = try python("""
            import json, glob
            from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
            from tensorboard.compat.proto.event_pb2 import Event
            scalars, images, first = {}, {}, None
            for record in RawEventFileLoader(glob.glob('\(run)/events.out.tfevents.*')[0]).Load():
                e = Event.FromString(record)
                first = first or e.file_version
                for v in e.summary.value:
                    if v.HasField('image'):
                        images[v.tag] = [e.step, v.image.width, v.image.height, v.image.encoded_image_string.hex()]
                    else:
                        scalars.setdefault(v.tag, {})[str(e.step)] = v.simple_value
            print(json.dumps({'first': first, 'scalars': scalars, 'images': images}))
            """)
        let read = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(read["first"] as? String == "brain.Event:2")
        let scalars = try #require(read["scalars"] as? [String: [String: Double]])
        let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        var checked = Set<String>()
        for line in lines {
            let record = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            guard let step = record["step"] as? Int else { continue }
            for (key, value) in record where !["step", "epoch", "time"].contains(key) {
                guard let v = (value as? Double) ?? (value as? Int).map(Double.init) else { continue }
                // TensorBoard keeps float32; both sides went through decimal JSON as doubles,
                // which may leave the last bits of the double apart, so compare the float32s.
                #expect(scalars[key]?[String(step)].map(Float.init) == Float(v), "\(key) at step \(step): \(scalars[key] ?? [:]) against \(v)")
                checked.insert(key)
            }
        }
        #expect(checked.isSuperset(of: ["loss", "rec", "kl", "lr", "img_per_s", "grad_norm", "disc_loss", "d_weight", "test_psnr", "test_ssim"]),
                "\(checked.sorted())")
        let images = try #require(read["images"] as? [String: [Any]])
        let grid = try #require(images["reconstructions"], "\(images.keys)")
        let png = try Data(contentsOf: URL(fileURLWithPath: run + "/reconstructions-00000002.png"))
        #expect(grid[0] as? Int == 2 && grid[3] as? String == png.map { String(format: "%02x", $0) }.joined())
        let decoded = try PNGCodecCheck.size(png)
        #expect(grid[1] as? Int == decoded.width && grid[2] as? Int == decoded.height)
    }

    @Test("CRC-32C of the standard check string")
    func crc32c() {
        #expect(TensorBoardEvents.crc32c(Data("123456789".utf8)) == 0xE306_9283)
    }

    @Test("plot draws a panel per curve of a run into a PNG; a run without metrics or with a damaged line is named")
    func plot() throws {
        let out = temporaryRun() + ".png"
        let r = try ldmTrain(["plot", discriminatorStage1, "--out", out])
        #expect(r.status == 0 && r.out.contains("plotted loss, d_weight, disc_loss, g_loss, kl, rec, grad_norm, lr"), "\(r.out)\(r.err)")
        let size = try PNGCodecCheck.size(try Data(contentsOf: URL(fileURLWithPath: out)))
        #expect(size.width == 920 && size.height == 36 + 4 * 250, "\(size)")
        let blue = try python("""
            from PIL import Image; im = Image.open('\(out)').convert('RGB')
            print(sum(1 for p in im.getdata() if p == (25, 90, 200)))
            """)
        #expect((Int(blue) ?? 0) > 8 * 12, "\(blue) curve pixels")   // one logged step: a mark per panel
        let empty = temporaryRun()
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let missing = try ldmTrain(["plot", empty])
        #expect(missing.status != 0 && missing.err.contains("\(empty)/metrics.jsonl: cannot read the metrics log"), "\(missing.err)")
        try "{\"step\": 1, \"lr\": 0.1, \"loss\": 2}\n{\"step\": 2, \"lr\n".write(toFile: empty + "/metrics.jsonl", atomically: true, encoding: .utf8)
        let damaged = try ldmTrain(["plot", empty])
        #expect(damaged.status != 0 && damaged.err.contains("metrics.jsonl, line 2: not a JSON object"), "\(damaged.err)")
    }
}

/// A PNG's size from its IHDR chunk.
enum PNGCodecCheck {
    static func size(_ png: Data) throws -> (width: Int, height: Int) {
        guard png.count > 24 else { throw DataError("not a PNG") }
        func be32(_ at: Int) -> Int { png[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        return (be32(16), be32(20))
    }
}
