#!/usr/bin/env python3
"""Reference logits for the pytorch_model.bin fixture (Tests/Fixtures/torch/cvt_tiny), computed by
transformers loading a folder that holds only config.json + pytorch_model.bin.
Run from the repo root after Scripts/make_torch_fixtures.py: .venv-reference/bin/python Scripts/make_bin_parity.py
"""
import os, shutil, tempfile

import torch
from safetensors.torch import save_file
from transformers import CvtForImageClassification

d = os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures", "torch", "cvt_tiny")
with tempfile.TemporaryDirectory() as t:
    for f in ["config.json", "pytorch_model.bin"]:
        shutil.copy(os.path.join(d, f), t)
    model = CvtForImageClassification.from_pretrained(t, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, 40, 48, generator=g)
    with torch.no_grad():
        logits = model(x).logits
save_file({"pixel_values": x.contiguous()}, os.path.join(d, "input.safetensors"))
save_file({"logits": logits.contiguous()}, os.path.join(d, "expected.safetensors"))
print("logits", logits.shape, logits.abs().max().item())
