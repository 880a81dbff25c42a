import Datasets
import Foundation
import Storage

/// `ldm-train plot`: a run's training curves from its metrics.jsonl as one PNG, for
/// those without TensorBoard: a panel per logged quantity (the losses, learning rate,
/// gradient norm), the logged values in a light line and their exponential smoothing
/// (TensorBoard's default weight, 0.6) over them, on a log scale when they span more
/// than a factor of 20, with the name, the value range and the step range written in
/// a small built-in bitmap font.
public enum LossPlot {
    /// Keys of training records that are not curves.
    static let notCurves: Set<String> = ["step", "epoch", "time", "img_per_s", "exposed_comm_ms"]

    /// The curves of metrics.jsonl at `path`: every numeric key of the training records
    /// (those with a learning rate), by step; a resumed run's repeated steps keep the last.
    public static func curves(_ path: String) throws -> [(name: String, points: [(step: Int, value: Double)])] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw DataError("\(path): cannot read the metrics log (is it a run directory?)")
        }
        var series: [String: [Int: Double]] = [:]
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw DataError("\(path), line \(number + 1): not a JSON object")
            }
            guard object["lr"] != nil, let step = object["step"] as? Int else { continue }
            for (key, value) in object where !notCurves.contains(key) {
                guard let v = (value as? Double) ?? (value as? Int).map(Double.init), v.isFinite else { continue }
                series[key, default: [:]][step] = v
            }
        }
        guard !series.isEmpty else { throw DataError("\(path): no training steps logged yet") }
        let order = ["loss"] + series.keys.filter { $0 != "loss" && $0 != "lr" && $0 != "grad_norm" }.sorted() + ["grad_norm", "lr"]
        return order.compactMap { key in series[key].map { (key, $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }) } }
    }

    /// Draws the curves of `metrics` (a metrics.jsonl) into the PNG `out`; returns the curves' names.
    @discardableResult
    public static func draw(metrics: String, out: String, title: String) throws -> [String] {
        let curves = try curves(metrics)
        let columns = 2, panelWidth = 460, panelHeight = 250, header = 36
        let rows = (curves.count + columns - 1) / columns
        var canvas = Canvas(width: columns * panelWidth, height: header + rows * panelHeight)
        canvas.text(title, x: 12, y: 10, scale: 2, color: Canvas.ink)
        for (i, curve) in curves.enumerated() {
            canvas.panel(curve.name, curve.points, smooth: curve.name != "lr", x: (i % columns) * panelWidth, y: header + (i / columns) * panelHeight,
                         width: panelWidth, height: panelHeight)
        }
        try PNGCodec.write(out, width: canvas.width, height: canvas.height, channels: 3, pixels: canvas.pixels)
        return curves.map(\.name)
    }
}

/// An RGB raster with lines, boxes and 5×7 bitmap text.
struct Canvas {
    let width: Int, height: Int
    var pixels: [UInt8]
    static let ink: (UInt8, UInt8, UInt8) = (33, 33, 33)
    static let grey: (UInt8, UInt8, UInt8) = (170, 170, 170)
    static let light: (UInt8, UInt8, UInt8) = (160, 190, 235)
    static let blue: (UInt8, UInt8, UInt8) = (25, 90, 200)

    init(width: Int, height: Int) {
        (self.width, self.height) = (width, height)
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    mutating func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        (pixels[i], pixels[i + 1], pixels[i + 2]) = c
    }

    /// A line of `thickness` pixels (Bresenham, thickened downwards and rightwards).
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ c: (UInt8, UInt8, UInt8), thickness: Int = 1) {
        var (x, y) = (x0, y0)
        let dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var error = dx + dy
        while true {
            for a in 0..<thickness { for b in 0..<thickness { set(x + a, y + b, c) } }
            if x == x1 && y == y1 { break }
            let e2 = 2 * error
            if e2 >= dy { error += dy; x += sx }
            if e2 <= dx { error += dx; y += sy }
        }
    }

    mutating func text(_ s: String, x: Int, y: Int, scale: Int = 1, color: (UInt8, UInt8, UInt8)) {
        for (k, ch) in s.lowercased().enumerated() {
            let rows = Canvas.glyphs[ch] ?? Canvas.glyphs["?"]!
            for (r, bits) in rows.enumerated() {
                for col in 0..<5 where bits & (0x10 >> col) != 0 {
                    for a in 0..<scale { for b in 0..<scale { set(x + (k * 6 + col) * scale + a, y + r * scale + b, color) } }
                }
            }
        }
    }

    static func textWidth(_ s: String, scale: Int = 1) -> Int { s.count * 6 * scale }

    /// One curve's panel: name, frame, value and step ranges, the values and (with
    /// `smooth`) their smoothing.
    mutating func panel(_ name: String, _ points: [(step: Int, value: Double)], smooth: Bool, x: Int, y: Int, width: Int, height: Int) {
        let (left, right, top, bottom) = (x + 70, x + width - 16, y + 26, y + height - 28)
        text(name, x: x + 12, y: y + 6, scale: 2, color: Canvas.ink)
        for (a, b, c, d) in [(left, top, right, top), (left, bottom, right, bottom), (left, top, left, bottom), (right, top, right, bottom)] {
            line(a, b, c, d, Canvas.grey)
        }
        // A quantity spanning more than a factor of 20 (a loss's first steps) on a log scale.
        let logScale = points.allSatisfy { $0.value > 0 } && points.map(\.value).max()! > 20 * points.map(\.value).min()!
        let values = points.map { logScale ? log10($0.value) : $0.value }
        var (low, high) = (values.min()!, values.max()!)
        if high - low < 1e-12 * max(abs(high), 1) { (low, high) = (low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)) }
        let (first, last) = (points.first!.step, points.last!.step)
        func label(_ v: Double) -> String { String(format: "%.4g", logScale ? pow(10, v) : v) }
        text(label(high), x: left - 6 - Canvas.textWidth(label(high)), y: top, color: Canvas.ink)
        text(label(low), x: left - 6 - Canvas.textWidth(label(low)), y: bottom - 7, color: Canvas.ink)
        if logScale { text("log scale", x: right - Canvas.textWidth("log scale"), y: y + 12, color: Canvas.grey) }
        text("step \(first)", x: left, y: bottom + 8, color: Canvas.ink)
        text("\(last)", x: right - Canvas.textWidth("\(last)"), y: bottom + 8, color: Canvas.ink)
        func px(_ step: Int) -> Int { last == first ? (left + right) / 2 : left + (right - left) * (step - first) / (last - first) }
        func py(_ v: Double) -> Int { bottom - Int((Double(bottom - top) * (v - low) / (high - low)).rounded()) }
        // TensorBoard's smoothing: an exponential moving average, debiased at the start.
        var lines = [(values, smooth ? Canvas.light : Canvas.blue, smooth ? 1 : 2)]
        if smooth {
            var smoothed: [Double] = [], running = 0.0
            for (i, v) in values.enumerated() {
                running = 0.6 * running + 0.4 * v
                smoothed.append(running / (1 - pow(0.6, Double(i + 1))))
            }
            lines.append((smoothed, Canvas.blue, 2))
        }
        for (series, color, thickness) in lines {
            if points.count == 1 { line(px(first) - 2, py(series[0]), px(first) + 2, py(series[0]), color, thickness: 3) }
            for i in 1..<max(points.count, 1) {
                line(px(points[i - 1].step), py(series[i - 1]), px(points[i].step), py(series[i]), color, thickness: thickness)
            }
        }
    }

    /// 5×7 glyphs, one byte per row, the leftmost pixel in bit 4.
    static let glyphs: [Character: [UInt8]] = [
        "0": [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], "1": [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        "2": [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], "3": [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        "4": [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], "5": [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        "6": [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], "7": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        "8": [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], "9": [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ".": [0, 0, 0, 0, 0, 0x0C, 0x0C], "-": [0, 0, 0, 0x1F, 0, 0, 0], "+": [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        "_": [0, 0, 0, 0, 0, 0, 0x1F], ":": [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0], "/": [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        "(": [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], ")": [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        " ": [0, 0, 0, 0, 0, 0, 0], "?": [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
        "a": [0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F], "b": [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        "c": [0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E], "d": [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        "e": [0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E], "f": [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        "g": [0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E], "h": [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        "i": [0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E], "j": [0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0C],
        "k": [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12], "l": [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        "m": [0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11], "n": [0, 0, 0x16, 0x19, 0x11, 0x11, 0x11],
        "o": [0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E], "p": [0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        "q": [0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01], "r": [0, 0, 0x16, 0x19, 0x10, 0x10, 0x10],
        "s": [0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E], "t": [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        "u": [0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D], "v": [0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04],
        "w": [0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A], "x": [0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        "y": [0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E], "z": [0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F],
    ]
}
