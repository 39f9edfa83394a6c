// What the CPU offers, checked once at run time: the kernels in this module need AVX2 and FMA
// (chosen per call, so the package runs on any x86-64 CPU and others).
#include "ckernels.h"

#if defined(__x86_64__)
int ck_gemm_supported(void) {
    static int supported = -1;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return supported;
}

int ck_cpu_has_avx512f(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}
#else
int ck_gemm_supported(void) { return 0; }
int ck_cpu_has_avx512f(void) { return 0; }
#endif
