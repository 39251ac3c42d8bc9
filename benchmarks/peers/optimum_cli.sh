#!/usr/bin/env bash
# optimum-cli's own post-training INT8 of a fine-tuned checkpoint, for the side-by-side runs in
# benchmarks/ptq-peers.yaml (the quickstart model) and benchmarks/ptq-peers-headline.yaml (the
# headline teacher): its ONNX export, then `onnxruntime quantize --avx512_vnni` (dynamic,
# QOperator, u8/s8, per-tensor: optimum's preset for this machine's CPU).
#   bash benchmarks/peers/optimum_cli.sh [CHECKPOINT [OUT]]
# Defaults: runs/quickstart/01-finetune (make run) and runs/peers. Writes
# OUT/optimum-export, OUT/optimum-avx512_vnni and OUT/optimum-avx512_vnni-per_channel (the same
# with --per_channel: the peer's most accurate dynamic setting).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
CHECKPOINT=${1:-runs/quickstart/01-finetune}
OUT=${2:-runs/peers}
test -d "$CHECKPOINT" || { echo "$CHECKPOINT not found: make it first (make run for the quickstart)" >&2; exit 2; }
rm -rf "$OUT/optimum-export" "$OUT/optimum-avx512_vnni" "$OUT/optimum-avx512_vnni-per_channel"
HF_HUB_OFFLINE=1 "$BIN/optimum-cli" export onnx --model "$CHECKPOINT" --task text-classification \
    "$OUT/optimum-export"
"$BIN/optimum-cli" onnxruntime quantize --onnx_model "$OUT/optimum-export" --avx512_vnni \
    -o "$OUT/optimum-avx512_vnni"
"$BIN/optimum-cli" onnxruntime quantize --onnx_model "$OUT/optimum-export" --avx512_vnni --per_channel \
    -o "$OUT/optimum-avx512_vnni-per_channel"
