"""Regenerates plugin/tests/fixtures/custom-attention/: one small random DiT exported three times
as complete bundles, plus torch expectations for the local-window bundle.

    cd onnx && python3 scripts/make_custom_attention_fixtures.py [--out ../plugin/tests/fixtures/custom-attention]

  plain/   plain ONNX attention (Softmax + MatMul)
  dense/   --custom-attention: fastvmt.Attention / fastvmt.AttentionGrad nodes, dense
  local/   --custom-attention --local-window 1,2: the blocks' self-attention is a 3D window
  local/test_vectors/  inputs and the torch model's outputs with the exact masked attention
                       (grid 4 x 6 x 7 tokens, so the window is local on all three axes)
  ops/attention_{float,float16,bfloat16}.onnx  one Attention + one AttentionGrad node (local 1,1,
                       scale 0.3, grid input) per element type, for the operator-level tests
  ops/missing_grid.onnx  a local Attention node without its grid input (must fail with a clear error)

  --ops-only regenerates ops/ alone (onnx.helper only: no export, seconds).

plugin/tests/custom_attention.rs runs them through ONNX Runtime with the plugin's custom operators.
Node metadata (source locations) is stripped to keep the files small; the bundles are fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastvmt_onnx import data as D  # noqa: E402
from fastvmt_onnx.export import export_all, write_manifest  # noqa: E402
from fastvmt_onnx.model import (DiT, DiTConfig, GuidanceGrad, TextEncoder, rope_tables,  # noqa: E402
                                set_attention_impl)

LOCAL = (1, 2)
GRID = (4, 6, 7)  # frames, rows, cols of the token grid of the local test vectors
DEFAULTS = {"frames": 4, "height": 24, "width": 28, "steps": 4, "cfg": 2.0, "shift": 1.0, "spatial_radius": 2}


def model(seed=0):
    torch.manual_seed(seed)
    cfg = DiTConfig(width=32, blocks=2, heads=2, ffn_mult=2.0, text_dim=16, vocab_size=len(D.VOCAB),
                    max_len=12, motion_block=1)
    dit, te = DiT(cfg), TextEncoder(cfg)
    with torch.no_grad():  # random weights with every path live (gates and the output layer start at 0)
        for p in list(dit.parameters()) + list(te.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
    return dit.eval(), te.eval()


def strip(path):
    import onnx
    m = onnx.load(path)
    for n in m.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    del m.metadata_props[:]
    onnx.save(m, path)


def bundle(dit, te, out, name, custom, local):
    if os.path.isdir(out):
        shutil.rmtree(out)
    paths = export_all(dit, te, out, custom_attention=custom, local_window=local)
    for p in paths.values():
        strip(p)
    write_manifest(out, dit.cfg, DEFAULTS, name=name,
                   description=f"test fixture: random DiT, {name} attention (onnx/scripts/make_custom_attention_fixtures.py)",
                   custom_attention=custom, local_window=local)


def test_vectors(dit, te, out, seed=7):
    tv = os.path.join(out, "test_vectors")
    os.makedirs(tv, exist_ok=True)
    index = {}

    def put(name, arr):
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64"}[arr.dtype]
        arr.astype(arr.dtype.newbyteorder("<")).tofile(os.path.join(tv, name + ".bin"))
        index[name] = {"dtype": dt, "shape": list(arr.shape), "file": name + ".bin"}

    cfg = dit.cfg
    g = torch.Generator().manual_seed(seed)
    B, (Fr, hh, ww) = 2, GRID
    pt, ph, pw = cfg.patch_size
    x = torch.randn(B, cfg.in_channels, Fr * pt, hh * ph, ww * pw, generator=g)
    t = torch.tensor([0.8, 0.35])
    text = torch.randn(B, cfg.max_len, cfg.text_dim, generator=g)
    cos, sin = rope_tables(Fr, hh, ww, cfg)
    N = Fr * hh * ww
    dq = torch.randn(B, cfg.heads, N, cfg.head_dim, generator=g)
    dk = torch.randn(B, cfg.heads, N, cfg.head_dim, generator=g)
    results = {}
    for mode in ("custom", "math"):  # the custom op's reference and an explicit masked softmax agree
        set_attention_impl(mode, local=LOCAL)
        with torch.no_grad():
            v = dit(x, t, text, cos, sin)
            q, k = dit.guidance_qk(x, t, text, cos, sin)
        dx = GuidanceGrad(dit)(x, t, text, cos, sin, dq, dk)
        results[mode] = (v, q, k, dx)
    set_attention_impl("math")
    with torch.no_grad():
        dense_v = dit(x, t, text, cos, sin)
    for a, b in zip(results["custom"], results["math"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), float((a - b).abs().max())
    v, q, k, dx = results["custom"]
    rel = float((v - dense_v).norm() / dense_v.norm())
    assert rel > 1e-3, f"the window changes nothing ({rel}): pick a larger grid"
    for name, arr in dict(x=x, t=t, text=text, rope_cos=cos, rope_sin=sin, dq=dq, dk=dk,
                          velocity=v, q=q, k=k, dx=dx).items():
        put(name, arr.detach().numpy())
    index["grid"] = {"F": Fr, "h": hh, "w": ww, "local_window": list(LOCAL),
                     "note": f"velocity/q/k/dx from the torch model with the masked local attention; "
                             f"the dense model's velocity differs by {rel:.3f} (relative)"}
    with open(os.path.join(tv, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


def op_models(out):
    """Single-node graphs for the operator tests (built with onnx.helper, no export involved)."""
    import onnx
    from onnx import TensorProto as TP, helper as H
    os.makedirs(out, exist_ok=True)
    dims = ["B", "H", "N", "d"]
    for name, et in (("float", TP.FLOAT), ("float16", TP.FLOAT16), ("bfloat16", TP.BFLOAT16)):
        t = lambda n, shape=dims: H.make_tensor_value_info(n, et, shape)  # noqa: E731
        attrs = dict(scale=0.3, temporal_radius=1, spatial_radius=1)
        nodes = [H.make_node("Attention", ["q", "k", "v", "grid"], ["out", "lse"], "attn", domain="fastvmt", **attrs),
                 H.make_node("AttentionGrad", ["dout", "q", "k", "v", "out", "lse", "grid"], ["dq", "dk", "dv"],
                             "attn_grad", domain="fastvmt", **attrs)]
        g = H.make_graph(nodes, f"attention_{name}",
                         [t("q"), t("k", ["B", "H", "M", "d"]), t("v", ["B", "H", "M", "d"]), t("dout"),
                          H.make_tensor_value_info("grid", TP.INT64, [3])],
                         [t("out"), H.make_tensor_value_info("lse", TP.FLOAT, ["B", "H", "N"]),
                          t("dq"), t("dk", ["B", "H", "M", "d"]), t("dv", ["B", "H", "M", "d"])])
        m = H.make_model(g, opset_imports=[H.make_opsetid("", 18), H.make_opsetid("fastvmt", 1)], ir_version=9)
        onnx.save(m, os.path.join(out, f"attention_{name}.onnx"))
    t = lambda n: H.make_tensor_value_info(n, TP.FLOAT, dims)  # noqa: E731
    node = H.make_node("Attention", ["q", "k", "v"], ["out", "lse"], "local_without_grid", domain="fastvmt",
                       scale=0.3, temporal_radius=1, spatial_radius=1)
    g = H.make_graph([node], "missing_grid", [t("q"), t("k"), t("v")],
                     [t("out"), H.make_tensor_value_info("lse", TP.FLOAT, ["B", "H", "N"])])
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 18), H.make_opsetid("fastvmt", 1)], ir_version=9)
    onnx.save(m, os.path.join(out, "missing_grid.onnx"))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "plugin", "tests", "fixtures", "custom-attention"))
    ap.add_argument("--ops-only", action="store_true", help="only the single-node operator graphs (ops/)")
    a = ap.parse_args()
    op_models(os.path.join(a.out, "ops"))
    if a.ops_only:
        print("wrote", os.path.abspath(os.path.join(a.out, "ops")))
        return
    dit, te = model()
    bundle(dit, te, os.path.join(a.out, "plain"), "plain", False, None)
    bundle(dit, te, os.path.join(a.out, "dense"), "custom-dense", True, None)
    bundle(dit, te, os.path.join(a.out, "local"), "custom-local", True, LOCAL)
    test_vectors(dit, te, os.path.join(a.out, "local"))
    print("wrote", os.path.abspath(a.out))


if __name__ == "__main__":
    main()
