#!/usr/bin/env bash
# Create ./.venv on first use and install PTQSegment into it (idempotent; a second run is quick).
# Usage: scripts/bootstrap.sh [extras]      e.g. scripts/bootstrap.sh test
# On a machine without an NVIDIA GPU it installs a CPU build of torch, not the default CUDA build
# (which pulls several GB of CUDA libraries): first a CPU wheel from pip's own find-links folders if the
# machine has one, else the PyTorch CPU index.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PTQSEG_VENV:-$root/.venv}"
extras="${1:-}"
python="${PYTHON:-python3}"
stamp="$venv/.ptqseg-installed${extras:+-$extras}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[bootstrap] creating $venv" >&2
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[bootstrap] NVIDIA GPU found: installing torch with CUDA" >&2
        "${pip[@]}" install "torch>=2.2"
    else
        echo "[bootstrap] no NVIDIA GPU: installing a CPU build of torch" >&2
        wheels="$(mktemp -d)"
        if "${pip[@]}" download --no-index --no-deps --only-binary=:all: -d "$wheels" "torch>=2.2" 2>/dev/null \
            && ls "$wheels"/torch-*+cpu-*.whl >/dev/null 2>&1; then
            "${pip[@]}" install "$wheels"/torch-*+cpu-*.whl
        elif ! "${pip[@]}" install "torch>=2.2" --index-url "${PTQSEG_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" 2>/dev/null; then
            echo "[bootstrap] the PyTorch CPU index is not reachable: installing torch from the default index" >&2
            "${pip[@]}" install "torch>=2.2"
        fi
        rm -rf "$wheels"
    fi
fi

if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "[bootstrap] installing PTQSegment${extras:+[$extras]} into $venv" >&2
    # Keep the torch just installed: an extra that pulls torchvision (timm, via nnU-Net's network classes) would
    # otherwise take the newest torchvision and, with it, a newer CUDA build of torch (several GB).
    constraints="$venv/ptqseg-constraints.txt"
    "$venv/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch'))" > "$constraints"
    "${pip[@]}" install -c "$constraints" -e "$root${extras:+[$extras]}"
    touch "$stamp"
fi
