import Foundation

/// Errors of the tensor core: bad shapes or element counts, named so the caller can tell which.
public struct TensorError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// 64-byte aligned float32 storage; `Tensor` shares it copy-on-write.
final class TensorStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    private let bytes: Int

    init(count: Int) {
        self.count = count
        // One extra line so a zero-sized tensor still has a valid, unique pointer.
        bytes = max(count, 16) * MemoryLayout<Float>.stride
        let raw = BufferPool.shared.take(bytes: bytes)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 16))
    }

    deinit { BufferPool.shared.give(UnsafeMutableRawPointer(pointer), bytes: bytes) }

    func copy() -> TensorStorage {
        let s = TensorStorage(count: count)
        s.pointer.update(from: pointer, count: count)
        return s
    }
}

/// Recycles large tensor buffers. A forward pass allocates the same activation sizes every time;
/// without reuse, glibc returns each large block to the kernel on free (mmap'd allocations) and the
/// next pass page-faults and zero-fills it again (measured on cvt-13 batch 8: 14k page faults and
/// ~50 ms of system time per pass). Buffers below `minimumBytes` go straight to malloc; pooled bytes
/// are capped at `capacityBytes`, beyond which freed buffers are released.
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()
    public var capacityBytes = 1 << 30
    let minimumBytes = 256 << 10
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var pooledBytes = 0
    private let lock = NSLock()

    func take(bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= minimumBytes {
            lock.lock()
            if let p = free[bytes]?.popLast() {
                pooledBytes -= bytes
                lock.unlock()
                return p
            }
            lock.unlock()
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    func give(_ p: UnsafeMutableRawPointer, bytes: Int) {
        if bytes >= minimumBytes {
            lock.lock()
            if pooledBytes + bytes <= capacityBytes {
                free[bytes, default: []].append(p)
                pooledBytes += bytes
                lock.unlock()
                return
            }
            lock.unlock()
        }
        p.deallocate()
    }

    /// Bytes currently held for reuse.
    public var pooledByteCount: Int { lock.lock(); defer { lock.unlock() }; return pooledBytes }

    /// Releases every pooled buffer (e.g. after a large batch, to give the memory back).
    public func drain() {
        lock.lock(); defer { lock.unlock() }
        for list in free.values { for p in list { p.deallocate() } }
        free.removeAll()
        pooledBytes = 0
    }
}

/// A dense scratch buffer of `count` elements of `type` for engine calls (activations that only
/// engine operations read, e.g. bfloat16 matmul operands). Pooled like tensor storage.
public struct TypedBuffer: @unchecked Sendable {
    public let type: ElementType
    public let count: Int
    private let storage: TensorStorage

    public init(type: ElementType, count: Int) {
        self.type = type; self.count = count
        storage = TensorStorage(count: (count * type.byteCount + 3) / 4)
    }

    /// A float32 buffer sharing `tensor`'s storage.
    public init(_ tensor: Tensor) {
        type = .float32; count = tensor.count; storage = tensor.storage
    }

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
    public private(set) var shape: [Int]
    var storage: TensorStorage

    /// A tensor of `shape` filled with `value`.
    public init(zeros shape: [Int], value: Float = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        storage = TensorStorage(count: Tensor.elementCount(shape))
        storage.pointer.initialize(repeating: value, count: storage.count)
    }

    /// A tensor of `shape` whose contents the caller fills before reading (engine outputs).
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        storage = TensorStorage(count: Tensor.elementCount(shape))
    }

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

    public init(shape: [Int], generator: (Int) -> Float) {
        self.init(uninitialized: shape)
        for i in 0..<storage.count { storage.pointer[i] = generator(i) }
    }

    static func elementCount(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    public var count: Int { storage.count }
    public var rank: Int { shape.count }
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.pointer, count: storage.count)) }

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

    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: storage.count))
    }

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

    public func sum() -> Double {
        var s = 0.0
        for i in 0..<count { s += Double(storage.pointer[i]) }
        return s
    }
}
