// Dense convolution for AVX2+FMA CPUs: im2col + the GEMM of gemm.c, a block of output pixels at
// a time, so the patch rows stay in cache.
#include "gemm_internal.h"
#include <string.h>

#if defined(__x86_64__)


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
    float *buffer = ck_scratch(SCRATCH_PATCHES, (size_t)block * row);
    if (!buffer) { j->failed = 1; return; }
    for (long p = p0; p < p1; p += block) {
        long n = p1 - p < block ? p1 - p : block;
        im2col_pixels(&j->patches, p, p + n, buffer);
        if (ck_gemm_run((int)n, j->cout, row, buffer, row, j->packed, NULL, 0, j->bias, j->dst + (size_t)p * j->cout, j->cout,
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
int ck_conv_nhwc(const float *src, int h, int w, int c, int k, int stride, int pad, int ho, int wo,
                 const float *packed, const float *bias, int cout, float *dst) {
    (void)src; (void)h; (void)w; (void)c; (void)k; (void)stride; (void)pad; (void)ho; (void)wo; (void)packed; (void)bias; (void)cout; (void)dst;
    return -1;
}
void ck_im2col_nhwc(const float *src, int h, int w, int c, int kh, int kw, int stride, int pad, int ho, int wo, float *dst) {
    (void)src; (void)h; (void)w; (void)c; (void)kh; (void)kw; (void)stride; (void)pad; (void)ho; (void)wo; (void)dst;
    ck_unreachable("ck_im2col_nhwc");
}
#endif
