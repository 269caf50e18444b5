#!/usr/bin/env bash
# The motion-fidelity harness, one command:
#   harness/run.sh [--count N] [--seed S] [--families F1,F2] [--modes none,ditflow,fastvmt,adaptive] [--out DIR] [--fake] [-- ARGS...]
# 1. harness/make_clips.py writes the reference set to DIR/clips (GIFs + clips.json);
# 2. the Rust harness binary runs every mode on every clip -> DIR/runs/runs.json + GIFs
#    (ARGS after `--` go to it, e.g. -- --device cuda);
#    --fake renders fake outputs with harness/fake_runs.py instead (tests the scoring, no model);
# 3. harness/score.py scores them -> DIR/runs/scores.json, DIR/runs/table.md, and prints the table.
# Environment: PYTHON (default python3; needs numpy + Pillow), CARGO (default cargo),
#   HARNESS_PKG (default fastvmt-harness: plugin/harness-runner).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-python3}"
CARGO="${CARGO:-cargo}"
HARNESS_PKG="${HARNESS_PKG:-fastvmt-harness}"  # the workspace package with the fastvmt-harness binary
COUNT=24
SEED=0
MODES="none,ditflow,fastvmt,adaptive"
OUT="$ROOT/harness/out"
FAKE=0
EXTRA=()
FAMILIES=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) COUNT="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --families) FAMILIES=(--families "$2"); shift 2 ;;
    --modes) MODES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --fake) FAKE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! "$PY" -c 'import numpy, PIL' 2>/dev/null; then
  echo "run.sh: $PY cannot import numpy and Pillow: pip install numpy pillow" >&2
  exit 1
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
CLIPS="$OUT/clips"
RUNS="$OUT/runs"

echo "== 1/3 reference clips -> $CLIPS"
"$PY" "$HERE/make_clips.py" --out "$CLIPS" --count "$COUNT" --seed "$SEED" ${FAMILIES[@]+"${FAMILIES[@]}"}

echo "== 2/3 runs ($MODES) -> $RUNS"
rm -f "$RUNS/runs.json"
if [[ "$FAKE" == 1 ]]; then
  "$PY" "$HERE/fake_runs.py" --clips "$CLIPS/clips.json" --out "$RUNS" --modes "$MODES"
else
  (cd "$ROOT" && "$CARGO" run --release -p "$HARNESS_PKG" --bin fastvmt-harness -- \
      --clips "$CLIPS/clips.json" --modes "$MODES" --out "$RUNS" ${EXTRA[@]+"${EXTRA[@]}"})
fi
if [[ ! -f "$RUNS/runs.json" ]]; then
  echo "run.sh: no $RUNS/runs.json was written" >&2
  exit 1
fi

echo "== 3/3 scores -> $RUNS/scores.json, $RUNS/table.md"
"$PY" "$HERE/score.py" "$RUNS" --clips "$CLIPS" --quiet
