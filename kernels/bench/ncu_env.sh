# Sourced by the *_ncu.sh profiles: binaries from $B (default .kbin), output folder $OUT,
# Nsight Compute's command line in $NCU, and the card's name and clocks on stdout.
set -u
B=${B:-.kbin}
OUT=${OUT:-/tmp/ncu_out}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
