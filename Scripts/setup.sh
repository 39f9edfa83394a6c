#!/usr/bin/env bash
# Installs the Debian packages the Swift build links against: oneDNN (compute), libjpeg-turbo and
# libpng (image decoding), zlib, libhdf5 (TensorFlow checkpoints), libcrypto (SHA-256 of downloads), and the Fashion-MNIST data set (bundled model, evaluation). Idempotent; needs root (or sudo) the first time.
set -euo pipefail
packages=(libdnnl-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev libhdf5-dev libssl-dev dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
command -v swift >/dev/null 2>&1 || export PATH=/opt/swift/usr/bin:$PATH
