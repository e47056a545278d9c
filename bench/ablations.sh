#!/usr/bin/env bash
# The DAS ablation table in one command:
#   bench/ablations.sh DATASET SPLIT [extra overrides...]
# trains configs/ablations/*.yaml on that dataset and split (one thread each, one after
# another) and writes the section "ablations-DATASET-SPLIT" of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1 split=$2; shift 2
runs=()
for config in configs/ablations/*.yaml; do
  name="abl-$(basename "$config" .yaml)-$dataset-$split"
  bench/run_configs.sh "$name" "$config" "data.dataset=$dataset" "data.split=$split" "$@"
  runs+=("runs/$name")
done
.venv/bin/python bench/runs_table.py --section "ablations-$dataset-$split" \
  --title "DAS ablations, $dataset $split" "${runs[@]}"
