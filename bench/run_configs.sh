#!/usr/bin/env bash
# Run a list of benchmark trainings one after another (one torch thread each, as the
# peers in ../shared/PEERS.md were run).  Usage: bench/run_configs.sh NAME CONFIG [overrides...] \; ...
# Each run lands in runs/<NAME>/ with its metrics.json and manifest (command, versions).
# Every run starts from scratch (--fresh); RESUME=1 instead keeps a run that already
# finished with the same config on the same data and resumes an interrupted one from its
# last checkpoint (recsys train --skip-finished): rerun a list after a crash with it.
set -euo pipefail
RECSYS=${RECSYS:-.venv/bin/recsys}
if [ "${RESUME:-0}" = 1 ]; then start=--skip-finished; else start=--fresh; fi
args=()
run_one() {
  local name=$1 config=$2; shift 2
  echo "== $name: $RECSYS train -c $config name=$name trainer.num_threads=1 $* $start" >&2
  "$RECSYS" train -c "$config" "name=$name" trainer.num_threads=1 "$@" "$start" --no-progress > /dev/null
}
for a in "$@"; do
  if [ "$a" = ";" ]; then run_one "${args[@]}"; args=(); else args+=("$a"); fi
done
[ ${#args[@]} -gt 0 ] && run_one "${args[@]}"
