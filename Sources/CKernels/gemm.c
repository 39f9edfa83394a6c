// Single-precision GEMM with pre-packed weights for AVX2+FMA CPUs (AMD Zen 2/3, Intel Haswell and later).
//
// Why our own: on such CPUs oneDNN 2.6 runs f32 matmuls through its AVX2 `gemm:jit`, which repacks
// the weights on every call, which keeps it well below the FMA peak at CvT's shapes (M = 197
// tokens, K/N = 384/1536); this kernel packs the weights once.
// On AVX-512 CPUs oneDNN's brgemm kernels are used instead (the caller decides).
//
// Layout of packed weights ([K, N]): K split in blocks of ≤ 256 rows (`k_block`); within a block,
// panels of 16 columns one after the other, each k-major (`[block][panel][k][16]`), the last panel
// zero-padded. A GEMM sweeps a K block's panels in order, so the weights stream from memory
// sequentially (the hardware prefetcher follows; with panels spanning all of K it did not).
// Computation: C[M, N] (row stride ldc) = epilogue(A[M, K] (row stride lda) · B + bias), with a
// 6×16 register tile (12 accumulators), K blocked by ≤ 256 so a B micro-panel (≤ 16 KB) stays in
// L1 while row blocks of A stay in L2; A is packed into 6-row micro-panels when enough panels reuse
// it. Weights may also be 16-bit panels (float16 or bfloat16 bits, `ck_gemm16`), widened to float32
// one micro-panel at a time: half the memory and memory traffic, the same float32 arithmetic.
#include "gemm_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#if defined(__x86_64__)
#include <immintrin.h>

size_t ck_gemm_packed_count(int k, int n) { return (size_t)k * (size_t)((n + 15) / 16) * 16; }

#define KC 256
// Rows per K block: even blocks of ≤ KC (384 → 2 × 192, not 256 + 128).
static int k_block(int k) {
    int blocks = (k + KC - 1) / KC;
    return blocks > 0 ? (k + blocks - 1) / blocks : 1;
}

static size_t packed_index(int k, int n, int kk, int col) {
    int kcBase = k_block(k), k0 = kk / kcBase * kcBase;
    int kc = k - k0 < kcBase ? k - k0 : kcBase;
    size_t npad = (size_t)((n + 15) / 16) * 16;
    return (size_t)k0 * npad + (size_t)(col / 16) * kc * 16 + (size_t)(kk - k0) * 16 + col % 16;
}


// dst rows kk..kk+7 (16 apart) × 8 columns = the 8×8 block whose column j is src + j·cs (8
// contiguous values each).
__attribute__((target("avx2,fma"))) static inline void transpose8(const float *src, long cs, float *dst) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + cs), r2 = _mm256_loadu_ps(src + 2 * cs), r3 = _mm256_loadu_ps(src + 3 * cs);
    __m256 r4 = _mm256_loadu_ps(src + 4 * cs), r5 = _mm256_loadu_ps(src + 5 * cs), r6 = _mm256_loadu_ps(src + 6 * cs), r7 = _mm256_loadu_ps(src + 7 * cs);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5), t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE), u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 32, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 48, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 64, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 80, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 96, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 112, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// One full 16-column panel of a K block whose source columns are contiguous along K (rs == 1,
// e.g. Kᵀ for attention): 8×8 transposes instead of a strided gather per value.
__attribute__((target("avx2,fma"))) static void pack_panel_transposed(const float *b, long cs, int kc, float *dst) {
    int kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        transpose8(b + kk, cs, dst + (size_t)kk * 16);
        transpose8(b + 8 * cs + kk, cs, dst + (size_t)kk * 16 + 8);
    }
    for (; kk < kc; kk++)
        for (int j = 0; j < 16; j++) dst[(size_t)kk * 16 + j] = b[kk + j * cs];
}

// The panel layout for elements of `size` bytes (float32 or 16-bit weights; the 16-bit bits are
// copied unchanged, and zero padding is +0 in float16 and bfloat16 too). `transposed`: full panels
// of float32 weights whose columns are contiguous along K go through 8×8 transposes.
static void pack_elements(const char *b, size_t size, long rs, long cs, int k, int n, char *packed, int transposed) {
    int kcBase = k_block(k), panels = (n + 15) / 16;
    size_t npad = (size_t)panels * 16;
    for (int k0 = 0; k0 < k; k0 += kcBase) {
        int kc = k - k0 < kcBase ? k - k0 : kcBase;
        for (int p = 0; p < panels; p++) {
            char *dst = packed + ((size_t)k0 * npad + (size_t)p * kc * 16) * size;
            int cols = n - p * 16 < 16 ? n - p * 16 : 16;
            if (transposed && cols == 16) {
                pack_panel_transposed((const float *)b + k0 + (long)p * 16 * cs, cs, kc, (float *)dst);
                continue;
            }
            for (int kk = 0; kk < kc; kk++) {
                const char *src = b + ((long)(k0 + kk) * rs + (long)p * 16 * cs) * (long)size;
                char *row = dst + (size_t)kk * 16 * size;
                if (cs == 1) memcpy(row, src, (size_t)cols * size);
                else for (int j = 0; j < cols; j++) memcpy(row + j * size, src + (long)j * cs * (long)size, size);
                memset(row + (size_t)cols * size, 0, (size_t)(16 - cols) * size);
            }
        }
    }
}

void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed) {
    pack_elements((const char *)b, sizeof(float), rs, cs, k, n, (char *)packed, rs == 1 && cs != 1 && ck_gemm_supported());
}

void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs) {
    for (int kk = 0; kk < k; kk++)
        for (int col = 0; col < n; col++)
            b[kk * rs + col * cs] = packed[packed_index(k, n, kk, col)];
}

void ck_gemm_pack16(const uint16_t *b, long rs, long cs, int k, int n, uint16_t *packed) {
    pack_elements((const char *)b, sizeof(uint16_t), rs, cs, k, n, (char *)packed, 0);
}

static float half_to_float(uint16_t h, int format) {
    if (format == CK_BFLOAT16) {
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    float f;
    ck_f16_to_f32(&h, &f, 1);
    return f;
}

void ck_gemm_unpack16(const uint16_t *packed, int format, int k, int n, void *b, int widen, long rs, long cs) {
    for (int kk = 0; kk < k; kk++)
        for (int col = 0; col < n; col++) {
            uint16_t h = packed[packed_index(k, n, kk, col)];
            if (widen) ((float *)b)[kk * rs + col * cs] = half_to_float(h, format);
            else ((uint16_t *)b)[kk * rs + col * cs] = h;
        }
}

int ck_gemm16_supported(int format) {
    if (!ck_gemm_supported()) return 0;
    if (format == CK_BFLOAT16) return 1;
    __builtin_cpu_init();
    return format == CK_FLOAT16 && __builtin_cpu_supports("f16c");
}

// A micro-panel of half-precision weights (kc × 16) widened into `dst` (exactly: every float16 and
// bfloat16 value is a float32).
__attribute__((target("avx2,fma,f16c"))) static void widen_panel(const uint16_t *src, int format, int kc, float *dst) {
    size_t count = (size_t)kc * 16;
    if (format == CK_FLOAT16) {
        for (size_t i = 0; i < count; i += 8) _mm256_store_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    } else {
        for (size_t i = 0; i < count; i += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            _mm256_store_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    }
}


#include "vecmath.h"

void ck_gelu(float *x, size_t count);
__attribute__((target("avx2,fma"))) void ck_gelu(float *x, size_t count) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(x + i, gelu_ps(_mm256_loadu_ps(x + i)));
    if (i < count) {
        float tmp[8] = {0};
        memcpy(tmp, x + i, (count - i) * sizeof(float));
        _mm256_storeu_ps(tmp, gelu_ps(_mm256_loadu_ps(tmp)));
        memcpy(x + i, tmp, (count - i) * sizeof(float));
    }
}

// ---- the 6×16 micro-kernel ----


#define MC 72

__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
micro(int mr, int kc, int packed_a, const float *a, long lda, const float *b, float *c, long ldc, int nc,
      int load, const float *bias, int last, const gemm_job *job) {
    __m256 acc[MR][2];
    __m256i m0 = _mm256_setzero_si256(), m1 = m0;
    if (nc < 16) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc), idx);
        m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8), idx);
    }
    _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {
        if (r >= mr) break;
        if (load) {
            if (nc == 16) { acc[r][0] = _mm256_loadu_ps(c + r * ldc); acc[r][1] = _mm256_loadu_ps(c + r * ldc + 8); }
            else { acc[r][0] = _mm256_maskload_ps(c + r * ldc, m0); acc[r][1] = _mm256_maskload_ps(c + r * ldc + 8, m1); }
        } else {
            acc[r][0] = _mm256_setzero_ps(); acc[r][1] = _mm256_setzero_ps();
        }
        if (bias) { acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_loadu_ps(bias)); acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_loadu_ps(bias + 8)); }
    }
    _Pragma("GCC unroll 4") for (int kk = 0; kk < kc; kk++) {
        __m256 b0 = _mm256_load_ps(b + kk * 16), b1 = _mm256_load_ps(b + kk * 16 + 8);
        _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {
            if (r >= mr) break;
            __m256 av = _mm256_broadcast_ss(packed_a ? a + kk * MR + r : a + r * lda + kk);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {
        if (r >= mr) break;
        if (last) {
            for (int o = 0; o < job->nops; o++) {
                if (job->ops[o] == 1) { acc[r][0] = gelu_ps(acc[r][0]); acc[r][1] = gelu_ps(acc[r][1]); }
                else if (job->ops[o] == 2) {
                    __m256 s = _mm256_set1_ps(job->args[o]);
                    acc[r][0] = _mm256_mul_ps(acc[r][0], s); acc[r][1] = _mm256_mul_ps(acc[r][1], s);
                }
            }
        }
        if (nc == 16) { _mm256_storeu_ps(c + r * ldc, acc[r][0]); _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]); }
        else { _mm256_maskstore_ps(c + r * ldc, m0, acc[r][0]); _mm256_maskstore_ps(c + r * ldc + 8, m1, acc[r][1]); }
    }
}

// `rows` × `kc` of A (row stride lda) into micro-panels `[tile][kc][MR]`, the last tile's missing
// rows zero: the micro-kernel then broadcasts from one sequential stream instead of six rows.
__attribute__((target("avx2,fma"))) static void pack_a(const float *a, long lda, int rows, int kc, float *dst) {
    for (int i = 0; i < rows; i += MR) {
        int mr = rows - i < MR ? rows - i : MR;
        float *d = dst + (size_t)i * kc;
        const float *r0 = a + (long)i * lda;
        int kk = 0;
        if (mr == MR) {
            for (; kk + 4 <= kc; kk += 4) {
                __m128 x0 = _mm_loadu_ps(r0 + kk), x1 = _mm_loadu_ps(r0 + lda + kk);
                __m128 x2 = _mm_loadu_ps(r0 + 2 * lda + kk), x3 = _mm_loadu_ps(r0 + 3 * lda + kk);
                __m128 x4 = _mm_loadu_ps(r0 + 4 * lda + kk), x5 = _mm_loadu_ps(r0 + 5 * lda + kk);
                _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
                __m128 lo = _mm_unpacklo_ps(x4, x5), hi = _mm_unpackhi_ps(x4, x5);  // (4,5) pairs for kk+0,1 / kk+2,3
                float *o = d + (size_t)kk * MR;
                _mm_storeu_ps(o, x0); _mm_storel_pi((__m64 *)(o + 4), lo);
                _mm_storeu_ps(o + 6, x1); _mm_storeh_pi((__m64 *)(o + 10), lo);
                _mm_storeu_ps(o + 12, x2); _mm_storel_pi((__m64 *)(o + 16), hi);
                _mm_storeu_ps(o + 18, x3); _mm_storeh_pi((__m64 *)(o + 22), hi);
            }
        }
        for (; kk < kc; kk++)
            for (int r = 0; r < MR; r++) d[(size_t)kk * MR + r] = r < mr ? r0[(long)r * lda + kk] : 0.0f;
    }
}

// Rows [m0, m1) × panels [p0, p1) of the output.
__attribute__((target("avx2,fma"))) void ck_gemm_region(const gemm_job *job, int m0, int m1, int p0, int p1) {
    int k = job->k;
    int kcBase = k_block(k);
    size_t npad = (size_t)((job->n + 15) / 16) * 16;
    float biasPad[16] __attribute__((aligned(32)));
    // Row blocks whose A slice (rows × K block) takes ≤ 256 KB of L2: at CvT's batch-1 sizes that
    // is every row, so each B micro-panel is fetched from memory once per K block. Row blocks are
    // the outer loop so that a block's output stays in cache across the K blocks (with K outer, a
    // batch's [3152, 1536] output went through memory once per K block).
    int mc = (int)((256 * 1024 / sizeof(float)) / (size_t)kcBase) / MR * MR;
    if (mc < MC) mc = MC;
    // A is packed when enough panels reuse it and its K blocks are long: with a few panels (the
    // attention products, N = 50 or 64) or short K (64) the packing pass costs more than the six
    // row streams do.
    int pack = p1 - p0 >= 8 && kcBase >= 128;
    float *apack = pack ? ck_scratch(SCRATCH_A, (size_t)(mc + MR) * kcBase) : NULL;
    float *bwide = job->packed16 ? ck_scratch(SCRATCH_B, (size_t)kcBase * 16) : NULL;
    if ((pack && !apack) || (job->packed16 && !bwide)) { __atomic_store_n(job->failed, 1, __ATOMIC_RELAXED); return; }
    for (int mb = m0; mb < m1; mb += mc) {
        int mend = mb + mc < m1 ? mb + mc : m1;
        for (int k0 = 0; k0 < k; k0 += kcBase) {
            int kc = k - k0 < kcBase ? k - k0 : kcBase;
            int first = k0 == 0, last = k0 + kc == k;
            if (pack) pack_a(job->a + (size_t)mb * job->lda + k0, job->lda, mend - mb, kc, apack);
            for (int p = p0; p < p1; p++) {
                const float *bp;
                if (job->packed16) {
                    widen_panel(job->packed16 + (size_t)k0 * npad + (size_t)p * kc * 16, job->format, kc, bwide);
                    bp = bwide;
                } else {
                    bp = job->packed + (size_t)k0 * npad + (size_t)p * kc * 16;
                }
                int nc = job->n - p * 16 < 16 ? job->n - p * 16 : 16;
                const float *bias = NULL;
                if (first && job->bias) {
                    if (nc == 16) bias = job->bias + p * 16;
                    else { memset(biasPad, 0, sizeof biasPad); memcpy(biasPad, job->bias + p * 16, nc * sizeof(float)); bias = biasPad; }
                }
                int load = !first || job->accumulate;
                float *c = job->c + p * 16;
                if (pack) {
                    int i = mb;
                    const float *ap = apack;
                    // The next micro-panel of B is prefetched a few lines per tile: with the weights
                    // in memory (cold), the hardware prefetcher starts late at each new panel.
                    const char *next = NULL;
                    int lines = 0;
                    int kcNext = k - (k0 + kc) < kcBase ? k - (k0 + kc) : kcBase;
                    size_t elem = job->packed16 ? sizeof(uint16_t) : sizeof(float);
                    const char *base = job->packed16 ? (const char *)job->packed16 : (const char *)job->packed;
                    if (p + 1 < p1) { next = base + ((size_t)k0 * npad + (size_t)(p + 1) * kc * 16) * elem; lines = (int)((size_t)kc * 16 * elem / 64); }
                    else if (k0 + kc < k) { next = base + ((size_t)(k0 + kc) * npad + (size_t)p0 * kcNext * 16) * elem; lines = (int)((size_t)kcNext * 16 * elem / 64); }
                    int tiles = (mend - mb) / MR, per = tiles > 0 ? (lines + tiles - 1) / tiles : 0, fetched = 0;
                    for (; i + MR <= mend; i += MR, ap += (size_t)kc * MR) {
                        for (int j = 0; j < per && fetched < lines; j++, fetched++) _mm_prefetch(next + (size_t)fetched * 64, _MM_HINT_T0);
                        micro(MR, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job);
                    }
                    switch (mend - i) {
                    case 5: micro(5, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 4: micro(4, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 3: micro(3, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 2: micro(2, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 1: micro(1, kc, 1, ap, 0, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    default: break;
                    }
                } else {
                    const float *a = job->a + k0;
                    int i = mb;
                    for (; i + MR <= mend; i += MR)
                        micro(MR, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job);
                    switch (mend - i) {
                    case 5: micro(5, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 4: micro(4, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 3: micro(3, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 2: micro(2, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    case 1: micro(1, kc, 0, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                    default: break;
                    }
                }
            }
        }
    }
}

// Thread t of T takes a contiguous share of the panels when there are enough of them (every thread
// reads all of A, which is small next to B), else a share of the rows in whole micro-tiles. T is
// the team granted (1 inside another region), so nothing is skipped.
static void gemm_thread(void *data, int t, int T) {
    const gemm_job *job = data;
    int panels = (job->n + 15) / 16;
    if (panels >= 2 * T || job->m < MR * T) {
        int p0 = (int)((long)panels * t / T), p1 = (int)((long)panels * (t + 1) / T);
        if (p0 < p1) ck_gemm_region(job, 0, job->m, p0, p1);
    } else {
        int tiles = (job->m + MR - 1) / MR;
        int r0 = (int)((long)tiles * t / T) * MR, r1 = (int)((long)tiles * (t + 1) / T) * MR;
        if (r1 > job->m) r1 = job->m;
        if (r0 < r1) ck_gemm_region(job, r0, r1, 0, panels);
    }
}

int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops) {
    return ck_gemm_run(m, n, k, a, lda, packed, NULL, 0, bias, c, ldc, ops, args, nops);
}

int ck_gemm16(int m, int n, int k, const float *a, long lda, const uint16_t *packed, int format, const float *bias,
              float *c, long ldc, const int *ops, const float *args, int nops) {
    if (!ck_gemm16_supported(format)) return -1;
    return ck_gemm_run(m, n, k, a, lda, NULL, packed, format, bias, c, ldc, ops, args, nops);
}

int ck_gemm_run(int m, int n, int k, const float *a, long lda, const float *packed, const uint16_t *packed16, int format,
                    const float *bias, float *c, long ldc, const int *ops, const float *args, int nops) {
    if (m <= 0 || n <= 0) return 0;
    int failed = 0;
    gemm_job job = {m, n, k, a, lda, packed, bias, c, ldc, ops, args, nops, 0, &failed, packed16, format};
    // An accumulate post-op is only supported first (dst = epilogue(old + A·B + bias)): it is folded
    // into the accumulators' start.
    int rest[8]; float restArgs[8]; int nrest = 0;
    for (int o = 0; o < nops; o++) {
        if (ops[o] == 3) { if (o != 0) return -1; job.accumulate = 1; continue; }
        if (nrest == 8) return -1;
        rest[nrest] = ops[o]; restArgs[nrest] = args ? args[o] : 0; nrest++;
    }
    job.ops = rest; job.args = restArgs; job.nops = nrest;
    if (k == 0) {
        // No products: bias and epilogue only (kept simple; never hit by CvT).
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float v = (job.accumulate ? c[i * ldc + j] : 0) + (bias ? bias[j] : 0);
                for (int o = 0; o < nrest; o++) {
                    if (rest[o] == 1) ck_gelu(&v, 1);
                    else if (rest[o] == 2) v *= restArgs[o];
                }
                c[i * ldc + j] = v;
            }
        return 0;
    }
    // Small products are not worth a thread hand-off.
    int threads = (double)m * n * k < 2e5 ? 1 : ck_team_threads();
    if (threads <= 1) ck_gemm_region(&job, 0, m, 0, (n + 15) / 16);
    else ck_parallel(gemm_thread, &job, threads);
    return failed ? -1 : 0;
}

#else
size_t ck_gemm_packed_count(int k, int n) { return (size_t)k * (size_t)((n + 15) / 16) * 16; }
void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed) {
    (void)b; (void)rs; (void)cs; (void)k; (void)n; (void)packed;
    ck_unreachable("ck_gemm_pack");
}
void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs) {
    (void)packed; (void)k; (void)n; (void)b; (void)rs; (void)cs;
    ck_unreachable("ck_gemm_unpack");
}
void ck_gemm_pack16(const uint16_t *b, long rs, long cs, int k, int n, uint16_t *packed) {
    (void)b; (void)rs; (void)cs; (void)k; (void)n; (void)packed;
    ck_unreachable("ck_gemm_pack16");
}
void ck_gemm_unpack16(const uint16_t *packed, int format, int k, int n, void *b, int widen, long rs, long cs) {
    (void)packed; (void)format; (void)k; (void)n; (void)b; (void)widen; (void)rs; (void)cs;
    ck_unreachable("ck_gemm_unpack16");
}
int ck_gemm16_supported(int format) { (void)format; return 0; }
int ck_gemm16(int m, int n, int k, const float *a, long lda, const uint16_t *packed, int format, const float *bias,
              float *c, long ldc, const int *ops, const float *args, int nops) {
    (void)m; (void)n; (void)k; (void)a; (void)lda; (void)packed; (void)format; (void)bias; (void)c; (void)ldc; (void)ops; (void)args; (void)nops;
    return -1;
}
int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops) {
    (void)m; (void)n; (void)k; (void)a; (void)lda; (void)packed; (void)bias; (void)c; (void)ldc; (void)ops; (void)args; (void)nops;
    return -1;
}
void ck_gelu(float *x, size_t count) {
    (void)x; (void)count;
    ck_unreachable("ck_gelu");
}
#endif
