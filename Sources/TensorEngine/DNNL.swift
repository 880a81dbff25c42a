import CDNNL
import Foundation

/// The one file that talks to oneDNN (v2 C API). Convolutions and matrix products
/// run as oneDNN primitives created once per shape and cached; activations are
/// NHWC, weights OIHW in our memory and reordered into whatever layout oneDNN's
/// fastest kernel asks for. Calls are serialised by one lock (primitives and their
/// memory objects are reused, so two threads must not run the same one at once).
enum DNNL {
    nonisolated(unsafe) static let engine: dnnl_engine_t = {
        var e: dnnl_engine_t?
        check(dnnl_engine_create(&e, dnnl_cpu, 0), "engine_create")
        return e!
    }()
    nonisolated(unsafe) static let stream: dnnl_stream_t = {
        var s: dnnl_stream_t?
        check(dnnl_stream_create(&s, engine, UInt32(dnnl_stream_default_flags.rawValue)), "stream_create")
        return s!
    }()
    static let lock = NSLock()
    /// Conv primitives by geometry, whether they keep NHWC (`EngineOptions.convLayout`)
    /// and what they multiply in.
    nonisolated(unsafe) static var convCache: [ConvKey: ConvPrimitives] = [:]
    struct ConvKey: Hashable {
        let geometry: ConvGeometry
        let nhwcOnly: Bool
        let precision: Precision
    }
    nonisolated(unsafe) static var matmulCache: [MatmulGeometry: MatmulPrimitive] = [:]

    /// oneDNN failures here are programmer errors (an unsupported shape or layout).
    static func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String) {
        precondition(status == dnnl_success, "oneDNN \(what()) failed with status \(status.rawValue)")
    }

    static func setThreads(_ n: Int) { omp_set_num_threads(Int32(n)) }

    /// Runs `body` holding the lock, with OpenMP's thread count set on this thread.
    static func locked<R>(_ body: () -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        if omp_get_max_threads() != Threads.count { setThreads(Threads.count) }
        return body()
    }

    static func desc(_ dims: [Int], tag: dnnl_format_tag_t, type: dnnl_data_type_t = dnnl_f32) -> dnnl_memory_desc_t {
        var md = dnnl_memory_desc_t()
        check(dnnl_memory_desc_init_by_tag(&md, Int32(dims.count), dims.map(Int64.init), type, tag), "memory_desc \(dims)")
        return md
    }

    static func desc(_ dims: [Int], strides: [Int], type: dnnl_data_type_t = dnnl_f32) -> dnnl_memory_desc_t {
        var md = dnnl_memory_desc_t()
        check(dnnl_memory_desc_init_by_strides(&md, Int32(dims.count), dims.map(Int64.init), type, strides.map(Int64.init)),
              "memory_desc \(dims) strides \(strides)")
        return md
    }

    /// Creates a primitive descriptor and its primitive from an op descriptor.
    /// Every primitive gets a user-managed scratchpad: the library-managed one is
    /// shared per thread and breaks when a primitive runs on another thread.
    static func primitive<D>(_ opDesc: inout D, postOpsSum: Bool = false,
                             hint: dnnl_primitive_desc_t? = nil, _ what: String) -> Primitive {
        let attr = attributes(postOpsSum: postOpsSum)
        defer { dnnl_primitive_attr_destroy(attr) }
        var pd: dnnl_primitive_desc_t?
        withUnsafePointer(to: &opDesc) { p in
            check(dnnl_primitive_desc_create(&pd, UnsafeRawPointer(p), attr, engine, hint), "\(what) primitive_desc")
        }
        return Primitive(pd: pd!, what)
    }

    /// Attributes: user-managed scratchpad, and dst += result when `postOpsSum`.
    static func attributes(postOpsSum: Bool = false) -> dnnl_primitive_attr_t? {
        var attr: dnnl_primitive_attr_t?
        check(dnnl_primitive_attr_create(&attr), "attr_create")
        check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode")
        if postOpsSum {
            var ops: dnnl_post_ops_t?
            check(dnnl_post_ops_create(&ops), "post_ops_create")
            check(dnnl_post_ops_append_sum(ops, 1), "post_ops_append_sum")
            check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops")
            dnnl_post_ops_destroy(ops)
        }
        return attr
    }
}

/// A primitive with its descriptor and its own scratchpad.
final class Primitive {
    let pd: dnnl_primitive_desc_t
    let handle: dnnl_primitive_t
    private let scratchpad: Memory
    private let scratchpadBuffer: ScratchBuffer

    init(pd: dnnl_primitive_desc_t, _ what: String) {
        self.pd = pd
        var p: dnnl_primitive_t?
        DNNL.check(dnnl_primitive_create(&p, pd), "\(what) primitive_create")
        handle = p!
        scratchpad = Memory(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0).pointee)
        scratchpadBuffer = ScratchBuffer(bytes: scratchpad.byteCount)
        scratchpad.bind(scratchpadBuffer.pointer)
    }

    /// The memory descriptor the primitive chose for `query` (e.g. weights).
    func md(_ query: dnnl_query_t) -> dnnl_memory_desc_t { dnnl_primitive_desc_query_md(pd, query, 0).pointee }

    func execute(_ args: [(Int32, Memory)]) {
        let exec = args.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
            + [dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratchpad.handle)]
        DNNL.check(dnnl_primitive_execute(handle, DNNL.stream, Int32(exec.count), exec), "execute")
        DNNL.check(dnnl_stream_wait(DNNL.stream), "stream_wait")
    }
}

/// A oneDNN memory object whose data pointer is set before each use.
final class Memory {
    let handle: dnnl_memory_t
    var desc: dnnl_memory_desc_t

    init(_ desc: dnnl_memory_desc_t) {
        var d = desc
        self.desc = desc
        var m: dnnl_memory_t?
        DNNL.check(dnnl_memory_create(&m, &d, DNNL.engine, nil), "memory_create")
        handle = m!
    }

    /// Points the memory at `p` and returns self, for use in an argument list.
    @discardableResult
    func bind(_ p: UnsafeMutableRawPointer) -> Memory {
        DNNL.check(dnnl_memory_set_data_handle(handle, p), "set_data_handle")
        return self
    }

    var byteCount: Int { dnnl_memory_desc_get_size(&desc) }
}

/// Copies between two layouts of the same tensor (e.g. OIHW ↔ oneDNN's blocked
/// weights). Nil-free: when the layouts are equal, `run` is a plain copy.
final class Reorder {
    let from: Memory, to: Memory
    let primitive: Primitive?
    /// Sizes of the source and destination layouts (blocked layouts are padded).
    let fromBytes: Int, toBytes: Int

    init(from: dnnl_memory_desc_t, to: dnnl_memory_desc_t) {
        var a = from, b = to
        self.from = Memory(a)
        self.to = Memory(b)
        fromBytes = dnnl_memory_desc_get_size(&a)
        toBytes = dnnl_memory_desc_get_size(&b)
        if dnnl_memory_desc_equal(&a, &b) != 0 {
            primitive = nil
        } else {
            var pd: dnnl_primitive_desc_t?
            let attr = DNNL.attributes()
            defer { dnnl_primitive_attr_destroy(attr) }
            DNNL.check(dnnl_reorder_primitive_desc_create(&pd, &a, DNNL.engine, &b, DNNL.engine, attr), "reorder")
            primitive = Primitive(pd: pd!, "reorder")
        }
    }

    func run(_ src: UnsafeMutableRawPointer, _ dst: UnsafeMutableRawPointer) {
        if let primitive {
            primitive.execute([(DNNL_ARG_FROM, from.bind(src)), (DNNL_ARG_TO, to.bind(dst))])
        } else {
            dst.copyMemory(from: src, byteCount: toBytes)
        }
    }
}

/// A scratch buffer of at least `bytes` bytes, 64-byte aligned, owned by a cache entry.
final class ScratchBuffer {
    let pointer: UnsafeMutableRawPointer
    init(bytes: Int) {
        var raw: UnsafeMutableRawPointer?
        let status = posix_memalign(&raw, 64, max(bytes, 64))
        guard status == 0, let raw else { fatalError("out of memory allocating \(bytes) bytes") }
        pointer = raw
    }
    deinit { free(pointer) }
}

// MARK: - Convolution

/// One conv2d: NHWC input [n, h, w, c], OIHW weights [o, c, kh, kw], optional bias
/// [o], stride, and asymmetric zero padding.
struct ConvGeometry: Hashable, CustomStringConvertible {
    let n, h, w, c, o, kh, kw, stride: Int
    let padTop, padBottom, padLeft, padRight: Int
    let hasBias: Bool
    var outH: Int { (h + padTop + padBottom - kh) / stride + 1 }
    var outW: Int { (w + padLeft + padRight - kw) / stride + 1 }
    fileprivate var strides: [Int64] { [Int64(stride), Int64(stride)] }
    fileprivate var padL: [Int64] { [Int64(padTop), Int64(padLeft)] }
    fileprivate var padR: [Int64] { [Int64(padBottom), Int64(padRight)] }
    /// Whether a blocked activation layout (with reorders around the call) pays off:
    /// measured with `bench ops` on AVX2, it does for 3×3 kernels with ≥ 8 channels
    /// in and out, and loses for 1×1 kernels and for the few-channel model ends.
    var prefersBlockedLayout: Bool { (kh > 1 || kw > 1) && c >= 8 && o >= 8 }
    var description: String {
        "conv \(n)x\(h)x\(w)x\(c) -> \(o) k\(kh)x\(kw) s\(stride) pad(\(padTop),\(padBottom),\(padLeft),\(padRight))"
    }
}

/// An activation argument of a conv primitive: our NHWC tensor on one side, the
/// layout the kernel chose on the other. When they differ (oneDNN's AVX2 kernels
/// prefer channel-blocked nChw8c for wide layers), the data is reordered through a
/// pooled buffer around the call, as PyTorch does for its NCHW tensors.
final class ActivationPort {
    private let user: Memory, kernel: Memory
    private let toKernel: Reorder?, toUser: Reorder?
    private let kernelFloats: Int

    init(nhwc: dnnl_memory_desc_t, kernel kernelMD: dnnl_memory_desc_t) {
        var a = nhwc, b = kernelMD
        user = Memory(nhwc)
        kernel = Memory(kernelMD)
        let same = dnnl_memory_desc_equal(&a, &b) != 0
        toKernel = same ? nil : Reorder(from: nhwc, to: kernelMD)
        toUser = same ? nil : Reorder(from: kernelMD, to: nhwc)
        kernelFloats = (dnnl_memory_desc_get_size(&b) + 3) / 4
    }

    /// True when the kernel reads and writes NHWC directly.
    var isDirect: Bool { toKernel == nil }

    /// Gives `body` the kernel-side memory holding the NHWC data at `p`.
    func input<R>(_ p: UnsafeMutablePointer<Float>, _ body: (Memory) -> R) -> R {
        guard let toKernel else { return body(user.bind(p)) }
        let tmp = BufferPool.shared.take(count: kernelFloats)
        defer { BufferPool.shared.give(tmp, count: kernelFloats) }
        toKernel.run(p, tmp)
        return body(kernel.bind(tmp))
    }

    /// Gives `body` kernel-side memory to write; the result lands at `p` in NHWC.
    func output(_ p: UnsafeMutablePointer<Float>, _ body: (Memory) -> Void) {
        guard let toUser else { return body(user.bind(p)) }
        let tmp = BufferPool.shared.take(count: kernelFloats)
        defer { BufferPool.shared.give(tmp, count: kernelFloats) }
        body(kernel.bind(tmp))
        toUser.run(tmp, p)
    }
}

/// Forward, backward-data and backward-weights primitives of one conv geometry.
/// Activation layouts are left to oneDNN (`any`) unless `nhwcOnly`; the backward
/// primitives are made on first use (inference never needs them). In bf16 the
/// operands (input, weights, output gradient) are bfloat16 in the kernel's layout,
/// converted by the reorders that feed it, and every result (output, input and
/// weight gradients, bias gradient) is float32.
final class ConvPrimitives: ConvKernels {
    let g: ConvGeometry
    private let nhwcOnly: Bool
    /// The data type of the operands.
    private let operand: dnnl_data_type_t
    private var nhwcSrc, nhwcDst, oihwMD, biasMD, anyWeightsMD: dnnl_memory_desc_t
    private let forward: Primitive
    private let forwardWeights: Reorder
    private let forwardWeightsBuffer: ScratchBuffer
    private let forwardSrc, forwardDst: ActivationPort
    private let bias: Memory

    init(_ g: ConvGeometry, nhwcOnly: Bool, precision: Precision) {
        (self.g, self.nhwcOnly) = (g, nhwcOnly)
        operand = precision.dnnlType
        let nhwcSrc = DNNL.desc([g.n, g.c, g.h, g.w], tag: dnnl_nhwc)
        let nhwcDst = DNNL.desc([g.n, g.o, g.outH, g.outW], tag: dnnl_nhwc)
        var anyWeightsMD = DNNL.desc([g.o, g.c, g.kh, g.kw], tag: dnnl_format_tag_any, type: operand)
        var biasMD = DNNL.desc([g.o], tag: dnnl_a)
        var src = DNNL.desc([g.n, g.c, g.h, g.w], tag: nhwcOnly ? dnnl_nhwc : dnnl_format_tag_any, type: operand)
        var dst = nhwcOnly ? nhwcDst : DNNL.desc([g.n, g.o, g.outH, g.outW], tag: dnnl_format_tag_any)
        var d = dnnl_convolution_desc_t()
        withUnsafeMutablePointer(to: &biasMD) { b in
            DNNL.check(dnnl_convolution_forward_desc_init(&d, dnnl_forward_training, dnnl_convolution_direct, &src,
                                                          &anyWeightsMD, g.hasBias ? b : nil, &dst,
                                                          g.strides, g.padL, g.padR), "\(g) forward desc")
        }
        (self.nhwcSrc, self.nhwcDst, self.anyWeightsMD, self.biasMD) = (nhwcSrc, nhwcDst, anyWeightsMD, biasMD)
        oihwMD = DNNL.desc([g.o, g.c, g.kh, g.kw], tag: dnnl_oihw)
        forward = DNNL.primitive(&d, "\(g) forward")
        forwardWeights = Reorder(from: oihwMD, to: forward.md(dnnl_query_weights_md))
        forwardWeightsBuffer = ScratchBuffer(bytes: forwardWeights.toBytes)
        forwardSrc = ActivationPort(nhwc: nhwcSrc, kernel: forward.md(dnnl_query_src_md))
        forwardDst = ActivationPort(nhwc: nhwcDst, kernel: forward.md(dnnl_query_dst_md))
        bias = Memory(biasMD)
    }

    /// True when the forward kernel works on NHWC directly (no reorders).
    var isDirect: Bool { forwardSrc.isDirect && forwardDst.isDirect }

    /// y = conv(x, w) + b.
    func forward(x: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>,
                 b: UnsafeMutablePointer<Float>?, y: UnsafeMutablePointer<Float>) {
        DNNL.locked {
            forwardWeights.run(w, forwardWeightsBuffer.pointer)
            forwardSrc.input(x) { src in
                forwardDst.output(y) { dst in
                    var args = [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, forwardWeights.to.bind(forwardWeightsBuffer.pointer)),
                                (DNNL_ARG_DST, dst)]
                    if let b { args.append((DNNL_ARG_BIAS, bias.bind(b))) }
                    forward.execute(args)
                }
            }
        }
    }

    /// A backward primitive, the reorder between OIHW and its weights layout, a
    /// buffer holding the weights in its layout, and its activation ports.
    private final class Backward {
        let primitive: Primitive, weights: Reorder, buffer: ScratchBuffer
        let src: ActivationPort, dst: ActivationPort
        init(_ primitive: Primitive, weights: Reorder, bufferBytes: Int, src: ActivationPort, dst: ActivationPort) {
            (self.primitive, self.weights, buffer) = (primitive, weights, ScratchBuffer(bytes: bufferBytes))
            (self.src, self.dst) = (src, dst)
        }
    }
    private var backwardDataKernel: Backward?
    private var backwardWeightsKernel: Backward?

    /// The input (or its gradient) and output-gradient descriptors of a backward
    /// primitive, in `src` and `dst`'s data types.
    private func activationDescs(src srcType: dnnl_data_type_t, dst dstType: dnnl_data_type_t) -> (dnnl_memory_desc_t, dnnl_memory_desc_t) {
        let tag = nhwcOnly ? dnnl_nhwc : dnnl_format_tag_any
        return (DNNL.desc([g.n, g.c, g.h, g.w], tag: tag, type: srcType), DNNL.desc([g.n, g.o, g.outH, g.outW], tag: tag, type: dstType))
    }

    private func makeBackwardData() -> Backward {
        var (src, dst) = activationDescs(src: dnnl_f32, dst: operand)
        var d = dnnl_convolution_desc_t()
        DNNL.check(dnnl_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &src, &anyWeightsMD, &dst,
                                                            g.strides, g.padL, g.padR), "\(g) backward-data desc")
        let p = DNNL.primitive(&d, hint: forward.pd, "\(g) backward data")
        let weights = Reorder(from: oihwMD, to: p.md(dnnl_query_weights_md))
        return Backward(p, weights: weights, bufferBytes: weights.toBytes,
                        src: ActivationPort(nhwc: nhwcSrc, kernel: p.md(dnnl_query_diff_src_md)),
                        dst: ActivationPort(nhwc: nhwcDst, kernel: p.md(dnnl_query_diff_dst_md)))
    }

    /// dx = conv_transpose(dy, w) (overwrites dx).
    func backwardData(dy: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        DNNL.locked {
            let k = backwardDataKernel ?? makeBackwardData()
            backwardDataKernel = k
            k.weights.run(w, k.buffer.pointer)
            k.dst.input(dy) { diffDst in
                k.src.output(dx) { diffSrc in
                    k.primitive.execute([(DNNL_ARG_DIFF_DST, diffDst), (DNNL_ARG_WEIGHTS, k.weights.to.bind(k.buffer.pointer)),
                                         (DNNL_ARG_DIFF_SRC, diffSrc)])
                }
            }
        }
    }

    private func makeBackwardWeights() -> Backward {
        var (src, dst) = activationDescs(src: operand, dst: operand)
        var weightsMD = DNNL.desc([g.o, g.c, g.kh, g.kw], tag: dnnl_format_tag_any)
        var d = dnnl_convolution_desc_t()
        var biasDesc = biasMD
        withUnsafeMutablePointer(to: &biasDesc) { b in
            DNNL.check(dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &src, &weightsMD,
                                                                   g.hasBias ? b : nil, &dst, g.strides, g.padL, g.padR),
                       "\(g) backward-weights desc")
        }
        let p = DNNL.primitive(&d, hint: forward.pd, "\(g) backward weights")
        let weights = Reorder(from: p.md(dnnl_query_diff_weights_md), to: oihwMD)
        return Backward(p, weights: weights, bufferBytes: weights.fromBytes,
                        src: ActivationPort(nhwc: nhwcSrc, kernel: p.md(dnnl_query_src_md)),
                        dst: ActivationPort(nhwc: nhwcDst, kernel: p.md(dnnl_query_diff_dst_md)))
    }

    /// dw = Σ x ⋆ dy in OIHW and db = Σ dy (both overwritten).
    func backwardWeights(x: UnsafeMutablePointer<Float>?, dy: UnsafeMutablePointer<Float>,
                         dw: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>?) {
        DNNL.locked {
            let k = backwardWeightsKernel ?? makeBackwardWeights()
            backwardWeightsKernel = k
            k.src.input(input(x)) { src in
                k.dst.input(dy) { diffDst in
                    var args = [(DNNL_ARG_SRC, src), (DNNL_ARG_DIFF_DST, diffDst),
                                (DNNL_ARG_DIFF_WEIGHTS, k.weights.from.bind(k.buffer.pointer))]
                    if let db { args.append((DNNL_ARG_DIFF_BIAS, bias.bind(db))) }
                    k.primitive.execute(args)
                }
            }
            k.weights.run(k.buffer.pointer, dw)
        }
    }
}

extension DNNL {
    /// The cached primitives for a conv geometry.
    static func conv(_ g: ConvGeometry) -> ConvPrimitives {
        let options = Engine.options
        let key = ConvKey(geometry: g, nhwcOnly: options.convLayout == .nhwc || !g.prefersBlockedLayout, precision: options.precision)
        return locked {
            if let p = convCache[key] { return p }
            let p = ConvPrimitives(g, nhwcOnly: key.nhwcOnly, precision: key.precision)
            convCache[key] = p
            return p
        }
    }
}

// MARK: - Matrix product

/// C[b] (+)= op(A[b]) · op(B[b]) for b in 0..<batch, op = transpose when asked.
/// A is stored [batch, m, k] ([batch, k, m] when transposed), B [batch, k, n]
/// ([batch, n, k] when transposed), C [batch, m, n]; `accumulate` adds into C.
struct MatmulGeometry: Hashable {
    let batch, m, k, n: Int
    let transposeA, transposeB, accumulate: Bool
    /// Distances between the batch's matrices of a, b and c; 0 for packed (m·k, k·n, m·n).
    var strideA = 0, strideB = 0, strideC = 0
    /// Adds a bias of n values to every row of c.
    var bias = false
    /// What a and b hold: float32, or bfloat16 (`BF16`); c and the bias are float32.
    var operands = Precision.fp32
}

final class MatmulPrimitive {
    private let primitive: Primitive
    private let a, b, c: Memory
    private let bias: Memory?

    init(_ g: MatmulGeometry) {
        let (sa, sb, sc) = (g.strideA, g.strideB, g.strideC)
        let type = g.operands.dnnlType
        var aMD = DNNL.desc([g.batch, g.m, g.k], strides: [sa > 0 ? sa : g.m * g.k] + (g.transposeA ? [1, g.m] : [g.k, 1]), type: type)
        var bMD = DNNL.desc([g.batch, g.k, g.n], strides: [sb > 0 ? sb : g.k * g.n] + (g.transposeB ? [1, g.k] : [g.n, 1]), type: type)
        var cMD = DNNL.desc([g.batch, g.m, g.n], strides: [sc > 0 ? sc : g.m * g.n, g.n, 1])
        var biasMD = DNNL.desc([1, 1, g.n], strides: [g.n, g.n, 1])
        var d = dnnl_matmul_desc_t()
        if g.bias {
            DNNL.check(dnnl_matmul_desc_init(&d, &aMD, &bMD, &biasMD, &cMD), "matmul desc \(g)")
        } else {
            DNNL.check(dnnl_matmul_desc_init(&d, &aMD, &bMD, nil, &cMD), "matmul desc \(g)")
        }
        primitive = DNNL.primitive(&d, postOpsSum: g.accumulate, "matmul \(g)")
        a = Memory(aMD)
        b = Memory(bMD)
        c = Memory(cMD)
        bias = g.bias ? Memory(biasMD) : nil
    }

    func run(_ pa: UnsafeMutableRawPointer, _ pb: UnsafeMutableRawPointer, _ pc: UnsafeMutablePointer<Float>,
             bias pbias: UnsafeMutablePointer<Float>? = nil) {
        var args = [(DNNL_ARG_SRC, a.bind(pa)), (DNNL_ARG_WEIGHTS, b.bind(pb)), (DNNL_ARG_DST, c.bind(pc))]
        if let bias, let pbias { args.append((DNNL_ARG_BIAS, bias.bind(pbias))) }
        primitive.execute(args)
    }
}

extension DNNL {
    /// Runs the cached matmul primitive for `g`; a and b hold `g.operands`.
    static func matmul(_ g: MatmulGeometry, _ a: UnsafeMutableRawPointer, _ b: UnsafeMutableRawPointer,
                       _ c: UnsafeMutablePointer<Float>, bias: UnsafeMutablePointer<Float>? = nil) {
        precondition(g.bias == (bias != nil), "matmul \(g): bias pointer and geometry disagree")
        locked {
            let p: MatmulPrimitive
            if let cached = matmulCache[g] { p = cached } else { p = MatmulPrimitive(g); matmulCache[g] = p }
            p.run(a, b, c, bias: bias)
        }
    }
}

extension Precision {
    /// oneDNN's name for the operand type.
    var dnnlType: dnnl_data_type_t { self == .bf16 ? dnnl_bf16 : dnnl_f32 }
}
