import CKernels
import Foundation

// Multi-head attention in one kernel (`attention.c`): the scores of a block of query rows stay in
// cache, softmax runs on them there, and P·V writes the block's context into the merged heads.
extension Engine {
    /// Whether `attention(…)` runs here: our AVX2 kernels, in float32 precision or emulated
    /// bfloat16 (bf16 operands widened exactly, probabilities and context rounded to bf16 where the
    /// native kernels store them).
    public var fusesAttention: Bool {
        allowsFusedAttention && linearKernel == .avx2 && (precision == .float32 || emulatesBFloat16)
    }

    /// Multi-head attention on float32 `[B, T, C]` token buffers (head h is channels h·d ..< (h+1)·d):
    /// `ctx = softmax(scale · Q_h·K_hᵀ)·V_h` per image and head, written in merged-head layout
    /// `[B, Tq, C]`, with the scores kept in cache block by block (our AVX2 kernel; `fusesAttention`).
    public func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ctx: UnsafeMutablePointer<Float>,
                          batch: Int, heads: Int, tq: Int, tk: Int, channels c: Int, scale: Float) throws {
        guard fusesAttention, precision == .float32 else {
            throw TensorError("attention: float32 tokens need float32 precision and the AVX2 kernels")
        }
        try fusedAttention(q: q, k: k, v: v, ctx: ctx, batch: batch, heads: heads, tq: tq, tk: tk, channels: c, scale: scale, roundsProbabilities: false)
    }

    /// The same on typed token buffers: float32 in float32 precision, bfloat16 in emulated bfloat16
    /// precision (the bf16 attention of the native kernels: bf16 Q, K, V, float32 scores and
    /// softmax, probabilities stored as bf16, float32 sums, the context stored as bf16).
    public func attention(q: TypedBuffer, k: TypedBuffer, v: TypedBuffer, ctx: TypedBuffer,
                          batch: Int, heads: Int, tq: Int, tk: Int, channels c: Int, scale: Float) throws {
        guard q.count >= batch * tq * c, k.count >= batch * tk * c, v.count >= batch * tk * c, ctx.count >= batch * tq * c else {
            throw TensorError("attention: buffers of \([q.count, k.count, v.count, ctx.count]) values for [\(batch), \(tq)/\(tk), \(c)] tokens")
        }
        let types = [q.type, k.type, v.type, ctx.type]
        if types.allSatisfy({ $0 == .float32 }) {
            try attention(q: q.raw.assumingMemoryBound(to: Float.self), k: k.raw.assumingMemoryBound(to: Float.self),
                          v: v.raw.assumingMemoryBound(to: Float.self), ctx: ctx.raw.assumingMemoryBound(to: Float.self),
                          batch: batch, heads: heads, tq: tq, tk: tk, channels: c, scale: scale)
            return
        }
        guard types.allSatisfy({ $0 == .bfloat16 }), fusesAttention, emulatesBFloat16 else {
            throw TensorError("attention: \(types) tokens do not fit this engine's \(precision) fused attention")
        }
        let wide = [batch * tq * c, batch * tk * c, batch * tk * c, batch * tq * c].map { Tensor(uninitialized: [$0]) }
        for (buffer, f) in zip([q, k, v], wide) { Kernels.fromBFloat16(buffer.raw, f.unsafePointer, count: f.count) }
        try fusedAttention(q: wide[0].unsafePointer, k: wide[1].unsafePointer, v: wide[2].unsafePointer, ctx: wide[3].unsafePointer,
                           batch: batch, heads: heads, tq: tq, tk: tk, channels: c, scale: scale, roundsProbabilities: true)
        Kernels.toBFloat16(wide[3].unsafePointer, ctx.raw, count: wide[3].count)
    }

    private func fusedAttention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ctx: UnsafeMutablePointer<Float>,
                                batch: Int, heads: Int, tq: Int, tk: Int, channels c: Int, scale: Float, roundsProbabilities: Bool) throws {
        guard heads > 0, c % heads == 0 else { throw TensorError("attention: \(c) channels do not split into \(heads) heads") }
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        let status = ck_attention(Int32(batch), Int32(heads), Int32(tq), Int32(tk), Int32(c / heads),
                                  q, tq * c, c, k, tk * c, c, v, tk * c, c, ctx, tq * c, c, scale, roundsProbabilities ? 1 : 0)
        guard status == 0 else { throw EngineError(operation: "attention [\(batch), \(heads), \(tq), \(tk)]", status: "out of memory") }
        if profile {
            lock.lock(); defer { lock.unlock() }
            record("attention", "attention [\(batch), \(heads), \(tq), \(tk)]", since: t0)
        }
    }
}
