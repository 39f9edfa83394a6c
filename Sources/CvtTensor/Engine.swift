import CDNNL
import CKernels
import Foundation

/// A failure inside the compute backend, naming the operation and oneDNN's status.
public struct EngineError: Error, CustomStringConvertible {
    /// The operation that failed (e.g. `engine create`, or an attention call with its shape).
    public let operation: String
    /// oneDNN's status (`dnnl_status2str`, e.g. `unimplemented`), or what else went wrong (e.g. `out of memory`).
    public let status: String
    /// `"compute backend: <operation> failed (<status>)"`.
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
    /// Read and written only under `callLock`.
    var settings = Settings()
    /// Batch workers' engines (`concurrently`), created on demand, used under `callLock`.
    var workers: [Engine] = []
    /// Scratch memory for one primitive execution, shared by all of this engine's primitives (they
    /// run one at a time, under `lock`), grown on demand.
    var scratch: (pointer: UnsafeMutableRawPointer, bytes: Int)?
    func setting<T>(_ path: KeyPath<Settings, T>) -> T { callLock.withLock { settings[keyPath: path] } }
    func set<T>(_ path: WritableKeyPath<Settings, T>, _ value: T) { callLock.withLock { settings[keyPath: path] = value } }

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
    var _profileTimes: [String: Double] = [:]
    var _profileDetail: [String: Double] = [:]
    /// Total wall time in ms per operation name (e.g. `matmul`, `conv`), accumulated while `profile` is set; assign `[:]` to reset.
    public var profileTimes: [String: Double] {
        get { callLock.withLock { _profileTimes } }
        set { callLock.withLock { _profileTimes = newValue } }
    }
    /// Same, per operation and shape (e.g. `matmul [32, 3136, 64]x[64, 64]`).
    public var profileDetail: [String: Double] {
        get { callLock.withLock { _profileDetail } }
        set { callLock.withLock { _profileDetail = newValue } }
    }

    private let implementationsLock = NSLock()
    private var _implementations: [String: Set<String>] = [:]
    /// oneDNN's implementations of the primitives this engine (and its batch workers) created, by
    /// operation (`matmul`: e.g. `brg:avx512_core_bf16`, `brg:avx512_core_amx` on CPUs with AMX,
    /// `gemm:jit`): which code paths oneDNN chose for this CPU.
    public var backendImplementations: [String: Set<String>] {
        implementationsLock.withLock { _implementations }
    }
    func noteImplementation(_ operation: String, _ implementation: String) {
        implementationsLock.withLock { _implementations[operation, default: []].insert(implementation) }
    }

    /// The instruction set oneDNN uses on this CPU (`dnnl_get_effective_cpu_isa`): `avx2`,
    /// `avx512_core`, `avx512_core_bf16` (bf16 dot products), `avx512_core_amx` (AMX tiles), …
    public static var backendISA: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_sse41: return "sse41"
        default: return "other"
        }
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
    init(worker: Bool) throws {
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
}
