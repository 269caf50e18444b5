"""Regenerate bench/wan/tests/fixtures/wan-tiny: diffusers' tiny random Wan exported the way the
benchmark exports Wan2.1-1.3B (fp16 weights with diffusers' fp32 modules, custom attention with
a local window, a random text encoder, a 'vae'-latent manifest), plus test vectors from the
PyTorch model it came from (eager, the custom attention op's own torch implementation).

    cd onnx && python3 scripts/make_wan_tiny_fixture.py [--out ../bench/wan/tests/fixtures/wan-tiny]

The Rust test bench/wan/tests/cpu_run.rs loads it with the plugin on CPU.

    python3 scripts/make_wan_tiny_fixture.py --fused-modulation   # -> fixtures/wan-tiny-fm

writes the forward graphs only (denoiser, guidance_head) with Wan's fp32 norm/modulation islands
as fastvmt.norm nodes (export_wan.py --fused-modulation); its vectors come from the unfused
PyTorch model, so the test checks the fused graph against diffusers' own computation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fastvmt_onnx.export_wan import (WanGraph, export_wan, random_text_encoder, tiny_wan, to_dtype,  # noqa: E402
                                     write_wan_manifest)
from fastvmt_onnx.model import set_attention_impl  # noqa: E402
from fastvmt_onnx.model_np import rope_axes_dim, rope_tables_np  # noqa: E402

LOCAL = (1, 1)
MOTION_BLOCK = 1
TEXT_LEN = 16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "../../bench/wan/tests/fixtures/wan-tiny"))
    ap.add_argument("--fused-modulation", action="store_true",
                    help="the forward graphs with fastvmt.norm nodes, into fixtures/wan-tiny-fm by default")
    a = ap.parse_args()
    fm = a.fused_modulation
    out = os.path.abspath(a.out + "-fm" if fm and a.out == ap.get_default("out") else a.out)
    wan = to_dtype(tiny_wan(), torch.float16)
    graphs = ("denoiser", "guidance_head") if fm else ("denoiser", "guidance_head", "guidance_grad", "guidance_step")
    export_wan(wan, out, MOTION_BLOCK, custom_attention=True, local_window=LOCAL, graphs=graphs,
               fused_modulation=fm)
    random_text_encoder(os.path.join(out, "text_encoder.onnx"), wan.config.text_dim)
    write_wan_manifest(wan, out, "wan-tiny-fp16-local" + ("-fm" if fm else ""),
                       "diffusers' tiny random Wan, fp16, local window (1,1): the benchmark's export route at "
                       "test size (onnx/scripts/make_wan_tiny_fixture.py)"
                       + (", norm/modulation as fastvmt.norm nodes" if fm else ""),
                       MOTION_BLOCK, TEXT_LEN, "fp16", True, LOCAL, fused_modulation=fm)

    # Test vectors: one latent of 4 frames x 8 x 10 (token grid 4 x 4 x 5), through the torch
    # graphs with the custom op's eager implementation (the exact reference of the ORT op).
    set_attention_impl("custom", local=LOCAL)
    g = torch.Generator().manual_seed(7)
    cfg = wan.config
    x = torch.randn(1, cfg.in_channels, 4, 8, 10, generator=g)
    t = torch.tensor([0.7])
    text = torch.randn(1, TEXT_LEN, cfg.text_dim, generator=g)
    cos, sin = (torch.from_numpy(v) for v in rope_tables_np(4, 4, 5, rope_axes_dim(cfg.attention_head_dim)))
    with torch.no_grad():
        v = WanGraph(wan, "denoiser", MOTION_BLOCK)(x, t, text, cos, sin)
        q, k = WanGraph(wan, "guidance_head", MOTION_BLOCK)(x, t, text, cos, sin)
    dq, dk = torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)
    dx = WanGraph(wan, "guidance_grad", MOTION_BLOCK)(x, t, text, cos, sin, dq, dk)
    set_attention_impl("math")
    if fm:  # forward graphs only
        dq = dk = dx = None
    vec = os.path.join(out, "vectors")
    os.makedirs(vec, exist_ok=True)
    index = {}
    for name, arr in dict(x=x, t=t, text=text, velocity=v, q=q, k=k, dq=dq, dk=dk, dx=dx).items():
        if arr is None:
            continue
        arr = arr.detach().float().numpy().astype("<f4")
        arr.tofile(os.path.join(vec, name + ".bin"))
        index[name] = list(arr.shape)
    with open(os.path.join(vec, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
