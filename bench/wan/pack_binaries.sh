#!/usr/bin/env bash
# On the build machine, before a GPU lease: the release bench binary and the GPU test binaries,
# packed into .tbin/bins.tar.zst (~2 MB, git-ignored) to carry to the GPU host, which has no Rust
# toolchain. There: `/opt/ortgpu/zstd -dc .tbin/bins.tar.zst | tar xf - -C /tmp/tbin`, then
# `ln -sfn "$PWD" /work/main` (the tests' fixture paths are compiled in) and run them with
# ORT_DYLIB_PATH / LD_LIBRARY_PATH pointing at /opt/ortgpu and FASTVMT_TEST_CUDA=1; copy
# fastvmt-wan-bench into .bbin/ for run_device.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
grep -qx '/.tbin/' .git/info/exclude 2>/dev/null || echo '/.tbin/' >> .git/info/exclude
stage=$(mktemp -d)
cargo build --release -p fastvmt-wan-bench
cp "${CARGO_TARGET_DIR:-target}/release/fastvmt-wan-bench" "$stage/"
# the test binaries, named by their test file: cargo prints each "Executable tests/NAME.rs (path)"
for spec in "fastvmt-kernels cuda" "fastvmt-kernels attention_cuda" "fastvmt-kernels norm" "fastvmt-kernels latent" "fastvmt-wan-bench cuda_run" \
            "fastvmt-wan-bench cuda_cpu_operator" "fastvmt-plugin custom_attention"; do
  set -- $spec
  path=$(cargo test --release -p "$1" --test "$2" --no-run 2>&1 | sed -n "s/.*Executable tests\/$2.rs (\(.*\))/\1/p")
  [ -n "$path" ] || { echo "no test binary for $1 $2" >&2; exit 1; }
  name=$2; [ "$name" = cuda ] && name=kernels_cuda
  cp "$path" "$stage/$name"
done
mkdir -p .tbin
tar cf - -C "$stage" . | zstd -q -19 -T0 -f -o .tbin/bins.tar.zst
rm -rf "$stage"
ls -la .tbin/bins.tar.zst
