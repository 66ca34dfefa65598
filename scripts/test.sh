#!/usr/bin/env bash
# The test suite, exactly as CI runs it. Sets up .venv (and .venv-blender for the bpy tests).
#   scripts/test.sh [extra pytest args...]
#
# 1. the house style: ruff (lint + format), mypy (strict where configured), import-linter
#    (the layer arrows of ARCHITECTURE.md), all configured in pyproject.toml;
# 2. the default test run (not slow, not blender);
# 3. the Blender tests in .venv-blender;
# 4. the slow set (PORTRAITSPLAT_SKIP_SLOW=1 skips it, for a quick local run).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
echo "[style] ruff, mypy, import-linter" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache >/dev/null || "$VENV/bin/lint-imports" --no-cache
"$VPY" -m pytest -m "not slow and not blender" "$@"
if [ -x "$REPO/scripts/setup_blender_venv.sh" ]; then
    "$REPO/scripts/setup_blender_venv.sh"
    "$REPO/.venv-blender/bin/python" -m pytest tests/blender -m "blender and not slow" "$@"
fi
if [ "${PORTRAITSPLAT_SKIP_SLOW:-0}" != "1" ]; then
    "$VPY" -m pytest -m "slow and not blender" "$@"
fi
