#!/usr/bin/env python3
"""Generate the PyTorch-checkpoint fixtures in Tests/Fixtures/torch/ (used by TorchCheckpointTests).

Run from the repository root with the reference environment:

    .venv-reference/bin/python Scripts/make_torch_fixtures.py

Nothing here ever unpickles an untrusted file with code execution: the malicious fixtures are
written as raw pickle opcodes, and they are only ever handed to torch.load(weights_only=True),
whose restricted unpickler refuses them (a cross-check that they really are malicious-looking).
Their payload is a harmless `echo` in any case.

Files written (all small; the total stays under 300 KB):

  basic.bin              torch.save of a plain dict: float32 (contiguous, transposed, sliced with a
                         storage offset, three views sharing one storage, an expanded stride-0 view,
                         a scalar, an empty tensor), float16 (incl. transposed), bfloat16 (incl.
                         stride 2), float64, int64, num_batches_tracked (int64 scalar), int32,
                         int16, int8, uint8, bool and an nn.Parameter (_rebuild_parameter).
  basic_expected.json    per key: dtype, shape and the values flattened in row-major order
                         (float dtypes as the bit patterns of their exact float32 values in
                         "float32_bits", integer/bool dtypes as ints in "values").
  basic_deflate.bin      basic.bin's entries re-zipped with DEFLATE (method 8).
  basic_zip64.bin        basic.bin's entries re-zipped with ZIP64 extra fields in every central
                         directory record and 0xFFFF/0xFFFFFFFF placeholders in the plain EOCD.
  big_endian.bin         a crafted checkpoint with byteorder "big" (storages stored big-endian),
                         same values as its little-endian twin small.bin.
  small.bin              torch.save of a 3-tensor dict (w float32 [2,3], b float16 [3],
                         steps int64 []), also the source for the broken files below.
  wrapped.bin            torch.save({"epoch": 3, "state_dict": <small dict>, "note": "x"}).
  cvt_tiny/pytorch_model.bin  torch.save(model.state_dict()) of a tiny CvtForImageClassification
  cvt_tiny/model.safetensors  the same weights via safetensors (save_file)
  cvt_tiny/config.json        its config
  malicious_os_system.bin      zip checkpoint whose data.pkl is GLOBAL 'os system' + REDUCE
  malicious_builtins_eval.bin  zip checkpoint whose data.pkl is STACK_GLOBAL builtins.eval + REDUCE
                               (protocol 4 with FRAME), hidden after a valid tensor entry
  malicious_inst.bin           zip checkpoint using the protocol-0 INST opcode ('i' os system)
  out_of_bounds.bin      a tensor whose size/stride reach past the end of its storage
  missing_storage.bin    a tensor whose storage file is absent from the archive
  truncated.bin          small.bin cut to 60 % of its length (no end-of-central-directory)
  bad_crc.bin            small.bin with one byte of storage data/0 flipped (CRC-32 mismatch)
  legacy.bin             torch.save({"w": ...}, _use_new_zipfile_serialization=False) (pre-1.6 format)
  not_a_zip.bin          plain text

Deterministic: torch.save's random .data/serialization_id record is pinned to "000…" (CRCs
patched), so two runs give byte-identical files (checked by the sha256 list printed at the end).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy
import torch
from safetensors.torch import save_file as save_safetensors

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "torch"

STORAGE_TYPES = {
    torch.float32: torch.FloatStorage,
    torch.float16: torch.HalfStorage,
    torch.bfloat16: torch.BFloat16Storage,
    torch.float64: torch.DoubleStorage,
    torch.int64: torch.LongStorage,
    torch.int32: torch.IntStorage,
    torch.int16: torch.ShortStorage,
    torch.int8: torch.CharStorage,
    torch.uint8: torch.ByteStorage,
    torch.bool: torch.BoolStorage,
}
DTYPE_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
    torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}


# --------------------------------------------------------------------------------------------
# A minimal zip writer, so that the crafted archives look like torch's (STORED entries, data
# aligned to 64 bytes) and so that DEFLATE / forced-ZIP64 variants can be produced.
# --------------------------------------------------------------------------------------------

def write_zip(path: Path, entries: list[tuple[str, bytes]], *, deflate: bool = False,
              zip64: bool = False, align: int = 64) -> None:
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        name_b = name.encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        if deflate:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = c.compress(data) + c.flush()
            method = 8
        else:
            payload = data
            method = 0
        offset = len(out)
        header_len = 30 + len(name_b)
        extra = b""
        if align and not deflate:
            pad = (-(offset + header_len + 4)) % align
            extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding, as torch does
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x0800, method, 0, 0x21,
                           crc, len(payload), len(data), len(name_b), len(extra))
        out += name_b + extra + payload
        if zip64:
            cextra = struct.pack("<HHQQQ", 0x0001, 24, len(data), len(payload), offset)
            csize, usize, coff = 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        else:
            cextra = b""
            csize, usize, coff = len(payload), len(data), offset
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 45 if zip64 else 20, 0x0800,
                               method, 0, 0x21, crc, csize, usize, len(name_b), len(cextra), 0, 0, 0,
                               0o100644 << 16, coff)
        central += name_b + cextra
    cd_offset = len(out)
    out += central
    n = len(entries)
    if zip64:
        z64_offset = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, len(central), cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64_offset, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF,
                           0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    path.write_bytes(bytes(out))


def torch_save(obj, path: Path, **kwargs) -> None:
    """torch.save, then pin the random `.data/serialization_id` record so that runs are
    byte-identical (its CRC is patched in the data descriptor and the central directory)."""
    torch.save(obj, path, **kwargs)
    if kwargs.get("_use_new_zipfile_serialization", True) is False:
        pin_legacy_storage_keys(path)
        return
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.filename.endswith("/.data/serialization_id")]
    for info in infos:
        local = info.header_offset
        name_len, extra_len = struct.unpack("<HH", raw[local + 26: local + 30])
        start = local + 30 + name_len + extra_len
        fixed = b"0" * info.file_size
        raw[start: start + info.file_size] = fixed
        crc = zlib.crc32(fixed) & 0xFFFFFFFF
        end = start + info.compress_size
        if raw[end: end + 4] == b"PK\x07\x08":          # data descriptor with signature
            raw[end + 4: end + 8] = struct.pack("<I", crc)
        elif struct.unpack("<I", raw[end: end + 4])[0] == info.CRC:
            raw[end: end + 4] = struct.pack("<I", crc)
        if struct.unpack("<I", raw[local + 14: local + 18])[0] == info.CRC:
            raw[local + 14: local + 18] = struct.pack("<I", crc)
        name = info.filename.encode()
        central = raw.find(b"PK\x01\x02")
        while central != -1:
            n = struct.unpack("<H", raw[central + 28: central + 30])[0]
            if raw[central + 46: central + 46 + n] == name:
                raw[central + 16: central + 20] = struct.pack("<I", crc)
                break
            central = raw.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None, path


def pin_legacy_storage_keys(path: Path) -> None:
    """The legacy format names storages by memory address; rename them (same length, same sort
    order) so that runs are byte-identical. Only pickletools is used: nothing is unpickled."""
    raw = path.read_bytes()
    pos = 0
    keys: list[str] = []
    for n in range(5):  # magic, protocol, sys_info, data, storage keys
        last = None
        for op, arg, at in pickletools.genops(raw[pos:]):
            last = (op, at)
            if n == 4 and op.name in ("BINUNICODE", "SHORT_BINUNICODE"):
                keys.append(arg)
        pos += last[1] + 1
    header = raw[:pos]
    for i, key in enumerate(sorted(keys)):
        new = ("9" + str(i).rjust(len(key) - 1, "0")) if len(key) > 1 else str(i)
        header = header.replace(key.encode(), new.encode())
    path.write_bytes(header + raw[pos:])


def zip_entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


# --------------------------------------------------------------------------------------------
# Crafted pickles. Fake tensors reduce to the real torch._utils._rebuild_tensor_v2 (pickled by
# reference, never called here) with a fake storage emitted as a persistent id, exactly as
# torch.save lays it out.
# --------------------------------------------------------------------------------------------

class FakeStorage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


class CraftPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", STORAGE_TYPES[obj.dtype], obj.key, "cpu", obj.numel)
        return None


def crafted_pickle(obj) -> bytes:
    buf = io.BytesIO()
    CraftPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_layout(prefix: str, pkl: bytes, storages: dict[str, bytes], byteorder: str = "little"):
    entries = [(f"{prefix}/data.pkl", pkl), (f"{prefix}/byteorder", byteorder.encode())]
    entries += [(f"{prefix}/data/{k}", v) for k, v in storages.items()]
    entries += [(f"{prefix}/version", b"3\n")]
    return entries


# --------------------------------------------------------------------------------------------

def expected_entry(t: torch.Tensor) -> dict:
    flat = t.detach().contiguous().reshape(-1)
    if t.dtype.is_floating_point:
        # Exact float32 bit patterns (JSON has no inf/nan), as the Swift reader converts to Float.
        bits = flat.float().numpy().view(numpy.uint32)
        return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "float32_bits": [int(b) for b in bits]}
    values = [int(v) for v in flat.to(torch.int64).tolist()]
    return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "values": values}


def basic_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    shared = randn(4, 6)
    sd: dict[str, torch.Tensor] = {}
    sd["f32"] = randn(2, 3, 4)
    sd["f32_transposed"] = randn(3, 5).t()                 # stride (1, 5)
    sd["f32_shared_base"] = shared                          # storage shared by the next two
    sd["f32_shared_slice"] = shared[1:3, 2:5]               # storage offset 8, stride (6, 1)
    sd["f32_shared_row"] = shared[3]                        # storage offset 18
    sd["f32_expanded"] = randn(3, 1).expand(3, 4)           # stride (1, 0)
    sd["f32_scalar"] = torch.tensor(2.5)
    sd["f32_empty"] = torch.zeros(0, 3)
    sd["f16"] = randn(3, 4).half()
    sd["f16_transposed"] = randn(4, 3).half().t()
    sd["bf16"] = randn(2, 5).bfloat16()
    sd["bf16_strided"] = randn(4, 6).bfloat16()[:, ::2]     # stride (6, 2)
    sd["f64"] = randn(5).double() * 1e3
    sd["i64"] = torch.arange(-3, 5, dtype=torch.int64).reshape(2, 4)
    sd["bn.num_batches_tracked"] = torch.tensor(42, dtype=torch.int64)
    sd["i64_big"] = torch.tensor([2**62 + 7, -(2**63)], dtype=torch.int64)
    sd["i32"] = torch.tensor([-7, 0, 123456], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["param"] = torch.nn.Parameter(randn(4), requires_grad=True)
    # Special float values survive the conversions.
    sd["f16_special"] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 6.1e-5, 5.96e-8, 65504.0],
                                     dtype=torch.float16)
    return sd


def small_state_dict() -> dict[str, torch.Tensor]:
    return {
        "w": torch.tensor([[1.0, -2.0, 3.5], [0.25, 0.0, -8.0]]),
        "b": torch.tensor([0.5, -1.5, 2.0], dtype=torch.float16),
        "steps": torch.tensor(7, dtype=torch.int64),
    }


def cvt_tiny(out: Path) -> None:
    from transformers import CvtConfig, CvtForImageClassification
    # mlp_ratio 2 (default 4) and float16 weights keep both files together under ~250 KB.
    config = CvtConfig(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=3,
                       mlp_ratio=[2.0, 2.0, 2.0])
    torch.manual_seed(0)
    model = CvtForImageClassification(config).eval()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            else:  # num_batches_tracked
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
    model = model.half()
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    torch_save(sd, out / "pytorch_model.bin")
    save_safetensors({k: v.contiguous() for k, v in sd.items()}, out / "model.safetensors",
                     metadata={"format": "pt"})
    config.to_json_file(out / "config.json")


MAL_PAYLOAD = b"echo TorchCheckpoint fixture: this must never run"


def malicious_os_system() -> bytes:
    # PROTO 2; GLOBAL 'os system'; MARK; BINUNICODE payload; TUPLE; REDUCE; STOP
    return (b"\x80\x02" + b"cos\nsystem\n" + b"(" +
            b"X" + struct.pack("<I", len(MAL_PAYLOAD)) + MAL_PAYLOAD + b"t" + b"R" + b".")


def malicious_builtins_eval(valid_prefix_entry: bytes) -> bytes:
    # Protocol 4 with FRAME: a dict that starts like a state dict (one real tensor entry, copied
    # from a crafted pickle) and then stores builtins.eval("__import__('os').system(...)").
    expr = b"__import__('os').system('" + MAL_PAYLOAD + b"')"
    body = (b"}" + b"\x94" +                           # EMPTY_DICT, MEMOIZE
            valid_prefix_entry +                       # key, tensor, SETITEM
            b"\x8c\x04evil" + b"\x94" +                # SHORT_BINUNICODE 'evil'
            b"\x8c\x08builtins" + b"\x94" + b"\x8c\x04eval" + b"\x94" + b"\x93" + b"\x94" +  # STACK_GLOBAL
            b"\x8c" + bytes([len(expr)]) + expr + b"\x94" + b"\x85" + b"\x94" +  # TUPLE1
            b"R" + b"\x94" + b"s" + b".")
    return b"\x80\x04" + b"\x95" + struct.pack("<Q", len(body)) + body


def malicious_inst() -> bytes:
    # Protocol-0 style instance creation: MARK; payload; INST 'os system'; STOP
    return b"(X" + struct.pack("<I", len(MAL_PAYLOAD)) + MAL_PAYLOAD + b"ios\nsystem\n."


def check_rejected_by_torch(path: Path) -> None:
    """torch's own restricted unpickler (weights_only=True) must refuse it (it never executes)."""
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return
    sys.exit(f"{path.name}: torch.load(weights_only=True) unexpectedly accepted it")


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.bin"):
        old.unlink()

    # basic
    sd = basic_state_dict()
    torch_save(sd, OUT / "basic.bin")
    expected = {k: expected_entry(v) for k, v in sd.items()}
    (OUT / "basic_expected.json").write_text(json.dumps({"order": list(sd), "tensors": expected}, indent=1) + "\n")
    entries = zip_entries(OUT / "basic.bin")
    write_zip(OUT / "basic_deflate.bin", entries, deflate=True)
    write_zip(OUT / "basic_zip64.bin", entries, zip64=True)
    for variant in ["basic_deflate.bin", "basic_zip64.bin"]:
        with zipfile.ZipFile(OUT / variant) as z:
            assert z.testzip() is None
        loaded = torch.load(OUT / variant, weights_only=True)
        assert list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd), variant

    # small, big endian, wrapped
    small = small_state_dict()
    torch_save(small, OUT / "small.bin")
    st_w = FakeStorage("0", torch.float32, 6)
    st_b = FakeStorage("1", torch.float16, 3)
    st_s = FakeStorage("2", torch.int64, 1)
    crafted = {"w": FakeTensor(st_w, 0, (2, 3), (3, 1)), "b": FakeTensor(st_b, 0, (3,), (1,)),
               "steps": FakeTensor(st_s, 0, (), ())}
    big = {"0": small["w"].numpy().astype(">f4").tobytes(), "1": small["b"].numpy().astype(">f2").tobytes(),
           "2": small["steps"].numpy().astype(">i8").tobytes()}
    write_zip(OUT / "big_endian.bin", torch_layout("big_endian", crafted_pickle(crafted), big, "big"))
    loaded = torch.load(OUT / "big_endian.bin", weights_only=True)
    assert list(loaded) == list(small) and all(torch.equal(loaded[k], small[k]) for k in small)
    torch_save({"epoch": 3, "state_dict": small, "note": "x"}, OUT / "wrapped.bin")

    # tiny CvT
    cvt_tiny(OUT / "cvt_tiny")

    # malicious
    write_zip(OUT / "malicious_os_system.bin", torch_layout("archive", malicious_os_system(), {}))
    one = crafted_pickle({"w": FakeTensor(st_w, 0, (2, 3), (3, 1))})
    # Extract "key, tensor, SETITEM" from the protocol-2 pickle: it is everything between the
    # leading PROTO/EMPTY_DICT/BINPUT (5 bytes) and the final STOP (1 byte).
    assert one[:5] == b"\x80\x02}q\x00" and one[-2:] == b"s.", one[:8]
    entry = one[5:-1]
    write_zip(OUT / "malicious_builtins_eval.bin",
              torch_layout("archive", malicious_builtins_eval(entry),
                           {"0": small["w"].numpy().astype("<f4").tobytes()}))
    write_zip(OUT / "malicious_inst.bin", torch_layout("archive", malicious_inst(), {}))
    for name in ["malicious_os_system.bin", "malicious_builtins_eval.bin", "malicious_inst.bin"]:
        check_rejected_by_torch(OUT / name)

    # structurally wrong
    oob = {"w": FakeTensor(FakeStorage("0", torch.float32, 6), 2, (2, 3), (3, 1))}  # needs 8 > 6
    write_zip(OUT / "out_of_bounds.bin",
              torch_layout("archive", crafted_pickle(oob), {"0": small["w"].numpy().astype("<f4").tobytes()}))
    check_rejected_by_torch(OUT / "out_of_bounds.bin")
    missing = {"w": FakeTensor(FakeStorage("5", torch.float32, 6), 0, (2, 3), (3, 1))}
    write_zip(OUT / "missing_storage.bin", torch_layout("archive", crafted_pickle(missing), {}))
    check_rejected_by_torch(OUT / "missing_storage.bin")

    # broken files
    raw = (OUT / "small.bin").read_bytes()
    (OUT / "truncated.bin").write_bytes(raw[: len(raw) * 6 // 10])
    with zipfile.ZipFile(OUT / "small.bin") as z:
        info = z.getinfo("small/data/0")
    local = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[local + 26: local + 30])
    data_start = local + 30 + name_len + extra_len
    corrupted = bytearray(raw)
    corrupted[data_start + 1] ^= 0x40
    (OUT / "bad_crc.bin").write_bytes(bytes(corrupted))
    # One tensor only: the legacy format orders storages by memory address, so with several the
    # file would differ from run to run even with pinned keys.
    torch_save({"w": small["w"]}, OUT / "legacy.bin", _use_new_zipfile_serialization=False)
    loaded = torch.load(OUT / "legacy.bin", weights_only=True)
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], small["w"])
    (OUT / "not_a_zip.bin").write_text("This is not a PyTorch checkpoint, just text.\n")

    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}  {p.stat().st_size:7d}  {p.relative_to(OUT)}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {total} bytes in total")
    if total >= 300_000:
        sys.exit("fixtures exceed 300 KB")


if __name__ == "__main__":
    main()
