#ifndef CVT_CODECS_H
#define CVT_CODECS_H

// JPEG (libjpeg-turbo) and PNG (libpng) decoding over in-memory buffers, with the conversion to
// 8-bit RGB that Pillow's `Image.open(...).convert("RGB")` performs, and the EXIF orientation that
// `PIL.ImageOps.exif_transpose` would apply. Errors never exit or print: they come back as a status
// code and a message. The orientation is reported, not applied (the caller transposes).

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Status codes of `cvt_image.status`.
enum {
    CVT_OK = 0,
    CVT_ERR_FORMAT = 1,     ///< not this format (bad signature)
    CVT_ERR_CORRUPT = 2,    ///< the codec library reported an error
    CVT_ERR_TRUNCATED = 3,  ///< the data ends before the image is complete
    CVT_ERR_TOO_LARGE = 4,  ///< width × height exceeds the pixel limit (checked before allocating)
    CVT_ERR_EMPTY = 5,      ///< zero width or height, or no data at all
    CVT_ERR_MEMORY = 6,     ///< allocation failed
    CVT_ERR_UNSUPPORTED = 7 ///< a valid file of a kind this decoder does not handle
};

/// Pillow's default decompression-bomb limit: 2 × `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485).
/// Pillow refuses an image when max(1, w) × max(1, h) is greater than this.
#define CVT_DEFAULT_MAX_PIXELS 178956970ULL

/// A decoded image. Allocated by the decoders; release with `cvt_image_free`.
typedef struct cvt_image {
    int status;             ///< CVT_OK or one of the CVT_ERR_* codes
    char message[256];      ///< human-readable reason when status != CVT_OK ("" otherwise)
    uint32_t width;         ///< stored size, before any EXIF orientation is applied
    uint32_t height;
    uint8_t *pixels;        ///< width × height × 3 bytes, row-major RGB (HWC); NULL on error
    int orientation;        ///< 1…8: the EXIF orientation Pillow's exif_transpose acts on (1 = none)
    char mode[8];           ///< Pillow's mode of the stored image: "RGB", "L", "LA", "RGBA", "P",
                            ///< "1", "I;16", "CMYK"
} cvt_image;

/// Decodes a JPEG. Only NULL when the result struct itself cannot be allocated.
/// `max_pixels` = 0 disables the pixel limit.
cvt_image *cvt_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels);

/// Decodes a PNG (first frame of an APNG). Same contract as `cvt_decode_jpeg`.
cvt_image *cvt_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels);

/// Frees a result of the decoders (NULL is allowed).
void cvt_image_free(cvt_image *image);

/// Reads the Orientation tag (0x0112) of IFD0 from an EXIF blob the way Pillow's `Image.Exif`
/// does. `data` is a TIFF structure, optionally preceded by one or two "Exif\0\0" prefixes.
/// Returns 1 and sets `*value` when the tag is present (`*value` = 0 when Pillow would hold a
/// non-integer value for it); returns 0 when the tag is absent or the blob is unreadable.
int cvt_exif_orientation_tag(const uint8_t *data, size_t size, long *value);

/// The orientation (1…8) exif_transpose would act on, given an EXIF blob and an XMP packet
/// (either may be NULL/0). Values outside 2…8 give 1, as in Pillow.
int cvt_orientation_from_metadata(const uint8_t *exif, size_t exif_size,
                                  const uint8_t *xmp, size_t xmp_size);

#ifdef __cplusplus
}
#endif

#endif
