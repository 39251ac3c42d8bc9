#!/usr/bin/env bash
# distill's augment: measured on the headline teacher, CPU-sized (the three recipes beside this
# script: a 4-layer student from 2,000 snippets, plain for 1 and 3 epochs, and augmented).
# Each run's record goes to benchmarks/results/augment/RUN/ and the README's table is rebuilt.
#   bash benchmarks/headline/prepare_teacher.sh    # the teacher, cached in benchmarks/.cache/
#   bash benchmarks/augment/run.sh                 # ~40 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
for variant in plain-1ep plain-3ep augment2-1ep; do
    "$BIN/compress" run "benchmarks/augment/$variant.yaml" --out benchmarks/.cache/runs
    run=benchmarks/.cache/runs/augment-$variant
    out=benchmarks/results/augment/$variant
    rm -rf "$out" && mkdir -p "$out/01-distill"
    cp "$run/manifest.json" "$run/summary.md" "$out/"
    cp "$run/01-distill/stage.json" "$out/01-distill/"
done
"$BIN/python" benchmarks/readme_tables.py --write benchmarks/results/augment/README.md
