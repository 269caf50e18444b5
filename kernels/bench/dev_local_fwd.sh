#!/usr/bin/env bash
# One device call: CUDA attention tests for each variant of TEST_VARIANTS (default: the
# warp-specialised local forward, then fwd_tc), optionally compute-sanitizer (SAN=memcheck or
# racecheck), then the local forwards side by side (carry .kbin: attention_cuda, attention_bench).
set -u
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
IFS=';' read -ra VARS <<< "${TEST_VARIANTS:-;FASTVMT_ATTN_FWD_WS=0}"
for v in "${VARS[@]}"; do
  env $v timeout ${TEST_TIMEOUT:-150} .kbin/attention_cuda --nocapture --test-threads=1 cuda_matches > $OUT/tests.log 2>&1
  echo "tests [$v] rc=$? $(( $(date +%s)-t0 ))s"
  grep -E "worst|test result|panicked|error" $OUT/tests.log | head -8
done
for tool in ${SAN:-}; do
  ATTN_TEST_SMALL=1 timeout 200 /usr/local/cuda/bin/compute-sanitizer --tool $tool --error-exitcode 9 \
    .kbin/attention_cuda --test-threads=1 cuda_matches_f64_reference_bf16 > $OUT/sanitizer_$tool.log 2>&1
  echo "sanitizer $tool rc=$? $(( $(date +%s)-t0 ))s"; tail -3 $OUT/sanitizer_$tool.log
done
ATTN_BENCH_MASKS=${MASKS:-local1/7,local1/3,local2/10} ATTN_BENCH_DTYPES=${DTYPES:-bf16} ATTN_BENCH_FWD_WS=${WS:-1,0} \
  timeout ${BENCH_TIMEOUT:-200} .kbin/attention_bench $OUT/ours.json > $OUT/bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 ))s"
cat $OUT/bench.log
