// Vectorised exp, erf and GELU shared by the GEMM epilogues (gemm.c) and the training kernels
// (train.c). AVX2+FMA; callers check the CPU first.
#ifndef CK_VECMATH_H
#define CK_VECMATH_H
#if defined(__x86_64__)
#include <immintrin.h>

// c0 + t·(c1 + t·(c2 + t·(c3 + t·(c4 + t·c5)))), by Horner's rule with an FMA per step.
__attribute__((target("avx2,fma"))) static inline __m256 poly5(__m256 t, float c0, float c1, float c2, float c3, float c4, float c5) {
    __m256 p = _mm256_set1_ps(c5);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c4));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c3));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c2));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c1));
    return _mm256_fmadd_ps(p, t, _mm256_set1_ps(c0));
}

// exp(x) for x ≤ 0 (a score minus its row's maximum): 2^n · exp(r), r = x − n·ln2 in [−ln2/2, ln2/2],
// degree-6 polynomial (< 2 ulp). n is rounded to nearest by adding 1.5·2²³ (its bits then hold n,
// so no round or convert instruction is needed). Below −87 the result is exp(−87) (≈ 1.6e-38), and
// NaN stays NaN.
__attribute__((target("avx2,fma"))) static inline __m256 exp_nonpositive_ps(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);  // max(a, b) returns b when either is NaN
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), magic);
    __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = poly5(r, 5.0000001201e-1f, 1.6666665459e-1f, 4.1665795894e-2f, 8.3334519073e-3f, 1.3981999507e-3f, 1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // t's bits are 0x4B400000 + n (n in [−126, 0]): 2^n's exponent field is n + 127.
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// erf(x/√2) ≈ x·P(x²)/Q(x²), a rational fit on |x| ≤ 5.6 (Scripts/fit_gelu_erf.py; 2e-8 in
// float64), and ±1 from |x| ≥ 5.5, where erf(x/√2) is ±1 to within float32's half ulp.
__attribute__((target("avx2,fma"))) static inline __m256 erf_sqrt2_ps(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f), xmax = _mm256_set1_ps(5.5f);
    __m256 ax = _mm256_min_ps(_mm256_andnot_ps(sign, x), xmax);
    __m256 xc = _mm256_or_ps(ax, _mm256_and_ps(sign, x));
    __m256 t = _mm256_mul_ps(xc, xc);
    // Coefficients as Scripts/fit_gelu_erf.py prints them (from x¹ and from x²).
    __m256 p = _mm256_mul_ps(poly5(t, 7.9788446426e-01f, 6.8225607276e-02f, 9.3797771260e-03f, 3.4204637632e-04f,
                                   1.2648253687e-05f, 4.4537735278e-08f), xc);
    __m256 q = poly5(t, 1.0f, 2.5217407942e-01f, 2.8786195442e-02f, 1.8970174715e-03f, 7.4127710832e-05f, 1.1814304344e-06f);
    __m256 erf = _mm256_div_ps(p, q);
    __m256 saturated = _mm256_cmp_ps(ax, xmax, _CMP_GE_OQ);
    return _mm256_blendv_ps(erf, _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, x)), saturated);
}

// GELU(x) = x/2 · (1 + erf(x/√2)) (the exact-erf GELU of PyTorch's `nn.GELU()`). Error over
// [−12, 12] against float64: at most 2.1e-7·max(|x|, 1). A rational fit rather than an exp-based
// formula: it is cheap enough that GELU costs little next to the GEMM whose epilogue it is, even
// when K is small (64 in cvt-13's first stage).
__attribute__((target("avx2,fma"))) static inline __m256 gelu_ps(__m256 x) {
    __m256 half = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
    return _mm256_fmadd_ps(half, erf_sqrt2_ps(x), half);
}

// GELU'(x) = Φ(x) + x·φ(x) = (1 + erf(x/√2))/2 + x·exp(−x²/2)/√(2π).
__attribute__((target("avx2,fma"))) static inline __m256 gelu_derivative_ps(__m256 x) {
    __m256 cdf = _mm256_fmadd_ps(erf_sqrt2_ps(x), _mm256_set1_ps(0.5f), _mm256_set1_ps(0.5f));
    __m256 pdf = _mm256_mul_ps(exp_nonpositive_ps(_mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(-0.5f))),
                               _mm256_set1_ps(0.3989422804014327f));
    return _mm256_fmadd_ps(x, pdf, cdf);
}

// Float32 → bfloat16 bits, rounded to nearest even (NaN → 0x7FC0), as oneDNN's reorder.
__attribute__((target("avx2,fma"))) static inline __m128i bf16_bits(__m256 x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
    // 32-bit lanes → 16-bit: pack within 128-bit halves, then gather the two halves' low quads.
    __m256i packed = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// Eight bfloat16 values (bits) → float32, exactly.
__attribute__((target("avx2,fma"))) static inline __m256 bf16_widen(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#endif

#include <stdint.h>
#include <string.h>

static inline uint16_t bf16_bits_scalar(float x) {
    if (x != x) return 0x7FC0;
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

static inline float bf16_widen_scalar(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}
#endif
