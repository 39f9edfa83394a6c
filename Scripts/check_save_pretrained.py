#!/usr/bin/env python3
"""Checks that checkpoints written by `cvt convert` (our save_pretrained) load in transformers with
no missing, unexpected or mis-shaped keys and give the same logits, for float32/float16/bfloat16
storage and for safetensors and pytorch_model.bin sources. Writes the result the Swift tests check
to Tests/Fixtures/save_pretrained/check.json.

Run from the repo root after `swift build`: .venv-reference/bin/python Scripts/check_save_pretrained.py [--cvt PATH]
"""
import argparse, json, os, subprocess, tempfile

import torch, transformers
from safetensors import safe_open
from transformers import CvtForImageClassification

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "Tests", "Fixtures")
SOURCES = {
    "safetensors_f32": os.path.join(FIX, "parity", "tiny"),
    "pytorch_bin_f16": os.path.join(FIX, "torch", "cvt_tiny"),
}


def tensor(path, name):
    with safe_open(path, "pt") as f:
        return f.get_tensor(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cvt", default=os.path.join(ROOT, ".build", "debug", "cvt"))
    a = ap.parse_args()
    results = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in SOURCES.items():
            x = tensor(os.path.join(src, "input.safetensors"), "pixel_values")
            for dtype in ["float32", "float16", "bfloat16"]:
                out = os.path.join(tmp, f"{name}-{dtype}")
                subprocess.run([a.cvt, "convert", "--model", src, "--output", out, "--dtype", dtype], check=True)
                # Our own logits on the saved folder, for comparison with transformers on the same files.
                ours_file = os.path.join(tmp, f"{name}-{dtype}-ours.safetensors")
                subprocess.run([a.cvt, "forward", "--model", out, "--input", os.path.join(src, "input.safetensors"),
                                "--output", ours_file], check=True)
                model, info = CvtForImageClassification.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
                model.eval()
                with torch.no_grad():
                    theirs = model(x).logits
                ours = tensor(ours_file, "logits")
                case = {
                    "source": os.path.relpath(src, ROOT), "dtype": dtype,
                    "missing_keys": sorted(info["missing_keys"]), "unexpected_keys": sorted(info["unexpected_keys"]),
                    "mismatched_keys": [list(map(str, m)) for m in info.get("mismatched_keys", [])],
                    "error_msgs": list(map(str, info.get("error_msgs", []))),
                    "max_abs_logits_diff_transformers_vs_ours": float((theirs - ours).abs().max()),
                    "stored_keys": sorted(safe_open(os.path.join(out, "model.safetensors"), "pt").keys()),
                }
                if dtype == "float32":
                    ref = tensor(os.path.join(src, "expected.safetensors"), "logits")
                    case["max_abs_logits_diff_vs_reference"] = float((theirs - ref).abs().max())
                results["cases"].append(case)
                print(name, dtype, "missing", len(case["missing_keys"]), "unexpected", len(case["unexpected_keys"]),
                      "diff", case["max_abs_logits_diff_transformers_vs_ours"])
    os.makedirs(os.path.join(FIX, "save_pretrained"), exist_ok=True)
    json.dump(results, open(os.path.join(FIX, "save_pretrained", "check.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
