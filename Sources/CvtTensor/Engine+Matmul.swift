import CDNNL
import CKernels
import Foundation

// Matmuls on strided views (`matmul`), in float32 or bfloat16 precision, with bfloat16 emulated
// exactly in float32 kernels on CPUs without bf16 kernels.
extension Engine {
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
    /// Whether this CPU has oneDNN bfloat16 matmul kernels (`Engine.hasNativeBFloat16`); without them bfloat16 precision is emulated.
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
}
