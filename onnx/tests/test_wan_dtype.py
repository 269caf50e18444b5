"""The Wan exporter's reduced-precision route (export_wan.to_dtype, WanGraph's in-graph casts):
diffusers' fp32 modules stay fp32, graph inputs/outputs stay float32, and the fp16 graph agrees
with the fp32 one on fresh random inputs."""
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the Wan tests need torch")
pytest.importorskip("diffusers", reason="diffusers not installed: the Wan tests need it")

from fastvmt_onnx.export_wan import WanGraph, example, tiny_wan, to_dtype  # noqa: E402


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_to_dtype_keeps_diffusers_fp32_modules():
    wan = to_dtype(tiny_wan(), torch.float16)
    kept = {n for n, p in wan.named_parameters() if p.dtype == torch.float32}
    assert any("scale_shift_table" in n for n in kept)
    assert any("time_embedder" in n for n in kept)
    assert all(p.dtype == torch.float16 for n, p in wan.named_parameters() if "blocks.0.attn1" in n)


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_graphs_match_fp32_with_float32_io(seed):
    ref = tiny_wan()
    half = to_dtype(tiny_wan(), torch.float16)
    x, t, text, cos, sin, dq, dk = example(ref, B=2, Fr=3, hh=3, ww=4, L=5, seed=seed, grad=True)
    with torch.no_grad():
        v32 = WanGraph(ref, "denoiser")(x, t, text, cos, sin)
        v16 = WanGraph(half, "denoiser")(x, t, text, cos, sin)
        q32, k32 = WanGraph(ref, "guidance_head")(x, t, text, cos, sin)
        q16, k16 = WanGraph(half, "guidance_head")(x, t, text, cos, sin)
    dx32 = WanGraph(ref, "guidance_grad")(x, t, text, cos, sin, dq, dk)
    dx16 = WanGraph(half, "guidance_grad")(x, t, text, cos, sin, dq, dk)
    for got in (v16, q16, k16, dx16):
        assert got.dtype == torch.float32  # the casts are inside the graph
    for name, a, b in (("velocity", v16, v32), ("q", q16, q32), ("k", k16, k32), ("dx", dx16, dx32)):
        assert rel(a, b) < 5e-3, (name, rel(a, b))
