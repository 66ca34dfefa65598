#!/usr/bin/env bash
# The test suite, exactly as CI runs it. Sets up .venv (and .venv-blender for the bpy tests).
#   scripts/test.sh [extra pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
"$VPY" -m pytest -m "not slow and not blender" "$@"
if [ -x "$REPO/scripts/setup_blender_venv.sh" ]; then
    "$REPO/scripts/setup_blender_venv.sh"
    "$REPO/.venv-blender/bin/python" -m pytest tests/blender -m "blender and not slow" "$@"
fi
