#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment at .venv with the project installed.
# torch is installed first and pinned by build: on a machine without an NVIDIA GPU the CPU
# build torch==2.13.0 (a local wheel on our CI machines); with a GPU, pip's default CUDA build.
# Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}

# TTS engines and sox for the synthetic corpus (bench data synth). Skipped when present, or
# with BENCH_SKIP_APT=1 on machines where a user cannot use apt (then install them yourself).
APT_PACKAGES="flite festival festvox-kallpc16k festvox-us-slt-hts espeak-ng sox"
missing=$(dpkg-query -W -f='${Status}\n' $APT_PACKAGES 2>&1 | grep -vc "install ok installed" || true)
if [ "${BENCH_SKIP_APT:-0}" != 1 ] && [ "$missing" != 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
        echo "[setup] installing TTS engines: $APT_PACKAGES"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
    else
        echo "[setup] warning: no apt-get; install $APT_PACKAGES yourself for 'bench data synth'" >&2
    fi
fi

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
