#!/usr/bin/env bash
# Creates the TensorFlow reference environment used by Scripts/make_tf_fixtures.py to write the
# tf_model.h5 fixtures (Tests/Fixtures/tf/). TF support (TFCvtModel, TFCvtForImageClassification,
# the PyTorch<->TF weight converter) was removed in transformers 5, so this venv pins the last
# transformers 4.x release. Not used by CI: the fixtures are committed.
# Checked working together (CPython 3.11.7, Debian 12, 2026-11): torch 2.13.0+cpu (local wheel),
# tensorflow-cpu 2.20.0, tf-keras 2.20.1, transformers 4.57.6, safetensors 0.8.0, h5py 3.16.0
# (bundles HDF5 2.0.0), numpy 2.4.6. About 3 GB; takes ~3 minutes.
# Usage: Scripts/setup-tf-env.sh [VENV_DIR]   (default: .venv-tf)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.venv-tf}"
PYTHON="${PYTHON:-python3}"          # needs CPython 3.11 for the local torch wheel
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=4.57.6          # last 4.x release; still ships modeling_tf_cvt.py
TENSORFLOW_VERSION=2.20.0            # tensorflow-cpu; TF >= 2.16 ships Keras 3, so transformers 4.x needs tf-keras
TF_KERAS_VERSION=2.20.1
"$PYTHON" -m venv "$venv"
# Keep the ~3 GB venv out of git whatever the repository's .gitignore says (Python >= 3.13 does this itself).
echo '*' > "$venv/.gitignore"
"$venv/bin/pip" install -q --upgrade pip
# torch's PyPI wheel drags in several GB of CUDA libraries; a local CPU wheel of the same
# version (this workplace keeps one in /opt/wheels) is used when present, else PyPI's wheel.
wheel=$(ls /opt/wheels/torch-${TORCH_VERSION}+cpu-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  "$venv/bin/pip" install -q "$wheel"
else
  "$venv/bin/pip" install -q "torch==${TORCH_VERSION}"
fi
"$venv/bin/pip" install -q "tensorflow-cpu==${TENSORFLOW_VERSION}" "tf-keras==${TF_KERAS_VERSION}" \
  "transformers==${TRANSFORMERS_VERSION}" "safetensors==0.8.0" "h5py==3.16.0" "numpy==2.4.6"
"$venv/bin/python" - <<'PY'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import h5py, numpy, safetensors, tensorflow as tf, tf_keras, torch, transformers
from transformers import TFCvtForImageClassification  # fails if this transformers has no TF CvT
print("torch", torch.__version__, "| tensorflow", tf.__version__, "| tf-keras", tf_keras.__version__,
      "| transformers", transformers.__version__, "| h5py", h5py.__version__,
      "| numpy", numpy.__version__, "| safetensors", safetensors.__version__)
PY
