#!/bin/bash
# One call on the GPU host: CUDA parity tests (both logits variants), compute-sanitizer on the
# small cases, the Rust benchmark, the PyTorch baselines. Binaries come from .kbin/ (built on
# the CPU machine: test binary of tests/cuda.rs as .kbin/cuda, examples/amf_bench).
set -o pipefail
cd "$(dirname "$0")/../.."
B=.kbin
OUT=${OUT:-/tmp/amf_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 $B/cuda --nocapture --test-threads=1 > $OUT/cuda_tests.log 2>&1
echo "cuda tests rc=$?"; grep -E "worst|test result" $OUT/cuda_tests.log
FASTVMT_AMF_LOGITS_WIDE=1 timeout 120 $B/cuda --nocapture --test-threads=1 cuda_matches_cpu > $OUT/cuda_tests_wide.log 2>&1
echo "cuda tests (wide logits) rc=$?"; grep -E "worst|test result" $OUT/cuda_tests_wide.log
SAN=/usr/local/cuda/bin/compute-sanitizer
FASTVMT_CUDA_TEST_SMALL=1 timeout 120 $SAN --tool memcheck --error-exitcode 9 $B/cuda --test-threads=1 > $OUT/sanitizer.log 2>&1
echo "sanitizer rc=$?"; tail -1 $OUT/sanitizer.log
FASTVMT_AMF_LOGITS_WIDE=1 FASTVMT_CUDA_TEST_SMALL=1 timeout 120 $SAN --tool memcheck --error-exitcode 9 $B/cuda --test-threads=1 cuda_matches_cpu > $OUT/sanitizer_wide.log 2>&1
echo "sanitizer (wide) rc=$?"; tail -1 $OUT/sanitizer_wide.log
timeout 150 $B/amf_bench $OUT/ours.json 2>&1 | tee $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 200 python3 kernels/bench/amf_torch.py --ours $OUT/ours.json --out $OUT/torch.json > $OUT/torch.log 2>&1
echo "torch rc=$?"; sed -n '/side by side/,$p' $OUT/torch.log
