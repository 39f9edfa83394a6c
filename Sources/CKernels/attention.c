// Fused attention for AVX2+FMA CPUs: softmax(scale · Q·Kᵀ)·V per image and head.
//
// Scores are computed for a block of query rows at a time into a buffer that stays in L2, the
// softmax runs on it there, and P·V writes the block's context straight into the merged-head
// output: the full [Tq, Tk] score matrix (9.8 MB per image in CvT-13's first stage) never goes
// through memory. K_hᵀ and V_h are packed into GEMM panels once per image and head.
#include "gemm_internal.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "vecmath.h"


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
        ck_gemm_region(&s, 0, rows, 0, (tk + 15) / 16);
        softmax_rows(scores, rows, tk, tkpad, job->round_p);
        float *ctx = job->ctx + image * job->c_image + (long)r * job->c_row + h * d;
        gemm_job o = {rows, d, tk, scores, tkpad, vp, NULL, ctx, job->c_row, NULL, NULL, 0, 0, failed, NULL, 0};
        ck_gemm_region(&o, 0, rows, 0, (d + 15) / 16);
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
    float *buffer = ck_scratch(SCRATCH_ATTENTION, ktCount + vCount + scoreCount);
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

#else
int ck_attention(int batch, int heads, int tq, int tk, int d,
                 const float *q, long q_image, long q_row, const float *k, long k_image, long k_row,
                 const float *v, long v_image, long v_row, float *ctx, long c_image, long c_row, float scale, int round_p) {
    (void)round_p; (void)batch; (void)heads; (void)tq; (void)tk; (void)d; (void)q; (void)q_image; (void)q_row; (void)k; (void)k_image;
    (void)k_row; (void)v; (void)v_image; (void)v_row; (void)ctx; (void)c_image; (void)c_row; (void)scale;
    return -1;
}
#endif
