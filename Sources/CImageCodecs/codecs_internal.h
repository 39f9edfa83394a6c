#ifndef CVT_CODECS_INTERNAL_H
#define CVT_CODECS_INTERNAL_H

#include "cvt_codecs.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/// A growable byte buffer for metadata (EXIF segments, XMP packets).
typedef struct cvt_bytes {
    uint8_t *data;
    size_t size;
} cvt_bytes;

static inline int cvt_bytes_append(cvt_bytes *b, const uint8_t *p, size_t n) {
    if (n == 0) return 1;
    uint8_t *q = (uint8_t *)realloc(b->data, b->size + n);
    if (!q) return 0;
    memcpy(q + b->size, p, n);
    b->data = q;
    b->size += n;
    return 1;
}

static inline int cvt_bytes_set(cvt_bytes *b, const uint8_t *p, size_t n) {
    b->size = 0;
    return cvt_bytes_append(b, p, n);
}

static inline void cvt_bytes_free(cvt_bytes *b) {
    free(b->data);
    b->data = NULL;
    b->size = 0;
}

static inline cvt_image *cvt_image_new(void) {
    cvt_image *img = (cvt_image *)calloc(1, sizeof(cvt_image));
    if (img) img->orientation = 1;
    return img;
}

static inline cvt_image *cvt_fail(cvt_image *img, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(img->message, sizeof img->message, fmt, ap);
    va_end(ap);
    img->status = status;
    free(img->pixels);
    img->pixels = NULL;
    return img;
}

/// True when max(1, w) × max(1, h) exceeds `limit` (0 = no limit), as Pillow counts.
static inline int cvt_too_many_pixels(uint64_t w, uint64_t h, uint64_t limit) {
    if (limit == 0) return 0;
    if (w < 1) w = 1;
    if (h < 1) h = 1;
    return w * h > limit;
}

#endif
