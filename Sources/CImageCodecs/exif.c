// EXIF / XMP orientation, following Pillow 13:
//   Image.getexif()  → Exif.load()  → TiffImagePlugin.ImageFileDirectory_v2.load()
//   ImageOps.exif_transpose() → exif.get(0x0112, 1) looked up in {2: …, 8: …}
// Everything is bounds-checked; malformed data never reads outside the buffer.

#include "codecs_internal.h"

#include <string.h>

static uint32_t rd16(const uint8_t *p, int be) {
    return be ? ((uint32_t)p[0] << 8) | p[1] : ((uint32_t)p[1] << 8) | p[0];
}

static uint32_t rd32(const uint8_t *p, int be) {
    return be ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]
              : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static uint64_t rd64(const uint8_t *p, int be) {
    uint64_t a = rd32(p, be), b = rd32(p + 4, be);
    return be ? (a << 32) | b : (b << 32) | a;
}

// Size in bytes of one value of a TIFF field type Pillow can load (0 = type Pillow skips).
static unsigned type_size(uint32_t type) {
    switch (type) {
    case 1: case 2: case 6: case 7: return 1;    // BYTE ASCII SBYTE UNDEFINED
    case 3: case 8: return 2;                     // SHORT SSHORT
    case 4: case 9: case 11: case 13: return 4;   // LONG SLONG FLOAT IFD
    case 5: case 10: case 12: case 16: return 8;  // RATIONAL SRATIONAL DOUBLE LONG8
    default: return 0;
    }
}

// The integer Pillow's dict lookup would see for the first value, or 0 when the value is not an
// integer (bytes, str, non-integral rationals and floats never match a key 2…8).
static long first_value_as_int(const uint8_t *v, uint32_t type, int be) {
    switch (type) {
    case 3: return (long)rd16(v, be);
    case 4: case 13: return (long)rd32(v, be);
    case 6: return (long)(int8_t)v[0];
    case 8: return (long)(int16_t)rd16(v, be);
    case 9: return (long)(int32_t)rd32(v, be);
    case 16: { uint64_t x = rd64(v, be); return x > 1000 ? 0 : (long)x; }
    case 5: {
        uint32_t n = rd32(v, be), d = rd32(v + 4, be);
        if (d == 0 || n % d != 0) return 0;
        uint32_t q = n / d;
        return q > 1000 ? 0 : (long)q;
    }
    case 10: {
        int64_t n = (int32_t)rd32(v, be), d = (int32_t)rd32(v + 4, be);
        if (d == 0 || n % d != 0) return 0;
        int64_t q = n / d;
        return (q > 1000 || q < -1000) ? 0 : (long)q;
    }
    case 11: {
        uint32_t bits = rd32(v, be);
        float f;
        memcpy(&f, &bits, 4);
        if (!(f >= -1000.0f && f <= 1000.0f) || (float)(long)f != f) return 0;  // NaN fails too
        return (long)f;
    }
    case 12: {
        uint64_t bits = rd64(v, be);
        double f;
        memcpy(&f, &bits, 8);
        if (!(f >= -1000.0 && f <= 1000.0) || (double)(long)f != f) return 0;
        return (long)f;
    }
    default: return 0;  // BYTE, ASCII, UNDEFINED: bytes or str in Pillow
    }
}

int cvt_exif_orientation_tag(const uint8_t *data, size_t size, long *value) {
    if (value) *value = 0;
    if (!data) return 0;
    // re.sub(b"^(Exif\x00\x00){1,2}", b"", data)
    for (int i = 0; i < 2 && size >= 6 && memcmp(data, "Exif\0\0", 6) == 0; i++) {
        data += 6;
        size -= 6;
    }
    if (size < 8) return 0;  // Pillow raises here; treated as "no orientation"
    int be;
    if (memcmp(data, "MM\x00\x2a", 4) == 0 || memcmp(data, "MM\x2a\x00", 4) == 0) {
        be = 1;
    } else if (memcmp(data, "II\x2a\x00", 4) == 0 || memcmp(data, "II\x00\x2a", 4) == 0) {
        be = 0;
    } else {
        return 0;  // not a TIFF header (Pillow raises SyntaxError); BigTIFF is not EXIF
    }
    uint64_t ifd = rd32(data + 4, be);
    if (ifd > size || size - ifd < 2) return 0;
    uint32_t count = rd16(data + ifd, be);
    uint64_t pos = ifd + 2;
    uint64_t total_size = 0;  // Pillow's running sum of out-of-line data sizes
    for (uint32_t i = 0; i < count; i++) {
        if (pos > size || size - pos < 12) return 0;  // truncated IFD: Pillow stops loading
        const uint8_t *e = data + pos;
        pos += 12;
        uint32_t tag = rd16(e, be), type = rd16(e + 2, be);
        uint64_t n = rd32(e + 4, be);
        unsigned unit = type_size(type);
        if (unit == 0) continue;  // unsupported type: skipped
        uint64_t bytes = n * unit;
        const uint8_t *v;
        if (bytes > 4) {
            uint64_t off = rd32(e + 8, be);
            total_size += bytes;
            if (total_size > size) continue;  // "Tag data larger than file"
            if (off > size || size - off < bytes) return 0;  // _safe_read fails: loading stops
            v = data + off;
        } else {
            v = e + 8;
        }
        if (bytes == 0) continue;  // no data: not stored
        if (tag != 0x0112) continue;
        // First stored occurrence wins (later duplicates are skipped by Pillow).
        if (value) *value = first_value_as_int(v, type, be);
        return 1;
    }
    return 0;
}

// re.search(rb'tiff:Orientation(="|>)([0-9])', xmp) → the digit, or -1.
static int xmp_orientation(const uint8_t *xmp, size_t size) {
    static const char key[] = "tiff:Orientation";
    const size_t klen = sizeof(key) - 1;
    if (!xmp || size < klen + 2) return -1;
    for (size_t i = 0; i + klen < size; i++) {
        if (xmp[i] != 't' || memcmp(xmp + i, key, klen) != 0) continue;
        size_t j = i + klen;
        if (j + 2 < size && xmp[j] == '=' && xmp[j + 1] == '"' &&
            xmp[j + 2] >= '0' && xmp[j + 2] <= '9') {
            return xmp[j + 2] - '0';
        }
        if (j + 1 < size && xmp[j] == '>' && xmp[j + 1] >= '0' && xmp[j + 1] <= '9') {
            return xmp[j + 1] - '0';
        }
    }
    return -1;
}

int cvt_orientation_from_metadata(const uint8_t *exif, size_t exif_size,
                                  const uint8_t *xmp, size_t xmp_size) {
    long v = 0;
    int present = exif ? cvt_exif_orientation_tag(exif, exif_size, &v) : 0;
    if (!present) {
        int d = xmp_orientation(xmp, xmp_size);
        if (d >= 0) {
            present = 1;
            v = d;
        }
    }
    return (present && v >= 2 && v <= 8) ? (int)v : 1;
}
