#!/usr/bin/env bash
# The DAS ablation table in one command:
#   [JOBS=2] [ONLY='das*'] [SEEDS='2020 1 2'] [RESUME=1] bench/ablations.sh DATASET SPLIT [overrides...]
# trains configs/ablations/*.yaml on that dataset and split (one thread each, JOBS at a
# time, default 1) and writes the section "ablations-DATASET-SPLIT" in the file of
# docs/research/ that holds it (DOC=FILE names the file, and must for a new section).
# ONLY: a glob of the configs to (re)train; the table lists every finished run folder.
# SEEDS: train each config under each of these seeds and write mean ± standard deviation
# over seeds instead (bench/seeds_table.py, section "ablations-DATASET-SPLIT-seeds").
# A run under the config's own seed is abl-CONFIG-DATASET-SPLIT, the folder a call
# without SEEDS makes; another seed S adds "-seedS".
# RESUME=1: keep the runs that already finished with the same config and data, resume the
# interrupted ones, train the rest (after a crash, or to add seeds to a table); without
# it every run is retrained from scratch.
# The das*.yaml configs are configs/das.yaml (their base:) minus one part each.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
dataset=$1 split=$2; shift 2

if [ -n "${SEEDS:-}" ]; then read -ra seeds <<< "$SEEDS"; else seeds=(""); fi

# the seed each config trains with when no override names one (one Python for all)
declare -A config_seed
if [ -n "${SEEDS:-}" ]; then
  seeds_of_configs=$("$PYTHON" -c 'import sys
from recsys.train.config import load_run_config
for path in sys.argv[1:]:
    print(path, load_run_config(path).seed)' configs/ablations/*.yaml)
  while read -r config seed; do config_seed[$config]=$seed; done <<< "$seeds_of_configs"
fi

run_name() {  # run_name CONFIG SEED
  local name="abl-$(basename "$1" .yaml)-$dataset-$split"
  if [ -n "$2" ] && [ "$2" != "${config_seed[$1]}" ]; then name="$name-seed$2"; fi
  echo "$name"
}

# each run to train: NAME CONFIG [seed=S]
jobs=()
for config in configs/ablations/${ONLY:-*}.yaml; do
  [ -f "$config" ] || { echo "no config matches configs/ablations/${ONLY:-*}.yaml" >&2; exit 2; }
  for seed in "${seeds[@]}"; do
    jobs+=("$(run_name "$config" "$seed") $config${seed:+ seed=$seed}")
  done
done

failed=$(mktemp -u)  # created by any training that fails
for job in "${jobs[@]}"; do
  read -r name config seed_override <<< "$job"
  # the seed last, after the caller's overrides, so that it is the one that counts
  ( bench/run_configs.sh "$name" "$config" "data.dataset=$dataset" "data.split=$split" "$@" \
      ${seed_override:+"$seed_override"} || touch "$failed" ) &
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n || true; done
done
wait
if [ -e "$failed" ]; then rm -f "$failed"; echo "a training failed: no table written" >&2; exit 1; fi

runs=()
for config in configs/ablations/*.yaml; do
  for seed in "${seeds[@]}"; do
    run="runs/$(run_name "$config" "$seed")"
    if [ -f "$run/metrics.json" ]; then runs+=("$run"); else echo "no finished run: $run" >&2; fi
  done
done
doc=()
if [ -n "${DOC:-}" ]; then doc=(--doc "$DOC"); fi
if [ -n "${SEEDS:-}" ]; then
  "$PYTHON" bench/seeds_table.py ${doc[@]+"${doc[@]}"} --section "ablations-$dataset-$split-seeds" \
    --title "DAS ablations, $dataset $split, seeds $SEEDS" "${runs[@]}"
else
  "$PYTHON" bench/runs_table.py ${doc[@]+"${doc[@]}"} --section "ablations-$dataset-$split" \
    --title "DAS ablations, $dataset $split" "${runs[@]}"
fi
