#!/usr/bin/env python3
"""Hostile and malformed PNG/JPEG files, each decided by Pillow (transformers' image loader).

Writes Tests/Fixtures/hostile/*.png|jpg and manifest.json: for each file whether Pillow
(`Image.open` → `ImageOps.exif_transpose` → `convert("RGB")`, as transformers' `load_image`)
decodes it, and if so an FNV-1a 64 hash of the RGB bytes, else the exception. Checked by
CvtVisionTests/HostileImageTests.swift. Run with the reference venv:
    .venv-reference/bin/python Scripts/make_hostile_images.py
"""
import io
import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import PIL
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "hostile"


def chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return struct.pack(">I", n) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


SIG = b"\x89PNG\r\n\x1a\n"


def ihdr(w, h, depth=8, ctype=2, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))


def rgb_rows(w, h):
    return b"".join(b"\x00" + bytes(((x * 16 + y * 3) % 256, (y * 16) % 256, (x * y) % 256) * 1 for x in range(w)).ljust(0)
                    for y in range(h))


def raw_rgb(w, h):
    rows = []
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            row += bytes(((x * 16 + y * 3) % 256, (y * 16) % 256, (x * y * 7) % 256))
        rows.append(bytes(row))
    return b"".join(rows)


def raw_palette(w, h):
    return b"".join(bytes([0] + [(x + y) % 4 for x in range(w)]) for y in range(h))


PLTE = chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200]))


def fnv1a(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def make() -> dict[str, bytes]:
    w, h = 16, 12
    rgb_z = zlib.compress(raw_rgb(w, h), 9)
    pal_z = zlib.compress(raw_palette(w, h), 9)
    files: dict[str, bytes] = {}
    iend = chunk(b"IEND", b"")
    files["good_rgb.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", rgb_z) + iend
    files["good_palette.png"] = SIG + ihdr(w, h, 8, 3) + PLTE + chunk(b"IDAT", pal_z) + iend
    # zlib stream with a wrong Adler-32 (the last 4 bytes of the stream).
    bad = rgb_z[:-4] + bytes(b ^ 0xFF for b in rgb_z[-4:])
    files["bad_adler32.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", bad) + iend
    # A chunk after the image data that is cut off (as Pillow's Tests/images/truncated_end_chunk.png).
    files["truncated_end_chunk.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", rgb_z) + chunk(b"tEXt", b"Comment\x00" + b"x" * 100)[:40]
    # No IEND at all, the image data complete.
    files["no_iend.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", rgb_z)
    # The image data split over IDATs, the stream cut before its end.
    files["idat_stream_cut.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", rgb_z[: len(rgb_z) // 2]) + iend
    # APNG: acTL + fcTL before IDAT; broken frame sequences.
    actl = chunk(b"acTL", struct.pack(">II", 2, 0))
    def fctl(seq):
        return chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))
    def fdat(seq):
        return chunk(b"fdAT", struct.pack(">I", seq) + rgb_z)
    files["apng_good.png"] = SIG + ihdr(w, h) + actl + fctl(0) + chunk(b"IDAT", rgb_z) + fctl(1) + fdat(2) + iend
    files["apng_first_seq_1.png"] = SIG + ihdr(w, h) + actl + fctl(1) + chunk(b"IDAT", rgb_z) + fctl(2) + fdat(3) + iend
    files["apng_seq_gap_after_idat.png"] = SIG + ihdr(w, h) + actl + fctl(0) + chunk(b"IDAT", rgb_z) + fctl(5) + fdat(6) + iend
    files["apng_fdat_seq_wrong.png"] = SIG + ihdr(w, h) + actl + fctl(0) + chunk(b"IDAT", rgb_z) + fctl(1) + fdat(7) + iend
    files["apng_zero_frames.png"] = SIG + ihdr(w, h) + chunk(b"acTL", struct.pack(">II", 0, 0)) + fctl(0) + chunk(b"IDAT", rgb_z) + iend
    # Structure that libpng refuses by default.
    files["duplicate_ihdr.png"] = SIG + ihdr(w, h) + ihdr(w, h) + chunk(b"IDAT", rgb_z) + iend
    files["duplicate_plte.png"] = SIG + ihdr(w, h, 8, 3) + PLTE + PLTE + chunk(b"IDAT", pal_z) + iend
    files["missing_plte.png"] = SIG + ihdr(w, h, 8, 3) + chunk(b"IDAT", pal_z) + iend
    files["plte_in_rgb.png"] = SIG + ihdr(w, h) + PLTE + chunk(b"IDAT", rgb_z) + iend
    # The IDAT length field runs past the end of the file (the stream itself is complete).
    idat = chunk(b"IDAT", rgb_z)
    files["idat_length_past_end.png"] = SIG + ihdr(w, h) + struct.pack(">I", len(rgb_z) + 1000) + idat[4:] + iend
    # Ancillary chunks that declare 2 GB (a decoder must not allocate it).
    for kind in [b"tEXt", b"zTXt", b"iTXt", b"sCAL", b"pCAL", b"sPLT", b"iCCP", b"eXIf"]:
        name = kind.decode().lower()
        files[f"huge_{name}_before_idat.png"] = SIG + ihdr(w, h) + struct.pack(">I", 0x7FFFFFF0) + kind + b"k\x00" + b"v" * 1500
        files[f"huge_{name}_after_idat.png"] = SIG + ihdr(w, h) + chunk(b"IDAT", rgb_z) + struct.pack(">I", 0x7FFFFFF0) + kind + b"k\x00" + b"v" * 1500
    # A chunk type with terminal control bytes.
    files["escape_chunk_type.png"] = SIG + ihdr(w, h) + chunk(b"\x1b[2J", b"x") + chunk(b"IDAT", rgb_z) + iend
    # An interlaced PNG that declares 12000 x 12000 with a few bytes of data (1.3 GB before a pixel).
    files["interlaced_large_declared.png"] = SIG + ihdr(12000, 12000, 8, 2, 1) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + iend
    # JPEG: SOF0 rewritten as SOF9 (arithmetic coding) on Huffman-coded data.
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), bytes(raw_rgb(w, h)[i] for i in range(len(raw_rgb(w, h))) if i % (3 * w + 1) != 0)).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    files["good.jpg"] = jpg
    i = jpg.index(b"\xff\xc0")
    files["sof9_on_huffman.jpg"] = jpg[:i] + b"\xff\xc9" + jpg[i + 2:]
    files["sof1_extended.jpg"] = jpg[:i] + b"\xff\xc1" + jpg[i + 2:]
    # A baseline JPEG that declares 4000 x 4000 with a few hundred bytes of data (and an EOI):
    # libjpeg fills the rest and Pillow accepts it, so no size-to-data bound applies to JPEG.
    sof = jpg.index(b"\xff\xc0")
    files["jpeg_large_declared.jpg"] = jpg[:sof + 5] + struct.pack(">HH", 4000, 4000) + jpg[sof + 9:]
    # The same on a real photo (more Huffman data for the arithmetic decoder to trip on).
    rocket = (ROOT / "Tests" / "Fixtures" / "images" / "rocket.jpg").read_bytes()
    i = rocket.index(b"\xff\xc0")
    files["sof9_on_huffman_photo.jpg"] = rocket[:i] + b"\xff\xc9" + rocket[i + 2:]
    return files


def pillow_verdict(data: bytes) -> dict:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            im = Image.open(io.BytesIO(data))
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
        out = {"pillow": "ok", "size": list(rgb.size), "fnv1a": fnv1a(rgb.tobytes())}
        if caught:
            out["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:200] for w in caught})
        return out
    except Exception as e:  # noqa: BLE001 - the verdict is any exception
        message = re.sub(r" at 0x[0-9a-f]+", "", f"{type(e).__name__}: {e}")
        return {"pillow": "error", "error": message[:200]}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {"pillow_version": PIL.__version__, "files": {}}
    for name, data in sorted(make().items()):
        (OUT / name).write_bytes(data)
        manifest["files"][name] = pillow_verdict(data)
        print(name, manifest["files"][name])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
