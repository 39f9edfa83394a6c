import CDNNL
import CKernels
import Foundation

// Softmax over the last axis (oneDNN's), with a bfloat16 output for the next bf16 matmul.
extension Engine {
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
