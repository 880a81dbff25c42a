import Foundation

/// Contiguous float32 memory behind one or more tensors (a reshape shares it).
/// Either owned (from `BufferPool`, returned on deinit) or a view into memory
/// owned by someone else (a parameter arena, a gradient bucket).
public final class TensorStorage: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Float>
    public let count: Int
    /// Keeps the memory of a view alive; nil when this storage owns its memory.
    private let owner: AnyObject?

    /// Fresh, uninitialised memory for `count` floats, 64-byte aligned.
    public init(count: Int) {
        self.base = BufferPool.shared.take(count: count)
        self.count = count
        self.owner = nil
    }

    /// A view of `count` floats at `base`, kept alive by `owner`.
    public init(viewing base: UnsafeMutablePointer<Float>, count: Int, owner: AnyObject) {
        self.base = base
        self.count = count
        self.owner = owner
    }

    /// True for a view into memory owned elsewhere.
    public var isView: Bool { owner != nil }

    deinit {
        if owner == nil { BufferPool.shared.give(base, count: count) }
    }
}

/// A pooled buffer for the duration of one call: `count` floats, or twice as many
/// bfloat16 values.
final class Scratch {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) { (self.count, p) = (count, BufferPool.shared.take(count: count)) }
    /// Room for `count` bfloat16 values.
    convenience init(bf16Count count: Int) { self.init((count + 1) / 2) }
    /// The bfloat16 rounding of `count` floats at `src`.
    convenience init(roundingToBF16 src: UnsafePointer<Float>, count: Int) {
        self.init(bf16Count: count)
        BF16.convert(src, bf16, count: count)
    }
    deinit { BufferPool.shared.give(p, count: count) }
    var raw: UnsafeMutableRawPointer { UnsafeMutableRawPointer(p) }
    /// The buffer as 2 × `count` bfloat16 values.
    var bf16: UnsafeMutablePointer<BF16> { raw.bindMemory(to: BF16.self, capacity: 2 * count) }
}

/// A caching allocator keyed by exact size. A training step allocates the same
/// sizes every step; reusing them avoids mmap/munmap and page faults on buffers
/// of tens of MiB, which glibc would otherwise hand back to the kernel each time.
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()
    private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    private var cachedBytes = 0
    private let lock = NSLock()
    /// Cached memory above this is released instead of kept.
    public var limitBytes = 8 << 30

    func take(count: Int) -> UnsafeMutablePointer<Float> {
        let n = max(count, 1)
        lock.lock()
        if let p = free[n]?.popLast() {
            cachedBytes -= n * 4
            lock.unlock()
            return p
        }
        lock.unlock()
        let bytes = n * MemoryLayout<Float>.stride, huge = bytes >= BufferPool.hugePageMinimum
        var raw: UnsafeMutableRawPointer?
        let status = posix_memalign(&raw, huge ? BufferPool.hugePage : 64, bytes)
        guard status == 0, let raw else { fatalError("out of memory allocating \(n) floats") }
        // Large buffers are streamed through whole (activations, the arena, Adam's moments):
        // on 2 MiB pages the prefetchers run on across what would be 4 KiB page edges, and
        // the TLB covers them. A hint only; the kernel may decline.
        if huge { _ = madvise(raw, bytes / BufferPool.hugePage * BufferPool.hugePage, MADV_HUGEPAGE) }
        return raw.bindMemory(to: Float.self, capacity: n)
    }

    static let hugePage = 2 << 20
    /// Buffers from this size up are aligned to and advised onto huge pages.
    static let hugePageMinimum = 4 << 20

    func give(_ p: UnsafeMutablePointer<Float>, count: Int) {
        let n = max(count, 1)
        lock.lock()
        if cachedBytes + n * 4 <= limitBytes {
            free[n, default: []].append(p)
            cachedBytes += n * 4
            lock.unlock()
        } else {
            lock.unlock()
            Foundation.free(p)
        }
    }

    /// Returns every cached buffer to the system.
    public func trim() {
        lock.lock()
        for list in free.values { for p in list { Foundation.free(p) } }
        free.removeAll()
        cachedBytes = 0
        lock.unlock()
    }
}
