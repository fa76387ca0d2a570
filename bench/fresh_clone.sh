#!/usr/bin/env bash
# The first `make demo` and the first `make test` as a new user gets them: each in a fresh clone of this
# repository's HEAD, with an empty HOME (no ~/.cache/fpn_lab, no pip cache: every wheel is fetched from the
# package index), timed set-up included. Consoles in bench/logs/fresh_clone_<job>.log, times appended to
# bench/logs/fresh_clone.txt. Run it on a quiet machine; it takes the clones' disk (about 7 GB each) until it ends.
#
#   bash bench/fresh_clone.sh            # demo, then test
#   bash bench/fresh_clone.sh demo       # one of them
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYBIN=$(python3.11 -c 'import sys; print(sys.executable)')  # the interpreter itself (pyenv's shims need the real HOME)
mkdir -p "$ROOT/bench/logs"
for job in "${@:-demo test}"; do
  for j in $job; do
    work=$(mktemp -d /tmp/fpn_lab-fresh-XXXXXX)
    git clone -q "$ROOT" "$work/fpn_lab"
    mkdir "$work/home"
    start=$(date +%s)
    status=0
    (cd "$work/fpn_lab" && env HOME="$work/home" PYTHON="$PYBIN" make "$j") >"$ROOT/bench/logs/fresh_clone_$j.log" 2>&1 \
      || status=$?
    secs=$(( $(date +%s) - start ))
    setup=$(grep -o '^\[setup [0-9:]*\]' "$ROOT/bench/logs/fresh_clone_$j.log" | sed -n '1p;$p' | tr -d '[]' | awk '{print $2}' | paste -sd' ')
    echo "$(date -Is) make $j on a fresh clone, empty HOME: exit $status, ${secs} s in all (set-up from/to: $setup), commit $(git -C "$ROOT" rev-parse --short HEAD)" \
      | tee -a "$ROOT/bench/logs/fresh_clone.txt"
    rm -rf "$work"
  done
done
