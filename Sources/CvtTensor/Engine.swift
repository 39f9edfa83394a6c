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

/// The compute engine: a oneDNN CPU engine and stream, a cache of created primitives, and its
/// settings (thread count, matmul precision, kernel choices).
///
/// Settings belong to the engine: changing one engine never changes another, and nothing here is
/// process-wide. Each model gets an engine of its own unless one is passed to it; models that share
/// an engine share its settings and take turns. An engine may be used from any thread or task:
/// calls that compute (`exclusively`, which every model call goes through) hold it for their
/// duration, and a settings change waits for the running call to end.
public final class Engine: @unchecked Sendable {
    let engine: dnnl_engine_t
    let stream: dnnl_stream_t
    var matmuls: [MatmulKey: Primitive] = [:]
    var convs: [ConvKey: Primitive] = [:]
    var softmaxes: [SoftmaxKey: Primitive] = [:]
    var reorders: [ReorderKey: Primitive] = [:]
    var packedLayouts: [PackedLayoutKey: dnnl_memory_desc_t] = [:]
    /// Held by every call that computes and by every settings change (recursive: a model call
    /// runs engine calls inside it).
    let callLock = NSRecursiveLock()
    /// Guards the primitive caches (also taken by direct engine calls).
    let lock = NSLock()

    /// The settings, read and written under `callLock`.
    struct Settings {
        var threads = Engine.availableCores
        var precision: ComputePrecision = .float32
        var attentionScoreBudget = 4 << 20
        var profile = false
        var packsWeights = true
        var linearKernel: LinearKernel = .preferred
        var depthwiseKernel: LinearKernel = LinearKernel.avx2.isSupported ? .avx2 : .onednn
        var allowsFusedAttention = true
        var splitsBatches = true
        var imagesPerPart = LinearKernel.preferred == .avx2 ? 2 : 4
    }
    private var settings = Settings()
    private func setting<T>(_ path: KeyPath<Settings, T>) -> T { callLock.withLock { settings[keyPath: path] } }
    private func set<T>(_ path: WritableKeyPath<Settings, T>, _ value: T) { callLock.withLock { settings[keyPath: path] = value } }

    /// Attention runs images in groups whose score matrices total at most this many float32 values
    /// (16 MB by default; at least one image per group). Larger groups mean fewer, longer matmuls.
    public var attentionScoreBudget: Int {
        get { setting(\.attentionScoreBudget) }
        set { set(\.attentionScoreBudget, max(1, newValue)) }
    }
    /// Matmul arithmetic; float32 (the default) is the parity reference. A model can run with a
    /// precision of its own on a shared engine (`exclusively(precision:)`).
    public var precision: ComputePrecision {
        get { setting(\.precision) }
        set { set(\.precision, newValue) }
    }
    /// Per-operation wall time in ms, collected when `profile` is set (for `cvt bench --profile`).
    public var profile: Bool {
        get { setting(\.profile) }
        set { set(\.profile, newValue) }
    }
    private var _profileTimes: [String: Double] = [:]
    private var _profileDetail: [String: Double] = [:]
    public var profileTimes: [String: Double] {
        get { callLock.withLock { _profileTimes } }
        set { callLock.withLock { _profileTimes = newValue } }
    }
    /// Same, per operation and shape (e.g. `matmul [32, 3136, 64]x[64, 64]`).
    public var profileDetail: [String: Double] {
        get { callLock.withLock { _profileDetail } }
        set { callLock.withLock { _profileDetail = newValue } }
    }

    /// The CPUs this process may run on.
    public static var availableCores: Int { ProcessInfo.processInfo.activeProcessorCount }

    /// Runs `body` as one call on this engine: it holds the engine (other threads' calls wait), runs
    /// with `precision` when given (else the engine's), and with the engine's thread count for the
    /// calling thread's kernels and oneDNN (OpenMP) calls; all restored afterwards.
    public func exclusively<R>(precision: ComputePrecision? = nil, _ body: () throws -> R) rethrows -> R {
        callLock.lock()
        defer { callLock.unlock() }
        let outerPrecision = settings.precision
        if let precision { settings.precision = precision }
        let n = Int32(settings.threads)
        let outerOMP = omp_get_max_threads()
        let outerTeam = ck_team_set_local_threads(n)
        if outerOMP != n { omp_set_num_threads(n) }
        defer {
            if outerOMP != n { omp_set_num_threads(outerOMP) }
            ck_team_set_local_threads(outerTeam)
            settings.precision = outerPrecision
        }
        return try body()
    }

    /// Runs `body`, adding its wall time to `profileTimes[name]` when profiling (for work done outside
    /// the backend: LayerNorm, copies, layout changes).
    @inline(__always)
    public func timed<R>(_ name: String, _ body: () throws -> R) rethrows -> R {
        if !profile { return try body() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            callLock.withLock {
                _profileTimes[name, default: 0] += ms
                _profileDetail[name, default: 0] += ms
            }
        }
        return try body()
    }

    /// Adds the time since `t0` to the profile (callers hold `lock`).
    func record(_ kind: String, _ detail: String, since t0: UInt64) {
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        callLock.withLock {
            _profileTimes[kind, default: 0] += ms
            _profileDetail[detail, default: 0] += ms
        }
    }

    /// `threads`: compute threads of this engine's calls; nil means all cores (not
    /// OMP_NUM_THREADS, which libgomp reads only at load time).
    public convenience init(threads: Int? = nil) throws {
        try self.init(worker: false)
        if let threads { self.threads = threads }
    }

    /// `worker`: a batch worker's engine, which runs on one thread.
    private init(worker: Bool) throws {
        var e: dnnl_engine_t?
        try check(dnnl_engine_create(&e, dnnl_cpu, 0), "engine create")
        guard let e else { throw EngineError(operation: "engine create", status: "null engine") }
        var s: dnnl_stream_t?
        try check(dnnl_stream_create(&s, e, UInt32(dnnl_stream_default_flags.rawValue)), "stream create")
        guard let s else { throw EngineError(operation: "stream create", status: "null stream") }
        engine = e; stream = s
        if worker { settings.threads = 1 }
    }

    deinit {
        matmuls.removeAll(); convs.removeAll(); softmaxes.removeAll(); reorders.removeAll()
        if let s = scratch { RawMemory.free(s.pointer, bytes: s.bytes) }
        dnnl_stream_destroy(stream); dnnl_engine_destroy(engine)
    }

    nonisolated(unsafe) private static var sharedEngine: Engine?
    private static let sharedLock = NSLock()

    /// An engine for code that wants one to share (the CLI's commands), created on first use with
    /// all cores. Models do not use it unless it is passed to them.
    public static func shared() throws -> Engine {
        sharedLock.lock(); defer { sharedLock.unlock() }
        if let e = sharedEngine { return e }
        let e = try Engine()
        sharedEngine = e
        return e
    }

    /// Compute threads of this engine's calls: our kernels' team (`ck_parallel`) and oneDNN's
    /// (OpenMP), both set for the calling thread during a call (`exclusively`). Defaults to all
    /// cores; 1 for a batch worker.
    public var threads: Int {
        get { setting(\.threads) }
        set { set(\.threads, min(max(1, newValue), Engine.maximumThreads)) }
    }

    /// The most threads an engine uses (the kernels' team size limit).
    public static let maximumThreads = 256

    /// The team our kernels run on: "own" (`team.c`: waiting threads spin briefly, yielding, then
    /// sleep) or "openmp" (libgomp's, on AVX-512 CPUs or with `CVT_TEAM=openmp`).
    public var threadTeam: String { ck_team_uses_openmp() != 0 ? "openmp" : "own" }

    // MARK: - kernel choices (used by Engine+PackedMatmul.swift and Engine+Convolution.swift)

    /// Whether layers keep their matmul weights packed (`PackedWeights`) instead of plain. On by
    /// default; off runs the plain-weights path (for comparisons).
    public var packsWeights: Bool {
        get { setting(\.packsWeights) }
        set { set(\.packsWeights, newValue) }
    }

    /// Kernels for float32 packed weights (weights packed by another kernel are unpacked and packed
    /// again by the layers). Defaults to the faster one on this CPU; setting an unsupported kernel
    /// keeps oneDNN.
    public var linearKernel: LinearKernel {
        get { setting(\.linearKernel) }
        set { set(\.linearKernel, newValue.isSupported ? newValue : .onednn) }
    }

    /// Kernel for the depthwise Q/K/V convolutions: ours (`layers.c`, needs AVX2 + FMA) reads and
    /// writes the token buffers in place (no copies around the CLS row), so it is the faster one on
    /// AVX-512 CPUs too; `.onednn` runs oneDNN's on copies (for comparison). Setting an unsupported
    /// kernel keeps oneDNN.
    public var depthwiseKernel: LinearKernel {
        get { setting(\.depthwiseKernel) }
        set { set(\.depthwiseKernel, newValue.isSupported ? newValue : .onednn) }
    }

    /// Whether models use the fused attention kernel where it runs (off: oneDNN matmuls and softmax,
    /// for comparison).
    public var allowsFusedAttention: Bool {
        get { setting(\.allowsFusedAttention) }
        set { set(\.allowsFusedAttention, newValue) }
    }

    // MARK: - batch workers

    /// Whether a model splits a batch of several images across the threads (parts of up to
    /// `imagesPerPart` images), each part running on one thread with its own engine, instead of
    /// running every operation on all threads. On by default: per-image work is independent, and
    /// one thread per part keeps each core on its own data and skips the thread hand-offs of every
    /// backend call.
    public var splitsBatches: Bool {
        get { setting(\.splitsBatches) }
        set { set(\.splitsBatches, newValue) }
    }
    var workers: [Engine] = []

    /// Images per part at most when a batch is split: a worker runs its images in parts of this
    /// size, one after the other, so that a part's activations stay in cache (a 16-image part's
    /// [3152, 1536] MLP output does not). 0: one part per thread, however large. With our AVX2
    /// kernels 2 (smaller parts leave a shorter tail at the end of a batch, and less memory); 4
    /// where oneDNN runs the matmuls (its kernels gain more from taller matrices).
    public var imagesPerPart: Int {
        get { setting(\.imagesPerPart) }
        set { set(\.imagesPerPart, max(0, newValue)) }
    }

    /// How many parts a batch of `batchSize` images is split into (1: not split).
    public func batchParts(_ batchSize: Int) -> Int {
        guard splitsBatches else { return 1 }
        let perThread = max(1, min(batchSize, threads))
        return imagesPerPart > 0 ? max(perThread, (batchSize + imagesPerPart - 1) / imagesPerPart) : perThread
    }

    /// Runs `body(i, worker)` for `i` in `0..<count` on a team of `min(count, threads)` threads:
    /// each member takes the next free part when done with one and runs it on its thread alone, with
    /// its own engine, which has this engine's settings; rethrows the first error. Profile times of
    /// the workers are added to this engine's (CPU time, so they may exceed wall time).
    public func concurrently(_ count: Int, _ body: (Int, Engine) throws -> Void) throws {
        if count <= 0 { return }
        try exclusively { try runConcurrently(count, body) }
    }

    private func runConcurrently(_ count: Int, _ body: (Int, Engine) throws -> Void) throws {
        let members = min(count, max(1, settings.threads))
        while workers.count < members { workers.append(try Engine(worker: true)) }
        let team = Array(workers.prefix(members))
        for w in team {
            var copied = settings
            copied.threads = 1
            w.callLock.withLock { w.settings = copied }
        }
        // The team is the kernels' team (ck_parallel): its threads wait for the next region
        // anyway. Inside a member the kernels run on that thread alone (the team grants one thread
        // inside a region), and so does oneDNN (OpenMP's count is per thread, restored after).
        let errors = withoutActuallyEscaping(body) { body -> [Error?] in
            let job = TeamJob(count: count) { i, member in
                let outer = omp_get_max_threads()
                omp_set_num_threads(1)
                defer { omp_set_num_threads(outer) }
                try body(i, team[min(member, members - 1)])
            }
            ck_parallel({ raw, member, _ in
                guard let raw else { return }
                Unmanaged<TeamJob>.fromOpaque(raw).takeUnretainedValue().runMember(Int(member))
            }, Unmanaged.passUnretained(job).toOpaque(), Int32(members))
            job.body = nil  // `body` must not outlive this call
            return job.errors
        }
        if settings.profile {
            for w in team {
                for (k, v) in w.profileTimes { _profileTimes[k, default: 0] += v }
                for (k, v) in w.profileDetail { _profileDetail[k, default: 0] += v }
                w.profileTimes = [:]; w.profileDetail = [:]
            }
        }
        if let e = errors.lazy.compactMap({ $0 }).first { throw e }
    }

    // MARK: - memory descriptors

    func md(_ dims: [Int], strides: [Int], type: dnnl_data_type_t = dnnl_f32) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        let dd = dims.map(Int64.init), ss = strides.map(Int64.init)
        try check(dnnl_memory_desc_init_by_strides(&d, Int32(dims.count), dd, type, ss), "memory desc \(dims)")
        return d
    }


    /// Converts a strided view to a dense buffer of `type`, taken from the buffer pool (the caller
    /// gives it back, or keeps it for constant weights).
    func convert(_ v: StridedView, to type: ElementType) throws -> (UnsafeMutableRawPointer, dnnl_memory_desc_t, Int) {
        let dense = StridedView.denseStrides(v.dims)
        let dstMD = try md(v.dims, strides: dense, type: type.dnnl)
        let count = max(1, v.dims.reduce(1, *))
        let bytes = count * type.byteCount
        let buffer = BufferPool.shared.take(bytes: bytes)
        if v.type == .float16, type == .float32, v.strides == dense {
            // oneDNN 2.6 has only a scalar reference f16 reorder; F16C converts 8 values per instruction.
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
    func copy(_ src: StridedView, into dst: StridedView) throws {
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

    func md(_ dims: [Int], tag: dnnl_format_tag_t) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        try check(dnnl_memory_desc_init_by_tag(&d, Int32(dims.count), dims.map(Int64.init), dnnl_f32, tag), "memory desc \(dims)")
        return d
    }

    func memory(_ desc: dnnl_memory_desc_t, _ ptr: UnsafeMutableRawPointer?) throws -> dnnl_memory_t {
        var d = desc
        var m: dnnl_memory_t?
        try check(dnnl_memory_create(&m, &d, engine, ptr), "memory create")
        guard let m else { throw EngineError(operation: "memory create", status: "null memory") }
        return m
    }

    func run(_ p: Primitive, _ arguments: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)], _ name: @autoclosure () -> String) throws {
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

    func makePrimitive(_ create: (inout dnnl_primitive_desc_t?) throws -> Void, _ name: String) throws -> Primitive {
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
    var scratch: (pointer: UnsafeMutableRawPointer, bytes: Int)?

    func scratchpad(_ bytes: Int) -> UnsafeMutableRawPointer {
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

    func matmul(src: StridedView, weights: StridedView, constant: ConstantWeights?, bias: UnsafePointer<Float>?,
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

    func checkActivationTypes(_ src: StridedView, dst: StridedView) throws {
        if precision == .float32, src.type != .float32 || dst.type != .float32 {
            throw TensorError("matmul: bfloat16 activations need the engine's bfloat16 precision")
        }
        if src.type == .float16 || dst.type == .float16 {
            throw TensorError("matmul: float16 is a weight storage format only")
        }
    }

    /// Whether a matmul operand must be converted before the kernels read it: its type is not the
    /// kernels' type, or (emulated bfloat16) it is float32 and must first be rounded to bfloat16.
    func needsConversion(_ v: StridedView) -> Bool {
        emulatesBFloat16 || v.type != kernelOperandType
    }

    /// A matmul operand as the kernels read it: the view itself, or a dense copy in the kernels'
    /// type whose pool buffers are appended to `scratch` (the last one holds the operand). In
    /// bfloat16 precision every operand is bfloat16 first (float32 activations are rounded per
    /// call; producers that can write bf16 directly avoid this); without native bf16 kernels it is
    /// then widened, exactly, to float32.
    func kernelOperand(_ v: StridedView, scratch: inout [(UnsafeMutableRawPointer, Int)]) throws
        -> (md: dnnl_memory_desc_t, pointer: UnsafeMutableRawPointer) {
        if !needsConversion(v) { return (try md(v.dims, strides: v.strides, type: v.type.dnnl), v.raw) }
        if !emulatesBFloat16, kernelOperandType == .bfloat16, v.type == .float32, let count = permutedDenseCount(v) {
            // One linear rounding pass in the same layout (training's float32 activations): far
            // cheaper than a reorder primitive per call.
            let bytes = max(1, count) * 2
            let ptr = BufferPool.shared.take(bytes: bytes)
            scratch.append((ptr, bytes))
            Kernels.toBFloat16(v.raw.assumingMemoryBound(to: Float.self), ptr, count: count)
            return (try md(v.dims, strides: v.strides, type: dnnl_bf16), ptr)
        }
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
    func permutedDenseCount(_ v: StridedView) -> Int? {
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
    func runMatmul(_ key: MatmulKey, src: (md: dnnl_memory_desc_t, pointer: UnsafeMutableRawPointer),
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
    func kernelType(of type: ElementType) -> ElementType {
        type == .bfloat16 && !hasNativeBFloat16 ? .float32 : type
    }

    func makeAttr(_ postOps: [PostOp]) throws -> dnnl_primitive_attr_t? {
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

    func sameLayout(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t) -> Bool {
        var x = a, y = b
        return dnnl_memory_desc_equal(&x, &y) != 0
    }

    func reorder(from: dnnl_memory_desc_t, _ src: UnsafeMutableRawPointer, to: dnnl_memory_desc_t, _ dst: UnsafeMutableRawPointer) throws {
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
