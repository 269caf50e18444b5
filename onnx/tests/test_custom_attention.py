"""Exporter option: attention as fastvmt.Attention / fastvmt.AttentionGrad custom-domain nodes.

The exported graphs are checked structurally (custom nodes present, no Softmax and no N x N
MatMul of the plain attention) and numerically with onnx's ReferenceEvaluator, the two custom
ops implemented in numpy, against torch (math attention). Needs torch."""
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the custom-attention export test needs torch",
                            exc_type=ImportError)
onnx = pytest.importorskip("onnx", reason="onnx not installed")

from fastvmt_onnx.model import DiT, DiTConfig, TextEncoder, rope_tables, set_attention_impl  # noqa: E402
from fastvmt_onnx.export import export_all  # noqa: E402


def _np_ops():
    from onnx.reference.op_run import OpRun

    class Attention(OpRun):
        op_domain = "fastvmt"

        def _run(self, q, k, v, **_):
            s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
            m = s.max(-1, keepdims=True)
            lse = (np.log(np.exp(s - m).sum(-1, keepdims=True)) + m)
            p = np.exp(s - lse)
            return (p @ v).astype(q.dtype), lse[..., 0].astype(q.dtype)

    class AttentionGrad(OpRun):
        op_domain = "fastvmt"

        def _run(self, dout, q, k, v, out, lse, **_):
            sc = 1.0 / np.sqrt(q.shape[-1])
            p = np.exp(q @ np.swapaxes(k, -1, -2) * sc - lse[..., None])
            dv = np.swapaxes(p, -1, -2) @ dout
            dp = dout @ np.swapaxes(v, -1, -2)
            ds = p * (dp - (dout * out).sum(-1, keepdims=True)) * sc
            return (ds @ k).astype(q.dtype), (np.swapaxes(ds, -1, -2) @ q).astype(q.dtype), dv.astype(q.dtype)
    return [Attention, AttentionGrad]


def test_custom_attention_export():
    from onnx.reference import ReferenceEvaluator
    torch.manual_seed(0)
    cfg = DiTConfig(width=32, blocks=2, heads=2, text_dim=16, vocab_size=22, max_len=12, motion_block=1)
    dit, te = DiT(cfg), TextEncoder(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = tempfile.mkdtemp(prefix="fvmt_custom_")
    paths = export_all(dit.eval(), te.eval(), d, graphs=("guidance_head", "guidance_grad"), custom_attention=True)
    for key, p in paths.items():
        m = onnx.load(p)
        ops = [(n.domain, n.op_type) for n in m.graph.node]
        assert ("fastvmt", "Attention") in ops, key
        assert ("", "Softmax") not in ops, key
        if key == "guidance_grad":
            assert ("fastvmt", "AttentionGrad") in ops
        assert [i.type.tensor_type.shape.dim[0].dim_param for i in m.graph.input][0] == "B"
    set_attention_impl("math")
    B, Fr, h, w, L = 2, 3, 2, 3, 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, Fr, 4 * h, 4 * w, generator=g)
    t = torch.rand(B, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    cos, sin = rope_tables(Fr, h, w, cfg)
    xr = x.clone().requires_grad_(True)
    q, k = dit.guidance_qk(xr, t, text, cos, sin)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    (dx,) = torch.autograd.grad((q, k), (xr,), (dq, dk))
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
    ev = ReferenceEvaluator(paths["guidance_head"], new_ops=_np_ops())
    oq, ok = ev.run(None, feeds)
    ev = ReferenceEvaluator(paths["guidance_grad"], new_ops=_np_ops())
    (odx,) = ev.run(None, {**feeds, "dq": dq.detach().numpy(), "dk": dk.detach().numpy()})
    rel = lambda a, b: float(np.linalg.norm(a - b.detach().numpy()) / np.linalg.norm(b.detach().numpy()))
    errs = (rel(oq, q), rel(ok, k), rel(odx, dx))
    print("custom-attention graphs vs torch (q, k, dx):", errs)
    assert max(errs) < 1e-4
