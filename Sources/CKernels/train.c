// Kernels of the training step: backward passes of LayerNorm, GELU, softmax, BatchNorm, depthwise
// and im2col convolutions and average pooling, gradient reductions and AdamW, all float32.
//
// Each kernel has an AVX2+FMA path (per-function target attributes, chosen at run time: SwiftPM
// forbids module-wide flags) and a scalar path for other CPUs. Work is split over the kernels' team
// (team.c) by rows, channels or elements. Reductions into per-parameter gradients (sums over
// thousands of rows) are summed in float over short blocks of rows, flushed into double partials per
// team member, and the members' partials added in member order, so results do not depend on timing.
#include "ckernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CK_X86 1
#else
#define CK_X86 0
#endif
#include "vecmath.h"

static int scalar_only;
void ck_train_set_scalar(int scalar) { scalar_only = scalar != 0; }

// Decided by the caller before a region starts (members read it from the job).
static int vector_path(void) {
#if CK_X86
    return !scalar_only && ck_gemm_supported();
#else
    return 0;
#endif
}

// Threads for `work` units of about one float each: memory-bound work below 64k values is not worth
// a hand-off (as layers.c).
static int threads_for(double work, long units) {
    int t = ck_team_threads();
    if (work < 65536 || t < 1) t = 1;
    if (t > units) t = units > 0 ? (int)units : 1;
    return t;
}

// ---- splitting a range over the team ----

// `fn(ctx, begin, end, member)` for member's share of [0, count), shares multiples of `align`.
typedef void (*range_fn)(void *ctx, long begin, long end, int member);
typedef struct { range_fn fn; void *ctx; long count, align; int members; } range_job;

static long share(long count, long align, int t, int members) {
    long units = (count + align - 1) / align, b = units * t / members * align;
    return b < count ? b : count;
}

static void range_member(void *data, int t, int members) {
    range_job *r = data;
    if (t == 0) r->members = members;  // member 0 runs on the caller
    long b = share(r->count, r->align, t, members), e = share(r->count, r->align, t + 1, members);
    if (b < e) r->fn(r->ctx, b, e, t);
}

// Runs over [0, count) on up to `threads` members; returns how many ran (partials beyond unused).
static int run_ranges(range_fn fn, void *ctx, long count, long align, int threads) {
    if (count <= 0) return 0;
    if (threads <= 1) { fn(ctx, 0, count, 0); return 1; }
    range_job r = {fn, ctx, count, align, 1};
    ck_parallel(range_member, &r, threads);
    return r.members;
}

// Per-member partial sums for gradient reductions: `width` doubles each, plus a float block of the
// same width that rows are summed into and flushed from every few rows.
typedef struct { double *acc; float *blk; int width, members; } partials;

static int partials_init(partials *p, int width, int members) {
    p->width = width;
    p->members = members;
    p->acc = calloc((size_t)width * members, sizeof(double));
    p->blk = calloc((size_t)width * members, sizeof(float));
    if (!p->acc || !p->blk) { free(p->acc); free(p->blk); return -1; }
    return 0;
}
static void partials_free(partials *p) { free(p->acc); free(p->blk); }
static double *acc_of(const partials *p, int member) { return p->acc + (size_t)member * p->width; }
static float *blk_of(const partials *p, int member) { return p->blk + (size_t)member * p->width; }

static void flush_block(double *acc, float *blk, int width) {
    for (int i = 0; i < width; i++) { acc[i] += blk[i]; blk[i] = 0.0f; }
}

// out[i] (+)= Σ over the first `members` members' partials, in member order.
static void partials_sum(const partials *p, int members, int offset, int count, double *out) {
    for (int i = 0; i < count; i++) {
        double s = 0.0;
        for (int m = 0; m < members; m++) s += acc_of(p, m)[offset + i];
        out[i] = s;
    }
}
static void partials_add_to(const partials *p, int members, int offset, int count, float *dst) {
    for (int i = 0; i < count; i++) {
        double s = 0.0;
        for (int m = 0; m < members; m++) s += acc_of(p, m)[offset + i];
        dst[i] = (float)((double)dst[i] + s);
    }
}

// Rows summed in float before a flush into double: short enough that the float error stays near
// a few ulp of the block's magnitude.
#define BLOCK_ROWS 32

#if CK_X86
__attribute__((target("avx2,fma"))) static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// Adds the 8 floats of `v` to `acc` in double, 4 lanes each way.
__attribute__((target("avx2,fma"))) static inline void add_wide(__m256d *lo, __m256d *hi, __m256 v) {
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

__attribute__((target("avx2,fma"))) static void flush_block_avx2(double *acc, float *blk, int width) {
    int i = 0;
    for (; i + 8 <= width; i += 8) {
        __m256 b = _mm256_loadu_ps(blk + i);
        _mm256_storeu_pd(acc + i, _mm256_add_pd(_mm256_loadu_pd(acc + i), _mm256_cvtps_pd(_mm256_castps256_ps128(b))));
        _mm256_storeu_pd(acc + i + 4, _mm256_add_pd(_mm256_loadu_pd(acc + i + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1))));
        _mm256_storeu_ps(blk + i, _mm256_setzero_ps());
    }
    flush_block(acc + i, blk + i, width - i);
}
#endif

static void flush(int vec, double *acc, float *blk, int width) {
#if CK_X86
    if (vec) { flush_block_avx2(acc, blk, width); return; }
#endif
    (void)vec;
    flush_block(acc, blk, width);
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void add_span_avx2(float *d, const float *s, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_loadu_ps(d + i), _mm256_loadu_ps(s + i)));
        _mm256_storeu_ps(d + i + 8, _mm256_add_ps(_mm256_loadu_ps(d + i + 8), _mm256_loadu_ps(s + i + 8)));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_loadu_ps(d + i), _mm256_loadu_ps(s + i)));
    for (; i < n; i++) d[i] += s[i];
}
#endif

static void add_span(int vec, float *d, const float *s, long n) {
#if CK_X86
    if (vec) { add_span_avx2(d, s, n); return; }
#endif
    (void)vec;
    for (long i = 0; i < n; i++) d[i] += s[i];
}

// ==== LayerNorm ====

typedef struct {
    const float *x, *dy, *w, *b; float *y, *dx; float *mean, *rstd;
    long rows; int cols; float eps; int accumulate, vec; partials part;
} ln_job;

// Forward, storing each row's mean and 1/sqrt(var + eps); the AVX2 path has ck_layernorm's float
// arithmetic, so its outputs equal the inference LayerNorm's.
static void ln_forward_scalar(ln_job *j, long r0, long r1) {
    int cols = j->cols;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * cols;
        float *y = j->y + r * cols;
        double s = 0.0;
        for (int i = 0; i < cols; i++) s += x[i];
        float mean = (float)(s / cols);
        double v = 0.0;
        for (int i = 0; i < cols; i++) { double d = (double)x[i] - mean; v += d * d; }
        float rstd = 1.0f / sqrtf((float)(v / cols) + j->eps);
        j->mean[r] = mean;
        j->rstd[r] = rstd;
        for (int i = 0; i < cols; i++) y[i] = (x[i] - mean) * rstd * j->w[i] + j->b[i];
    }
}

static void ln_forward_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    ln_forward_scalar(ctx, r0, r1);
}

void ck_layernorm_forward(const float *x, float *y, long rows, int cols, const float *weight, const float *bias, float eps,
                          float *mean, float *rstd) {
    if (rows <= 0 || cols <= 0) return;
    // The vector path is the inference kernel's (layers.c), keeping the statistics.
    if (vector_path() && ck_layernorm_saving(x, y, 0, rows, cols, weight, bias, eps, mean, rstd) == 0) return;
    ln_job j = {.x = x, .y = y, .w = weight, .b = bias, .mean = mean, .rstd = rstd, .rows = rows, .cols = cols, .eps = eps,
                .vec = vector_path()};
    run_ranges(ln_forward_range, &j, rows, 1, threads_for((double)rows * cols, rows));
}

// Backward, per row: xhat = (x − mean)·rstd, g = dy·w, dx = rstd·(g − mean(g) − xhat·mean(g·xhat));
// the member's block partials gather dy·xhat (weight) and dy (bias): acc[0, cols) and [cols, 2·cols).
static void ln_backward_scalar(ln_job *j, long r0, long r1, int member) {
    int cols = j->cols;
    double *acc = acc_of(&j->part, member);
    float *blk = blk_of(&j->part, member);
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * cols, *dy = j->dy + r * cols;
        float *dx = j->dx + r * cols;
        float m = j->mean[r], rs = j->rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (int i = 0; i < cols; i++) {
            float xh = (x[i] - m) * rs, g = dy[i] * j->w[i];
            sg += g;
            sgx += (double)g * xh;
            blk[i] += dy[i] * xh;
            blk[cols + i] += dy[i];
        }
        float a = (float)(sg / cols), b = (float)(sgx / cols);
        for (int i = 0; i < cols; i++) {
            float xh = (x[i] - m) * rs, g = dy[i] * j->w[i];
            float v = rs * (g - a - xh * b);
            dx[i] = j->accumulate ? dx[i] + v : v;
        }
        if ((r - r0) % BLOCK_ROWS == BLOCK_ROWS - 1 || r == r1 - 1) flush_block(acc, blk, 2 * cols);
    }
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void ln_backward_avx2(ln_job *j, long r0, long r1, int member) {
    int cols = j->cols, vec = cols / 8 * 8;
    double *acc = acc_of(&j->part, member);
    float *bw = blk_of(&j->part, member), *bb = bw + cols;
    const float *w = j->w;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * cols, *dy = j->dy + r * cols;
        float *dx = j->dx + r * cols;
        float m = j->mean[r], rs = j->rstd[r];
        __m256 vm = _mm256_set1_ps(m), vrs = _mm256_set1_ps(rs);
        __m256 sg0 = _mm256_setzero_ps(), sg1 = sg0, sx0 = sg0, sx1 = sg0;
        int i = 0;
        for (; i + 16 <= vec; i += 16) {
            __m256 d0 = _mm256_loadu_ps(dy + i), d1 = _mm256_loadu_ps(dy + i + 8);
            __m256 xh0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vrs);
            __m256 xh1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm), vrs);
            __m256 g0 = _mm256_mul_ps(d0, _mm256_loadu_ps(w + i)), g1 = _mm256_mul_ps(d1, _mm256_loadu_ps(w + i + 8));
            sg0 = _mm256_add_ps(sg0, g0); sg1 = _mm256_add_ps(sg1, g1);
            sx0 = _mm256_fmadd_ps(g0, xh0, sx0); sx1 = _mm256_fmadd_ps(g1, xh1, sx1);
            _mm256_storeu_ps(bw + i, _mm256_fmadd_ps(d0, xh0, _mm256_loadu_ps(bw + i)));
            _mm256_storeu_ps(bw + i + 8, _mm256_fmadd_ps(d1, xh1, _mm256_loadu_ps(bw + i + 8)));
            _mm256_storeu_ps(bb + i, _mm256_add_ps(d0, _mm256_loadu_ps(bb + i)));
            _mm256_storeu_ps(bb + i + 8, _mm256_add_ps(d1, _mm256_loadu_ps(bb + i + 8)));
        }
        for (; i < vec; i += 8) {
            __m256 d0 = _mm256_loadu_ps(dy + i);
            __m256 xh0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vrs);
            __m256 g0 = _mm256_mul_ps(d0, _mm256_loadu_ps(w + i));
            sg0 = _mm256_add_ps(sg0, g0);
            sx0 = _mm256_fmadd_ps(g0, xh0, sx0);
            _mm256_storeu_ps(bw + i, _mm256_fmadd_ps(d0, xh0, _mm256_loadu_ps(bw + i)));
            _mm256_storeu_ps(bb + i, _mm256_add_ps(d0, _mm256_loadu_ps(bb + i)));
        }
        float sg = hsum(_mm256_add_ps(sg0, sg1)), sgx = hsum(_mm256_add_ps(sx0, sx1));
        for (; i < cols; i++) {
            float xh = (x[i] - m) * rs, g = dy[i] * w[i];
            sg += g;
            sgx = fmaf(g, xh, sgx);
            bw[i] = fmaf(dy[i], xh, bw[i]);
            bb[i] += dy[i];
        }
        float a = sg / (float)cols, b = sgx / (float)cols;
        __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
        for (i = 0; i < vec; i += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vrs);
            __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i));
            __m256 v = _mm256_mul_ps(vrs, _mm256_fnmadd_ps(xh, vb, _mm256_sub_ps(g, va)));
            if (j->accumulate) v = _mm256_add_ps(_mm256_loadu_ps(dx + i), v);
            _mm256_storeu_ps(dx + i, v);
        }
        for (; i < cols; i++) {
            float xh = (x[i] - m) * rs, g = dy[i] * w[i];
            float v = rs * fmaf(-xh, b, g - a);
            dx[i] = j->accumulate ? dx[i] + v : v;
        }
        if ((r - r0) % BLOCK_ROWS == BLOCK_ROWS - 1 || r == r1 - 1) flush_block_avx2(acc, bw, 2 * cols);
    }
}
#endif

static void ln_backward_range(void *ctx, long r0, long r1, int member) {
    ln_job *j = ctx;
#if CK_X86
    if (j->vec) { ln_backward_avx2(j, r0, r1, member); return; }
#endif
    ln_backward_scalar(j, r0, r1, member);
}

int ck_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd, const float *weight,
                          long rows, int cols, float *dx, int accumulate, float *dweight, float *dbias) {
    if (rows <= 0 || cols <= 0) return 0;
    int threads = threads_for((double)rows * cols * 2, rows);
    ln_job j = {.x = x, .dy = dy, .w = weight, .dx = dx, .mean = (float *)mean, .rstd = (float *)rstd, .rows = rows,
                .cols = cols, .accumulate = accumulate, .vec = vector_path()};
    if (partials_init(&j.part, 2 * cols, threads) != 0) return -1;
    int members = run_ranges(ln_backward_range, &j, rows, 1, threads);
    partials_add_to(&j.part, members, 0, cols, dweight);
    partials_add_to(&j.part, members, cols, cols, dbias);
    partials_free(&j.part);
    return 0;
}

// ==== GELU (exact erf) ====
//
// The vector path uses vecmath.h's erf fit (the inference GEMM epilogue's, so training and
// inference compute the same activations): GELU within 2.1e-7·max(|x|, 1), GELU' within about
// 3e-7·max(|x|, 1) against float64. The scalar fallback computes in double through erfc.

#define INV_SQRT_2PI 0.3989422804014327

#if CK_X86
__attribute__((target("avx2,fma"))) static inline __m256 gelu8(__m256 v) { return gelu_ps(v); }

// dy·(Φ(x) + x·φ(x)).
__attribute__((target("avx2,fma"))) static inline __m256 gelu_grad8(__m256 x, __m256 dy) {
    return _mm256_mul_ps(dy, gelu_derivative_ps(x));
}

// Loads the `n` < 8 values at p, zero-padded (tails).
__attribute__((target("avx2,fma"))) static inline __m256 load_tail(const float *p, long n) {
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(t);
}
__attribute__((target("avx2,fma"))) static inline void store_tail(float *p, __m256 v, long n) {
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}

__attribute__((target("avx2,fma"))) static void gelu_avx2(const float *x, float *y, long b, long e) {
    long i = b;
    // Two vectors per step: four independent double chains for the out-of-order core.
    for (; i + 16 <= e; i += 16) {
        __m256 a = gelu8(_mm256_loadu_ps(x + i)), c = gelu8(_mm256_loadu_ps(x + i + 8));
        _mm256_storeu_ps(y + i, a); _mm256_storeu_ps(y + i + 8, c);
    }
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < e) store_tail(y + i, gelu8(load_tail(x + i, e - i)), e - i);
}

__attribute__((target("avx2,fma"))) static void gelu_backward_avx2(const float *x, const float *dy, float *dx, long b, long e) {
    long i = b;
    for (; i + 16 <= e; i += 16) {
        __m256 a = gelu_grad8(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i));
        __m256 c = gelu_grad8(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(dy + i + 8));
        _mm256_storeu_ps(dx + i, a); _mm256_storeu_ps(dx + i + 8, c);
    }
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(dx + i, gelu_grad8(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i)));
    if (i < e) store_tail(dx + i, gelu_grad8(load_tail(x + i, e - i), load_tail(dy + i, e - i)), e - i);
}
#endif

static double phi_scalar(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }

typedef struct { const float *x, *dy; float *y; int vec; } gelu_job;

static void gelu_range(void *ctx, long b, long e, int member) {
    (void)member;
    gelu_job *j = ctx;
#if CK_X86
    if (j->vec) { gelu_avx2(j->x, j->y, b, e); return; }
#endif
    for (long i = b; i < e; i++) { double x = j->x[i]; j->y[i] = (float)(x * phi_scalar(x)); }
}

static void gelu_backward_range(void *ctx, long b, long e, int member) {
    (void)member;
    gelu_job *j = ctx;
#if CK_X86
    if (j->vec) { gelu_backward_avx2(j->x, j->dy, j->y, b, e); return; }
#endif
    for (long i = b; i < e; i++) {
        double x = j->x[i];
        j->y[i] = (float)((double)j->dy[i] * (phi_scalar(x) + x * exp(-0.5 * x * x) * INV_SQRT_2PI));
    }
}

void ck_gelu_forward(const float *x, float *y, long count) {
    gelu_job j = {x, NULL, y, vector_path()};
    run_ranges(gelu_range, &j, count, 64, threads_for((double)count * 8, (count + 63) / 64));
}

void ck_gelu_backward(const float *x, const float *dy, float *dx, long count) {
    gelu_job j = {x, dy, dx, vector_path()};
    run_ranges(gelu_backward_range, &j, count, 64, threads_for((double)count * 8, (count + 63) / 64));
}

// ---- GELU between two bf16 matmuls (bfloat16 precision) ----
//
// As autocast runs an MLP: the first Linear's output is rounded to bfloat16 (kept for the
// backward), GELU is computed from that in float32 and its result rounded to bfloat16, the second
// Linear's operand. Nothing float32 of the [rows, 4·C] activation stays alive.

typedef struct { const float *x; const float *dy; uint16_t *xb, *yb; float *dx; int vec; } gelu_bf16_job;

#if CK_X86
// With `x`: xb = bf16(x) first (kept); without: xb as given (the backward's recompute). Then
// yb = bf16(GELU(xb)), the same arithmetic either way, so a recompute is bit for bit.
__attribute__((target("avx2,fma"))) static void gelu_bf16_avx2(const gelu_bf16_job *j, long b, long e) {
    long i = b;
    for (; i + 8 <= e; i += 8) {
        __m128i xb;
        if (j->x) { xb = bf16_bits(_mm256_loadu_ps(j->x + i)); _mm_storeu_si128((__m128i *)(j->xb + i), xb); }
        else xb = _mm_loadu_si128((const __m128i *)(j->xb + i));
        __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(xb), 16));
        _mm_storeu_si128((__m128i *)(j->yb + i), bf16_bits(gelu_ps(x)));
    }
    for (; i < e; i++) {
        if (j->x) j->xb[i] = bf16_bits_scalar(j->x[i]);
        float t[8] = {bf16_widen_scalar(j->xb[i])}, u[8];
        _mm256_storeu_ps(u, gelu_ps(_mm256_loadu_ps(t)));
        j->yb[i] = bf16_bits_scalar(u[0]);
    }
}

__attribute__((target("avx2,fma"))) static void gelu_backward_bf16_avx2(const gelu_bf16_job *j, long b, long e) {
    long i = b;
    for (; i + 8 <= e; i += 8)
        _mm256_storeu_ps(j->dx + i, gelu_grad8(bf16_widen(j->xb + i), _mm256_loadu_ps(j->dy + i)));
    for (; i < e; i++) {
        float t[8] = {bf16_widen_scalar(j->xb[i])}, g[8] = {j->dy[i]}, u[8];
        _mm256_storeu_ps(u, gelu_grad8(_mm256_loadu_ps(t), _mm256_loadu_ps(g)));
        j->dx[i] = u[0];
    }
}
#endif

static void gelu_bf16_range(void *ctx, long b, long e, int member) {
    (void)member;
    gelu_bf16_job *j = ctx;
#if CK_X86
    if (j->vec) { gelu_bf16_avx2(j, b, e); return; }
#endif
    for (long i = b; i < e; i++) {
        if (j->x) j->xb[i] = bf16_bits_scalar(j->x[i]);
        double x = bf16_widen_scalar(j->xb[i]);
        j->yb[i] = bf16_bits_scalar((float)(x * phi_scalar(x)));
    }
}

static void gelu_backward_bf16_range(void *ctx, long b, long e, int member) {
    (void)member;
    gelu_bf16_job *j = ctx;
#if CK_X86
    if (j->vec) { gelu_backward_bf16_avx2(j, b, e); return; }
#endif
    for (long i = b; i < e; i++) {
        double x = bf16_widen_scalar(j->xb[i]);
        j->dx[i] = (float)((double)j->dy[i] * (phi_scalar(x) + x * exp(-0.5 * x * x) * INV_SQRT_2PI));
    }
}

void ck_gelu_bf16(const uint16_t *x_bf16, uint16_t *y_bf16, long count) {
    gelu_bf16_job j = {NULL, NULL, (uint16_t *)x_bf16, y_bf16, NULL, vector_path()};
    run_ranges(gelu_bf16_range, &j, count, 64, threads_for((double)count * 8, (count + 63) / 64));
}

void ck_gelu_forward_bf16(const float *x, uint16_t *x_bf16, uint16_t *y_bf16, long count) {
    gelu_bf16_job j = {x, NULL, x_bf16, y_bf16, NULL, vector_path()};
    run_ranges(gelu_bf16_range, &j, count, 64, threads_for((double)count * 8, (count + 63) / 64));
}

void ck_gelu_backward_bf16(const uint16_t *x_bf16, const float *dy, float *dx, long count) {
    gelu_bf16_job j = {NULL, dy, (uint16_t *)x_bf16, NULL, dx, vector_path()};
    run_ranges(gelu_backward_bf16_range, &j, count, 64, threads_for((double)count * 8, (count + 63) / 64));
}

// ==== softmax over the last axis ====

typedef struct { const float *x; float *p; int cols; int vec; } sm_job;

#if CK_X86
// exp(x) for float32 x ≤ 88: 2^n·exp(r), |r| ≤ ln2/2 (two-part ln2), Cephes' degree-7 form
// (within 2 ulp); 0 below −87.33 (where exp(x) leaves the normal range), NaN stays NaN.
__attribute__((target("avx2,fma"))) static inline __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));  // max/min(a, b) return b when either is NaN
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) static void softmax_rows_avx2(sm_job *j, long r0, long r1) {
    int cols = j->cols, vec = cols / 8 * 8;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * cols;
        float *p = j->p + r * cols;
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
        int i = 0;
        for (; i + 16 <= vec; i += 16) { m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i)); m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8)); }
        for (; i < vec; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
        m0 = _mm256_max_ps(m0, m1);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float mx = _mm_cvtss_f32(h);
        for (; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
        __m256 vm = _mm256_set1_ps(mx);
        // Exponentials into p (x's row is read before it is overwritten when they alias); the sum
        // in float over 16-vector blocks, gathered in double.
        __m256d dlo = _mm256_setzero_pd(), dhi = dlo;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        for (i = 0; i + 16 <= vec; i += 16) {
            __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)), e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
            _mm256_storeu_ps(p + i, e0); _mm256_storeu_ps(p + i + 8, e1);
            s0 = _mm256_add_ps(s0, e0); s1 = _mm256_add_ps(s1, e1);
            if ((i & 255) == 240) { add_wide(&dlo, &dhi, _mm256_add_ps(s0, s1)); s0 = _mm256_setzero_ps(); s1 = s0; }
        }
        for (; i < vec; i += 8) {
            __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
            _mm256_storeu_ps(p + i, e0);
            s0 = _mm256_add_ps(s0, e0);
        }
        add_wide(&dlo, &dhi, _mm256_add_ps(s0, s1));
        double sum = hsum_pd(_mm256_add_pd(dlo, dhi));
        if (i < cols) {
            __m256 e0 = exp_ps(_mm256_sub_ps(load_tail(x + i, cols - i), vm));
            float t[8];
            _mm256_storeu_ps(t, e0);
            for (int q = 0; q < cols - i; q++) { p[i + q] = t[q]; sum += t[q]; }
        }
        __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
        for (i = 0; i < vec; i += 8) _mm256_storeu_ps(p + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), inv));
        float invs = (float)(1.0 / sum);
        for (; i < cols; i++) p[i] *= invs;
    }
}

#endif

static void softmax_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    sm_job *j = ctx;
#if CK_X86
    if (j->vec) { softmax_rows_avx2(j, r0, r1); return; }
#endif
    int cols = j->cols;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * cols;
        float *p = j->p + r * cols;
        float mx = -INFINITY;
        for (int i = 0; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
        double sum = 0.0;
        for (int i = 0; i < cols; i++) { p[i] = expf(x[i] - mx); sum += p[i]; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < cols; i++) p[i] *= inv;
    }
}


// Softmax backward: ds = scale·p·(dP − Σ p·dP), the dot product in float over blocks, gathered in
// double. The probabilities and dS are float32, or bfloat16 (what the bf16 forward kept, and the
// operand of the two matmuls that follow: the float32 arithmetic on the exactly widened
// probabilities, rounded once, without a float32 copy of either [rows, cols] array).
typedef struct { const void *p; const float *dp; void *ds; int cols; float scale; int vec, bf16; } smb_job;

static inline float smb_p1(const smb_job *j, long i) {
    return j->bf16 ? bf16_widen_scalar(((const uint16_t *)j->p)[i]) : ((const float *)j->p)[i];
}
static inline void smb_ds1(const smb_job *j, long i, float v) {
    if (j->bf16) ((uint16_t *)j->ds)[i] = bf16_bits_scalar(v); else ((float *)j->ds)[i] = v;
}

#if CK_X86
__attribute__((target("avx2,fma"))) static inline __m256 smb_p8(const smb_job *j, long i) {
    return j->bf16 ? bf16_widen((const uint16_t *)j->p + i) : _mm256_loadu_ps((const float *)j->p + i);
}
__attribute__((target("avx2,fma"))) static inline void smb_ds8(const smb_job *j, long i, __m256 v) {
    if (j->bf16) _mm_storeu_si128((__m128i *)((uint16_t *)j->ds + i), bf16_bits(v)); else _mm256_storeu_ps((float *)j->ds + i, v);
}

__attribute__((target("avx2,fma"))) static void softmax_backward_avx2(const smb_job *j, long r0, long r1) {
    int cols = j->cols, vec = cols / 8 * 8;
    for (long r = r0; r < r1; r++) {
        long o = r * cols;
        const float *dp = j->dp + o;
        __m256d dlo = _mm256_setzero_pd(), dhi = dlo;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        int i = 0;
        for (; i + 16 <= vec; i += 16) {
            s0 = _mm256_fmadd_ps(smb_p8(j, o + i), _mm256_loadu_ps(dp + i), s0);
            s1 = _mm256_fmadd_ps(smb_p8(j, o + i + 8), _mm256_loadu_ps(dp + i + 8), s1);
            if ((i & 255) == 240) { add_wide(&dlo, &dhi, _mm256_add_ps(s0, s1)); s0 = _mm256_setzero_ps(); s1 = s0; }
        }
        for (; i < vec; i += 8) s0 = _mm256_fmadd_ps(smb_p8(j, o + i), _mm256_loadu_ps(dp + i), s0);
        add_wide(&dlo, &dhi, _mm256_add_ps(s0, s1));
        double dot = hsum_pd(_mm256_add_pd(dlo, dhi));
        for (; i < cols; i++) dot += (double)smb_p1(j, o + i) * dp[i];
        float d = (float)dot, sc = j->scale;
        __m256 vd = _mm256_set1_ps(d), vs = _mm256_set1_ps(sc);
        // dS may be dP (float32, in place): each element is read before it is written.
        for (i = 0; i < vec; i += 8)
            smb_ds8(j, o + i, _mm256_mul_ps(_mm256_mul_ps(vs, smb_p8(j, o + i)), _mm256_sub_ps(_mm256_loadu_ps(dp + i), vd)));
        for (; i < cols; i++) smb_ds1(j, o + i, sc * smb_p1(j, o + i) * (dp[i] - d));
    }
}
#endif

static void softmax_backward_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    smb_job *j = ctx;
#if CK_X86
    if (j->vec) { softmax_backward_avx2(j, r0, r1); return; }
#endif
    int cols = j->cols;
    for (long r = r0; r < r1; r++) {
        long o = r * cols;
        const float *dp = j->dp + o;
        double dot = 0.0;
        for (int i = 0; i < cols; i++) dot += (double)smb_p1(j, o + i) * dp[i];
        float d = (float)dot;
        for (int i = 0; i < cols; i++) smb_ds1(j, o + i, j->scale * smb_p1(j, o + i) * (dp[i] - d));
    }
}

static void softmax_backward(const void *p, const float *dp, void *ds, int bf16, long rows, int cols, float scale) {
    if (rows <= 0 || cols <= 0) return;
    smb_job j = {p, dp, ds, cols, scale, vector_path(), bf16};
    run_ranges(softmax_backward_range, &j, rows, 1, threads_for((double)rows * cols * 2, rows));
}

void ck_softmax_backward_bf16(const uint16_t *p, const float *dp, uint16_t *ds, long rows, int cols, float scale) {
    softmax_backward(p, dp, ds, 1, rows, cols, scale);
}

void ck_softmax_forward(const float *x, float *p, long rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    sm_job j = {x, p, cols, vector_path()};
    run_ranges(softmax_range, &j, rows, 1, threads_for((double)rows * cols * 4, rows));
}

void ck_softmax_backward(const float *p, const float *dp, float *ds, long rows, int cols, float scale) {
    softmax_backward(p, dp, ds, 0, rows, cols, scale);
}

// ==== per-channel sums over rows: column sums, BatchNorm ====
//
// One job type for the reductions over rows of [rows, c] data: `kind` picks what is summed per
// element into the member's partial (width c, or 2c for two sums): through float blocks for the
// gradients, straight in double for BatchNorm's statistics.

enum { SUM_X, SUM_BN_BACKWARD, SUM_X_DOUBLE, SUM_CENTRED_SQUARES };

typedef struct {
    const float *x, *dy; const float *mean, *rstd; long rows; int c, kind, vec; partials part;
    float *out;  // column sums split by columns
} red_job;

static void red_rows_scalar(red_job *j, long r0, long r1, int member) {
    int c = j->c;
    double *acc = acc_of(&j->part, member);
    float *blk = blk_of(&j->part, member);
    int width = j->kind == SUM_BN_BACKWARD ? 2 * c : c;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c;
        if (j->kind == SUM_X_DOUBLE) { for (int i = 0; i < c; i++) acc[i] += x[i]; continue; }
        if (j->kind == SUM_CENTRED_SQUARES) {
            for (int i = 0; i < c; i++) { double d = (double)x[i] - j->mean[i]; acc[i] += d * d; }
            continue;
        }
        if (j->kind == SUM_X) for (int i = 0; i < c; i++) blk[i] += x[i];
        else {
            const float *dy = j->dy + r * c;
            for (int i = 0; i < c; i++) { blk[i] += dy[i]; blk[c + i] += dy[i] * ((x[i] - j->mean[i]) * j->rstd[i]); }
        }
        if ((r - r0) % BLOCK_ROWS == BLOCK_ROWS - 1 || r == r1 - 1) flush_block(acc, blk, width);
    }
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void red_rows_avx2(red_job *j, long r0, long r1, int member) {
    int c = j->c, vec = c / 8 * 8;
    double *acc = acc_of(&j->part, member);
    float *blk = blk_of(&j->part, member);
    int width = j->kind == SUM_BN_BACKWARD ? 2 * c : c;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c;
        int i = 0;
        if (j->kind == SUM_X_DOUBLE) {
            for (; i < vec; i += 8) {
                __m256 v = _mm256_loadu_ps(x + i);
                _mm256_storeu_pd(acc + i, _mm256_add_pd(_mm256_loadu_pd(acc + i), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
                _mm256_storeu_pd(acc + i + 4, _mm256_add_pd(_mm256_loadu_pd(acc + i + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
            }
            for (; i < c; i++) acc[i] += x[i];
            continue;
        }
        if (j->kind == SUM_CENTRED_SQUARES) {
            for (; i < vec; i += 8) {
                __m256 v = _mm256_loadu_ps(x + i), m = _mm256_loadu_ps(j->mean + i);
                __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_castps256_ps128(m)));
                __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(m, 1)));
                _mm256_storeu_pd(acc + i, _mm256_fmadd_pd(d0, d0, _mm256_loadu_pd(acc + i)));
                _mm256_storeu_pd(acc + i + 4, _mm256_fmadd_pd(d1, d1, _mm256_loadu_pd(acc + i + 4)));
            }
            for (; i < c; i++) { double d = (double)x[i] - j->mean[i]; acc[i] += d * d; }
            continue;
        }
        if (j->kind == SUM_X) {
            for (; i < vec; i += 8) _mm256_storeu_ps(blk + i, _mm256_add_ps(_mm256_loadu_ps(blk + i), _mm256_loadu_ps(x + i)));
            for (; i < c; i++) blk[i] += x[i];
        } else {
            const float *dy = j->dy + r * c;
            for (; i < vec; i += 8) {
                __m256 g = _mm256_loadu_ps(dy + i);
                __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(j->mean + i)), _mm256_loadu_ps(j->rstd + i));
                _mm256_storeu_ps(blk + i, _mm256_add_ps(_mm256_loadu_ps(blk + i), g));
                _mm256_storeu_ps(blk + c + i, _mm256_fmadd_ps(g, xh, _mm256_loadu_ps(blk + c + i)));
            }
            for (; i < c; i++) { blk[i] += dy[i]; blk[c + i] = fmaf(dy[i], (x[i] - j->mean[i]) * j->rstd[i], blk[c + i]); }
        }
        if ((r - r0) % BLOCK_ROWS == BLOCK_ROWS - 1 || r == r1 - 1) flush_block_avx2(acc, blk, width);
    }
}
#endif

static void red_range(void *ctx, long r0, long r1, int member) {
    red_job *j = ctx;
#if CK_X86
    if (j->vec) { red_rows_avx2(j, r0, r1, member); return; }
#endif
    red_rows_scalar(j, r0, r1, member);
}

// Runs the reduction `kind` over all rows; `sums` gets the width-wide totals (double).
static int reduce_rows(red_job *j, double *sums) {
    int width = j->kind == SUM_BN_BACKWARD ? 2 * j->c : j->c;
    int threads = threads_for((double)j->rows * width, j->rows);
    if (partials_init(&j->part, width, threads) != 0) return -1;
    int members = run_ranges(red_range, j, j->rows, 1, threads);
    partials_sum(&j->part, members, 0, width, sums);
    partials_free(&j->part);
    return 0;
}

// A column sum split by columns (wide matrices): every member takes all rows of its columns, so
// no partials are needed and the result does not depend on the thread count.
static void colsum_columns(void *ctx, long c0, long c1, int member) {
    (void)member;
    red_job *j = ctx;
    int c = j->c, width = (int)(c1 - c0);
    float blk[256];
    double acc[256];
    for (int base = 0; base < width; base += 256) {
        int n = width - base < 256 ? width - base : 256;
        const float *x = j->x + c0 + base;
        memset(blk, 0, sizeof blk);
        memset(acc, 0, sizeof acc);
        for (long r = 0; r < j->rows; r++) {
            add_span(j->vec, blk, x + r * c, n);
            if (r % BLOCK_ROWS == BLOCK_ROWS - 1 || r == j->rows - 1) flush(j->vec, acc, blk, n);
        }
        float *out = j->out + c0 + base;
        for (int i = 0; i < n; i++) out[i] = (float)((double)out[i] + acc[i]);
    }
}

int ck_column_sums(const float *x, long rows, int cols, float *out) {
    if (rows <= 0 || cols <= 0) return 0;
    int team = threads_for((double)rows * cols, rows > cols ? rows : cols);
    red_job j = {.x = x, .rows = rows, .c = cols, .kind = SUM_X, .vec = vector_path(), .out = out};
    if (team > 1 && cols >= 256 * team) {
        run_ranges(colsum_columns, &j, cols, 8, team);
        return 0;
    }
    double *sums = malloc((size_t)cols * sizeof(double));
    if (!sums || reduce_rows(&j, sums) != 0) { free(sums); return -1; }
    for (int i = 0; i < cols; i++) out[i] = (float)((double)out[i] + sums[i]);
    free(sums);
    return 0;
}

int ck_batchnorm_statistics(const float *x, long rows, int channels, float *mean, float *variance) {
    if (channels <= 0) return 0;
    if (rows <= 0) {
        for (int i = 0; i < channels; i++) mean[i] = variance[i] = NAN;
        return 0;
    }
    double *sums = malloc((size_t)channels * sizeof(double));
    if (!sums) return -1;
    red_job j = {.x = x, .rows = rows, .c = channels, .kind = SUM_X_DOUBLE, .vec = vector_path()};
    if (reduce_rows(&j, sums) != 0) { free(sums); return -1; }
    // Squares about the float mean m_f (x − m_f exact in double); with the exact mean m,
    // Σ(x − m_f)² = Σ(x − m)² + N(m − m_f)².
    for (int i = 0; i < channels; i++) { sums[i] /= (double)rows; mean[i] = (float)sums[i]; }
    double *sq = malloc((size_t)channels * sizeof(double));
    red_job k = {.x = x, .mean = mean, .rows = rows, .c = channels, .kind = SUM_CENTRED_SQUARES, .vec = j.vec};
    if (!sq || reduce_rows(&k, sq) != 0) { free(sums); free(sq); return -1; }
    for (int i = 0; i < channels; i++) {
        double off = sums[i] - (double)mean[i], v = sq[i] / (double)rows - off * off;
        variance[i] = (float)(v > 0.0 ? v : 0.0);
    }
    free(sums);
    free(sq);
    return 0;
}

// ---- BatchNorm elementwise passes ----

typedef struct {
    const float *x, *dy; const float *mean, *rstd, *w, *b; float *y; int c, vec;
    const float *k1, *a, *bb;  // backward: weight·rstd, Σdy/N, Σdy·xhat/N per channel
} bn_job;

static void bn_forward_scalar(void *ctx, long r0, long r1, int member) {
    (void)member;
    bn_job *j = ctx;
    int c = j->c;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c;
        float *y = j->y + r * c;
        for (int i = 0; i < c; i++) y[i] = (x[i] - j->mean[i]) * j->rstd[i] * j->w[i] + j->b[i];
    }
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void bn_forward_avx2(void *ctx, long r0, long r1, int member) {
    (void)member;
    bn_job *j = ctx;
    int c = j->c, vec = c / 8 * 8;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c;
        float *y = j->y + r * c;
        int i = 0;
        for (; i < vec; i += 8) {
            __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(j->mean + i)), _mm256_loadu_ps(j->rstd + i));
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(v, _mm256_loadu_ps(j->w + i), _mm256_loadu_ps(j->b + i)));
        }
        for (; i < c; i++) y[i] = fmaf((x[i] - j->mean[i]) * j->rstd[i], j->w[i], j->b[i]);
    }
}

__attribute__((target("avx2,fma"))) static void bn_backward_avx2(void *ctx, long r0, long r1, int member) {
    (void)member;
    bn_job *j = ctx;
    int c = j->c, vec = c / 8 * 8;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c, *dy = j->dy + r * c;
        float *dx = j->y + r * c;
        int i = 0;
        for (; i < vec; i += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(j->mean + i)), _mm256_loadu_ps(j->rstd + i));
            __m256 t = _mm256_fnmadd_ps(xh, _mm256_loadu_ps(j->bb + i), _mm256_sub_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(j->a + i)));
            _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(j->k1 + i), t));
        }
        for (; i < c; i++) {
            float xh = (x[i] - j->mean[i]) * j->rstd[i];
            dx[i] = j->k1[i] * fmaf(-xh, j->bb[i], dy[i] - j->a[i]);
        }
    }
}
#endif

static void bn_backward_scalar(void *ctx, long r0, long r1, int member) {
    (void)member;
    bn_job *j = ctx;
    int c = j->c;
    for (long r = r0; r < r1; r++) {
        const float *x = j->x + r * c, *dy = j->dy + r * c;
        float *dx = j->y + r * c;
        for (int i = 0; i < c; i++) {
            float xh = (x[i] - j->mean[i]) * j->rstd[i];
            dx[i] = j->k1[i] * (dy[i] - j->a[i] - xh * j->bb[i]);
        }
    }
}

void ck_batchnorm_forward(const float *x, float *y, long rows, int channels, const float *mean, const float *rstd,
                          const float *weight, const float *bias) {
    if (rows <= 0 || channels <= 0) return;
    bn_job j = {.x = x, .mean = mean, .rstd = rstd, .w = weight, .b = bias, .y = y, .c = channels, .vec = vector_path()};
    range_fn fn = bn_forward_scalar;
#if CK_X86
    if (j.vec) fn = bn_forward_avx2;
#endif
    run_ranges(fn, &j, rows, 1, threads_for((double)rows * channels, rows));
}

int ck_batchnorm_backward(const float *dy, const float *x, const float *mean, const float *rstd, const float *weight,
                          long rows, int channels, float *dx, float *dweight, float *dbias) {
    if (rows <= 0 || channels <= 0) return 0;
    int c = channels;
    double *sums = malloc((size_t)2 * c * sizeof(double));
    float *coef = malloc((size_t)3 * c * sizeof(float));
    if (!sums || !coef) { free(sums); free(coef); return -1; }
    red_job k = {.x = x, .dy = dy, .mean = mean, .rstd = rstd, .rows = rows, .c = c, .kind = SUM_BN_BACKWARD, .vec = vector_path()};
    if (reduce_rows(&k, sums) != 0) { free(sums); free(coef); return -1; }
    for (int i = 0; i < c; i++) {
        double sdy = sums[i], sdyx = sums[c + i];
        coef[i] = weight[i] * rstd[i];
        coef[c + i] = (float)(sdy / (double)rows);
        coef[2 * c + i] = (float)(sdyx / (double)rows);
        dweight[i] = (float)((double)dweight[i] + sdyx);
        dbias[i] = (float)((double)dbias[i] + sdy);
    }
    bn_job j = {.x = x, .dy = dy, .mean = mean, .rstd = rstd, .y = dx, .c = c, .vec = k.vec,
                .k1 = coef, .a = coef + c, .bb = coef + 2 * c};
    range_fn fn = bn_backward_scalar;
#if CK_X86
    if (j.vec) fn = bn_backward_avx2;
#endif
    run_ranges(fn, &j, rows, 1, threads_for((double)rows * c, rows));
    free(sums);
    free(coef);
    return 0;
}

// ==== depthwise convolution (NHWC, k×k, no bias) ====

typedef struct {
    const float *x, *dy, *taps; float *out; int n, h, w, c, k, stride, pad, ho, wo, vec; partials part;
} dwt_job;

void ck_depthwise_forward(const float *x, int n, int h, int w, int c, const float *taps, int k, int stride, int pad,
                          int ho, int wo, float *y) {
    if (!scalar_only && ck_depthwise_nhwc(x, (long)h * w * c, n, h, w, c, taps, NULL, k, k, stride, pad, ho, wo, y, (long)ho * wo * c) == 0)
        return;
    for (long img = 0; img < n; img++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                float *o = y + ((img * ho + oy) * wo + ox) * c;
                for (int ch = 0; ch < c; ch++) {
                    float a = 0.0f;
                    for (int ky = 0; ky < k; ky++) {
                        int iy = oy * stride - pad + ky;
                        if (iy < 0 || iy >= h) continue;
                        for (int kx = 0; kx < k; kx++) {
                            int ix = ox * stride - pad + kx;
                            if (ix < 0 || ix >= w) continue;
                            a += x[((img * h + iy) * w + ix) * c + ch] * taps[(ky * k + kx) * c + ch];
                        }
                    }
                    o[ch] = a;
                }
            }
}

// The output index along one axis that input index i reaches through tap kk, or -1.
static inline int dw_source(int i, int kk, int stride, int pad, int outSize) {
    int t = i + pad - kk;
    if (t < 0 || t % stride != 0) return -1;
    t /= stride;
    return t < outSize ? t : -1;
}

// Backward data: dx[iy, ix] = Σ over taps reaching it of dy[oy, ox]·taps[ky, kx] (a gather, so rows
// of dx are independent).
static void dw_data_scalar(const dwt_job *j, long r, int ch0, int ch1) {
    int img = (int)(r / j->h), iy = (int)(r % j->h), c = j->c, k = j->k;
    float *dx = j->out + r * j->w * c;
    for (int ix = 0; ix < j->w; ix++)
        for (int ch = ch0; ch < ch1; ch++) {
            float a = 0.0f;
            for (int ky = 0; ky < k; ky++) {
                int oy = dw_source(iy, ky, j->stride, j->pad, j->ho);
                if (oy < 0) continue;
                for (int kx = 0; kx < k; kx++) {
                    int ox = dw_source(ix, kx, j->stride, j->pad, j->wo);
                    if (ox < 0) continue;
                    a += j->dy[(((long)img * j->ho + oy) * j->wo + ox) * c + ch] * j->taps[(ky * k + kx) * c + ch];
                }
            }
            dx[(long)ix * c + ch] = a;
        }
}

#if CK_X86
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
dw_data_block(const dwt_job *j, long r, int ch, int nv, const int *oys, const int *kys, int nky) {
    int img = (int)(r / j->h), c = j->c, k = j->k;
    float *dx = j->out + r * j->w * c;
    const float *dyImg = j->dy + (long)img * j->ho * j->wo * c;
    for (int ix = 0; ix < j->w; ix++) {
        __m256 acc[8];
        for (int v = 0; v < nv; v++) acc[v] = _mm256_setzero_ps();
        for (int kx = 0; kx < k; kx++) {
            int ox = dw_source(ix, kx, j->stride, j->pad, j->wo);
            if (ox < 0) continue;
            for (int q = 0; q < nky; q++) {
                const float *g = dyImg + ((long)oys[q] * j->wo + ox) * c + ch, *t = j->taps + (kys[q] * k + kx) * c + ch;
                for (int v = 0; v < nv; v++) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(g + 8 * v), _mm256_loadu_ps(t + 8 * v), acc[v]);
            }
        }
        for (int v = 0; v < nv; v++) _mm256_storeu_ps(dx + (long)ix * c + ch + 8 * v, acc[v]);
    }
}

__attribute__((target("avx2,fma"))) static void dw_data_avx2(const dwt_job *j, long r) {
    int iy = (int)(r % j->h), oys[16], kys[16], nky = 0;
    for (int ky = 0; ky < j->k && nky < 16; ky++) {
        int oy = dw_source(iy, ky, j->stride, j->pad, j->ho);
        if (oy >= 0) { oys[nky] = oy; kys[nky] = ky; nky++; }
    }
    int ch = 0, c = j->c;
    for (; ch + 64 <= c; ch += 64) dw_data_block(j, r, ch, 8, oys, kys, nky);
    for (; ch + 8 <= c; ch += 8) dw_data_block(j, r, ch, 1, oys, kys, nky);
    if (ch < c) dw_data_scalar(j, r, ch, c);
}
#endif

static void dw_data_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    dwt_job *j = ctx;
    for (long r = r0; r < r1; r++) {
#if CK_X86
        if (j->vec && j->k <= 16) { dw_data_avx2(j, r); continue; }
#endif
        dw_data_scalar(j, r, 0, j->c);
    }
}

void ck_depthwise_backward_data(const float *dy, int n, int h, int w, int c, const float *taps, int k, int stride, int pad,
                                int ho, int wo, float *dx) {
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0) return;
    dwt_job j = {.dy = dy, .taps = taps, .out = dx, .n = n, .h = h, .w = w, .c = c, .k = k, .stride = stride, .pad = pad,
                 .ho = ho, .wo = wo, .vec = vector_path()};
    long rows = (long)n * h;
    run_ranges(dw_data_range, &j, rows, 1, threads_for((double)rows * w * c * k * k / 4, rows));
}

// Backward weight: dtaps[ky, kx] += Σ dy[oy, ox]·x[iy, ix] over output pixels; members take output
// rows, each tap's sum over a row in registers, then into the member's block partial.
static void dw_weight_row_scalar(const dwt_job *j, long r, float *blk) {
    int img = (int)(r / j->ho), oy = (int)(r % j->ho), c = j->c, k = j->k;
    const float *g = j->dy + r * j->wo * c;
    for (int ky = 0; ky < k; ky++) {
        int iy = oy * j->stride - j->pad + ky;
        if (iy < 0 || iy >= j->h) continue;
        const float *line = j->x + ((long)img * j->h + iy) * j->w * c;
        for (int kx = 0; kx < k; kx++) {
            float *b = blk + (ky * k + kx) * c;
            for (int ox = 0; ox < j->wo; ox++) {
                int ix = ox * j->stride - j->pad + kx;
                if (ix < 0 || ix >= j->w) continue;
                for (int ch = 0; ch < c; ch++) b[ch] += g[(long)ox * c + ch] * line[(long)ix * c + ch];
            }
        }
    }
}

#if CK_X86
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
dw_weight_block(const dwt_job *j, const float *g, const float *line, float *b, int kx, int ch, int nv) {
    int c = j->c, s = j->stride;
    // Output columns whose input column ox·s − pad + kx is inside the image.
    int lo = j->pad - kx, ox0 = lo > 0 ? (lo + s - 1) / s : 0;
    int hi = j->w - 1 + j->pad - kx, ox1 = hi < 0 ? 0 : hi / s + 1;
    if (ox1 > j->wo) ox1 = j->wo;
    __m256 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = _mm256_setzero_ps();
    for (int ox = ox0; ox < ox1; ox++) {
        const float *gp = g + (long)ox * c + ch, *xp = line + (long)(ox * s - j->pad + kx) * c + ch;
        for (int v = 0; v < nv; v++) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(gp + 8 * v), _mm256_loadu_ps(xp + 8 * v), acc[v]);
    }
    for (int v = 0; v < nv; v++) _mm256_storeu_ps(b + ch + 8 * v, _mm256_add_ps(_mm256_loadu_ps(b + ch + 8 * v), acc[v]));
}

__attribute__((target("avx2,fma"))) static void dw_weight_row_avx2(const dwt_job *j, long r, float *blk) {
    int img = (int)(r / j->ho), oy = (int)(r % j->ho), c = j->c, k = j->k;
    const float *g = j->dy + r * j->wo * c;
    for (int ky = 0; ky < k; ky++) {
        int iy = oy * j->stride - j->pad + ky;
        if (iy < 0 || iy >= j->h) continue;
        const float *line = j->x + ((long)img * j->h + iy) * j->w * c;
        for (int kx = 0; kx < k; kx++) {
            float *b = blk + (ky * k + kx) * c;
            int ch = 0;
            for (; ch + 64 <= c; ch += 64) dw_weight_block(j, g, line, b, kx, ch, 8);
            for (; ch + 8 <= c; ch += 8) dw_weight_block(j, g, line, b, kx, ch, 1);
            for (; ch < c; ch++) {
                float a = 0.0f;
                for (int ox = 0; ox < j->wo; ox++) {
                    int ix = ox * j->stride - j->pad + kx;
                    if (ix >= 0 && ix < j->w) a = fmaf(g[(long)ox * c + ch], line[(long)ix * c + ch], a);
                }
                b[ch] += a;
            }
        }
    }
}
#endif

static void dw_weight_range(void *ctx, long r0, long r1, int member) {
    dwt_job *j = ctx;
    double *acc = acc_of(&j->part, member);
    float *blk = blk_of(&j->part, member);
    // Flush after about BLOCK_ROWS output pixels' worth of terms per tap.
    long every = j->wo >= BLOCK_ROWS ? 1 : BLOCK_ROWS / j->wo;
    for (long r = r0; r < r1; r++) {
#if CK_X86
        if (j->vec) dw_weight_row_avx2(j, r, blk);
        else
#endif
            dw_weight_row_scalar(j, r, blk);
        if ((r - r0) % every == every - 1 || r == r1 - 1) flush(j->vec, acc, blk, j->part.width);
    }
}

int ck_depthwise_backward_weight(const float *x, const float *dy, int n, int h, int w, int c, int k, int stride, int pad,
                                 int ho, int wo, float *dtaps) {
    if (n <= 0 || ho <= 0 || wo <= 0 || c <= 0 || k <= 0) return 0;
    long rows = (long)n * ho;
    int taps = k * k * c, threads = threads_for((double)rows * wo * taps / 4, rows);
    dwt_job j = {.x = x, .dy = dy, .n = n, .h = h, .w = w, .c = c, .k = k, .stride = stride, .pad = pad, .ho = ho, .wo = wo,
                 .vec = vector_path()};
    if (partials_init(&j.part, taps, threads) != 0) return -1;
    int members = run_ranges(dw_weight_range, &j, rows, 1, threads);
    partials_add_to(&j.part, members, 0, taps, dtaps);
    partials_free(&j.part);
    return 0;
}

// ==== im2col / col2im for a batch (NHWC, k×k, zero padding) ====

typedef struct { const float *src; float *dst; int h, w, c, k, stride, pad, ho, wo, vec; } col_job;

// Output rows (img, oy): each patch row (ky) is one copy of the taps inside the image, zeros around.
static void im2col_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    col_job *j = ctx;
    int c = j->c, k = j->k;
    long patch = (long)k * k * c;
    for (long r = r0; r < r1; r++) {
        int img = (int)(r / j->ho), oy = (int)(r % j->ho);
        const float *image = j->src + (long)img * j->h * j->w * c;
        float *row = j->dst + r * j->wo * patch;
        for (int ox = 0; ox < j->wo; ox++) {
            float *d = row + ox * patch;
            int ix0 = ox * j->stride - j->pad;
            int kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + k > j->w ? j->w - ix0 : k;
            if (kx1 < kx0) kx1 = kx0;
            for (int ky = 0; ky < k; ky++) {
                float *dk = d + (long)ky * k * c;
                int iy = oy * j->stride - j->pad + ky;
                if (iy < 0 || iy >= j->h || kx0 >= kx1) { memset(dk, 0, (size_t)k * c * sizeof(float)); continue; }
                if (kx0 > 0) memset(dk, 0, (size_t)kx0 * c * sizeof(float));
                memcpy(dk + (long)kx0 * c, image + ((long)iy * j->w + ix0 + kx0) * c, (size_t)(kx1 - kx0) * c * sizeof(float));
                if (kx1 < k) memset(dk + (long)kx1 * c, 0, (size_t)(k - kx1) * c * sizeof(float));
            }
        }
    }
}

void ck_im2col_nhwc_batch(const float *x, int n, int h, int w, int c, int k, int stride, int pad, int ho, int wo, float *cols) {
    if (n <= 0 || ho <= 0 || wo <= 0 || c <= 0 || k <= 0) return;
    col_job j = {x, cols, h, w, c, k, stride, pad, ho, wo, vector_path()};
    long rows = (long)n * ho;
    run_ranges(im2col_range, &j, rows, 1, threads_for((double)rows * wo * k * k * c, rows));
}

// Rows (img, iy) of dx: zeroed, then every patch row that reads this image row added back, in (ky,
// ox) order; the taps of one patch row land on consecutive pixels, so each is one span.
static void col2im_range(void *ctx, long r0, long r1, int member) {
    (void)member;
    col_job *j = ctx;
    int c = j->c, k = j->k;
    long patch = (long)k * k * c;
    for (long r = r0; r < r1; r++) {
        int img = (int)(r / j->h), iy = (int)(r % j->h);
        float *dx = j->dst + r * j->w * c;
        memset(dx, 0, (size_t)j->w * c * sizeof(float));
        for (int ky = 0; ky < k; ky++) {
            int oy = dw_source(iy, ky, j->stride, j->pad, j->ho);
            if (oy < 0) continue;
            const float *row = j->src + ((long)img * j->ho + oy) * j->wo * patch + (long)ky * k * c;
            for (int ox = 0; ox < j->wo; ox++) {
                int ix0 = ox * j->stride - j->pad;
                int kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + k > j->w ? j->w - ix0 : k;
                if (kx0 < kx1) add_span(j->vec, dx + (long)(ix0 + kx0) * c, row + ox * patch + (long)kx0 * c, (long)(kx1 - kx0) * c);
            }
        }
    }
}

void ck_col2im_nhwc_batch(const float *cols, int n, int h, int w, int c, int k, int stride, int pad, int ho, int wo, float *dx) {
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0) return;
    col_job j = {cols, dx, h, w, c, k, stride, pad, ho, wo, vector_path()};
    long rows = (long)n * h;
    run_ranges(col2im_range, &j, rows, 1, threads_for((double)n * ho * wo * k * k * c, rows));
}

// ==== average pooling backward (the adjoint of Kernels.avgPool2dNHWC) ====

typedef struct { const float *dy; float *dx; int h, w, c, kernel, stride, pad, ho, wo; } pool_job;

static void pool_backward_range(void *ctx, long i0, long i1, int member) {
    (void)member;
    pool_job *j = ctx;
    int c = j->c;
    for (long img = i0; img < i1; img++) {
        float *dx = j->dx + img * j->h * j->w * c;
        memset(dx, 0, (size_t)j->h * j->w * c * sizeof(float));
        for (int oy = 0; oy < j->ho; oy++)
            for (int ox = 0; ox < j->wo; ox++) {
                // The forward's divisor: the window clipped to the padded image, padding counted.
                int hs = oy * j->stride - j->pad, ws = ox * j->stride - j->pad;
                int he = hs + j->kernel < j->h + j->pad ? hs + j->kernel : j->h + j->pad;
                int we = ws + j->kernel < j->w + j->pad ? ws + j->kernel : j->w + j->pad;
                float size = (float)((he - hs) * (we - ws));
                hs = hs > 0 ? hs : 0; ws = ws > 0 ? ws : 0;
                he = he < j->h ? he : j->h; we = we < j->w ? we : j->w;
                const float *g = j->dy + ((img * j->ho + oy) * j->wo + ox) * c;
                for (int y = hs; y < he; y++)
                    for (int x = ws; x < we; x++) {
                        float *d = dx + ((long)y * j->w + x) * c;
                        for (int ch = 0; ch < c; ch++) d[ch] += g[ch] / size;
                    }
            }
    }
}

void ck_avgpool_backward_nhwc(const float *dy, int n, int h, int w, int c, int kernel, int stride, int pad, int ho, int wo, float *dx) {
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0) return;
    pool_job j = {dy, dx, h, w, c, kernel, stride, pad, ho, wo};
    run_ranges(pool_backward_range, &j, n, 1, threads_for((double)n * h * w * c, n));
}

// ==== elementwise: sum of squares, scale, add ====

typedef struct { const float *src; float *dst; float s; int vec; double *partial; } ew_job;

#if CK_X86
__attribute__((target("avx2,fma"))) static double sumsq_avx2(const float *x, long b, long e) {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    long i = b;
    for (; i + 16 <= e; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v0)), d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1));
        __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(v1)), d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1));
        a0 = _mm256_fmadd_pd(d0, d0, a0); a1 = _mm256_fmadd_pd(d1, d1, a1);
        a2 = _mm256_fmadd_pd(d2, d2, a2); a3 = _mm256_fmadd_pd(d3, d3, a3);
    }
    double s = hsum_pd(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    for (; i < e; i++) s += (double)x[i] * x[i];
    return s;
}
#endif

static void sumsq_range(void *ctx, long b, long e, int member) {
    ew_job *j = ctx;
#if CK_X86
    if (j->vec) { j->partial[member] = sumsq_avx2(j->src, b, e); return; }
#endif
    double s = 0.0;
    for (long i = b; i < e; i++) s += (double)j->src[i] * j->src[i];
    j->partial[member] = s;
}

double ck_sum_of_squares(const float *x, long count) {
    if (count <= 0) return 0.0;
    int threads = threads_for((double)count, (count + 63) / 64);
    double partial[256] = {0};
    if (threads > 256) threads = 256;
    ew_job j = {x, NULL, 0.0f, vector_path(), partial};
    int members = run_ranges(sumsq_range, &j, count, 64, threads);
    double s = 0.0;
    for (int m = 0; m < members; m++) s += partial[m];
    return s;
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void scale_avx2(float *x, long b, long e, float s) {
    __m256 v = _mm256_set1_ps(s);
    long i = b;
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), v));
    for (; i < e; i++) x[i] *= s;
}
#endif

static void scale_range(void *ctx, long b, long e, int member) {
    (void)member;
    ew_job *j = ctx;
#if CK_X86
    if (j->vec) { scale_avx2(j->dst, b, e, j->s); return; }
#endif
    for (long i = b; i < e; i++) j->dst[i] *= j->s;
}

static void add_range(void *ctx, long b, long e, int member) {
    (void)member;
    ew_job *j = ctx;
    add_span(j->vec, j->dst + b, j->src + b, e - b);
}

void ck_scale(float *x, long count, float s) {
    ew_job j = {NULL, x, s, vector_path(), NULL};
    run_ranges(scale_range, &j, count, 64, threads_for((double)count, (count + 63) / 64));
}

void ck_add(const float *src, float *dst, long count) {
    ew_job j = {src, dst, 0.0f, vector_path(), NULL};
    run_ranges(add_range, &j, count, 64, threads_for((double)count, (count + 63) / 64));
}

// ==== copies between token layouts ====
//
// Single-threaded copies of tens of megabytes would leave the team's other threads waiting: these
// split the rows over the team.

typedef struct { const char *src; char *dst; long src_pitch, dst_pitch, row_bytes; } rows_job;

static void copy_rows_range(void *ctx, long b, long e, int member) {
    (void)member;
    rows_job *j = ctx;
    for (long r = b; r < e; r++) memcpy(j->dst + r * j->dst_pitch, j->src + r * j->src_pitch, (size_t)j->row_bytes);
}

void ck_copy_rows(const void *src, long src_pitch_bytes, void *dst, long dst_pitch_bytes, long rows, long row_bytes) {
    rows_job j = {src, dst, src_pitch_bytes, dst_pitch_bytes, row_bytes};
    run_ranges(copy_rows_range, &j, rows, 1, threads_for((double)rows * row_bytes / 4, rows));
}

// [B, T, heads·d] → [B, heads, T, d] (merge: the other way), one (image, token) row per unit.
typedef struct { const float *src; float *dst; long t, heads, d; int merge; } heads_job;

static void heads_range(void *ctx, long b, long e, int member) {
    (void)member;
    heads_job *j = ctx;
    long t = j->t, h = j->heads, d = j->d, c = h * d;
    for (long u = b; u < e; u++) {
        long i = u / t, r = u % t;
        for (long hd = 0; hd < h; hd++) {
            float *tokens = (float *)(j->merge ? j->dst : j->src) + (i * t + r) * c + hd * d;
            float *split = (float *)(j->merge ? j->src : j->dst) + ((i * h + hd) * t + r) * d;
            if (j->merge) memcpy(tokens, split, (size_t)d * sizeof(float));
            else memcpy(split, tokens, (size_t)d * sizeof(float));
        }
    }
}

void ck_split_heads(const float *src, float *dst, long b, long t, long heads, long d, int merge) {
    heads_job j = {src, dst, t, heads, d, merge};
    run_ranges(heads_range, &j, b * t, 1, threads_for((double)b * t * heads * d, b * t));
}

// y = a + b.
typedef struct { const float *a, *b; float *y; int vec; } sum_job;

#if CK_X86
__attribute__((target("avx2,fma"))) static void sum_avx2(const sum_job *j, long b, long e) {
    long i = b;
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(j->y + i, _mm256_add_ps(_mm256_loadu_ps(j->a + i), _mm256_loadu_ps(j->b + i)));
    for (; i < e; i++) j->y[i] = j->a[i] + j->b[i];
}
#endif

static void sum_range(void *ctx, long b, long e, int member) {
    (void)member;
    sum_job *j = ctx;
#if CK_X86
    if (j->vec) { sum_avx2(j, b, e); return; }
#endif
    for (long i = b; i < e; i++) j->y[i] = j->a[i] + j->b[i];
}

void ck_sum(const float *a, const float *b, float *y, long count) {
    sum_job j = {a, b, y, vector_path()};
    run_ranges(sum_range, &j, count, 64, threads_for((double)count, (count + 63) / 64));
}

// ==== AdamW, as torch's CPU single-tensor step ====
//
// The float32 operation sequence of torch.optim.AdamW (foreach=False) on CPU, checked bit for bit
// against torch 2.13 on AVX2 and AVX-512 kernels: torch's lerp_ and addcmul_ kernels round through
// a fused multiply-add (lerp: fma(w, g − m, m) for w < 0.5, else fma(w − 1, g − m, g); addcmul:
// fma(value·g, g, v·β₂)), while mul_, div, add_ and addcdiv_ (p + (value·m)/denom) round every
// operation. Exactly those fmas are explicit below; nothing else may be contracted.

typedef struct {
    float *p; const float *g; float *m, *v;
    float decay, w1, b2, w2, bc2s, eps, negStep; int decayOn, small, vec;
    int nonfinite;  // set (by any member) when an updated weight is not finite
} adam_job;

static void adam_scalar(adam_job *j, long b, long e) {
#pragma STDC FP_CONTRACT OFF
    int bad = 0;
    for (long i = b; i < e; i++) {
        float p = j->p[i], g = j->g[i], m = j->m[i], v = j->v[i];
        if (j->decayOn) p = p * j->decay;
        float diff = g - m;
        m = j->small ? fmaf(j->w1, diff, m) : fmaf(j->w1 - 1.0f, diff, g);
        float wg = j->w2 * g, vb = v * j->b2;
        v = fmaf(wg, g, vb);
        float root = sqrtf(v);
        float den = root / j->bc2s;
        den = den + j->eps;
        float num = j->negStep * m;
        float q = num / den;
        p = p + q;
        bad |= !isfinite(p);
        j->p[i] = p; j->m[i] = m; j->v[i] = v;
    }
    if (bad) __atomic_store_n(&j->nonfinite, 1, __ATOMIC_RELAXED);
}

#if CK_X86
__attribute__((target("avx2,fma"))) static void adam_avx2(adam_job *j, long b, long e) {
#pragma STDC FP_CONTRACT OFF
    __m256 decay = _mm256_set1_ps(j->decay), w1 = _mm256_set1_ps(j->small ? j->w1 : j->w1 - 1.0f);
    __m256 b2 = _mm256_set1_ps(j->b2), w2 = _mm256_set1_ps(j->w2), bc2s = _mm256_set1_ps(j->bc2s);
    __m256 eps = _mm256_set1_ps(j->eps), negStep = _mm256_set1_ps(j->negStep);
    // p − p is 0 for a finite p and NaN for ±inf or NaN: one sticky NaN tells of any.
    __m256 bad = _mm256_setzero_ps();
    long i = b;
    for (; i + 8 <= e; i += 8) {
        __m256 p = _mm256_loadu_ps(j->p + i), g = _mm256_loadu_ps(j->g + i);
        __m256 m = _mm256_loadu_ps(j->m + i), v = _mm256_loadu_ps(j->v + i);
        if (j->decayOn) p = _mm256_mul_ps(p, decay);
        m = _mm256_fmadd_ps(w1, _mm256_sub_ps(g, m), j->small ? m : g);
        v = _mm256_fmadd_ps(_mm256_mul_ps(w2, g), g, _mm256_mul_ps(v, b2));
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), bc2s), eps);
        p = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(negStep, m), den));
        bad = _mm256_add_ps(bad, _mm256_sub_ps(p, p));
        _mm256_storeu_ps(j->p + i, p); _mm256_storeu_ps(j->m + i, m); _mm256_storeu_ps(j->v + i, v);
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(bad, bad, _CMP_UNORD_Q))) __atomic_store_n(&j->nonfinite, 1, __ATOMIC_RELAXED);
    adam_scalar(j, i, e);
}
#endif

static void adam_range(void *ctx, long b, long e, int member) {
    (void)member;
    adam_job *j = ctx;
#if CK_X86
    if (j->vec) { adam_avx2(j, b, e); return; }
#endif
    adam_scalar(j, b, e);
}

int ck_adamw(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, long count, double lr, double beta1,
              double beta2, double eps, double weight_decay, long step, int fused) {
    // The scalars as torch forms them: Python doubles, each converted to float where it meets a tensor.
    double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    double stepSize = lr / bc1;
    float w1 = (float)(1.0 - beta1);
    adam_job j = {param, grad, exp_avg, exp_avg_sq,
                  (float)(1.0 - lr * weight_decay), w1, (float)beta2, (float)(1.0 - beta2),
                  // adam.py takes `bias_correction2 ** 0.5`, the fused kernel std::sqrt (they can differ in the last bit).
                  (float)(fused ? sqrt(bc2) : pow(bc2, 0.5)),
                  (float)eps, (float)(-stepSize), weight_decay != 0.0, fabsf(w1) < 0.5f, vector_path(), 0};
    run_ranges(adam_range, &j, count, 64, threads_for((double)count * 4, (count + 63) / 64));
    return j.nonfinite;
}
