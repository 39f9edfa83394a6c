#!/usr/bin/env python3
"""Generate the CvT training fixtures in Tests/Fixtures/training/ from PyTorch / Hugging Face transformers.

Run from the repository root with the reference environment (needs `accelerate` for the Trainer):

    .venv-reference/bin/python Scripts/make_training_fixtures.py

Two families:

gradients/<case>/   one training-mode forward + backward
  config.json, model.safetensors   initial weights (save_pretrained; F32, num_batches_tracked I64)
  input.safetensors                pixel_values F32 [B,3,H,W]; labels (I64 [B] | F32 [B] | F32 [B,L])
  expected.safetensors             loss F32 [], logits F32, grad.<param> F32 for every named parameter,
                                   buffer.<name> = BatchNorm buffers after the forward (num_batches_tracked I64)
  case.json                        description, versions, reference dtype, checks, notes

trainer/<case>/     a few optimizer steps of the real transformers.Trainer (sequential batches)
  config.json, model.safetensors   initial weights
  data.safetensors                 pixel_values F32 [N,3,H,W]; labels
  args.json                        TrainingArguments given + resolved values, versions, notes
  expected.safetensors             full state dict after training
  log.json                         Trainer.state.log_history entries of the optimizer steps
  decay_parameters.json            sorted Trainer.get_decay_parameter_names(model)

Deterministic: per-case seeds, a dedicated torch.Generator, one CPU thread; reruns are byte-identical.
Weights are seeded random values (randomize_, as in Scripts/make_fixtures.py), not HF's init. Every
dropout / attention-dropout / drop-path rate is 0.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import CvtConfig, CvtForImageClassification, PrinterCallback, Trainer, TrainingArguments

try:
    import accelerate
except ImportError:  # pragma: no cover
    sys.exit("transformers.Trainer needs accelerate: .venv-reference/bin/pip install 'accelerate==1.15.0'")

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "Tests" / "Fixtures" / "training"

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "accelerate": accelerate.__version__,
    "safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "python": sys.version.split()[0],
}

torch.set_num_threads(1)
torch.manual_seed(0)

NO_DROPOUT = dict(drop_rate=[0.0, 0.0, 0.0], attention_drop_rate=[0.0, 0.0, 0.0], drop_path_rate=[0.0, 0.0, 0.0])
SMALL = dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3])
MINI = dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3])

WEIGHTS_NOTE = (
    "Weights are seeded random (conv/linear W ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.1), LN/BN weight ~ "
    "1 + N(0, 0.1), BN running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5), cls_token ~ N(0, 0.5), "
    "num_batches_tracked 0), not HF's init. drop_rate, attention_drop_rate and drop_path_rate are 0 in every stage. "
    "config.json is saved before any forward, so it has no problem_type (ports must infer it from the labels)."
)


# --------------------------------------------------------------------------------------------
# Weight randomisation and patches (copied from Scripts/make_fixtures.py so these fixtures do not
# change when that script does)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter and buffer (except num_batches_tracked) with seeded values, in state_dict order."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owner[f"{mname}.{pname}" if mname else pname] = mod

    sd = model.state_dict(keep_vars=True)
    touched = set()
    for key, t in sd.items():
        mod = owner[key]
        leaf = key.rsplit(".", 1)[-1]

        def normal(std, mean=0.0):
            return torch.randn(t.shape, generator=gen, dtype=torch.float32) * std + mean

        if leaf == "num_batches_tracked":
            continue
        if leaf == "cls_token":
            val = normal(0.5)
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and leaf == "weight":
            val = normal(1.0 / math.sqrt(t[0].numel()))
        elif leaf == "bias":
            val = normal(0.1)
        elif isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)) and leaf == "weight":
            val = normal(0.1, mean=1.0)
        elif isinstance(mod, nn.BatchNorm2d) and leaf == "running_mean":
            val = normal(0.2)
        elif isinstance(mod, nn.BatchNorm2d) and leaf == "running_var":
            val = torch.rand(t.shape, generator=gen, dtype=torch.float32) + 0.5
        else:
            raise RuntimeError(f"randomize_: no rule for {key} ({type(mod).__name__})")
        t.copy_(val)
        touched.add(key)
    untouched = [k for k in sd if k not in touched and not k.endswith("num_batches_tracked")]
    assert not untouched, untouched


def patch_projection_methods(model: CvtForImageClassification) -> None:
    """qkv_projection_method "avg" / "linear" as in microsoft/CvT (HF: AttributeError at forward).

    "avg" key/value: nn.AvgPool2d(kernel_qkv, stride_kv, padding_kv, ceil_mode=True, count_include_pad=True);
    "avg" query and "linear" q/k/v: nn.Identity(). No parameters, no buffers.
    """
    cfg = model.config
    for s, stage in enumerate(model.cvt.encoder.stages):
        method = cfg.qkv_projection_method[s]
        if method == "dw_bn":
            continue
        for layer in stage.layers:
            att = layer.attention.attention
            for name in ("convolution_projection_query", "convolution_projection_key", "convolution_projection_value"):
                proj = getattr(att, name)
                assert not hasattr(proj, "convolution_projection")
                if method == "avg" and name != "convolution_projection_query":
                    mod = nn.AvgPool2d(
                        kernel_size=cfg.kernel_qkv[s], stride=cfg.stride_kv[s], padding=cfg.padding_kv[s], ceil_mode=True
                    )
                elif method in ("avg", "linear"):
                    mod = nn.Identity()
                else:
                    raise ValueError(method)
                proj.convolution_projection = mod


def patch_cls_every_stage(model: CvtForImageClassification) -> None:
    """Per-stage CLS token of that stage's width (HF creates [1,1,embed_dim[-1]] for every stage)."""
    cfg = model.config
    for s, stage in enumerate(model.cvt.encoder.stages):
        if cfg.cls_token[s]:
            stage.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim[s]))


def truncate_depth(model: CvtForImageClassification, depth) -> None:
    for s, stage in enumerate(model.cvt.encoder.stages):
        stage.layers = nn.Sequential(*list(stage.layers)[: depth[s]])


PROJ_NOTES = (
    "Patched HF (transformers builds no conv sub-module for qkv_projection_method other than 'dw_bn' and crashes "
    "with AttributeError at forward). Semantics of microsoft/CvT lib/models/cls_cvt.py: stage 0 'avg': query = "
    "plain flatten b c h w -> b (h w) c (the query of an 'avg' stage is built with method 'linear' in both the "
    "original and HF, so it is never pooled); key and value = nn.AvgPool2d(kernel_size=kernel_qkv=3, "
    "stride=stride_kv=2, padding=padding_kv=1, ceil_mode=True, count_include_pad=True) then flatten. Input 40x48 "
    "-> stage-0 grid 10x12 -> K/V grid 6x7 with ceil_mode (floor mode would give 5x6). Per axis (length n, k 3, "
    "s 2, p 1), output o has start = 2o - 1, end = min(start + 3, n + 1), divisor factor end - start, and sums the "
    "real pixels in [max(start,0), min(end,n)): the first window is 1 pad + 2 real pixels (divisor 3), the last "
    "(o = 5 of 10 rows, o = 6 of 12 columns) is 1 real pixel + 1 pad (divisor 2); the divisor is the product of "
    "the two axis factors (a ones input gives 4/9 at [0,0] and 1/4 at [5,6]). Stage 1 'linear': q = k = v = the LayerNorm-ed tokens (identity projection, "
    "no conv, no BN). Stage 2 'dw_bn' (unchanged HF, with CLS). No parameters exist for avg/linear projections, so "
    "model.safetensors has no convolution_projection keys in stages 0 and 1. Patch: assign "
    "`convolution_projection = nn.AvgPool2d(...)` / `nn.Identity()` to every affected CvtSelfAttentionProjection."
)

CLS_EVERY_NOTES = (
    "Patched HF: CvtStage creates cls_token with shape [1,1,embed_dim[-1]] for every stage, so stages 0 and 1 fail "
    "with a size mismatch at the concat. The original code gives each stage a CLS of its own width. Patch: replace "
    "stages[s].cls_token with nn.Parameter of shape [1,1,embed_dim[s]] before randomising; keys stay "
    "cvt.encoder.stages.{s}.cls_token (shapes [1,1,8], [1,1,16], [1,1,24]). Each stage prepends its CLS, every "
    "layer of the stage sees it (attention splits it off before the conv projections and re-prepends it to q, k, "
    "v), it is dropped at the end of the stage; only the last stage's CLS reaches the head. grad.<stage s>.cls_token "
    "is the gradient of that stage's CLS."
)

SHALLOW_NOTES = (
    "Patched HF: CvtStage takes drop_path_rates[stage_index] from a linspace of length depth[s], so depth [1,1,1] "
    "raises IndexError at construction. Built with depth [1,2,3] (drop_path_rate 0 everywhere), each stage's "
    "`layers` truncated to its first layer, config.depth set to [1,1,1] before save_pretrained (HF cannot load "
    "this config.json). model.safetensors and grad.* hold exactly the truncated model's keys (layers.0 only)."
)

NO_CLS_NOTES = (
    "Unpatched HF, called with output_hidden_states=True: with cls_token[-1] false CvtForImageClassification reads "
    "outputs[1], which is the hidden_states tuple only when requested (IndexError otherwise). Head = layernorm over "
    "every token of the last stage, mean over tokens, classifier."
)

KV_NOTES = (
    "Unpatched HF. stride_kv [1,1,1], stride_q 1, kernel_qkv [3,5,3]; padding_q [1,2,1] keeps the query grid, "
    "padding_kv [0,1,1] shrinks the key/value grid by 2 in stages 0 and 1 (10x10 -> 8x8, 5x5 -> 3x3), so there "
    "are fewer keys than queries."
)

GRADIENT_CASES = [
    dict(
        name="tiny_ce",
        seed=201,
        config=dict(SMALL, num_labels=10),
        input=(2, 3, 64, 64),
        labels="int",
        description="embed [16,32,48], heads [1,2,3], depth [1,2,3], 10 labels, batch 2, 64x64, int64 labels -> "
        "cross-entropy (mean over the batch).",
    ),
    dict(
        name="nonsquare_qkvbias",
        seed=202,
        config=dict(MINI, num_labels=5, qkv_bias=[True, False, True]),
        input=(3, 3, 48, 72),
        labels="int",
        description="embed [8,16,24], depth [1,2,3], qkv_bias [true,false,true] (stage 1 Q/K/V linears have no "
        "bias parameter), 5 labels, batch 3, non-square 48x72 (HxW), cross-entropy.",
    ),
    dict(
        name="regression",
        seed=203,
        config=dict(MINI, num_labels=1),
        input=(2, 3, 40, 40),
        labels="regression",
        description="num_labels 1, float labels [B] -> problem_type 'regression', "
        "MSELoss(logits.squeeze(), labels.squeeze()) (mean), batch 2, 40x40.",
    ),
    dict(
        name="multilabel",
        seed=204,
        config=dict(MINI, num_labels=4),
        input=(3, 3, 40, 40),
        labels="multilabel",
        description="num_labels 4, float 0/1 labels [B,4] -> problem_type 'multi_label_classification', "
        "BCEWithLogitsLoss (mean over all B*4 elements), batch 3, 40x40.",
    ),
    dict(
        name="no_cls_last",
        seed=205,
        config=dict(MINI, num_labels=10, cls_token=[False, False, False]),
        input=(2, 3, 40, 48),
        labels="int",
        hidden=True,
        notes=NO_CLS_NOTES,
        description="No CLS token anywhere (head = mean over the layernorm-ed last-stage tokens), cross-entropy.",
    ),
    dict(
        name="kv_stride1",
        seed=206,
        config=dict(
            MINI,
            num_labels=10,
            stride_kv=[1, 1, 1],
            kernel_qkv=[3, 5, 3],
            padding_q=[1, 2, 1],
            padding_kv=[0, 1, 1],
        ),
        input=(2, 3, 40, 40),
        labels="int",
        notes=KV_NOTES,
        description="stride_kv [1,1,1], kernel_qkv [3,5,3], padding_q [1,2,1], padding_kv [0,1,1] (K/V grids 8x8, "
        "3x3, 3x3 for query grids 10x10, 5x5, 3x3), cross-entropy, batch 2, 40x40.",
    ),
    dict(
        name="proj_avg_linear",
        seed=207,
        config=dict(MINI, num_labels=10, qkv_projection_method=["avg", "linear", "dw_bn"]),
        input=(2, 3, 40, 48),
        labels="int",
        patch="avg_linear",
        notes=PROJ_NOTES,
        description="Beyond HF: qkv_projection_method ['avg','linear','dw_bn'] with microsoft/CvT semantics, "
        "cross-entropy. Reference computed in float64.",
    ),
    dict(
        name="cls_every_stage",
        seed=208,
        config=dict(MINI, num_labels=10, cls_token=[True, True, True]),
        input=(2, 3, 40, 48),
        labels="int",
        patch="cls_every_stage",
        notes=CLS_EVERY_NOTES,
        description="Beyond HF: a CLS token in every stage, each of that stage's width, cross-entropy. Reference "
        "computed in float64.",
    ),
    dict(
        name="shallow_depth",
        seed=209,
        config=dict(MINI, num_labels=10),
        final_depth=[1, 1, 1],
        input=(2, 3, 40, 48),
        labels="int",
        patch="shallow",
        notes=SHALLOW_NOTES,
        description="Beyond HF: depth [1,1,1] (HF raises IndexError at construction), cross-entropy. Reference "
        "computed in float64.",
    ),
]

FLOAT64_PATCHES = {"avg_linear", "cls_every_stage", "shallow"}


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def build_model(case, config: CvtConfig | None = None) -> CvtForImageClassification:
    if config is None:
        config = CvtConfig(**NO_DROPOUT, **case["config"])
    model = CvtForImageClassification(config)
    patch = case.get("patch")
    if patch == "avg_linear":
        patch_projection_methods(model)
    elif patch == "cls_every_stage":
        patch_cls_every_stage(model)
    elif patch == "shallow":
        truncate_depth(model, case["final_depth"])
        model.config.depth = list(case["final_depth"])
    elif patch is not None:
        raise ValueError(patch)
    return model.to(torch.float32)


def make_labels(kind: str, n: int, num_labels: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "int":
        return torch.randint(0, num_labels, (n,), generator=gen, dtype=torch.int64)
    if kind == "regression":
        return torch.randn((n,), generator=gen, dtype=torch.float32)
    if kind == "multilabel":
        labels = torch.randint(0, 2, (n, num_labels), generator=gen, dtype=torch.int64).to(torch.float32)
        labels[0, 0], labels[0, 1] = 1.0, 0.0  # both values occur
        return labels
    raise ValueError(kind)


def save_model(model: CvtForImageClassification, folder: Path, final_depth=None) -> None:
    """save_pretrained (config.json rewritten with sorted keys) and check model.safetensors is the full state dict."""
    model.save_pretrained(folder)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if final_depth is not None:
        cfg["depth"] = list(final_depth)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    saved = load_file(str(folder / "model.safetensors"))
    sd = model.state_dict()
    assert set(saved) == set(sd), set(saved) ^ set(sd)
    for k, v in saved.items():
        assert v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32), (k, v.dtype)
        assert torch.equal(v, sd[k]), k


def cast_labels(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return labels.to(dtype) if labels.is_floating_point() else labels


def tensor_summary(tensors):
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Gradient fixtures
# --------------------------------------------------------------------------------------------


def forward_backward(model, pixel_values, labels, hidden: bool):
    """Training-mode forward + backward. Returns loss, logits, {param: grad}, {bn buffer: value}."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(pixel_values, labels=labels, output_hidden_states=True if hidden else None, return_dict=True)
    assert out.loss is not None and out.loss.dim() == 0
    out.loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
        grads[n] = p.grad.detach().clone()
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return out.loss.detach().clone(), out.logits.detach().clone(), grads, buffers


def loss_only(model, pixel_values, labels, hidden: bool) -> float:
    with torch.no_grad():
        out = model(pixel_values, labels=labels, output_hidden_states=True if hidden else None, return_dict=True)
    return out.loss.item()


def finite_difference_check(model64, pixel_values, labels, hidden, grads64, seed, n_dirs=3, eps=1e-6):
    """Central differences in float64 along random directions over ALL parameters (v ~ N(0,1) per element): d/dt L(theta + t v)."""
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model64)
    m.train()
    params = dict(m.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    rows = []
    for _ in range(n_dirs):
        v = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in base.items()}
        directional = sum(float((grads64[n] * v[n]).sum()) for n in base)

        def at(t):
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(base[n] + t * v[n])
            return loss_only(m, pixel_values, labels, hidden)

        lp1, lm1, lp2, lm2 = at(eps), at(-eps), at(2 * eps), at(-2 * eps)
        fd2 = (lp1 - lm1) / (2 * eps)
        fd4 = (lm2 - 8 * lm1 + 8 * lp1 - lp2) / (12 * eps)
        rows.append(
            {
                "autograd_dot_v": directional,
                "central_difference_2pt": fd2,
                "relative_error_2pt": abs(fd2 - directional) / abs(directional),
                "central_difference_4th_order": fd4,
                "relative_error": abs(fd4 - directional) / abs(directional),
            }
        )
    return rows


def generate_gradient_case(case) -> dict:
    name = case["name"]
    folder = OUT_ROOT / "gradients" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    model = build_model(case)
    randomize_(model, gen)
    num_labels = model.config.num_labels
    pixel_values = torch.randn(case["input"], generator=gen, dtype=torch.float32)
    labels = make_labels(case["labels"], case["input"][0], num_labels, gen)
    hidden = bool(case.get("hidden"))

    assert model.config.problem_type is None
    save_model(model, folder, case.get("final_depth"))
    initial = copy.deepcopy(model)

    # float32 run
    m32 = copy.deepcopy(initial)
    loss32, logits32, grads32, bufs32 = forward_backward(m32, pixel_values, labels, hidden)
    problem_type = m32.config.problem_type

    # float64 run from the same float32 weights / inputs
    m64 = copy.deepcopy(initial).to(torch.float64)
    pv64, lab64 = pixel_values.to(torch.float64), cast_labels(labels, torch.float64)
    loss64, logits64, grads64, bufs64 = forward_backward(m64, pv64, lab64, hidden)
    assert m64.config.problem_type == problem_type

    fd_rows = finite_difference_check(copy.deepcopy(initial).to(torch.float64), pv64, lab64, hidden, grads64, case["seed"] + 1000)
    worst_fd = max(r["relative_error"] for r in fd_rows)
    assert worst_fd < 1e-6, (name, fd_rows)
    assert max(r["relative_error_2pt"] for r in fd_rows) < 1e-5, (name, fd_rows)

    reference_f64 = case.get("patch") in FLOAT64_PATCHES
    if reference_f64:
        loss, logits = loss64.to(torch.float32), logits64.to(torch.float32)
        grads = {n: g.to(torch.float32) for n, g in grads64.items()}
        bufs = {n: (b if b.dtype == torch.int64 else b.to(torch.float32)) for n, b in bufs64.items()}
    else:
        loss, logits, grads, bufs = loss32, logits32, grads32, bufs32

    # Gradients must not be vanishingly small, except where they are zero analytically (checked in float64):
    # the key bias (projection_key.bias, and the key BatchNorm bias when the stage has no CLS token) shifts every
    # attention score of a row by the same amount, which softmax ignores; in the last layer of a CLS stage only
    # the CLS row reaches the head, so the query conv projection of the image tokens gets no gradient at all.
    grad_max = {n: g.abs().max().item() for n, g in grads.items()}
    structural = {n: grads64[n].abs().max().item() for n in grads64 if grads64[n].abs().max().item() < 1e-12}
    small = {n: v for n, v in grad_max.items() if not v > 1e-6 and n not in structural}
    assert not small, (name, small)
    for n in structural:
        assert n.endswith(("projection_key.bias", "convolution_projection_key.convolution_projection.normalization.bias")) or (
            ".convolution_projection_query.convolution_projection." in n
        ), (name, n)

    # float32 noise floor (f32 run vs f64 run)
    def d(a, b):
        return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()

    grad_abs = max(d(grads32[n], grads64[n]) for n in grads)
    grad_rel = max(d(grads32[n], grads64[n]) / grads64[n].abs().max().item() for n in grads if n not in structural)
    bn_keys = [n for n in bufs if not n.endswith("num_batches_tracked")]
    noise = {
        "max_abs_grad_diff": grad_abs,
        "max_over_tensors_of_abs_grad_diff_over_max_abs_grad": grad_rel,  # structural zeros excluded
        "loss_abs_diff": d(loss32, loss64),
        "max_abs_logits_diff": d(logits32, logits64),
        "max_abs_bn_buffer_diff": max(d(bufs32[n], bufs64[n]) for n in bn_keys),
    }
    for n in bufs:
        if n.endswith("num_batches_tracked"):
            assert bufs32[n].item() == 1 and bufs64[n].item() == 1

    expected = {"loss": loss.reshape(()).contiguous(), "logits": logits.contiguous()}
    for n, g in grads.items():
        expected[f"grad.{n}"] = g.contiguous()
    for n, b in bufs.items():
        expected[f"buffer.{n}"] = b.contiguous()
    inputs = {"pixel_values": pixel_values.contiguous(), "labels": labels.contiguous()}
    save_file(inputs, str(folder / "input.safetensors"))
    save_file(expected, str(folder / "expected.safetensors"))

    notes = case.get("notes", "Unpatched Hugging Face transformers computation.")
    notes += (
        " The model runs in train() mode: every BatchNorm2d (the dw_bn K/V/Q projections) normalises with the batch "
        "mean and biased batch variance over (N,H,W) and updates running_mean/running_var with momentum 0.1 "
        "(running_var uses the unbiased variance n/(n-1)); num_batches_tracked 0 -> 1. buffer.* are those buffers "
        "after the forward. grad.* = d loss / d parameter for every model.named_parameters() entry (names as in "
        "model.safetensors). The loss is the model's own (labels passed to forward); no Trainer scaling. "
        + WEIGHTS_NOTE
    )
    if reference_f64:
        notes += (
            " Expected values computed in float64 (float32 weights and inputs converted to double, forward + "
            "backward in double) and rounded to float32; the float32 run differs by float32_noise below."
        )
    case_json = {
        "description": case["description"],
        "versions": VERSIONS,
        "reference_dtype": "float64 (stored rounded to float32)" if reference_f64 else "float32",
        "problem_type": problem_type,
        "patched": case.get("patch") is not None,
        "forward_kwargs": {"output_hidden_states": True} if hidden else {},
        "seed": case["seed"],
        "float32_noise": noise,
        "finite_difference_check": {
            "method": "float64, 3 random directions v over all parameters (every element N(0,1), not normalised), "
            "eps = 1e-6; 4th-order central difference (L(-2e) - 8 L(-e) + 8 L(e) - L(2e)) / (12 e) (asserted "
            "relative error < 1e-6) and the plain 2-point (L(e) - L(-e)) / (2 e) (asserted < 1e-5; its O(e^2 |v|^2) "
            "truncation error is ~1e-7 relative here), both vs sum(grad64 * v); BatchNorm in train mode (batch "
            "statistics)",
            "directions": fd_rows,
            "max_relative_error": worst_fd,
            "threshold": 1e-6,
        },
        "structurally_zero_gradients": {
            "explanation": "Analytically zero gradients (float64 max |grad| < 1e-12): a key bias adds the same "
            "q.b term to every score of an attention row (softmax-invariant) - projection_key.bias always, the "
            "key BatchNorm bias when the stage has no CLS token (the CLS key bypasses the conv projection); in the "
            "last layer of a stage whose CLS is the only token used downstream, the image-token queries do not "
            "reach the loss, so that layer's query conv projection gets exactly 0. The stored values are the "
            "reference's rounding noise (compare these with an absolute tolerance).",
            "float64_max_abs": structural,
            "stored_max_abs": {n: grad_max[n] for n in structural},
        },
        "min_over_params_of_max_abs_grad": min(v for n, v in grad_max.items() if n not in structural),
        "max_abs_grad": max(grad_max.values()),
        "notes": notes,
        "inputs": tensor_summary(inputs),
        "expected": {
            "loss": [],
            "logits": list(expected["logits"].shape),
            "num_grad_tensors": len(grads),
            "num_buffer_tensors": len(bufs),
        },
    }
    dump_json(folder / "case.json", case_json)
    return {
        "name": name,
        "grad_max": {n: v for n, v in grad_max.items() if n not in structural},
        "structural": structural,
        "noise": noise,
        "fd": worst_fd,
        "ref": case_json["reference_dtype"],
        "expected": expected,
        "inputs": inputs,
    }


def verify_gradient_case(case, result) -> list[str]:
    """Reload the files, rebuild, recompute, compare bit-exactly."""
    folder = OUT_ROOT / "gradients" / case["name"]
    msgs = []
    sd = load_file(str(folder / "model.safetensors"))
    inp = load_file(str(folder / "input.safetensors"))
    exp = load_file(str(folder / "expected.safetensors"))
    assert exp["loss"].shape == torch.Size([])
    if case.get("patch") == "shallow":
        cfg = CvtConfig.from_pretrained(folder)
        assert cfg.depth == case["final_depth"]
        cfg.depth = list(case["config"]["depth"])
        model = build_model(case, cfg)
    else:
        model = build_model(case, CvtConfig.from_pretrained(folder))
    model.load_state_dict(sd, strict=True)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(f"grad.{n}" for n in names) == sorted(k for k in exp if k.startswith("grad."))
    assert sorted(f"buffer.{n}" for n, _ in model.named_buffers()) == sorted(k for k in exp if k.startswith("buffer."))
    hidden = bool(case.get("hidden"))
    if case.get("patch") == "avg_linear":
        shapes = {}
        att0 = model.cvt.encoder.stages[0].layers[0].attention.attention
        hooks = [
            getattr(att0, f"convolution_projection_{w}").register_forward_hook(
                lambda m, i, o, w=w: shapes.__setitem__(w, (tuple(i[0].shape), tuple(o.shape)))
            )
            for w in ("query", "key", "value")
        ]
        with torch.no_grad():
            model.eval()(inp["pixel_values"])
        for h in hooks:
            h.remove()
        b = inp["pixel_values"].shape[0]
        assert shapes["query"] == ((b, 8, 10, 12), (b, 120, 8)), shapes
        assert shapes["key"] == shapes["value"] == ((b, 8, 10, 12), (b, 42, 8)), shapes  # 6x7 (ceil_mode)
        msgs.append("avg K/V grid 6x7")
    if case.get("patch") in FLOAT64_PATCHES:
        model = model.to(torch.float64)
        loss, logits, grads, bufs = forward_backward(
            model, inp["pixel_values"].to(torch.float64), cast_labels(inp["labels"], torch.float64), hidden
        )
        loss, logits = loss.float(), logits.float()
        grads = {n: g.float() for n, g in grads.items()}
        bufs = {n: (b if b.dtype == torch.int64 else b.float()) for n, b in bufs.items()}
    else:
        loss, logits, grads, bufs = forward_backward(model, inp["pixel_values"], inp["labels"], hidden)
    got = {"loss": loss, "logits": logits, **{f"grad.{n}": g for n, g in grads.items()}, **{f"buffer.{n}": b for n, b in bufs.items()}}
    for k, v in exp.items():
        assert v.dtype == got[k].dtype and torch.equal(v, got[k]), (case["name"], k)
    msgs.append("reload+recompute bit-identical")
    if case.get("patch") is None:
        m2 = CvtForImageClassification.from_pretrained(folder, dtype=torch.float32)
        loss2, _, grads2, _ = forward_backward(m2, inp["pixel_values"], inp["labels"], hidden)
        assert torch.equal(loss2, exp["loss"]) and all(torch.equal(grads2[n], exp[f"grad.{n}"]) for n in grads2)
        msgs.append("from_pretrained bit-identical")
    return msgs


# --------------------------------------------------------------------------------------------
# Trainer fixtures
# --------------------------------------------------------------------------------------------


class DictDataset(Dataset):
    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self):
        return self.pixel_values.shape[0]

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


class SequentialTrainer(Trainer):
    """The real Trainer, with batches in dataset order (transformers 5.23: _get_train_sampler(self, train_dataset=None))."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


TRAINER_CASES = [
    dict(
        name="adamw_constant",
        seed=301,
        config=dict(SMALL, num_labels=10),
        n=12,
        image=48,
        labels="int",
        args=dict(
            per_device_train_batch_size=4,
            max_steps=3,
            learning_rate=1e-3,
            weight_decay=0.05,
            lr_scheduler_type="constant",
            max_grad_norm=1e9,
        ),
        clipping="never",
        description="embed [16,32,48], heads [1,2,3], depth [1,2,3], 48x48 images. AdamW (Trainer default optim "
        "adamw_torch_fused), constant lr 1e-3, weight_decay 0.05 on the "
        "decay group only, 3 steps of batch 4 (N=12, one epoch), cross-entropy, max_grad_norm 1e9 (no clipping).",
    ),
    dict(
        name="linear_warmup_clip_accum",
        seed=302,
        config=dict(MINI, num_labels=10),
        n=10,
        image=48,
        labels="int",
        args=dict(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=4,
            learning_rate=2e-3,
            weight_decay=0.01,
            lr_scheduler_type="linear",
            warmup_steps=2,
            max_grad_norm=0.05,
        ),
        clipping="every step",
        description="embed [8,16,24], heads [1,2,3], depth [1,2,3], 48x48 images. Linear schedule with 2 warmup steps (step 0 runs with lr 0), lr 2e-3, weight_decay 0.01, "
        "gradient clipping to 0.05 (active in every step), gradient_accumulation_steps 2 with micro-batch 2, "
        "4 optimizer steps over N=10: 5 micro-batches per epoch -> optimizer steps of 2, 2, 1 micro-batches in "
        "epoch 0, then 2 in epoch 1 (sequential order restarts).",
    ),
    dict(
        name="cosine_ratio_smoothing",
        seed=303,
        config=dict(MINI, num_labels=10),
        n=10,
        image=48,
        labels="int",
        args=dict(
            per_device_train_batch_size=4,
            num_train_epochs=2,
            learning_rate=1e-3,
            weight_decay=0.0,
            lr_scheduler_type="cosine",
            warmup_steps=0.3,
            label_smoothing_factor=0.1,
        ),
        description="embed [8,16,24], heads [1,2,3], depth [1,2,3], 48x48 images. Cosine schedule, warmup ratio 0.3 (transformers 5.23 has no warmup_ratio field: "
        "warmup_steps=0.3 < 1 is a ratio, ceil(6 * 0.3) = 2 warmup steps), label_smoothing_factor 0.1 "
        "(Trainer LabelSmoother), 2 epochs over N=10 with batch 4 (batches 4, 4, 2 per epoch -> 6 optimizer steps), "
        "weight_decay 0, max_grad_norm default 1.0.",
    ),
    dict(
        name="constant_warmup_multilabel",
        seed=304,
        config=dict(MINI, num_labels=4),
        n=12,
        image=48,
        labels="multilabel",
        args=dict(
            per_device_train_batch_size=4,
            max_steps=3,
            learning_rate=1e-3,
            weight_decay=0.02,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=1,
        ),
        description="embed [8,16,24], heads [1,2,3], depth [1,2,3], 48x48 images. constant_with_warmup, 1 warmup step (lr 0, then 1e-3), multi-label float 0/1 labels [N,4] -> "
        "BCEWithLogits, weight_decay 0.02, 3 steps of batch 4, max_grad_norm default 1.0.",
    ),
]

ARG_FIELDS = [
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "gradient_accumulation_steps",
    "per_device_train_batch_size",
    "max_steps",
    "num_train_epochs",
    "label_smoothing_factor",
    "seed",
    "optim",
    "dataloader_drop_last",
    "average_tokens_across_devices",
    "logging_steps",
]


def jsonable(v):
    if hasattr(v, "value"):  # enums
        return v.value
    return v


def schedule_lambda(kind: str, k: int, warmup: int, total: int) -> float:
    """transformers/optimization.py lr lambdas (num_cycles 0.5 for cosine)."""
    if kind == "constant":
        return 1.0
    if kind == "constant_with_warmup":
        return float(k) / float(max(1.0, warmup)) if k < warmup else 1.0
    if k < warmup:
        return float(k) / float(max(1, warmup))
    if kind == "linear":
        return max(0.0, float(total - k) / float(max(1, total - warmup)))
    if kind == "cosine":
        progress = float(k - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ValueError(kind)


def manual_training(initial, data, spec, decay_names, dtype):
    """Independent re-implementation of the Trainer loop as read from transformers 5.23 (see notes in args.json)."""
    model = copy.deepcopy(initial).to(dtype)
    a = spec["resolved"]
    pv = data["pixel_values"].to(dtype)
    labels = cast_labels(data["labels"], dtype)
    n, bs, ga = pv.shape[0], a["per_device_train_batch_size"], a["gradient_accumulation_steps"]
    batches = [(pv[i : i + bs], labels[i : i + bs]) for i in range(0, n, bs)]
    named = list(model.named_parameters())
    groups = [
        {"params": [p for nm, p in named if nm in decay_names], "weight_decay": a["weight_decay"]},
        {"params": [p for nm, p in named if nm not in decay_names], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=a["learning_rate"], betas=(a["adam_beta1"], a["adam_beta2"]), eps=a["adam_epsilon"], fused=True
    )
    total, warmup, kind = a["total_optimizer_steps"], a["resolved_warmup_steps"], a["lr_scheduler_type"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule_lambda(kind, k, warmup, total))
    eps_ls = a["label_smoothing_factor"]
    log = []
    step = 0
    epoch = 0
    model.zero_grad()
    while step < total:
        chunks = [batches[i : i + ga] for i in range(0, len(batches), ga)]
        seen = 0
        for chunk in chunks:
            num_items = sum(int(lab.ne(-100).sum()) for _, lab in chunk)
            tr_loss = torch.zeros((), dtype=dtype)
            for x, y in chunk:
                model.train()
                if eps_ls:
                    logits = model(x).logits
                    log_probs = -nn.functional.log_softmax(logits, dim=-1)
                    nll = log_probs.gather(-1, y.unsqueeze(-1)).sum() / num_items
                    smooth = log_probs.sum(dim=-1, keepdim=True, dtype=dtype).sum() / (num_items * log_probs.shape[-1])
                    loss = (1 - eps_ls) * nll + eps_ls * smooth
                else:
                    loss = model(x, labels=y).loss  # NOT divided by the accumulation count (see notes)
                loss.backward()
                tr_loss += loss.detach()
            seen += len(chunk)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a["max_grad_norm"])
            opt.step()
            lr_used = sched.get_last_lr()[0]
            sched.step()
            model.zero_grad()
            step += 1
            log.append(
                {
                    "loss": tr_loss.item(),
                    "grad_norm": grad_norm.item(),
                    "learning_rate": lr_used,
                    "epoch": epoch + seen / len(batches),
                    "step": step,
                }
            )
            if step == total:
                break
        epoch += 1
    return model, log


def generate_trainer_case(case) -> dict:
    name = case["name"]
    folder = OUT_ROOT / "trainer" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    model = build_model(case)
    randomize_(model, gen)
    cfg = model.config
    pixel_values = torch.randn((case["n"], 3, case["image"], case["image"]), generator=gen, dtype=torch.float32)
    labels = make_labels(case["labels"], case["n"], cfg.num_labels, gen)
    data = {"pixel_values": pixel_values.contiguous(), "labels": labels.contiguous()}
    save_file(data, str(folder / "data.safetensors"))
    assert cfg.problem_type is None
    save_model(model, folder)
    initial = copy.deepcopy(model)

    with tempfile.TemporaryDirectory() as tmp:
        fixed = dict(
            output_dir=tmp,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        args = TrainingArguments(**fixed, **case["args"])
        defaults = TrainingArguments(output_dir=tmp)
        trainer = SequentialTrainer(model=model, args=args, train_dataset=DictDataset(pixel_values, labels))
        trainer.remove_callback(PrinterCallback)
        decay_names = sorted(trainer.get_decay_parameter_names(model))
        accepts_loss_kwargs = trainer.model_accepts_loss_kwargs
        out = trainer.train()
        assert torch.get_num_threads() == 1
        total_steps = trainer.state.max_steps
        assert trainer.state.global_step == total_steps
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # unwrap accelerate's AcceleratedOptimizer
        optimizer_desc = {
            "class": f"{type(opt).__module__}.{type(opt).__qualname__}",
            "defaults": {k: jsonable(v) for k, v in opt.defaults.items() if k in ("lr", "betas", "eps", "fused", "foreach", "amsgrad", "maximize")},
            "param_groups": [
                {"num_params": len(g["params"]), "weight_decay": g["weight_decay"]} for g in opt.param_groups
            ],
        }
        len_dataloader = len(trainer.get_train_dataloader())

    final_state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(final_state, str(folder / "expected.safetensors"))

    step_logs = [e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
    summary = [e for e in trainer.state.log_history if "train_loss" in e]
    assert len(step_logs) == total_steps and len(summary) == 1
    if case.get("clipping") == "every step":
        assert all(e["grad_norm"] > args.max_grad_norm for e in step_logs), step_logs
    elif case.get("clipping") == "never":
        assert all(e["grad_norm"] < args.max_grad_norm for e in step_logs), step_logs
    dump_json(folder / "log.json", step_logs)
    dump_json(folder / "decay_parameters.json", decay_names)

    ga = args.gradient_accumulation_steps
    per_epoch = max(len_dataloader // ga + int(len_dataloader % ga > 0), 1)
    resolved = {f: jsonable(getattr(args, f)) for f in ARG_FIELDS}
    resolved.update(
        {
            "resolved_warmup_steps": args.get_warmup_steps(total_steps),
            "warmup_ratio": args.warmup_steps if 0 < args.warmup_steps < 1 else None,
            "total_optimizer_steps": total_steps,
            "num_examples": case["n"],
            "len_dataloader": len_dataloader,
            "num_update_steps_per_epoch": per_epoch,
            "num_train_epochs_resolved": math.ceil(total_steps / per_epoch),
            "model_accepts_loss_kwargs": accepts_loss_kwargs,
            "loss_divided_by_gradient_accumulation": not accepts_loss_kwargs,
            "label_smoother_used": trainer.label_smoother is not None,
            "train_loss": summary[0]["train_loss"],
            "optimizer": optimizer_desc,
        }
    )
    given = {k: jsonable(v) for k, v in case["args"].items()}
    differing = {f: resolved[f] for f in ARG_FIELDS if jsonable(getattr(args, f)) != jsonable(getattr(defaults, f))}

    # Independent re-implementation: must reproduce the Trainer bit for bit in float32; in float64 it gives the
    # float32 noise floor of the final weights.
    spec = {"resolved": resolved}
    man32, log32 = manual_training(initial, data, spec, set(decay_names), torch.float32)
    for k, v in man32.state_dict().items():
        assert torch.equal(v, final_state[k]), (name, k, (v.double() - final_state[k].double()).abs().max())
    for a_, b_ in zip(log32, step_logs):
        for key in ("loss", "grad_norm", "learning_rate", "epoch", "step"):
            assert a_[key] == b_[key], (name, key, a_[key], b_[key])
    man64, log64 = manual_training(initial, data, spec, set(decay_names), torch.float64)
    sd64 = man64.state_dict()
    float_keys = [k for k in final_state if final_state[k].is_floating_point()]
    # Parameters whose gradient is analytically zero (see gradients/*/case.json): their float32 gradients are
    # rounding noise, which Adam normalises into updates of up to ~lr per step with an arbitrary sign. They do not
    # influence the loss, so the noise stays confined to them.
    bs = resolved["per_device_train_batch_size"]
    _, _, g64, _ = forward_backward(
        copy.deepcopy(initial).to(torch.float64),
        pixel_values[:bs].to(torch.float64),
        cast_labels(labels[:bs], torch.float64),
        False,
    )
    structural = sorted(n for n, g in g64.items() if g.abs().max().item() < 1e-12)
    param_names = {n for n, _ in initial.named_parameters()} - set(structural)
    noise = {
        "max_abs_param_diff_vs_float64": max(
            (final_state[k].double() - sd64[k]).abs().max().item() for k in float_keys if k in param_names
        ),
        "structurally_zero_gradient_parameters": structural,
        "max_abs_diff_vs_float64_of_those": max(
            (final_state[k].double() - sd64[k]).abs().max().item() for k in structural
        ),
        "max_abs_change_in_training_of_those": max(
            (final_state[k].double() - initial.state_dict()[k].double()).abs().max().item() for k in structural
        ),
        "num_param_elements_with_abs_diff_vs_float64_gt_1e-6": sum(
            int(((final_state[k].double() - sd64[k]).abs() > 1e-6).sum()) for k in float_keys if k in param_names
        ),
        "num_param_elements_with_abs_diff_vs_float64_gt_1e-5": sum(
            int(((final_state[k].double() - sd64[k]).abs() > 1e-5).sum()) for k in float_keys if k in param_names
        ),
        "num_param_elements": sum(final_state[k].numel() for k in float_keys if k in param_names),
        "max_abs_bn_buffer_diff_vs_float64": max(
            (final_state[k].double() - sd64[k]).abs().max().item()
            for k in float_keys
            if k not in param_names and k not in structural
        ),
        "max_abs_param_change_in_training": max(
            (final_state[k].double() - initial.state_dict()[k].double()).abs().max().item() for k in float_keys if k in param_names
        ),
        "loss_log_abs_diff_vs_float64": max(abs(a_["loss"] - b_["loss"]) for a_, b_ in zip(log64, step_logs)),
        "grad_norm_log_abs_diff_vs_float64": max(abs(a_["grad_norm"] - b_["grad_norm"]) for a_, b_ in zip(log64, step_logs)),
    }

    notes = (
        "Real transformers.Trainer (subclass overriding only _get_train_sampler -> SequentialSampler), CPU, "
        "TrainingArguments(output_dir=<tmp>, use_cpu=True, report_to='none', save_strategy='no', logging_steps=1, "
        "dataloader_num_workers=0, disable_tqdm=True, **given). Semantics (transformers 5.23 / torch 2.13): "
        "optimizer = torch.optim.AdamW(fused=True) (default optim 'adamw_torch_fused'), param group 0 = "
        "decay_parameters.json with weight_decay, group 1 = all other parameters with weight_decay 0 "
        "(BatchNorm weights and cls_token ARE decayed; biases, LayerNorm weights are not). "
        "CvtForImageClassification.forward takes **kwargs, so Trainer.model_accepts_loss_kwargs is True: "
        "num_items_in_batch is passed to (and ignored by) the model and the loss is NOT divided by the number of "
        "accumulated micro-batches -> with accumulation the gradient is the SUM of the micro-batch mean-loss "
        "gradients and the logged loss is the SUM of the micro-batch losses. With label smoothing the Trainer pops the "
        "labels, runs the model without them and uses LabelSmoother: (1-eps)*sum(nll)/n + eps*sum_c(-log p_c)/(n*C), "
        "n = number of labels in the whole optimizer step. Per optimizer step: forward/backward each micro-batch "
        "(BatchNorm running stats update once per micro-batch forward); if max_grad_norm > 0: total = 2-norm over "
        "all gradients (foreach per-tensor norms, then norm of the norms), grads *= min(max_norm/(total+1e-6), 1); "
        "optimizer.step(); logged learning_rate = lr used by this step = base_lr * lambda(k) for the 0-based step k "
        "(LambdaLR), then scheduler.step(). Logged grad_norm = pre-clip total norm; epoch = epoch_index + "
        "(micro_batches_done_in_epoch / len_dataloader). expected.safetensors = model.state_dict() after the last "
        "step (num_batches_tracked counts micro-batch forwards). An independent re-implementation of this loop "
        "in this script reproduces expected.safetensors and log.json bit for bit in float32; float64_noise is the "
        "same loop in float64 from the same float32 start (fused AdamW in double). " + WEIGHTS_NOTE
    )
    args_json = {
        "description": case["description"],
        "versions": VERSIONS,
        "given": given,
        "fixed": {k: v for k, v in fixed.items() if k != "output_dir"},
        "differs_from_defaults": differing,
        "resolved": resolved,
        "float64_noise": noise,
        "seed": case["seed"],
        "notes": notes,
    }
    dump_json(folder / "args.json", args_json)
    return {
        "name": name,
        "log": step_logs,
        "resolved": resolved,
        "noise": noise,
        "decay": decay_names,
        "params": [n for n, _ in initial.named_parameters()],
    }


# --------------------------------------------------------------------------------------------


README = """# Training fixtures

Generated by `Scripts/make_training_fixtures.py` (run from the repository root:
`.venv-reference/bin/python Scripts/make_training_fixtures.py`) with torch {torch}, transformers {transformers},
accelerate {accelerate}, safetensors {safetensors}, numpy {numpy} (Python {python}), CPU, one thread.
The Trainer needs `accelerate` in that environment (`.venv-reference/bin/pip install accelerate=={accelerate}`).
Reruns are byte-identical. `MANIFEST.json` lists every file with its size and sha256.

Tolerances: `case.json` `float32_noise` (float32 vs float64 run of the same case) and `args.json` `float64_noise`
(the same training loop in float64). Some gradients are zero analytically (key biases, the query projection of the
last layer of a CLS stage); their stored values are rounding noise, listed under `structurally_zero_gradients` /
`structurally_zero_gradient_parameters`. Adam turns that noise into updates of arbitrary sign, so after training
those parameters only match to about lr x steps.

## gradients/<case>/

One training-mode forward + backward of `CvtForImageClassification` (dropout rates 0, BatchNorm on batch statistics).

| file | content |
|---|---|
| `config.json`, `model.safetensors` | initial model (save_pretrained; F32, `num_batches_tracked` I64) |
| `input.safetensors` | `pixel_values` F32 [B,3,H,W]; `labels` I64 [B] (cross-entropy), F32 [B] (regression), F32 [B,L] (multi-label) |
| `expected.safetensors` | `loss` F32 [], `logits` F32, `grad.<name>` for every `named_parameters()` entry, `buffer.<name>` BatchNorm buffers after the forward |
| `case.json` | description, versions, reference dtype, float32-vs-float64 noise, finite-difference check, notes |

Cases: {grad_cases}.
`proj_avg_linear`, `cls_every_stage`, `shallow_depth` are beyond what transformers runs (patched as described in
their `case.json`); their expected values are computed in float64 and stored as F32.

## trainer/<case>/

A few optimizer steps of the real `transformers.Trainer` (sequential batch order).

| file | content |
|---|---|
| `config.json`, `model.safetensors` | initial model |
| `data.safetensors` | `pixel_values` F32 [N,3,H,W], `labels` |
| `args.json` | TrainingArguments given / differing from defaults / resolved (incl. total optimizer steps, warmup steps), float64 noise, notes on Trainer semantics |
| `expected.safetensors` | full state dict after training (weights, BatchNorm running stats, `num_batches_tracked` I64) |
| `log.json` | `Trainer.state.log_history` entry of each optimizer step (`loss`, `grad_norm`, `learning_rate`, `epoch`, `step`) |
| `decay_parameters.json` | sorted `Trainer.get_decay_parameter_names(model)` |

Cases: {trainer_cases}.
"""


def main() -> None:
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    for sub in ("gradients", "trainer"):
        if (OUT_ROOT / sub).exists():
            shutil.rmtree(OUT_ROOT / sub)

    grad_rows = []
    for case in GRADIENT_CASES:
        res = generate_gradient_case(case)
        msgs = verify_gradient_case(case, res)
        grad_rows.append((res, msgs))

    trainer_rows = [generate_trainer_case(case) for case in TRAINER_CASES]

    (OUT_ROOT / "README.md").write_text(
        README.format(
            **VERSIONS,
            grad_cases=", ".join(f"`{c['name']}`" for c in GRADIENT_CASES),
            trainer_cases=", ".join(f"`{c['name']}`" for c in TRAINER_CASES),
        )
    )
    files = sorted(p for p in OUT_ROOT.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    manifest = {
        "generator": "Scripts/make_training_fixtures.py",
        "versions": VERSIONS,
        "files": {str(p.relative_to(OUT_ROOT)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    dump_json(OUT_ROOT / "MANIFEST.json", manifest)

    # ---- summary
    print(f"versions: {VERSIONS}")
    print("\ngradients:")
    print(f"{'case':<20} {'ref':<8} {'min max|g|':>11} {'max max|g|':>11} {'f32-f64 |dg|':>13} {'rel':>9} {'FD rel':>9}  checks")
    for res, msgs in grad_rows:
        gm = res["grad_max"]
        print(
            f"{res['name']:<20} {res['ref'][:7]:<8} {min(gm.values()):>11.3e} {max(gm.values()):>11.3e} "
            f"{res['noise']['max_abs_grad_diff']:>13.3e} {res['noise']['max_over_tensors_of_abs_grad_diff_over_max_abs_grad']:>9.2e} "
            f"{res['fd']:>9.2e}  {'; '.join(msgs)}"
        )
        smallest = sorted(gm.items(), key=lambda kv: kv[1])[:2]
        print("    smallest max|grad|: " + ", ".join(f"{n} {v:.2e}" for n, v in smallest))
        print(f"    structurally zero: {len(res['structural'])} tensors")
    print("\ntrainer:")
    for r in trainer_rows:
        a = r["resolved"]
        print(
            f"{r['name']}: steps {a['total_optimizer_steps']} warmup {a['resolved_warmup_steps']} "
            f"len_dl {a['len_dataloader']} max_grad_norm {a['max_grad_norm']} decayed {len(r['decay'])}/{len(r['params'])} "
            f"noise(param) {r['noise']['max_abs_param_diff_vs_float64']:.2e} change {r['noise']['max_abs_param_change_in_training']:.2e}"
        )
        for e in r["log"]:
            clip = " CLIPPED" if e["grad_norm"] > a["max_grad_norm"] else ""
            print(f"    step {e['step']}: loss {e['loss']:.6f} grad_norm {e['grad_norm']:.6f} lr {e['learning_rate']:.6g} epoch {e['epoch']}{clip}")
    sizes = {}
    for p in OUT_ROOT.rglob("*"):
        if p.is_file():
            top = p.relative_to(OUT_ROOT).parts[0]
            sizes[top] = sizes.get(top, 0) + p.stat().st_size
    total = sum(sizes.values())
    print("\nsizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sizes.items())) + f"; total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
