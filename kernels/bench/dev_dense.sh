#!/usr/bin/env bash
# One device call: CUDA attention tests with the dense kernels' variants, then the dense
# forward/backward variants side by side (carry .kbin: attention_cuda test binary, attention_bench).
set -u
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
t0=$(date +%s)
IFS=';' read -ra VARS <<< "${TEST_VARIANTS:-;FASTVMT_ATTN_FWD_DENSE=1 FASTVMT_ATTN_BWD_DENSE=32}"
for v in "${VARS[@]}"; do
  env $v timeout 200 .kbin/attention_cuda --nocapture --test-threads=1 cuda_matches > $OUT/tests.log 2>&1
  echo "tests [$v] rc=$? $(( $(date +%s)-t0 ))s"
  grep -E "worst|test result|panicked" $OUT/tests.log | head -8
done
ATTN_BENCH_MASKS=${MASKS:-dense,local1/7} ATTN_BENCH_DTYPES=bf16 ATTN_BENCH_FWD_DENSE=0,1,2 ATTN_BENCH_BWD_DENSE=0,32,64 \
  timeout 300 .kbin/attention_bench $OUT/ours.json > $OUT/bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 ))s"
cat $OUT/bench.log
