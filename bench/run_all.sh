#!/usr/bin/env bash
# Run every benchmark in full, one at a time, keeping each one's output in bench/logs/<name>.txt.
# The numbers in bench/RESULTS.md come from these logs. Takes about 25 minutes on 2 cores.
# Accuracy parity (CPU hours) is separate: bash bench/parity_runs.sh (make bench-parity).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/logs
for script in parse_speed coco_eval data_pipeline train_step_overhead inference step_time; do
  echo "== $script"
  args=(); [[ $script == train_step_overhead ]] && args=(--profile)
  { date -u +"%Y-%m-%dT%H:%M:%SZ"; .venv/bin/python "bench/$script.py" "${args[@]}"; } 2>&1 | grep -v "Warning\|warnings.warn" | tee "bench/logs/$script.txt"
done
