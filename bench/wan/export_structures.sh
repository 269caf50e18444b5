#!/usr/bin/env bash
# On the build machine, before a GPU lease: the Wan2.1-1.3B-dims bundles without their weights
# (export_wan.py --structure-only), packed for carrying to the GPU host, where
# `run_device.sh materialize NAME` writes the weights from the same seeded model in under a
# minute instead of the ~9-minute export there (onnx/fastvmt_onnx/materialize.py).
#
#   bench/wan/export_structures.sh NAME [T,S]   # -> .wanstruct/NAME.tar.zst
#
# Same settings as run_device.sh's export (LAYERS, DTYPE, MOTION, DENSE_FORWARD, FUSED_NORMS,
# FUSED_MODULATION);
# JOBS graphs at a time (default 2: each process holds the whole model). GRAPHS (default all
# four) exports fewer, e.g. GRAPHS=denoiser for a bundle that only samples in mode none.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NAME=$1 WINDOW=${2:-}
LAYERS=${LAYERS:-30} DTYPE=${DTYPE:-fp16} MOTION=${MOTION:-14} JOBS=${JOBS:-2}
OUTDIR=$ROOT/.wanstruct/$NAME
grep -qx '/.wanstruct/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.wanstruct/' >> "$ROOT/.git/info/exclude"
rm -rf "$OUTDIR" && mkdir -p "$OUTDIR"
args=(--wan13-dims "$LAYERS" --dtype "$DTYPE" --motion-block "$MOTION" --custom-attention --structure-only
      --bundle-name "$NAME" --out "$OUTDIR" --dense-forward "${DENSE_FORWARD:-ort}")
[ -n "$WINDOW" ] && args+=(--local-window "$WINDOW")
[ "${FUSED_NORMS:-1}" = 1 ] && args+=(--fused-norms)
[ "${FUSED_MODULATION:-1}" = 1 ] && args+=(--fused-modulation)
export PYTHONPATH=$ROOT/onnx${PYTHONPATH:+:$PYTHONPATH}
t0=$SECONDS
printf '%s\n' ${GRAPHS:-denoiser guidance_head guidance_grad guidance_step} \
  | xargs -P "$JOBS" -I{} sh -c 'python3 -m fastvmt_onnx.export_wan "$@" --graphs {} > "$0/export-{}.log" 2>&1 || { tail -20 "$0/export-{}.log"; exit 1; }' "$OUTDIR" "${args[@]}"
python3 -m fastvmt_onnx.export_wan "${args[@]}" --manifest-only
rm -f "$OUTDIR"/export-*.log
tar cf - -C "$ROOT/.wanstruct" "$NAME" | zstd -q -19 -T0 -o "$ROOT/.wanstruct/$NAME.tar.zst" -f
echo "structure of $NAME: $((SECONDS - t0)) s, $(du -h "$ROOT/.wanstruct/$NAME.tar.zst" | cut -f1) packed"
