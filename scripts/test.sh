#!/usr/bin/env bash
# The test suite, exactly as CI runs it. Sets up .venv (and one .venv-blender-<ver> per bpy tested).
#   scripts/test.sh [extra pytest args...]
#
# 1. the house style: ruff (lint + format), mypy (strict where configured), import-linter
#    (the layer arrows of ARCHITECTURE.md), all configured in pyproject.toml;
# 2. the default test run (not slow, not blender);
# 3. the Blender tests on the oldest and newest bpy (scripts/test_blender_matrix.sh);
# 4. the slow set (PORTRAITSPLAT_SKIP_SLOW=1 skips it, for a quick local run).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
# PlayCanvas splat-transform and the Khronos glTF validator (npm), the outside readers of
# tests/test_formats_outside.py; those tests skip where npm is absent or the install fails
if command -v npm >/dev/null && [ ! -f "$REPO/.cache/npm/node_modules/gltf-validator/package.json" ]; then
    timeout 600 npm install --silent --no-audit --no-fund --prefix "$REPO/.cache/npm" \
        @playcanvas/splat-transform@3.10.2 gltf-validator@2.0.0-dev.3.10 >&2 \
        || echo "[setup] npm could not install splat-transform / gltf-validator; their tests will skip" >&2
fi
echo "[style] ruff, mypy, import-linter" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache >/dev/null || "$VENV/bin/lint-imports" --no-cache
"$VPY" -m pytest -m "not slow and not blender" "$@"
# the oldest and the newest supported Blender (bpy 4.2 LTS on CPython 3.11, bpy 5.2 on 3.13);
# scripts/test_blender_matrix.sh with no arguments runs 4.5 and 5.0 as well
if [ -x "$REPO/scripts/test_blender_matrix.sh" ]; then
    # shellcheck disable=SC2086
    "$REPO/scripts/test_blender_matrix.sh" ${CI_BLENDER_VERSIONS:-4.2.23 5.2.4} -- "$@"
fi
if [ "${PORTRAITSPLAT_SKIP_SLOW:-0}" != "1" ]; then
    "$VPY" -m pytest -m "slow and not blender" "$@"
fi
