#!/usr/bin/env bash
# Create (or refresh) a Blender test venv: bpy from PyPI plus what the add-on and tests need.
#
# Blender ships its own Python; the bpy wheel mirrors it exactly: bpy 4.2-5.0 are built for
# CPython 3.11 only (and need numpy<2, like the Python inside those Blenders); bpy 5.1+ are
# built for CPython 3.13. The interpreter is picked from BPY_VERSION unless PYTHON is given.
# Idempotent: a venv that already has the right bpy is left alone (dependencies are
# re-checked, which is quick when nothing changed).
#
# Usage: scripts/setup_blender_venv.sh                       # bpy 5.0.1 in .venv-blender
#        BPY_VERSION=4.2.23 scripts/setup_blender_venv.sh    # bpy 4.2.23 in .venv-blender-4.2.23
#        BPY_VERSION=5.2.4 PYTHON=/path/to/python3.13 VENV=/some/path scripts/setup_blender_venv.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_BPY=5.0.1
BPY_VERSION="${BPY_VERSION:-$DEFAULT_BPY}"
if [ "$BPY_VERSION" = "$DEFAULT_BPY" ]; then
    VENV="${VENV:-$ROOT/.venv-blender}"
else
    VENV="${VENV:-$ROOT/.venv-blender-$BPY_VERSION}"
fi

# The CPython minor version each bpy release is built for.
case "$BPY_VERSION" in
    4.* | 5.0.*) PYVER=3.11 ;;
    *) PYVER=3.13 ;;
esac
if [ "$PYVER" = 3.11 ]; then
    NUMPY_SPEC="numpy>=1.26,<2"
else
    NUMPY_SPEC="numpy>=1.26"
fi

is_pyver() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" 2>/dev/null; }

find_python() {
    # PYTHON311 is the older name of this knob, kept for 3.11 venvs
    local legacy=""
    [ "$PYVER" = 3.11 ] && legacy="${PYTHON311:-}"
    for cand in "${PYTHON:-}" "$legacy" "python$PYVER" /root/.pyenv/versions/"$PYVER"*/bin/python"$PYVER" \
        "$HOME"/.pyenv/versions/"$PYVER"*/bin/python"$PYVER" /usr/bin/python"$PYVER"; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 && is_pyver "$cand"; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)" || {
        echo "error: bpy $BPY_VERSION needs CPython $PYVER and none was found." >&2
        echo "hint: install it (e.g. 'pyenv install $PYVER') or set PYTHON=/path/to/python$PYVER" >&2
        exit 1
    }
    echo "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi

is_pyver "$VENV/bin/python" || {
    echo "error: $VENV is not a Python $PYVER venv (bpy $BPY_VERSION needs $PYVER); remove it and re-run" >&2
    exit 1
}

have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("bpy"))' 2>/dev/null || true)"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ "$have" != "$BPY_VERSION" ]; then
    echo "installing bpy==$BPY_VERSION (about 400 MB) into $VENV"
    "${PIP[@]}" install "bpy==$BPY_VERSION" "$NUMPY_SPEC"
fi
"${PIP[@]}" install "$NUMPY_SPEC" "pyzmq>=25" "plyfile>=1.0" "pytest>=8" "pytest-timeout"
"$VENV/bin/python" -c 'import bpy, numpy; print("bpy", bpy.app.version_string, "numpy", numpy.__version__)'
