// Single-precision GEMM with pre-packed weights for AVX2+FMA CPUs (Zen 2/3, Haswell…).
//
// Why our own: on such CPUs oneDNN 2.6 runs f32 matmuls through its AVX2 `gemm:jit`, which repacks
// the weights on every call and reaches 50–75% of the FMA peak at CvT's shapes (M = 197 tokens,
// K/N = 384/1536); this kernel, with the weights packed once, reaches 80–90%. On AVX-512 CPUs
// oneDNN's brgemm kernels are used instead (the caller decides).
//
// Layout of packed weights ([K, N]): K split in blocks of ≤ 256 rows (`k_block`); within a block,
// panels of 16 columns one after the other, each k-major (`[block][panel][k][16]`), the last panel
// zero-padded. A GEMM sweeps a K block's panels in order, so the weights stream from memory
// sequentially (the hardware prefetcher follows; with panels spanning all of K it did not).
// Computation: C[M, N] (row stride ldc) = epilogue(A[M, K] (row stride lda) · B + bias), with a
// 6×16 register tile (12 accumulators), K blocked by ≤ 256 so a B micro-panel (≤ 16 KB) stays in
// L1 while 72-row blocks of A stay in L2.
#include "ckernels.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

// libgomp (linked by oneDNN's module) runs the thread team, as `#pragma omp parallel` would.
extern void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
extern int omp_get_thread_num(void);
extern int omp_get_max_threads(void);

int ck_gemm_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed) {
    int npad = (n + 15) / 16 * 16;
    for (int kk = 0; kk < k; kk++)
        for (int col = 0; col < npad; col++)
            packed[packed_index(k, n, kk, col)] = col < n ? b[kk * rs + col * cs] : 0.0f;
}

void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs) {
    for (int kk = 0; kk < k; kk++)
        for (int col = 0; col < n; col++)
            b[kk * rs + col * cs] = packed[packed_index(k, n, kk, col)];
}

// ---- exact-erf GELU, vectorised ----

__attribute__((target("avx2,fma"))) static inline __m256 exp_ps(__m256 x) {
    // exp(x) = 2^n · exp(r), r = x − n·ln2 in [−ln2/2, ln2/2]; degree-6 polynomial (< 2 ulp).
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
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
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// GELU(x) = x/2 · (1 + erf(x/√2)); erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
__attribute__((target("avx2,fma"))) static inline __m256 gelu_ps(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 az = _mm256_andnot_ps(sign, z);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(az, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 erf_abs = _mm256_fnmadd_ps(p, exp_ps(_mm256_mul_ps(_mm256_xor_ps(az, sign), az)), _mm256_set1_ps(1.0f));
    __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, z));
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(erf, _mm256_set1_ps(1.0f)));
}

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
    int threads;
} gemm_job;

#define MR 6
#define MC 72

__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
micro(int mr, int kc, const float *a, long lda, const float *b, float *c, long ldc, int nc,
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
            __m256 av = _mm256_broadcast_ss(a + r * lda + kk);
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

// Rows [m0, m1) × panels [p0, p1) of the output.
__attribute__((target("avx2,fma"))) static void gemm_region(const gemm_job *job, int m0, int m1, int p0, int p1) {
    int k = job->k;
    int kcBase = k_block(k);
    size_t npad = (size_t)((job->n + 15) / 16) * 16;
    float biasPad[16] __attribute__((aligned(32)));
    for (int k0 = 0; k0 < k; k0 += kcBase) {
        int kc = k - k0 < kcBase ? k - k0 : kcBase;
        int first = k0 == 0, last = k0 + kc == k;
        // Row blocks whose A slice (rows × kc) takes ≤ 256 KB of L2: at CvT's batch-1 sizes that is
        // every row, so each B micro-panel is fetched from memory once per K block, not per block.
        int mc = (int)((256 * 1024 / sizeof(float)) / (size_t)kc) / MR * MR;
        if (mc < MC) mc = MC;
        for (int mb = m0; mb < m1; mb += mc) {
            int mend = mb + mc < m1 ? mb + mc : m1;
            for (int p = p0; p < p1; p++) {
                const float *bp = job->packed + (size_t)k0 * npad + (size_t)p * kc * 16;
                int nc = job->n - p * 16 < 16 ? job->n - p * 16 : 16;
                const float *bias = NULL;
                if (first && job->bias) {
                    if (nc == 16) bias = job->bias + p * 16;
                    else { memset(biasPad, 0, sizeof biasPad); memcpy(biasPad, job->bias + p * 16, nc * sizeof(float)); bias = biasPad; }
                }
                int load = !first || job->accumulate;
                const float *a = job->a + k0;
                float *c = job->c + p * 16;
                int i = mb;
                for (; i + MR <= mend; i += MR)
                    micro(MR, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job);
                switch (mend - i) {
                case 5: micro(5, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                case 4: micro(4, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                case 3: micro(3, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                case 2: micro(2, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                case 1: micro(1, kc, a + i * job->lda, job->lda, bp, c + i * job->ldc, job->ldc, nc, load, bias, last, job); break;
                default: break;
                }
            }
        }
    }
}

// Thread t of T takes a contiguous share of the panels when there are enough of them (every thread
// reads all of A, which is small next to B), else a share of the rows in whole micro-tiles.
static void gemm_thread(void *data) {
    const gemm_job *job = data;
    int t = omp_get_thread_num(), T = job->threads;
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

int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops) {
    if (m <= 0 || n <= 0) return 0;
    gemm_job job = {m, n, k, a, lda, packed, bias, c, ldc, ops, args, nops, 0, 1};
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
    int threads = omp_get_max_threads();
    // Small products are not worth a thread hand-off.
    if ((double)m * n * k < 2e5) threads = 1;
    job.threads = threads < 1 ? 1 : threads;
    if (job.threads == 1) gemm_region(&job, 0, m, 0, (n + 15) / 16);
    else GOMP_parallel(gemm_thread, &job, (unsigned)job.threads, 0);
    return 0;
}

#else
int ck_gemm_supported(void) { return 0; }
int ck_cpu_has_avx512f(void) { return 0; }
size_t ck_gemm_packed_count(int k, int n) { return (size_t)k * (size_t)((n + 15) / 16) * 16; }
void ck_gemm_pack(const float *b, long rs, long cs, int k, int n, float *packed) { (void)b; (void)rs; (void)cs; (void)k; (void)n; (void)packed; }
void ck_gemm_unpack(const float *packed, int k, int n, float *b, long rs, long cs) { (void)packed; (void)k; (void)n; (void)b; (void)rs; (void)cs; }
int ck_gemm(int m, int n, int k, const float *a, long lda, const float *packed, const float *bias,
            float *c, long ldc, const int *ops, const float *args, int nops) {
    (void)m; (void)n; (void)k; (void)a; (void)lda; (void)packed; (void)bias; (void)c; (void)ldc; (void)ops; (void)args; (void)nops;
    return -1;
}
void ck_gelu(float *x, size_t count) { (void)x; (void)count; }
#endif
