import Foundation

/// Errors of the tensor core: bad shapes or element counts, named so the caller can tell which.
public struct TensorError: Error, CustomStringConvertible, Equatable {
    /// What is wrong, with the shapes or counts involved.
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}

/// Raw memory for tensors. Blocks of `mapThreshold` bytes or more are mapped from the kernel
/// directly (page-aligned, zero-filled on first touch, returned on free), so large weights and
/// activations never sit in a fragmented malloc heap; a freed float32 copy of a weight really
/// gives its memory back. Smaller blocks use malloc.
package enum RawMemory {
    static let mapThreshold = 256 << 10
    /// Large blocks that came from malloc because mmap failed (normally empty).
    nonisolated(unsafe) private static var fallbacks: Set<UnsafeMutableRawPointer> = []
    private static let lock = NSLock()

    /// `zeroed` is true when the block is known to read as zeros (a fresh mapping).
    static func allocate(bytes: Int) -> (pointer: UnsafeMutableRawPointer, zeroed: Bool) {
        if bytes >= mapThreshold {
            let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if let p, p != MAP_FAILED { return (p, true) }
            let q = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            lock.lock(); fallbacks.insert(q); lock.unlock()
            return (q, false)
        }
        return (UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64), false)
    }

    static func free(_ p: UnsafeMutableRawPointer, bytes: Int) {
        if bytes >= mapThreshold {
            lock.lock()
            let fromMalloc = fallbacks.remove(p) != nil
            lock.unlock()
            if !fromMalloc { munmap(p, bytes); return }
        }
        p.deallocate()
    }
}

/// 64-byte aligned float32 storage; `Tensor` shares it copy-on-write.
final class TensorStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    private let bytes: Int
    /// Activation buffers come from and go back to the pool; parameters and other long-lived
    /// tensors are freed for real.
    private let pooled: Bool
    /// The memory is known to hold zeros already (a fresh mapping).
    let zeroed: Bool

    init(count: Int, pooled: Bool = false) {
        self.count = count
        self.pooled = pooled
        // One extra line so a zero-sized tensor still has a valid, unique pointer.
        let requested = max(count, 16) * MemoryLayout<Float>.stride
        let raw: UnsafeMutableRawPointer
        if pooled {
            (raw, bytes) = BufferPool.shared.takeFitting(bytes: requested); zeroed = false
        } else {
            bytes = requested
            (raw, zeroed) = RawMemory.allocate(bytes: bytes)
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 16))
    }

    deinit {
        if pooled { BufferPool.shared.give(UnsafeMutableRawPointer(pointer), bytes: bytes) } else { RawMemory.free(UnsafeMutableRawPointer(pointer), bytes: bytes) }
    }

    func copy() -> TensorStorage {
        let s = TensorStorage(count: count)
        s.pointer.update(from: pointer, count: count)
        return s
    }
}

/// Recycles large tensor buffers. A forward pass allocates the same activation sizes every time;
/// without reuse, glibc returns each large block to the kernel on free (mmap'd allocations) and the
/// next pass page-faults and zero-fills it again, every pass. Buffers below `minimumBytes` go straight to malloc; pooled bytes
/// are capped at `capacityBytes`, beyond which freed buffers are released.
public final class BufferPool: @unchecked Sendable {
    /// The process-wide pool that tensor storage is recycled through.
    public static let shared = BufferPool()
    /// A pool of its own (tests; tensors use `shared`).
    package init() {}
    private var _capacityBytes = 1 << 30
    /// Largest number of bytes kept pooled (default 1 GiB); buffers freed beyond it are released to
    /// the system. Read and set under the pool's lock, so any thread may change it.
    public var capacityBytes: Int {
        get { lock.withLock { _capacityBytes } }
        set { lock.withLock { _capacityBytes = max(0, newValue) } }
    }
    let minimumBytes = 256 << 10
    /// Idle buffers by size, each with the tick it was freed at (the newest last).
    private var free: [Int: [(pointer: UnsafeMutableRawPointer, freedAt: Int)]] = [:]
    private var pooledBytes = 0, ticks = 0
    /// Pooled-size bytes handed out and not yet given back, and the most there ever were.
    private var inUse = 0, peakInUse = 0
    private var _boundsIdleAtPeak = false
    private let lock = NSLock()

    /// When true, a request that no idle buffer serves first releases idle buffers (the longest
    /// idle first) so that the pool's memory, in use plus idle, stays within the most ever in use
    /// at once plus a slack of 1/16: the peak memory of a training step becomes that of its live
    /// activations, instead of also holding buffers of sizes idle at the peak (another stage's), at
    /// the cost of page faults where a released size is needed again. A `Trainer` turns it on.
    public var boundsIdleAtPeak: Bool {
        get { lock.withLock { _boundsIdleAtPeak } }
        set { lock.withLock { _boundsIdleAtPeak = newValue } }
    }

    /// The size a pooled request of `bytes` is served with: rounded up to one of eight sizes per
    /// power of two (at most 12.5% more), so that buffers of nearby sizes (a training step has
    /// hundreds of distinct ones) are reused for each other instead of each size keeping its own.
    static func sizeClass(_ bytes: Int) -> Int {
        guard bytes > 4096 else { return bytes }
        let top = Int.bitWidth - 1 - bytes.leadingZeroBitCount  // 2^top ≤ bytes
        let step = 1 << (top - 3)
        return (bytes + step - 1) / step * step
    }

    /// A buffer of at least `bytes` (free it with `give(_:bytes:)` and the same `bytes`).
    func take(bytes requested: Int) -> UnsafeMutableRawPointer {
        guard requested >= minimumBytes else { return RawMemory.allocate(bytes: requested).pointer }
        let bytes = Self.sizeClass(requested)
        lock.lock()
        if let p = free[bytes]?.popLast() {
            pooledBytes -= bytes
            handOut(bytes)
            lock.unlock()
            return p.pointer
        }
        return mapNew(bytes)
    }

    /// A buffer of at least `bytes` and its real size (give it back with that size): one of its
    /// size class, else the smallest idle one of up to twice the size, else a new one. Reusing a
    /// larger idle buffer keeps memory from piling up in sizes that a later phase (another stage
    /// of a training step) does not ask for.
    package func takeFitting(bytes requested: Int) -> (UnsafeMutableRawPointer, Int) {
        guard requested >= minimumBytes else { return (RawMemory.allocate(bytes: requested).pointer, requested) }
        let bytes = Self.sizeClass(requested)
        lock.lock()
        var best = free[bytes]?.isEmpty == false ? bytes : nil
        if best == nil {
            for (size, list) in free where size > bytes && size <= 2 * bytes && !list.isEmpty && size < (best ?? .max) { best = size }
        }
        if let size = best, let p = free[size]?.popLast() {
            pooledBytes -= size
            handOut(size)
            lock.unlock()
            return (p.pointer, size)
        }
        return (mapNew(bytes), bytes)
    }

    /// Called with the lock held, which it releases: a new buffer of `bytes` when no idle one
    /// served, after making room for it (`boundsIdleAtPeak`).
    private func mapNew(_ bytes: Int) -> UnsafeMutableRawPointer {
        let released = makeRoom(for: bytes)
        handOut(bytes)
        lock.unlock()
        for (p, n) in released { RawMemory.free(p, bytes: n) }
        return RawMemory.allocate(bytes: bytes).pointer
    }

    /// Under the lock: counts `bytes` as handed out.
    private func handOut(_ bytes: Int) {
        inUse += bytes
        peakInUse = max(peakInUse, inUse)
    }

    /// Under the lock, before a new buffer of `bytes` is mapped: with `boundsIdleAtPeak`, takes the
    /// longest-idle buffers out of the pool until in-use plus idle plus the new buffer fit the
    /// bound, and returns them for the caller to free outside the lock.
    private func makeRoom(for bytes: Int) -> [(UnsafeMutableRawPointer, Int)] {
        guard _boundsIdleAtPeak, pooledBytes > 0 else { return [] }
        let peak = max(peakInUse, inUse + bytes)
        var excess = inUse + pooledBytes + bytes - (peak + peak / 16)
        var released: [(UnsafeMutableRawPointer, Int)] = []
        while excess > 0 {
            // The size whose oldest idle buffer was freed first (each list is oldest first).
            guard let (size, _) = free.filter({ !$0.value.isEmpty }).min(by: { $0.value[0].freedAt < $1.value[0].freedAt }) else { break }
            let p = free[size]!.removeFirst().pointer
            pooledBytes -= size
            excess -= size
            released.append((p, size))
        }
        return released
    }

    package func give(_ p: UnsafeMutableRawPointer, bytes requested: Int) {
        let bytes = requested >= minimumBytes ? Self.sizeClass(requested) : requested
        if bytes >= minimumBytes {
            lock.lock()
            inUse -= bytes
            if pooledBytes + bytes <= _capacityBytes {
                ticks += 1
                free[bytes, default: []].append((p, ticks))
                pooledBytes += bytes
                lock.unlock()
                return
            }
            lock.unlock()
        }
        RawMemory.free(p, bytes: bytes)
    }

    /// Frees a buffer from `take(bytes:)` for good (with the same `bytes`), bypassing the pool.
    func release(_ p: UnsafeMutableRawPointer, bytes requested: Int) {
        let bytes = requested >= minimumBytes ? Self.sizeClass(requested) : requested
        if bytes >= minimumBytes { lock.withLock { inUse -= bytes } }
        RawMemory.free(p, bytes: bytes)
    }

    /// Bytes currently held for reuse.
    public var pooledByteCount: Int { lock.lock(); defer { lock.unlock() }; return pooledBytes }

    /// Releases every pooled buffer (e.g. after a large batch, to give the memory back).
    public func drain() {
        lock.lock(); defer { lock.unlock() }
        for (bytes, list) in free { for p in list { RawMemory.free(p.pointer, bytes: bytes) } }
        free.removeAll()
        pooledBytes = 0
    }
}

/// A dense scratch buffer of `count` elements of `type` for engine calls (activations that only
/// engine operations read, e.g. bfloat16 matmul operands). Pooled like tensor storage.
public struct TypedBuffer: @unchecked Sendable {
    /// Element type of the buffer.
    public let type: ElementType
    /// Number of elements (of `type`).
    public let count: Int
    private let storage: TensorStorage

    /// `pooled`: recycle through `BufferPool` (activations); long-lived buffers such as compact
    /// weights pass false so freeing them returns the memory.
    public init(type: ElementType, count: Int, pooled: Bool = true) {
        self.type = type; self.count = count
        storage = TensorStorage(count: (count * type.byteCount + 3) / 4, pooled: pooled)
    }

    /// A float32 buffer sharing `tensor`'s storage.
    public init(_ tensor: Tensor) {
        type = .float32; count = tensor.count; storage = tensor.storage
    }

    /// Address of the first element.
    public var raw: UnsafeMutableRawPointer { UnsafeMutableRawPointer(storage.pointer) }

    /// Dense row-major view of `dims` starting `offset` elements in.
    public func view(_ dims: [Int], offset: Int = 0) -> StridedView {
        StridedView(dense: raw + offset * type.byteCount, type: type, dims: dims)
    }

    /// Strided view starting `offset` elements in.
    public func view(_ dims: [Int], strides: [Int], offset: Int = 0) -> StridedView {
        StridedView(raw: raw + offset * type.byteCount, type: type, dims: dims, strides: strides)
    }
}

/// A dense, row-major float32 tensor with value semantics (copy-on-write).
///
/// Layout is always contiguous row-major over `shape`; views with other strides exist only inside
/// the engine, for the duration of one operation.
public struct Tensor: @unchecked Sendable, CustomStringConvertible {
    /// Dimensions, outermost first (e.g. `[B, C, H, W]`); `[]` for a scalar.
    public private(set) var shape: [Int]
    var storage: TensorStorage

    /// A tensor of `shape` filled with `value`.
    public init(zeros shape: [Int], value: Float = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        storage = TensorStorage(count: Tensor.elementCount(shape))
        // A fresh mapping already reads as zeros; not touching it keeps untouched pages out of RSS.
        if !(value == 0 && storage.zeroed) { storage.pointer.initialize(repeating: value, count: storage.count) }
    }

    /// A tensor of `shape` whose contents the caller fills before reading (engine outputs). Its
    /// storage is recycled through `BufferPool` (activations have the same sizes on every pass).
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        storage = TensorStorage(count: Tensor.elementCount(shape), pooled: true)
    }

    /// A zero-filled tensor whose storage is recycled through `BufferPool` (activations and
    /// their gradients: a fresh mapping per call would page-fault on every training step).
    public init(pooledZeros shape: [Int]) {
        self.init(uninitialized: shape)
        storage.pointer.update(repeating: 0, count: storage.count)
    }

    /// A copy with its own pooled storage.
    public func pooledCopy() -> Tensor {
        let t = Tensor(uninitialized: shape)
        Kernels.copy(storage.pointer, t.storage.pointer, count: count)
        return t
    }

    /// A tensor of `shape` holding `scalars` in row-major order.
    /// - Throws: `TensorError` when a dimension is negative or `scalars.count` is not the product of `shape`.
    public init(shape: [Int], scalars: [Float]) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else { throw TensorError("negative dimension in shape \(shape)") }
        let n = Tensor.elementCount(shape)
        guard n == scalars.count else {
            throw TensorError("shape \(shape) needs \(n) values, got \(scalars.count)")
        }
        self.shape = shape
        storage = TensorStorage(count: n)
        scalars.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { storage.pointer.update(from: base, count: n) }
        }
    }

    /// A tensor of `shape` whose element at flat (row-major) index `i` is `generator(i)`.
    public init(shape: [Int], generator: (Int) -> Float) {
        self.shape = shape
        storage = TensorStorage(count: Tensor.elementCount(shape))
        for i in 0..<storage.count { storage.pointer[i] = generator(i) }
    }

    /// `parts` stacked along the first axis (they must agree on every other axis).
    public init(concatenatingBatches parts: [Tensor]) throws {
        let rest = parts.first.map { Array($0.shape.dropFirst()) } ?? []
        for p in parts where p.rank == 0 || Array(p.shape.dropFirst()) != rest {
            throw TensorError("cannot stack \(p.shape) with parts of shape [_] + \(rest)")
        }
        self.init(uninitialized: [parts.reduce(0) { $0 + $1.shape[0] }] + rest)
        var offset = 0
        for p in parts {
            storage.pointer.advanced(by: offset).update(from: p.storage.pointer, count: p.count)
            offset += p.count
        }
    }

    static func elementCount(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// Number of elements (the product of `shape`).
    public var count: Int { storage.count }
    /// Number of dimensions.
    public var rank: Int { shape.count }
    /// A copy of the elements in row-major order.
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.pointer, count: storage.count)) }

    /// The element at row-major position `i` (`0..<count`); setting it copies shared storage first.
    public subscript(flat i: Int) -> Float {
        get { precondition(i >= 0 && i < count, "flat index \(i) out of range 0..<\(count)"); return storage.pointer[i] }
        set {
            precondition(i >= 0 && i < count, "flat index \(i) out of range 0..<\(count)")
            makeUnique(); storage.pointer[i] = newValue
        }
    }

    /// Element at a multi-dimensional index (row-major).
    public subscript(_ index: Int...) -> Float {
        precondition(index.count == shape.count, "index rank \(index.count) != tensor rank \(shape.count)")
        var flat = 0
        for (i, d) in zip(index, shape) {
            precondition(i >= 0 && i < d, "index \(index) out of range for shape \(shape)")
            flat = flat * d + i
        }
        return storage.pointer[flat]
    }

    /// Gives this tensor its own storage before raw writes through `unsafePointer`.
    public mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
    }

    /// Calls `body` with the elements in row-major order; the buffer is valid only inside `body`.
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: storage.count))
    }

    /// Calls `body` with writable elements in row-major order, after giving this tensor its own storage.
    public mutating func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        makeUnique()
        return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count))
    }

    /// The raw pointer for engine calls. Callers that write must have called `makeUnique` (or own
    /// a freshly created tensor).
    public var unsafePointer: UnsafeMutablePointer<Float> { storage.pointer }

    /// Same data, new shape (no copy).
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        guard newShape.allSatisfy({ $0 >= 0 }), Tensor.elementCount(newShape) == count else {
            throw TensorError("cannot reshape \(shape) (\(count) values) to \(newShape)")
        }
        var t = self
        t.shape = newShape
        return t
    }

    /// The shape and the first six values, e.g. `Tensor(shape: [2, 10], values: [0.1, …])`.
    public var description: String {
        let head = (0..<min(count, 6)).map { String(format: "%.6g", storage.pointer[$0]) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), values: [\(head)\(count > 6 ? ", …" : "")])"
    }

    /// Max |a - b| over all elements; shapes must agree.
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(shape == other.shape, "shape \(shape) vs \(other.shape)")
        var m: Float = 0
        for i in 0..<count {
            let d = abs(storage.pointer[i] - other.storage.pointer[i])
            if d.isNaN { return .nan }
            m = max(m, d)
        }
        return m
    }

    /// Sum of all elements, accumulated in `Double`.
    public func sum() -> Double {
        var s = 0.0
        for i in 0..<count { s += Double(storage.pointer[i]) }
        return s
    }
}
