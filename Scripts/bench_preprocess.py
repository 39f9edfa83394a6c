#!/usr/bin/env python3
"""Side-by-side preprocessing speed: `cvt bench-preprocess` vs transformers' pipeline path
(`load_image`: open + exif_transpose + convert("RGB"), then ConvNextImageProcessor, PIL backend),
same images, same settings (microsoft/cvt-13 preprocessor_config), one run, single thread.

Usage (after `swift build -c release`): .venv-reference/bin/python Scripts/bench_preprocess.py IMAGE...
"""
import argparse, json, os, statistics, subprocess, tempfile, time

import PIL, transformers
from transformers import AutoImageProcessor
from transformers.image_utils import load_image

CVT13 = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "feature_extractor_type": "ConvNextFeatureExtractor",
         "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--cvt", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "cvt"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        json.dump(CVT13, open(os.path.join(d, "preprocessor_config.json"), "w"))
        json.dump({"model_type": "cvt"}, open(os.path.join(d, "config.json"), "w"))
        ours = json.loads(subprocess.run([a.cvt, "bench-preprocess", "--model", d, "--iterations", str(a.iterations), "--json", *a.images],
                                         check=True, capture_output=True, text=True).stdout)
        proc = AutoImageProcessor.from_pretrained(d)  # PIL backend: torchvision is not installed in this venv
        assert "Pil" in type(proc).__name__, type(proc).__name__
    print(f"transformers {transformers.__version__} ({type(proc).__name__}), Pillow {PIL.__version__}, {a.iterations} runs per image")
    print(f"{'image':40} {'swift-cvt ms':>13} {'transformers ms':>16} {'speed-up':>9}")
    for row in ours["images"]:
        path = row["image"]
        for _ in range(3):
            proc(load_image(path), return_tensors="np")
        ts = []
        for _ in range(a.iterations):
            t = time.perf_counter()
            proc(load_image(path), return_tensors="np")
            ts.append((time.perf_counter() - t) * 1e3)
        theirs = statistics.median(ts)
        print(f"{os.path.basename(path):40} {row['median_ms']:13.2f} {theirs:16.2f} {theirs / row['median_ms']:8.1f}x")


if __name__ == "__main__":
    main()
