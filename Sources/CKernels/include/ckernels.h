#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// IEEE float16 -> float32 for `count` values (exact). Uses the F16C instructions when the CPU
/// has them (checked once at run time), a bit-exact scalar path otherwise.
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t count);

#endif
