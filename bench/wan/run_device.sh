#!/usr/bin/env bash
# The Wan2.1-1.3B-scale benchmark on the GPU test host (bench/wan/README.md).
#
#   bench/wan/run_device.sh all                 # everything below, in order (one command)
#   bench/wan/run_device.sh exports             # the dense and the local (1,7) bundle, in parallel
#   bench/wan/run_device.sh export NAME [T,S]   # random Wan-1.3B-dims bundle -> $WORK/NAME
#                                               # (T,S: local-window attention inside the DiT)
#   bench/wan/run_device.sh unpack              # after staging: /opt/ortgpu + the .tbin pack
#   bench/wan/run_device.sh materialize NAME    # a bundle from .wanstruct/NAME.tar.zst (carried;
#                                               # bench/wan/export_structures.sh on the build
#                                               # machine): its weights written here, < 1 min
#   bench/wan/run_device.sh ours NAME MODES [TAG]   # BENCH_ARGS: extra bench flags
#   bench/wan/run_device.sh torch MODES
#   bench/wan/run_device.sh peak | table
#   bench/wan/run_device.sh arenas NAME MODES   # FASTVMT_CUDA_ARENA=shrink|shared|keep side by side
#   bench/wan/run_device.sh profile NAME        # ONNX Runtime's per-node trace, summed
#   bench/wan/run_device.sh routes NAME MODES   # guidance_step (CPU / CUDA operator) vs two graphs
#   bench/wan/run_device.sh loops NAME MODES    # device-resident latents vs the host loop, ABA
#
# Needs, in the checkout: the bench binary in .bbin/ (cargo build --release -p fastvmt-wan-bench),
# ONNX Runtime's CUDA provider unpacked in /opt/ortgpu (../shared/device/stage-ort-gpu.sh), and
# the diffusers wheel in .whl/ (the host has torch but not diffusers).
# Settings: PRESET=small (default: 10 steps, guidance on the first 2 with 10 inner steps) or
# full (FastVMT's 50 steps, guidance on the first 10); FRAMES/HEIGHT/WIDTH of the latent
# (default 21 x 60 x 104: 81 frames of 480x832, 32,760 tokens); LAYERS (30); DTYPE (fp16);
# MOTION, the motion block (14, FastVMT's); DENSE_FORWARD, the dense attention of the forward-only
# graphs: ort (default, ONNX Runtime's MultiHeadAttention: 1.46x faster plain sampling, measured
# in results/2026-11-27-h100-lease2) or fastvmt (our fused operator, as in the first table);
# FUSED_NORMS (default 1), RMSNorm and tanh-GELU as single ONNX Runtime nodes (export_wan.py
# --fused-norms; plain sampling 17.96 -> 13.91 s, results/2026-11-27-h100-lease5); 0 = decomposed.
# FUSED_MODULATION (default 1): the forward graphs' fp32 norm/modulation islands and gated
# residuals as fastvmt.norm nodes (export_wan.py --fused-modulation; plain sampling with the
# local window 7.52 -> 6.16 s, results/2026-11-27-h100-lease8 and -lease9); 0 = decomposed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/wanbench}
RES=$WORK/results   # kept across calls while the host stays warm; copied to $OUT after each
LOGS=$WORK/logs
PRESET=${PRESET:-small}
FRAMES=${FRAMES:-21} HEIGHT=${HEIGHT:-60} WIDTH=${WIDTH:-104}
LAYERS=${LAYERS:-30} DTYPE=${DTYPE:-fp16} MOTION=${MOTION:-14}
case $PRESET in
  small) STEPS=10 ;;
  full) STEPS=50 ;;
  *) echo "PRESET=$PRESET: use small or full" >&2; exit 2 ;;
esac
COMMON=(--frames "$FRAMES" --height "$HEIGHT" --width "$WIDTH" --steps "$STEPS"
        --guided-fraction 0.2 --inner-steps 10 --reuse-interval 3)
mkdir -p "$WORK" "$RES" "$LOGS"
export PYTHONUNBUFFERED=1
trap '[ -n "${OUT:-}" ] && cp "$RES"/* "$OUT"/ 2>/dev/null; true' EXIT

python_env() {
  # One installer at a time (parallel materialize calls raced on /tmp/site): the lock is held
  # while checking and installing, so the others find the wheels in place.
  (
    if command -v flock > /dev/null; then flock 9; fi
    if [ -d "$ROOT/.whl" ] && [ ! -d /tmp/site/diffusers ] && ! python3 -c 'import diffusers' 2>/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$ROOT"/.whl/*.whl
    fi
  ) 9> /tmp/site.lock
  export PYTHONPATH=/tmp/site:$ROOT/onnx${PYTHONPATH:+:$PYTHONPATH}
}

ort_env() {
  local lib
  lib=$(ls /opt/ortgpu/libonnxruntime.so.* 2>/dev/null | head -1) || true
  [ -n "$lib" ] || { echo "ONNX Runtime's CUDA provider is not in /opt/ortgpu (see this script's header)" >&2; exit 1; }
  export ORT_DYLIB_PATH=$lib LD_LIBRARY_PATH=/opt/ortgpu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

do_export() {  # NAME [T,S]; env GRAPHS (default all four), DENSE_FORWARD (ort | fastvmt), FUSED_NORMS (1 | 0)
  local name=$1 window=${2:-}
  python_env
  local args=(--wan13-dims "$LAYERS" --dtype "$DTYPE" --motion-block "$MOTION" --custom-attention
              --bundle-name "$name" --out "$WORK/$name" --dense-forward "${DENSE_FORWARD:-ort}")
  [ -n "$window" ] && args+=(--local-window "$window")
  [ "${FUSED_NORMS:-1}" = 1 ] && args+=(--fused-norms)
  [ "${FUSED_MODULATION:-1}" = 1 ] && args+=(--fused-modulation)
  local t0=$SECONDS pids=() g
  # One process per graph: the exporter is single-threaded and the host has cores to spare.
  for g in ${GRAPHS:-denoiser guidance_head guidance_grad guidance_step}; do
    (cd "$ROOT/onnx" && python3 -m fastvmt_onnx.export_wan "${args[@]}" --graphs $g > "$LOGS/export-$name-$g.log" 2>&1) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { tail -20 "$LOGS"/export-"$name"-*.log; exit 1; }; done
  if [ -n "${GRAPHS:-}" ]; then return 0; fi  # a partial bundle: the caller completes it
  (cd "$ROOT/onnx" && python3 -m fastvmt_onnx.export_wan "${args[@]}" --manifest-only)
  echo "export $name: $((SECONDS - t0)) s"; du -sh "$WORK/$name"
}

do_materialize() {  # the structure exported on the build machine + the seeded model's weights
  local name=$1 pack=$ROOT/.wanstruct/$1.tar.zst
  [ -f "$pack" ] || pack=/opt/stage/$1.tar.zst  # carried in a staging call, outside the checkout
  [ -f "$pack" ] || { echo "materialize: $pack missing (carry .wanstruct; see export_structures.sh)" >&2; exit 1; }
  python_env
  local unzstd=zstd t0=$SECONDS
  command -v zstd > /dev/null || unzstd=/opt/ortgpu/zstd  # staged with ONNX Runtime
  rm -rf "${WORK:?}/$name"
  "$unzstd" -dc "$pack" | tar xf - -C "$WORK"
  # onnxscript's optimiser: on guidance_step by default (its unoptimised form fails in the CUDA
  # session; materialize.py), on every graph with OPTIMIZE=1 (slow).
  local opt=(--optimize-graphs "${OPTIMIZE_GRAPHS-guidance_step}")
  [ "${OPTIMIZE:-0}" = 1 ] && opt=(--optimize)
  (cd "$ROOT/onnx" && python3 -m fastvmt_onnx.materialize "$WORK/$name" "${opt[@]}")
  echo "materialize $name: $((SECONDS - t0)) s"
}

bench_bin() {  # .bbin/ of this checkout, else the unpacked .tbin pack (each call gets a fresh checkout)
  if [ -x "$ROOT/.bbin/fastvmt-wan-bench" ]; then echo "$ROOT/.bbin/fastvmt-wan-bench"
  elif [ -x /tmp/tbin/fastvmt-wan-bench ]; then echo /tmp/tbin/fastvmt-wan-bench
  else echo "no bench binary: .bbin/fastvmt-wan-bench or /tmp/tbin (bench/wan/pack_binaries.sh)" >&2; exit 1; fi
}

do_unpack() {  # after staging: ONNX Runtime's CUDA provider, and the .tbin pack into /tmp/tbin
  # unpack.sh removes the parts it joined, so a second run on the same machine would fail
  ls /opt/ortgpu/libonnxruntime.so.* > /dev/null 2>&1 || /opt/ortgpu/unpack.sh > /dev/null
  mkdir -p /tmp/tbin
  local pack=$ROOT/.tbin/bins.tar.zst
  [ -f "$pack" ] || pack=/opt/stage/bins.tar.zst  # carried in a staging call, outside the checkout
  /opt/ortgpu/zstd -dc "$pack" | tar xf - -C /tmp/tbin
  ls /tmp/tbin
}

do_ours() {  # BENCH_ARGS: more flags of the bench binary (e.g. --host-reference)
  local name=$1 modes=$2 tag=${3:-}
  ort_env
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  "$(bench_bin)" --bundle "$WORK/$name" --device cuda --modes "$modes" \
    --tag="$tag" "${COMMON[@]}" ${BENCH_ARGS:-} --out "$RES/ours-$name$tag.json"
}

do_torch() {
  python_env
  python3 "$ROOT/bench/wan/torch_reference.py" --modes "$1" --layers "$LAYERS" --dtype bf16 --motion-block "$MOTION" \
    --device cuda --text-len 512 "${COMMON[@]}" --out "$RES/torch.json"
}

do_peak() {  # the card's bf16 matrix-product rate, for the floor
  python3 - "$RES/peak.json" <<'PY'
import json, sys, torch
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3): a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): a @ b
e.record(); torch.cuda.synchronize()
tf = 2 * 8192 ** 3 * 20 / (s.elapsed_time(e) / 1e3) / 1e12
json.dump({"bf16_tflops": round(tf, 1)}, open(sys.argv[1], "w")); print(f"bf16 matmul: {tf:.0f} TFLOP/s")
PY
}

do_arenas() {  # the CUDA arena policies side by side (plugin/src/runtime/cuda_arena.rs)
  local name=$1 modes=$2 policy
  for policy in shrink shared keep; do
    FASTVMT_CUDA_ARENA=$policy do_ours "$name" "$modes" "-$policy" || echo "arena $policy failed (above)"
  done
}

do_routes() {  # a real gradient in one guidance_step run (AMF operator on the CUDA provider, the
               # default, or the CPU provider) vs guidance_head + guidance_grad
  local name=$1 modes=$2
  do_ours "$name" "$modes" -step
  FASTVMT_AMF_OP=cpu do_ours "$name" "$modes" -stepcpu  # Q/K through pinned host memory
  ort_env
  "$(bench_bin)" --bundle "$WORK/$name" --device cuda --modes "$modes" --two-graph \
    --tag=-twograph "${COMMON[@]}" --out "$RES/ours-$name-twograph.json"
}

do_loops() {  # latents bound to device memory (the default) vs copied through the host on every
              # run (--host-loop), in A-B-A order so drift between invocations shows
  local name=$1 modes=$2
  do_ours "$name" "$modes" -bound
  BENCH_ARGS="${BENCH_ARGS:-} --host-loop" do_ours "$name" "$modes" -hostloop
  do_ours "$name" "$modes" -bound2
}

do_profile() {  # ONNX Runtime's per-node trace of one guided step (PROFILE_MODE=none: of plain
  # sampling), summed by op and provider.
  # ONNX Runtime times a CUDA node by its host-side launch, so without blocking launches the
  # times land on whichever node waits on a full launch queue (2026-11-27: 37 % on Cast);
  # CUDA_LAUNCH_BLOCKING=1 (PROFILE_BLOCKING=0 to drop it) makes each node's time its kernels'.
  local name=$1
  ort_env
  rm -f "$LOGS"/prof_*
  CUDA_LAUNCH_BLOCKING=${PROFILE_BLOCKING:-1} FASTVMT_ORT_PROFILE="$LOGS/prof_" "$(bench_bin)" --bundle "$WORK/$name" --device cuda \
    --modes "${PROFILE_MODE:-fastvmt}" --frames "$FRAMES" --height "$HEIGHT" --width "$WIDTH" --steps 2 \
    --guided-fraction 0.5 --no-warmup ${BENCH_ARGS:-} --out "$LOGS/profile-run.json"
  python3 "$ROOT/bench/wan/profile_summary.py" "$LOGS"/prof_*.json | tee "$RES/profile-$name.txt"
}

do_table() {
  python3 "$ROOT/bench/wan/table.py" "$RES" | tee "$RES/table.md"
}

case ${1:-} in
  export) do_export "$2" "${3:-}" ;;
  materialize) do_materialize "$2" ;;
  unpack) do_unpack ;;
  exports)  # the dense and the local-window bundle side by side
    python_env
    do_export wan13-dense & a=$!
    do_export wan13-local 1,7 & b=$!
    wait $a && wait $b ;;
  ours) do_ours "$2" "$3" "${4:-}" ;;
  torch) do_torch "$2" ;;
  table) do_table ;;
  arenas) do_arenas "$2" "$3" ;;
  profile) do_profile "$2" ;;
  routes) do_routes "$2" "$3" ;;
  loops) do_loops "$2" "$3" ;;
  peak) do_peak ;;
  all)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/card.txt"
    do_peak
    python_env
    do_export wan13-dense & a=$!
    do_export wan13-local 1,7 & b=$!
    wait $a && wait $b
    do_ours wan13-dense none,ditflow,fastvmt,adaptive
    do_ours wan13-local none,fastvmt,adaptive -local
    do_torch none,ditflow,fastvmt
    do_table ;;
  *) sed -n 2,17p "$0"; exit 2 ;;
esac
