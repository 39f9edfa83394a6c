#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// The thread team of the kernels below (team.c): `fn(ctx, member, members)` runs once for each
/// member 0 ..< members, member 0 on the calling thread; returns when all are done. `members` is
/// capped by `ck_team_threads()`; inside a region, or while another thread's region runs, `fn`
/// runs on the caller alone with members 1.
typedef void (*ck_team_fn)(void *ctx, int member, int members);
void ck_parallel(ck_team_fn fn, void *ctx, int members);
/// Threads a region may use: the calling thread's count if set, else the process's count (default:
/// the CPUs this process may run on); OpenMP's count for the calling thread when regions run on its
/// team; 1 inside a region.
int ck_team_threads(void);
void ck_team_set_threads(int threads);
/// The calling thread's own count (0: none, the process's applies); returns the previous one. An
/// engine sets it for the duration of each call, so engines with different counts coexist.
int ck_team_set_local_threads(int threads);
/// Whether the calling thread is running a member of a region.
int ck_team_in_region(void);
/// Whether regions run on OpenMP's team instead of ours (default: on AVX-512 CPUs, where oneDNN's
/// matmuls use OpenMP's; `CVT_TEAM=openmp|own` overrides); set -1 for the default.
int ck_team_uses_openmp(void);
void ck_team_set_openmp(int openmp);
/// How long a waiting team thread spins (yielding the core) before it sleeps; -1: the default
/// (`CVT_TEAM_SPIN_US`, else 1000 µs).
void ck_team_set_spin_us(long us);

/// IEEE float16 -> float32 for `count` values (exact). Uses the F16C instructions when the CPU
/// has them (checked once at run time), a bit-exact scalar path otherwise.
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t count);

/// Single-precision GEMM with pre-packed weights for AVX2+FMA CPUs (gemm.c).
/// Whether this CPU has AVX2 and FMA (the kernel's instructions).
int ck_gemm_supported(void);
/// Whether this CPU has AVX-512F (where oneDNN's own brgemm kernels are the faster choice).
int ck_cpu_has_avx512f(void);
/// Floats that packed `[k, n]` weights take (N padded to 16).
size_t ck_gemm_packed_count(int k, int n);
/// Packs `b` (`[k, n]`, element strides rs, cs) into 16-column panels.
void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed);
/// The inverse of `ck_gemm_pack`.
void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs);
/// `c[m, n]` (row stride ldc) = epilogue(a[m, k] (row stride lda) · B + bias), on up to
/// `ck_team_threads()` threads. `ops`: 1 GELU (erf), 2 scale by `args[i]`, 3 accumulate onto
/// the previous `c` (first only). Returns 0, or -1 for an unsupported epilogue or CPU.
int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops);
/// Half-precision weight formats for the GEMM's 16-bit panels.
enum { CK_FLOAT16 = 1, CK_BFLOAT16 = 2 };
/// Whether `ck_gemm16` runs here for `format` (AVX2+FMA, and F16C for float16).
int ck_gemm16_supported(int format);
/// `ck_gemm_pack` for 16-bit weights (float16 or bfloat16 bits, copied unchanged): half the bytes.
void ck_gemm_pack16(const uint16_t *b, long rs, long cs, int k, int n, uint16_t *packed);
/// The inverse of `ck_gemm_pack16`, into 16-bit `b`, or widened to float32 when `widen`.
void ck_gemm_unpack16(const uint16_t *packed, int format, int k, int n, void *b, int widen, long rs, long cs);
/// `ck_gemm` with 16-bit packed weights, widened to float32 one micro-panel at a time (exactly), so
/// the products are float32 products of the stored values. Returns -1 when unsupported here.
int ck_gemm16(int m, int n, int k, const float *a, long lda, const uint16_t *packed, int format, const float *bias,
              float *c, long ldc, const int *ops, const float *args, int nops);
/// Multi-head attention, float32, AVX2+FMA: for each image and head h, `ctx` columns
/// h·d ..< (h+1)·d = softmax(scale · Q_h·K_hᵀ)·V_h, where Q_h is `q` columns h·d ..< (h+1)·d
/// (rows `q_row` apart, images `q_image` apart), and likewise K_h, V_h. With `round_p` the
/// probabilities are rounded to bfloat16 before P·V (emulated bf16 attention). Returns 0, or -1
/// when out of memory or unsupported.
int ck_attention(int batch, int heads, int tq, int tk, int d,
                 const float *q, long q_image, long q_row, const float *k, long k_image, long k_row,
                 const float *v, long v_image, long v_row, float *ctx, long c_image, long c_row, float scale, int round_p);
/// The patches of one NHWC image `[h, w, c]` for a `kh`×`kw` convolution (zero padding `pad`):
/// `dst[(oy·wo + ox), (ky·kw + kx)·c + ci]`, one row per output pixel.
void ck_im2col_nhwc(const float *src, int h, int w, int c, int kh, int kw, int stride, int pad, int ho, int wo, float *dst);
/// A `k`×`k` convolution (groups 1, zero padding `pad`) of one NHWC image `[h, w, c]` into NHWC
/// `[ho, wo, cout]`, as im2col + GEMM fused per block of output pixels: each team member takes a
/// share of the pixels and runs blocks whose patches stay in cache. `packed`: the `[k·k·c, cout]`
/// weights (rows in patch order `(ky·k + kx)·c + ci`) packed by `ck_gemm_pack`. For convolutions
/// with many more pixels than output channels (CvT's stage-1 patch embedding). Returns 0, or -1
/// when unsupported or out of memory.
int ck_conv_nhwc(const float *src, int h, int w, int c, int k, int stride, int pad, int ho, int wo,
                 const float *packed, const float *bias, int cout, float *dst);
/// Exact-erf GELU in place (AVX2+FMA).
void ck_gelu(float *x, size_t count);
/// LayerNorm over the last axis (biased variance, as PyTorch): `dst[r] = (src[r] − mean) /
/// sqrt(var + eps) · weight + bias` for `rows` rows of `cols` values (AVX2+FMA, on up to
/// `ck_team_threads()` threads), written as float32, or as bfloat16 bits rounded to nearest
/// even when `dst_bf16`. `src` and `dst` may be the same (float32). Returns -1 without AVX2.
int ck_layernorm(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias, float eps);
/// `ck_layernorm` that also stores each row's mean and 1/sqrt(var + eps) (for the backward pass).
int ck_layernorm_saving(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias,
                        float eps, float *mean, float *rstd);
/// Float32 → bfloat16 bits (round to nearest even, NaN → 0x7FC0, as oneDNN's reorder) for `count`
/// values, on up to `ck_team_threads()` threads. Returns -1 without AVX2.
int ck_to_bf16(const float *src, uint16_t *dst, size_t count);
/// Depthwise convolution of `n` NHWC images `[h, w, c]` (`src_image` floats apart) with
/// `taps[(ky·kw + kx)·c + ch]`, zero padding `pad`, optional `bias[c]`, into NHWC `[ho, wo, c]`
/// images `dst_image` floats apart (AVX2+FMA, threads as above). Returns -1 without AVX2.
int ck_depthwise_nhwc(const float *src, long src_image, int n, int h, int w, int c, const float *taps, const float *bias,
                      int kh, int kw, int stride, int pad, int ho, int wo, float *dst, long dst_image);

// ==== Training (train.c) ====
// Float32 kernels of the training step: AVX2+FMA where the CPU has it (checked at run time), scalar
// otherwise; on up to `ck_team_threads()` threads when the work is large. Arrays are dense and
// row-major, with no alignment required. Gradient reductions over rows are summed in float over
// short blocks, then in double, per team member, and the members' partials added in member order:
// deterministic for a given thread count. Functions returning int return 0, or -1 when out of memory
// (nothing written then).

/// Test hook: 1 forces the scalar paths (as on a CPU without AVX2), 0 restores the default. Not
/// for concurrent use with the kernels.
void ck_train_set_scalar(int scalar);
/// PyTorch LayerNorm over the last axis (biased variance) of `rows` rows of `cols` values, also
/// storing each row's mean and rstd = 1/sqrt(var + eps). `x` and `y` may be the same.
void ck_layernorm_forward(const float *x, float *y, long rows, int cols, const float *weight, const float *bias, float eps,
                          float *mean, float *rstd);
/// LayerNorm backward: xhat = (x − mean)·rstd, g = dy·weight; dx = rstd·(g − mean_row(g) −
/// xhat·mean_row(g·xhat)), written (or added when `accumulate`); dweight += Σ_rows dy·xhat,
/// dbias += Σ_rows dy. `dx` may be `dy` or `x` (each row is read before it is written).
int ck_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd, const float *weight,
                          long rows, int cols, float *dx, int accumulate, float *dweight, float *dbias);
/// Exact-erf GELU, y = x·Φ(x), out of place or in place, within float32 rounding of the true value.
void ck_gelu_forward(const float *x, float *y, long count);
/// GELU backward: dx = dy·(Φ(x) + x·φ(x)). `dx` may be `dy` or `x`.
void ck_gelu_backward(const float *x, const float *dy, float *dx, long count);
/// MLP GELU in bfloat16 precision: `x_bf16` = bf16(x) (round to nearest even), `y_bf16` =
/// bf16(GELU(x_bf16)), the exact-erf GELU evaluated in float32.
void ck_gelu_forward_bf16(const float *x, uint16_t *x_bf16, uint16_t *y_bf16, long count);
/// `y_bf16` = bf16(GELU(x_bf16)): `ck_gelu_forward_bf16`'s second output from its first, bit for bit.
void ck_gelu_bf16(const uint16_t *x_bf16, uint16_t *y_bf16, long count);
/// `dx = dy·GELU'(x)` with `x` given as bfloat16 bits (from `ck_gelu_forward_bf16`); `dx` may be `dy`.
void ck_gelu_backward_bf16(const uint16_t *x_bf16, const float *dy, float *dx, long count);
/// Softmax over the last axis (max subtracted; exp within 2 ulp). `p` may be `x`. A row containing
/// NaN, or all −inf, gives NaN.
void ck_softmax_forward(const float *x, float *p, long rows, int cols);
/// Softmax backward: ds = scale·p·(dp − Σ_row p·dp). `ds` may be `dp`.
void ck_softmax_backward(const float *p, const float *dp, float *ds, long rows, int cols, float scale);
/// `ck_softmax_backward` from bfloat16 probabilities `p`, writing `ds` as bfloat16 (round to nearest even).
void ck_softmax_backward_bf16(const uint16_t *p, const float *dp, uint16_t *ds, long rows, int cols, float scale);
/// `rows` rows of `row_bytes` bytes from `src` to `dst` (pitches in bytes), split over the team.
void ck_copy_rows(const void *src, long src_pitch_bytes, void *dst, long dst_pitch_bytes, long rows, long row_bytes);
/// `[b, t, heads·d]` → `[b, heads, t, d]` (or back, with `merge`), split over the team.
void ck_split_heads(const float *src, float *dst, long b, long t, long heads, long d, int merge);
/// `y = a + b` elementwise (`y` may be `a` or `b`), split over the team.
void ck_sum(const float *a, const float *b, float *y, long count);
/// Per-channel mean and biased variance of `x` [rows, channels] (NHWC flattened), accumulated in
/// double. rows = 0 gives NaN.
int ck_batchnorm_statistics(const float *x, long rows, int channels, float *mean, float *variance);
/// y = (x − mean)·rstd·weight + bias per channel of [rows, channels]. `y` may be `x`.
void ck_batchnorm_forward(const float *x, float *y, long rows, int channels, const float *mean, const float *rstd,
                          const float *weight, const float *bias);
/// Training-mode BatchNorm backward, N = rows, xhat = (x − mean)·rstd, sdy = Σ dy, sdyx = Σ dy·xhat
/// per channel (double): dx = weight·rstd·(dy − sdy/N − xhat·sdyx/N) (written); dweight += sdyx,
/// dbias += sdy. `dx` may be `dy` or `x`.
int ck_batchnorm_backward(const float *dy, const float *x, const float *mean, const float *rstd, const float *weight,
                          long rows, int channels, float *dx, float *dweight, float *dbias);
/// Depthwise k×k convolution of `n` dense NHWC images [h, w, c] into [ho, wo, c], no bias, taps
/// `[(ky·k + kx)·c + ch]`, zero padding `pad` (ck_depthwise_nhwc where it runs).
void ck_depthwise_forward(const float *x, int n, int h, int w, int c, const float *taps, int k, int stride, int pad,
                          int ho, int wo, float *y);
/// Its gradient with respect to the input: dx [n, h, w, c] written.
void ck_depthwise_backward_data(const float *dy, int n, int h, int w, int c, const float *taps, int k, int stride, int pad,
                                int ho, int wo, float *dx);
/// Its gradient with respect to the taps: dtaps `[(ky·k + kx)·c + ch]` +=.
int ck_depthwise_backward_weight(const float *x, const float *dy, int n, int h, int w, int c, int k, int stride, int pad,
                                 int ho, int wo, float *dtaps);
/// `ck_im2col_nhwc` for `n` dense images: row img·ho·wo + oy·wo + ox of `cols` holds that output
/// pixel's patch, `[(ky·k + kx)·c + ci]` (zeros outside the image).
void ck_im2col_nhwc_batch(const float *x, int n, int h, int w, int c, int k, int stride, int pad, int ho, int wo, float *cols);
/// The adjoint of `ck_im2col_nhwc_batch`: dx [n, h, w, c] written with the sum of every patch
/// entry that copied each input value (rows of dx gathered independently, in a fixed order).
void ck_col2im_nhwc_batch(const float *cols, int n, int h, int w, int c, int k, int stride, int pad, int ho, int wo, float *dx);
/// The adjoint of PyTorch's AvgPool2d (ceil_mode, count_include_pad; divisor as Kernels.avgPool2dNHWC)
/// on dense NHWC: dx [n, h, w, c] written.
void ck_avgpool_backward_nhwc(const float *dy, int n, int h, int w, int c, int kernel, int stride, int pad, int ho, int wo, float *dx);
/// out[j] += Σ_rows x[r, j] (bias gradients).
int ck_column_sums(const float *x, long rows, int cols, float *out);
/// Σ x², in double.
double ck_sum_of_squares(const float *x, long count);
/// x *= s.
void ck_scale(float *x, long count, float s);
/// dst += src (`src` may be `dst`).
void ck_add(const float *src, float *dst, long count);
/// One torch.optim.AdamW step (CPU, single-tensor, float32), `step` counted from 1, in torch 2.13's
/// rounding: param *= 1 − lr·wd; exp_avg = lerp(exp_avg, grad, 1 − β₁); exp_avg_sq = exp_avg_sq·β₂ +
/// (1 − β₂)·grad·grad; param += (−lr/(1 − β₁^step))·exp_avg / (sqrt(exp_avg_sq)/sqrt(1 − β₂^step) + eps).
/// `fused`: the fused kernel's square root of the bias correction (its vectorised body; see AdamW.swift
/// for its last `count % 8` elements). Returns 1 when an updated weight is not finite, else 0.
int ck_adamw(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, long count, double lr, double beta1,
              double beta2, double eps, double weight_decay, long step, int fused);

#endif
