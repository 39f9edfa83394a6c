#!/usr/bin/env python3
"""Hostile pytorch_model.bin files (standard library only), for HostileCLITests' peak-memory checks.

Writes Tests/Fixtures/hostile/checkpoints/<case>/{config.json, pytorch_model.bin}:
  tuple_bomb          a state dict whose extra key is t = (t, t) nested 24 times (16 M elements
                      when expanded; 2.1 GB and 15 s before the unpickler bounded keys)
  compressed_oversize a DEFLATE storage of 100 MB of zeros (100 KB compressed) viewed by 16
                      elements of a real key (inflated whole before, 3.7 GB at 925 M elements)
and Tests/Fixtures/hostile/idx/bomb-labels-idx1-ubyte.gz: an IDX header declaring 10 labels,
gzip-compressed with 100 MB of zeros after them (inflated whole before the bound).
    python3 Scripts/make_hostile_checkpoints.py
"""
import gzip
import shutil
import struct
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "hostile" / "checkpoints"
CONFIG = ROOT / "Tests" / "Fixtures" / "parity" / "tiny" / "config.json"
KEY = "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.bias"  # 16 floats in the tiny config


def s(text: str) -> bytes:
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def tensor(key: str, numel: int, size: int) -> bytes:
    p = b"ctorch._utils\n_rebuild_tensor_v2\n("
    p += b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s(key) + s("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"
    p += b"K\x00" + b"K" + bytes([size]) + b"\x85" + b"K\x01\x85" + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR"
    return p


def write(case: str, pickle: bytes, storages: dict[str, tuple[bytes, int]]) -> None:
    folder = OUT / case
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG, folder / "config.json")
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/byteorder", "little")
        for key, (data, method) in storages.items():
            z.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data, compress_type=method)
        z.writestr("archive/version", "3\n")


def main() -> None:
    # {KEY: tensor, (t, t)^24: None}
    bomb = b"\x80\x02}(" + s(KEY) + tensor("0", 16, 16) + b"u" + b")" + b"2\x86" * 24 + b"Ns."
    write("tuple_bomb", bomb, {"0": (bytes(64), zipfile.ZIP_STORED)})
    numel = 25_000_000
    oversize = b"\x80\x02}(" + s(KEY) + tensor("0", numel, 16) + b"u."
    write("compressed_oversize", oversize, {"0": (bytes(numel * 4), zipfile.ZIP_DEFLATED)})
    idx = OUT.parent / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(idx / "bomb-labels-idx1-ubyte.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + bytes(10) + bytes(100_000_000))
    for f in sorted(OUT.rglob("*.bin")) + [idx / "bomb-labels-idx1-ubyte.gz"]:
        print(f.relative_to(ROOT), f.stat().st_size)


if __name__ == "__main__":
    main()
