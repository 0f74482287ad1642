#!/usr/bin/env bash
# Every study of examples/studies/ on the built-in setting, in the order that lets later ones reuse the models and
# generations of earlier ones (one shared runs/studies/cache and runs/studies/models); then their tables and plots
# are copied to docs/studies/. About 80 minutes on 2 CPU cores. Run: bash benchmarks/studies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for study in dp-sgd training generation captioner baselines; do
    echo "== $study ($(date -u +%H:%M:%S))" >&2
    diffmia study "examples/studies/$study.toml"
done
mkdir -p docs/studies
for study in dp-sgd training generation captioner baselines; do
    cp runs/studies/"$study"/*.md runs/studies/"$study"/*.png docs/studies/
done
python benchmarks/baselines_table.py runs/studies/baselines/runs/baselines-all-four > docs/studies/baselines-by-attack.md
