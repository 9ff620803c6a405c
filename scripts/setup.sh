#!/usr/bin/env bash
# Sets up a fresh checkout: the Fashion-MNIST package and a virtual environment at .venv.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist (the default data)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist' (or see docs/data.md)"
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The CPU build of torch first: left to the resolver, torch comes as a multi-GB CUDA build.
# ADABITS_TORCH overrides it (e.g. a CUDA build on a GPU machine).
.venv/bin/python -m pip install -q --disable-pip-version-check "${ADABITS_TORCH:-torch==2.13.0}"
# dev: pytest, ruff, mypy, brevitas and the optional extras the tests cover (onnx, tensorboard).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# ExecuTorch (`adabits export --format pte`) without its declared requirements, which pull coremltools,
# scikit-learn, pandas and hydra that nothing here imports; the `pte` extra above holds what it does import.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps executorch==1.5.1 torchao==0.18.0
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
