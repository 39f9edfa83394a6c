// Single-precision GEMM with pre-packed weights for AVX2+FMA CPUs (Zen 2/3, Haswell…).
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
#include "ckernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__)
#include <immintrin.h>

int ck_gemm_supported(void) {
    static int supported = -1;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return supported;
}

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

int ck_cpu_has_avx512f(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
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

typedef struct {
    int m, n, k;
    const float *a; long lda;
    const float *packed;
    const float *bias;
    float *c; long ldc;
    const int *ops; const float *args; int nops;  // epilogue after the last K block (accumulate excluded)
    int accumulate;                               // C starts from its previous contents
    int *failed;                                  // set when a scratch buffer cannot be allocated
    const uint16_t *packed16; int format;         // half-precision panels (CK_FLOAT16 / CK_BFLOAT16) instead of `packed`
} gemm_job;

#define MR 6
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

// Each thread's scratch buffers, kept across calls and freed when the thread ends: packed A
// (≤ (mc + MR) × KC floats, about 260 KB), the attention kernel's packed K, V and scores (about
// 530 KB in cvt-13's first stage; allocated per call, they were fresh mappings that page-faulted
// every time), one widened micro-panel of half-precision weights (≤ KC × 16 floats), and a block
// of convolution patches (`ck_conv_nhwc`, about 64 KB).
enum { SCRATCH_A, SCRATCH_ATTENTION, SCRATCH_B, SCRATCH_PATCHES, SCRATCH_SLOTS };
typedef struct { float *p[SCRATCH_SLOTS]; size_t cap[SCRATCH_SLOTS]; } scratch_store;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void scratch_free(void *v) {
    scratch_store *s = v;
    if (!s) return;
    for (int i = 0; i < SCRATCH_SLOTS; i++) free(s->p[i]);
    free(s);
}
static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }
static float *scratch(int slot, size_t count) {
    pthread_once(&scratch_once, scratch_key_init);
    scratch_store *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) { free(s); return NULL; }
    }
    if (count > s->cap[slot]) {
        free(s->p[slot]);
        s->p[slot] = aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64);
        s->cap[slot] = s->p[slot] ? count : 0;
    }
    return s->p[slot];
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
__attribute__((target("avx2,fma"))) static void gemm_region(const gemm_job *job, int m0, int m1, int p0, int p1) {
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
    float *apack = pack ? scratch(SCRATCH_A, (size_t)(mc + MR) * kcBase) : NULL;
    float *bwide = job->packed16 ? scratch(SCRATCH_B, (size_t)kcBase * 16) : NULL;
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
        if (p0 < p1) gemm_region(job, 0, job->m, p0, p1);
    } else {
        int tiles = (job->m + MR - 1) / MR;
        int r0 = (int)((long)tiles * t / T) * MR, r1 = (int)((long)tiles * (t + 1) / T) * MR;
        if (r1 > job->m) r1 = job->m;
        if (r0 < r1) gemm_region(job, r0, r1, 0, panels);
    }
}

static int gemm_run(int m, int n, int k, const float *a, long lda, const float *packed, const uint16_t *packed16, int format,
                    const float *bias, float *c, long ldc, const int *ops, const float *args, int nops);

int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops) {
    return gemm_run(m, n, k, a, lda, packed, NULL, 0, bias, c, ldc, ops, args, nops);
}

int ck_gemm16(int m, int n, int k, const float *a, long lda, const uint16_t *packed, int format, const float *bias,
              float *c, long ldc, const int *ops, const float *args, int nops) {
    if (!ck_gemm16_supported(format)) return -1;
    return gemm_run(m, n, k, a, lda, NULL, packed, format, bias, c, ldc, ops, args, nops);
}

static int gemm_run(int m, int n, int k, const float *a, long lda, const float *packed, const uint16_t *packed16, int format,
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
    if (threads <= 1) gemm_region(&job, 0, m, 0, (n + 15) / 16);
    else ck_parallel(gemm_thread, &job, threads);
    return failed ? -1 : 0;
}

// ---- fused attention: softmax(scale · Q·Kᵀ)·V per image and head ----
//
// Scores are computed for a block of query rows at a time into a buffer that stays in L2, the
// softmax runs on it there, and P·V writes the block's context straight into the merged-head
// output: the full [Tq, Tk] score matrix (9.8 MB per image in CvT-13's first stage) never goes
// through memory. K_hᵀ and V_h are packed into GEMM panels once per image and head.

typedef struct {
    int batch, heads, tq, tk, d;
    const float *q; long q_image, q_row;
    const float *k; long k_image, k_row;
    const float *v; long v_image, v_row;
    float *ctx; long c_image, c_row;
    float scale;
    int failed;
    int round_p;  // round the probabilities to bfloat16 (emulated bf16 attention)
} attention_job;

// Softmax of each row in place. (Scaling P·V's rows by 1/sum afterwards instead would save this
// pass over the scores, but moves the results away from PyTorch's, past the tolerance of the
// formula-defined cvt-13 vector in SpecVectorTests.)
// Two accumulators per pass and masked tails (no scalar tail through a stack copy) keep short rows
// (stage 3's 50 columns) cheap. A NaN score makes its row NaN, as in PyTorch.
__attribute__((target("avx2,fma"))) static void softmax_rows(float *s, int rows, int cols, long ld, int round_p) {
    int full = cols & ~7, rem = cols - full;
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int r = 0; r < rows; r++) {
        float *x = s + r * ld;
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
        int j = 0;
        for (; j + 16 <= full; j += 16) { m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j)); m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8)); }
        if (j < full) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
        if (rem) m1 = _mm256_max_ps(m1, _mm256_blendv_ps(m1, _mm256_maskload_ps(x + full, tail), _mm256_castsi256_ps(tail)));
        // The row maximum in every lane.
        m0 = _mm256_max_ps(m0, m1);
        m0 = _mm256_max_ps(m0, _mm256_permute2f128_ps(m0, m0, 1));
        m0 = _mm256_max_ps(m0, _mm256_shuffle_ps(m0, m0, 0x4E));
        const __m256 mb = _mm256_max_ps(m0, _mm256_shuffle_ps(m0, m0, 0xB1));
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        for (j = 0; j + 16 <= full; j += 16) {
            __m256 e0 = exp_nonpositive_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mb));
            __m256 e1 = exp_nonpositive_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mb));
            _mm256_storeu_ps(x + j, e0);
            _mm256_storeu_ps(x + j + 8, e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
        }
        if (j < full) {
            __m256 e = exp_nonpositive_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mb));
            _mm256_storeu_ps(x + j, e);
            s0 = _mm256_add_ps(s0, e);
        }
        if (rem) {
            __m256 e = _mm256_and_ps(exp_nonpositive_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, tail), mb)), _mm256_castsi256_ps(tail));
            _mm256_maskstore_ps(x + full, tail, e);
            s1 = _mm256_add_ps(s1, e);
        }
        // The row sum in every lane.
        __m256 sum = _mm256_add_ps(s0, s1);
        sum = _mm256_add_ps(sum, _mm256_permute2f128_ps(sum, sum, 1));
        sum = _mm256_add_ps(sum, _mm256_shuffle_ps(sum, sum, 0x4E));
        sum = _mm256_add_ps(sum, _mm256_shuffle_ps(sum, sum, 0xB1));
        const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
        // What a bf16 softmax output holds (round_p): each probability rounded to nearest even
        // bfloat16 (they are finite and in [0, 1]), kept as float32 for P·V.
        const __m256i lsb = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF), top = _mm256_set1_epi32((int)0xFFFF0000u);
        for (j = 0; j < cols; j += 8) {
            __m256 p = j < full ? _mm256_loadu_ps(x + j) : _mm256_maskload_ps(x + j, tail);
            p = _mm256_mul_ps(p, inv);
            if (round_p) {
                __m256i b = _mm256_castps_si256(p);
                b = _mm256_add_epi32(b, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(b, 16), lsb)));
                p = _mm256_castsi256_ps(_mm256_and_si256(b, top));
            }
            if (j < full) _mm256_storeu_ps(x + j, p);
            else _mm256_maskstore_ps(x + j, tail, p);
        }
    }
}

// One image and head, query rows [r0, r1), with this thread's buffers.
__attribute__((target("avx2,fma"))) static void attention_unit(const attention_job *job, int unit, int r0, int r1,
                                                               float *kt, float *vp, float *scores, int *failed) {
    int image = unit / job->heads, h = unit % job->heads;
    int tk = job->tk, d = job->d;
    long tkpad = (tk + 15) / 16 * 16;
    const float *k = job->k + image * job->k_image + h * d;
    const float *v = job->v + image * job->v_image + h * d;
    // K_hᵀ as [d, Tk] weights and V_h as [Tk, d] weights, in GEMM panels.
    ck_gemm_pack(k, 1, job->k_row, d, tk, kt);
    ck_gemm_pack(v, job->v_row, 1, tk, d, vp);
    int ops[1] = {2};
    float args[1] = {job->scale};
    // Row blocks whose scores take ≤ 128 KB.
    int mb = (int)(32768 / tkpad) / MR * MR;
    if (mb < MR) mb = MR;
    for (int r = r0; r < r1; r += mb) {
        int rows = r1 - r < mb ? r1 - r : mb;
        gemm_job s = {rows, tk, d, job->q + image * job->q_image + (long)r * job->q_row + h * d, job->q_row,
                      kt, NULL, scores, tkpad, ops, args, 1, 0, failed, NULL, 0};
        gemm_region(&s, 0, rows, 0, (tk + 15) / 16);
        softmax_rows(scores, rows, tk, tkpad, job->round_p);
        float *ctx = job->ctx + image * job->c_image + (long)r * job->c_row + h * d;
        gemm_job o = {rows, d, tk, scores, tkpad, vp, NULL, ctx, job->c_row, NULL, NULL, 0, 0, failed, NULL, 0};
        gemm_region(&o, 0, rows, 0, (d + 15) / 16);
        if (*failed) return;
    }
}

// Member t of T.
static void attention_work(void *data, int t, int T) {
    attention_job *job = data;
    long tkpad = (job->tk + 15) / 16 * 16;
    int mb = (int)(32768 / tkpad) / MR * MR;
    if (mb < MR) mb = MR;
    size_t ktCount = ck_gemm_packed_count(job->d, job->tk), vCount = ck_gemm_packed_count(job->tk, job->d);
    size_t scoreCount = (size_t)mb * tkpad;
    float *buffer = scratch(SCRATCH_ATTENTION, ktCount + vCount + scoreCount);
    if (!buffer) { job->failed = 1; return; }
    float *kt = buffer, *vp = buffer + ktCount, *scores = vp + vCount;
    // The images × heads × query-row tiles, split evenly into contiguous ranges: a thread packs K
    // and V of every image and head its range touches (at most two are shared with a neighbour).
    long tiles = (job->tq + MR - 1) / MR, total = (long)job->batch * job->heads * tiles;
    long g0 = total * t / T, g1 = total * (t + 1) / T;
    while (g0 < g1) {
        int unit = (int)(g0 / tiles);
        long end = (long)(unit + 1) * tiles < g1 ? (long)(unit + 1) * tiles : g1;
        int r0 = (int)(g0 - (long)unit * tiles) * MR, r1 = (int)(end - (long)unit * tiles) * MR;
        if (r1 > job->tq) r1 = job->tq;
        attention_unit(job, unit, r0, r1, kt, vp, scores, &job->failed);
        if (job->failed) break;
        g0 = end;
    }
}

int ck_attention(int batch, int heads, int tq, int tk, int d,
                 const float *q, long q_image, long q_row, const float *k, long k_image, long k_row,
                 const float *v, long v_image, long v_row, float *ctx, long c_image, long c_row, float scale, int round_p) {
    if (batch <= 0 || heads <= 0 || tq <= 0 || tk <= 0 || d <= 0) return 0;
    attention_job job = {batch, heads, tq, tk, d, q, q_image, q_row, k, k_image, k_row, v, v_image, v_row,
                         ctx, c_image, c_row, scale, 0, round_p};
    int threads = (double)batch * heads * tq * tk * d < 2e5 ? 1 : ck_team_threads();
    if (threads <= 1) attention_work(&job, 0, 1);
    else ck_parallel(attention_work, &job, threads);
    return job.failed ? -1 : 0;
}

// ---- dense convolution as im2col + GEMM ----

typedef struct { const float *src; int h, w, c, kh, kw, stride, pad, ho, wo; float *dst; } im2col_job;

// The patch rows of output pixels p0 ..< p1, written from `dst` on.
static void im2col_pixels(const im2col_job *j, long p0, long p1, float *dst) {
    int w = j->w, c = j->c, kh = j->kh, kw = j->kw, wo = j->wo;
    size_t row = (size_t)kh * kw * c;
    for (long p = p0; p < p1; p++) {
        int oy = (int)(p / wo), ox = (int)(p % wo);
        float *out = dst + (size_t)(p - p0) * row;
        int x0 = ox * j->stride - j->pad;
        for (int ky = 0; ky < kh; ky++) {
            int iy = oy * j->stride - j->pad + ky;
            float *o = out + (size_t)ky * kw * c;
            if (iy < 0 || iy >= j->h) { memset(o, 0, (size_t)kw * c * sizeof(float)); continue; }
            const float *line = j->src + (size_t)iy * w * c;
            if (x0 >= 0 && x0 + kw <= w) { memcpy(o, line + (size_t)x0 * c, (size_t)kw * c * sizeof(float)); continue; }
            for (int kx = 0; kx < kw; kx++) {
                int ix = x0 + kx;
                if (ix < 0 || ix >= w) memset(o + (size_t)kx * c, 0, (size_t)c * sizeof(float));
                else memcpy(o + (size_t)kx * c, line + (size_t)ix * c, (size_t)c * sizeof(float));
            }
        }
    }
}

static void im2col_thread(void *data, int t, int T) {
    const im2col_job *j = data;
    long pixels = (long)j->ho * j->wo, p0 = pixels * t / T, p1 = pixels * (t + 1) / T;
    im2col_pixels(j, p0, p1, j->dst + (size_t)p0 * j->kh * j->kw * j->c);
}

void ck_im2col_nhwc(const float *src, int h, int w, int c, int kh, int kw, int stride, int pad, int ho, int wo, float *dst) {
    if (ho <= 0 || wo <= 0) return;
    im2col_job j = {src, h, w, c, kh, kw, stride, pad, ho, wo, dst};
    // A copy: below 64k values not worth a hand-off.
    int threads = (double)ho * wo * kh * kw * c < 65536 ? 1 : ck_team_threads();
    if (threads <= 1) im2col_pixels(&j, 0, (long)ho * wo, dst);
    else ck_parallel(im2col_thread, &j, threads);
}

typedef struct { im2col_job patches; const float *packed, *bias; int cout; float *dst; _Atomic int failed; } conv_job;

// Member t of T convolves its share of the output pixels, in blocks whose patch rows stay in L2:
// im2col of a block into a private buffer, then the block's GEMM on this thread.
static void conv_thread(void *data, int t, int T) {
    conv_job *j = data;
    long pixels = (long)j->patches.ho * j->patches.wo, p0 = pixels * t / T, p1 = pixels * (t + 1) / T;
    int row = j->patches.kh * j->patches.kw * j->patches.c;
    long block = 16384 / row / MR * MR;  // 64 KB of patches (at least one micro-tile)
    if (block < MR) block = MR;
    float *buffer = scratch(SCRATCH_PATCHES, (size_t)block * row);
    if (!buffer) { j->failed = 1; return; }
    for (long p = p0; p < p1; p += block) {
        long n = p1 - p < block ? p1 - p : block;
        im2col_pixels(&j->patches, p, p + n, buffer);
        if (gemm_run((int)n, j->cout, row, buffer, row, j->packed, NULL, 0, j->bias, j->dst + (size_t)p * j->cout, j->cout,
                     NULL, NULL, 0) != 0) { j->failed = 1; break; }
    }
}

int ck_conv_nhwc(const float *src, int h, int w, int c, int k, int stride, int pad, int ho, int wo,
                 const float *packed, const float *bias, int cout, float *dst) {
    if (!ck_gemm_supported()) return -1;
    if (ho <= 0 || wo <= 0 || cout <= 0) return 0;
    conv_job j = {{src, h, w, c, k, k, stride, pad, ho, wo, NULL}, packed, bias, cout, dst, 0};
    double flops = 2.0 * ho * wo * k * k * c * cout;
    int threads = flops < 2e5 ? 1 : ck_team_threads();
    if (threads > ho * wo / MR) threads = ho * wo / MR > 0 ? ho * wo / MR : 1;
    ck_parallel(conv_thread, &j, threads);
    return j.failed ? -1 : 0;
}

#else
int ck_gemm_supported(void) { return 0; }
int ck_cpu_has_avx512f(void) { return 0; }
size_t ck_gemm_packed_count(int k, int n) { return (size_t)k * (size_t)((n + 15) / 16) * 16; }
void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed) { (void)b; (void)rs; (void)cs; (void)k; (void)n; (void)packed; }
void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs) { (void)packed; (void)k; (void)n; (void)b; (void)rs; (void)cs; }
void ck_gemm_pack16(const uint16_t *b, long rs, long cs, int k, int n, uint16_t *packed) { (void)b; (void)rs; (void)cs; (void)k; (void)n; (void)packed; }
void ck_gemm_unpack16(const uint16_t *packed, int format, int k, int n, void *b, int widen, long rs, long cs) {
    (void)packed; (void)format; (void)k; (void)n; (void)b; (void)widen; (void)rs; (void)cs;
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
void ck_gelu(float *x, size_t count) { (void)x; (void)count; }
int ck_conv_nhwc(const float *src, int h, int w, int c, int k, int stride, int pad, int ho, int wo,
                 const float *packed, const float *bias, int cout, float *dst) {
    (void)src; (void)h; (void)w; (void)c; (void)k; (void)stride; (void)pad; (void)ho; (void)wo; (void)packed; (void)bias; (void)cout; (void)dst;
    return -1;
}
void ck_im2col_nhwc(const float *src, int h, int w, int c, int kh, int kw, int stride, int pad, int ho, int wo, float *dst) {
    (void)src; (void)h; (void)w; (void)c; (void)kh; (void)kw; (void)stride; (void)pad; (void)ho; (void)wo; (void)dst;
}
int ck_attention(int batch, int heads, int tq, int tk, int d,
                 const float *q, long q_image, long q_row, const float *k, long k_image, long k_row,
                 const float *v, long v_image, long v_row, float *ctx, long c_image, long c_row, float scale, int round_p) {
    (void)round_p; (void)batch; (void)heads; (void)tq; (void)tk; (void)d; (void)q; (void)q_image; (void)q_row; (void)k; (void)k_image;
    (void)k_row; (void)v; (void)v_image; (void)v_row; (void)ctx; (void)c_image; (void)c_row; (void)scale;
    return -1;
}
#endif
