import CDNNL
import CKernels
import Foundation

// Value types and caches the engine works with: element types, strided views, weights in their
// engine forms, kernel choices, primitive-cache keys and the batch workers' shared job.

/// Element type of an activation buffer handed to the engine.
public enum ElementType: Hashable, Sendable {
    case float32
    /// bfloat16 (the upper half of a float32, rounded to nearest even): produced and consumed only
    /// by bfloat16-precision matmuls, so the engine need not convert activations per call.
    case bfloat16
    /// IEEE half precision: only a storage format for constant weights (oneDNN 2.6 has no f16
    /// matmul on CPU), widened per call to the engine's precision.
    case float16

    /// Bytes per element: 4 for float32, 2 for bfloat16 and float16.
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
    /// Address of element `[0, 0, …]`.
    public var raw: UnsafeMutableRawPointer
    /// Extent of each axis, outermost first.
    public var dims: [Int]
    /// Distance in elements (not bytes) between neighbours along each axis.
    public var strides: [Int]
    /// Element type of the viewed buffer.
    public var type: ElementType

    /// A float32 view of `pointer` with `dims` and element `strides`.
    public init(_ pointer: UnsafeMutablePointer<Float>, dims: [Int], strides: [Int]) {
        self.init(raw: UnsafeMutableRawPointer(pointer), type: .float32, dims: dims, strides: strides)
    }

    /// A view of a buffer of `type` at `raw` with `dims` and element `strides`.
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
    /// Bias `[out]`, or nil for a convolution without one.
    public let bias: Tensor?
    /// Number of groups (`groups` of PyTorch's `Conv2d`; the input channel count for a depthwise convolution).
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

    /// Wraps `weight` (`[out, in/groups, kH, kW]`), the optional `bias` `[out]` and the group count; conversions are made lazily per primitive.
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
    /// The plain weights, the matmul's right-hand operand (float32, bfloat16 or float16).
    public let view: StridedView
    /// Guards `converted` (engines of several threads may convert at once).
    let lock = NSLock()
    var converted: [ComputePrecision: (pointer: UnsafeMutableRawPointer, bytes: Int, md: dnnl_memory_desc_t)] = [:]
    /// Keeps the viewed storage alive as long as these weights are in use.
    private let owner: Any?
    /// Wraps `view`; `owner` (e.g. the viewed tensor's storage) is kept alive as long as these weights are.
    public init(_ view: StridedView, owner: Any? = nil) { self.view = view; self.owner = owner }
    // The converted copies come from `BufferPool.take` (kept instead of given back).
    deinit { for c in converted.values { BufferPool.shared.release(c.pointer, bytes: c.bytes) } }
}

/// Matmul weights `[K, N]` held in the blocked layout oneDNN's matmul kernels read directly
/// (`Engine.packWeights`). Plain weights are re-blocked inside every matmul call, a copy
/// that costs a noticeable share of each matmul, so layers keep this form instead of their plain one.
public final class PackedWeights: @unchecked Sendable {
    /// `[K, N]`.
    public let dims: [Int]
    /// Element type of the packed weights (float32 or bfloat16).
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
    /// panels. On AVX2-only CPUs oneDNN 2.6 repacks the weights on every call, so it stays well
    /// below the FMA peak at CvT's shapes; this kernel packs them once.
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
    func runMember(_ t: Int) {
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

