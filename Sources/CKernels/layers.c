// LayerNorm and depthwise convolution for AVX2+FMA CPUs, on the team the GEMMs use (team.c).
//
// Why here: both are memory-bound and short (cvt-13's stage-3 LayerNorm is 197 × 384 values, its
// depthwise 3×3 convs 14 × 14 × 384), so their cost is mostly call overhead and thread hand-offs.
// Swift code compiles to SSE only without per-module target flags, and oneDNN's depthwise
// convolution pays a primitive call per use; these run AVX2 code on the kernels' own team.
#include "ckernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "vecmath.h"

// Threads for `work` units of about one float each: memory-bound work below 64k values is not
// worth a hand-off.
static int threads_for(double work) {
    int t = ck_team_threads();
    return work < 65536 ? 1 : (t > 1 ? t : 1);
}

__attribute__((target("avx2,fma"))) static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// ---- LayerNorm over the last axis ----

typedef struct {
    const float *src; void *dst; long rows; int cols;
    const float *w, *b; float eps; int bf16;
    float *mean, *rstd;  // per-row statistics for a backward pass, when not NULL
} ln_job;

__attribute__((target("avx2,fma"))) static void ln_rows(const ln_job *j, long r0, long r1) {
    int cols = j->cols, vec = cols / 8 * 8;
    float inv = 1.0f / (float)cols;
    for (long r = r0; r < r1; r++) {
        const float *x = j->src + r * cols;
        // Two passes (mean, then the centred sum of squares: PyTorch's biased variance), four
        // accumulators each to cover the add latency.
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        int i = 0;
        for (; i + 32 <= vec; i += 32) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i)); s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16)); s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
        }
        for (; i < vec; i += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
        float sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (; i < cols; i++) sum += x[i];
        float mean = sum * inv;
        __m256 m = _mm256_set1_ps(mean);
        s0 = _mm256_setzero_ps(); s1 = s0; s2 = s0; s3 = s0;
        i = 0;
        for (; i + 32 <= vec; i += 32) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), m), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), m);
            __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 16), m), d3 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 24), m);
            s0 = _mm256_fmadd_ps(d0, d0, s0); s1 = _mm256_fmadd_ps(d1, d1, s1);
            s2 = _mm256_fmadd_ps(d2, d2, s2); s3 = _mm256_fmadd_ps(d3, d3, s3);
        }
        for (; i < vec; i += 8) { __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), m); s0 = _mm256_fmadd_ps(d, d, s0); }
        float var = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (; i < cols; i++) { float d = x[i] - mean; var += d * d; }
        float rstd = 1.0f / sqrtf(var * inv + j->eps);
        if (j->mean) { j->mean[r] = mean; j->rstd[r] = rstd; }
        __m256 rs = _mm256_set1_ps(rstd);
        if (j->bf16) {
            uint16_t *y = (uint16_t *)j->dst + r * cols;
            for (i = 0; i < vec; i += 8) {
                __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), rs);
                _mm_storeu_si128((__m128i *)(y + i), bf16_bits(_mm256_fmadd_ps(v, _mm256_loadu_ps(j->w + i), _mm256_loadu_ps(j->b + i))));
            }
            for (; i < cols; i++) y[i] = bf16_bits_scalar(fmaf((x[i] - mean) * rstd, j->w[i], j->b[i]));
        } else {
            float *y = (float *)j->dst + r * cols;
            for (i = 0; i < vec; i += 8) {
                __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), rs);
                _mm256_storeu_ps(y + i, _mm256_fmadd_ps(v, _mm256_loadu_ps(j->w + i), _mm256_loadu_ps(j->b + i)));
            }
            for (; i < cols; i++) y[i] = fmaf((x[i] - mean) * rstd, j->w[i], j->b[i]);
        }
    }
}

static void ln_thread(void *data, int t, int T) {
    const ln_job *j = data;
    ln_rows(j, j->rows * t / T, j->rows * (t + 1) / T);
}

int ck_layernorm(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias, float eps) {
    return ck_layernorm_saving(src, dst, dst_bf16, rows, cols, weight, bias, eps, NULL, NULL);
}

int ck_layernorm_saving(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias,
                        float eps, float *mean, float *rstd) {
    if (!ck_gemm_supported()) return -1;
    if (rows <= 0 || cols <= 0) return 0;
    ln_job j = {src, dst, rows, cols, weight, bias, eps, dst_bf16, mean, rstd};
    int threads = threads_for((double)rows * cols);
    if (threads > rows) threads = (int)rows;
    if (threads <= 1) ln_rows(&j, 0, rows);
    else ck_parallel(ln_thread, &j, threads);
    return 0;
}

// ---- depthwise convolution, NHWC ----

typedef struct {
    const float *src; long src_image; int n, h, w, c;
    const float *taps, *bias; int kh, kw, stride, pad, ho, wo;
    float *dst; long dst_image;
} dw_job;

// One output pixel's channels [ch, ch + 8·nv) (nv is a constant at each call: the accumulators stay
// in registers).
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
dw_block(const dw_job *j, const float *src, float *o, int ch, int nv, int iy0, int ix0, int ky0, int ky1, int kx0, int kx1) {
    __m256 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = j->bias ? _mm256_loadu_ps(j->bias + ch + 8 * v) : _mm256_setzero_ps();
    for (int ky = ky0; ky < ky1; ky++) {
        const float *line = src + ((long)(iy0 + ky) * j->w + ix0) * j->c + ch;
        const float *tap = j->taps + (long)ky * j->kw * j->c + ch;
        for (int kx = kx0; kx < kx1; kx++) {
            const float *s = line + (long)kx * j->c, *t = tap + (long)kx * j->c;
            for (int v = 0; v < nv; v++) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(s + 8 * v), _mm256_loadu_ps(t + 8 * v), acc[v]);
        }
    }
    for (int v = 0; v < nv; v++) _mm256_storeu_ps(o + ch + 8 * v, acc[v]);
}

// The first input column of output column `ox` and the taps [kx0, kx1) that fall inside the image.
static inline int dw_columns(const dw_job *j, int ox, int *kx0, int *kx1) {
    int ix0 = ox * j->stride - j->pad;
    *kx0 = ix0 < 0 ? -ix0 : 0;
    *kx1 = ix0 + j->kw > j->w ? j->w - ix0 : j->kw;
    return ix0;
}

// Output rows [r0, r1) of all images (row r is image r / ho, line r % ho).
__attribute__((target("avx2,fma"))) static void dw_rows(const dw_job *j, long r0, long r1) {
    int c = j->c;
    for (long r = r0; r < r1; r++) {
        int img = (int)(r / j->ho), oy = (int)(r % j->ho);
        const float *src = j->src + img * j->src_image;
        float *out = j->dst + img * j->dst_image + (long)oy * j->wo * c;
        int ky0 = 0, ky1 = j->kh, iy0 = oy * j->stride - j->pad;
        if (iy0 < 0) ky0 = -iy0;
        if (iy0 + ky1 > j->h) ky1 = j->h - iy0;
        // Channel blocks outside the pixels: a block's input window (kh rows × W pixels × 64
        // channels, 10.7 KB for 3 × 14 × 64) stays in L1 along the row; whole pixels (3 × 14 × 384
        // channels) would not, and every tap would come from L2.
        int ch = 0;
        for (; ch + 64 <= c; ch += 64)
            for (int ox = 0; ox < j->wo; ox++) {
                int kx0, kx1, ix0 = dw_columns(j, ox, &kx0, &kx1);
                dw_block(j, src, out + (long)ox * c, ch, 8, iy0, ix0, ky0, ky1, kx0, kx1);
            }
        for (; ch + 8 <= c; ch += 8)
            for (int ox = 0; ox < j->wo; ox++) {
                int kx0, kx1, ix0 = dw_columns(j, ox, &kx0, &kx1);
                dw_block(j, src, out + (long)ox * c, ch, 1, iy0, ix0, ky0, ky1, kx0, kx1);
            }
        for (; ch < c; ch++)
            for (int ox = 0; ox < j->wo; ox++) {
                int kx0, kx1, ix0 = dw_columns(j, ox, &kx0, &kx1);
                float a = j->bias ? j->bias[ch] : 0.0f;
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++)
                        a = fmaf(src[((long)(iy0 + ky) * j->w + ix0 + kx) * c + ch], j->taps[((long)ky * j->kw + kx) * c + ch], a);
                out[(long)ox * c + ch] = a;
            }
    }
}

static void dw_thread(void *data, int t, int T) {
    const dw_job *j = data;
    long rows = (long)j->n * j->ho;
    dw_rows(j, rows * t / T, rows * (t + 1) / T);
}

int ck_depthwise_nhwc(const float *src, long src_image, int n, int h, int w, int c, const float *taps, const float *bias,
                      int kh, int kw, int stride, int pad, int ho, int wo, float *dst, long dst_image) {
    if (!ck_gemm_supported()) return -1;
    if (n <= 0 || ho <= 0 || wo <= 0 || c <= 0) return 0;
    dw_job j = {src, src_image, n, h, w, c, taps, bias, kh, kw, stride, pad, ho, wo, dst, dst_image};
    long rows = (long)n * ho;
    int threads = threads_for((double)rows * wo * c * kh * kw / 4);
    if (threads > rows) threads = (int)rows;
    if (threads <= 1) dw_rows(&j, 0, rows);
    else ck_parallel(dw_thread, &j, threads);
    return 0;
}

// ---- float32 → bfloat16 (matmul operands in bf16 precision) ----

typedef struct { const float *src; uint16_t *dst; size_t count; } bf16_job;

__attribute__((target("avx2,fma"))) static void bf16_span(const bf16_job *j, size_t b, size_t e) {
    size_t i = b;
    for (; i + 8 <= e; i += 8) _mm_storeu_si128((__m128i *)(j->dst + i), bf16_bits(_mm256_loadu_ps(j->src + i)));
    for (; i < e; i++) j->dst[i] = bf16_bits_scalar(j->src[i]);
}

static void bf16_thread(void *data, int t, int T) {
    const bf16_job *j = data;
    // Whole cache lines per member.
    size_t lines = (j->count + 15) / 16;
    size_t b = lines * t / T * 16, e = lines * (t + 1) / T * 16;
    if (e > j->count) e = j->count;
    if (b < e) bf16_span(j, b, e);
}

int ck_to_bf16(const float *src, uint16_t *dst, size_t count) {
    if (!ck_gemm_supported()) return -1;
    bf16_job j = {src, dst, count};
    int threads = threads_for((double)count);
    if (threads <= 1) bf16_span(&j, 0, count);
    else ck_parallel(bf16_thread, &j, threads);
    return 0;
}

#else
int ck_layernorm(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias, float eps) {
    (void)src; (void)dst; (void)dst_bf16; (void)rows; (void)cols; (void)weight; (void)bias; (void)eps;
    return -1;
}
int ck_layernorm_saving(const float *src, void *dst, int dst_bf16, long rows, int cols, const float *weight, const float *bias,
                        float eps, float *mean, float *rstd) {
    (void)mean; (void)rstd;
    return ck_layernorm(src, dst, dst_bf16, rows, cols, weight, bias, eps);
}
int ck_depthwise_nhwc(const float *src, long src_image, int n, int h, int w, int c, const float *taps, const float *bias,
                      int kh, int kw, int stride, int pad, int ho, int wo, float *dst, long dst_image) {
    (void)src; (void)src_image; (void)n; (void)h; (void)w; (void)c; (void)taps; (void)bias; (void)kh; (void)kw;
    (void)stride; (void)pad; (void)ho; (void)wo; (void)dst; (void)dst_image;
    return -1;
}
int ck_to_bf16(const float *src, uint16_t *dst, size_t count) {
    (void)src; (void)dst; (void)count;
    return -1;
}
#endif
