#!/usr/bin/env bash
# Create (or refresh) the Blender test venv at .venv-blender.
#
# Blender ships its own Python; the bpy wheel mirrors it exactly: bpy 5.0.1 is built for
# CPython 3.11 only and requires numpy<2, just like the Python inside Blender 5.0.
# Idempotent: a venv that already has the right bpy is left alone (dependencies are
# re-checked, which is quick when nothing changed).
#
# Usage: scripts/setup_blender_venv.sh            # creates .venv-blender in the repo root
#        VENV=/some/path BPY_VERSION=4.5.4 scripts/setup_blender_venv.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-blender}"
BPY_VERSION="${BPY_VERSION:-5.0.1}"

find_python311() {
    for cand in "${PYTHON311:-}" python3.11 /root/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python311)" || {
        echo "error: bpy $BPY_VERSION needs CPython 3.11 and none was found." >&2
        echo "hint: install it (e.g. 'pyenv install 3.11') or set PYTHON311=/path/to/python3.11" >&2
        exit 1
    }
    echo "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi

"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "error: $VENV is not a Python 3.11 venv; remove it and re-run" >&2
    exit 1
}

have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("bpy"))' 2>/dev/null || true)"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ "$have" != "$BPY_VERSION" ]; then
    echo "installing bpy==$BPY_VERSION (about 375 MB) into $VENV"
    "${PIP[@]}" install "bpy==$BPY_VERSION" "numpy>=1.26,<2"
fi
"${PIP[@]}" install "numpy>=1.26,<2" "pyzmq>=25" "plyfile>=1.0" "pytest>=8" "pytest-timeout"
"$VENV/bin/python" -c 'import bpy, numpy; print("bpy", bpy.app.version_string, "numpy", numpy.__version__)'
