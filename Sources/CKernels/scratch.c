// Each thread's scratch buffers for the GEMM, attention and convolution kernels (gemm_internal.h).
#include "gemm_internal.h"
#include <pthread.h>
#include <stdlib.h>

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
float *ck_scratch(int slot, size_t count) {
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
