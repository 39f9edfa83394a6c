#!/usr/bin/env python3
"""Fine-tunes a tiny CvT with `cvt train` on a small image folder (labels "cat" and "dog" from the
repository's test images) and checks that transformers loads what it wrote: the output folder and
its last checkpoint, with AutoModelForImageClassification (no missing, unexpected or mis-shaped
key) and AutoImageProcessor. Writes Tests/Fixtures/finetune/: the output folder (`model/`) and
`transformers.safetensors` + `transformers.json` (pixel_values, logits and id2label as
transformers computes them), which FineTuningFixtureTests compare against.

Run from the repo root after `swift build`: .venv-reference/bin/python Scripts/make_finetune_fixtures.py [--cvt PATH]
"""
import argparse, json, os, shutil, subprocess, tempfile

import torch, transformers
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import load_image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "Tests", "Fixtures")
OUT = os.path.join(FIX, "finetune")
IMAGES = os.path.join(FIX, "images")
LAYOUT = {"cat": ["orient_1.png", "orient_2.png", "orient_3.png", "chelsea_small.jpg"],
          "dog": ["orient_5.png", "orient_6.png", "orient_7.png", "camera_gray.jpg"]}
PROBES = ["chelsea_small.jpg", "orient_8.png"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cvt", default=os.path.join(ROOT, ".build", "debug", "cvt"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    for label, files in LAYOUT.items():
        os.makedirs(os.path.join(data, label))
        for f in files:
            shutil.copy(os.path.join(IMAGES, f), os.path.join(data, label, f))
    proc = os.path.join(tmp, "proc")
    os.makedirs(proc)
    with open(os.path.join(proc, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": 64},
                   "crop_pct": 0.875, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                   "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, f)
    model_dir = os.path.join(tmp, "model")
    cmd = [a.cvt, "train", "--model", os.path.join(FIX, "training", "gradients", "tiny_ce"), "--ignore-mismatched-sizes",
           "--image-processor", proc, "--train-dir", data, "--train-val-split", "0.25", "--output-dir", model_dir,
           "--num-train-epochs", "2", "--per-device-train-batch-size", "2", "--learning-rate", "1e-3", "--threads", "1"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    result = {"transformers": transformers.__version__, "torch": torch.__version__, "loaded": {}}
    tensors = {}
    checkpoints = sorted((d for d in os.listdir(model_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    for name, folder in [("output", model_dir), ("checkpoint", os.path.join(model_dir, checkpoints[-1]))]:
        model, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
        bad = {k: [str(x) for x in v] for k, v in info.items() if v}
        assert not bad, f"{folder}: {bad}"
        model.eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        # As the image-classification pipeline reads files (EXIF orientation applied), then RGB.
        images = [load_image(os.path.join(IMAGES, p)).convert("RGB") for p in PROBES]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits
        tensors[f"{name}.pixel_values"] = pixels.contiguous()
        tensors[f"{name}.logits"] = logits.contiguous()
        result["loaded"][name] = {"folder": os.path.relpath(folder, model_dir), "loading_info": info and {k: list(v) for k, v in info.items()},
                                  "id2label": {str(k): v for k, v in model.config.id2label.items()},
                                  "processor": type(processor).__name__}
    result["probes"] = PROBES
    result["command"] = " ".join(["cvt"] + cmd[1:]).replace(tmp, "<tmp>").replace(ROOT + "/", "")

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    # The output folder without the bulky intermediate checkpoints except the last.
    keep = os.path.join(OUT, "model")
    shutil.copytree(model_dir, keep, ignore=lambda d, names: [n for n in names if n.startswith("checkpoint-") and n != checkpoints[-1]])
    save_file(tensors, os.path.join(OUT, "transformers.safetensors"))
    with open(os.path.join(OUT, "transformers.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    shutil.rmtree(tmp)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
