#!/usr/bin/env bash
# README's worked example (issue 13), prepared for a GPU session: under 8 minutes on one H100/H200.
#   bash benchmarks/gpu_worked_example.sh                 # writes runs/worked/ and figures/worked_*
# The bundled ResNet-18 declared with CT's CIFAR-10 normalization (benchmarks/worked_example.py), the 20
# bundled CIFAR-10 images, the paper's beta grid, seed 42: the reference protocol at 8/255 (normalized
# units) and the valid protocol at 8/255, 2/255 and 1/255 (where its robust accuracy is not 0).
# Tried on the CPU with DEVICE=cpu BETAS=0.9 ATTACKS=apgd-ce OUT=/tmp/we FIG=/tmp/we/fig.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
BETAS=${BETAS:-0.70:0.99:0.01}
ATTACKS=${ATTACKS:-standard}
OUT=${OUT:-runs/worked}
FIG=${FIG:-figures}
COMMON=(--model benchmarks/worked_example.py:declared --dataset cifar10 --data bundled --n-examples 20
        --subset first --betas "$BETAS" --attacks "$ATTACKS" --seeds 42 --device "$DEVICE" --quiet)
start=$(date +%s)
ctrobust sweep "${COMMON[@]}" --protocol reference --eps 8/255 --out "$OUT/reference_8_255"
for e in 8 2 1; do
  ctrobust sweep "${COMMON[@]}" --protocol valid --eps "$e/255" --out "$OUT/valid_${e}_255"
done
mkdir -p "$FIG"
ctrobust plot "$OUT/reference_8_255" "$OUT/valid_8_255" --out "$FIG" --name worked_8_255
ctrobust plot "$OUT/valid_2_255" "$OUT/valid_1_255" --out "$FIG" --name worked_valid_small_eps
ctrobust report "$OUT/reference_8_255" "$OUT/valid_8_255" "$OUT/valid_2_255" "$OUT/valid_1_255" \
  --out "$FIG/worked_example_report.md"
{
  echo "device: $( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "$DEVICE") | head -1)"
  echo "wall seconds: $(( $(date +%s) - start ))"
} > "$FIG/worked_example_run.txt"
cat "$FIG/worked_example_run.txt"
