#!/usr/bin/env python3
"""Pipeline fixtures: transformers' `image-classification` pipeline (PIL backend) on the fixture
photos, for small models with a single-label, a multi-label and a regression head.

Run from the repo root: .venv-reference/bin/python Scripts/make_pipeline_fixtures.py
Writes Tests/Fixtures/pipeline/<model>/{config.json, model.safetensors, preprocessor_config.json}
and Tests/Fixtures/pipeline/expected.json.
"""
import json, os, shutil

import PIL, torch, transformers
from transformers import pipeline

ROOT = os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures")
OUT = os.path.join(ROOT, "pipeline")
IMAGES = ["rocket.jpg", "rocket_exif6.jpg", "coffee.png", "coffee_exif3.jpg", "camera_gray.png", "camera_gray.jpg",
          "astronaut_rgba.png", "chelsea_palette.png", "chelsea_small.jpg", "chelsea_tall.jpg", "coffee_16bit.png"]
PREPROCESSOR = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True,
                "image_processor_type": "ConvNextImageProcessor",
                "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 64}
MODELS = {
    # name: (parity fixture whose weights are reused, problem_type, labels)
    "single_label": ("loss_int_ce_batch1", None, ["cat", "coffee", "rocket"]),
    "multi_label": ("multilabel", "multi_label_classification", ["animal", "drink", "vehicle", "person", "outdoor"]),
    "regression": ("regression", "regression", ["score"]),
}
# (top_k, function_to_apply) variants run on every model; None = pipeline default.
VARIANTS = [(None, None), (2, None), (50, None), (None, "softmax"), (None, "sigmoid"), (None, "none")]


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"transformers": transformers.__version__, "torch": torch.__version__, "pillow": PIL.__version__,
                "images": IMAGES, "models": {}}
    for name, (source, problem_type, labels) in MODELS.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        src = os.path.join(ROOT, "parity", source)
        shutil.copy(os.path.join(src, "model.safetensors"), os.path.join(d, "model.safetensors"))
        config = json.load(open(os.path.join(src, "config.json")))
        config["id2label"] = {str(i): l for i, l in enumerate(labels)}
        config["label2id"] = {l: i for i, l in enumerate(labels)}
        if problem_type:
            config["problem_type"] = problem_type
        json.dump(config, open(os.path.join(d, "config.json"), "w"), indent=2, sort_keys=True)
        json.dump(PREPROCESSOR, open(os.path.join(d, "preprocessor_config.json"), "w"), indent=2, sort_keys=True)
        clf = pipeline("image-classification", model=d, device="cpu")
        assert "Pil" in type(clf.image_processor).__name__, type(clf.image_processor).__name__
        runs = []
        for top_k, fn in VARIANTS:
            kwargs = {}
            if top_k is not None:
                kwargs["top_k"] = top_k
            if fn is not None:
                kwargs["function_to_apply"] = fn
            paths = [os.path.join(ROOT, "images", f) for f in IMAGES]
            out = clf(paths, **kwargs)
            runs.append({"top_k": top_k, "function_to_apply": fn,
                         "results": [[{"label": p["label"], "score": float(p["score"])} for p in r] for r in out]})
        expected["models"][name] = {"processor": type(clf.image_processor).__name__, "runs": runs}
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"), indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
