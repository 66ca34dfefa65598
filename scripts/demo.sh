#!/usr/bin/env bash
# Demo: the example photo in, a Gaussian head PLY plus turntable PNGs out (offline, CPU).
#   scripts/demo.sh [PHOTO] [OUT_DIR] [extra generate args...]
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PHOTO="${1:-$REPO/examples/astronaut.jpg}"
OUT="${2:-$REPO/out/demo}"
shift $(( $# > 2 ? 2 : $# )) || true
exec "$VPY" -m backend generate "$PHOTO" --pipeline photo --out "$OUT" "$@"
