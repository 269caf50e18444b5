#!/usr/bin/env bash
# Nsight Compute profile of the fused attention kernels at issue #5's shape (one device call).
# Carry .kbin/attention_bench (cargo build -p fastvmt-kernels --example attention_bench --release).
#   run(command="bash kernels/bench/attention_ncu.sh", carry=[".kbin"])
# MASKS (default "dense,local1/7") and KERNELS (regex, default the tensor-core fwd and dK/dV
# kernels) choose what is profiled; writes $OUT/ncu_<mask>.txt (details) and a short summary.
. "$(dirname "$0")/ncu_env.sh"
for m in $(echo "${MASKS:-dense,local1/7}" | tr , ' '); do
  tag=$(echo "$m" | tr '/' '_')
  ATTN_BENCH_MASKS=$m ATTN_BENCH_DTYPES=bf16 ATTN_BENCH_REPS=1 timeout 300 "$NCU" --clock-control none \
    --kernel-name "regex:${KERNELS:-attn_(fwd|dkdv)_tc}" --launch-skip 4 --launch-count 2 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section SourceCounters \
    -o "$OUT/ncu_$tag" -f "$B/attention_bench" > "$OUT/run_$tag.log" 2>&1
  echo "ncu $m rc=$?"
  "$NCU" --import "$OUT/ncu_$tag.ncu-rep" --page details > "$OUT/ncu_$tag.txt" 2>&1
  "$NCU" --import "$OUT/ncu_$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_src_$tag.csv" 2>/dev/null
  grep -E "attn_|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Stall|Warp Cycles Per Issued" "$OUT/ncu_$tag.txt" | head -80
done
