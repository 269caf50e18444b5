"""ONNX Runtime vs PyTorch parity of all graphs on a small random model, at 3 shapes, and the
gradient graph vs torch autograd. Needs torch (skipped with the reason printed where absent)."""
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need torch (run them on the GPU host or after `pip install torch`)",
                            exc_type=ImportError)
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

from fastvmt_onnx.model import DiT, DiTConfig, TextEncoder, rope_tables, set_attention_impl  # noqa: E402
from fastvmt_onnx.export import export_all  # noqa: E402

SHAPES = [  # B, F, h, w, L
    (1, 2, 3, 4, 5),
    (2, 5, 2, 3, 12),
    (3, 4, 6, 5, 9),
]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    cfg = DiTConfig(width=48, blocks=3, heads=2, text_dim=32, vocab_size=22, max_len=12, motion_block=1)
    dit, te = DiT(cfg), TextEncoder(cfg)
    with torch.no_grad():  # make the zero-initialised (adaLN-zero) parameters non-trivial
        for p in list(dit.parameters()) + list(te.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    set_attention_impl("math")
    d = tempfile.mkdtemp(prefix="fvmt_parity_")
    paths = export_all(dit.eval(), te.eval(), d)
    sess = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    return cfg, dit, te, sess


def _inputs(cfg, B, Fr, h, w, L, seed):
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch_size
    x = torch.randn(B, 3, Fr * pt, h * ph, w * pw, generator=g)
    t = torch.rand(B, generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=g)
    cos, sin = rope_tables(Fr, h, w, cfg)
    return x, t, tokens, cos, sin


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_graphs(exported, shape):
    cfg, dit, te, sess = exported
    x, t, tokens, cos, sin = _inputs(cfg, *shape, seed=hash(shape) % 1000)
    with torch.no_grad():
        text = te(tokens)
        v = dit(x, t, text, cos, sin)
        q, k = dit.guidance_qk(x, t, text, cos, sin)
    (o_text,) = sess["text_encoder"].run(None, {"tokens": tokens.numpy()})
    assert rel(o_text, text) < 1e-4
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
    (o_v,) = sess["denoiser"].run(None, feeds)
    o_q, o_k = sess["guidance_head"].run(None, feeds)
    e = (rel(o_v, v), rel(o_q, q), rel(o_k, k))
    print("shape", shape, "rel err velocity/q/k", e)
    assert max(e) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_graph_vs_autograd(exported, shape):
    cfg, dit, te, sess = exported
    x, t, tokens, cos, sin = _inputs(cfg, *shape, seed=7 + hash(shape) % 1000)
    with torch.no_grad():
        text = te(tokens)
    xr = x.clone().requires_grad_(True)
    q, k = dit.guidance_qk(xr, t, text, cos, sin)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    (dx,) = torch.autograd.grad((q, k), (xr,), (dq, dk))
    feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy(),
                 dq=dq.detach().numpy(), dk=dk.detach().numpy())
    (o_dx,) = sess["guidance_grad"].run(None, feeds)
    e = rel(o_dx, dx)
    print("shape", shape, "rel err dx", e)
    assert e < 1e-4
    # and a directional finite-difference check of the VJP in float64 (torch), loose tolerance
    d64 = dit.double()
    try:
        u = torch.randn_like(x, dtype=torch.float64)
        eps = 1e-6
        def f(z):
            qq, kk = d64.guidance_qk(z, t.double(), text.double(), cos.double(), sin.double())
            return (qq * dq.double()).sum() + (kk * dk.double()).sum()
        fd = (f(x.double() + eps * u) - f(x.double() - eps * u)) / (2 * eps)
        an = (torch.from_numpy(o_dx).double() * u).sum()
        assert abs(float(fd - an)) <= 1e-3 * max(1.0, abs(float(fd)))
    finally:
        dit.float()


def test_dynamic_dims(exported):
    _, _, _, sess = exported
    for key, s in sess.items():
        for i in s.get_inputs():
            if i.name in ("x", "dx", "velocity"):
                assert i.shape[0] == "B" and i.shape[2:] == ["F", "H", "W"], (key, i.shape)
            if i.name in ("rope_cos", "rope_sin"):
                assert i.shape[0] == "N", (key, i.shape)
            if i.name in ("text", "tokens"):
                assert i.shape[:2] == ["B", "L"], (key, i.shape)
