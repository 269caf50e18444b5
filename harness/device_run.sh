#!/usr/bin/env bash
# The motion-fidelity harness on a many-core host, one process per (clip, variant) run:
#   harness/device_run.sh BIN CLIPS_JSON OUT_DIR JOBS VARIANT...
# VARIANT = "MODE[:TAG[:extra runner args]]", e.g. "fastvmt" or "adaptive:-s03:--steep 0.03".
# Runs JOBS processes side by side (FASTVMT_ORT_THREADS=${THREADS:-1} each), clip-major, so a
# run cut short by a time limit still leaves complete clips. Each run writes OUT_DIR/<clip>.<mode><tag>/;
# harness/merge_runs.py joins them into one runs.json for harness/score.py.
# Steps: ${STEPS:-20}; CLIP_RANGE=A:B runs only clips A..B-1 of CLIPS_JSON. Used for the 32-clip runs in harness/README.md ("adaptive").
set -uo pipefail
BIN=$1; CLIPS=$2; OUT=$3; JOBS=$4; shift 4
mkdir -p "$OUT"
names=$(python3 -c "import json,sys; n=len(json.load(open(sys.argv[1]))); a,b=(sys.argv[2]+':').split(':')[:2]; [print(i) for i in range(n)[int(a or 0):int(b or n)]]" "$CLIPS" "${CLIP_RANGE:-:}")
{
  for i in $names; do
    for v in "$@"; do printf '%s\t%s\n' "$i" "$v"; done
  done
} | while IFS=$'\t' read -r i v; do
  mode=${v%%:*}; rest=${v#"$mode"}; rest=${rest#:}
  tag=${rest%%:*}; extra=${rest#"$tag"}; extra=${extra#:}
  printf '%s\0' "$i|$mode|$tag|$extra"
done | xargs -0 -P "$JOBS" -I{} bash -c '
  IFS="|" read -r i mode tag extra <<< "$1"
  n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$3")
  d="$4/c$(printf %03d "$i").$mode$tag"
  FASTVMT_ORT_THREADS=${THREADS:-1} "$2" --clips "$3" --out "$d" --modes "$mode" --tag="$tag" \
     --shard "$i/$n" --steps ${STEPS:-20} $extra > "$d.log" 2>&1 || echo "FAILED $d (see $d.log)"
' _ {} "$BIN" "$CLIPS" "$OUT"
echo "done: $(ls -d "$OUT"/*/ 2>/dev/null | wc -l) runs"
