import Foundation
import TensorEngine

/// The timing of one op shape: forward + backward, median over repetitions.
public struct OpTiming: Codable, Sendable {
    public var bench = "ops"
    public var model: String
    public var name: String
    public var kind: String
    public var shape: String
    public var count: Int
    public var threads: Int
    public var ms: Double
    /// GFLOP/s for conv and matmul, nil otherwise.
    public var gflops: Double?
    /// GB/s for memory-bound ops, nil otherwise.
    public var gbps: Double?
    /// The engine settings timed (the config's `engine:`).
    public var engine = Engine.options
}

/// Times forward + backward of each op shape of the reference models.
public enum OpBenchmark {
    /// Runs every shape; `seconds` is the measuring budget per shape.
    public static func run(_ shapes: [OpShape], seconds: Double = 0.5, progress: (OpTiming) -> Void = { _ in }) -> [OpTiming] {
        shapes.map { shape in
            let step = makeStep(shape)
            let ms = medianMilliseconds(seconds: seconds, step)
            var t = OpTiming(model: shape.model, name: shape.name, kind: shape.kind.rawValue, shape: describe(shape),
                             count: shape.count, threads: Threads.count, ms: ms)
            if shape.kind == .conv || shape.kind == .matmul {
                t.gflops = shape.trainingFlops / (ms * 1e6)
            } else {
                t.gbps = shape.trainingBytes / (ms * 1e6)
            }
            progress(t)
            return t
        }
    }

    /// A closure running one forward + backward of the shape on fixed random data.
    static func makeStep(_ s: OpShape) -> () -> Void {
        func input(_ shape: [Int], _ stream: UInt64, grad: Bool = true) -> Tensor {
            let t = Tensor.randomNormal(shape, stream: RandomStream(seed: 11, stream: stream))
            t.requiresGrad = grad
            return t
        }
        let op: () -> Tensor
        let leaves: [Tensor]
        switch s.kind {
        case .conv:
            let x = input([s.n, s.h, s.w, s.c], 1, grad: s.inputGrad), w = input([s.o, s.c, s.k, s.k], 2), b = input([s.o], 3)
            let pad = Padding2D(top: s.padding[0], bottom: s.padding[1], left: s.padding[2], right: s.padding[3])
            op = { conv2d(x, weight: w, bias: b, stride: s.stride, padding: pad) }
            leaves = [x, w, b]
        case .matmul where s.linear:
            let x = input([s.m, s.kDim], 1), w = input([s.nDim, s.kDim], 2)
            op = { linear(x, weight: w) }
            leaves = [x, w]
        case .matmul:
            let a = input([s.batch, s.m, s.kDim], 1), b = input([s.batch, s.kDim, s.nDim], 2)
            op = { matmul(a, b) }
            leaves = [a, b]
        case .groupNorm:
            let x = input(s.dims, 1), w = input([s.dims[3]], 2), b = input([s.dims[3]], 3)
            op = { groupNorm(x, groups: s.groups, weight: w, bias: b) }
            leaves = [x, w, b]
        case .layerNorm:
            let x = input(s.dims, 1), w = input([s.dims.last!], 2), b = input([s.dims.last!], 3)
            op = { layerNorm(x, weight: w, bias: b) }
            leaves = [x, w, b]
        case .softmax:
            let x = input(s.dims, 1)
            op = { softmax(x) }
            leaves = [x]
        case .silu:
            let x = input(s.dims, 1)
            op = { silu(x) }
            leaves = [x]
        case .add:
            let a = input(s.dims, 1), b = input(s.dims, 2)
            op = { a + b }
            leaves = [a, b]
        }
        let dy = withoutGradient { op() }.detached()
        return {
            op().backward(gradient: dy)
            for t in leaves { t.grad = nil }
        }
    }

    /// Median wall time of `step` in milliseconds, after two warm-up runs, repeated
    /// until `seconds` have passed (at least 3, at most 200 runs).
    public static func medianMilliseconds(seconds: Double, _ step: () -> Void) -> Double {
        step(); step()
        var times: [Double] = []
        let start = DispatchTime.now().uptimeNanoseconds
        repeat {
            let t0 = DispatchTime.now().uptimeNanoseconds
            step()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        } while times.count < 3 || (times.count < 200 && Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < seconds)
        times.sort()
        return times[times.count / 2]
    }

    static func describe(_ s: OpShape) -> String {
        switch s.kind {
        case .conv:
            let pad = Set(s.padding).count == 1 ? "p\(s.padding[0])" : "p\(s.padding.map(String.init).joined(separator: ","))"
            return "\(s.n)x\(s.h)x\(s.w)x\(s.c) -> \(s.o) k\(s.k) s\(s.stride) \(pad)"
        case .matmul where s.linear:
            return "[\(s.m),\(s.kDim)] x [\(s.nDim),\(s.kDim)]ᵀ"
        case .matmul:
            return "\(s.batch) x [\(s.m),\(s.kDim)] x [\(s.kDim),\(s.nDim)]"
        default:
            return s.dims.map(String.init).joined(separator: "x") + (s.groups > 0 ? " g\(s.groups)" : "")
        }
    }
}
