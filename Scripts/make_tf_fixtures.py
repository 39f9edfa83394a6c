#!/usr/bin/env python3
"""Generate the TensorFlow checkpoint fixtures in Tests/Fixtures/tf/ (tf_model.h5 + the same weights
as model.safetensors) with transformers 4.x, which still has TFCvt (removed in transformers 5).

Run from the repository root with the TF environment (Scripts/setup-tf-env.sh):

    .venv-tf/bin/python Scripts/make_tf_fixtures.py

Writes Tests/Fixtures/tf/cvt_tiny/:
  config.json, model.safetensors  CvtForImageClassification.save_pretrained (PyTorch, safetensors)
  tf_model.h5                     TFCvtForImageClassification.from_pretrained(dir, from_pt=True)
                                  .save_pretrained (Keras HDF5 weights, tf-keras)
  input.safetensors               pixel_values F32 [2,3,40,48]
  expected.safetensors            logits_pt (PyTorch forward), logits_tf (TF forward of the model
                                  re-loaded from tf_model.h5), both F32 [2,3]
  case.json                       versions, seed, max |pt - tf|, every HDF5 dataset path/shape/dtype
Tests/Fixtures/tf/cvt_tiny_base/: config.json, model.safetensors (PyTorch CvtModel, embed_dim [4,8,12])
and tf_model.h5 (TFCvtModel, no head: its weight names carry the main layer "cvt" that PyTorch's
CvtModel keys do not have), case.json.
Tests/Fixtures/tf/synthetic/: small HDF5 files written directly with h5py (NOT by TensorFlow) in
the Keras weight layout, for the loader's edge cases: float16 / float64 / big-endian datasets,
non-float and non-CvT datasets, soft and external links (dtypes.h5 + dtypes_expected.safetensors),
a rank that does not fit its key (bad_rank.h5), two datasets for one key (duplicate.h5), and no
CvT weight at all (no_weights.h5).

Weights are seeded random, not HF's near-zero init (same rule as Scripts/make_fixtures.py):
conv/linear W ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.1), LN/BN weight ~ 1 + N(0, 0.1),
BN running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5), cls_token ~ N(0, 0.5).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import h5py  # noqa: E402
import numpy  # noqa: E402
import safetensors  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    CvtConfig,
    CvtForImageClassification,
    CvtModel,
    TFCvtForImageClassification,
    TFCvtModel,
)

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "Tests" / "Fixtures" / "tf"
SEED = 4242
INPUT_SHAPE = [2, 3, 40, 48]
CONFIG = dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=3)
BASE_CONFIG = dict(embed_dim=[4, 8, 12], num_heads=[1, 2, 3], depth=[1, 2, 3])  # depth[s] > s: HF drop_path bug

VERSIONS = {
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "tensorflow": tf.__version__,
    "tf_keras": tf_keras.__version__,
    "h5py": h5py.__version__,
    "hdf5": h5py.version.hdf5_version,
    "safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "python": sys.version.split()[0],
}

torch.set_num_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)


@torch.no_grad()
def randomize_(model: nn.Module, gen: torch.Generator) -> None:
    owner = {}
    for mname, mod in model.named_modules():
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owner[f"{mname}.{pname}" if mname else pname] = mod
    for key, t in model.state_dict(keep_vars=True).items():
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
            raise RuntimeError(f"no rule for {key} ({type(mod).__name__})")
        t.copy_(val)


def h5_datasets(path: Path) -> list[dict]:
    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out.append({"path": "/" + name, "shape": list(obj.shape), "dtype": str(obj.dtype)})

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def h5_attrs(path: Path) -> dict:
    def s(v):
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, numpy.ndarray):
            return [s(x) for x in v.tolist()]
        return v

    with h5py.File(path, "r") as f:
        return {"root": {k: s(v) for k, v in f.attrs.items()}}


def tf_config(folder: Path) -> CvtConfig:
    """The folder's config plus `image_size`: transformers 4.57's TFPreTrainedModel.input_signature
    needs config.image_size (or input_size) for pixel models, and CvtConfig has neither, so a plain
    CvT config fails in TFCvt*.__init__ with "Could not infer input image shape from config". The
    value only sets the dummy-input shape used to build the Keras model; it changes no weight.
    The config.json written next to the fixtures is PyTorch's, without this key."""
    config = CvtConfig.from_pretrained(str(folder))
    config.image_size = 224
    return config


def pt_to_tf(tf_model_cls, pt_dir: Path, out_dir: Path) -> Path:
    """PyTorch folder -> TF model (from_pt=True) -> save_pretrained (tf_model.h5)."""
    tf_model = tf_model_cls.from_pretrained(str(pt_dir), config=tf_config(pt_dir), from_pt=True)
    with tempfile.TemporaryDirectory() as tmp:
        tf_model.save_pretrained(tmp)  # safe_serialization=False (the TF default): tf_model.h5
        h5 = Path(tmp) / "tf_model.h5"
        assert h5.is_file(), os.listdir(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(h5, out_dir / "tf_model.h5")
    return out_dir / "tf_model.h5"


def write_case_json(path: Path, case: dict) -> None:
    """Indented JSON, except one line per HDF5 dataset (keeps the file small and greppable)."""
    datasets = case.pop("h5_datasets")
    text = json.dumps(case, indent=2)
    lines = ",\n".join("    " + json.dumps(d) for d in datasets)
    text = text[:-2] + ',\n  "h5_datasets": [\n' + lines + "\n  ]\n}\n"
    json.loads(text)
    path.write_text(text)


def check_mapping(h5: Path, st_path: Path, base_model: bool) -> list[dict]:
    """Map every h5 dataset with the rules the Swift loader implements and compare with the
    safetensors file: same float keys, shapes and exact values. Returns the dataset list."""
    st = np_load_file(str(st_path))
    datasets = h5_datasets(h5)
    mapped = {}
    with h5py.File(h5, "r") as f:
        for d in datasets:
            key, arr = map_tf_dataset(d["path"], f[d["path"]][()], base_model=base_model)
            assert key not in mapped, key
            mapped[key] = arr
    float_keys = {k for k, v in st.items() if v.dtype.kind == "f"}
    assert set(mapped) == float_keys, set(mapped) ^ float_keys
    assert all(k.endswith("num_batches_tracked") for k in set(st) - float_keys)
    for k in float_keys:
        assert mapped[k].shape == st[k].shape, (k, mapped[k].shape, st[k].shape)
        assert numpy.array_equal(mapped[k], st[k]), k
    return datasets


def save_pt(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(folder)  # config.json + model.safetensors
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def reload_tf(tf_model_cls, folder: Path):
    """A TF model loaded from the written tf_model.h5 (not the in-memory converted one)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(folder / "config.json", Path(tmp) / "config.json")
        shutil.copyfile(folder / "tf_model.h5", Path(tmp) / "tf_model.h5")
        return tf_model_cls.from_pretrained(tmp, config=tf_config(Path(tmp)))


WEIGHTS_NOTE = (
    "Weights: conv/linear W ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.1), LN/BN weight ~ 1 + N(0, 0.1), "
    "BN running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5), cls_token ~ N(0, 0.5). The h5 has no "
    "num_batches_tracked (Keras BatchNormalization has no such variable); every other safetensors key "
    "has exactly one dataset, checked value-for-value by this script after the name/layout mapping."
)


def make_classifier_case() -> None:
    folder = OUT_ROOT / "cvt_tiny"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    tf.random.set_seed(SEED)
    model = CvtForImageClassification(CvtConfig(**CONFIG)).to(torch.float32).eval()
    randomize_(model, gen)
    pixel_values = torch.randn(INPUT_SHAPE, generator=gen, dtype=torch.float32)
    save_pt(model, folder)
    with torch.no_grad():
        logits_pt = model(pixel_values).logits.contiguous()

    h5 = pt_to_tf(TFCvtForImageClassification, folder, folder)
    tf_model = reload_tf(TFCvtForImageClassification, folder)
    logits_tf = tf_model(pixel_values.numpy(), training=False).logits.numpy()
    logits_tf = torch.from_numpy(numpy.ascontiguousarray(logits_tf, dtype=numpy.float32))
    max_diff = float((logits_pt - logits_tf).abs().max())
    assert max_diff < 1e-4, max_diff

    save_file({"pixel_values": pixel_values.contiguous()}, str(folder / "input.safetensors"))
    save_file({"logits_pt": logits_pt, "logits_tf": logits_tf}, str(folder / "expected.safetensors"))
    datasets = check_mapping(h5, folder / "model.safetensors", base_model=False)
    write_case_json(folder / "case.json", {
        "description": "Tiny CvtForImageClassification (embed_dim [8,16,24], num_heads [1,2,3], depth "
        "[1,2,3], 3 labels, other fields CvtConfig defaults) with seeded random weights, saved by "
        "PyTorch (model.safetensors) and converted with TFCvtForImageClassification.from_pretrained("
        "from_pt=True).save_pretrained (tf_model.h5, written verbatim).",
        "versions": VERSIONS,
        "seed": SEED,
        "input_shape": INPUT_SHAPE,
        "max_abs_diff_logits_pt_tf": max_diff,
        "logits_pt": logits_pt.tolist(),
        "logits_tf": logits_tf.tolist(),
        "notes": WEIGHTS_NOTE + " logits_tf come from a TF model re-loaded from tf_model.h5. "
        "TF's config needed image_size (see tf_config() in the script); config.json is PyTorch's.",
        "h5_root_attributes": h5_attrs(h5)["root"],
        "h5_datasets": datasets,
    })
    print(f"cvt_tiny: logits_pt={logits_pt.tolist()}\n          logits_tf={logits_tf.tolist()}"
          f"\n          max|diff|={max_diff:.3g}, {len(datasets)} datasets")


def make_base_case() -> None:
    """TFCvtModel (no head): its h5 names start with the main layer "cvt", which PyTorch's CvtModel
    keys do not have. An even smaller config to keep the fixture small."""
    folder = OUT_ROOT / "cvt_tiny_base"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED + 1)
    torch.manual_seed(SEED + 1)
    model = CvtModel(CvtConfig(**BASE_CONFIG), add_pooling_layer=False).to(torch.float32).eval()
    randomize_(model, gen)
    pixel_values = torch.randn([1, 3, 32, 32], generator=gen, dtype=torch.float32)
    save_pt(model, folder)
    with torch.no_grad():
        out_pt = model(pixel_values)
    h5 = pt_to_tf(TFCvtModel, folder, folder)
    out_tf = reload_tf(TFCvtModel, folder)(pixel_values.numpy(), training=False)
    max_diff = max(
        float(numpy.abs(out_pt.last_hidden_state.numpy() - out_tf.last_hidden_state.numpy()).max()),
        float(numpy.abs(out_pt.cls_token_value.numpy() - out_tf.cls_token_value.numpy()).max()),
    )
    assert max_diff < 1e-4, max_diff
    datasets = check_mapping(h5, folder / "model.safetensors", base_model=True)
    write_case_json(folder / "case.json", {
        "description": "Tiny CvtModel (embed_dim [4,8,12], num_heads [1,2,3], depth [1,2,3]) with seeded "
        "random weights, converted with TFCvtModel.from_pretrained(from_pt=True).save_pretrained.",
        "versions": VERSIONS,
        "seed": SEED + 1,
        "max_abs_diff_last_hidden_state_and_cls_pt_tf": max_diff,
        "notes": WEIGHTS_NOTE + " Compared on a seeded [1,3,32,32] input (not stored).",
        "h5_root_attributes": h5_attrs(h5)["root"],
        "h5_datasets": datasets,
    })
    print(f"cvt_tiny_base: max|diff| {max_diff:.3g}, {len(datasets)} datasets")


def make_synthetic() -> None:
    folder = OUT_ROOT / "synthetic"
    folder.mkdir(parents=True)
    scope = "tf_cvt_for_image_classification"
    enc = f"/cvt/{scope}/cvt/encoder"
    emb = f"{enc}/stages.0/embedding/convolution_embeddings"
    proj = f"{enc}/stages.0/layers.0/attention/attention/convolution_projection_query/convolution_projection"
    rng = numpy.random.default_rng(7)

    def values(shape, scale=0.25):  # small multiples of 1/4: exact in float16
        return (rng.integers(-40, 40, size=shape) * scale).astype(numpy.float64)

    # (dataset path, stored dtype, TF-layout values, PyTorch key, permutation TF -> PT)
    tensors = [
        (f"{emb}/projection/kernel:0", "<f2", values([2, 2, 3, 4]),
         "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight", (3, 2, 0, 1)),
        (f"{emb}/projection/bias:0", ">f4", values([4]),
         "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.bias", None),
        (f"{emb}/normalization/gamma:0", "<f8", values([4]) + 1,
         "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.weight", None),
        (f"{emb}/normalization/beta:0", "<f4", values([4]),
         "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.bias", None),
        (f"{proj}/convolution/kernel:0", "<f4", values([3, 3, 1, 4]),
         "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query."
         "convolution_projection.convolution.weight", (3, 2, 0, 1)),
        (f"{proj}/normalization/moving_variance:0", ">f8", numpy.abs(values([4])) + 0.5,
         "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query."
         "convolution_projection.normalization.running_var", None),
        ("/cvt/cvt.encoder.stages.2.cls_token:0", "<f4", values([1, 1, 4]), "cvt.encoder.stages.2.cls_token", None),
        (f"/classifier/{scope}/classifier/kernel:0", "<f2", values([4, 3]), "classifier.weight", (1, 0)),
        (f"/classifier/{scope}/classifier/bias:0", "<f4", values([3]), "classifier.bias", None),
        (f"/layernorm/{scope}/layernorm/gamma:0", "<f4", values([4]) + 1, "layernorm.weight", None),
        (f"/layernorm/{scope}/layernorm/beta:0", "<f4", numpy.zeros([4]), "layernorm.bias", None),
    ]
    expected = {}
    with h5py.File(folder / "dtypes.h5", "w") as f:
        f.attrs["layer_names"] = numpy.array([b"cvt", b"layernorm", b"classifier"])
        for path, dtype, arr, key, perm in tensors:
            f.create_dataset(path, data=arr.astype(dtype))
            pt = arr.astype(numpy.float32)
            if perm is not None:
                pt = pt.transpose(perm)
            expected[key] = torch.from_numpy(numpy.ascontiguousarray(pt))
        # Not CvT weights: listed in unmappedDatasets.
        f.create_dataset("/optimizer_weights/Adam/iter:0", data=numpy.int64(3))
        f.create_dataset(f"{enc}/stages.0/extra/kernel:0", data=numpy.ones([2, 2], "<f4"))
        f.create_dataset("/lonely", data=numpy.ones([2], "<f4"))
        f.create_dataset("/cvt/names:0", data=numpy.array([b"a", b"b"]))
        # Links are not followed.
        f["/cvt/alias"] = h5py.SoftLink("/classifier")
        f["/elsewhere"] = h5py.ExternalLink("missing_other_file.h5", "/classifier")
    save_file(expected, str(folder / "dtypes_expected.safetensors"))

    with h5py.File(folder / "bad_rank.h5", "w") as f:  # a Conv1D-like rank-3 classifier kernel
        f.create_dataset(f"/classifier/{scope}/classifier/kernel:0", data=numpy.ones([1, 4, 3], "<f4"))
        f.create_dataset(f"/classifier/{scope}/classifier/bias:0", data=numpy.ones([3], "<f4"))
    with h5py.File(folder / "duplicate.h5", "w") as f:  # two model scopes, one key
        f.create_dataset(f"/classifier/{scope}/classifier/bias:0", data=numpy.ones([3], "<f4"))
        f.create_dataset("/classifier/other_model/classifier/bias:0", data=numpy.ones([3], "<f4"))
    with h5py.File(folder / "no_weights.h5", "w") as f:  # Keras 3 style layout
        f.create_dataset("/layers/dense/vars/0", data=numpy.ones([4, 3], "<f4"))
    (folder / "README.md").write_text(
        "Synthetic HDF5 files written with h5py by Scripts/make_tf_fixtures.py (not by TensorFlow), in\n"
        "the Keras HDF5 weight layout, for TFCheckpoint's edge cases. `dtypes_expected.safetensors` holds\n"
        "the PyTorch-layout float32 values the mapped keys of `dtypes.h5` must read as.\n"
    )


def main() -> None:
    if OUT_ROOT.exists():
        shutil.rmtree(OUT_ROOT)
    make_classifier_case()
    make_base_case()
    make_synthetic()
    for d in sorted(OUT_ROOT.iterdir()):
        size = sum(p.stat().st_size for p in d.iterdir())
        print(f"{d.name}: {size} bytes ({', '.join(f'{p.name} {p.stat().st_size}' for p in sorted(d.iterdir()))})")
    print(json.dumps(VERSIONS))


def map_tf_dataset(path: str, arr: numpy.ndarray, base_model: bool):
    """Python mirror of the Swift mapping: h5 dataset path -> (PyTorch key, array in PT layout)."""
    parts = [p for p in path.split("/") if p]
    weight = parts[1:]  # drop the Keras top-level layer group; the rest is the variable name
    name = "/".join(weight)
    if name.endswith(":0"):
        name = name[:-2]
    comps = name.split("/")
    if len(comps) > 1:
        comps = comps[1:]  # the model's own name scope (e.g. tf_cvt_for_image_classification)
    leaf = comps[-1]
    if leaf == "kernel" and arr.ndim == 4:
        arr = arr.transpose(3, 2, 0, 1)
    elif leaf == "kernel":
        arr = arr.T
    comps[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                 "moving_variance": "running_var"}.get(leaf, leaf)
    key = ".".join(comps)
    if base_model and key.startswith("cvt."):
        key = key[len("cvt."):]
    return key, numpy.ascontiguousarray(arr)


if __name__ == "__main__":
    main()
