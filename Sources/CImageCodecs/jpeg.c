// JPEG decoding with libjpeg-turbo, matching Pillow's JpegImagePlugin + JpegDecode.c:
//   - library defaults: JDCT_ISLOW, fancy upsampling, block smoothing (Pillow changes them only
//     in draft mode);
//   - 1 component → "L", 3 → "RGB" (out_color_space JCS_RGB), 4 → "CMYK" decoded with Adobe
//     (inverted) polarity, then Pillow's cmyk2rgb; other component counts are refused;
//   - data that ends before the last scanline is decoded is an error ("image file is truncated"),
//     a missing tail after the last scanline (EOI) is not; libjpeg warnings are ignored;
//   - SOF9–SOF15 (arithmetic coding) are decoded as libjpeg decodes them for Pillow: an SOF9 in
//     front of Huffman-coded data gives the same (meaningless) pixels in both, not an error
//     (Tests/Fixtures/hostile/sof9_on_huffman*.jpg, decided by Pillow 13);
//   - EXIF: the first APP1 "Exif\0\0" segment plus later ones appended without their prefix;
//     XMP: the last APP1 "http://ns.adobe.com/xap/1.0/\0" packet (markers before the first SOS).

#include "codecs_internal.h"

#include <setjmp.h>
#include <stdio.h>

#include <jerror.h>
#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_mgr;

typedef struct {
    struct jpeg_source_mgr pub;
    const uint8_t *data;
    size_t size;
    int eof;  // set once the decoder asked for bytes beyond the end of the data
} source_mgr;

static const JOCTET fake_eoi[2] = {0xFF, JPEG_EOI};

static void on_error_exit(j_common_ptr cinfo) {
    error_mgr *err = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; }

static void src_init(j_decompress_ptr cinfo) { (void)cinfo; }

static void src_term(j_decompress_ptr cinfo) { (void)cinfo; }

static boolean src_fill(j_decompress_ptr cinfo) {
    source_mgr *src = (source_mgr *)cinfo->src;
    src->eof = 1;
    src->pub.next_input_byte = fake_eoi;
    src->pub.bytes_in_buffer = 2;
    return TRUE;
}

static void src_skip(j_decompress_ptr cinfo, long n) {
    source_mgr *src = (source_mgr *)cinfo->src;
    if (n <= 0) return;
    if ((size_t)n > src->pub.bytes_in_buffer) {
        src_fill(cinfo);
        return;
    }
    src->pub.next_input_byte += n;
    src->pub.bytes_in_buffer -= (size_t)n;
}

// Pillow's MULDIV255 and cmyk2rgb (Convert.c).
static inline uint8_t clip8(int v) { return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v; }

static inline int muldiv255(int a, int b) {
    int tmp = a * b + 128;
    return ((tmp >> 8) + tmp) >> 8;
}

cvt_image *cvt_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels) {
    cvt_image *img = cvt_image_new();
    if (!img) return NULL;
    if (!data || size == 0) return cvt_fail(img, CVT_ERR_EMPTY, "no data (0 bytes)");
    if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) {
        return cvt_fail(img, CVT_ERR_FORMAT, "not a JPEG file (missing SOI marker)");
    }

    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    source_mgr src;
    cvt_bytes exif = {0}, xmp = {0};
    uint8_t *volatile pixels = NULL;
    JSAMPLE *volatile row = NULL;
    volatile int stage = 0;  // 0 header, 1 start_decompress, 2 scanlines, 3 finish

    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.output_message = on_output_message;
    err.message[0] = 0;

    if (setjmp(err.jump)) {
        int code = err.pub.msg_code;
        jpeg_destroy_decompress(&cinfo);
        free(row);
        cvt_bytes_free(&exif);
        cvt_bytes_free(&xmp);
        if (stage == 3) {  // error after every row was decoded: Pillow raises too
            free(pixels);
            return cvt_fail(img, CVT_ERR_CORRUPT, "corrupt JPEG data after the image: %s", err.message);
        }
        free(pixels);
        if (code == JERR_EMPTY_IMAGE) return cvt_fail(img, CVT_ERR_EMPTY, "zero-sized JPEG image");
        if (src.eof) return cvt_fail(img, CVT_ERR_TRUNCATED, "truncated JPEG data (%s)", err.message);
        if (code == JERR_SOF_UNSUPPORTED || code == JERR_BAD_PRECISION || code == JERR_ARITH_NOTIMPL ||
            code == JERR_NOT_COMPILED || code == JERR_CONVERSION_NOTIMPL) {
            return cvt_fail(img, CVT_ERR_UNSUPPORTED, "unsupported JPEG variant: %s", err.message);
        }
        return cvt_fail(img, CVT_ERR_CORRUPT, "corrupt JPEG data: %s", err.message);
    }

    jpeg_create_decompress(&cinfo);
    src.pub.init_source = src_init;
    src.pub.fill_input_buffer = src_fill;
    src.pub.skip_input_data = src_skip;
    src.pub.resync_to_restart = jpeg_resync_to_restart;
    src.pub.term_source = src_term;
    src.pub.next_input_byte = data;
    src.pub.bytes_in_buffer = size;
    src.data = data;
    src.size = size;
    src.eof = 0;
    cinfo.src = &src.pub;
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);

    jpeg_read_header(&cinfo, TRUE);
    if (src.eof) {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_TRUNCATED, "truncated JPEG data (ends inside the header)");
    }

    const uint32_t w = cinfo.image_width, h = cinfo.image_height;
    const int comps = cinfo.num_components;
    img->width = w;
    img->height = h;
    if (w == 0 || h == 0) {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_EMPTY, "zero-sized JPEG image (%ux%u)", w, h);
    }
    if (cvt_too_many_pixels(w, h, max_pixels)) {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_TOO_LARGE,
                        "image size (%llu pixels, %ux%u) exceeds the limit of %llu pixels "
                        "(possible decompression bomb)",
                        (unsigned long long)w * h, w, h, (unsigned long long)max_pixels);
    }
    if (comps == 1) {
        strcpy(img->mode, "L");
        cinfo.out_color_space = JCS_GRAYSCALE;
    } else if (comps == 3) {
        strcpy(img->mode, "RGB");
        cinfo.out_color_space = JCS_RGB;
    } else if (comps == 4) {
        strcpy(img->mode, "CMYK");
        cinfo.out_color_space = JCS_CMYK;
    } else {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_UNSUPPORTED, "cannot handle %d-component JPEG images", comps);
    }

    // Metadata from the markers read so far (those before the first SOS, as Pillow's parser).
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
        if (m->marker != JPEG_APP0 + 1) continue;
        if (m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            int ok = exif.size == 0 ? cvt_bytes_append(&exif, m->data, m->data_length)
                                    : cvt_bytes_append(&exif, m->data + 6, m->data_length - 6);
            if (!ok) {
                strcpy(err.message, "out of memory");
                longjmp(err.jump, 1);
            }
        } else if (m->data_length >= 29 && memcmp(m->data, "http://ns.adobe.com/xap/1.0/\0", 29) == 0) {
            if (!cvt_bytes_set(&xmp, m->data + 29, m->data_length - 29)) {
                strcpy(err.message, "out of memory");
                longjmp(err.jump, 1);
            }
        }
    }
    img->orientation = cvt_orientation_from_metadata(exif.data, exif.size, xmp.data, xmp.size);
    cvt_bytes_free(&exif);
    cvt_bytes_free(&xmp);

    const size_t npix = (size_t)w * h;
    if (npix > SIZE_MAX / 3) {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_MEMORY, "image too large for memory (%ux%u)", w, h);
    }
    pixels = (uint8_t *)malloc(npix * 3);
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return cvt_fail(img, CVT_ERR_MEMORY, "out of memory for a %ux%u image", w, h);
    }

    stage = 1;
    jpeg_start_decompress(&cinfo);
    if (src.eof) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return cvt_fail(img, CVT_ERR_TRUNCATED, "truncated JPEG data (image file is truncated)");
    }
    const int outc = cinfo.output_components;
    if (cinfo.output_width != w || cinfo.output_height != h || outc != comps) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return cvt_fail(img, CVT_ERR_CORRUPT, "unexpected JPEG output geometry");
    }
    if (comps != 3) {
        row = (JSAMPLE *)malloc((size_t)w * comps);
        if (!row) {
            jpeg_destroy_decompress(&cinfo);
            free(pixels);
            return cvt_fail(img, CVT_ERR_MEMORY, "out of memory");
        }
    }

    stage = 2;
    while (cinfo.output_scanline < h) {
        const uint32_t y = cinfo.output_scanline;
        uint8_t *out = pixels + (size_t)y * w * 3;
        JSAMPROW target = comps == 3 ? (JSAMPROW)out : row;
        if (jpeg_read_scanlines(&cinfo, &target, 1) != 1 || src.eof) {
            jpeg_destroy_decompress(&cinfo);
            free(pixels);
            free(row);
            return cvt_fail(img, CVT_ERR_TRUNCATED,
                            "truncated JPEG data (image file is truncated at row %u of %u)", y, h);
        }
        if (comps == 1) {
            for (uint32_t x = 0; x < w; x++) {
                uint8_t v = row[x];
                out[3 * x] = v;
                out[3 * x + 1] = v;
                out[3 * x + 2] = v;
            }
        } else if (comps == 4) {
            for (uint32_t x = 0; x < w; x++) {
                // rawmode "CMYK;I": Adobe polarity, inverted on unpack
                int c = 255 - row[4 * x], m = 255 - row[4 * x + 1];
                int yy = 255 - row[4 * x + 2], k = 255 - row[4 * x + 3];
                int nk = 255 - k;
                out[3 * x] = clip8(nk - muldiv255(c, nk));
                out[3 * x + 1] = clip8(nk - muldiv255(m, nk));
                out[3 * x + 2] = clip8(nk - muldiv255(yy, nk));
            }
        }
    }

    stage = 3;
    jpeg_finish_decompress(&cinfo);  // running out of data here is fine (Pillow tolerates it)
    jpeg_destroy_decompress(&cinfo);
    free(row);
    img->pixels = pixels;
    img->status = CVT_OK;
    return img;
}

void cvt_image_free(cvt_image *image) {
    if (!image) return;
    free(image->pixels);
    free(image);
}
