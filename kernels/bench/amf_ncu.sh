#!/usr/bin/env bash
# Nsight Compute profile of the AMF backward kernels at FastVMT's shape (one device call).
# Carry .kbin/amf_bench (cargo build -p fastvmt-kernels --example amf_bench --release).
#   run(command="bash kernels/bench/amf_ncu.sh", carry=[".kbin"])
# KERNELS (regex) chooses the kernels; DTYPES the bench rows (default bf16). Writes
# $OUT/amf_ncu.txt (details) and prints a short summary per kernel.
. "$(dirname "$0")/ncu_env.sh"
AMF_BENCH_SHAPES=fastvmt AMF_BENCH_MODES="span4 r10 query" AMF_BENCH_DTYPES=${DTYPES:-bf16} \
  timeout 400 "$NCU" --clock-control none \
  --kernel-name "regex:${KERNELS:-amf_(logits3_|rows|pack_d|dq2p_|dk2p_)}" --launch-skip ${SKIP:-12} --launch-count ${COUNT:-6} \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
  -o "$OUT/amf_ncu" -f "$B/amf_bench" > "$OUT/amf_ncu_run.log" 2>&1
echo "ncu rc=$?"
"$NCU" --import "$OUT/amf_ncu.ncu-rep" --page details > "$OUT/amf_ncu.txt" 2>&1
grep -E "^  amf_|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|L1/TEX Hit|L2 Hit Rate|DRAM Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall" "$OUT/amf_ncu.txt" | head -120
