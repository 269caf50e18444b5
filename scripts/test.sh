#!/usr/bin/env bash
# Runs every test of the repository on a fresh machine (Rust toolchain + Python 3 with pip).
# GPU-only checks skip with a printed reason where there is no CUDA; torch-only checks skip
# where torch is absent. ONNX Runtime's library is found or fetched from PyPI by the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python side: numpy/Pillow/pytest for the harness and bundle tools (PyPI only).
python3 -c "import numpy, PIL, pytest" 2>/dev/null || python3 -m pip install --quiet numpy pillow pytest

echo "== cargo test (workspace)"
cargo test --workspace --all-targets

echo "== pytest (harness, onnx tools)"
python3 -m pytest -q harness/tests onnx/tests
