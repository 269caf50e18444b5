#!/bin/bash
# One call on the GPU host: CUDA parity tests (default kernels; then the gradient variants:
# g16g / g16 force the version-3 16x8 tiles on wgmma (sm_90) / mma.sync, which the default
# keeps for grids that fill the GPU, g2 the version-2 8x8 tiles; the legacy run-3 kernels),
# compute-sanitizer on the small cases,
# the Rust benchmark (all variants in one process), the PyTorch baselines side by side.
# Binaries come from .kbin/ (built on the CPU machine: the test binary of tests/cuda.rs as
# .kbin/cuda, examples/amf_bench as .kbin/amf_bench). SKIP_TORCH=1 skips the baselines,
# VARIANTS="..." limits the extra test runs (default: g16g g16 g2 pkw ga st legacy).
# Files in $OUT (at most 6): tests.log, sanitizer.log, bench.log, ours.json, torch.log, torch.json.
set -o pipefail
cd "$(dirname "$0")/../.."
B=.kbin
OUT=${OUT:-/tmp/amf_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
t0=$(date +%s)
envof() {
  case $1 in
    pkw) echo FASTVMT_AMF_GRAD_WIDE=1 ;;
    ga) echo FASTVMT_AMF_GRAD_GATHER=1 ;;
    gw) echo FASTVMT_AMF_GRAD_GATHER=1 FASTVMT_AMF_GRAD_WIDE=1 ;;
    st) echo FASTVMT_AMF_FWD_STORED=1 ;;
    z1) echo FASTVMT_AMF_LOGITS_ZX=1 ;;
    legacy) echo FASTVMT_AMF_LEGACY=1 ;;
    g2) echo FASTVMT_AMF_GRAD_TILE=2 ;;
    g16) echo FASTVMT_AMF_GRAD_TILE=16 ;;
    g32) echo FASTVMT_AMF_GRAD_TILE=32 ;;
    g16w) echo FASTVMT_AMF_GRAD_TILE=16w ;;
    g16s3) echo FASTVMT_AMF_GRAD_TILE=16s3 ;;
    g16g) echo FASTVMT_AMF_GRAD_TILE=16g ;;
    lg0) echo FASTVMT_AMF_LOGITS_WG=0 ;;
    ov0) echo FASTVMT_AMF_OVERLAP=0 ;;
    ov1) echo FASTVMT_AMF_OVERLAP=1 ;;
    ov0g16) echo FASTVMT_AMF_OVERLAP=0 FASTVMT_AMF_GRAD_TILE=16 ;;
    ov1g16) echo FASTVMT_AMF_OVERLAP=1 FASTVMT_AMF_GRAD_TILE=16 ;;
  esac
}
echo "=== tests: default" > $OUT/tests.log
timeout 100 $B/cuda --nocapture --test-threads=1 >> $OUT/tests.log 2>&1
echo "cuda tests (default) rc=$? $(( $(date +%s) - t0 ))s"
grep -E "worst|test result|panicked|failures" $OUT/tests.log | tail -4
for v in ${VARIANTS-g16g g16 g2 pkw ga st legacy}; do
  echo "=== tests: $v ($(envof $v))" >> $OUT/tests.log
  env $(envof $v) timeout 60 $B/cuda --nocapture --test-threads=1 cuda_matches_cpu >> $OUT/tests.log 2>&1
  echo "cuda tests ($v) rc=$? $(( $(date +%s) - t0 ))s"
  sed -n "/=== tests: $v /,\$p" $OUT/tests.log | grep -E "worst|test result|panicked|failures" | head -3
done
SAN=/usr/local/cuda/bin/compute-sanitizer
for v in default ${SAN_VARIANTS-g16g g16 ga}; do
  echo "=== sanitizer: $v" >> $OUT/sanitizer.log
  env $(envof $v) FASTVMT_CUDA_TEST_SMALL=1 timeout 60 $SAN --tool memcheck --error-exitcode 9 $B/cuda --test-threads=1 --nocapture >> $OUT/sanitizer.log 2>&1
  echo "sanitizer ($v) rc=$? $(( $(date +%s) - t0 ))s"; tail -1 $OUT/sanitizer.log
done
timeout ${BENCH_TIMEOUT:-120} $B/amf_bench $OUT/ours.json > $OUT/bench.log 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
if [ -z "$SKIP_TORCH" ]; then
  # Whatever is left of a 290 s call (TOTAL), at least 20 s.
  left=$(( ${TOTAL:-290} - ($(date +%s) - t0) )); [ $left -lt 20 ] && left=20
  PYTHONUNBUFFERED=1 timeout ${TORCH_TIMEOUT:-$left} python3 kernels/bench/amf_torch.py --ours $OUT/ours.json --out $OUT/torch.json > $OUT/torch.log 2>&1
  echo "torch rc=$? $(( $(date +%s) - t0 ))s"
fi
grep -v "phases" $OUT/bench.log
grep -A1 -E "^fastvmt +span4 r10 query +bf16" $OUT/bench.log | grep phases
[ -f $OUT/torch.log ] && sed -n '/side by side/,$p' $OUT/torch.log
exit 0
