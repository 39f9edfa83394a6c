#!/usr/bin/env python3
"""Generate the CvT parity fixtures in Tests/Fixtures/parity/ from Hugging Face transformers.

Run from the repository root with the reference environment:

    .venv-reference/bin/python Scripts/make_fixtures.py

Each case gets a folder Tests/Fixtures/parity/<case>/ with
  config.json, model.safetensors   (as written by save_pretrained; F16/BF16 for the low-precision cases)
  input.safetensors                (pixel_values F32 [B,3,H,W]; labels for loss cases)
  expected.safetensors             (logits, last_hidden_state, cls_token_value?, hidden_states.i, loss?)
  case.json                        (description, versions, inferred problem_type, notes)
plus a top-level MANIFEST.json.

Everything is deterministic: fixed per-case seeds, a dedicated torch.Generator for all random
values, single-threaded CPU float32 maths under torch.no_grad(). Running the script twice gives
byte-identical files.

Weights are NOT HF's default init (which makes the network almost trivial): every parameter and
buffer is overwritten with seeded values, see randomize_().

Cases under "beyond the reference" patch the HF model object so that it computes what the original
microsoft/CvT code (lib/models/cls_cvt.py) defines where HF crashes or is wrong; the patch is
described in each case.json "notes".
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CvtConfig, CvtForImageClassification

transformers.utils.logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "Tests" / "Fixtures" / "parity"

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "python": sys.version.split()[0],
}

torch.set_num_threads(1)
torch.manual_seed(0)  # construction-time init is overwritten anyway; this just pins it


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

# HF test-suite "tiny" config (tests/models/cvt/test_modeling_cvt.py, CvtModelTester).
TINY = dict(
    embed_dim=[16, 32, 48],
    num_heads=[1, 2, 3],
    depth=[1, 2, 10],
    patch_sizes=[7, 3, 3],
    patch_stride=[4, 2, 2],
    patch_padding=[2, 1, 1],
    stride_kv=[2, 2, 2],
    cls_token=[False, False, True],
    attention_drop_rate=[0.0, 0.0, 0.0],
    initializer_range=0.02,
    num_labels=2,
)

# Small 3-stage config used by most other cases (all other fields at CvtConfig defaults).
SMALL = dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=10)

# An even smaller one (head_dim 8 in every stage) for the cases whose config the brief leaves open,
# to keep the fixture folder small: a [16,32,48] depth-[1,2,3] model is ~0.6 MB of safetensors, this
# one ~0.19 MB (of which ~40 kB is the safetensors JSON header with HF's long key names).
MINI = dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3])


def make_config(**fields) -> CvtConfig:
    return CvtConfig(**fields)


# --------------------------------------------------------------------------------------------
# Weight randomisation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter and buffer with seeded values.

    conv / linear weight ~ N(0, std = 1/sqrt(fan_in)), fan_in = numel / out_channels
    every bias           ~ N(0, 0.1)
    LayerNorm/BatchNorm weight ~ 1 + N(0, 0.1)
    BN running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5); num_batches_tracked left as is
    cls_token ~ N(0, 0.5)
    Tensors are visited in state_dict order, so the values depend only on the architecture and seed.
    """
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
            fan_in = t[0].numel()
            val = normal(1.0 / math.sqrt(fan_in))
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


@torch.no_grad()
def round_weights_(model: nn.Module, dtype: torch.dtype) -> None:
    """Round all floating-point params/buffers to `dtype` and back to float32 (in place)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            t.copy_(t.to(dtype).to(torch.float32))


# --------------------------------------------------------------------------------------------
# Patches that make HF compute what the original microsoft/CvT code defines
# --------------------------------------------------------------------------------------------


def patch_projection_methods(model: CvtForImageClassification) -> None:
    """qkv_projection_method "avg" / "linear" (HF: AttributeError at forward).

    HF's CvtSelfAttentionProjection.forward is `linear_projection(convolution_projection(x))`, where
    linear_projection is the "b c h w -> b (h w) c" flatten; for methods other than "dw_bn" the
    `convolution_projection` attribute is never created. We attach a parameter-free module there:
      * "avg",  key/value: nn.AvgPool2d(kernel_qkv, stride=stride_kv, padding=padding_kv,
                           ceil_mode=True) (count_include_pad=True, the PyTorch default, as in the
                           original code);
      * "avg",  query:     nn.Identity() (both the original and HF build the query projection with
                           method "linear" when method == "avg": the query is NOT pooled);
      * "linear", q/k/v:   nn.Identity().
    Neither module has parameters or buffers, so the state dict is unchanged (no
    convolution_projection keys for those stages).
    """
    cfg = model.config
    for s, stage in enumerate(model.cvt.encoder.stages):
        method = cfg.qkv_projection_method[s]
        if method == "dw_bn":
            continue
        for layer in stage.layers:
            att = layer.attention.attention
            for name in ("convolution_projection_query", "convolution_projection_key", "convolution_projection_value"):
                proj = att.__getattr__(name)
                assert not hasattr(proj, "convolution_projection")
                if method == "avg" and name != "convolution_projection_query":
                    mod = nn.AvgPool2d(
                        kernel_size=cfg.kernel_qkv[s],
                        stride=cfg.stride_kv[s],
                        padding=cfg.padding_kv[s],
                        ceil_mode=True,
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


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

AVG_NOTES = (
    "Patched HF (transformers' CvtSelfAttention builds no conv sub-module for methods other than "
    "'dw_bn' and then crashes with AttributeError at forward). Semantics follow microsoft/CvT "
    "lib/models/cls_cvt.py Attention._build_projection: stage 0 'dw_bn' (unchanged); stage 1 'avg': "
    "query = plain flatten b c h w -> b (h w) c (the original and HF both build the QUERY with "
    "method 'linear' when method == 'avg', so the query is never pooled and padding_q/stride_q are "
    "unused); key and value = nn.AvgPool2d(kernel_size=kernel_qkv, stride=stride_kv, "
    "padding=padding_kv, ceil_mode=True, count_include_pad=True) then flatten. PyTorch avg-pool "
    "semantics per axis for output index o (input length n, kernel k, stride s, pad p): output "
    "length = ceil((n + 2p - k)/s) + 1, minus 1 if (out-1)*s >= n + p; start = o*s - p; "
    "end = min(start + k, n + p); divisor factor = end - start (counts zero padding but not the "
    "ceil-mode overhang beyond n + p); then sum only real pixels in [max(start,0), min(end,n)). "
    "Divisor = product of the two axis factors. Stage 1 grid here is 4x5 -> K/V grid 3x3 (H = 4 is even, so ceil_mode "
    "adds a 3rd row whose window holds 1 real row with divisor factor 2; floor mode would give 2 rows). stage 2 'linear': q = k = v = the "
    "LayerNorm-ed tokens (CLS included; identity projection, no conv, no BN). Note: the original "
    "code itself raises UnboundLocalError for a stage whose q, k and v projections are all 'linear' "
    "(Attention.forward only calls forward_conv when some projection is not None); the identity is "
    "the evident intent and is what forward_conv computes. No parameters exist for avg/linear "
    "projections, so model.safetensors has no convolution_projection keys for stages 1 and 2. "
    "Everything else (exact-erf GELU, not the original's QuickGELU) is HF. Patch: assign "
    "`convolution_projection = nn.AvgPool2d(...)` / `nn.Identity()` to every affected "
    "CvtSelfAttentionProjection (its forward then applies it, then the flatten)."
)

CLS_EVERY_NOTES = (
    "Patched HF: CvtStage creates cls_token with shape [1,1,embed_dim[-1]] for every stage, so "
    "stages 0 and 1 (width 8 and 16) fail with a size mismatch at the concat. The original code "
    "gives each stage a CLS parameter of its own width. Patch: replace stages[s].cls_token with "
    "nn.Parameter of shape [1,1,embed_dim[s]] before randomising. State-dict keys stay "
    "cvt.encoder.stages.{s}.cls_token (shapes [1,1,8], [1,1,16], [1,1,24]). Each stage prepends its "
    "CLS at token 0, all layers of the stage see it (attention splits it off before the conv "
    "projections and re-prepends it to q, k, v), and it is dropped at the end of the stage; only the "
    "last stage's CLS reaches the head (cls_token_value). hidden_states are the NCHW maps without CLS. "
    "Everything else (exact-erf GELU, not the original's QuickGELU) is HF."
)

NO_CLS_NOTES = (
    "Unpatched HF, but the model must be called with output_hidden_states=True: with "
    "cls_token[-1] == false, CvtForImageClassification reads outputs[1] which is the hidden_states "
    "tuple only when it is requested (otherwise IndexError). Head = layernorm over every token of "
    "last_hidden_state (flattened b (h w) c), mean over tokens, then the classifier - same as the "
    "original code. No cls_token_value in expected.safetensors."
)

SHALLOW_NOTES = (
    "Patched HF: CvtStage takes drop_path_rates[stage_index] from a linspace of length depth[s], so "
    "depth [1,1,1] raises IndexError at construction. Built with depth [1,2,3] and "
    "drop_path_rate [0,0,0], then each stage's `layers` truncated to its first layer, and "
    "config.depth set to [1,1,1] before save_pretrained (so config.json says depth [1,1,1] and "
    "drop_path_rate [0.0,0.0,0.0]). HF cannot load this config.json itself; a port should accept any "
    "depth >= 1. model.safetensors holds exactly the truncated model's keys (layers.0 only in every "
    "stage). Everything else is unpatched HF."
)

CASES = [
    dict(
        name="tiny",
        seed=101,
        config=dict(TINY),
        input=(3, 3, 64, 64),
        labels="int",
        description="HF test-suite tiny config (depth [1,2,10], CLS in stage 2), 2 labels, int64 labels -> cross-entropy.",
    ),
    dict(
        name="nonsquare_batch",
        seed=102,
        config=dict(SMALL),
        input=(2, 3, 72, 100),
        description="Small config, 10 labels, non-square 72x100 input, batch 2, no labels.",
    ),
    dict(
        name="fp16_weights",
        seed=103,
        config=dict(SMALL),
        input=(2, 3, 64, 64),
        weight_dtype=torch.float16,
        description="Small config, weights stored as F16 in model.safetensors; expected outputs computed in "
        "float32 with the F16-rounded weights cast back to float32.",
    ),
    dict(
        name="bf16_weights",
        seed=104,
        config=dict(SMALL),
        input=(2, 3, 64, 64),
        weight_dtype=torch.bfloat16,
        description="Small config, weights stored as BF16 in model.safetensors; expected outputs computed in "
        "float32 with the BF16-rounded weights cast back to float32.",
    ),
    dict(
        name="regression",
        seed=105,
        config=dict(MINI, num_labels=1),
        input=(3, 3, 32, 32),
        labels="regression",
        description="num_labels 1, float labels [B] -> MSE (problem_type inferred 'regression'; HF computes "
        "MSELoss(logits.squeeze(), labels.squeeze())).",
    ),
    dict(
        name="multilabel",
        seed=106,
        config=dict(MINI, num_labels=5),
        input=(3, 3, 32, 32),
        labels="multilabel",
        description="num_labels 5, float 0/1 labels [B,5] -> BCEWithLogits (mean over all elements; "
        "problem_type inferred 'multi_label_classification').",
    ),
    dict(
        name="no_head",
        seed=107,
        config=dict(MINI, num_labels=0),
        input=(2, 3, 32, 32),
        description="num_labels 0: classifier is nn.Identity, so logits are the pooled layernorm(CLS) features "
        "[B, embed_dim[-1]] = [B, 24]; model.safetensors has no classifier.* keys (only layernorm.*).",
    ),
    dict(
        name="kv_stride1_qpad",
        seed=108,
        config=dict(
            MINI,
            num_labels=10,
            kernel_qkv=[3, 3, 3],
            padding_kv=[0, 1, 1],
            stride_kv=[1, 2, 2],
            stride_q=[1, 1, 1],
            patch_sizes=[5, 3, 3],
            patch_stride=[3, 2, 2],
            patch_padding=[1, 0, 1],
            mlp_ratio=[2.0, 3.0, 4.0],
            qkv_bias=[True, False, True],
        ),
        input=(2, 3, 61, 47),
        description="Other geometry: stage-0 K/V stride 1 with padding 0 (Hkv = H-2), patch conv 5/3/3 stride "
        "3/2/2 padding 1/0/1, mlp_ratio 2/3/4, no Q/K/V bias in stage 1, odd non-square 61x47 input.",
    ),
    dict(
        name="proj_avg_linear",
        seed=109,
        config=dict(MINI, num_labels=10, qkv_projection_method=["dw_bn", "avg", "linear"]),
        input=(2, 3, 32, 40),
        patch="avg_linear",
        notes=AVG_NOTES,
        description="Beyond HF: qkv_projection_method ['dw_bn','avg','linear'] with the original microsoft/CvT "
        "semantics (HF crashes).",
    ),
    dict(
        name="cls_every_stage",
        seed=110,
        config=dict(MINI, num_labels=10, cls_token=[True, True, True]),
        input=(2, 3, 40, 48),
        patch="cls_every_stage",
        notes=CLS_EVERY_NOTES,
        description="Beyond HF: a CLS token in every stage, each of that stage's width (HF crashes).",
    ),
    dict(
        name="no_cls_last",
        seed=111,
        config=dict(MINI, num_labels=10, cls_token=[False, False, False]),
        input=(2, 3, 40, 48),
        notes=NO_CLS_NOTES,
        description="No CLS token anywhere: head = mean over layernorm-ed last-stage tokens.",
    ),
    dict(
        name="shallow_depth",
        seed=112,
        config=dict(MINI, num_labels=10, depth=[1, 2, 3], drop_path_rate=[0.0, 0.0, 0.0]),
        final_depth=[1, 1, 1],
        input=(2, 3, 40, 48),
        patch="shallow",
        notes=SHALLOW_NOTES,
        description="Beyond HF: depth [1,1,1] (HF raises IndexError at construction, drop-path index bug).",
    ),
    dict(
        name="loss_int_ce_batch1",
        seed=113,
        # TINY geometry with MINI widths/depths: the real tiny config (depth [1,2,10]) is 1.5 MB of
        # weights and its depth is already covered by the `tiny` case.
        config=dict(TINY, embed_dim=MINI["embed_dim"], depth=MINI["depth"], num_labels=3),
        input=(1, 3, 48, 48),
        labels="int",
        description="Tiny-config geometry (patch 7/3/3, CLS in stage 2) with widths [8,16,24] and depth "
        "[1,2,3], 3 labels, batch 1, int64 label -> cross-entropy.",
    ),
]


# --------------------------------------------------------------------------------------------
# Build / run / save
# --------------------------------------------------------------------------------------------


def build_model(case, config: CvtConfig | None = None) -> CvtForImageClassification:
    """Construct the (patched) float32 model for a case, without randomising."""
    if config is None:
        config = make_config(**case["config"])
    model = CvtForImageClassification(config)
    patch = case.get("patch")
    if patch == "avg_linear":
        patch_projection_methods(model)
    elif patch == "cls_every_stage":
        patch_cls_every_stage(model)
    elif patch == "shallow":
        truncate_depth(model, case["final_depth"])
        model.config.depth = list(case["final_depth"])
    model.to(torch.float32)
    model.eval()
    return model


def make_inputs(case, num_labels: int, gen: torch.Generator):
    pixel_values = torch.randn(case["input"], generator=gen, dtype=torch.float32)
    b = case["input"][0]
    kind = case.get("labels")
    if kind is None:
        labels = None
    elif kind == "int":
        labels = torch.randint(0, num_labels, (b,), generator=gen, dtype=torch.int64)
    elif kind == "regression":
        labels = torch.randn((b,), generator=gen, dtype=torch.float32)
    elif kind == "multilabel":
        labels = torch.randint(0, 2, (b, num_labels), generator=gen, dtype=torch.int64).to(torch.float32)
        # make sure both classes occur
        labels[0, 0], labels[0, 1] = 1.0, 0.0
    else:
        raise ValueError(kind)
    return pixel_values, labels


@torch.no_grad()
def run_model(model: CvtForImageClassification, pixel_values, labels):
    """Return (expected tensor dict, problem_type inferred by HF)."""
    base = model.cvt(pixel_values, output_hidden_states=True, return_dict=True)
    out = model(pixel_values, labels=labels, output_hidden_states=True, return_dict=True)
    assert len(out.hidden_states) == len(base.hidden_states)
    for a, b in zip(out.hidden_states, base.hidden_states):
        assert torch.equal(a, b)

    def f32(t):
        return t.detach().to(torch.float32).contiguous().clone()

    exp = {"logits": f32(out.logits), "last_hidden_state": f32(base.last_hidden_state)}
    if base.cls_token_value is not None:
        exp["cls_token_value"] = f32(base.cls_token_value)
    for i, h in enumerate(base.hidden_states):
        exp[f"hidden_states.{i}"] = f32(h)
    if labels is not None:
        assert out.loss is not None and out.loss.dim() == 0
        exp["loss"] = f32(out.loss).reshape(1)
    return exp, model.config.problem_type


def save_model(model: CvtForImageClassification, folder: Path, weight_dtype, final_depth=None) -> None:
    if weight_dtype is None:
        model.save_pretrained(folder)
    else:
        low = copy.deepcopy(model).to(weight_dtype)
        low.save_pretrained(folder)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if final_depth is not None:
        cfg["depth"] = list(final_depth)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tensor_summary(tensors):
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}


def generate_case(case) -> dict:
    name = case["name"]
    folder = OUT_ROOT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    model = build_model(case)
    randomize_(model, gen)
    wdt = case.get("weight_dtype")
    if wdt is not None:
        round_weights_(model, wdt)

    num_labels = model.config.num_labels
    pixel_values, labels = make_inputs(case, num_labels, gen)

    # Save before the forward: the loss forward writes the inferred problem_type into the config,
    # and the fixture config.json must keep problem_type null so ports have to infer it too.
    assert model.config.problem_type is None
    save_model(model, folder, wdt, case.get("final_depth"))

    expected, problem_type = run_model(model, pixel_values, labels)

    inputs = {"pixel_values": pixel_values.contiguous()}
    if labels is not None:
        inputs["labels"] = labels.contiguous()
    save_file(inputs, str(folder / "input.safetensors"))
    save_file(expected, str(folder / "expected.safetensors"))

    notes = case.get("notes", "Unpatched Hugging Face transformers computation.")
    if wdt is not None:
        notes += (
            f" model.safetensors stores every floating-point tensor as {str(wdt).replace('torch.', '')} "
            "(copy of the model cast with .to(dtype), then save_pretrained; num_batches_tracked stays I64); "
            "config.json therefore has dtype "
            f"'{str(wdt).replace('torch.', '')}'. Expected outputs: float32 forward with those rounded "
            "weights upcast to float32 (load the weights, cast to F32, compute in F32)."
        )
    notes += (
        " Weights are seeded random (conv/linear W ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.1), "
        "LN/BN weight ~ 1 + N(0, 0.1), BN running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5), "
        "cls_token ~ N(0, 0.5)), not HF's init. Model in eval mode, float32, torch.no_grad(), "
        "output_hidden_states=True; all LayerNorm eps 1e-5, BN eps 1e-5, exact-erf GELU. "
        "config.json has no problem_type key (saved before the loss forward; transformers v5 omits "
        "null/default fields, and omits id2label entirely when num_labels is the default 2)."
    )
    case_json = {
        "description": case["description"],
        "transformers": VERSIONS["transformers"],
        "torch": VERSIONS["torch"],
        "safetensors": VERSIONS["safetensors"],
        "numpy": VERSIONS["numpy"],
        "problem_type": problem_type,
        "notes": notes,
        "patched": case.get("patch") is not None,
        "seed": case["seed"],
        "weights_dtype": str(wdt).replace("torch.", "") if wdt is not None else "float32",
        "inputs": tensor_summary(inputs),
        "expected": tensor_summary(expected),
    }
    (folder / "case.json").write_text(json.dumps(case_json, indent=2) + "\n")
    return {"expected": expected, "inputs": inputs, "model": model}


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def verify_case(case, result) -> list[str]:
    """Reload what was written and check it reproduces expected.safetensors bit-exactly."""
    name = case["name"]
    folder = OUT_ROOT / name
    msgs = []
    exp = load_file(str(folder / "expected.safetensors"))
    inp = load_file(str(folder / "input.safetensors"))
    for k, v in list(exp.items()) + list(inp.items()):
        assert v.is_contiguous()
    for k, v in exp.items():
        assert v.dtype == torch.float32, (k, v.dtype)
        assert torch.isfinite(v).all(), k

    sd = load_file(str(folder / "model.safetensors"))
    wdt = case.get("weight_dtype") or torch.float32
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64, (k, v.dtype)
        else:
            assert v.dtype == wdt, (k, v.dtype)

    # 1. rebuild the (patched) architecture from the saved config.json and load strictly
    cfg_dict = json.loads((folder / "config.json").read_text())
    if case.get("patch") == "shallow":
        assert cfg_dict["depth"] == case["final_depth"]
        cfg = CvtConfig.from_pretrained(folder)
        cfg.depth = list(case["config"]["depth"])  # constructible depth; build_model truncates
        model = build_model(case, cfg)
    else:
        model = build_model(case, CvtConfig.from_pretrained(folder))
    missing, unexpected = model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    assert set(sd) == set(model.state_dict()), name
    if case.get("patch") == "shallow":
        assert not any(".layers.1." in k for k in sd), "truncated model must only have layers.0"
    if case.get("patch") == "avg_linear":
        assert not any(k.startswith(("cvt.encoder.stages.1.", "cvt.encoder.stages.2.")) and "convolution_projection" in k for k in sd)
        assert any(k.startswith("cvt.encoder.stages.0.") and "convolution_projection" in k for k in sd)
        shapes = {}
        att1 = model.cvt.encoder.stages[1].layers[0].attention.attention
        hooks = [
            att1.convolution_projection_query.register_forward_hook(lambda m, i, o: shapes.__setitem__("q", (tuple(i[0].shape), tuple(o.shape)))),
            att1.convolution_projection_key.register_forward_hook(lambda m, i, o: shapes.__setitem__("k", (tuple(i[0].shape), tuple(o.shape)))),
        ]
        model.cvt(inp["pixel_values"])
        for h in hooks:
            h.remove()
        b = inp["pixel_values"].shape[0]
        assert shapes["q"] == ((b, 16, 4, 5), (b, 20, 16)), shapes
        assert shapes["k"] == ((b, 16, 4, 5), (b, 9, 16)), shapes  # ceil_mode: 3x3 (floor would be 2x3)
    labels = inp.get("labels")
    got, _ = run_model(model, inp["pixel_values"], labels)
    assert set(got) == set(exp), (set(got), set(exp))
    for k in exp:
        assert torch.equal(got[k], exp[k]), (name, k, (got[k] - exp[k]).abs().max())
    msgs.append("rebuild+load_state_dict(strict): bit-identical")

    # 2. unpatched cases: plain from_pretrained must reproduce the expected outputs too
    if case.get("patch") is None:
        m2 = CvtForImageClassification.from_pretrained(folder, dtype=torch.float32)
        m2.eval()
        assert all(p.dtype == torch.float32 for p in m2.parameters())
        got2, _ = run_model(m2, inp["pixel_values"], labels)
        for k in exp:
            assert torch.equal(got2[k], exp[k]), (name, k, (got2[k] - exp[k]).abs().max())
        msgs.append("from_pretrained: bit-identical")
    else:
        # show the patch is needed: unpatched HF fails (or, for no patch, nothing to show)
        try:
            if case.get("patch") == "shallow":
                CvtForImageClassification.from_pretrained(folder, dtype=torch.float32)
                msgs.append("WARNING: unpatched HF loaded shallow config")
            else:
                m3 = CvtForImageClassification(CvtConfig.from_pretrained(folder)).eval()
                m3(inp["pixel_values"], output_hidden_states=True)
                msgs.append("WARNING: unpatched HF ran without error")
        except Exception as e:  # noqa: BLE001
            msgs.append(f"unpatched HF fails as expected: {type(e).__name__}")

    # 3. a float64 run of the same model, to report the float32 rounding noise level
    m64 = copy.deepcopy(result["model"]).to(torch.float64)
    lab64 = labels.to(torch.float64) if labels is not None and labels.is_floating_point() else labels
    out64 = m64(inp["pixel_values"].to(torch.float64), labels=lab64, output_hidden_states=True)
    d = (out64.logits - exp["logits"].to(torch.float64)).abs().max().item()
    msgs.append(f"max|logits f32 - f64| = {d:.2e}")
    return msgs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    rows = []
    manifest_cases = []
    for case in CASES:
        result = generate_case(case)
        msgs = verify_case(case, result)
        folder = OUT_ROOT / case["name"]
        files = sorted(p.name for p in folder.iterdir())
        size = sum((folder / f).stat().st_size for f in files)
        exp = result["expected"]
        rows.append((case["name"], files, size, exp["logits"].abs().max().item(), msgs))
        manifest_cases.append(
            {
                "name": case["name"],
                "description": case["description"],
                "patched": case.get("patch") is not None,
                "input": tensor_summary(result["inputs"]),
                "expected": tensor_summary(exp),
                "files": {f: {"bytes": (folder / f).stat().st_size, "sha256": sha256(folder / f)} for f in files},
            }
        )

    manifest = {
        "generator": "Scripts/make_fixtures.py",
        "versions": VERSIONS,
        "cases": manifest_cases,
    }
    (OUT_ROOT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

    total = sum(p.stat().st_size for p in OUT_ROOT.rglob("*") if p.is_file())
    print(f"\nversions: {VERSIONS}")
    print(f"{'case':<22} {'files':>5} {'bytes':>9} {'max|logits|':>12}  checks")
    for name, files, size, mx, msgs in rows:
        print(f"{name:<22} {len(files):>5} {size:>9} {mx:>12.4f}  {'; '.join(msgs)}")
    print(f"{'TOTAL (incl. MANIFEST)':<22} {'':>5} {total:>9}  ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
