# One device call: parity tests (whole binary with the defaults, then cuda_matches_cpu per
# variant in TVARS), memcheck on the small cases, then the bench of this build and of
# .kbin/amf_bench_old (main before the change) alternating, FastVMT's and the 2x shape.
set -o pipefail
B=.kbin; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$(date +%s)
echo "=== tests: default" >> $OUT/tests.log
timeout 150 $B/cuda --nocapture --test-threads=1 >> $OUT/tests.log 2>&1
echo "tests default rc=$? $(( $(date +%s) - t0 ))s"
grep -E "worst|test result|panicked" $OUT/tests.log | tail -3
envof() { case $1 in g16) echo FASTVMT_AMF_GRAD_TILE=16 ;; g16g) echo FASTVMT_AMF_GRAD_TILE=16g ;; lg0) echo FASTVMT_AMF_LOGITS_WG=0 ;; esac; }
for n in ${TVARS-g16g g16 lg0}; do
  echo "=== tests: $n ($(envof $n))" >> $OUT/tests.log
  env $(envof $n) timeout 100 $B/cuda --nocapture --test-threads=1 cuda_matches_cpu >> $OUT/tests.log 2>&1
  echo "tests $n rc=$? $(( $(date +%s) - t0 ))s"
  sed -n "/=== tests: $n /,\$p" $OUT/tests.log | grep -E "worst|test result|panicked" | head -3
done
if [ -z "$NOSAN" ]; then
  for n in ${SANV-default g16g}; do
    echo "=== sanitizer: $n" >> $OUT/sanitizer.log
    env $(envof $n) FASTVMT_CUDA_TEST_SMALL=1 timeout 120 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 $B/cuda --test-threads=1 --nocapture >> $OUT/sanitizer.log 2>&1
    echo "sanitizer $n rc=$? $(( $(date +%s) - t0 ))s"; grep -E "CUDA device|SKIPPED|ERROR SUMMARY" $OUT/sanitizer.log | tail -3
  done
fi
for r in ${ROUNDS-1 2}; do
  for bin in amf_bench amf_bench_old; do
    AMF_BENCH_SHAPES=${SHAPES-fastvmt,2x} AMF_BENCH_MODES=${MODES-"span4 r10"} AMF_BENCH_DTYPES=${DTYPES-bf16} timeout 200 $B/$bin > $OUT/bench_${bin}_$r.log 2>&1
    echo "bench $bin $r rc=$? $(( $(date +%s) - t0 ))s"
    grep -E "^(fastvmt|2x) " -A1 $OUT/bench_${bin}_$r.log
  done
done
