// Shared by the AVX2 GEMM (gemm.c), the fused attention (attention.c) and the convolution
// (conv.c): the GEMM job and region, and each thread's scratch buffers (scratch.c). Not part of
// the module's interface.
#ifndef CK_GEMM_INTERNAL_H
#define CK_GEMM_INTERNAL_H
#include "ckernels.h"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK_HIDDEN __attribute__((visibility("hidden")))

// Rows of the micro-kernel's register tile.
#define MR 6

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

// Computes rows [m0, m1) × 16-column panels [p0, p1) of the job's output on the calling thread.
CK_HIDDEN void ck_gemm_region(const gemm_job *job, int m0, int m1, int p0, int p1);
// The whole GEMM, split across the kernels' team when it is large; -1 if scratch memory failed.
CK_HIDDEN int ck_gemm_run(int m, int n, int k, const float *a, long lda, const float *packed, const uint16_t *packed16, int format,
                          const float *bias, float *c, long ldc, const int *ops, const float *args, int nops);

// Each thread's scratch buffers, kept across calls and freed when the thread ends: packed A
// (≤ (mc + MR) × KC floats, about 260 KB), the attention kernel's packed K, V and scores (about
// 530 KB in cvt-13's first stage), one widened micro-panel of half-precision weights (≤ KC × 16
// floats), and a block of convolution patches (`ck_conv_nhwc`, about 64 KB). Fresh allocations
// per call would be fresh mappings that page-fault every time.
enum { SCRATCH_A, SCRATCH_ATTENTION, SCRATCH_B, SCRATCH_PATCHES, SCRATCH_SLOTS };
// At least `count` floats of slot `slot` for the calling thread (64-byte aligned), or NULL.
CK_HIDDEN float *ck_scratch(int slot, size_t count);

// On CPUs without these kernels the Swift side checks `ck_gemm_supported()` (or the function's
// return value) first; reaching a kernel anyway is a bug, reported rather than ignored.
static inline void ck_unreachable(const char *name) {
    fprintf(stderr, "CKernels: %s called on a CPU without AVX2 and FMA (check ck_gemm_supported first)\n", name);
    abort();
}

#endif
