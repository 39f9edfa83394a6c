#!/usr/bin/env bash
# Creates the Python reference environment (transformers + torch + onnxruntime; accelerate for
# transformers' Trainer) used to generate
# parity fixtures and to run peer benchmarks. Not used by CI: the fixtures are committed.
# Usage: Scripts/setup-reference-env.sh [VENV_DIR]   (default: .venv-reference)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.venv-reference}"
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.23.0
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# torch's PyPI wheel drags in several GB of CUDA libraries; a local CPU wheel of the same
# version (this workplace keeps one in /opt/wheels) is used when present.
wheel=$(ls /opt/wheels/torch-${TORCH_VERSION}+cpu-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  "$venv/bin/pip" install -q "$wheel"
else
  "$venv/bin/pip" install -q "torch==${TORCH_VERSION}"
fi
"$venv/bin/pip" install -q "transformers==${TRANSFORMERS_VERSION}" "safetensors==0.8.0" \
  "pillow==13.0.0" "numpy<3" "onnx==1.23.2" "onnxruntime==1.31.1" "onnxscript" \
  "accelerate==1.15.0"
"$venv/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
