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

/// A caching allocator. A training step allocates the same sizes every step; reusing
/// them avoids mmap/munmap and page faults on buffers of tens of MiB, which the
/// system would otherwise hand back to the kernel each time.
///
/// What stays resident is what is alive plus what is cached. So that this follows the
/// peak of the tensors alive at once, not the sum of each size's own peak, the cache
/// is held to a slack above the most ever alive at once: a fresh large allocation
/// that would pass that first returns the large buffers idle longest to the system.
/// Before mapping anew, a request takes a cached buffer up to twice its size.
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()
    private struct Cached {
        let p: UnsafeMutablePointer<Float>
        let since: Int
    }
    /// Per size class, oldest first.
    private var free: [Int: [Cached]] = [:]
    private var clock = 0
    private var cachedBytes = 0
    /// Bytes handed out and not yet given back (the tensors alive now), and the most
    /// there have been since `resetPeak()`.
    public private(set) var liveBytes = 0
    public private(set) var peakLiveBytes = 0
    /// The most alive at once since the process started.
    private var highWaterBytes = 0
    /// How far live + cached may go above `highWaterBytes`: this fraction of it, at least
    /// `slackMinimumBytes` (room for the sizes that come and go within a step).
    public var slackFraction = 1.0 / 16
    public var slackMinimumBytes = 16 << 20
    private var slackBytes: Int { max(slackMinimumBytes, Int(Double(highWaterBytes) * slackFraction)) }
    /// Buffers handed out from a larger class than asked for, with their class.
    private var upsized: [UnsafeMutablePointer<Float>: Int] = [:]
    /// Large buffers newly mapped and ones returned to the system.
    public private(set) var mappedCount = 0
    public private(set) var unmappedCount = 0
    private let lock = NSLock()
    /// Cached memory above this is released instead of kept.
    public var limitBytes = 8 << 30

    /// Buffers come in size classes, four per doubling: a request is served by its
    /// class (up to 19% more floats, which stay untouched and so never resident), so
    /// buffers of nearby sizes (activations, Winograd planes, gradients) serve each
    /// other instead of each size keeping buffers of its own.
    static func sizeClass(_ count: Int) -> Int {
        let n = max(count, 1)
        guard n > 64 else { return n }
        let shift = (Int.bitWidth - 1 - n.leadingZeroBitCount) - 2   // a quarter of the leading power of two
        let step = 1 << shift
        return (n + step - 1) / step * step
    }

    /// From this many floats (1 MiB) up, buffers are mapped from the system directly,
    /// so that returning one gives its pages back.
    static let largeCount = 1 << 18
    static let hugePage = 2 << 20
    /// Buffers from this size up are aligned to and advised onto huge pages.
    static let hugePageMinimum = 4 << 20

    /// A pool of its own (tensors use `shared`).
    public init() {}

    /// Uninitialised memory for `count` floats, 64-byte aligned; `give` it back.
    public func take(count: Int) -> UnsafeMutablePointer<Float> {
        let n = BufferPool.sizeClass(count)
        lock.lock()
        if let c = free[n]?.popLast() {
            cachedBytes -= n * 4
            handOut(n)
            lock.unlock()
            return c.p
        }
        guard n >= BufferPool.largeCount else {
            handOut(n)
            lock.unlock()
            return BufferPool.allocateSmall(n)
        }
        if let size = free.keys.filter({ $0 > n && $0 <= 2 * n && !free[$0]!.isEmpty }).min() {
            let c = free[size]!.removeLast()
            cachedBytes -= size * 4
            upsized[c.p] = size
            handOut(size)
            lock.unlock()
            return c.p
        }
        handOut(n)
        var released: [(UnsafeMutablePointer<Float>, Int)] = []
        while liveBytes + cachedBytes > highWaterBytes + slackBytes, let (size, c) = oldestLarge() {
            released.append((c.p, size))
            cachedBytes -= size * 4
        }
        mappedCount += 1
        unmappedCount += released.count
        lock.unlock()
        for (p, size) in released { BufferPool.unmap(p, size) }
        return BufferPool.map(n)
    }

    /// Counts `n` floats as alive (under the lock).
    private func handOut(_ n: Int) {
        liveBytes += n * 4
        peakLiveBytes = max(peakLiveBytes, liveBytes)
        highWaterBytes = max(highWaterBytes, liveBytes)
    }

    /// Returns memory from `take(count:)`, with the same count.
    public func give(_ p: UnsafeMutablePointer<Float>, count: Int) {
        var n = BufferPool.sizeClass(count)
        lock.lock()
        if n >= BufferPool.largeCount, let size = upsized.removeValue(forKey: p) { n = size }
        liveBytes -= n * 4
        if cachedBytes + n * 4 <= limitBytes {
            clock += 1
            free[n, default: []].append(Cached(p: p, since: clock))
            cachedBytes += n * 4
            lock.unlock()
        } else {
            lock.unlock()
            BufferPool.release(p, n)
        }
    }

    /// Removes and returns the large cached buffer idle longest (under the lock).
    private func oldestLarge() -> (Int, Cached)? {
        var best: (size: Int, since: Int)?
        for (size, list) in free where size >= BufferPool.largeCount {
            if let first = list.first, first.since < best?.since ?? .max { best = (size, first.since) }
        }
        guard let best else { return nil }
        return (best.size, free[best.size]!.removeFirst())
    }

    private static func allocateSmall(_ n: Int) -> UnsafeMutablePointer<Float> {
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, n * MemoryLayout<Float>.stride) == 0, let raw else {
            fatalError("out of memory allocating \(n) floats")
        }
        return raw.bindMemory(to: Float.self, capacity: n)
    }

    /// Fresh zero pages for `n` floats, aligned to a huge page when that large.
    private static func map(_ n: Int) -> UnsafeMutablePointer<Float> {
        let bytes = n * MemoryLayout<Float>.stride, huge = bytes >= hugePageMinimum
        let slack = huge ? hugePage : 0
        guard let raw = mmap(nil, bytes + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            fatalError("out of memory mapping \(n) floats")
        }
        var start = raw
        if huge {   // keep the aligned part, give back the rest
            let address = UInt(bitPattern: raw), aligned = (address + UInt(hugePage - 1)) & ~UInt(hugePage - 1)
            let head = Int(aligned - address)
            if head > 0 { munmap(raw, head) }
            if slack - head > 0 { munmap(raw + head + bytes, slack - head) }
            start = raw + head
            // Large buffers are streamed through whole (activations, the arena, Adam's moments):
            // on 2 MiB pages the prefetchers run on across what would be 4 KiB page edges, and
            // the TLB covers them. A hint only; the kernel may decline.
            _ = madvise(start, bytes / hugePage * hugePage, MADV_HUGEPAGE)
        }
        return start.bindMemory(to: Float.self, capacity: n)
    }

    private static func unmap(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        munmap(UnsafeMutableRawPointer(p), n * MemoryLayout<Float>.stride)
    }

    /// Returns a buffer of size class `n` to the system.
    private static func release(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        if n >= largeCount { unmap(p, n) } else { Foundation.free(p) }
    }

    /// Bytes kept for reuse (resident, though no tensor holds them).
    public var cachedBytesNow: Int { lock.lock(); defer { lock.unlock() }; return cachedBytes }

    /// Starts `peakLiveBytes` afresh at `liveBytes`.
    public func resetPeak() { lock.lock(); peakLiveBytes = liveBytes; lock.unlock() }

    /// Returns every cached buffer to the system, and starts the high-water mark the
    /// cache is held to afresh: what comes next (another stage) has sizes of its own.
    public func trim() {
        lock.lock()
        for (size, list) in free { for c in list { BufferPool.release(c.p, size) } }
        free.removeAll()
        cachedBytes = 0
        highWaterBytes = liveBytes
        lock.unlock()
    }
}
