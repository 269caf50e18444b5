#!/usr/bin/env bash
# Runs every test of the repository on a fresh machine (Rust toolchain + Python 3 with pip).
# GPU-only checks skip with a printed reason where there is no CUDA; torch-only checks skip
# where torch is absent. ONNX Runtime's library is found or fetched from PyPI by the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python side: numpy/Pillow/pytest for the harness and bundle tools (PyPI only), and
# pytest-xdist when it can be had (the Python tests then run on two workers).
python3 -c "import numpy, PIL, pytest" 2>/dev/null || python3 -m pip install --quiet numpy pillow pytest
python3 -c "import xdist" 2>/dev/null || python3 -m pip install --quiet pytest-xdist \
  || echo "pytest-xdist unavailable: the Python tests run on one worker"
PYTEST_WORKERS=()
python3 -c "import xdist" 2>/dev/null && PYTEST_WORKERS=(-n 2 --dist loadfile)

echo "== cargo test (workspace)"
cargo test --workspace --all-targets

echo "== pytest (harness, onnx tools)"
# Two workers, one test file each at a time (module fixtures export graphs once per file):
# 244 s -> 157 s on the 2-core build machine; the long files are the torch exports in onnx/tests.
python3 -m pytest -q "${PYTEST_WORKERS[@]}" harness/tests onnx/tests bench/wan/tests

# ---- Graph editor: page build check and end-to-end test in headless Chromium ------------
# Installs what it needs when missing: Debian's chromium and Node.js, and the page's npm
# packages (esbuild, litegraph, playwright-core; pinned in package-lock.json, npm registry
# only; no browser download). Rebuilds the page and fails when the committed dist/ (which
# node-server embeds, so `cargo build` needs no Node.js) is stale, then drives the editor
# served by the debug `nodehost` that `cargo test` built above, and runs the graph it saved
# with the CLI, then cancels a motion-transfer run mid-sampling. Screenshots:
# out/e2e/editor.png and out/e2e/running.png.
echo "== graph editor: page build check and end-to-end test (headless Chromium)"
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd host-sdk/server/web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs --check)
cargo build -p node-host-cli -p fastvmt-plugin   # nodehost with the plugin beside it
node host-sdk/server/web/e2e/run.mjs "${CARGO_TARGET_DIR:-target}/debug/nodehost"
