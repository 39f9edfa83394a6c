// PNG decoding with libpng, converted to RGB the way Pillow's PngImagePlugin + convert("RGB") does:
//   gray 1 bit ("1") → 0/255;  gray 2/4 bit ("L", "L;2"/"L;4") → scaled ×85 / ×17;  gray 8 ("L");
//   gray 16 ("I;16") → min(v, 255) (Pillow's I;16 → RGB clips, it does not scale);
//   gray+alpha 8 ("LA") and 16 ("RGBA" from "LA;16B") → gray replicated, high byte, alpha dropped;
//   RGB/RGBA 16 → high byte of each sample; alpha dropped, never composited; palette ("P") →
//   palette colour, indices past the PLTE entries → black; tRNS, gAMA, sBIT etc. are ignored.
// Chunk CRCs are verified for the chunks before the first IDAT (Pillow raises "broken PNG file"),
// not for IDAT and later chunks (Pillow does not read them); the zlib Adler-32 is not checked and
// a damaged or missing tail after the image data is tolerated, also as in Pillow.
// EXIF: the last eXIf chunk, else a "Raw profile type exif" text chunk; XMP: the last
// "XML:com.adobe.xmp" text chunk.

#include "codecs_internal.h"

#include <setjmp.h>

#include <png.h>

typedef struct {
    jmp_buf jump;
    char message[200];
} error_ctx;

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t pos;
    int truncated;
} source_ctx;

static void on_error(png_structp png, png_const_charp msg) {
    error_ctx *e = (error_ctx *)png_get_error_ptr(png);
    snprintf(e->message, sizeof e->message, "%s", msg);
    longjmp(e->jump, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void on_read(png_structp png, png_bytep out, size_t n) {
    source_ctx *s = (source_ctx *)png_get_io_ptr(png);
    if (s->size - s->pos < n) {
        s->truncated = 1;
        png_error(png, "unexpected end of file");
    }
    memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t crc32_update(const uint32_t *table, uint32_t crc, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

// Walks the chunk list: CRC check before IDAT, IHDR size, last eXIf. Returns a status code.
static int scan_chunks(const uint8_t *data, size_t size, cvt_bytes *exif, uint32_t *w, uint32_t *h,
                       char *message, size_t message_size) {
    uint32_t table[256];
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
    size_t pos = 8;
    int seen_idat = 0, first = 1;
    while (size - pos >= 12) {
        uint32_t len = be32(data + pos);
        const uint8_t *type = data + pos + 4;
        if (len > 0x7FFFFFFFu || size - pos - 12 < len) break;  // truncated: libpng reports it
        const uint8_t *body = data + pos + 8;
        if (memcmp(type, "IDAT", 4) == 0) seen_idat = 1;
        if (!seen_idat) {
            uint32_t crc = crc32_update(table, 0xFFFFFFFFu, type, 4 + (size_t)len) ^ 0xFFFFFFFFu;
            if (crc != be32(body + len)) {
                snprintf(message, message_size, "broken PNG file (bad checksum in chunk '%c%c%c%c')",
                         type[0], type[1], type[2], type[3]);
                return CVT_ERR_CORRUPT;
            }
        }
        if (first && memcmp(type, "IHDR", 4) == 0 && len >= 8) {
            *w = be32(body);
            *h = be32(body + 4);
        }
        first = 0;
        if (memcmp(type, "eXIf", 4) == 0) {
            if (!cvt_bytes_set(exif, (const uint8_t *)"Exif\0\0", 6) || !cvt_bytes_append(exif, body, len)) {
                snprintf(message, message_size, "out of memory");
                return CVT_ERR_MEMORY;
            }
        }
        if (memcmp(type, "IEND", 4) == 0) break;
        pos += 12 + (size_t)len;
    }
    return CVT_OK;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Pillow: bytes.fromhex("".join(text.split("\n")[3:])). Returns 0 when the text is not valid.
static int decode_raw_profile(const char *text, cvt_bytes *out) {
    const char *p = text;
    for (int lines = 0; lines < 3; lines++) {
        p = strchr(p, '\n');
        if (!p) return 0;
        p++;
    }
    out->size = 0;
    for (;;) {
        while (*p == '\n' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f') p++;
        if (!*p) break;
        int a = hexval((unsigned char)p[0]);
        int b = a < 0 || p[1] == '\n' ? -1 : hexval((unsigned char)p[1]);
        if (b < 0) return 0;
        uint8_t byte = (uint8_t)(a * 16 + b);
        if (!cvt_bytes_append(out, &byte, 1)) return 0;
        p += 2;
    }
    return 1;
}

cvt_image *cvt_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels) {
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    cvt_image *img = cvt_image_new();
    if (!img) return NULL;
    if (!data || size == 0) return cvt_fail(img, CVT_ERR_EMPTY, "no data (0 bytes)");
    if (size < 8 || memcmp(data, signature, 8) != 0) {
        return cvt_fail(img, CVT_ERR_FORMAT, "not a PNG file (bad signature)");
    }

    cvt_bytes exif = {0}, xmp = {0}, raw_exif = {0};
    uint32_t hdr_w = 1, hdr_h = 1;
    char scan_message[128] = {0};
    int st = scan_chunks(data, size, &exif, &hdr_w, &hdr_h, scan_message, sizeof scan_message);
    if (st != CVT_OK) {
        cvt_bytes_free(&exif);
        return cvt_fail(img, st, "%s", scan_message);
    }
    if (hdr_w == 0 || hdr_h == 0) {
        cvt_bytes_free(&exif);
        img->width = hdr_w;
        img->height = hdr_h;
        return cvt_fail(img, CVT_ERR_EMPTY, "zero-sized PNG image (%ux%u)", hdr_w, hdr_h);
    }

    error_ctx err;
    source_ctx src = {data, size, 8, 0};
    err.message[0] = 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
    if (!png) {
        cvt_bytes_free(&exif);
        return cvt_fail(img, CVT_ERR_MEMORY, "out of memory");
    }
    png_infop info = png_create_info_struct(png);
    png_infop end_info = png_create_info_struct(png);
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile rows = NULL;
    png_bytep *volatile row_ptrs = NULL;
    volatile int stage = 0;  // 0 before the image data, 1 image rows, 2 trailing chunks
    if (!info || !end_info) {
        png_destroy_read_struct(&png, info ? &info : NULL, end_info ? &end_info : NULL);
        cvt_bytes_free(&exif);
        return cvt_fail(img, CVT_ERR_MEMORY, "out of memory");
    }

    if (setjmp(err.jump)) {
        if (stage == 2) goto trailing_done;  // Pillow ignores problems after the image data
        png_destroy_read_struct(&png, &info, &end_info);
        free(pixels);
        free(rows);
        free(row_ptrs);
        cvt_bytes_free(&exif);
        if (src.truncated) return cvt_fail(img, CVT_ERR_TRUNCATED, "truncated PNG data (%s)", err.message);
        return cvt_fail(img, CVT_ERR_CORRUPT, "corrupt PNG data: %s", err.message);
    }

    png_set_sig_bytes(png, 8);
    png_set_read_fn(png, &src, on_read);
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);  // pre-IDAT CRCs checked above
    png_set_user_limits(png, 0x7FFFFFFF, 0x7FFFFFFF);
#ifdef PNG_IGNORE_ADLER32
    png_set_option(png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
#endif
    png_set_benign_errors(png, 1);
    png_read_info(png, info);

    png_uint_32 w, h;
    int bit_depth, color_type, interlace;
    png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, &interlace, NULL, NULL);
    img->width = w;
    img->height = h;
    if (cvt_too_many_pixels(w, h, max_pixels)) {
        png_destroy_read_struct(&png, &info, &end_info);
        cvt_bytes_free(&exif);
        return cvt_fail(img, CVT_ERR_TOO_LARGE,
                        "image size (%llu pixels, %ux%u) exceeds the limit of %llu pixels "
                        "(possible decompression bomb)",
                        (unsigned long long)w * h, (unsigned)w, (unsigned)h, (unsigned long long)max_pixels);
    }

    // Pillow's mode, and the libpng transforms that give its unpacked samples.
    int in_channels = 1, gray16 = 0, gray_scale = 1;
    uint8_t palette[256 * 3];
    memset(palette, 0, sizeof palette);
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
        if (bit_depth == 16) {
            strcpy(img->mode, "I;16");
            gray16 = 1;
        } else {
            strcpy(img->mode, bit_depth == 1 ? "1" : "L");
            if (bit_depth < 8) {
                png_set_packing(png);
                gray_scale = 255 / ((1 << bit_depth) - 1);
            }
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        strcpy(img->mode, bit_depth == 16 ? "RGBA" : "LA");
        in_channels = 2;
        break;
    case PNG_COLOR_TYPE_RGB:
        strcpy(img->mode, "RGB");
        in_channels = 3;
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
        strcpy(img->mode, "RGBA");
        in_channels = 4;
        break;
    case PNG_COLOR_TYPE_PALETTE: {
        strcpy(img->mode, "P");
        if (bit_depth < 8) png_set_packing(png);
        png_colorp plte = NULL;
        int nplte = 0;
        if (png_get_PLTE(png, info, &plte, &nplte) && plte) {
            if (nplte > 256) nplte = 256;
            for (int i = 0; i < nplte; i++) {
                palette[3 * i] = plte[i].red;
                palette[3 * i + 1] = plte[i].green;
                palette[3 * i + 2] = plte[i].blue;
            }
        }
        break;
    }
    default:
        png_error(png, "unknown PNG colour type");
    }
    if (bit_depth == 16 && !gray16) png_set_strip_16(png);  // high byte, as Pillow's ";16B" modes
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);

    const size_t rowbytes = png_get_rowbytes(png, info);
    const size_t expect = (size_t)w * in_channels * (gray16 ? 2 : 1);
    if (rowbytes != expect) png_error(png, "unexpected row layout");
    const size_t npix = (size_t)w * h;
    if (npix > SIZE_MAX / 3 || (passes > 1 && rowbytes > SIZE_MAX / h)) png_error(png, "image too large");
    pixels = (uint8_t *)malloc(npix * 3);
    rows = (uint8_t *)malloc(passes > 1 ? rowbytes * h : rowbytes);
    if (passes > 1) row_ptrs = (png_bytep *)malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows || (passes > 1 && !row_ptrs)) png_error(png, "out of memory");

    stage = 1;
    if (passes > 1) {
        for (uint32_t y = 0; y < h; y++) row_ptrs[y] = rows + (size_t)y * rowbytes;
        png_read_image(png, row_ptrs);
    }
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *r = rows;
        if (passes > 1) {
            r = row_ptrs[y];
        } else {
            png_read_row(png, r, NULL);
        }
        uint8_t *out = pixels + (size_t)y * w * 3;
        switch (color_type) {
        case PNG_COLOR_TYPE_GRAY:
            for (uint32_t x = 0; x < w; x++) {
                unsigned v = gray16 ? (((unsigned)r[2 * x] << 8) | r[2 * x + 1]) : (unsigned)r[x] * gray_scale;
                uint8_t g = v > 255 ? 255 : (uint8_t)v;
                out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = g;
            }
            break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            for (uint32_t x = 0; x < w; x++) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = r[2 * x];
            break;
        case PNG_COLOR_TYPE_RGB:
            memcpy(out, r, (size_t)w * 3);
            break;
        case PNG_COLOR_TYPE_RGB_ALPHA:
            for (uint32_t x = 0; x < w; x++) {
                out[3 * x] = r[4 * x];
                out[3 * x + 1] = r[4 * x + 1];
                out[3 * x + 2] = r[4 * x + 2];
            }
            break;
        case PNG_COLOR_TYPE_PALETTE:
            for (uint32_t x = 0; x < w; x++) memcpy(out + 3 * x, palette + 3 * (size_t)r[x], 3);
            break;
        }
    }

    stage = 2;
    png_read_end(png, end_info);

trailing_done:
    if (exif.size == 0 || !xmp.size) {
        png_infop infos[2] = {info, end_info};
        for (int k = 0; k < 2; k++) {
            png_textp text = NULL;
            int n = 0;
            if (!png_get_text(png, infos[k], &text, &n) || !text) continue;
            for (int i = 0; i < n; i++) {
                if (!text[i].key || !text[i].text) continue;
                if (strcmp(text[i].key, "XML:com.adobe.xmp") == 0) {
                    cvt_bytes_set(&xmp, (const uint8_t *)text[i].text, strlen(text[i].text));
                } else if (strcmp(text[i].key, "Raw profile type exif") == 0) {
                    cvt_bytes tmp = {0};
                    if (decode_raw_profile(text[i].text, &tmp)) {
                        cvt_bytes_free(&raw_exif);
                        raw_exif = tmp;
                    } else {
                        cvt_bytes_free(&tmp);
                    }
                }
            }
        }
    }
    if (exif.size) {
        img->orientation = cvt_orientation_from_metadata(exif.data, exif.size, xmp.data, xmp.size);
    } else {
        img->orientation = cvt_orientation_from_metadata(raw_exif.data, raw_exif.size, xmp.data, xmp.size);
    }
    png_destroy_read_struct(&png, &info, &end_info);
    free(rows);
    free(row_ptrs);
    cvt_bytes_free(&exif);
    cvt_bytes_free(&xmp);
    cvt_bytes_free(&raw_exif);
    img->pixels = pixels;
    img->status = CVT_OK;
    return img;
}
