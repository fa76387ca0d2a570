#!/usr/bin/env bash
# Accuracy parity (issue #7, item 3): fpn_lab and mmdet's own trainer, matched recipe, seeds 0..2,
# interleaved per seed; then mmdet's own YOLOX recipe for 20 epochs (the anchor), seeds 0..2.
# CPU hours: run it in the background. Raw logs and one JSON per run in bench/logs/parity/;
# the summary table is bench/logs/parity/summary.txt. fpn_lab-matched-before-* are kept from the code
# before FusedAdam and the YOLOX-style colour/affine defaults (bench/RESULTS.md, section 3); runs
# named in bench/logs/parity/CONTENDED shared the CPU: their accuracy counts, their times do not.
#   bash bench/parity_runs.sh            # everything (about 100 minutes on 2 cores)
#   SEEDS="0" bash bench/parity_runs.sh  # one seed
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
PY=.venv/bin/python
OUT=bench/logs/parity
mkdir -p "$OUT"
run() {  # name, args...  (skips a run whose JSON exists: rerun by deleting it)
  local name=$1; shift
  if [[ -f "$OUT/$name.json" ]]; then echo "skip $name (exists)"; return; fi
  echo "$(date -u +%H:%M:%S) start $name"
  $PY bench/accuracy_parity.py "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 \
    && tail -1 "$OUT/$name.log" || echo "FAILED $name (see $OUT/$name.log)"
}
for s in ${SEEDS:-0 1 2}; do
  run "fpn_lab-matched-e10-s$s" --trainer fpn_lab --seed "$s" --epochs 10
  run "mmdet-matched-e10-s$s" --trainer mmdet --recipe matched --seed "$s" --epochs 10
done
for s in ${SEEDS:-0 1 2}; do
  run "mmdet-mmdet-e20-s$s" --trainer mmdet --recipe mmdet --seed "$s" --epochs 20
done
$PY bench/accuracy_parity.py --summary "$OUT" | tee "$OUT/summary.txt"
