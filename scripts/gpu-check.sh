#!/usr/bin/env bash
# `harness bench --gpu-check` on the GPU host: Python 3.12, JAX with CUDA, no TensorFlow, no network.
# It needs only Keras and two small packages that host lacks; everything else Keras imports (numpy,
# absl-py, rich, h5py, ml-dtypes, packaging) is there already.
#
#   1. Here, with network:   scripts/gpu-check.sh fetch     -> .wheels/ (about 3 MB, git-ignored)
#   2. On the GPU host:      scripts/gpu-check.sh run OUT    -> OUT/bench/gpu-check.json and .md
#      (through the device tool: carry [".wheels"], command "scripts/gpu-check.sh run $OUT")
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(keras==3.15.1 namex optree)
case "${1:-}" in
  fetch)
    python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --no-deps -d .wheels "${WHEELS[@]}"
    ;;
  run)
    out="${2:?usage: scripts/gpu-check.sh run OUT}"
    lib="$(mktemp -d)"
    python3 -m pip install -q --no-index --no-deps --target "$lib" .wheels/*.whl
    nvidia-smi -L || true
    PYTHONPATH="$lib:$PWD" KERAS_BACKEND=jax python3 -m harness.cli bench --gpu-check --results "$out"
    ;;
  *)
    echo "usage: scripts/gpu-check.sh fetch | run OUT" >&2
    exit 2
    ;;
esac
