#!/usr/bin/env bash
# Work through a queue of training runs, one at a time (issue #27's recipe sweep and neck study).
#
#   bash bench/recipe_sweep.sh bench/recipes_queue.txt
#
# Each queue line is "<name> <params.yaml> [key=value ...]" ('#' starts a comment). The file is
# re-read before every run, so lines may be added while it works; a line whose
# bench/logs/recipes/<name>/metrics.json exists is done and skipped. Each run is
# `fpn-lab run <params> --set run_name=sweep-<name> --set key=value ...`; its metrics.json, run.log
# and the 1-minute load average before and after (load.txt: above ~2.3 on these 2 cores means
# the run shared the CPU) are copied to bench/logs/recipes/<name>/. A failed run leaves
# failed.txt there and the queue goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
queue=${1:?usage: bash bench/recipe_sweep.sh QUEUE_FILE}
out=bench/logs/recipes
mkdir -p "$out"
while :; do
  line=""
  while read -r name params rest; do
    [[ -z ${name:-} || $name == \#* ]] && continue
    [[ -f $out/$name/metrics.json || -f $out/$name/failed.txt ]] && continue
    line="$name $params $rest"; break
  done < "$queue"
  [[ -z $line ]] && { echo "queue done"; exit 0; }
  read -r name params rest <<< "$line"
  sets=(--set "run_name=sweep-$name")
  for kv in $rest; do sets+=(--set "$kv"); done
  mkdir -p "$out/$name"
  echo "$(date -u +%FT%TZ) start $name: $params $rest" | tee -a "$out/sweep.log"
  { date -u +%FT%TZ; cut -d' ' -f1-3 /proc/loadavg; } > "$out/$name/load.txt"
  rm -rf "runs/sweep-$name"
  .venv/bin/fpn-lab run "$params" "${sets[@]}" > "$out/$name/stdout.txt" 2>&1
  code=$?
  { date -u +%FT%TZ; cut -d' ' -f1-3 /proc/loadavg; } >> "$out/$name/load.txt"
  for f in metrics.json run.log; do [[ -f runs/sweep-$name/$f ]] && cp "runs/sweep-$name/$f" "$out/$name/"; done
  if [[ $code -ne 0 || ! -f $out/$name/metrics.json ]]; then echo "exit $code" > "$out/$name/failed.txt"; fi
  echo "$(date -u +%FT%TZ) end $name: exit $code" | tee -a "$out/sweep.log"
done
