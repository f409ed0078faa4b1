#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment at .venv with the project installed.
# torch is installed first and pinned by build: on a machine without an NVIDIA GPU the CPU
# build torch==2.13.0 (a local wheel on our CI machines); with a GPU, pip's default CUDA build.
# Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=$TORCH_SPEC
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch"
    else
        spec="torch==2.13.0"
    fi
    echo "[setup] installing $spec"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $spec
fi

echo "[setup] installing the project (editable) with dev extras"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -c "import upstream_quant.compat as c; print('[setup] torchaudio:', c.ensure_torchaudio())"
touch "$VENV/.installed"
