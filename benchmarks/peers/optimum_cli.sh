#!/usr/bin/env bash
# optimum-cli's own post-training INT8 of the quickstart model, for the side-by-side run in
# benchmarks/ptq-peers.yaml: its ONNX export, then `onnxruntime quantize --avx512_vnni`
# (dynamic, QOperator, u8/s8, per-tensor: optimum's preset for this machine's CPU).
# Needs runs/quickstart (make run). Writes runs/peers/optimum-{export,avx512_vnni}.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
test -d runs/quickstart/01-finetune || { echo "runs/quickstart/01-finetune not found: run 'make run' first" >&2; exit 2; }
rm -rf runs/peers/optimum-export runs/peers/optimum-avx512_vnni
HF_HUB_OFFLINE=1 "$BIN/optimum-cli" export onnx --model runs/quickstart/01-finetune --task text-classification \
    runs/peers/optimum-export
"$BIN/optimum-cli" onnxruntime quantize --onnx_model runs/peers/optimum-export --avx512_vnni \
    -o runs/peers/optimum-avx512_vnni
