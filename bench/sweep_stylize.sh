#!/usr/bin/env bash
# One GPU session, every speed knob of issue 6: full-size random-weight networks, presets
# paper and fast, one run per knob (a compiled module cannot be un-compiled in-process).
#   bench/sweep_stylize.sh [OUT_FILE] [extra bench_stylize args...]
# DEVICE=cpu SIZE= bench/sweep_stylize.sh /tmp/x.txt   smoke-tests the script with the tiny models.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-bench/results/stylize_sweep.txt}"
shift $(( $# > 0 ? 1 : 0 )) || true
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE---full-size}"
run() {
    echo "=== bench_stylize.py --device $DEVICE $SIZE $* ${EXTRA[*]}" | tee -a "$OUT"
    "$PY" bench/bench_stylize.py --device "$DEVICE" $SIZE "$@" "${EXTRA[@]}" 2>&1 \
        | grep -E '^\[(paper|fast|test)\]|^device=|^models|^parameters|Error|error' | tee -a "$OUT"
}
EXTRA=("$@")
: > "$OUT"
run --dtype fp16                                   # the baseline
run --dtype bf16
run --dtype fp16 --channels-last
run --dtype fp16 --channels-last --compile default
run --dtype fp16 --channels-last --compile reduce-overhead   # + CUDA graphs
run --dtype fp16 --presets paper --option encoder=taesd      # fewer VAE passes on the paper's path
run --dtype fp16 --presets paper --no-mvdream                # what the multi-view term costs
