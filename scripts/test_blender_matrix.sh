#!/usr/bin/env bash
# The Blender tests on every supported bpy: 4.2 LTS, 4.5 LTS and 5.0 (CPython 3.11) and
# 5.2 (CPython 3.13). One venv per version (scripts/setup_blender_venv.sh: .venv-blender for
# 5.0.1, .venv-blender-<ver> for the others), created on first use (about 400 MB each).
#
#   scripts/test_blender_matrix.sh                      # all four
#   scripts/test_blender_matrix.sh 4.2.23 5.2.4         # some
#   scripts/test_blender_matrix.sh 4.2.23 -- -k gpu     # extra pytest args after --
#   BLENDER_VERSIONS="4.2.23 5.2.4" scripts/test_blender_matrix.sh
#
# Runs every version even when one fails; prints one line per version and exits non-zero if
# any failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_BPY=5.0.1
ALL_VERSIONS="${BLENDER_VERSIONS:-4.2.23 4.5.15 5.0.1 5.2.4}"

versions=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    versions+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
[ ${#versions[@]} -gt 0 ] || read -r -a versions <<<"$ALL_VERSIONS"

cd "$ROOT"
summary=()
status=0
for v in "${versions[@]}"; do
    if [ "$v" = "$DEFAULT_BPY" ]; then venv="$ROOT/.venv-blender"; else venv="$ROOT/.venv-blender-$v"; fi
    echo "=== bpy $v ($venv)" >&2
    start=$SECONDS
    if ! BPY_VERSION="$v" VENV="$venv" "$ROOT/scripts/setup_blender_venv.sh"; then
        summary+=("bpy $v: venv setup FAILED")
        status=1
        continue
    fi
    log="$(mktemp)"
    "$venv/bin/python" -m pytest tests/blender -m "blender and not slow" -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    last="$(grep -E '(passed|failed|error|skipped)' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
    rm -f "$log"
    summary+=("bpy $v: ${last:-no result} ($((SECONDS - start)) s)")
    [ "$rc" -eq 0 ] || status=1
done
echo >&2
printf '%s\n' "${summary[@]}" >&2
exit $status
