// Times two builds of one kernel file in one process, alternating calls, so that a shared machine's
// drift (tens of percent within minutes on our VMs) hits both alike. Built by Scripts/kernel_ab.sh,
// which renames build A's and build B's exported ck_* symbols to A_ck_* and B_ck_*.
//   gemm M K N GELU           C[M,N] = A[M,K]·B[K,N] + bias, GELU epilogue if GELU = 1
//   attention B H TQ TK C     fused attention, C channels in H heads
//   depthwise N C HW STRIDE   3×3 depthwise conv, padding 1, HW × HW images, token-buffer strides
// Environment: THREADS (default 1), REPS (default 200), COLD (gemm: weight copies in rotation, so
// that the weights come from memory as in a forward pass; default 8).
#include "ckernels.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// Weak: only the renamed file's functions exist in a given build.
__attribute__((weak)) int A_ck_gemm(int, int, int, const float *, long, const float *, const float *, float *, long, const int *, const float *, int);
__attribute__((weak)) int B_ck_gemm(int, int, int, const float *, long, const float *, const float *, float *, long, const int *, const float *, int);
__attribute__((weak)) void A_ck_gemm_pack(const float *, long, long, int, int, float *);
__attribute__((weak)) void B_ck_gemm_pack(const float *, long, long, int, int, float *);
__attribute__((weak)) size_t A_ck_gemm_packed_count(int, int);
__attribute__((weak)) size_t B_ck_gemm_packed_count(int, int);
__attribute__((weak)) int A_ck_attention(int, int, int, int, int, const float *, long, long, const float *, long, long, const float *, long, long, float *, long, long, float, int);
__attribute__((weak)) int B_ck_attention(int, int, int, int, int, const float *, long, long, const float *, long, long, const float *, long, long, float *, long, long, float, int);
__attribute__((weak)) int A_ck_depthwise_nhwc(const float *, long, int, int, int, int, const float *, const float *, int, int, int, int, int, int, float *, long);
__attribute__((weak)) int B_ck_depthwise_nhwc(const float *, long, int, int, int, int, const float *, const float *, int, int, int, int, int, int, float *, long);

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int by_value(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static int env_int(const char *name, int fallback) { const char *v = getenv(name); return v ? atoi(v) : fallback; }
static float *floats(size_t n, float step) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) p[i] = sinf((float)i * step);
    return p;
}

typedef struct { int side, rep; } call;
typedef void (*runner)(void *ctx, int side, int rep);

// Runs A and B `reps` times each, in pairs, after 3 warm-up pairs; prints medians, B/A and how often
// B was the faster of its pair.
static void compare(const char *label, double flops, runner run, void *ctx, const float *outA, const float *outB, size_t count) {
    int reps = env_int("REPS", 200), wins = 0;
    double *ta = malloc(sizeof(double) * reps), *tb = malloc(sizeof(double) * reps);
    for (int r = -3; r < reps; r++) {
        // Which side goes first alternates: the second call of a pair finds more of the shared
        // data in cache.
        double a, b, t;
        if (r & 1) { t = now(); run(ctx, 1, r + 3); b = now() - t; t = now(); run(ctx, 0, r + 3); a = now() - t; }
        else { t = now(); run(ctx, 0, r + 3); a = now() - t; t = now(); run(ctx, 1, r + 3); b = now() - t; }
        if (r >= 0) { ta[r] = a; tb[r] = b; wins += b < a; }
    }
    double diff = 0;
    for (size_t i = 0; i < count; i++) { double d = fabs((double)outA[i] - outB[i]); if (!(d <= diff)) diff = d; }
    qsort(ta, reps, sizeof(double), by_value); qsort(tb, reps, sizeof(double), by_value);
    printf("%s: A %.3f ms (%.1f GFLOP/s), B %.3f ms (%.1f GFLOP/s), B/A %.3f, B faster in %d of %d, max |A - B| %.3g\n", label,
           ta[reps / 2] * 1e3, flops / ta[reps / 2] / 1e9, tb[reps / 2] * 1e3, flops / tb[reps / 2] / 1e9, tb[reps / 2] / ta[reps / 2],
           wins, reps, diff);
}

typedef struct { int m, k, n, cold; float *a, *bias, *c[2]; float **packed[2]; int ops[1]; float args[1]; int nops; } gemm_ctx;
static void run_gemm(void *v, int side, int rep) {
    gemm_ctx *g = v;
    (side ? B_ck_gemm : A_ck_gemm)(g->m, g->n, g->k, g->a, g->k, g->packed[side][rep % g->cold], g->bias, g->c[side], g->n, g->ops, g->args, g->nops);
}

typedef struct { int b, h, tq, tk, c; float *q, *k, *v, *o[2]; } attention_ctx;
static void run_attention(void *v, int side, int rep) {
    (void)rep;
    attention_ctx *x = v;
    (side ? B_ck_attention : A_ck_attention)(x->b, x->h, x->tq, x->tk, x->c / x->h, x->q, (long)x->tq * x->c, x->c, x->k, (long)x->tk * x->c, x->c,
                                            x->v, (long)x->tk * x->c, x->c, x->o[side], (long)x->tq * x->c, x->c, 0.125f, 0);
}

typedef struct { int n, c, hw, stride, ho; float *src, *taps, *bias, *o[2]; } depthwise_ctx;
static void run_depthwise(void *v, int side, int rep) {
    (void)rep;
    depthwise_ctx *d = v;
    long si = (long)(d->hw * d->hw + 1) * d->c, di = (long)(d->ho * d->ho + 1) * d->c;  // a CLS row before each image
    (side ? B_ck_depthwise_nhwc : A_ck_depthwise_nhwc)(d->src + d->c, si, d->n, d->hw, d->hw, d->c, d->taps, d->bias, 3, 3, d->stride, 1,
                                                      d->ho, d->ho, d->o[side] + d->c, di);
}

int main(int argc, char **argv) {
    ck_team_set_threads(env_int("THREADS", 1));
    const char *kind = argc > 1 ? argv[1] : "";
    int built = !strcmp(kind, "depthwise") ? A_ck_depthwise_nhwc && B_ck_depthwise_nhwc : A_ck_gemm && B_ck_gemm && A_ck_attention && B_ck_attention;
    if (argc > 1 && !built) { fprintf(stderr, "%s: the A and B builds of its kernel file are not linked in\n", kind); return 2; }
    char label[160];
    if (argc == 6 && !strcmp(argv[1], "gemm")) {
        gemm_ctx g = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), env_int("COLD", 8)};
        if (g.cold < 1) g.cold = 1;
        g.a = floats((size_t)g.m * g.k, 0.37f); g.bias = floats(g.n, 0.11f);
        float *b = floats((size_t)g.k * g.n, 0.73f);
        for (int s = 0; s < 2; s++) {
            g.c[s] = floats((size_t)g.m * g.n, 0);
            g.packed[s] = malloc(sizeof(float *) * g.cold);
            for (int w = 0; w < g.cold; w++) {
                g.packed[s][w] = floats((s ? B_ck_gemm_packed_count : A_ck_gemm_packed_count)(g.k, g.n), 0);
                (s ? B_ck_gemm_pack : A_ck_gemm_pack)(b, g.n, 1, g.k, g.n, g.packed[s][w]);
            }
        }
        g.ops[0] = 1; g.nops = atoi(argv[5]) ? 1 : 0;
        snprintf(label, sizeof label, "gemm %dx%dx%d%s, %d threads", g.m, g.k, g.n, g.nops ? " + GELU" : "", env_int("THREADS", 1));
        compare(label, 2.0 * g.m * g.n * g.k, run_gemm, &g, g.c[0], g.c[1], (size_t)g.m * g.n);
    } else if (argc == 7 && !strcmp(argv[1], "attention")) {
        attention_ctx x = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6])};
        if (x.h <= 0 || x.c % x.h) { fprintf(stderr, "C must be a multiple of H\n"); return 2; }
        x.q = floats((size_t)x.b * x.tq * x.c, 0.37f); x.k = floats((size_t)x.b * x.tk * x.c, 0.71f); x.v = floats((size_t)x.b * x.tk * x.c, 0.13f);
        for (int s = 0; s < 2; s++) x.o[s] = floats((size_t)x.b * x.tq * x.c, 0);
        snprintf(label, sizeof label, "attention %d images, %d heads, %dx%d, d %d, %d threads", x.b, x.h, x.tq, x.tk, x.c / x.h, env_int("THREADS", 1));
        compare(label, 4.0 * x.b * x.tq * x.tk * x.c, run_attention, &x, x.o[0], x.o[1], (size_t)x.b * x.tq * x.c);
    } else if (argc == 6 && !strcmp(argv[1], "depthwise")) {
        depthwise_ctx d = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5])};
        if (d.stride < 1 || d.hw < 1) { fprintf(stderr, "bad size or stride\n"); return 2; }
        d.ho = (d.hw + 2 - 3) / d.stride + 1;
        d.src = floats((size_t)d.n * (d.hw * d.hw + 1) * d.c, 0.37f); d.taps = floats((size_t)9 * d.c, 0.11f); d.bias = floats(d.c, 0.05f);
        for (int s = 0; s < 2; s++) d.o[s] = floats((size_t)d.n * (d.ho * d.ho + 1) * d.c, 0);
        snprintf(label, sizeof label, "depthwise %d images, %d channels, %dx%d, stride %d, %d threads", d.n, d.c, d.hw, d.hw, d.stride, env_int("THREADS", 1));
        compare(label, 18.0 * d.n * d.ho * d.ho * d.c, run_depthwise, &d, d.o[0], d.o[1], (size_t)d.n * (d.ho * d.ho + 1) * d.c);
    } else {
        fprintf(stderr, "usage: gemm M K N GELU | attention B H TQ TK C | depthwise N C HW STRIDE\n");
        return 2;
    }
    return 0;
}
