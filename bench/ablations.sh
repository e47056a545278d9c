#!/usr/bin/env bash
# The DAS ablation table in one command:
#   [JOBS=2] [ONLY='das*'] bench/ablations.sh DATASET SPLIT [extra overrides...]
# trains configs/ablations/*.yaml on that dataset and split (one thread each, JOBS at a
# time, default 1) and writes the section "ablations-DATASET-SPLIT" of docs/BENCHMARKS.md.
# ONLY: a glob of the configs to (re)train; the table lists every finished run folder.
# The das*.yaml configs come from configs/das.yaml (bench/make_ablation_configs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1 split=$2; shift 2
runs=()
printf '%s\n' configs/ablations/${ONLY:-*}.yaml | xargs -P "${JOBS:-1}" -I{} bash -c '
  config={} dataset=$1 split=$2; shift 2
  bench/run_configs.sh "abl-$(basename "$config" .yaml)-$dataset-$split" "$config" \
    "data.dataset=$dataset" "data.split=$split" "$@"
' _ "$dataset" "$split" "$@"
for config in configs/ablations/*.yaml; do
  run="runs/abl-$(basename "$config" .yaml)-$dataset-$split"
  if [ -f "$run/metrics.json" ]; then runs+=("$run"); else echo "no finished run: $run" >&2; fi
done
.venv/bin/python bench/runs_table.py --section "ablations-$dataset-$split" \
  --title "DAS ablations, $dataset $split" "${runs[@]}"
