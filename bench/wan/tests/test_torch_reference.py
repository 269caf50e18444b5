"""The PyTorch reference's AMF (the benchmark's ditflow/fastvmt in PyTorch) against its naive
float64 per-query loop, through the script's own --self-check."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch not installed: the PyTorch reference needs torch")
pytest.importorskip("diffusers", reason="diffusers not installed: the PyTorch reference needs it")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torch_reference.py")


def test_amf_self_check_passes():
    r = subprocess.run([sys.executable, SCRIPT, "--self-check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
