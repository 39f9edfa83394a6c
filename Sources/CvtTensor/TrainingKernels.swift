import CKernels

/// Kernels of the training step (backward passes, BatchNorm statistics, gradient reductions, AdamW),
/// float32, dense row-major, no alignment required. They run in C (train.c): AVX2+FMA where the CPU
/// has it, scalar otherwise, split over the kernels' team (`ck_parallel`) when the work is large.
/// Gradient reductions are deterministic for a given thread count. "+=" below means the kernel adds
/// into its output (gradient accumulation).
extension Kernels {
    /// C kernels return -1 only when a few KB of per-thread partial sums cannot be allocated.
    @inline(__always)
    private static func check(_ rc: Int32, _ name: StaticString) {
        precondition(rc == 0, "\(name): out of memory")
    }

    /// PyTorch LayerNorm over the last axis (biased variance), also storing each row's `mean` and
    /// `rstd` = 1/sqrt(var + eps). `x` and `y` may alias.
    public static func layerNormForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float,
                                        mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) {
        ck_layernorm_forward(x, y, rows, Int32(cols), weight, bias, eps, mean, rstd)
    }

    /// LayerNorm backward: xhat = (x − mean)·rstd, g = dy·weight, dx (= or += per `accumulate`) =
    /// rstd·(g − mean_row(g) − xhat·mean_row(g·xhat)); dweight += Σ_rows dy·xhat; dbias += Σ_rows dy.
    /// `dx` may alias `dy` or `x`.
    public static func layerNormBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Float>,
                                         rstd: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, cols: Int,
                                         dx: UnsafeMutablePointer<Float>, accumulate: Bool,
                                         dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>) {
        check(ck_layernorm_backward(dy, x, mean, rstd, weight, rows, Int32(cols), dx, accumulate ? 1 : 0, dweight, dbias),
              "layerNormBackward")
    }

    /// Exact-erf GELU, 0.5·x·(1 + erf(x/√2)), within float32 rounding. `x` and `y` may alias.
    public static func gelu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        ck_gelu_forward(x, y, count)
    }

    /// GELU backward: dx = dy·(Φ(x) + x·φ(x)). `dx` may alias `dy` (or `x`).
    public static func geluBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
        ck_gelu_backward(x, dy, dx, count)
    }

    /// GELU between two bfloat16 matmuls: `xBF16` = bf16(x), `yBF16` = bf16(GELU(xBF16)) (bfloat16
    /// bits, rounded to nearest even), as autocast runs a Linear → GELU → Linear block.
    public static func geluBFloat16(_ x: UnsafePointer<Float>, xBF16: UnsafeMutableRawPointer, yBF16: UnsafeMutableRawPointer, count: Int) {
        ck_gelu_forward_bf16(x, xBF16.assumingMemoryBound(to: UInt16.self), yBF16.assumingMemoryBound(to: UInt16.self), count)
    }

    /// `geluBFloat16`'s `yBF16` again from its `xBF16`, bit for bit.
    public static func geluBFloat16(xBF16: UnsafeRawPointer, yBF16: UnsafeMutableRawPointer, count: Int) {
        ck_gelu_bf16(xBF16.assumingMemoryBound(to: UInt16.self), yBF16.assumingMemoryBound(to: UInt16.self), count)
    }

    /// GELU backward from the bfloat16 input that `geluBFloat16` kept: dx = dy·GELU'(x).
    public static func geluBackwardBFloat16(xBF16: UnsafeRawPointer, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
        ck_gelu_backward_bf16(xBF16.assumingMemoryBound(to: UInt16.self), dy, dx, count)
    }

    /// Numerically stable softmax over the last axis (exp within 2 ulp). `p` may alias `x`.
    public static func softmaxForward(_ x: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        ck_softmax_forward(x, p, rows, Int32(cols))
    }

    /// Softmax backward: ds = scale·p·(dp − Σ_j p·dp) per row. `ds` may alias `dp`.
    public static func softmaxBackward(p: UnsafePointer<Float>, dp: UnsafePointer<Float>, ds: UnsafeMutablePointer<Float>,
                                       rows: Int, cols: Int, scale: Float) {
        ck_softmax_backward(p, dp, ds, rows, Int32(cols), scale)
    }

    /// `softmaxBackward` from bfloat16 probabilities, writing `ds` as bfloat16 bits: the float32
    /// arithmetic on the (exactly) widened probabilities, rounded once.
    public static func softmaxBackwardBFloat16(p: UnsafeRawPointer, dp: UnsafePointer<Float>, ds: UnsafeMutableRawPointer,
                                               rows: Int, cols: Int, scale: Float) {
        ck_softmax_backward_bf16(p.assumingMemoryBound(to: UInt16.self), dp, ds.assumingMemoryBound(to: UInt16.self), rows, Int32(cols), scale)
    }

    /// Per-channel mean and biased variance of `x` [rows, channels] (NHWC flattened), in double.
    public static func batchNormStatistics(_ x: UnsafePointer<Float>, rows: Int, channels: Int,
                                           mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>) {
        check(ck_batchnorm_statistics(x, rows, Int32(channels), mean, variance), "batchNormStatistics")
    }

    /// y = (x − mean)·rstd·weight + bias per channel of [rows, channels]. `y` may alias `x`.
    public static func batchNormForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, channels: Int,
                                        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>) {
        ck_batchnorm_forward(x, y, rows, Int32(channels), mean, rstd, weight, bias)
    }

    /// Training-mode BatchNorm backward (N = rows, per-channel sums in double): dx = weight·rstd·(dy −
    /// Σdy/N − xhat·Σ(dy·xhat)/N) (overwritten); dweight += Σ dy·xhat; dbias += Σ dy. `dx` may alias
    /// `dy` or `x`.
    public static func batchNormBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Float>,
                                         rstd: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, channels: Int,
                                         dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                         dbias: UnsafeMutablePointer<Float>) {
        check(ck_batchnorm_backward(dy, x, mean, rstd, weight, rows, Int32(channels), dx, dweight, dbias), "batchNormBackward")
    }

    /// NHWC depthwise k×k convolution without bias, taps `[(ky·k + kx)·c + ch]`, zero padding.
    public static func depthwiseForward(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, taps: UnsafePointer<Float>,
                                        kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int,
                                        _ y: UnsafeMutablePointer<Float>) {
        ck_depthwise_forward(x, Int32(n), Int32(h), Int32(w), Int32(c), taps, Int32(k), Int32(stride), Int32(padding),
                             Int32(ho), Int32(wo), y)
    }

    /// The depthwise convolution's input gradient: dx [n, h, w, c] overwritten.
    public static func depthwiseBackwardData(dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, taps: UnsafePointer<Float>,
                                             kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int,
                                             dx: UnsafeMutablePointer<Float>) {
        ck_depthwise_backward_data(dy, Int32(n), Int32(h), Int32(w), Int32(c), taps, Int32(k), Int32(stride), Int32(padding),
                                   Int32(ho), Int32(wo), dx)
    }

    /// The depthwise convolution's tap gradient: dtaps `[(ky·k + kx)·c + ch]` +=.
    public static func depthwiseBackwardWeight(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int,
                                               kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int,
                                               dtaps: UnsafeMutablePointer<Float>) {
        check(ck_depthwise_backward_weight(x, dy, Int32(n), Int32(h), Int32(w), Int32(c), Int32(k), Int32(stride),
                                           Int32(padding), Int32(ho), Int32(wo), dtaps), "depthwiseBackwardWeight")
    }

    /// Patches of `n` NHWC images: `cols[(img·ho·wo + oy·wo + ox), (ky·k + kx)·c + ci]`, zero padding.
    public static func im2colNHWC(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel k: Int, stride: Int,
                                  padding: Int, ho: Int, wo: Int, _ cols: UnsafeMutablePointer<Float>) {
        ck_im2col_nhwc_batch(x, Int32(n), Int32(h), Int32(w), Int32(c), Int32(k), Int32(stride), Int32(padding),
                             Int32(ho), Int32(wo), cols)
    }

    /// The adjoint of `im2colNHWC`: dx [n, h, w, c] overwritten with the sum of the patch entries
    /// that copied each input value.
    public static func col2imNHWC(_ cols: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel k: Int, stride: Int,
                                  padding: Int, ho: Int, wo: Int, _ dx: UnsafeMutablePointer<Float>) {
        ck_col2im_nhwc_batch(cols, Int32(n), Int32(h), Int32(w), Int32(c), Int32(k), Int32(stride), Int32(padding),
                             Int32(ho), Int32(wo), dx)
    }

    /// The adjoint of `avgPool2dNHWC` (dense images, same divisor rule): dx [n, h, w, c] overwritten.
    public static func avgPoolBackwardNHWC(dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel: Int, stride: Int,
                                           padding: Int, ho: Int, wo: Int, dx: UnsafeMutablePointer<Float>) {
        ck_avgpool_backward_nhwc(dy, Int32(n), Int32(h), Int32(w), Int32(c), Int32(kernel), Int32(stride), Int32(padding),
                                 Int32(ho), Int32(wo), dx)
    }

    /// out[j] += Σ_rows x[r, j] (bias gradients).
    public static func columnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        check(ck_column_sums(x, rows, Int32(cols), out), "columnSums")
    }

    /// Σ x², accumulated in double.
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        ck_sum_of_squares(x, count)
    }

    /// x *= s.
    public static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        ck_scale(x, count, s)
    }

    /// dst += src.
    public static func add(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        ck_add(src, dst, count)
    }

    /// One AdamW step (`step` counted from 1) in the float32 rounding of torch 2.13's CPU
    /// single-tensor AdamW (see `ck_adamw`). Returns whether any updated weight is not finite.
    @discardableResult
    public static func adamW(param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
                             expAvgSq: UnsafeMutablePointer<Float>, count: Int, lr: Double, beta1: Double, beta2: Double,
                             eps: Double, weightDecay: Double, step: Int, fused: Bool = false) -> Bool {
        return ck_adamw(param, grad, expAvg, expAvgSq, count, lr, beta1, beta2, eps, weightDecay, step, fused ? 1 : 0) != 0
    }
}
