import CDNNL
import CKernels
import Foundation

/// A failure inside the compute backend, naming the operation and oneDNN's status.
public struct EngineError: Error, CustomStringConvertible {
    public let operation: String
    public let status: String
    public var description: String { "compute backend: \(operation) failed (\(status))" }
}

@inline(__always)
func check(_ status: dnnl_status_t, _ op: @autoclosure () -> String) throws {
    if status != dnnl_success {
        throw EngineError(operation: op(), status: String(cString: dnnl_status2str(status)))
    }
}

/// Element type of an activation buffer handed to the engine.
public enum ElementType: Hashable, Sendable {
    case float32
    /// bfloat16 (the upper half of a float32, rounded to nearest even): produced and consumed only
    /// by bfloat16-precision matmuls, so the engine need not convert activations per call.
    case bfloat16
    /// IEEE half precision: only a storage format for constant weights (oneDNN 2.6 has no f16
    /// matmul on CPU), widened per call to the engine's precision.
    case float16

    public var byteCount: Int { self == .float32 ? 4 : 2 }
    var dnnl: dnnl_data_type_t {
        switch self {
        case .float32: return dnnl_f32
        case .bfloat16: return dnnl_bf16
        case .float16: return dnnl_f16
        }
    }
}

/// A strided view handed to one engine call: a pointer plus dims and element strides.
/// Lets attention read Q/K/V heads and write merged heads in place, with no split/merge copies.
public struct StridedView {
    public var raw: UnsafeMutableRawPointer
    public var dims: [Int]
    public var strides: [Int]
    public var type: ElementType

    public init(_ pointer: UnsafeMutablePointer<Float>, dims: [Int], strides: [Int]) {
        self.init(raw: UnsafeMutableRawPointer(pointer), type: .float32, dims: dims, strides: strides)
    }

    public init(raw: UnsafeMutableRawPointer, type: ElementType, dims: [Int], strides: [Int]) {
        self.raw = raw; self.type = type; self.dims = dims; self.strides = strides
    }

    /// Dense row-major float32 view of `dims`.
    public init(dense pointer: UnsafeMutablePointer<Float>, dims: [Int]) {
        self.init(pointer, dims: dims, strides: StridedView.denseStrides(dims))
    }

    /// Dense row-major view of `dims` over a buffer of `type`.
    public init(dense raw: UnsafeMutableRawPointer, type: ElementType, dims: [Int]) {
        self.init(raw: raw, type: type, dims: dims, strides: StridedView.denseStrides(dims))
    }

    /// Row-major element strides of `dims`.
    public static func denseStrides(_ dims: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: dims.count)
        var s = 1
        for i in stride(from: dims.count - 1, through: 0, by: -1) { strides[i] = s; s *= dims[i] }
        return strides
    }
}

/// An epilogue fused into a matmul, applied in order after the bias.
public enum PostOp: Hashable, Sendable {
    /// Exact-erf GELU.
    case gelu
    /// Multiply by a constant (attention's scale, applied after the dot products as the reference does).
    case scale(Float)
    /// Add the destination's previous contents (residual connection).
    case accumulate
}

/// Weights for a convolution, converted once per primitive shape to the layout oneDNN prefers.
public final class ConvWeights: @unchecked Sendable {
    /// PyTorch layout `[out, in/groups, kH, kW]`.
    public let weight: Tensor
    public let bias: Tensor?
    public let groups: Int
    /// Guards `packed` (engines of several threads may pack at once).
    let lock = NSLock()
    /// The weights in each blocked layout a primitive asked for. Keyed by the layout itself: it
    /// depends on the thread count as well as the shapes (a batch worker's single-threaded
    /// primitive may want another layout than the all-threads one of the same shape).
    var packed: [(layout: dnnl_memory_desc_t, weights: Tensor)] = []
    /// `[kh·kw·in, out]` in our GEMM's panels, for convolutions run as im2col + GEMM (groups 1).
    var panels: (pointer: UnsafeMutableRawPointer, bytes: Int)?
    /// Depthwise weights as `[kh·kw, C]`, for our depthwise kernel.
    var depthwiseTaps: Tensor?
    deinit { if let p = panels { RawMemory.free(p.pointer, bytes: p.bytes) } }

    public init(weight: Tensor, bias: Tensor?, groups: Int) {
        self.weight = weight; self.bias = bias; self.groups = groups
    }
}

/// Arithmetic of the matmuls. Layer norms, softmax, convolutions and accumulation stay float32.
public enum ComputePrecision: String, Sendable, CaseIterable {
    case float32
    /// Matmul operands rounded to bfloat16 (oneDNN's AMX / avx512_bf16 kernels), float32 accumulation and output.
    case bfloat16
}

/// Constant matmul weights (a layer's parameters): converted once to the engine's precision and kept.
public final class ConstantWeights: @unchecked Sendable {
    public let view: StridedView
    /// Guards `converted` (engines of several threads may convert at once).
    let lock = NSLock()
    var converted: [ComputePrecision: (pointer: UnsafeMutableRawPointer, bytes: Int, md: dnnl_memory_desc_t)] = [:]
    /// Keeps the viewed storage alive as long as these weights are in use.
    private let owner: Any?
    public init(_ view: StridedView, owner: Any? = nil) { self.view = view; self.owner = owner }
    deinit { for c in converted.values { RawMemory.free(c.pointer, bytes: c.bytes) } }
}

/// Matmul weights `[K, N]` held in the blocked layout oneDNN's matmul kernels read directly
/// (`Engine.packWeights`). Plain weights are re-blocked inside every matmul call; at cvt-13's
/// shapes that copy costs 7–28% of the matmul time, so layers keep this form instead of their
/// plain one.
public final class PackedWeights: @unchecked Sendable {
    /// `[K, N]`.
    public let dims: [Int]
    public let type: ElementType
    let md: dnnl_memory_desc_t
    let pointer: UnsafeMutableRawPointer
    /// Bytes of the blocked buffer (the layout may pad K and N up to its block sizes).
    public let bytes: Int
    /// The engine whose layout this is (unpacking needs it).
    public let engine: Engine
    /// Which kernels read these weights: oneDNN's (`md` is their blocked layout) or our AVX2 GEMM's
    /// 16-column panels (`LinearKernel.avx2`).
    public let kernel: LinearKernel
    init(dims: [Int], type: ElementType, md: dnnl_memory_desc_t, pointer: UnsafeMutableRawPointer, bytes: Int, engine: Engine,
         kernel: LinearKernel = .onednn) {
        self.dims = dims; self.type = type; self.md = md; self.pointer = pointer; self.bytes = bytes; self.engine = engine
        self.kernel = kernel
    }
    deinit { RawMemory.free(pointer, bytes: bytes) }

    /// Writes the weights back into a plain view (`dims` `[K, N]`, any strides; the type may differ,
    /// e.g. bfloat16 weights widened to float32).
    public func unpack(into dst: StridedView) throws { try engine.unpack(self, into: dst) }
}

/// The kernels that run matmuls with packed (Linear) weights.
public enum LinearKernel: String, Sendable {
    /// oneDNN's matmul (brgemm on AVX-512 CPUs, its AVX2 `gemm:jit` elsewhere).
    case onednn
    /// Our float32 GEMM for AVX2+FMA CPUs (CKernels/gemm.c): weights packed once in 16-column
    /// panels. On AVX2-only CPUs oneDNN 2.6 repacks the weights on every call and reaches 57–83% of
    /// the FMA peak at CvT's shapes; this kernel 81–90%.
    case avx2

    /// Whether this CPU can run it.
    public var isSupported: Bool { self == .onednn || ck_gemm_supported() != 0 }

    /// The faster one on this CPU: oneDNN where it has AVX-512 kernels, else ours when AVX2+FMA exist.
    public static let preferred: LinearKernel = ck_cpu_has_avx512f() == 0 && ck_gemm_supported() != 0 ? .avx2 : .onednn
}

struct MatmulKey: Hashable {
    var src: [Int], srcStrides: [Int], wei: [Int], weiStrides: [Int], dst: [Int], dstStrides: [Int]
    var bias: Bool, postOps: [PostOp], precision: ComputePrecision, srcType: ElementType, weiType: ElementType, dstType: ElementType
    /// Packed weights' layout is fixed per (K, N, type), so it needs no key of its own.
    var packed = false
}

struct PackedLayoutKey: Hashable { var k: Int, n: Int, type: ElementType }

struct SoftmaxKey: Hashable { var rows: Int, cols: Int, dstType: ElementType }

struct ReorderKey: Hashable { var dims: [Int], strides: [Int], from: ElementType, to: ElementType, dstStrides: [Int] = [] }

struct ConvKey: Hashable {
    var src: [Int], srcNCHW: Bool, wei: [Int], groups: Int, stride: [Int], padding: [Int], dst: [Int], bias: Bool
}

final class Primitive {
    let pd: dnnl_primitive_desc_t
    let primitive: dnnl_primitive_t
    var weightsMD: dnnl_memory_desc_t?
    /// Scratch memory the primitive needs per execution (user scratchpad mode), if any.
    var scratchpad: (md: dnnl_memory_desc_t, bytes: Int)?
    /// Memory objects of the last execution, one per argument: a cached primitive always runs on the
    /// same descriptors, so later calls only swap the data pointers.
    var memories: [dnnl_memory_t] = []
    var execArgs: [dnnl_exec_arg_t] = []
    init(pd: dnnl_primitive_desc_t, primitive: dnnl_primitive_t) { self.pd = pd; self.primitive = primitive }
    deinit {
        for m in memories { dnnl_memory_destroy(m) }
        dnnl_primitive_destroy(primitive); dnnl_primitive_desc_destroy(pd)
    }
}

/// One `Engine.concurrently` call: the body and each part's error, shared with the OpenMP team.
final class TeamJob {
    /// `body(part, member)`.
    var body: ((Int, Int) throws -> Void)?
    var errors: [Error?]
    private let lock = NSLock()
    init(count: Int, body: @escaping (Int, Int) throws -> Void) {
        self.body = body
        errors = Array(repeating: nil, count: count)
    }
    /// The next part no member has taken.
    private var next = 0

    /// Runs parts on the calling team member until none is left: each member takes the next free
    /// part when it is done with one (all of them on one thread inside another parallel region).
    /// Taken in turn rather than dealt out in advance, so that a member whose core is slowed (a
    /// shared VM) runs fewer parts instead of holding up the whole batch.
    func runMember() {
        let t = Int(omp_get_thread_num())
        while true {
            lock.lock()
            let i = next
            next += 1
            lock.unlock()
            if i >= errors.count { return }
            do { try body?(i, t) } catch { lock.lock(); errors[i] = error; lock.unlock() }
        }
    }
}

/// The compute engine: a oneDNN CPU engine and stream, a cache of created primitives, and the
/// thread count. One engine is shared by a process (`Engine.shared()`); calls are serialized.
public final class Engine: @unchecked Sendable {
    let engine: dnnl_engine_t
    let stream: dnnl_stream_t
    private var matmuls: [MatmulKey: Primitive] = [:]
    private var convs: [ConvKey: Primitive] = [:]
    private var softmaxes: [SoftmaxKey: Primitive] = [:]
    private var reorders: [ReorderKey: Primitive] = [:]
    private var packedLayouts: [PackedLayoutKey: dnnl_memory_desc_t] = [:]
    /// Attention runs images in groups whose score matrices total at most this many float32 values
    /// (16 MB by default; at least one image per group). Larger groups mean fewer, longer matmuls.
    public var attentionScoreBudget = 4 << 20
    /// Matmul arithmetic; float32 (the default) is the parity reference.
    public var precision: ComputePrecision = .float32
    private let lock = NSLock()
    /// Per-operation wall time in ms, collected when `profile` is set (for `cvt bench --profile`).
    public var profile = false
    public var profileTimes: [String: Double] = [:]
    /// Same, per operation and shape (e.g. `matmul [32, 3136, 64]x[64, 64]`).
    public var profileDetail: [String: Double] = [:]

    /// Runs `body`, adding its wall time to `profileTimes[name]` when profiling (for work done outside
    /// the backend: LayerNorm, copies, layout changes).
    @inline(__always)
    public func timed<R>(_ name: String, _ body: () throws -> R) rethrows -> R {
        if !profile { return try body() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            profileTimes[name, default: 0] += ms
            profileDetail[name, default: 0] += ms
        }
        return try body()
    }

    /// `threads`: backend worker threads; nil means all cores (not OMP_NUM_THREADS, which libgomp
    /// reads only at load time).
    public convenience init(threads: Int? = nil) throws {
        try self.init(settingThreads: true)
        self.threads = threads ?? ProcessInfo.processInfo.activeProcessorCount
    }

    /// An engine that leaves the process's thread count alone (batch workers).
    private init(settingThreads: Bool) throws {
        var e: dnnl_engine_t?
        try check(dnnl_engine_create(&e, dnnl_cpu, 0), "engine create")
        guard let e else { throw EngineError(operation: "engine create", status: "null engine") }
        var s: dnnl_stream_t?
        try check(dnnl_stream_create(&s, e, UInt32(dnnl_stream_default_flags.rawValue)), "stream create")
        guard let s else { throw EngineError(operation: "stream create", status: "null stream") }
        engine = e; stream = s
    }

    deinit {
        matmuls.removeAll(); convs.removeAll(); softmaxes.removeAll(); reorders.removeAll()
        if let s = scratch { RawMemory.free(s.pointer, bytes: s.bytes) }
        dnnl_stream_destroy(stream); dnnl_engine_destroy(engine)
    }

    nonisolated(unsafe) private static var sharedEngine: Engine?
    private static let sharedLock = NSLock()

    /// The process-wide engine, created on first use with all cores.
    public static func shared() throws -> Engine {
        sharedLock.lock(); defer { sharedLock.unlock() }
        if let e = sharedEngine { return e }
        let e = try Engine()
        sharedEngine = e
        return e
    }

    /// Worker threads used by the backend (OpenMP). Defaults to all cores.
    public var threads: Int {
        get { Int(omp_get_max_threads()) }
        set { omp_set_num_threads(Int32(max(1, newValue))) }
    }

    // MARK: - batch workers

    /// Whether a model splits a batch of several images across the threads (one part per thread,
    /// up to the batch size), each part running on its own engine with its share of the threads,
    /// instead of running every operation on all threads. On by default: per-image work is
    /// independent, and one thread per part keeps each core on its own data and skips the thread
    /// hand-offs of every backend call.
    public var splitsBatches = true
    private var workers: [Engine] = []

    /// Images per part at most when a batch is split: a worker runs its images in parts of this
    /// size, one after the other, so that a part's activations stay in cache (a 16-image part's
    /// [3152, 1536] MLP output does not). 0: one part per thread, however large.
    public var imagesPerPart = 4

    /// How many parts a batch of `batchSize` images is split into (1: not split).
    public func batchParts(_ batchSize: Int) -> Int {
        guard splitsBatches else { return 1 }
        let perThread = max(1, min(batchSize, threads))
        return imagesPerPart > 0 ? max(perThread, (batchSize + imagesPerPart - 1) / imagesPerPart) : perThread
    }

    /// Runs `body(i, worker)` for `i` in `0..<count` on a team of `min(count, threads)` threads:
    /// each member takes the next free part when done with one and runs it with its own engine, which has this
    /// engine's settings and its share of the threads (one each when there are at least as many
    /// parts as threads); rethrows the first error. Profile times of the workers are added to this
    /// engine's (CPU time, so they may exceed wall time).
    public func concurrently(_ count: Int, _ body: (Int, Engine) throws -> Void) throws {
        if count <= 0 { return }
        let members = min(count, max(1, threads))
        let total = max(threads, members)
        let shares = (0..<members).map { total / members + ($0 < total % members ? 1 : 0) }
        lock.lock()
        while workers.count < members {
            do { workers.append(try Engine(settingThreads: false)) } catch { lock.unlock(); throw error }
        }
        let team = Array(workers.prefix(members))
        lock.unlock()
        for w in team {
            w.precision = precision; w.packsWeights = packsWeights; w.linearKernel = linearKernel
            w.allowsFusedAttention = allowsFusedAttention; w.imagesPerPart = imagesPerPart
            w.attentionScoreBudget = attentionScoreBudget; w.profile = profile
        }
        // The team is an OpenMP team (the threads oneDNN uses anyway): with OMP_WAIT_POLICY=active
        // no idle pool thread spins beside the workers, as it would next to threads of our own.
        let errors = withoutActuallyEscaping(body) { body -> [Error?] in
            let job = TeamJob(count: count) { i, member in
                // OpenMP's thread count is per thread (and reverts when the team ends): with a
                // share of 1, every backend call (and the row-parallel kernels) runs on this thread only.
                // (Inside another parallel region OpenMP grants one thread, which runs every part.)
                let m = min(member, members - 1)
                omp_set_num_threads(Int32(shares[m]))
                try body(i, team[m])
            }
            GOMP_parallel({ raw in
                guard let raw else { return }
                Unmanaged<TeamJob>.fromOpaque(raw).takeUnretainedValue().runMember()
            }, Unmanaged.passUnretained(job).toOpaque(), UInt32(members), 0)
            job.body = nil  // `body` must not outlive this call
            return job.errors
        }
        if profile {
            for w in team {
                for (k, v) in w.profileTimes { profileTimes[k, default: 0] += v }
                for (k, v) in w.profileDetail { profileDetail[k, default: 0] += v }
                w.profileTimes = [:]; w.profileDetail = [:]
            }
        }
        if let e = errors.lazy.compactMap({ $0 }).first { throw e }
    }

    // MARK: - memory descriptors

    private func md(_ dims: [Int], strides: [Int], type: dnnl_data_type_t = dnnl_f32) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        let dd = dims.map(Int64.init), ss = strides.map(Int64.init)
        try check(dnnl_memory_desc_init_by_strides(&d, Int32(dims.count), dd, type, ss), "memory desc \(dims)")
        return d
    }


    /// Converts a strided view to a dense buffer of `type`, taken from the buffer pool (the caller
    /// gives it back, or keeps it for constant weights).
    private func convert(_ v: StridedView, to type: ElementType) throws -> (UnsafeMutableRawPointer, dnnl_memory_desc_t, Int) {
        let dense = StridedView.denseStrides(v.dims)
        let dstMD = try md(v.dims, strides: dense, type: type.dnnl)
        let count = max(1, v.dims.reduce(1, *))
        let bytes = count * type.byteCount
        let buffer = BufferPool.shared.take(bytes: bytes)
        if v.type == .float16, type == .float32, v.strides == dense {
            // oneDNN 2.6 has only a reference f16 reorder (~12 ms for 384x1536); F16C is ~100x faster.
            Kernels.fromFloat16(v.raw, buffer.assumingMemoryBound(to: Float.self), count: v.dims.reduce(1, *))
            return (buffer, dstMD, bytes)
        }
        do {
            try copy(v, into: StridedView(raw: buffer, type: type, dims: v.dims, strides: dense))
        } catch { BufferPool.shared.give(buffer, bytes: bytes); throw error }
        return (buffer, dstMD, bytes)
    }

    /// Copies `src` into `dst` (same dims, any strides), converting the element type (to bfloat16:
    /// rounded to nearest even). Reorder primitives are cached per shape.
    private func copy(_ src: StridedView, into dst: StridedView) throws {
        let srcMD = try md(src.dims, strides: src.strides, type: src.type.dnnl)
        let dstMD = try md(dst.dims, strides: dst.strides, type: dst.type.dnnl)
        let key = ReorderKey(dims: src.dims, strides: src.strides, from: src.type, to: dst.type, dstStrides: dst.strides)
        let p: Primitive
        if let cached = reorders[key] { p = cached } else {
            p = try makePrimitive({ pd in
                var a = srcMD, b = dstMD
                let attr = try makeAttr([])
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_reorder_primitive_desc_create(&pd, &a, engine, &b, engine, attr), "reorder \(src.type) to \(dst.type)")
            }, "reorder")
            reorders[key] = p
        }
        try run(p, [(DNNL_ARG_FROM, srcMD, src.raw), (DNNL_ARG_TO, dstMD, dst.raw)], "reorder")
    }

    private func md(_ dims: [Int], tag: dnnl_format_tag_t) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        try check(dnnl_memory_desc_init_by_tag(&d, Int32(dims.count), dims.map(Int64.init), dnnl_f32, tag), "memory desc \(dims)")
        return d
    }

    private func memory(_ desc: dnnl_memory_desc_t, _ ptr: UnsafeMutableRawPointer?) throws -> dnnl_memory_t {
        var d = desc
        var m: dnnl_memory_t?
        try check(dnnl_memory_create(&m, &d, engine, ptr), "memory create")
        guard let m else { throw EngineError(operation: "memory create", status: "null memory") }
        return m
    }

    private func run(_ p: Primitive, _ arguments: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)], _ name: @autoclosure () -> String) throws {
        var args = arguments
        if let sp = p.scratchpad { args.append((DNNL_ARG_SCRATCHPAD, sp.md, scratchpad(sp.bytes))) }
        if p.memories.count == args.count, zip(p.execArgs, args).allSatisfy({ $0.arg == $1.0 }) {
            for (m, a) in zip(p.memories, args) { try check(dnnl_memory_set_data_handle(m, a.2), "memory set data (\(name()))") }
        } else {
            for m in p.memories { dnnl_memory_destroy(m) }
            p.memories = []; p.execArgs = []
            for (arg, desc, ptr) in args {
                let m = try memory(desc, ptr)
                p.memories.append(m)
                p.execArgs.append(dnnl_exec_arg_t(arg: arg, memory: m))
            }
        }
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        try check(dnnl_primitive_execute(p.primitive, stream, Int32(p.execArgs.count), p.execArgs), name())
        try check(dnnl_stream_wait(stream), name())
        if profile {
            let n = name()
            record(n.split(separator: " ").first.map(String.init) ?? n, n, since: t0)
        }
    }

    private func makePrimitive(_ create: (inout dnnl_primitive_desc_t?) throws -> Void, _ name: String) throws -> Primitive {
        var pd: dnnl_primitive_desc_t?
        try create(&pd)
        guard let pd else { throw EngineError(operation: name, status: "no primitive descriptor") }
        var prim: dnnl_primitive_t?
        let st = dnnl_primitive_create(&prim, pd)
        guard st == dnnl_success, let prim else {
            dnnl_primitive_desc_destroy(pd)
            throw EngineError(operation: name, status: String(cString: dnnl_status2str(st)))
        }
        let p = Primitive(pd: pd, primitive: prim)
        if let q = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) {
            var m = q.pointee
            let bytes = dnnl_memory_desc_get_size(&m)
            if bytes > 0 { p.scratchpad = (m, bytes) }
        }
        return p
    }

    /// Scratch memory for one primitive execution, shared by all of this engine's primitives (they
    /// run one at a time, under `lock`), grown on demand.
    private var scratch: (pointer: UnsafeMutableRawPointer, bytes: Int)?

    private func scratchpad(_ bytes: Int) -> UnsafeMutableRawPointer {
        if let s = scratch, s.bytes >= bytes { return s.pointer }
        if let s = scratch { RawMemory.free(s.pointer, bytes: s.bytes) }
        let (ptr, _) = RawMemory.allocate(bytes: bytes)
        scratch = (ptr, bytes)
        return ptr
    }

    // MARK: - matmul

    /// `dst[..., M, N] = src[..., M, K] · weights[..., K, N] (+ bias[N])`, then `postOps`.
    /// Batch dims broadcast as oneDNN's matmul defines. All operands are strided views.
    public func matmul(src: StridedView, weights: StridedView, bias: UnsafePointer<Float>? = nil,
                       dst: StridedView, postOps: [PostOp] = []) throws {
        try matmul(src: src, weights: weights, constant: nil, bias: bias, dst: dst, postOps: postOps)
    }

    /// Same with constant weights, which are converted to the engine's precision only once.
    public func matmul(src: StridedView, weights: ConstantWeights, bias: UnsafePointer<Float>? = nil,
                       dst: StridedView, postOps: [PostOp] = []) throws {
        try matmul(src: src, weights: weights.view, constant: weights, bias: bias, dst: dst, postOps: postOps)
    }

    private func matmul(src: StridedView, weights: StridedView, constant: ConstantWeights?, bias: UnsafePointer<Float>?,
                        dst: StridedView, postOps: [PostOp]) throws {
        let r = dst.dims.count
        guard src.dims.count == r, weights.dims.count == r, r >= 2,
              src.dims[r - 1] == weights.dims[r - 2], src.dims[r - 2] == dst.dims[r - 2],
              weights.dims[r - 1] == dst.dims[r - 1] else {
            throw TensorError("matmul shape mismatch: \(src.dims) x \(weights.dims) -> \(dst.dims)")
        }
        if dst.dims.contains(0) { return }
        lock.lock(); defer { lock.unlock() }
        let precision = self.precision
        let key = MatmulKey(src: src.dims, srcStrides: src.strides, wei: weights.dims, weiStrides: weights.strides,
                            dst: dst.dims, dstStrides: dst.strides, bias: bias != nil, postOps: postOps, precision: precision,
                            srcType: src.type, weiType: weights.type, dstType: dst.type)
        try checkActivationTypes(src, dst: dst)
        var scratch: [(UnsafeMutableRawPointer, Int)] = []
        defer { for (b, n) in scratch { BufferPool.shared.give(b, bytes: n) } }
        let source = try kernelOperand(src, scratch: &scratch)
        var weiMD = try md(weights.dims, strides: weights.strides, type: weights.type.dnnl), weiPtr = weights.raw
        if needsConversion(weights) {
            constant?.lock.lock()
            defer { constant?.lock.unlock() }
            if let constant, let cached = constant.converted[precision] {
                (weiMD, weiPtr) = (cached.md, cached.pointer)
            } else {
                var converted: [(UnsafeMutableRawPointer, Int)] = []
                let operand = try kernelOperand(weights, scratch: &converted)
                // float32 weights are converted once and kept; half-precision storage is widened per
                // call, so it really keeps half the weight memory.
                if let constant, weights.type == .float32, let last = converted.popLast() {
                    constant.converted[precision] = (last.0, last.1, operand.md)
                }
                scratch += converted
                (weiMD, weiPtr) = (operand.md, operand.pointer)
            }
        }
        try runMatmul(key, src: source, weights: (weiMD, weiPtr), bias: bias, dst: dst, postOps: postOps,
                      scratch: &scratch, name: "\(src.dims)x\(weights.dims)")
    }

    private func checkActivationTypes(_ src: StridedView, dst: StridedView) throws {
        if precision == .float32, src.type != .float32 || dst.type != .float32 {
            throw TensorError("matmul: bfloat16 activations need the engine's bfloat16 precision")
        }
        if src.type == .float16 || dst.type == .float16 {
            throw TensorError("matmul: float16 is a weight storage format only")
        }
    }

    /// Whether a matmul operand must be converted before the kernels read it: its type is not the
    /// kernels' type, or (emulated bfloat16) it is float32 and must first be rounded to bfloat16.
    private func needsConversion(_ v: StridedView) -> Bool {
        emulatesBFloat16 || v.type != kernelOperandType
    }

    /// A matmul operand as the kernels read it: the view itself, or a dense copy in the kernels'
    /// type whose pool buffers are appended to `scratch` (the last one holds the operand). In
    /// bfloat16 precision every operand is bfloat16 first (float32 activations are rounded per
    /// call; producers that can write bf16 directly avoid this); without native bf16 kernels it is
    /// then widened, exactly, to float32.
    private func kernelOperand(_ v: StridedView, scratch: inout [(UnsafeMutableRawPointer, Int)]) throws
        -> (md: dnnl_memory_desc_t, pointer: UnsafeMutableRawPointer) {
        if !needsConversion(v) { return (try md(v.dims, strides: v.strides, type: v.type.dnnl), v.raw) }
        if emulatesBFloat16, v.type != .float16, let count = permutedDenseCount(v) {
            // One linear pass, keeping the layout (attention's head views are such permutations).
            let bytes = count * 4
            let ptr = BufferPool.shared.take(bytes: bytes)
            scratch.append((ptr, bytes))
            let f = ptr.assumingMemoryBound(to: Float.self)
            if v.type == .bfloat16 { Kernels.fromBFloat16(v.raw, f, count: count) } else {
                Kernels.roundToBFloat16(v.raw.assumingMemoryBound(to: Float.self), f, count: count)
            }
            return (try md(v.dims, strides: v.strides, type: dnnl_f32), ptr)
        }
        var view = v
        if emulatesBFloat16, v.type != .bfloat16 {
            let (ptr, _, n) = try convert(v, to: .bfloat16)
            scratch.append((ptr, n))
            view = StridedView(dense: ptr, type: .bfloat16, dims: v.dims)
        }
        let (ptr, m, n) = try convert(view, to: kernelOperandType)
        scratch.append((ptr, n))
        return (m, ptr)
    }

    /// The element count of a view that covers a dense block in some order of its axes (no gaps, no
    /// overlaps), so that converting the block linearly converts the view; nil for other views.
    private func permutedDenseCount(_ v: StridedView) -> Int? {
        let axes = zip(v.dims, v.strides).filter { $0.0 != 1 }.sorted { $0.1 < $1.1 }
        var expected = 1
        for (d, st) in axes {
            guard d > 0, st == expected else { return nil }
            expected *= d
        }
        return expected
    }

    /// Creates (or reuses) the matmul primitive for `key` and runs it. Bias is a float32 row over
    /// the last axis of `dst`. With emulated bfloat16, a bfloat16 `dst` is computed in a float32
    /// buffer and rounded into place (what the native kernels do when they store it).
    private func runMatmul(_ key: MatmulKey, src: (md: dnnl_memory_desc_t, pointer: UnsafeMutableRawPointer),
                           weights: (dnnl_memory_desc_t, UnsafeMutableRawPointer), bias: UnsafePointer<Float>?,
                           dst finalDst: StridedView, postOps: [PostOp], scratch: inout [(UnsafeMutableRawPointer, Int)],
                           name: @autoclosure () -> String) throws {
        var dst = finalDst
        let roundsOutput = emulatesBFloat16 && finalDst.type == .bfloat16
        let linearOutput = roundsOutput ? permutedDenseCount(finalDst) : nil
        if let count = linearOutput {
            // float32 in the same layout, rounded in one linear pass afterwards.
            let bytes = count * 4
            let ptr = BufferPool.shared.take(bytes: bytes)
            scratch.append((ptr, bytes))
            if postOps.contains(.accumulate) { Kernels.fromBFloat16(finalDst.raw, ptr.assumingMemoryBound(to: Float.self), count: count) }
            dst = StridedView(raw: ptr, type: .float32, dims: finalDst.dims, strides: finalDst.strides)
        } else if roundsOutput {
            if postOps.contains(.accumulate) {
                let (ptr, _, n) = try convert(finalDst, to: .float32)
                scratch.append((ptr, n))
                dst = StridedView(dense: ptr, type: .float32, dims: finalDst.dims)
            } else {
                let n = max(1, finalDst.dims.reduce(1, *)) * 4
                let ptr = BufferPool.shared.take(bytes: n)
                scratch.append((ptr, n))
                dst = StridedView(dense: ptr, type: .float32, dims: finalDst.dims)
            }
        }
        let r = dst.dims.count
        let dstMD = try md(dst.dims, strides: dst.strides, type: dst.type.dnnl)
        var biasDims = [Int](repeating: 1, count: r); biasDims[r - 1] = dst.dims[r - 1]
        let biasMD = try md(biasDims, strides: StridedView.denseStrides(biasDims))
        let p: Primitive
        if let cached = matmuls[key] {
            p = cached
        } else {
            p = try makePrimitive({ pd in
                var desc = dnnl_matmul_desc_t()
                var s = src.md, w = weights.0, d = dstMD, b = biasMD
                let st = bias != nil
                    ? dnnl_matmul_desc_init(&desc, &s, &w, &b, &d)
                    : dnnl_matmul_desc_init(&desc, &s, &w, nil, &d)
                try check(st, "matmul desc \(name())")
                let attr = try makeAttr(postOps)
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "matmul primitive \(name())")
            }, "matmul")
            matmuls[key] = p
        }
        var args: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)] = [
            (DNNL_ARG_SRC, src.md, src.pointer),
            (DNNL_ARG_WEIGHTS, weights.0, weights.1),
            (DNNL_ARG_DST, dstMD, dst.raw),
        ]
        if let bias { args.append((DNNL_ARG_BIAS, biasMD, UnsafeMutableRawPointer(mutating: bias))) }
        try run(p, args, "matmul \(name())")
        if let count = linearOutput {
            Kernels.toBFloat16(dst.raw.assumingMemoryBound(to: Float.self), finalDst.raw, count: count)
        } else if roundsOutput {
            try copy(dst, into: finalDst)
        }
    }

    // MARK: - bfloat16 kernels

    /// Whether oneDNN has bfloat16 matmul kernels on this CPU (avx512_bf16 or AMX; oneDNN 2.6 has
    /// none for AVX2): a small bf16 matmul primitive either exists or is "unimplemented". Without
    /// them, bfloat16 precision is emulated (`emulatesBFloat16`).
    public static let hasNativeBFloat16: Bool = {
        var e: dnnl_engine_t?
        guard dnnl_engine_create(&e, dnnl_cpu, 0) == dnnl_success, let e else { return false }
        defer { dnnl_engine_destroy(e) }
        var s = dnnl_memory_desc_t(), d = dnnl_memory_desc_t()
        guard dnnl_memory_desc_init_by_strides(&s, 2, [16, 16], dnnl_bf16, [16, 1]) == dnnl_success,
              dnnl_memory_desc_init_by_strides(&d, 2, [16, 16], dnnl_f32, [16, 1]) == dnnl_success else { return false }
        var desc = dnnl_matmul_desc_t()
        var w = s
        guard dnnl_matmul_desc_init(&desc, &s, &w, nil, &d) == dnnl_success else { return false }
        var pd: dnnl_primitive_desc_t?
        let status = dnnl_primitive_desc_create(&pd, &desc, nil, e, nil)
        if let pd { dnnl_primitive_desc_destroy(pd) }
        return status == dnnl_success
    }()
    public var hasNativeBFloat16: Bool { Engine.hasNativeBFloat16 }

    /// bfloat16 precision on a CPU without bf16 kernels: operands and bf16 outputs are rounded to
    /// bfloat16 exactly as in the native path, the products run in float32 kernels (a bf16×bf16
    /// product is exact in float32, and both accumulate in float32), so the numbers match the
    /// native path's up to summation order, without its speed.
    public var emulatesBFloat16: Bool { precision == .bfloat16 && !hasNativeBFloat16 }

    /// The element type the matmul kernels read: bfloat16 in bfloat16 precision with native
    /// kernels, else float32.
    public var kernelOperandType: ElementType { precision == .bfloat16 && hasNativeBFloat16 ? .bfloat16 : .float32 }

    /// The kernel type holding operands of `type` (bfloat16 is held in float32 when emulated).
    private func kernelType(of type: ElementType) -> ElementType {
        type == .bfloat16 && !hasNativeBFloat16 ? .float32 : type
    }

    // MARK: - packed matmul weights

    /// Whether layers keep their matmul weights packed (`PackedWeights`) instead of plain. On by
    /// default; off runs the plain-weights path (for comparisons).
    public var packsWeights = true

    /// Kernels for float32 packed weights (weights packed by another kernel are unpacked and packed
    /// again by the layers). Defaults to the faster one on this CPU; setting an unsupported kernel
    /// keeps oneDNN.
    public var linearKernel: LinearKernel = .preferred {
        didSet { if !linearKernel.isSupported { linearKernel = .onednn } }
    }

    /// The kernel that packs weights of `type`. Our GEMM takes float32 panels, and 16-bit ones
    /// widened per micro-panel: float16-stored weights (float32 arithmetic) and, where bfloat16 is
    /// emulated, bfloat16 weights (with bf16-rounded activations: bf16 × bf16 products are exact in
    /// float32, so this is bf16 arithmetic). Native bf16 kernels (oneDNN's) are used where they exist.
    public func packingKernel(_ type: ElementType) -> LinearKernel {
        guard linearKernel == .avx2 else { return .onednn }
        switch type {
        case .float32: return .avx2
        case .float16: return precision == .float32 && ck_gemm16_supported(Int32(CK_FLOAT16)) != 0 ? .avx2 : .onednn
        case .bfloat16: return emulatesBFloat16 && ck_gemm16_supported(Int32(CK_BFLOAT16)) != 0 ? .avx2 : .onednn
        }
    }

    /// The type weights stored as `storage` are packed in for this engine's matmuls, or nil when
    /// they are not packed (they run from their plain form, converted per call).
    public func packedType(forStorage storage: ElementType) -> ElementType? {
        if storage == matmulOperandType { return storage }
        if storage == .float16, precision == .float32, packingKernel(.float16) == .avx2 { return .float16 }
        return nil
    }

    /// The operand type matmuls run in at this precision (what packed weights must hold, and what
    /// bf16-precision layers produce for them).
    public var matmulOperandType: ElementType { precision == .bfloat16 ? .bfloat16 : .float32 }

    /// The blocked layout matmul kernels prefer for `[k, n]` weights held as `type` (a kernel
    /// type). It depends on K, N and the types, not on M (brgemm picks its N block from N), so any
    /// M gives the layout every later call accepts.
    private func packedLayout(k: Int, n: Int, type: ElementType) throws -> dnnl_memory_desc_t {
        let key = PackedLayoutKey(k: k, n: n, type: type)
        if let cached = packedLayouts[key] { return cached }
        let srcMD = try md([64, k], strides: [k, 1], type: type.dnnl)
        let dstMD = try md([64, n], strides: [n, 1])
        var anyMD = dnnl_memory_desc_t()
        try check(dnnl_memory_desc_init_by_tag(&anyMD, 2, [Int64(k), Int64(n)], type.dnnl, dnnl_format_tag_any), "memory desc any")
        var desc = dnnl_matmul_desc_t()
        var s = srcMD, w = anyMD, d = dstMD
        try check(dnnl_matmul_desc_init(&desc, &s, &w, nil, &d), "matmul desc for packing [\(k), \(n)]")
        var pd: dnnl_primitive_desc_t?
        let attr = try makeAttr([])
        defer { dnnl_primitive_attr_destroy(attr) }
        try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "matmul primitive for packing [\(k), \(n)]")
        defer { dnnl_primitive_desc_destroy(pd) }
        guard let q = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0) else {
            throw EngineError(operation: "packWeights", status: "no weights layout")
        }
        packedLayouts[key] = q.pointee
        return q.pointee
    }

    /// Bytes that `[k, n]` weights of `type` take packed (blocked layouts pad K and N to their block
    /// sizes, which matters only for narrow layers; oneDNN holds emulated bfloat16 weights in
    /// float32, our GEMM's panels keep 16-bit types in 16 bits).
    public func packedBytes(k: Int, n: Int, type: ElementType) throws -> Int {
        guard k > 0, n > 0 else { throw TensorError("packedBytes: need K, N > 0, got [\(k), \(n)]") }
        if packingKernel(type) == .avx2 { return ck_gemm_packed_count(Int32(k), Int32(n)) * (type == .float32 ? 4 : 2) }
        let held = kernelType(of: type)
        lock.lock(); defer { lock.unlock() }
        var layout = try packedLayout(k: k, n: n, type: held)
        return dnnl_memory_desc_get_size(&layout)
    }

    /// Copies `weights` (`[K, N]`, any strides, float32 or bfloat16; bfloat16 only when the engine's
    /// precision is bfloat16) into the blocked layout the matmul kernels prefer for this K and N.
    public func packWeights(_ weights: StridedView) throws -> PackedWeights {
        guard weights.dims.count == 2, weights.dims.allSatisfy({ $0 > 0 }) else {
            throw TensorError("packWeights: need [K, N] with K, N > 0, got \(weights.dims)")
        }
        let type = weights.type
        guard packedType(forStorage: type) == type else {
            throw TensorError("packWeights: \(type) weights do not match the engine's \(precision) matmuls")
        }
        if packingKernel(type) == .avx2 {
            let (k, n) = (weights.dims[0], weights.dims[1])
            let bytes = ck_gemm_packed_count(Int32(k), Int32(n)) * type.byteCount
            let (ptr, _) = RawMemory.allocate(bytes: bytes)
            if type == .float32 {
                ck_gemm_pack(weights.raw.assumingMemoryBound(to: Float.self), weights.strides[0], weights.strides[1], Int32(k), Int32(n),
                             ptr.assumingMemoryBound(to: Float.self))
            } else {
                ck_gemm_pack16(weights.raw.assumingMemoryBound(to: UInt16.self), weights.strides[0], weights.strides[1], Int32(k), Int32(n),
                               ptr.assumingMemoryBound(to: UInt16.self))
            }
            return PackedWeights(dims: weights.dims, type: type, md: dnnl_memory_desc_t(), pointer: ptr, bytes: bytes, engine: self, kernel: .avx2)
        }
        let held = kernelType(of: type)
        lock.lock(); defer { lock.unlock() }
        var packedMD = try packedLayout(k: weights.dims[0], n: weights.dims[1], type: held)
        let bytes = max(1, dnnl_memory_desc_get_size(&packedMD))
        let (ptr, _) = RawMemory.allocate(bytes: bytes)
        do {
            // bfloat16 → float32 (emulated) widens exactly.
            try reorder(from: md(weights.dims, strides: weights.strides, type: type.dnnl), weights.raw, to: packedMD, ptr)
        } catch { RawMemory.free(ptr, bytes: bytes); throw error }
        return PackedWeights(dims: weights.dims, type: type, md: packedMD, pointer: ptr, bytes: bytes, engine: self)
    }

    func unpack(_ p: PackedWeights, into dst: StridedView) throws {
        guard dst.dims == p.dims else { throw TensorError("unpack: packed \(p.dims) into \(dst.dims)") }
        if p.kernel == .avx2 {
            if p.type == .float32 {
                guard dst.type == .float32 else { throw TensorError("unpack: panel-packed float32 weights into \(dst.type)") }
                ck_gemm_unpack(p.pointer.assumingMemoryBound(to: Float.self), Int32(p.dims[0]), Int32(p.dims[1]),
                               dst.raw.assumingMemoryBound(to: Float.self), dst.strides[0], dst.strides[1])
            } else {
                // Into the stored type (bits unchanged) or widened to float32.
                guard dst.type == p.type || dst.type == .float32 else { throw TensorError("unpack: panel-packed \(p.type) weights into \(dst.type)") }
                ck_gemm_unpack16(p.pointer.assumingMemoryBound(to: UInt16.self), Int32(p.type == .float16 ? CK_FLOAT16 : CK_BFLOAT16),
                                 Int32(p.dims[0]), Int32(p.dims[1]), dst.raw, dst.type == .float32 ? 1 : 0, dst.strides[0], dst.strides[1])
            }
            return
        }
        lock.lock(); defer { lock.unlock() }
        try reorder(from: p.md, p.pointer, to: md(dst.dims, strides: dst.strides, type: dst.type.dnnl), dst.raw)
    }

    /// `dst = src·W (+ bias)` with packed weights, which must hold the engine's matmul operand type.
    public func matmul(src: StridedView, packed: PackedWeights, bias: UnsafePointer<Float>? = nil,
                       dst: StridedView, postOps: [PostOp] = []) throws {
        guard src.dims.count == 2, dst.dims.count == 2, src.dims[1] == packed.dims[0], src.dims[0] == dst.dims[0],
              dst.dims[1] == packed.dims[1] else {
            throw TensorError("matmul shape mismatch: \(src.dims) x packed \(packed.dims) -> \(dst.dims)")
        }
        if dst.dims[0] == 0 { return }
        lock.lock(); defer { lock.unlock() }
        let precision = self.precision
        // Any of this process's CPU engines has the same layouts (batch workers share packed weights).
        guard packedType(forStorage: packed.type) == packed.type, packingKernel(packed.type) == packed.kernel else {
            throw TensorError("matmul: weights packed as \(packed.type) for \(packed.kernel) do not fit this engine's \(precision) matmuls")
        }
        if packed.kernel == .avx2 {
            try panelMatmul(src: src, packed: packed, bias: bias, dst: dst, postOps: postOps)
            return
        }
        let key = MatmulKey(src: src.dims, srcStrides: src.strides, wei: packed.dims, weiStrides: [], dst: dst.dims,
                            dstStrides: dst.strides, bias: bias != nil, postOps: postOps, precision: precision,
                            srcType: src.type, weiType: packed.type, dstType: dst.type, packed: true)
        try checkActivationTypes(src, dst: dst)
        var scratch: [(UnsafeMutableRawPointer, Int)] = []
        defer { for (b, n) in scratch { BufferPool.shared.give(b, bytes: n) } }
        let source = try kernelOperand(src, scratch: &scratch)
        try runMatmul(key, src: source, weights: (packed.md, packed.pointer), bias: bias, dst: dst, postOps: postOps,
                      scratch: &scratch, name: "\(src.dims)x\(packed.dims)")
    }

    /// `dst = src·W (+ bias)` on our AVX2 GEMM: float32, or 16-bit panels widened per micro-panel.
    /// In (emulated) bfloat16 precision the operand is bf16: bf16 activations are widened, float32
    /// ones rounded to bf16 first, and a bf16 `dst` is computed in float32 and rounded once, as the
    /// native kernels do. Rows of `src` and `dst` must be contiguous (`src` is copied otherwise).
    private func panelMatmul(src: StridedView, packed: PackedWeights, bias: UnsafePointer<Float>?, dst finalDst: StridedView,
                             postOps: [PostOp]) throws {
        let (m, k, n) = (src.dims[0], src.dims[1], finalDst.dims[1])
        var scratch: [(UnsafeMutableRawPointer, Int)] = []
        defer { for (b, c) in scratch { BufferPool.shared.give(b, bytes: c) } }
        func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
            let bytes = max(1, count) * 4
            let p = BufferPool.shared.take(bytes: bytes)
            scratch.append((p, bytes))
            return p.assumingMemoryBound(to: Float.self)
        }
        var a = src.raw, lda = src.strides[0]
        if src.type != .float32 || precision == .bfloat16 {
            guard precision == .bfloat16, src.type != .float16 else {
                throw TensorError("matmul: \(src.type) activations need the engine's bfloat16 precision")
            }
            // Dense float32 holding bf16 values.
            var dense = src.raw
            if src.strides != [k, 1] {
                let (p, _, bytes) = try convert(src, to: src.type)
                scratch.append((p, bytes)); dense = p
            }
            let f = floats(m * k)
            if src.type == .bfloat16 { Kernels.fromBFloat16(dense, f, count: m * k) } else {
                Kernels.roundToBFloat16(dense.assumingMemoryBound(to: Float.self), f, count: m * k)
            }
            a = UnsafeMutableRawPointer(f); lda = k
        } else if src.strides[1] != 1 || m > 1 && lda < k {
            let (ptr, _, bytes) = try convert(src, to: .float32)
            scratch.append((ptr, bytes)); a = ptr; lda = k
        }
        guard finalDst.strides[1] == 1, m == 1 || finalDst.strides[0] >= n else {
            throw TensorError("matmul: panel-packed weights need dst rows contiguous, got strides \(finalDst.strides)")
        }
        var dst = finalDst
        if finalDst.type == .bfloat16 {
            guard precision == .bfloat16 else { throw TensorError("matmul: bfloat16 outputs need the engine's bfloat16 precision") }
            let f = floats(m * n)
            if postOps.contains(.accumulate) {
                for r in 0..<m { Kernels.fromBFloat16(finalDst.raw + r * finalDst.strides[0] * 2, f + r * n, count: n) }
            }
            dst = StridedView(dense: f, dims: [m, n])
        } else if finalDst.type != .float32 {
            throw TensorError("matmul: \(finalDst.type) outputs are not supported")
        }
        var ops: [Int32] = [], args: [Float] = []
        for op in postOps {
            switch op {
            case .gelu: ops.append(1); args.append(0)
            case .scale(let s): ops.append(2); args.append(s)
            case .accumulate: ops.append(3); args.append(0)
            }
        }
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        let status: Int32
        if packed.type == .float32 {
            status = ck_gemm(Int32(m), Int32(n), Int32(k), a.assumingMemoryBound(to: Float.self), lda,
                             packed.pointer.assumingMemoryBound(to: Float.self), bias, dst.raw.assumingMemoryBound(to: Float.self),
                             dst.strides[0], ops, args, Int32(ops.count))
        } else {
            status = ck_gemm16(Int32(m), Int32(n), Int32(k), a.assumingMemoryBound(to: Float.self), lda,
                               packed.pointer.assumingMemoryBound(to: UInt16.self), Int32(packed.type == .float16 ? CK_FLOAT16 : CK_BFLOAT16),
                               bias, dst.raw.assumingMemoryBound(to: Float.self), dst.strides[0], ops, args, Int32(ops.count))
        }
        guard status == 0 else { throw TensorError("matmul: the AVX2 GEMM does not support post-ops \(postOps) (accumulate must come first)") }
        if finalDst.type == .bfloat16 {
            let f = dst.raw.assumingMemoryBound(to: Float.self)
            for r in 0..<m { Kernels.toBFloat16(f + r * n, finalDst.raw + r * finalDst.strides[0] * 2, count: n) }
        }
        if profile { record("matmul", "matmul \([m, k])x\([k, n])", since: t0) }
    }

    /// Adds the time since `t0` to the profile (callers hold `lock`).
    private func record(_ kind: String, _ detail: String, since t0: UInt64) {
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        profileTimes[kind, default: 0] += ms
        profileDetail[detail, default: 0] += ms
    }

    // MARK: - fused attention

    /// Whether models use the fused attention kernel where it runs (off: oneDNN matmuls and softmax,
    /// for comparison).
    public var allowsFusedAttention = true

    /// Whether `attention(…)` runs here: float32 precision with our AVX2 kernels.
    public var fusesAttention: Bool { allowsFusedAttention && precision == .float32 && linearKernel == .avx2 }

    /// Multi-head attention on float32 `[B, T, C]` token buffers (head h is channels h·d ..< (h+1)·d):
    /// `ctx = softmax(scale · Q_h·K_hᵀ)·V_h` per image and head, written in merged-head layout
    /// `[B, Tq, C]`, with the scores kept in cache block by block (our AVX2 kernel; `fusesAttention`).
    public func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ctx: UnsafeMutablePointer<Float>,
                          batch: Int, heads: Int, tq: Int, tk: Int, channels c: Int, scale: Float) throws {
        guard fusesAttention else { throw TensorError("attention: the fused kernel needs float32 precision and the AVX2 kernels") }
        guard heads > 0, c % heads == 0 else { throw TensorError("attention: \(c) channels do not split into \(heads) heads") }
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        let status = ck_attention(Int32(batch), Int32(heads), Int32(tq), Int32(tk), Int32(c / heads),
                                  q, tq * c, c, k, tk * c, c, v, tk * c, c, ctx, tq * c, c, scale)
        guard status == 0 else { throw EngineError(operation: "attention [\(batch), \(heads), \(tq), \(tk)]", status: "out of memory") }
        if profile {
            lock.lock(); defer { lock.unlock() }
            record("attention", "attention [\(batch), \(heads), \(tq), \(tk)]", since: t0)
        }
    }

    private func makeAttr(_ postOps: [PostOp]) throws -> dnnl_primitive_attr_t? {
        var attr: dnnl_primitive_attr_t?
        try check(dnnl_primitive_attr_create(&attr), "attr create")
        // Scratch memory comes from the engine (`run`), not from oneDNN's global scratchpad, which
        // belongs to the thread that created the primitive: batch workers run primitives (oneDNN's
        // cache shares them between engines) on other threads, concurrently.
        try check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode")
        if postOps.isEmpty { return attr }
        var po: dnnl_post_ops_t?
        try check(dnnl_post_ops_create(&po), "post-ops create")
        defer { dnnl_post_ops_destroy(po) }
        for op in postOps {
            switch op {
            case .gelu: try check(dnnl_post_ops_append_eltwise(po, 1, dnnl_eltwise_gelu_erf, 0, 0), "gelu post-op")
            case .scale(let a): try check(dnnl_post_ops_append_eltwise(po, 1, dnnl_eltwise_linear, a, 0), "scale post-op")
            case .accumulate: try check(dnnl_post_ops_append_sum(po, 1), "sum post-op")
            }
        }
        try check(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops")
        return attr
    }

    // MARK: - convolution

    /// 2-D convolution (groups allowed, zero padding, bias optional). `src` is `[N, C, H, W]` dims
    /// stored NCHW (`srcNCHW`) or NHWC; `dst` is dense NHWC `[N, H', W', O]`.
    public func conv2d(src: UnsafeMutablePointer<Float>, srcDims: [Int], srcNCHW: Bool, weights: ConvWeights,
                       stride: (Int, Int), padding: (Int, Int), dst: UnsafeMutablePointer<Float>, dstHW: (Int, Int)) throws {
        let w = weights.weight.shape
        guard srcDims.count == 4, w.count == 4, srcDims[1] == w[1] * weights.groups, w[0] % weights.groups == 0 else {
            throw TensorError("conv2d: input \(srcDims) does not fit weights \(w) with \(weights.groups) groups")
        }
        let dstDims = [srcDims[0], w[0], dstHW.0, dstHW.1]
        if dstDims.contains(0) { return }
        // (Not for the 3-channel pixels: rows of 3 floats make the patch copy slower than oneDNN's conv.)
        if linearKernel == .avx2, weights.groups == 1, !srcNCHW, srcDims[1] >= 16, stride.0 == stride.1, padding.0 == padding.1, w[2] == w[3] {
            try im2colConv(src: src, srcDims: srcDims, weights: weights, stride: stride.0, padding: padding.0, dst: dst, dstHW: dstHW)
            return
        }
        let g = weights.groups
        let weiDims = g == 1 ? w : [g, w[0] / g, w[1], w[2], w[3]]
        let key = ConvKey(src: srcDims, srcNCHW: srcNCHW, wei: weiDims, groups: g, stride: [stride.0, stride.1],
                          padding: [padding.0, padding.1], dst: dstDims, bias: weights.bias != nil)
        lock.lock(); defer { lock.unlock() }
        let srcMD = try md(srcDims, tag: srcNCHW ? dnnl_nchw : dnnl_nhwc)
        let dstMD = try md(dstDims, tag: dnnl_nhwc)
        let biasMD = try md([w[0]], tag: dnnl_a)
        let userWeiMD = try md(weiDims, tag: g == 1 ? dnnl_oihw : dnnl_goihw)
        let p: Primitive
        if let cached = convs[key] {
            p = cached
        } else {
            let anyWei = try md(weiDims, tag: dnnl_format_tag_any)
            p = try makePrimitive({ pd in
                var desc = dnnl_convolution_desc_t()
                var s = srcMD, wd = anyWei, d = dstMD, b = biasMD
                let st = [Int64(stride.0), Int64(stride.1)], pad = [Int64(padding.0), Int64(padding.1)]
                let status = weights.bias != nil
                    ? dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                                         &s, &wd, &b, &d, st, pad, pad)
                    : dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                                         &s, &wd, nil, &d, st, pad, pad)
                try check(status, "conv desc \(srcDims) w\(weiDims)")
                let attr = try makeAttr([])
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "conv primitive \(srcDims) w\(weiDims)")
            }, "conv")
            if let q = dnnl_primitive_desc_query_md(p.pd, dnnl_query_weights_md, 0) { p.weightsMD = q.pointee }
            convs[key] = p
        }
        guard let packedMD = p.weightsMD else { throw EngineError(operation: "conv", status: "no weights layout") }
        // Weights are converted to the primitive's preferred (blocked) layout once and kept.
        let packed: Tensor = try {
            weights.lock.lock()
            defer { weights.lock.unlock() }
            if let cached = weights.packed.first(where: { sameLayout($0.layout, packedMD) }) { return cached.weights }
            var pm = packedMD
            let bytes = dnnl_memory_desc_get_size(&pm)
            let t = Tensor(zeros: [bytes / 4 + 16])
            try reorder(from: userWeiMD, UnsafeMutableRawPointer(weights.weight.unsafePointer), to: packedMD, UnsafeMutableRawPointer(t.unsafePointer))
            weights.packed.append((packedMD, t))
            return t
        }()
        var args: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)] = [
            (DNNL_ARG_SRC, srcMD, UnsafeMutableRawPointer(src)),
            (DNNL_ARG_WEIGHTS, packedMD, UnsafeMutableRawPointer(packed.unsafePointer)),
            (DNNL_ARG_DST, dstMD, UnsafeMutableRawPointer(dst)),
        ]
        if let b = weights.bias { args.append((DNNL_ARG_BIAS, biasMD, UnsafeMutableRawPointer(b.unsafePointer))) }
        try run(p, args, "conv \(srcDims) w\(weiDims)")
    }

    /// A dense convolution on our AVX2 GEMM: per image, the patches as rows `[H'·W', kh·kw·in]`
    /// times the weights `[kh·kw·in, out]` (bias fused), written straight into NHWC `dst`. At cvt-13's
    /// stage-3 patch embedding on 2 threads: 2.2 ms (patch copy included) vs oneDNN's AVX2 conv 2.8–3.4.
    private func im2colConv(src: UnsafeMutablePointer<Float>, srcDims: [Int], weights: ConvWeights, stride: Int, padding: Int,
                            dst: UnsafeMutablePointer<Float>, dstHW: (Int, Int)) throws {
        let w = weights.weight.shape
        let (n, cin, h, wd) = (srcDims[0], srcDims[1], srcDims[2], srcDims[3])
        let (cout, k) = (w[0], w[2])
        let rowLength = k * k * cin, pixels = dstHW.0 * dstHW.1
        let panels: UnsafeMutableRawPointer = {
            weights.lock.lock(); defer { weights.lock.unlock() }
            if let p = weights.panels { return p.pointer }
            // [out, in, kh, kw] → [(ky·kw + kx)·in + ci, out], the order of the patch rows.
            let b = Tensor(uninitialized: [rowLength, cout])
            let wp = weights.weight.unsafePointer, bp = b.unsafePointer
            for co in 0..<cout { for ci in 0..<cin { for ky in 0..<k { for kx in 0..<k {
                bp[((ky * k + kx) * cin + ci) * cout + co] = wp[((co * cin + ci) * k + ky) * k + kx]
            } } } }
            let bytes = ck_gemm_packed_count(Int32(rowLength), Int32(cout)) * 4
            let (ptr, _) = RawMemory.allocate(bytes: bytes)
            ck_gemm_pack(bp, cout, 1, Int32(rowLength), Int32(cout), ptr.assumingMemoryBound(to: Float.self))
            weights.panels = (ptr, bytes)
            return ptr
        }()
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        let patches = Tensor(uninitialized: [pixels, rowLength])
        let bias = weights.bias.map { UnsafePointer($0.unsafePointer) }
        for i in 0..<n {
            ck_im2col_nhwc(src + i * h * wd * cin, Int32(h), Int32(wd), Int32(cin), Int32(k), Int32(k), Int32(stride), Int32(padding),
                           Int32(dstHW.0), Int32(dstHW.1), patches.unsafePointer)
            let status = ck_gemm(Int32(pixels), Int32(cout), Int32(rowLength), patches.unsafePointer, rowLength,
                                 panels.assumingMemoryBound(to: Float.self), bias, dst + i * pixels * cout, cout, nil, nil, 0)
            guard status == 0 else { throw EngineError(operation: "conv \(srcDims) w\(w)", status: "AVX2 GEMM failed") }
        }
        if profile {
            lock.lock(); defer { lock.unlock() }
            record("conv", "conv \(srcDims) w\(w) (im2col)", since: t0)
        }
    }

    /// Depthwise convolution (`weights` `[C, 1, k, k]`, groups C) of `n` NHWC images `[h, w, C]`
    /// whose first pixel is `srcImageStride` floats after the previous image's (they may sit inside
    /// a larger token buffer, e.g. after a CLS row), into NHWC `[H', W', C]` images `dstImageStride`
    /// floats apart. With the AVX2 kernels: our kernel, straight from and into the token buffers;
    /// otherwise oneDNN's conv on dense copies.
    public func depthwiseConv2d(src: UnsafeMutablePointer<Float>, srcImageStride: Int, n: Int, c: Int, h: Int, w: Int,
                                weights: ConvWeights, stride: Int, padding: Int,
                                dst: UnsafeMutablePointer<Float>, dstImageStride: Int, dstHW: (Int, Int)) throws {
        let shape = weights.weight.shape
        guard shape.count == 4, shape[0] == c, shape[1] == 1, weights.groups == c, shape[2] == shape[3] else {
            throw TensorError("depthwiseConv2d: weights \(shape) with \(weights.groups) groups are not depthwise for \(c) channels")
        }
        let (ho, wo) = dstHW, k = shape[2]
        guard srcImageStride >= h * w * c, dstImageStride >= ho * wo * c else {
            throw TensorError("depthwiseConv2d: image strides \(srcImageStride), \(dstImageStride) are shorter than the images")
        }
        if n == 0 || ho == 0 || wo == 0 { return }
        if linearKernel == .avx2 {
            let taps: UnsafePointer<Float> = {
                weights.lock.lock(); defer { weights.lock.unlock() }
                if let t = weights.depthwiseTaps { return UnsafePointer(t.unsafePointer) }
                // [C, 1, kh, kw] → [(ky·kw + kx), C]: a tap's channels side by side, as the pixels are.
                let t = Tensor(uninitialized: [k * k, c])
                let wp = weights.weight.unsafePointer, tp = t.unsafePointer
                for ch in 0..<c { for i in 0..<(k * k) { tp[i * c + ch] = wp[ch * k * k + i] } }
                weights.depthwiseTaps = t
                return UnsafePointer(t.unsafePointer)
            }()
            let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
            let status = ck_depthwise_nhwc(src, srcImageStride, Int32(n), Int32(h), Int32(w), Int32(c), taps,
                                           weights.bias.map { UnsafePointer($0.unsafePointer) }, Int32(k), Int32(k),
                                           Int32(stride), Int32(padding), Int32(ho), Int32(wo), dst, dstImageStride)
            guard status == 0 else { throw EngineError(operation: "depthwise conv [\(n), \(c), \(h), \(w)]", status: "AVX2 kernel unavailable") }
            if profile {
                lock.lock(); defer { lock.unlock() }
                record("conv", "conv [\(n), \(c), \(h), \(w)] w\(shape) (depthwise)", since: t0)
            }
            return
        }
        let dense = srcImageStride == h * w * c && dstImageStride == ho * wo * c
        if dense {
            try conv2d(src: src, srcDims: [n, c, h, w], srcNCHW: false, weights: weights, stride: (stride, stride),
                       padding: (padding, padding), dst: dst, dstHW: dstHW)
            return
        }
        // oneDNN wants dense images: gather, convolve, scatter.
        let input = Tensor(uninitialized: [n, h, w, c]), output = Tensor(uninitialized: [n, ho, wo, c])
        timed("copy") {
            for i in 0..<n { (input.unsafePointer + i * h * w * c).update(from: src + i * srcImageStride, count: h * w * c) }
        }
        try conv2d(src: input.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: weights, stride: (stride, stride),
                   padding: (padding, padding), dst: output.unsafePointer, dstHW: dstHW)
        timed("copy") {
            for i in 0..<n { (dst + i * dstImageStride).update(from: output.unsafePointer + i * ho * wo * c, count: ho * wo * c) }
        }
    }

    private func sameLayout(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t) -> Bool {
        var x = a, y = b
        return dnnl_memory_desc_equal(&x, &y) != 0
    }

    private func reorder(from: dnnl_memory_desc_t, _ src: UnsafeMutableRawPointer, to: dnnl_memory_desc_t, _ dst: UnsafeMutableRawPointer) throws {
        let p = try makePrimitive({ pd in
            var a = from, b = to
            let attr = try makeAttr([])
            defer { dnnl_primitive_attr_destroy(attr) }
            try check(dnnl_reorder_primitive_desc_create(&pd, &a, engine, &b, engine, attr), "reorder")
        }, "reorder")
        try run(p, [(DNNL_ARG_FROM, from, src), (DNNL_ARG_TO, to, dst)], "reorder")
    }

    // MARK: - softmax

    /// In-place softmax over the last axis of a dense `[rows, cols]` block.
    public func softmax(_ data: UnsafeMutablePointer<Float>, rows: Int, cols: Int) throws {
        try softmax(data, rows: rows, cols: cols, dst: UnsafeMutableRawPointer(data), dstType: .float32)
    }

    /// Softmax over the last axis of a dense float32 `[rows, cols]` block into a dense `dst` of
    /// `dstType` (bfloat16 feeds the next bf16 matmul without a conversion pass).
    public func softmax(_ src: UnsafeMutablePointer<Float>, rows: Int, cols: Int, dst: UnsafeMutableRawPointer, dstType: ElementType) throws {
        if rows == 0 || cols == 0 { return }
        if dstType == .bfloat16, !hasNativeBFloat16 {
            // oneDNN 2.6 has no bf16-output softmax without avx512_bf16: float32, then rounded.
            let bytes = rows * cols * 4
            let tmp = BufferPool.shared.take(bytes: bytes)
            defer { BufferPool.shared.give(tmp, bytes: bytes) }
            try softmax(src, rows: rows, cols: cols, dst: tmp, dstType: .float32)
            Kernels.toBFloat16(tmp.assumingMemoryBound(to: Float.self), dst, count: rows * cols)
            return
        }
        lock.lock(); defer { lock.unlock() }
        let srcMD = try md([rows, cols], strides: [cols, 1])
        let dstMD = try md([rows, cols], strides: [cols, 1], type: dstType.dnnl)
        let key = SoftmaxKey(rows: rows, cols: cols, dstType: dstType)
        let p: Primitive
        if let cached = softmaxes[key] {
            p = cached
        } else {
            p = try makePrimitive({ pd in
                var desc = dnnl_softmax_v2_desc_t()
                var s = srcMD, d = dstMD
                try check(dnnl_softmax_v2_forward_desc_init(&desc, dnnl_forward_inference, dnnl_softmax_accurate, &s, &d, 1), "softmax desc")
                let attr = try makeAttr([])
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "softmax primitive")
            }, "softmax")
            softmaxes[key] = p
        }
        try run(p, [(DNNL_ARG_SRC, srcMD, UnsafeMutableRawPointer(src)), (DNNL_ARG_DST, dstMD, dst)], "softmax")
    }
}
