import CDNNL
import CKernels
import Foundation

// Matmuls on packed weights: oneDNN's blocked layout, or our AVX2 GEMM's panels (`gemm.c`), packed
// once per layer.
extension Engine {

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
        try checkActivationTypes(src, dst: dst)
        var scratch: [(UnsafeMutableRawPointer, Int)] = []
        defer { for (b, n) in scratch { BufferPool.shared.give(b, bytes: n) } }
        // oneDNN's brgemm matmul declines fewer than `minimumBlockedRows` rows on blocked weights and
        // falls back to its scalar reference kernel (the CLS-only rows of a last layer are such
        // matmuls): run them on rows padded with zeros, and keep the first rows.
        let m = src.dims[0], k = src.dims[1], n = dst.dims[1]
        var (a, c) = (src, dst)
        if m < Self.minimumBlockedRows {
            let rows = Self.minimumBlockedRows
            func buffer(_ type: ElementType, _ cols: Int) -> UnsafeMutableRawPointer {
                let bytes = rows * cols * type.byteCount
                let p = BufferPool.shared.take(bytes: bytes)
                scratch.append((p, bytes))
                p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
                return p
            }
            a = StridedView(dense: buffer(src.type, k), type: src.type, dims: [rows, k])
            c = StridedView(dense: buffer(dst.type, n), type: dst.type, dims: [rows, n])
            try copyRows(src, into: StridedView(raw: a.raw, type: a.type, dims: [m, k], strides: [k, 1]))
            if postOps.contains(.accumulate) { try copyRows(dst, into: StridedView(raw: c.raw, type: c.type, dims: [m, n], strides: [n, 1])) }
        }
        let key = MatmulKey(src: a.dims, srcStrides: a.strides, wei: packed.dims, weiStrides: [], dst: c.dims,
                            dstStrides: c.strides, bias: bias != nil, postOps: postOps, precision: precision,
                            srcType: a.type, weiType: packed.type, dstType: c.type, packed: true)
        let source = try kernelOperand(a, scratch: &scratch)
        try runMatmul(key, src: source, weights: (packed.md, packed.pointer), bias: bias, dst: c, postOps: postOps,
                      scratch: &scratch, name: "\(src.dims)x\(packed.dims)")
        if m < Self.minimumBlockedRows { try copyRows(StridedView(raw: c.raw, type: c.type, dims: [m, n], strides: [n, 1]), into: dst) }
    }

    /// Rows below which oneDNN 2.6 runs a matmul on blocked weights with its reference kernel.
    static let minimumBlockedRows = 16

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
            if finalDst.strides[0] == n { Kernels.toBFloat16(f, finalDst.raw, count: m * n) } else {
                for r in 0..<m { Kernels.toBFloat16(f + r * n, finalDst.raw + r * finalDst.strides[0] * 2, count: n) }
            }
        }
        if profile { record("matmul", "matmul \([m, k])x\([k, n])", since: t0) }
    }
}
