#!/usr/bin/env bash
# Every study of examples/studies/ on the built-in setting, in the order that lets later ones reuse the models and
# generations of earlier ones (one shared runs/studies/cache and runs/studies/models); then their tables and plots
# are copied to docs/studies/. The shadow-family studies first pretrain bases of other architectures: a 3-level UNet
# (unet3) and an SDXL-family base (sdxl), each skipped when complete and resumed when it was interrupted. About 4 hours
# on 2 CPU cores.
# Run: bash benchmarks/studies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
studies=(dp-sgd training generation encoders captioner captions baselines calibration captions-calibrated levers
         levers-realistic outsiders-realistic shadow-family shadow-family-sdxl shadow-family-sdxl-target)
if [ ! -f runs/studies/bases/unet3/card.json ]; then
    echo "== pretraining the other family's base ($(date -u +%H:%M:%S))" >&2
    [ -d runs/studies/digits ] || diffmia data digits runs/studies/digits
    diffmia lab pretrain runs/studies/digits runs/studies/bases/unet3 --vae-channels 32,64,128 \
        --unet-channels 32,64,128 --unet-layers 1 --text-width 96 --text-layers 2 --seed 1
fi
if [ ! -f runs/studies/bases/sdxl/card.json ]; then
    echo "== pretraining the SDXL-family base ($(date -u +%H:%M:%S))" >&2
    [ -d runs/studies/digits ] || diffmia data digits runs/studies/digits
    diffmia lab pretrain runs/studies/digits runs/studies/bases/sdxl --vae-steps 400 --unet-steps 3500 --seed 0 \
        --vae-channels 32,64,64 --unet-channels 32,64 --unet-layers 2 --text-width 64 --text-layers 3 --family sdxl
fi
for study in "${studies[@]}"; do
    echo "== $study ($(date -u +%H:%M:%S))" >&2
    diffmia study "examples/studies/$study.toml"
done
mkdir -p docs/studies
for study in "${studies[@]}"; do
    cp runs/studies/"$study"/*.md runs/studies/"$study"/*.png docs/studies/
done
cp runs/studies/bases/unet3/card.json docs/studies/shadow-family-base-card.json
cp runs/studies/bases/sdxl/card.json docs/families/sdxl-base-card.json
python benchmarks/baselines_table.py runs/studies/baselines/runs/baselines-all-four > docs/studies/baselines-by-attack.md
