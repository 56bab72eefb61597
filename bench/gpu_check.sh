#!/usr/bin/env bash
# GPU check (issue #14): L18W256 GloRo training steps on every visible NVIDIA GPU, float32 and
# bfloat16, on TensorFlow (plus MirroredStrategy over all GPUs) and JAX, against the PyTorch
# reference on the same GPU; prints GloRo ÷ plain, img/s and peak GPU memory (bench/gpu_check.py).
# Without a GPU it runs a small CPU config instead (the fallback that tests it).
#
#   bash bench/gpu_check.sh [--config L18W256] [--rounds 5] [--steps 3] [--out DIR]
#
# It needs Python with numpy, absl-py, matplotlib and at least one of tensorflow / jax; it adds
#   * keras, if missing: from wheels in .whl/ when there are any (an offline machine: carry them,
#     e.g. `pip download --no-deps keras namex optree -d .whl`), else from PyPI;
#   * this checkout's gloro_keras, by PYTHONPATH (nothing is installed into the environment).
# PYTHON=... picks the interpreter (default python3); TORCH_PYTHON=... one with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('keras') is None)"; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$PY" -m pip install -q "keras>=3.3"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py ${TORCH_PYTHON:+--torch-python "$TORCH_PYTHON"} "$@"
