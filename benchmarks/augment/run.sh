#!/usr/bin/env bash
# distill's augment: measured on the headline teacher, CPU-sized (the recipes beside this script:
# a 4-layer student from 2,000 snippets, plain and augmented at equal steps).
# Each run's record goes to benchmarks/results/augment/RUN/ and the README's table is rebuilt.
#   bash benchmarks/headline/prepare_teacher.sh    # the teacher, cached in benchmarks/.cache/
#   bash benchmarks/augment/run.sh [VARIANT...]    # default all three, ~25 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(plain-1ep plain-3ep augment2-1ep)
for variant in "${variants[@]}"; do
    "$BIN/compress" run "benchmarks/augment/$variant.yaml" --out benchmarks/.cache/runs
    run=benchmarks/.cache/runs/augment-$variant
    out=benchmarks/results/augment/$variant
    rm -rf "$out" && mkdir -p "$out/01-distill"
    cp "$run/manifest.json" "$run/summary.md" "$out/"
    cp "$run/01-distill/stage.json" "$out/01-distill/"
    # committed records name checkout paths from the repository root, not from this machine's /
    sed -i "s#\"$PWD/#\"#g" "$out/manifest.json" "$out/01-distill/stage.json"
done
"$BIN/python" benchmarks/readme_tables.py --write benchmarks/results/augment/README.md
