#!/usr/bin/env python3
"""Generate the image decoding and preprocessing fixtures used by Tests/CvtVisionTests.

Run from the repository root with the reference environment:

    .venv-reference/bin/pip install pypng          # once: writes the PNG kinds Pillow cannot
    .venv-reference/bin/python Scripts/make_image_fixtures.py [--skimage-wheel PATH]

Sources: real photographs from scikit-image 0.26.0's bundled `skimage/data` (CC0 / public domain,
see Tests/Fixtures/images/LICENSES.md). Without --skimage-wheel the wheel is fetched with
`pip download --no-deps scikit-image==0.26.0`; only its data files are read.

Writes
  Tests/Fixtures/images/*                   the fixture files (good and bad) + LICENSES.md
  Tests/Fixtures/images/expected.json       Pillow's view of each file, as transformers' load_image
                                            sees it (exif_transpose + convert("RGB")): mode, sizes,
                                            EXIF orientation, sum, CRC-32 of every RGB row, samples;
                                            for bad files the error Pillow raises and the expected kind
  Tests/Fixtures/preprocess/configs/*.json  the preprocessor_config.json of each case
  Tests/Fixtures/preprocess/manifest.json   versions, processor class, and per case and image: shape,
                                            CRC-32 of the uint8 CHW image the float output encodes,
                                            sums, a few values
  Tests/Fixtures/preprocess/luts.safetensors          per case: float32 [3, 256], the processor's
                                            output for every uint8 level (measured with transformers)
  Tests/Fixtures/preprocess/pixel_values.safetensors  a few full outputs, key "<case>/<image>"

The transformers output of every (case, image) is checked to equal lut[c][u8] bit for bit, so the
stored uint8 CRC + LUT determine it exactly. Deterministic: two runs give identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL
import png as pypng  # pypng
import transformers
from PIL import Image, ImageOps, features
from safetensors.numpy import save_file
from transformers import AutoImageProcessor
from transformers.image_utils import load_image

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "Tests" / "Fixtures" / "images"
PREPROCESS = ROOT / "Tests" / "Fixtures" / "preprocess"
SKIMAGE_VERSION = "0.26.0"

# ----------------------------------------------------------------------------------------------
# sources


def skimage_data(wheel: Path | None) -> dict[str, bytes]:
    names = ["rocket.jpg", "coffee.png", "camera.png", "chelsea.png", "astronaut.png"]
    tmp = None
    if wheel is None:
        tmp = tempfile.mkdtemp()
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, f"scikit-image=={SKIMAGE_VERSION}"], check=True)
        wheel = next(Path(tmp).glob("scikit_image-*.whl"))
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for n in names:
            out[n] = z.read(f"skimage/data/{n}")
    if tmp:
        shutil.rmtree(tmp)
    return out


def rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pypng_bytes(rows, **kw) -> bytes:
    buf = io.BytesIO()
    pypng.Writer(**kw).write(buf, rows)
    return buf.getvalue()


def exif_blob(orientation: int, big_endian: bool, extra_ascii: dict[int, str] | None = None) -> bytes:
    """A TIFF/EXIF structure (no "Exif\\0\\0" prefix) with IFD0 = Orientation + ASCII tags."""
    e = ">" if big_endian else "<"
    tags = sorted((extra_ascii or {}).items())
    n = len(tags) + 1
    data_off = 8 + 2 + 12 * n + 4
    entries, blobs = [], b""
    for tag, text in tags:
        s = text.encode() + b"\0"
        if len(s) <= 4:
            entries.append(struct.pack(e + "HHI", tag, 2, len(s)) + s.ljust(4, b"\0"))
        else:
            entries.append(struct.pack(e + "HHII", tag, 2, len(s), data_off + len(blobs)))
            blobs += s + (b"\0" if len(s) % 2 else b"")
    entries.append(struct.pack(e + "HHIH", 0x0112, 3, 1, orientation) + b"\0\0")
    entries.sort(key=lambda b: struct.unpack(e + "H", b[:2])[0])
    head = (b"MM\x00\x2a" if big_endian else b"II\x2a\x00") + struct.pack(e + "I", 8)
    return head + struct.pack(e + "H", n) + b"".join(entries) + struct.pack(e + "I", 0) + blobs


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_images(src: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, dict]]:
    """Returns (good files, bad files with their expected error kind)."""
    rng = np.random.default_rng(20240611)
    rocket = rgb(src["rocket.jpg"])
    coffee = rgb(src["coffee.png"])
    camera = Image.open(io.BytesIO(src["camera.png"])).convert("L")
    chelsea = rgb(src["chelsea.png"])
    astronaut = rgb(src["astronaut.png"])
    LZ = Image.Resampling.LANCZOS

    good: dict[str, bytes] = {}
    # colour JPEG: the original skimage file, untouched (640x427, baseline, 4:2:0)
    good["rocket.jpg"] = src["rocket.jpg"]
    coffee240 = coffee.resize((240, 160), LZ)
    good["coffee.png"] = save(coffee240, "PNG")
    good["camera_gray.png"] = save(camera.resize((200, 200), LZ), "PNG")
    good["camera_gray.jpg"] = save(camera.resize((256, 256), LZ), "JPEG", quality=90)
    # RGBA: radial alpha (dropped, never composited, by convert("RGB"))
    a = astronaut.resize((128, 128), LZ).convert("RGBA")
    yy, xx = np.mgrid[0:128, 0:128]
    alpha = np.clip(255 - np.hypot(xx - 64, yy - 64) * 3, 0, 255).astype(np.uint8)
    a.putalpha(Image.fromarray(alpha))
    good["astronaut_rgba.png"] = save(a, "PNG")
    # palette with a transparent entry (ignored by convert("RGB"))
    pal = chelsea.resize((226, 150), LZ).quantize(64, dither=Image.Dither.NONE)
    good["chelsea_palette.png"] = save(pal, "PNG", transparency=0)
    # 16-bit RGB: high byte = the photo, low byte = noise (Pillow keeps the high byte)
    c16 = np.asarray(coffee.resize((80, 54), LZ)).astype(np.uint16) * 256 + rng.integers(0, 256, (54, 80, 3), dtype=np.uint16)
    good["coffee_16bit.png"] = pypng_bytes(c16.reshape(54, -1).tolist(), width=80, height=54, greyscale=False, bitdepth=16)
    # 16-bit gray ("I;16"): values 0..510, so Pillow's clip to 255 in convert("RGB") shows
    g16 = np.asarray(camera.resize((96, 96), LZ)).astype(np.uint16) * 2 + rng.integers(0, 2, (96, 96), dtype=np.uint16)
    good["camera_16bit.png"] = pypng_bytes(g16.tolist(), width=96, height=96, greyscale=True, bitdepth=16)
    # gray + alpha, 8 bit
    la = camera.resize((64, 64), LZ).convert("LA")
    la.putalpha(Image.fromarray(alpha[::2, ::2].copy()))
    good["camera_gray_alpha.png"] = save(la, "PNG")
    # Adam7-interlaced RGB
    il = np.asarray(chelsea.resize((90, 60), LZ))
    good["chelsea_interlaced.png"] = pypng_bytes(il.reshape(60, -1).tolist(), width=90, height=60, greyscale=False, bitdepth=8, interlace=True)
    # low bit depth gray and palette
    cam64 = np.asarray(camera.resize((64, 64), LZ)).astype(np.int64)
    for bits in (1, 2, 4):
        good[f"camera_{bits}bit.png"] = pypng_bytes((cam64 >> (8 - bits)).tolist(), width=64, height=64, greyscale=True, bitdepth=bits)
    p16 = chelsea.resize((90, 60), LZ).quantize(16, dither=Image.Dither.NONE)
    plt = p16.getpalette()[: 16 * 3]
    good["chelsea_palette4.png"] = pypng_bytes(np.asarray(p16).tolist(), width=90, height=60, bitdepth=4,
                                               palette=[tuple(plt[i:i + 3]) for i in range(0, 48, 3)])
    # EXIF orientation 6 (little endian, Pillow's Exif) and 3 (big endian, hand-made, with
    # out-of-line ASCII tags before it)
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x010F] = "Fixture"
    good["rocket_exif6.jpg"] = save(rocket.resize((320, 213), LZ), "JPEG", quality=85, exif=ex.tobytes())
    good["coffee_exif3.jpg"] = save(coffee.resize((300, 200), LZ), "JPEG", quality=85,
                                    exif=b"Exif\0\0" + exif_blob(3, True, {0x010F: "Fixture camera", 0x0110: "Model 3"}))
    # orientation from XMP only (Pillow's getexif falls back to tiff:Orientation)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    good["chelsea_xmp8.jpg"] = save(chelsea.resize((150, 100), LZ), "JPEG", quality=85, xmp=xmp)
    # portrait (300x640): its resizes shrink the height far more than the width, so Pillow 13 runs
    # the vertical pass first
    good["rocket_portrait.jpg"] = save(rocket.transpose(Image.Transpose.ROTATE_90).crop((63, 0, 363, 640)), "JPEG", quality=80)
    good["chelsea_small.jpg"] = save(chelsea.resize((40, 30), LZ), "JPEG", quality=90)
    good["chelsea_tall.jpg"] = save(chelsea.crop((130, 0, 330, 300)), "JPEG", quality=88)
    good["astronaut_progressive.jpg"] = save(astronaut.resize((256, 256), LZ), "JPEG", quality=85, progressive=True)
    good["coffee_444.jpg"] = save(coffee240, "JPEG", quality=90, subsampling=0)
    good["chelsea_422.jpg"] = save(chelsea.resize((226, 150), LZ), "JPEG", quality=90, subsampling=1)
    good["coffee_cmyk.jpg"] = save(coffee.resize((160, 107), LZ).convert("CMYK"), "JPEG", quality=90)
    # all eight orientations, as PNG eXIf chunks on a 12x8 photo crop
    tiny = coffee.resize((48, 32), LZ).crop((18, 10, 30, 18))
    for o in range(1, 9):
        good[f"orient_{o}.png"] = save(tiny, "PNG", exif=exif_blob(o, o % 2 == 0))

    bad: dict[str, dict] = {}
    def add_bad(name, data, kind):
        bad[name] = {"data": data, "kind": kind}
    add_bad("truncated.jpg", src["rocket.jpg"][: len(src["rocket.jpg"]) // 2], "truncated")
    add_bad("truncated.png", good["coffee.png"][: len(good["coffee.png"]) // 2], "truncated")
    add_bad("not_an_image.jpg", b"This is a text file with a .jpg extension, not an image.\n", "notAnImage")
    add_bad("empty.jpg", b"", "emptyFile")
    cam = bytearray(good["camera_gray.png"])
    cam[29] ^= 0xFF  # last byte of IHDR's CRC
    add_bad("bad_crc.png", bytes(cam), "corrupt")
    sig = b"\x89PNG\r\n\x1a\n"
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
    add_bad("zero_width.png", sig + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 16, 8, 0, 0, 0, 0)) + idat
            + png_chunk(b"IEND", b""), "zeroSized")
    add_bad("huge.png", sig + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) + idat
            + png_chunk(b"IEND", b""), "tooManyPixels")
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    add_bad("huge.jpg", b"\xff\xd8" + sof + sos + b"\x00" * 16 + b"\xff\xd9", "tooManyPixels")
    add_bad("chelsea.gif", save(chelsea.resize((60, 40), LZ), "GIF"), "unsupportedFormat")
    return good, bad


# ----------------------------------------------------------------------------------------------
# expected decoding (what transformers' load_image returns)


def pillow_view(path: Path) -> dict:
    opened = Image.open(path)
    stored_mode, stored_size = opened.mode, opened.size
    exif_o = Image.open(path).getexif().get(0x0112)
    im = load_image(str(path))
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    h, w = a.shape[:2]
    samples = []
    for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, h // 2), (w // 3, (2 * h) // 3)]:
        samples.append([x, y] + [int(v) for v in a[y, x]])
    return {
        "mode": stored_mode,
        "stored_size": list(stored_size),
        "exif_orientation": exif_o if isinstance(exif_o, int) else None,
        "size": [w, h],
        "sum": int(a.astype(np.int64).sum()),
        "row_crc32": [zlib.crc32(a[y].tobytes()) for y in range(h)],
        "samples": samples,
    }


# ----------------------------------------------------------------------------------------------
# preprocessing cases

CVT13_CONFIG = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}


def cases(good_names: list[str]) -> dict[str, dict]:
    photos = [n for n in good_names if not n.startswith("orient_")]
    return {
        # microsoft/cvt-13's preprocessor_config.json
        "cvt13": {"config": CVT13_CONFIG, "images": photos,
                  "full": ["rocket.jpg"]},
        # the 384 checkpoints: warp to a square, crop_pct unused
        "warp384": {"config": {**CVT13_CONFIG, "size": 384},
                    "images": ["rocket.jpg", "chelsea_tall.jpg", "chelsea_small.jpg", "camera_gray.png",
                               "coffee_exif3.jpg", "rocket_exif6.jpg", "rocket_portrait.jpg"], "full": []},
        # BILINEAR, {"shortest_edge": N} form; mean/std absent → class defaults 0.5
        "bilinear160": {"config": {"do_resize": True, "size": {"shortest_edge": 160}, "crop_pct": 0.9, "resample": 2,
                                   "image_processor_type": "ConvNextImageProcessor"},
                        "images": photos, "full": ["coffee.png"]},
        # NEAREST and a non-default rescale factor
        "nearest128": {"config": {"size": 128, "crop_pct": 0.95, "resample": 0, "rescale_factor": 0.005,
                                  "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]},
                       "images": photos, "full": ["camera_gray.jpg"]},
        # crop larger than the resized image: transformers' center_crop pads with zeros
        "croppad64": {"config": {**CVT13_CONFIG, "size": 64, "crop_pct": 1.5},
                      "images": ["rocket.jpg", "chelsea_tall.jpg", "chelsea_small.jpg", "coffee.png"],
                      "full": ["chelsea_tall.jpg"]},
        # no resize: the decoded image, rescaled and normalized
        "noresize": {"config": {**CVT13_CONFIG, "do_resize": False},
                     "images": ["chelsea_small.jpg"] + [f"orient_{o}.png" for o in range(1, 9)],
                     "full": ["chelsea_small.jpg"]},
    }


def formula_image() -> np.ndarray:
    """The formula image: 480 (H) x 640 (W), R = (7x+3y) mod 256, G = (x²+y) mod 256, B = (x XOR y) & 255."""
    y, x = np.mgrid[0:480, 0:640].astype(np.int64)
    return np.stack([(7 * x + 3 * y) % 256, (x * x + y) % 256, (x ^ y) & 255], axis=2).astype(np.uint8)


def resize_vectors() -> dict:
    """Pillow Image.resize of the formula image: CRC-32 and sum of the HWC result."""
    im = Image.fromarray(formula_image())
    # (1281, 3), (600, 100), (630, 50), (700, 300): vertical pass first in Pillow 13
    sizes = [(341, 256), (1000, 700), (300, 480), (640, 200), (7, 5), (1281, 3), (640, 480), (2, 960),
             (600, 100), (630, 50), (700, 300), (100, 90)]
    out = {}
    for name, f in [("nearest", Image.Resampling.NEAREST), ("bilinear", Image.Resampling.BILINEAR),
                    ("bicubic", Image.Resampling.BICUBIC)]:
        for (w, h) in sizes:
            a = np.asarray(im.resize((w, h), f))
            out[f"{name}/{w}x{h}"] = {"crc32": zlib.crc32(a.tobytes()), "sum": int(a.astype(np.int64).sum()),
                                      "first": [int(v) for v in a[0, 0]], "last": [int(v) for v in a[-1, -1]]}
    return out


def make_processor(config: dict, tmp: Path):
    d = tmp / "proc"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    (d / "preprocessor_config.json").write_text(json.dumps(config))
    (d / "config.json").write_text(json.dumps({"model_type": "cvt"}))
    proc = AutoImageProcessor.from_pretrained(str(d), backend="pil")
    assert type(proc).__name__ == "ConvNextImageProcessorPil", type(proc)
    return proc


def measure_lut(config: dict, tmp: Path) -> np.ndarray:
    """The processor's output for every uint8 level, measured with transformers itself."""
    proc = make_processor({**config, "do_resize": False}, tmp)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 RGB
    out = proc(images=[Image.fromarray(levels)], return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 1, 256) and out.dtype == np.float32
    lut = np.ascontiguousarray(out[0, :, 0, :])
    for c in range(3):
        assert np.all(np.diff(lut[c].astype(np.float64)) > 0), "LUT must be strictly increasing"
    return lut


def invert(pv: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 CHW image u with lut[c][u] == pv bit for bit."""
    u = np.empty(pv.shape, np.uint8)
    for c in range(3):
        idx = np.searchsorted(lut[c], pv[c])
        idx = np.clip(idx, 0, 255)
        assert np.array_equal(lut[c][idx].view(np.uint32), pv[c].view(np.uint32)), "output is not lut[u8]"
        u[c] = idx
    return u


# ----------------------------------------------------------------------------------------------

LICENSES = """# Fixture images: sources and licences

Every photograph here is derived from a sample image shipped inside the scikit-image {ver} wheel
(`skimage/data/`, PyPI package `scikit-image`), re-encoded, resized, cropped or otherwise converted
with Pillow by `Scripts/make_image_fixtures.py`. Licences as stated in scikit-image's
`skimage/data/_fetchers.py` docstrings:

| source file (skimage/data) | licence | fixture files derived from it |
|---|---|---|
| `rocket.jpg` — launch of DSCOVR on Falcon 9, SpaceX | public domain (released by SpaceX) | {rocket} |
| `coffee.png` — coffee cup, Rachel Michetti / Pikolo Espresso Bar | CC0 | {coffee} |
| `camera.png` — "camera" photo, Lav Varshney | CC0 | {camera} |
| `chelsea.png` — Chelsea the cat, Stefan van der Walt | CC0 | {chelsea} |
| `astronaut.png` — Eileen Collins, NASA | public domain (NASA) | {astronaut} |

The remaining files are not photographs: `not_an_image.jpg` (text), `empty.jpg` (0 bytes),
`zero_width.png`, `huge.png`, `huge.jpg` (hand-made headers). They are generated by the script and
carry no third-party content.

scikit-image itself is BSD-3-Clause licensed; the data files above are under the licences listed.
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skimage-wheel", type=Path, default=None)
    args = ap.parse_args()

    src = skimage_data(args.skimage_wheel)
    good, bad = make_images(src)

    for d in (IMAGES, PREPROCESS):
        if d.exists():
            shutil.rmtree(d)
    IMAGES.mkdir(parents=True)
    (PREPROCESS / "configs").mkdir(parents=True)

    for name, data in good.items():
        (IMAGES / name).write_bytes(data)
    for name, entry in bad.items():
        (IMAGES / name).write_bytes(entry["data"])

    by_source = {"rocket": [], "coffee": [], "camera": [], "chelsea": [], "astronaut": []}
    for name in list(good) + list(bad):
        for key in by_source:
            if name.startswith(key):
                by_source[key].append(name)
    by_source["coffee"] += [n for n in good if n.startswith("orient_")] + ["truncated.png"]
    by_source["rocket"] += ["truncated.jpg"]
    by_source["camera"] += ["bad_crc.png"]
    (IMAGES / "LICENSES.md").write_text(LICENSES.format(
        ver=SKIMAGE_VERSION, **{k: ", ".join(f"`{n}`" for n in sorted(v)) for k, v in by_source.items()}))

    expected = {"pillow": PIL.__version__, "transformers": transformers.__version__,
                "libjpeg_turbo": features.version("libjpeg_turbo"),
                "max_image_pixels": Image.MAX_IMAGE_PIXELS,
                "note": "row_crc32 = zlib.crc32 of each HWC RGB row of transformers.image_utils.load_image(path)",
                "good": {}, "bad": {}}
    for name in good:
        expected["good"][name] = pillow_view(IMAGES / name)
    for name, entry in bad.items():
        try:
            load_image(str(IMAGES / name))
            pillow = "loads fine in Pillow"
        except Exception as e:  # noqa: BLE001
            pillow = f"{type(e).__name__}: {e}"
        expected["bad"][name] = {"kind": entry["kind"], "pillow": pillow}
    (IMAGES / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")

    # preprocessing
    manifest = {"pillow": PIL.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
                "processor_class": None, "loader": "transformers.image_utils.load_image (exif_transpose + convert('RGB'))",
                "note": "u8_crc32 = zlib.crc32 of the uint8 [3,H,W] (C-order) image u with pixel_values == luts[case][c][u]",
                "cases": {}}
    manifest["resize"] = resize_vectors()
    luts, full = {}, {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for case, spec in cases(list(good)).items():
            config = spec["config"]
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # as save_pretrained writes it
            (PREPROCESS / "configs" / f"{case}.json").write_text(text)
            proc = make_processor(config, tmp)
            manifest["processor_class"] = type(proc).__name__
            lut = measure_lut(config, tmp)
            luts[case] = lut
            entries = {}
            for name in spec["images"]:
                img = load_image(str(IMAGES / name))
                pv = proc(images=[img], return_tensors="np")["pixel_values"]
                assert pv.dtype == np.float32 and pv.shape[0] == 1
                u = invert(pv[0], lut)
                entries[name] = {
                    "shape": list(pv.shape),
                    "u8_crc32": zlib.crc32(np.ascontiguousarray(u).tobytes()),
                    "u8_channel_sums": [int(u[c].astype(np.int64).sum()) for c in range(3)],
                    "sum": float(pv.astype(np.float64).sum()),
                    "first": [float(v) for v in pv[0, 0, 0, :4]],
                    "last": [float(v) for v in pv[0, 2, -1, -4:]],
                }
                if name in spec["full"]:
                    full[f"{case}/{name}"] = np.ascontiguousarray(pv)
            manifest["cases"][case] = {"config_file": f"configs/{case}.json", "images": entries}
    assert len((PREPROCESS / "configs" / "cvt13.json").read_bytes()) == 266, "microsoft/cvt-13's file is 266 bytes"
    save_file(luts, str(PREPROCESS / "luts.safetensors"))
    save_file(full, str(PREPROCESS / "pixel_values.safetensors"))
    (PREPROCESS / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    total = sum(p.stat().st_size for p in IMAGES.iterdir())
    print(f"images: {len(good)} good, {len(bad)} bad, {total} bytes in {IMAGES}")
    for p in sorted(PREPROCESS.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes, sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
