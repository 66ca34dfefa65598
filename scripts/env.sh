# Sourced by the other scripts: repo paths, in-repo caches, and the main venv (created on first use).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO
# Every cache stays inside the repo's ignored folders, never in ~.
export XDG_CACHE_HOME="$REPO/.cache/xdg"
export TORCH_EXTENSIONS_DIR="$REPO/.cache/torch_extensions"
export MPLCONFIGDIR="$REPO/.cache/matplotlib"
export NUMBA_CACHE_DIR="$REPO/.cache/numba"
export PIP_CACHE_DIR="$REPO/.cache/pip"
export HF_HOME="$REPO/.cache/huggingface"
export HF_HUB_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$XDG_CACHE_HOME" "$TORCH_EXTENSIONS_DIR" "$MPLCONFIGDIR" "$NUMBA_CACHE_DIR"

PY="${PORTRAITSPLAT_PYTHON:-python3}"
VENV="$REPO/.venv"
STAMP="$VENV/.installed-$(cat "$REPO/pyproject.toml" "$REPO/scripts/env.sh" | sha256sum | cut -c1-16)"
# Reference implementations for tests/test_conformance*.py (pure-Python wheels): the original
# Stability/CompVis ldm package, tencent-ailab's IP-Adapter, OpenAI CLIP's tokenizer. Installed
# without their declared dependencies (old pins; torchvision, which does not import beside our
# torch); the few they need at import time are in pyproject's test extras.
REFERENCE_PKGS=(stable-diffusion-sdkit==2.1.5 ip-adapter==0.1.0 clip-anytorch==2.6.0)
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing PortraitSplat into $VENV (first run only)" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -e "$REPO[test]" >&2
    "$VENV/bin/python" -m pip install --quiet --no-deps "${REFERENCE_PKGS[@]}" >&2
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
VPY="$VENV/bin/python"
