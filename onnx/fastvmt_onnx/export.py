"""Export a trained DiT (model.py) to the FastVMT ONNX bundle.

    python -m fastvmt_onnx.export --ckpt ckpt.pt --out onnx/models/tiny-shapes [--test-vectors]

Writes text_encoder.onnx, denoiser.onnx, guidance_head.onnx, guidance_grad.onnx,
manifest.json (with sha256 of each file) and test_vectors/ (small inputs/outputs of every graph).
Route (see shared/notes/FINDINGS.md): torch.onnx.export(dynamo=True, opset 18) with every size
dynamic; the gradient graph is traced with the private torch.export._trace._export(strict=False,
pre_dispatch=False) around a module that calls torch.autograd.grad inside forward.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

from . import data as D
from .model import (DiT, DiTConfig, TextEncoder, Denoiser, GuidanceHead, GuidanceGrad, GuidanceStep,
                    rope_tables, set_attention_impl)

OPSET = 18
SYM = {"x": ["B", 3, "F", "H", "W"], "t": ["B"], "text": ["B", "L", "D"], "tokens": ["B", "L"],
       "rope_cos": ["N", "R"], "rope_sin": ["N", "R"], "q": ["B", "heads", "N", "head_dim"],
       "k": ["B", "heads", "N", "head_dim"], "dq": ["B", "heads", "N", "head_dim"],
       "dk": ["B", "heads", "N", "head_dim"], "dx": ["B", 3, "F", "H", "W"],
       "velocity": ["B", 3, "F", "H", "W"], "reference": ["P", "S", 2], "amf_config": [8], "loss": [1]}


def example_inputs(cfg: DiTConfig, B=2, Fr=3, hh=5, ww=4, L=7, seed=0, with_grad=False):
    """Example inputs with all-distinct sizes (so no dim gets specialised)."""
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch_size
    x = torch.randn(B, cfg.in_channels, Fr * pt, hh * ph, ww * pw, generator=g)
    t = torch.rand(B, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    cos, sin = rope_tables(Fr, hh, ww, cfg)
    ins = [x, t, text, cos, sin]
    if with_grad:
        N = Fr * hh * ww
        ins += [torch.randn(B, cfg.heads, N, cfg.head_dim, generator=g) for _ in range(2)]
    return tuple(ins)


def _dyn(names):
    A = torch.export.Dim.DYNAMIC
    out = []
    for n in names:
        shp = SYM[n]
        out.append({i: A for i, s in enumerate(shp) if isinstance(s, str) and s not in ("D", "R", "heads", "head_dim")})
    return tuple(out)


def _fix_io_names(path, in_names, out_names, cfg: DiTConfig):
    """Rename inputs/outputs and set readable symbolic dim names; verify static dims."""
    import onnx
    m = onnx.load(path, load_external_data=False)  # large models keep their external data file
    concrete = {"D": cfg.text_dim, "R": cfg.head_dim // 2, "heads": cfg.heads, "head_dim": cfg.head_dim}
    ren = {}
    for vi, n in zip(m.graph.input, in_names):
        ren[vi.name] = n
    for vi, n in zip(m.graph.output, out_names):
        ren[vi.name] = n
    for node in m.graph.node:
        node.input[:] = [ren.get(i, i) for i in node.input]
        node.output[:] = [ren.get(o, o) for o in node.output]
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.name = ren.get(vi.name, vi.name)
        dims = vi.type.tensor_type.shape.dim
        want = SYM[vi.name]
        assert len(dims) == len(want), (vi.name, dims, want)
        for d, w in zip(dims, want):
            if isinstance(w, str) and w not in concrete:
                if d.HasField("dim_value"):
                    raise RuntimeError(f"{path}: {vi.name} dim {w} was specialised to {d.dim_value}")
                d.dim_param = w
            else:
                val = concrete.get(w, w)
                if d.HasField("dim_param") or d.dim_value != val:
                    d.ClearField("dim_param")
                    d.dim_value = val
    onnx.save(m, path)
    # ONNX Runtime's contrib ops of the default domain (SimplifiedLayerNormalization, fused_ops.py)
    # have no schema in the onnx package, whose checker refuses them: ONNX Runtime checks those
    # graphs when it loads them (the tests do).
    if any(n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type) for n in m.graph.node):
        return
    if not any(o.domain == "fastvmt" for o in m.opset_import):  # custom domain: no schema in the checker
        onnx.checker.check_model(path, full_check=True)  # by path: works above 2 GB too
    else:
        onnx.checker.check_model(path)


def export_graph(module, args, names_in, names_out, path, cfg, grad=False, custom_attention=False,
                 extra_translation=None, optimize=True):
    """extra_translation: more custom_translation_table entries (e.g. amf_op's). optimize=False
    skips onnxscript's optimiser, which keeps every weight an initializer named by its parameter
    (materialize.py relies on it; ONNX Runtime folds the rest when it loads the graph)."""
    module.eval()
    dyn = _dyn(names_in)
    kw = {}
    table = dict(extra_translation or {})
    if custom_attention:
        from .custom_attention import translation_table
        table.update(translation_table())
    if table:
        kw["custom_translation_table"] = table
    if grad:
        from torch.export._trace import _export
        ep = _export(module, args, dynamic_shapes=dyn, strict=False, pre_dispatch=False)
        onx = torch.onnx.export(ep, args, dynamo=True, opset_version=OPSET, optimize=optimize, **kw)
    else:
        onx = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dyn,
                                input_names=names_in, output_names=names_out, optimize=optimize, **kw)
    onx.save(path)
    _fix_io_names(path, names_in, names_out, cfg)
    return path


class TextEncoderWrap(torch.nn.Module):
    def __init__(self, te):
        super().__init__()
        self.te = te

    def forward(self, tokens):
        return self.te(tokens)


# guidance_step (one run per real gradient, amf_op.py) is optional: not in the shipped bundle,
# whose size the GPU host's transfer limit watches (bench/wan/README.md has its CPU timing).
DEFAULT_GRAPHS = ("text_encoder", "denoiser", "guidance_head", "guidance_grad")
ALL_GRAPHS = DEFAULT_GRAPHS + ("guidance_step",)


def export_all(dit: DiT, te: TextEncoder, out_dir: str, graphs=DEFAULT_GRAPHS,
               custom_attention=False, local_window=None):
    """custom_attention=True: every attention becomes a fastvmt.Attention node (and its backward a
    fastvmt.AttentionGrad node in guidance_grad); needs the plugin's custom operators to run.
    local_window=(T, S) (with custom_attention): the self-attention of every block sees only the
    3D window of temporal radius T and spatial radius S (grid = the token grid of x, computed
    inside the graph from x's shape and fed to the node as an int64 [3] input)."""
    if local_window is not None and not custom_attention:
        raise ValueError("local_window needs custom_attention (plain ONNX attention is dense only)")
    set_attention_impl("custom" if custom_attention else "math", local=local_window)
    cfg = dit.cfg
    os.makedirs(out_dir, exist_ok=True)
    dit = dit.float().eval()
    te = te.float().eval()
    ex = example_inputs(cfg)
    exg = example_inputs(cfg, with_grad=True)
    base = ["x", "t", "text", "rope_cos", "rope_sin"]
    paths = {}
    if "text_encoder" in graphs:
        tok = torch.randint(0, cfg.vocab_size, (2, 7))
        paths["text_encoder"] = export_graph(TextEncoderWrap(te), (tok,), ["tokens"], ["text"],
                                             os.path.join(out_dir, "text_encoder.onnx"), cfg, custom_attention=custom_attention)
    if "denoiser" in graphs:
        paths["denoiser"] = export_graph(Denoiser(dit), ex, base, ["velocity"], os.path.join(out_dir, "denoiser.onnx"), cfg, custom_attention=custom_attention)
    if "guidance_head" in graphs:
        paths["guidance_head"] = export_graph(GuidanceHead(dit), ex, base, ["q", "k"], os.path.join(out_dir, "guidance_head.onnx"), cfg, custom_attention=custom_attention)
    if "guidance_grad" in graphs:
        paths["guidance_grad"] = export_graph(GuidanceGrad(dit), exg, base + ["dq", "dk"], ["dx"],
                                              os.path.join(out_dir, "guidance_grad.onnx"), cfg, grad=True,
                                              custom_attention=custom_attention)
    if "guidance_step" in graphs:
        from .amf_op import translation_table as amf_table
        x, t, text, cos, sin = ex
        g = torch.Generator().manual_seed(3)
        reference = torch.randn(5, 20, 2, generator=g)  # symbolic [P, S, 2] in the graph
        amf_config = torch.tensor([2.0, 0, 0, 0, 1.0, 1.0, -1.0, -1.0])
        paths["guidance_step"] = export_graph(GuidanceStep(dit), (x, t, text, cos, sin, reference, amf_config),
                                              base + ["reference", "amf_config"], ["loss", "dx"],
                                              os.path.join(out_dir, "guidance_step.onnx"), cfg, grad=True,
                                              custom_attention=custom_attention, extra_translation=amf_table())
    set_attention_impl("math")
    return paths


# ----------------------------------------------------------------------------- manifest
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def io_spec(path):
    import onnx
    m = onnx.load(path, load_external_data=False)
    tmap = {1: "float32", 7: "int64", 10: "float16", 16: "bfloat16"}

    def spec(vi):
        tt = vi.type.tensor_type
        return {"name": vi.name, "dtype": tmap[tt.elem_type],
                "shape": [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim]}
    return [spec(v) for v in m.graph.input], [spec(v) for v in m.graph.output]


def attention_manifest(custom_attention=False, local_window=None):
    """The manifest keys describing the attention: `attention` (dense or the local window) and,
    for custom-op graphs, `custom_ops` (domain -> version the graphs need; the plugin refuses
    versions it does not have)."""
    from .custom_attention import DOMAIN, VERSION
    out = {"attention": {"kind": "dense"}}
    if local_window is not None:
        out["attention"] = {"kind": "local", "temporal_radius": int(local_window[0]),
                            "spatial_radius": int(local_window[1])}
    if custom_attention:
        out["custom_ops"] = {DOMAIN: VERSION}
    return out


def write_manifest(out_dir, cfg: DiTConfig, defaults: dict, name="tiny-shapes", description="", training=None,
                   custom_attention=False, local_window=None):
    files = {}
    for key in ("denoiser", "guidance_head", "guidance_grad", "text_encoder", "guidance_step"):
        p = os.path.join(out_dir, key + ".onnx")
        if key == "guidance_step" and not os.path.exists(p):
            continue  # optional graph
        ins, outs = io_spec(p)
        files[key] = {"path": key + ".onnx", "sha256": sha256(p), "bytes": os.path.getsize(p), "inputs": ins, "outputs": outs}
    dt, dh, dw = cfg.rope_axes_dim
    man = {
        "format": "fastvmt-bundle",
        "format_version": 1,
        "name": name,
        "description": description,
        "latent": {"kind": "pixels", "channels": cfg.in_channels, "temporal_compression": 1,
                   "spatial_compression": 1, "value_range": [-1, 1]},
        "patch_size": list(cfg.patch_size),
        "width": cfg.width,
        "blocks": cfg.blocks,
        "heads": cfg.heads,
        "head_dim": cfg.head_dim,
        "motion_block": cfg.motion_block,
        "token_layout": "frames_h_w",
        "scheduler": {"kind": "flow_matching", "prediction": "velocity", "shift": defaults.get("shift", 1.0),
                      "t_range": [0, 1],
                      "x_t": "x_t = (1 - t) * x0 + t * noise; velocity = noise - x0; sample from t=1 to t=0",
                      "sigma_shift": "sigma' = shift * s / (1 + (shift - 1) * s) applied to s = linspace(1, 0, steps + 1); Euler x += (sigma'[i+1] - sigma'[i]) * v; t fed to the model = sigma'[i]"},
        "text": {"tokenizer": "words", "lowercase": True, "split": "[^a-z0-9]+", "vocab": list(D.VOCAB),
                 "pad_id": D.PAD_ID, "unk_id": D.UNK_ID, "max_len": cfg.max_len, "dim": cfg.text_dim,
                 "unconditional": "all pad_id (the empty prompt)"},
        "rope": {"theta": cfg.rope_theta, "axes_dim": [dt, dh, dw], "axes": ["frames", "rows", "cols"],
                 "table_shape": ["N", cfg.head_dim // 2],
                 "columns": f"[0,{dt//2}) frame axis, [{dt//2},{(dt+dh)//2}) row axis, [{(dt+dh)//2},{cfg.head_dim//2}) col axis",
                 "freq": "for axis a with dim d_a and k in [0, d_a/2): freq = theta ** (-(2*k) / d_a); angle = pos_a * freq; pos = integer token index (0-based) along that axis",
                 "token_index": "n = (f * h + i) * w + j (f frame, i row, j col of the token grid)",
                 "pairs": "interleaved: (q[2c], q[2c+1]) -> (q[2c]*cos[n,c] - q[2c+1]*sin[n,c], q[2c]*sin[n,c] + q[2c+1]*cos[n,c])",
                 "precision": "angles computed in float64, cos/sin cast to float32"},
        **attention_manifest(custom_attention, local_window),
        "defaults": defaults,
        "files": files,
    }
    if "guidance_step" in files:
        from .amf_op import DOMAIN as AMF_DOMAIN, VERSION as AMF_VERSION
        man.setdefault("custom_ops", {})[AMF_DOMAIN] = AMF_VERSION
    if training:
        man["training"] = training
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    return man


# ----------------------------------------------------------------------------- test vectors
def write_test_vectors(out_dir, dit: DiT, te: TextEncoder, seed=123, local_window=None):
    """Small inputs/outputs of every graph, computed with the torch model (fp32, math attention,
    with the exact masked local window when local_window is given)."""
    set_attention_impl("math", local=local_window)
    cfg = dit.cfg
    tv = os.path.join(out_dir, "test_vectors")
    os.makedirs(tv, exist_ok=True)
    index = {}

    def put(name, arr, graph, note=None):
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64"}[arr.dtype]
        arr.astype(arr.dtype.newbyteorder("<")).tofile(os.path.join(tv, name + ".bin"))
        index[name] = {"dtype": dt, "shape": list(arr.shape), "file": name + ".bin", "graph": graph}
        if note:
            index[name]["note"] = note

    prompts = ["a red circle on a black background", "A Blue star, and an unknown thing on white background!"]
    toks = np.stack([D.tokenize(p, cfg.max_len) for p in prompts])
    B, Fr, hh, ww = 2, 3, 2, 2
    pt, ph, pw = cfg.patch_size
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tok_t = torch.from_numpy(toks)
        text = te(tok_t)
        put("tokens", toks, "text_encoder", note="tokenizer output for prompts: " + json.dumps(prompts))
        put("text", text.numpy(), "text_encoder")
        cos, sin = rope_tables(Fr, hh, ww, cfg)
        x = torch.randn(B, cfg.in_channels, Fr * pt, hh * ph, ww * pw, generator=g)
        t = torch.tensor([0.9, 0.3])
        put("x", x.numpy(), "denoiser,guidance_head,guidance_grad")
        put("t", t.numpy(), "denoiser,guidance_head,guidance_grad")
        put("rope_cos", cos.numpy(), "denoiser,guidance_head,guidance_grad", note=f"rope table for F={Fr}, h={hh}, w={ww}")
        put("rope_sin", sin.numpy(), "denoiser,guidance_head,guidance_grad")
        v = dit(x, t, text, cos, sin)
        put("velocity", v.numpy(), "denoiser", note="denoiser(x, t, text, rope_cos, rope_sin)")
        q, k = dit.guidance_qk(x, t, text, cos, sin)
        put("q", q.numpy(), "guidance_head")
        put("k", k.numpy(), "guidance_head")
        dq = torch.randn(q.shape, generator=g)
        dk = torch.randn(k.shape, generator=g)
        put("dq", dq.numpy(), "guidance_grad")
        put("dk", dk.numpy(), "guidance_grad")
    dx = GuidanceGrad(dit)(x, t, text, cos, sin, dq, dk)
    put("dx", dx.detach().numpy(), "guidance_grad", note="guidance_grad(x, t, text, rope_cos, rope_sin, dq, dk)")
    set_attention_impl("math")
    with open(os.path.join(tv, "index.json"), "w") as f:
        index["tokens"]["prompts"] = prompts
        index["rope_cos"]["grid"] = {"F": Fr, "h": hh, "w": ww}
        index["x"]["note"] = f"B={B}, F={Fr * pt}, H={hh * ph}, W={ww * pw} (token grid {Fr} x {hh} x {ww})"
        json.dump(index, f, indent=1)
    return index


DESCRIPTION = ("Tiny Wan-like pixel-space video DiT (2.2M params) trained with flow matching on synthetic clips of "
               "coloured shapes (6 colours x 5 shapes x 4 backgrounds) moving along varied trajectories; prompts like "
               "'a red circle on a black background'. 8 frames x 48 x 48 by default. See onnx/README.md.")


def load_checkpoint(path, map_location="cpu"):
    ck = torch.load(path, map_location=map_location, weights_only=False)
    cfg = DiTConfig(**{**ck["config"], "patch_size": tuple(ck["config"]["patch_size"])})
    dit, te = DiT(cfg), TextEncoder(cfg)
    dit.load_state_dict({k: v.float() for k, v in ck["dit"].items()})
    te.load_state_dict({k: v.float() for k, v in ck["text"].items()})
    return dit.eval(), te.eval(), ck


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", default="onnx/models/tiny-shapes")
    ap.add_argument("--defaults", default=None, help="JSON file of defaults to put in the manifest")
    ap.add_argument("--description", default=DESCRIPTION)
    ap.add_argument("--manifest-only", action="store_true", help="only rewrite manifest.json (hashes, specs)")
    ap.add_argument("--graphs", default=",".join(DEFAULT_GRAPHS),
                    help=f"export these graphs (the others are kept as they are); any of {','.join(ALL_GRAPHS)}")
    ap.add_argument("--custom-attention", action="store_true",
                    help="emit attention as fastvmt.Attention / fastvmt.AttentionGrad nodes (needs the plugin's custom operators)")
    ap.add_argument("--local-window", default=None, metavar="T,S",
                    help="with --custom-attention: the blocks' self-attention sees only a 3D window of temporal "
                         "radius T and spatial radius S tokens (recorded in the manifest)")
    a = ap.parse_args()
    local = None
    if a.local_window:
        if not a.custom_attention:
            ap.error("--local-window needs --custom-attention")
        try:
            local = tuple(int(v) for v in a.local_window.split(","))
            assert len(local) == 2 and min(local) >= 0
        except (ValueError, AssertionError):
            ap.error(f"--local-window wants T,S (two integers >= 0), got {a.local_window!r}")
    dit, te, ck = load_checkpoint(a.ckpt)
    if not a.manifest_only:
        graphs = tuple(g for g in a.graphs.split(",") if g)
        if any(g not in ALL_GRAPHS for g in graphs):
            ap.error(f"--graphs: choose from {','.join(ALL_GRAPHS)}")
        export_all(dit, te, a.out, graphs=graphs, custom_attention=a.custom_attention, local_window=local)
        if set(DEFAULT_GRAPHS) <= set(graphs):
            write_test_vectors(a.out, dit, te, local_window=local)
    defaults = ck.get("defaults", {})
    if a.defaults:
        defaults.update(json.load(open(a.defaults)))
    write_manifest(a.out, dit.cfg, defaults, description=a.description, training=ck.get("training"),
                   custom_attention=a.custom_attention, local_window=local)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
