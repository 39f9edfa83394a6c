#!/usr/bin/env python3
"""Writes scikit-learn's "digits" data set (1,797 handwritten digits, 8x8 pixels, 17 grey levels;
UCI Optical Recognition of Handwritten Digits, as Debian's python3-sklearn and the scikit-learn
wheel ship it in sklearn/datasets/data/digits.csv.gz) as two image folders of grey PNGs:
OUT/train/<digit>/<index>.png and OUT/test/<digit>/<index>.png (every fifth image, by index, is a
test image: 360 test, 1,437 training). Ink is light on a dark background, as in (Fashion-)MNIST.

Standard library only (the PNG encoder is below), so it runs on a fresh Debian 12:

    apt-get download python3-sklearn && dpkg-deb -x python3-sklearn_*.deb sklearn-deb
    python3 Scripts/export_sklearn_digits.py sklearn-deb/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz /tmp/digits
"""
import gzip, os, struct, sys, zlib


def png(width, height, grey):
    """An 8-bit greyscale PNG of `grey` (row-major bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(grey[y * width:(y + 1) * width]) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = sys.argv[1], sys.argv[2]
    with gzip.open(source, "rt") as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    for i, row in enumerate(rows):
        values = [int(float(v)) for v in row]
        pixels, label = values[:64], values[64]
        assert len(pixels) == 64 and 0 <= label <= 9 and all(0 <= p <= 16 for p in pixels), f"row {i}: unexpected values"
        split = "test" if i % 5 == 0 else "train"
        folder = os.path.join(out, split, str(label))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
            f.write(png(8, 8, [round(p * 255 / 16) for p in pixels]))
    print(f"wrote {len(rows)} images to {out}/train and {out}/test")


if __name__ == "__main__":
    main()
