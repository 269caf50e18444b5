"""Exporter option: attention as fastvmt.Attention / fastvmt.AttentionGrad custom-domain nodes.

The exported graphs (dense, and with --local-window) are checked structurally (custom nodes with
their attributes and grid input, no Softmax of the plain attention) and numerically with onnx's
ReferenceEvaluator, the two custom ops implemented in numpy from the definition (mask included),
against torch (math attention, explicit masked softmax for the window). The torch custom op's
forward and autograd are checked against a plain masked softmax attention. Needs torch."""
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the custom-attention export test needs torch",
                            exc_type=ImportError)
onnx = pytest.importorskip("onnx", reason="onnx not installed")

from fastvmt_onnx.model import DiT, DiTConfig, TextEncoder, rope_tables, set_attention_impl  # noqa: E402
from fastvmt_onnx.export import export_all  # noqa: E402


def _np_visible(grid, tr, sr, nk):
    """[N, Nk] visibility written from the definition (kernels/src/attention/mod.rs), loop by loop."""
    F, h, w = (int(g) for g in grid)
    n = F * h * w

    def inside(c, kc, r, e):
        size = min(2 * r + 1, e)
        start = min(max(c - r, 0), e - size)
        return start <= kc < start + size
    m = np.ones((n, nk), dtype=bool)
    for q in range(n):
        qf, qy, qx = q // (h * w), (q % (h * w)) // w, q % w
        for k in range(n):
            kf, ky, kx = k // (h * w), (k % (h * w)) // w, k % w
            m[q, k] = inside(qf, kf, tr, F) and inside(qy, ky, sr, h) and inside(qx, kx, sr, w)
    return m


def _np_logits(q, k, grid, scale, temporal_radius, spatial_radius):
    sc = scale if scale else 1.0 / np.sqrt(q.shape[-1])
    s = (q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64)) * sc
    if temporal_radius is not None and temporal_radius >= 0:
        assert grid is not None and grid.dtype == np.int64 and grid.shape == (3,), grid
        s = np.where(_np_visible(grid, temporal_radius, spatial_radius, k.shape[-2]), s, -np.inf)
    return s, sc


def _np_ops():
    """numpy implementations of both nodes (inputs, optional grid, attributes as in the schema).
    The attributes are read from the node itself: onnx's evaluator fills in the standard ONNX
    Attention's attribute defaults (same op name, other domain)."""
    from onnx.reference.op_run import OpRun

    def attrs(node):
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        return a.get("scale"), a.get("temporal_radius"), a.get("spatial_radius")

    class Attention(OpRun):
        op_domain = "fastvmt"

        def _run(self, q, k, v, grid=None, **_):
            s, _ = _np_logits(q, k, grid, *attrs(self.onnx_node))
            m = s.max(-1, keepdims=True)
            lse = np.log(np.exp(s - m).sum(-1, keepdims=True)) + m
            p = np.exp(s - lse)
            return (p @ v).astype(q.dtype), lse[..., 0].astype(np.float32)

    class AttentionGrad(OpRun):
        op_domain = "fastvmt"

        def _run(self, dout, q, k, v, out, lse, grid=None, **_):
            assert lse.dtype == np.float32
            s, sc = _np_logits(q, k, grid, *attrs(self.onnx_node))
            p = np.exp(s - lse[..., None])
            dv = np.swapaxes(p, -1, -2) @ dout
            dp = dout @ np.swapaxes(v, -1, -2)
            ds = p * (dp - (dout * out).sum(-1, keepdims=True)) * sc
            return (ds @ k).astype(q.dtype), (np.swapaxes(ds, -1, -2) @ q).astype(q.dtype), dv.astype(q.dtype)
    return [Attention, AttentionGrad]


def _small_dit():
    torch.manual_seed(0)
    cfg = DiTConfig(width=32, blocks=2, heads=2, text_dim=16, vocab_size=22, max_len=12, motion_block=1)
    dit, te = DiT(cfg), TextEncoder(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, dit.eval(), te.eval()


def _check_graphs(cfg, dit, paths, grid, local):
    """Structure of the exported graphs, then their numbers (custom ops in numpy) against torch."""
    from onnx.reference import ReferenceEvaluator
    for key, p in paths.items():
        m = onnx.load(p)
        assert ("fastvmt", 1) in [(o.domain, o.version) for o in m.opset_import], key
        nodes = [n for n in m.graph.node if n.domain == "fastvmt"]
        ops = {n.op_type for n in nodes}
        assert "Attention" in ops, key
        assert ("", "Softmax") not in [(n.domain, n.op_type) for n in m.graph.node], key
        if key == "guidance_grad":
            assert "AttentionGrad" in ops
        for n in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["scale"] == pytest.approx(1 / np.sqrt(cfg.head_dim)), (key, attrs)
            assert isinstance(attrs["scale"], float)
            if "temporal_radius" in attrs:  # a local node: radii and the grid input
                assert local is not None and (attrs["temporal_radius"], attrs["spatial_radius"]) == local
                assert len(n.input) == (4 if n.op_type == "Attention" else 7), n.input
        n_local = sum("temporal_radius" in [a.name for a in n.attribute] for n in nodes)
        assert n_local == (0 if local is None else {"guidance_head": 1, "guidance_grad": 2}[key]), (key, n_local)
        assert [i.type.tensor_type.shape.dim[0].dim_param for i in m.graph.input][0] == "B"
    set_attention_impl("math", local=local)  # torch reference: explicit masked softmax
    B, (Fr, h, w), L = 2, grid, 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, Fr, 4 * h, 4 * w, generator=g)
    t = torch.rand(B, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    cos, sin = rope_tables(Fr, h, w, cfg)
    xr = x.clone().requires_grad_(True)
    q, k = dit.guidance_qk(xr, t, text, cos, sin)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    (dx,) = torch.autograd.grad((q, k), (xr,), (dq, dk))
    set_attention_impl("math")
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
    ev = ReferenceEvaluator(paths["guidance_head"], new_ops=_np_ops())
    oq, ok = ev.run(None, feeds)
    ev = ReferenceEvaluator(paths["guidance_grad"], new_ops=_np_ops())
    (odx,) = ev.run(None, {**feeds, "dq": dq.detach().numpy(), "dk": dk.detach().numpy()})
    rel = lambda a, b: float(np.linalg.norm(a - b.detach().numpy()) / np.linalg.norm(b.detach().numpy()))
    return rel(oq, q), rel(ok, k), rel(odx, dx)


def test_custom_attention_export():
    cfg, dit, te = _small_dit()
    d = tempfile.mkdtemp(prefix="fvmt_custom_")
    paths = export_all(dit, te, d, graphs=("guidance_head", "guidance_grad"), custom_attention=True)
    errs = _check_graphs(cfg, dit, paths, (3, 2, 3), None)
    print("custom-attention graphs vs torch (q, k, dx):", errs)
    assert max(errs) < 1e-4


def test_custom_attention_export_local_window():
    """--local-window 1,1: block 0's self-attention is local in both graphs (grid from x's shape);
    evaluated at a grid other than the export's example, where the window is local on every axis."""
    cfg, dit, te = _small_dit()
    d = tempfile.mkdtemp(prefix="fvmt_custom_local_")
    paths = export_all(dit, te, d, graphs=("guidance_head", "guidance_grad"), custom_attention=True,
                       local_window=(1, 1))
    errs = _check_graphs(cfg, dit, paths, (4, 4, 5), (1, 1))
    print("local custom-attention graphs vs masked torch (q, k, dx):", errs)
    assert max(errs) < 1e-4


def _masked_reference(q, k, v, mask, scale):
    """Plain masked softmax attention (autograd through torch's own ops)."""
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1) @ v


@pytest.mark.parametrize("extra_keys", [0, 3])
def test_masked_custom_op_matches_plain_masked_attention(extra_keys):
    from fastvmt_onnx import custom_attention as ca
    grid, local = (3, 4, 5), (1, 1)
    n = grid[0] * grid[1] * grid[2]
    g = torch.Generator().manual_seed(3)
    B, H, d = 2, 2, 8
    q = torch.randn(B, H, n, d, generator=g, requires_grad=True)
    k = torch.randn(B, H, n + extra_keys, d, generator=g, requires_grad=True)
    v = torch.randn(B, H, n + extra_keys, d, generator=g, requires_grad=True)
    mask = torch.from_numpy(_np_visible(grid, *local, n + extra_keys))
    assert torch.equal(mask, ca.local_mask(*grid, *local, kv_len=n + extra_keys))
    visible = mask[:, :n].sum(1)
    assert bool((visible == 3 * 3 * 3).all()), "every query sees exactly (2r+1)^3 video keys"
    scale = 0.3
    out, lse = ca.attention(q, k, v, scale=scale, grid=grid, local=local)
    ref = _masked_reference(q, k, v, mask, scale)
    assert lse.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())
    want_lse = torch.logsumexp((q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")), -1)
    assert torch.allclose(lse, want_lse, atol=1e-5)
    dout = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert torch.allclose(a, b, atol=1e-5), (name, float((a - b).abs().max()))
    # dense (no grid) equals unmasked attention; scale 0 means 1/sqrt(d)
    out_d, _ = ca.attention(q, k, v)
    ref_d = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1) @ v
    assert torch.allclose(out_d, ref_d, atol=1e-5)
