"""`export_wan --dense-forward ort --fused-norms`: the forward-only graphs' dense attention becomes
ONNX Runtime's com.microsoft.MultiHeadAttention (ort_attention.py), RMSNorm and tanh-GELU its
SimplifiedLayerNormalization and FastGelu (fused_ops.py). Stock ONNX Runtime runs those graphs, so
they are checked against the eager PyTorch model (plain softmax attention, torch's norms) on fresh
random inputs."""
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the Wan tests need torch")
pytest.importorskip("diffusers", reason="diffusers not installed: the Wan tests need it")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
onnx = pytest.importorskip("onnx", reason="onnx not installed")

from fastvmt_onnx.export_wan import WanGraph, example, export_wan, tiny_wan  # noqa: E402
from fastvmt_onnx.model import set_attention_impl  # noqa: E402


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_forward_graphs_use_ort_fused_nodes_and_match_pytorch(tmp_path):
    wan = tiny_wan()
    paths = export_wan(wan, str(tmp_path), custom_attention=True, graphs=("denoiser", "guidance_head"),
                       dense_forward="ort", fused_norms=True)
    for p in paths.values():
        m = onnx.load(p)
        ops = {(n.domain, n.op_type) for n in m.graph.node}
        assert {("com.microsoft", "MultiHeadAttention"), ("com.microsoft", "FastGelu"),
                ("", "SimplifiedLayerNormalization")} <= ops, ops
        assert not any(n.domain == "fastvmt" for n in m.graph.node)
        # every attention, RMSNorm and GELU fused: no Softmax, Pow (x^2, x^3) or Tanh left
        assert not ops & {("", "Softmax"), ("", "Pow"), ("", "Tanh")}, ops
    seed = random.randrange(1 << 30)
    # a token grid and text length unlike the export example's (the sizes are symbolic)
    x, t, text, cos, sin = example(wan, B=2, Fr=2, hh=3, ww=5, L=6, seed=seed)
    set_attention_impl("math")
    with torch.no_grad():
        velocity = WanGraph(wan, "denoiser")(x, t, text, cos, sin).numpy()
        q, k = (o.numpy() for o in WanGraph(wan, "guidance_head")(x, t, text, cos, sin))
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
    got = ort.InferenceSession(paths["denoiser"], providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert rel(got, velocity) < 1e-5, (seed, rel(got, velocity))
    gq, gk = ort.InferenceSession(paths["guidance_head"], providers=["CPUExecutionProvider"]).run(None, feeds)
    assert rel(gq, q) < 1e-5 and rel(gk, k) < 1e-5, (seed, rel(gq, q), rel(gk, k))
