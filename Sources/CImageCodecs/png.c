// PNG decoding with libpng, converted to RGB the way Pillow's PngImagePlugin + convert("RGB") does:
//   gray 1 bit ("1") → 0/255;  gray 2/4 bit ("L", "L;2"/"L;4") → scaled ×85 / ×17;  gray 8 ("L");
//   gray 16 ("I;16") → min(v, 255) (Pillow's I;16 → RGB clips, it does not scale);
//   gray+alpha 8 ("LA") and 16 ("RGBA" from "LA;16B") → gray replicated, high byte, alpha dropped;
//   RGB/RGBA 16 → high byte of each sample; alpha dropped, never composited; palette ("P") →
//   palette colour, indices past the PLTE entries → black; tRNS, gAMA, sBIT etc. are ignored.
// Which files are accepted follows Pillow's reading of the chunk list (PngImagePlugin.py:
// PngImageFile._open before the image data, load_read for it, load_end after it), applied by
// normalize_chunks before libpng sees the data, which then gets a canonical chunk list:
//   before the first IDAT: every chunk complete with a valid CRC and a 4-letter type, else an
//   error; a repeated IHDR or PLTE replaces the earlier one; a palette image without PLTE is all
//   black; APNG fcTL sequence numbers must start at 0 and the frame lie inside the image;
//   the image data: consecutive IDATs, their CRCs unchecked, the last one may run past the end of
//   the file (its bytes up to the end are the data); the zlib Adler-32 is checked when the stream
//   ends (Pillow's zlib decoder reports "broken data stream");
//   after it: chunks are read until IEND, an fcTL of an animation, an incomplete chunk header or
//   an invalid type; a chunk whose declared length runs past the end of the file is an error
//   (Pillow: "Truncated File Read", its own Tests/images/truncated_end_chunk.png).
// Memory: no chunk can declare more bytes than the file has, libpng's ancillary-chunk allocations
// are capped (png_set_chunk_malloc_max), and an image whose pixels cannot fit in its image data
// even at deflate's largest ratio (1032:1) is refused as truncated before pixels are allocated.
// EXIF: the last eXIf chunk, else a "Raw profile type exif" text chunk; XMP: the last
// "XML:com.adobe.xmp" text chunk.

#include "codecs_internal.h"

#include <setjmp.h>

#include <png.h>

typedef struct {
    jmp_buf jump;
    char message[200];
    int bad_adler;  // zlib reported "incorrect data check" (a benign error in libpng)
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
    error_ctx *e = (error_ctx *)png_get_error_ptr(png);
    if (strstr(msg, "incorrect data check")) e->bad_adler = 1;
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

static void put32(cvt_bytes *b, uint32_t v, int *ok) {
    uint8_t q[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    if (!cvt_bytes_append(b, q, 4)) *ok = 0;
}

static int is_letter(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static int valid_type(const uint8_t *t) { return is_letter(t[0]) && is_letter(t[1]) && is_letter(t[2]) && is_letter(t[3]); }

// A chunk type for a message: letters as they are, anything else as \xNN (file bytes never
// reach a terminal unescaped).
static void type_text(const uint8_t *t, char out[20]) {
    char *p = out;
    for (int i = 0; i < 4; i++) {
        if (t[i] >= 0x20 && t[i] < 0x7F && t[i] != '\\' && t[i] != '\'') *p++ = (char)t[i];
        else p += sprintf(p, "\\x%02x", t[i]);
    }
    *p = 0;
}

typedef struct {
    cvt_bytes out;            // the canonical chunk list handed to libpng
    cvt_bytes exif;           // the last eXIf, with the "Exif\0\0" prefix
    uint32_t width, height;   // from the last IHDR
    uint8_t depth, color_type, interlace;
    uint64_t idat_bytes;      // image data available
} png_layout;

// Pillow's reading of the chunk list (see the top of this file). Returns a status code.
static int normalize_chunks(const uint8_t *data, size_t size, png_layout *L, char *message, size_t message_size) {
    uint32_t table[256];
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
    int ok = 1, animated = 0;
    const uint8_t *ihdr = NULL, *plte = NULL;
    uint32_t plte_len = 0;
    long fctl_seq = -1;
    char tt[20];
    size_t pos = 8;
    // Before the image data: collect, check, and remember the last IHDR and PLTE.
    size_t first_idat = 0;
    for (;;) {
        if (size - pos < 8) {
            snprintf(message, message_size, "truncated PNG file: no image data (IDAT) before the end of the file");
            return CVT_ERR_TRUNCATED;
        }
        uint32_t len = be32(data + pos);
        const uint8_t *type = data + pos + 4, *body = data + pos + 8;
        type_text(type, tt);
        if (!valid_type(type)) {
            snprintf(message, message_size, "broken PNG file (chunk type '%s')", tt);
            return CVT_ERR_CORRUPT;
        }
        if (memcmp(type, "IDAT", 4) == 0) { first_idat = pos; break; }
        if (size - pos - 8 < 4 || len > size - pos - 12) {
            snprintf(message, message_size, "truncated PNG file: chunk '%s' declares %u bytes but the file ends %zu bytes later",
                     tt, len, size - pos - 8);
            return CVT_ERR_TRUNCATED;
        }
        uint32_t crc = crc32_update(table, 0xFFFFFFFFu, type, 4 + (size_t)len) ^ 0xFFFFFFFFu;
        if (crc != be32(body + len)) {
            snprintf(message, message_size, "broken PNG file (bad checksum in chunk '%s')", tt);
            return CVT_ERR_CORRUPT;
        }
        if (memcmp(type, "IHDR", 4) == 0) {
            if (len < 13) {
                snprintf(message, message_size, "truncated IHDR chunk (%u bytes)", len);
                return CVT_ERR_CORRUPT;
            }
            ihdr = body;
        } else if (memcmp(type, "PLTE", 4) == 0) {
            plte = body;
            plte_len = len;
        } else if (memcmp(type, "acTL", 4) == 0) {
            animated = 1;
        } else if (memcmp(type, "fcTL", 4) == 0 && len >= 26 && ihdr) {
            // PngStream.chunk_fcTL: sequence numbers from 0, the frame non-empty and inside the image.
            uint32_t seq = be32(body), fw = be32(body + 4), fh = be32(body + 8), fx = be32(body + 12), fy = be32(body + 16);
            if ((fctl_seq < 0 && seq != 0) || (fctl_seq >= 0 && (long)seq != fctl_seq + 1)) {
                snprintf(message, message_size, "APNG contains frame sequence errors (fcTL %u)", seq);
                return CVT_ERR_CORRUPT;
            }
            fctl_seq = seq;
            if (fw == 0 || fh == 0 || (uint64_t)fx + fw > be32(ihdr) || (uint64_t)fy + fh > be32(ihdr + 4)) {
                snprintf(message, message_size, "APNG contains invalid frames (fcTL %u: %ux%u at %u,%u)", seq, fw, fh, fx, fy);
                return CVT_ERR_CORRUPT;
            }
        } else if (memcmp(type, "eXIf", 4) == 0) {
            if (!cvt_bytes_set(&L->exif, (const uint8_t *)"Exif\0\0", 6) || !cvt_bytes_append(&L->exif, body, len)) ok = 0;
        }
        pos += 12 + (size_t)len;
    }
    if (!ihdr) {
        snprintf(message, message_size, "broken PNG file (no IHDR chunk before the image data)");
        return CVT_ERR_CORRUPT;
    }
    L->width = be32(ihdr);
    L->height = be32(ihdr + 4);
    L->depth = ihdr[8];
    L->color_type = ihdr[9];
    L->interlace = ihdr[12];

    // The canonical list: signature, the last IHDR, the other chunks before the data, the PLTE.
    if (!cvt_bytes_append(&L->out, data, 8)) ok = 0;
    put32(&L->out, 13, &ok);
    if (!cvt_bytes_append(&L->out, ihdr - 4, 4 + 13)) ok = 0;
    put32(&L->out, crc32_update(table, 0xFFFFFFFFu, ihdr - 4, 17) ^ 0xFFFFFFFFu, &ok);
    for (size_t p = 8; p < first_idat;) {
        uint32_t len = be32(data + p);
        const uint8_t *type = data + p + 4;
        if (memcmp(type, "IHDR", 4) != 0 && memcmp(type, "PLTE", 4) != 0 && memcmp(type, "IEND", 4) != 0) {
            if (!cvt_bytes_append(&L->out, data + p, 12 + (size_t)len)) ok = 0;
        }
        p += 12 + (size_t)len;
    }
    if (plte || L->color_type == 3) {
        // Pillow keeps the last PLTE; a palette image without one converts to black.
        static const uint8_t black[256 * 3];
        uint32_t n = plte ? plte_len : 3u * (1u << (L->depth <= 8 ? L->depth : 8));
        size_t at = L->out.size;
        put32(&L->out, n, &ok);
        if (!cvt_bytes_append(&L->out, (const uint8_t *)"PLTE", 4) || !cvt_bytes_append(&L->out, plte ? plte : black, n)) ok = 0;
        if (ok) put32(&L->out, crc32_update(table, 0xFFFFFFFFu, L->out.data + at + 4, 4 + (size_t)n) ^ 0xFFFFFFFFu, &ok);
    }

    // The image data: consecutive IDATs (PngImageFile.load_read); the last may run past the end.
    pos = first_idat;
    while (size - pos >= 8 && memcmp(data + pos + 4, "IDAT", 4) == 0) {
        uint32_t len = be32(data + pos);
        size_t avail = size - pos - 8;
        uint32_t take = len <= avail ? len : (uint32_t)(avail > 0x7FFFFFFFu ? 0x7FFFFFFFu : avail);
        put32(&L->out, take, &ok);
        if (!cvt_bytes_append(&L->out, data + pos + 4, 4 + (size_t)take)) ok = 0;
        put32(&L->out, 0, &ok);  // IDAT CRCs are not checked (PNG_CRC_QUIET_USE), as in Pillow
        L->idat_bytes += take;
        if (len > avail || avail - len < 4) { pos = size; break; }
        pos += 12 + (size_t)len;
    }

    // After it (PngImageFile.load_end): until IEND, an animation's fcTL, or a header that cannot
    // be read; a chunk whose body runs past the end of the file is an error.
    while (size - pos >= 8) {
        uint32_t len = be32(data + pos);
        const uint8_t *type = data + pos + 4;
        if (!valid_type(type) || memcmp(type, "IEND", 4) == 0 || (animated && memcmp(type, "fcTL", 4) == 0)) break;
        if (len > size - pos - 8) {
            type_text(type, tt);
            snprintf(message, message_size, "truncated PNG file: chunk '%s' after the image data declares %u bytes but the file ends %zu bytes later",
                     tt, len, size - pos - 8);
            return CVT_ERR_TRUNCATED;
        }
        size_t whole = size - pos - 8 - len >= 4 ? 12 + (size_t)len : size - pos;
        if (whole == 12 + (size_t)len) {
            if (!cvt_bytes_append(&L->out, data + pos, whole)) ok = 0;
            if (memcmp(type, "eXIf", 4) == 0 &&
                (!cvt_bytes_set(&L->exif, (const uint8_t *)"Exif\0\0", 6) || !cvt_bytes_append(&L->exif, data + pos + 8, len))) ok = 0;
        }
        pos += whole;
    }
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
    if (!cvt_bytes_append(&L->out, iend, 12)) ok = 0;
    if (!ok) {
        snprintf(message, message_size, "out of memory");
        return CVT_ERR_MEMORY;
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

    cvt_bytes xmp = {0}, raw_exif = {0};
    png_layout L;
    memset(&L, 0, sizeof L);
    char scan_message[160] = {0};
    int st = normalize_chunks(data, size, &L, scan_message, sizeof scan_message);
    cvt_bytes exif = L.exif, canon = L.out;
    if (st != CVT_OK) {
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        return cvt_fail(img, st, "%s", scan_message);
    }
    if (L.width == 0 || L.height == 0) {
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        img->width = L.width;
        img->height = L.height;
        return cvt_fail(img, CVT_ERR_EMPTY, "zero-sized PNG image (%ux%u)", L.width, L.height);
    }
    if (cvt_too_many_pixels(L.width, L.height, max_pixels)) {
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        img->width = L.width;
        img->height = L.height;
        return cvt_fail(img, CVT_ERR_TOO_LARGE,
                        "image size (%llu pixels, %ux%u) exceeds the limit of %llu pixels "
                        "(possible decompression bomb)",
                        (unsigned long long)L.width * L.height, L.width, L.height, (unsigned long long)max_pixels);
    }
    // The pixels' bytes cannot exceed what the image data inflates to at deflate's largest ratio
    // (1032:1): a file that declares more is truncated, refused before anything is allocated.
    {
        static const int channels[7] = {1, 0, 3, 1, 2, 0, 4};
        uint64_t bits = (uint64_t)L.width * L.height * (L.color_type <= 6 ? channels[L.color_type] : 1) * L.depth;
        if (bits / 8 > L.idat_bytes * 1032 + 4096) {
            cvt_bytes_free(&exif); cvt_bytes_free(&canon);
            img->width = L.width;
            img->height = L.height;
            return cvt_fail(img, CVT_ERR_TRUNCATED,
                            "truncated PNG data: a %ux%u image needs %llu bytes of pixels but its %llu bytes of image data "
                            "inflate to at most %llu", L.width, L.height, (unsigned long long)(bits / 8),
                            (unsigned long long)L.idat_bytes, (unsigned long long)(L.idat_bytes * 1032 + 4096));
        }
    }
    // libpng reads the canonical chunk list.
    data = canon.data;
    size = canon.size;

    error_ctx err;
    source_ctx src = {data, size, 8, 0};
    err.message[0] = 0;
    err.bad_adler = 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
    if (!png) {
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
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
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        return cvt_fail(img, CVT_ERR_MEMORY, "out of memory");
    }

    if (setjmp(err.jump)) {
        if (stage == 2) goto trailing_done;  // Pillow ignores problems after the image data
        png_destroy_read_struct(&png, &info, &end_info);
        free(pixels);
        free(rows);
        free(row_ptrs);
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        // The canonical list always ends with IEND: image data that stops early is reported by
        // libpng as "Not enough image data".
        if (src.truncated || strstr(err.message, "Not enough image data"))
            return cvt_fail(img, CVT_ERR_TRUNCATED, "truncated PNG data (%s)", err.message);
        return cvt_fail(img, CVT_ERR_CORRUPT, "corrupt PNG data: %s", err.message);
    }

    png_set_sig_bytes(png, 8);
    png_set_read_fn(png, &src, on_read);
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);  // pre-IDAT CRCs checked above
    png_set_user_limits(png, 0x7FFFFFFF, 0x7FFFFFFF);
    // Ancillary chunks (text, iCCP, sPLT, …) may not make libpng allocate more than this, even
    // decompressed (http://www.libpng.org/pub/png/libpng-manual.txt, "png_set_chunk_malloc_max");
    // larger ones are skipped with a warning. Pillow caps decompressed text at MAX_TEXT_CHUNK (1 MB).
    png_set_chunk_malloc_max(png, 8u << 20);
    png_set_chunk_cache_max(png, 1000);
    png_set_benign_errors(png, 1);
    png_read_info(png, info);

    png_uint_32 w, h;
    int bit_depth, color_type, interlace;
    png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, &interlace, NULL, NULL);
    img->width = w;
    img->height = h;
    if (cvt_too_many_pixels(w, h, max_pixels)) {
        png_destroy_read_struct(&png, &info, &end_info);
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
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
    if (err.bad_adler) {
        // Pillow's zlib decoder raises "broken data stream when reading image file".
        png_destroy_read_struct(&png, &info, &end_info);
        free(pixels);
        free(rows);
        free(row_ptrs);
        cvt_bytes_free(&exif); cvt_bytes_free(&canon);
        img->pixels = NULL;
        return cvt_fail(img, CVT_ERR_CORRUPT, "broken data stream: bad zlib Adler-32 checksum in the image data");
    }
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
    cvt_bytes_free(&exif); cvt_bytes_free(&canon);
    cvt_bytes_free(&xmp);
    cvt_bytes_free(&raw_exif);
    img->pixels = pixels;
    img->status = CVT_OK;
    return img;
}
