#!/usr/bin/env bash
# One device call: resource report + SASS check, CUDA tests (tensor-core and SIMT paths),
# compute-sanitizer memcheck, our benchmark, the PyTorch baselines side by side.
# Binaries are built on the CPU machine and carried in .kbin/:
#   CARGO_TARGET_DIR=/work/target-attn-cuda cargo test -p fastvmt-kernels --test attention_cuda --release --no-run
#   CARGO_TARGET_DIR=/work/target-attn-cuda cargo build -p fastvmt-kernels --example attention_bench --release
#   mkdir -p .kbin && cp <test binary> .kbin/attention_cuda && cp .../examples/attention_bench .kbin/
# then: run(command="bash kernels/bench/attention_device_run.sh", carry=[".kbin"]).
# Stages can be skipped: SKIP_NVCC, SKIP_TESTS, SKIP_SAN, SKIP_BENCH, SKIP_TORCH.
set -u
B=${B:-.kbin}
OUT=${OUT:-/tmp/attn_out}
mkdir -p $OUT
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
# Resource report and SASS of the same source (nvcc here, NVRTC at run time; same ptxas).
if [ -z "${SKIP_NVCC:-}" ] && command -v nvcc >/dev/null; then
  timeout 240 nvcc -cubin -arch=sm_90 -std=c++17 -Xptxas -v -o $OUT/attn.cubin kernels/src/cuda/attention.cu > $OUT/ptxas.log 2>&1
  echo "nvcc rc=$? $(( $(date +%s) - t0 ))s"
  grep -A1 -E "Compiling entry function '(attn_fwd_tc_bf16_d(32|128)_w(4|8)|attn_fwd_ws_bf16_d128|attn_dkdv_tc_bf16_d(32|128))'" $OUT/ptxas.log | grep -E "entry|registers|spill" | head -24
  grep -E "spill stores" $OUT/ptxas.log | sort | uniq -c | head -5
  cuobjdump -sass $OUT/attn.cubin > $OUT/attn.sass 2>&1
  awk '/Function :/ {f=$3} /HMMA/ {n[f]++} END {for (k in n) if (k ~ /bf16_d128|bf16_d32_w4/) print "HMMA", k, n[k]}' $OUT/attn.sass | sort
  rm -f $OUT/attn.cubin
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 240 $B/attention_cuda --nocapture --test-threads=1 > $OUT/tests.log 2>&1
  echo "tests rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "worst|test result|panicked|error" $OUT/tests.log | head -12
  echo "=== SIMT path for f16/bf16 (FASTVMT_ATTN_NO_TC=1)" >> $OUT/tests.log
  FASTVMT_ATTN_NO_TC=1 ATTN_TEST_SMALL=1 timeout 120 $B/attention_cuda --nocapture --test-threads=1 cuda_matches >> $OUT/tests.log 2>&1
  echo "tests (SIMT) rc=$? $(( $(date +%s) - t0 ))s"
  sed -n '/=== SIMT/,$p' $OUT/tests.log | grep -E "worst|test result|panicked" | head -6
  echo "=== 4-warp dK/dV kernels (FASTVMT_ATTN_BWD_WARPS=4)" >> $OUT/tests.log
  FASTVMT_ATTN_BWD_WARPS=4 ATTN_TEST_SMALL=1 timeout 120 $B/attention_cuda --nocapture --test-threads=1 cuda_matches >> $OUT/tests.log 2>&1
  echo "tests (bwd 4 warps) rc=$? $(( $(date +%s) - t0 ))s"
  sed -n '/=== 4-warp/,$p' $OUT/tests.log | grep -E "worst|test result|panicked" | head -6
  echo "=== block-synchronous local forward (FASTVMT_ATTN_FWD_WS=0)" >> $OUT/tests.log
  FASTVMT_ATTN_FWD_WS=0 timeout 150 $B/attention_cuda --nocapture --test-threads=1 cuda_matches >> $OUT/tests.log 2>&1
  echo "tests (fwd_tc local) rc=$? $(( $(date +%s) - t0 ))s"
  sed -n '/=== block-synchronous/,$p' $OUT/tests.log | grep -E "worst|test result|panicked" | head -6
fi
if [ -z "${SKIP_SAN:-}" ]; then
  ATTN_TEST_SMALL=1 timeout 240 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 \
    $B/attention_cuda --test-threads=1 > $OUT/sanitizer.log 2>&1
  echo "sanitizer rc=$? $(( $(date +%s) - t0 ))s"; tail -2 $OUT/sanitizer.log
fi
if [ -z "${SKIP_BENCH:-}" ]; then
  timeout ${BENCH_TIMEOUT:-150} $B/attention_bench $OUT/ours.json > $OUT/bench.log 2>&1
  echo "bench rc=$? $(( $(date +%s) - t0 ))s"
  cat $OUT/bench.log
fi
if [ -z "${SKIP_TORCH:-}" ] && [ -f $OUT/ours.json ]; then
  PYTHONUNBUFFERED=1 timeout ${TORCH_TIMEOUT:-240} python3 kernels/bench/attention_torch.py --ours $OUT/ours.json --out $OUT/torch.json > $OUT/torch.log 2>&1
  echo "torch rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "ceiling|sdpa|flex" $OUT/torch.log | head -20
  sed -n '/side by side/,$p' $OUT/torch.log
fi
exit 0
