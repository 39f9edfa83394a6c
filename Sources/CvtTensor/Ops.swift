import CDNNL
import CKernels
import Foundation

/// Swift kernels for the memory-bound ops (the GEMM-heavy work goes through `Engine`).
/// They work on raw rows so layers can point them at slices of token buffers without copies.
package enum Kernels {
    /// LayerNorm over the last axis: `dst[r] = (src[r] - mean) / sqrt(var_biased + eps) * w + b`
    /// for `rows` rows of `cols` values. `src` and `dst` may alias.
    public static func layerNorm(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                 weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float) {
        // AVX2 in C where the CPU has it (Swift's SIMD is SSE-only without target flags).
        if ck_layernorm(src, dst, 0, rows, Int32(cols), weight, bias, eps) == 0 { return }
        parallelRows(rows, cols: cols) { r0, n in
            layerNormRows(src + r0 * cols, Float32Sink(p: dst + r0 * cols), rows: n, cols: cols, weight: weight, bias: bias, eps: eps)
        }
    }

    /// One `parallelRows` call, shared with the kernels' team.
    private final class RowJob {
        let rows: Int
        let body: (Int, Int) -> Void
        init(rows: Int, body: @escaping (Int, Int) -> Void) { self.rows = rows; self.body = body }
    }

    /// Splits `rows` across the kernels' team (`Engine.threads` threads, `ck_parallel`) when there
    /// is enough work: these memory-bound kernels otherwise run on one core while the matmuls
    /// around them use all of them. The team is the one the C kernels use: threads of another pool
    /// (Dispatch's) would compete for the cores with its waiting threads.
    static func parallelRows(_ rows: Int, cols: Int, _ body: (Int, Int) -> Void) {
        let threads = max(1, Int(ck_team_threads()))
        if threads == 1 || rows * cols < 1 << 16 || rows < 2 * threads {
            body(0, rows); return
        }
        withoutActuallyEscaping(body) { body in
            let job = RowJob(rows: rows, body: body)
            ck_parallel({ raw, t, n in
                guard let raw else { return }
                let job = Unmanaged<RowJob>.fromOpaque(raw).takeUnretainedValue()
                let start = job.rows * Int(t) / Int(n), end = job.rows * Int(t + 1) / Int(n)
                if start < end { job.body(start, end - start) }
            }, Unmanaged.passUnretained(job).toOpaque(), Int32(threads))
        }
    }

    /// Where a LayerNorm row goes: float32 or bfloat16 elements (specialised, so no call overhead).
    protocol RowSink {
        func store(_ v: SIMD16<Float>, at i: Int)
        func store(_ v: Float, at i: Int)
    }

    struct Float32Sink: RowSink {
        let p: UnsafeMutablePointer<Float>
        @inline(__always) func store(_ v: SIMD16<Float>, at i: Int) { UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD16<Float>.self) }
        @inline(__always) func store(_ v: Float, at i: Int) { p[i] = v }
    }

    struct BFloat16Sink: RowSink {
        let p: UnsafeMutablePointer<UInt16>
        @inline(__always) func store(_ v: SIMD16<Float>, at i: Int) { UnsafeMutableRawPointer(p + i).storeBytes(of: bf16Bits(v), as: SIMD16<UInt16>.self) }
        @inline(__always) func store(_ v: Float, at i: Int) { p[i] = bf16Bits(v) }
    }

    /// LayerNorm of `rows` rows starting at row 0 of `src`, written through `sink` (element offsets
    /// counted from the same row 0).
    static func layerNormRows<S: RowSink>(_ src: UnsafePointer<Float>, _ sink: S, rows: Int, cols: Int,
                                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float) {
        if cols == 0 { return }
        let vec = cols / 16 * 16
        let inv = 1 / Float(cols)
        for r in 0..<rows {
            let x = src + r * cols
            let o = r * cols
            var acc = SIMD16<Float>()
            var i = 0
            while i < vec { acc += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self); i += 16 }
            var sum = acc.sum()
            while i < cols { sum += x[i]; i += 1 }
            let mean = sum * inv
            var accv = SIMD16<Float>()
            let m16 = SIMD16<Float>(repeating: mean)
            i = 0
            while i < vec {
                let d = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - m16
                accv += d * d; i += 16
            }
            var v = accv.sum()
            while i < cols { let d = x[i] - mean; v += d * d; i += 1 }
            let rstd = 1 / (v * inv + eps).squareRoot()
            let r16 = SIMD16<Float>(repeating: rstd)
            i = 0
            while i < vec {
                let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
                let wv = UnsafeRawPointer(weight + i).loadUnaligned(as: SIMD16<Float>.self)
                let bv = UnsafeRawPointer(bias + i).loadUnaligned(as: SIMD16<Float>.self)
                sink.store((xv - m16) * r16 * wv + bv, at: o + i)
                i += 16
            }
            while i < cols { sink.store((x[i] - mean) * rstd * weight[i] + bias[i], at: o + i); i += 1 }
        }
    }

    /// Float32 → bfloat16 bits, rounded to nearest even as oneDNN's reorder does (NaN stays NaN).
    @inline(__always)
    static func bf16Bits(_ x: SIMD16<Float>) -> SIMD16<UInt16> {
        let bits = unsafeBitCast(x, to: SIMD16<UInt32>.self)
        var r = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
        r.replace(with: 0x7FC0, where: x .!= x)
        return SIMD16<UInt16>(truncatingIfNeeded: r)
    }

    @inline(__always)
    static func bf16Bits(_ x: Float) -> UInt16 {
        if x.isNaN { return 0x7FC0 }
        let bits = x.bitPattern
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// Rounds `count` float32 values to bfloat16 (`dst` holds 2-byte elements). Large inputs are
    /// split across the engine's threads, as in the two conversions below (emulated bf16 runs them
    /// around every matmul).
    public static func toBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        let d = dst.assumingMemoryBound(to: UInt16.self)
        if ck_to_bf16(src, d, count) == 0 { return }
        parallelRows(count, cols: 1) { start, n in
            var i = start
            let end = start + n
            while i + 16 <= end {
                UnsafeMutableRawPointer(d + i).storeBytes(of: bf16Bits(UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self)), as: SIMD16<UInt16>.self)
                i += 16
            }
            while i < end { d[i] = bf16Bits(src[i]); i += 1 }
        }
    }

    /// Rounds `count` float32 values to bfloat16 precision, kept as float32 (what a bf16 round
    /// trip gives, in one pass).
    public static func roundToBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        parallelRows(count, cols: 1) { start, n in
            var i = start
            let end = start + n
            while i + 16 <= end {
                let bits = SIMD16<UInt32>(truncatingIfNeeded: bf16Bits(UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self))) &<< 16
                UnsafeMutableRawPointer(dst + i).storeBytes(of: bits, as: SIMD16<UInt32>.self)
                i += 16
            }
            while i < end { dst[i] = Float(bitPattern: UInt32(bf16Bits(src[i])) << 16); i += 1 }
        }
    }

    /// bfloat16 → float32 (exact).
    public static func fromBFloat16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let s = src.assumingMemoryBound(to: UInt16.self)
        parallelRows(count, cols: 1) { start, n in
            for i in start..<(start + n) { dst[i] = Float(bitPattern: UInt32(s[i]) << 16) }
        }
    }

    /// Float32 → IEEE float16 (round to nearest even; out-of-range values become ±infinity).
    public static func toFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        let d = dst.assumingMemoryBound(to: Float16.self)
        for i in 0..<count { d[i] = Float16(src[i]) }
    }

    /// IEEE float16 → float32 (exact; F16C instructions when the CPU has them). Large inputs are
    /// split across the engine's threads.
    public static func fromFloat16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let s = src.assumingMemoryBound(to: UInt16.self)
        parallelRows(count, cols: 1) { start, n in ck_f16_to_f32(s + start, dst + start, n) }
    }

    /// LayerNorm as `layerNorm`, writing bfloat16 (the input of a bf16 matmul).
    public static func layerNormBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, rows: Int, cols: Int,
                                         weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float) {
        if ck_layernorm(src, dst, 1, rows, Int32(cols), weight, bias, eps) == 0 { return }
        parallelRows(rows, cols: cols) { r0, n in
            layerNormRows(src + r0 * cols, BFloat16Sink(p: dst.assumingMemoryBound(to: UInt16.self) + r0 * cols), rows: n, cols: cols,
                          weight: weight, bias: bias, eps: eps)
        }
    }

    /// `dst[c][r] = src[r][c]` for a dense `rows × cols` matrix.
    public static func transpose(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows { for c in 0..<cols { dst[c * rows + r] = src[r * cols + c] } }
    }

    /// `[N, C, H, W]` (NCHW) → `[N, H, W, C]` (NHWC).
    public static func nchwToNHWC(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, n: Int, c: Int, h: Int, w: Int) {
        let hw = h * w
        for b in 0..<n { transpose(src + b * c * hw, dst + b * c * hw, rows: c, cols: hw) }
    }

    /// `[N, H·W, C]` tokens (NHWC), rows `rowOffset..<rowOffset+H·W` of each batch item with
    /// `rowsPerItem` rows in all → `[N, C, H, W]` (NCHW).
    public static func tokensToNCHW(_ src: UnsafePointer<Float>, rowsPerItem: Int, rowOffset: Int,
                                    _ dst: UnsafeMutablePointer<Float>, n: Int, c: Int, hw: Int) {
        for b in 0..<n {
            let s = src + (b * rowsPerItem + rowOffset) * c, d = dst + b * c * hw
            for p in 0..<hw { for ch in 0..<c { d[ch * hw + p] = s[p * c + ch] } }
        }
    }

    /// Copies `rows` rows of `cols` values between buffers with independent row pitches.
    public static func copyRows(_ src: UnsafePointer<Float>, srcPitch: Int, _ dst: UnsafeMutablePointer<Float>, dstPitch: Int,
                                rows: Int, cols: Int) {
        let f = MemoryLayout<Float>.stride
        ck_copy_rows(src, srcPitch * f, dst, dstPitch * f, rows, cols * f)
    }

    /// `count` floats from `src` to `dst` (not overlapping), split over the kernels' threads.
    public static func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let rows = max(1, min(count / 4096, 4096)), cols = count / rows, f = MemoryLayout<Float>.stride
        ck_copy_rows(src, cols * f, dst, cols * f, rows, cols * f)
        if rows * cols < count { (dst + rows * cols).update(from: src + rows * cols, count: count - rows * cols) }
    }

    /// `[b, t, heads·d]` → `[b, heads, t, d]` (`merge`: the other way), split over the kernels' threads.
    public static func splitHeads(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, b: Int, t: Int, heads: Int, d: Int,
                                  merge: Bool = false) {
        ck_split_heads(src, dst, b, t, heads, d, merge ? 1 : 0)
    }

    /// `y = a + b` elementwise (`y` may be `a` or `b`).
    public static func sum(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        ck_sum(a, b, y, count)
    }

    /// Output size of PyTorch's `AvgPool2d(..., ceil_mode: true)` along one axis.
    public static func avgPoolOutputSize(_ n: Int, kernel: Int, stride: Int, padding: Int) -> Int {
        // ceil((n + 2p - k) / s) + 1, then drop a last window that would start in the right padding.
        let span = n + 2 * padding - kernel
        if span < 0 { return 0 }
        var out = (span + stride - 1) / stride + 1
        if (out - 1) * stride >= n + padding { out -= 1 }
        return out
    }

    /// PyTorch `AvgPool2d(kernel, stride, padding, ceil_mode: true, count_include_pad: true)` on NHWC
    /// data `[N, H, W, C]` → `[N, Ho, Wo, C]`. The divisor counts padding but not the overflow of the
    /// ceil-mode windows, exactly as ATen's `avg_pool2d` does. Images may sit `srcImageStride` /
    /// `dstImageStride` floats apart (inside token buffers); nil means dense.
    public static func avgPool2dNHWC(_ src: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int,
                                     kernel: Int, stride: Int, padding: Int, _ dst: UnsafeMutablePointer<Float>, ho: Int, wo: Int,
                                     srcImageStride: Int? = nil, dstImageStride: Int? = nil) {
        let srcStride = srcImageStride ?? h * w * c, dstStride = dstImageStride ?? ho * wo * c
        for b in 0..<n {
            for oy in 0..<ho {
                for ox in 0..<wo {
                    var hs = oy * stride - padding, ws = ox * stride - padding
                    var he = min(hs + kernel, h + padding), we = min(ws + kernel, w + padding)
                    let poolSize = Float((he - hs) * (we - ws))
                    hs = max(hs, 0); ws = max(ws, 0); he = min(he, h); we = min(we, w)
                    let out = dst + b * dstStride + (oy * wo + ox) * c
                    out.initialize(repeating: 0, count: c)
                    if hs < he && ws < we {
                        for y in hs..<he { for x in ws..<we {
                            let inp = src + b * srcStride + (y * w + x) * c
                            for ch in 0..<c { out[ch] += inp[ch] }
                        } }
                    }
                    for ch in 0..<c { out[ch] /= poolSize }
                }
            }
        }
    }
}
