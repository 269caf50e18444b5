"""Export diffusers' WanTransformer3DModel (Wan2.1 T2V) to the FastVMT graphs.

    # tiny random config, parity vs diffusers' own forward and vs ONNX Runtime:
    python -m fastvmt_onnx.export_wan --tiny --out /tmp/wan_tiny --check
    # real weights (a local diffusers-format checkpoint, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers):
    python -m fastvmt_onnx.export_wan --model /path/to/Wan2.1-T2V-1.3B-Diffusers --subfolder transformer \
        --motion-block 14 --out onnx/models/wan2.1-t2v-1.3b

Graphs (same names and inputs as the tiny-shapes bundle, see README):
  denoiser       (x [B,16,F,H,W] VAE latent, t [B] in [0,1], text [B,L,4096] umT5 states,
                  rope_cos, rope_sin [N, head_dim/2]) -> velocity [B,16,F,H,W]
  guidance_head  same inputs -> q, k [B, heads, N, head_dim] of block L after QK-norm and RoPE
  guidance_grad  same inputs + dq, dk -> dx (VJP through blocks 0..L)
The wrapper reuses the diffusers modules' weights but:
  * replaces the Conv3d patch embedding by reshape + Linear (conv weight reshaped; exact),
  * takes the RoPE tables as inputs (one value per rotated pair; identical to Wan's
    WanRotaryPosEmbed, which repeats each value twice: cos = freqs_cos[..., 0::2]),
  * runs every attention through model.attention() (plain ops, exportable backward; the place
    to swap in the fused custom op),
  * maps t in [0,1] to Wan's timestep t*1000 inside the graph.
The text encoder (umT5-XXL) and the VAE are NOT exported here (see README).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import attention, apply_rope, set_attention_impl
from .model_np import rope_tables_np, rope_axes_dim


class WanGraph(nn.Module):
    """Wraps a diffusers WanTransformer3DModel. mode: 'denoiser' | 'guidance_head' | 'guidance_grad'."""

    def __init__(self, wan, mode="denoiser", motion_block=None):
        super().__init__()
        # Graph inputs and outputs stay float32 whatever the weights' dtype: the casts are inside
        # the graph, so one plugin feeds fp32, fp16 and bf16 bundles alike.
        self.dtype = wan.patch_embedding.weight.dtype
        self.wan = wan
        self.mode = mode
        cfg = wan.config
        self.patch_size = tuple(cfg.patch_size)
        self.heads = cfg.num_attention_heads
        self.motion_block = cfg.num_layers // 2 if motion_block is None else motion_block
        conv = wan.patch_embedding
        self.patch = nn.Linear(conv.in_channels * int(np.prod(self.patch_size)), conv.out_channels)
        with torch.no_grad():
            self.patch.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            self.patch.bias.copy_(conv.bias)
        self.patch.to(self.dtype)
        # Wan's fp32 norm/modulation islands and gated residuals as fastvmt.norm nodes
        # (fused_modulation.py); forward graphs only (no backward for them).
        self.fuse_modulation = False

    def _modulated_norm(self, norm, h, mul, add):
        """`(norm(h.float()) * mul + add).type_as(h)` (norm: a LayerNorm without affine)."""
        if self.fuse_modulation:
            from .fused_modulation import modulated_layer_norm
            return modulated_layer_norm(h, mul, add, norm.eps)
        return (norm(h.float()) * mul + add).type_as(h)

    def _gated_residual(self, h, o, gate):
        """`(h.float() + o * gate).type_as(h)` (gate float32)."""
        if self.fuse_modulation:
            from .fused_modulation import gated_residual
            return gated_residual(h, o, gate)
        return (h.float() + o.float() * gate).type_as(h)

    def patchify(self, x):
        B, C, Fr, H, W = x.shape
        pt, ph, pw = self.patch_size
        x = x.reshape(B, C, Fr // pt, pt, H // ph, ph, W // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4).flatten(1, 3)

    def _heads(self, z):
        return z.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def self_qk(self, blk, h, mods, cos, sin):
        shift, scale = mods[0], mods[1]
        xn = self._modulated_norm(blk.norm1, h, 1 + scale, shift)
        a = blk.attn1
        # RoPE in float32 (as diffusers' Wan does), back to the weights' dtype after.
        q = apply_rope(self._heads(a.norm_q(a.to_q(xn))).float(), cos, sin).type_as(xn)
        k = apply_rope(self._heads(a.norm_k(a.to_k(xn))).float(), cos, sin).type_as(xn)
        v = self._heads(a.to_v(xn))
        return q, k, v

    def block(self, blk, h, text, tproj, cos, sin, grid):
        mods = (blk.scale_shift_table + tproj.float()).chunk(6, dim=1)
        q, k, v = self.self_qk(blk, h, mods, cos, sin)
        # grid marks the video self-attention: a local window applies here when configured
        o = attention(q, k, v, grid=grid).transpose(1, 2).flatten(2)
        o = blk.attn1.to_out[1](blk.attn1.to_out[0](o))
        h = self._gated_residual(h, o, mods[2])
        a = blk.attn2
        if self.fuse_modulation and isinstance(blk.norm2, nn.LayerNorm) and blk.norm2.weight is not None:
            from .fused_modulation import modulated_layer_norm
            xn = modulated_layer_norm(h, blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        else:
            xn = blk.norm2(h.float()).type_as(h)
        cq = self._heads(a.norm_q(a.to_q(xn)))
        ck = self._heads(a.norm_k(a.to_k(text)))
        cv = self._heads(a.to_v(text))
        o = attention(cq, ck, cv).transpose(1, 2).flatten(2)
        h = h + a.to_out[1](a.to_out[0](o))
        xn = self._modulated_norm(blk.norm3, h, 1 + mods[4], mods[3])
        h = self._gated_residual(h, blk.ffn(xn), mods[5])
        return h

    def grid(self, x):
        pt, ph, pw = self.patch_size
        return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)

    def embed(self, x, t, text):
        h = self.patch(self.patchify(x))
        temb, tproj, text, _ = self.wan.condition_embedder(t * 1000.0, text, None)
        return h, temb, tproj.unflatten(1, (6, -1)), text

    def forward_all(self, x, t, text, cos, sin):
        h, temb, tproj, text = self.embed(x, t, text)
        grid = self.grid(x)
        for blk in self.wan.blocks:
            h = self.block(blk, h, text, tproj, cos, sin, grid)
        shift, scale = (self.wan.scale_shift_table + temb.unsqueeze(1).float()).chunk(2, dim=1)
        h = self._modulated_norm(self.wan.norm_out, h, 1 + scale, shift)
        h = self.wan.proj_out(h)
        B, C, Fr, H, W = x.shape
        pt, ph, pw = self.patch_size
        h = h.reshape(B, Fr // pt, H // ph, W // pw, pt, ph, pw, -1)
        return h.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def qk(self, x, t, text, cos, sin):
        h, temb, tproj, text = self.embed(x, t, text)
        grid = self.grid(x)
        for blk in self.wan.blocks[:self.motion_block]:
            h = self.block(blk, h, text, tproj, cos, sin, grid)
        blk = self.wan.blocks[self.motion_block]
        mods = (blk.scale_shift_table + tproj.float()).chunk(6, dim=1)
        q, k, _ = self.self_qk(blk, h, mods, cos, sin)
        return q, k

    def step(self, x, t, text, cos, sin, reference, amf_config):
        """guidance_step: the AMF loss of x and dL/dx in one graph (amf_op.py)."""
        from .amf_op import amf_loss_grad
        dt = self.dtype
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            q, k = self.qk(x.to(dt), t, text.to(dt), cos, sin)
            loss, dq, dk = amf_loss_grad(q.detach(), k.detach(), reference, amf_config, self.grid(x))
            (dx,) = torch.autograd.grad((q, k), (x,), (dq.to(q.dtype), dk.to(k.dtype)))
        return loss, dx

    def forward(self, x, t, text, rope_cos, rope_sin, dq=None, dk=None):
        dt = self.dtype
        if self.mode == "guidance_step":
            return self.step(x, t, text, rope_cos, rope_sin, dq, dk)  # dq, dk: reference, config
        if self.mode == "denoiser":
            return self.forward_all(x.to(dt), t, text.to(dt), rope_cos, rope_sin).float()
        if self.mode == "guidance_head":
            q, k = self.qk(x.to(dt), t, text.to(dt), rope_cos, rope_sin)
            return q.float(), k.float()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            q, k = self.qk(x.to(dt), t, text.to(dt), rope_cos, rope_sin)
            (dx,) = torch.autograd.grad((q, k), (x,), (dq.to(dt), dk.to(dt)))
        return dx


def to_dtype(wan, dtype):
    """Casts the model to dtype but keeps in float32 the modules diffusers keeps there
    (`_keep_in_fp32_modules`: norms, modulation tables, time embedder), as from_pretrained
    with torch_dtype does."""
    wan = wan.to(dtype)
    keep = set(getattr(wan, "_keep_in_fp32_modules", None) or ())
    for name, p in wan.named_parameters():
        if keep & set(name.split(".")):
            p.data = p.data.float()
    return wan


def tiny_wan():
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=32, ffn_dim=48, num_layers=3,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()


def wan13_dims(num_layers=2):
    """Random model with Wan2.1-T2V-1.3B's dimensions (12 heads x 128, FFN 8960, text 4096, 16 latent
    channels) but only num_layers blocks (the real model has 30)."""
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=num_layers,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024).eval()


def example(wan, B=2, Fr=3, hh=5, ww=4, L=7, seed=0, grad=False, heads_n=None):
    cfg = wan.config
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch_size
    x = torch.randn(B, cfg.in_channels, Fr * pt, hh * ph, ww * pw, generator=g)
    t = torch.rand(B, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    hd = cfg.attention_head_dim
    cos, sin = (torch.from_numpy(a) for a in rope_tables_np(Fr, hh, ww, rope_axes_dim(hd), 10000.0))
    ins = [x, t, text, cos, sin]
    if grad:
        N = Fr * hh * ww
        ins += [torch.randn(B, cfg.num_attention_heads, N, hd, generator=g) for _ in range(2)]
    return tuple(ins)


WAN_GRAPHS = ("denoiser", "guidance_head", "guidance_grad", "guidance_step")


def export_wan(wan, out_dir, motion_block=None, custom_attention=False, local_window=None, graphs=WAN_GRAPHS,
               dense_forward="fastvmt", fused_norms=False, structure_only=False, fused_modulation=False):
    """local_window=(T, S) (needs custom_attention): every block's self-attention sees only the 3D
    window of temporal radius T and spatial radius S tokens; cross-attention stays dense.
    dense_forward="ort" (needs custom_attention): in the forward-only graphs (denoiser,
    guidance_head) every dense attention is ONNX Runtime's com.microsoft.MultiHeadAttention
    (ort_attention.py); the gradient graphs keep fastvmt.Attention for its backward.
    fused_norms=True: RMSNorm and tanh-GELU as single ONNX Runtime contrib nodes (fused_ops.py).
    fused_modulation=True: in the forward-only graphs, the fp32 norm/modulation islands and gated
    residuals as fastvmt.norm nodes (fused_modulation.py; the plugin computes them).
    structure_only=True: graphs whose weights are external references to files not written
    (materialize.py fills them in from the seeded model where the graphs run)."""
    from .export import export_graph, SYM
    from .model import DiTConfig
    if local_window is not None and not custom_attention:
        raise ValueError("local_window needs custom_attention (plain ONNX attention is dense only)")
    if dense_forward != "fastvmt" and not custom_attention:
        raise ValueError("dense_forward='ort' needs custom_attention")
    os.makedirs(out_dir, exist_ok=True)
    cfg = wan.config
    # a DiTConfig-shaped stand-in so export.py's dim fixer knows the static sizes
    stand = DiTConfig(in_channels=cfg.in_channels, patch_size=tuple(cfg.patch_size),
                      width=cfg.num_attention_heads * cfg.attention_head_dim, heads=cfg.num_attention_heads,
                      text_dim=cfg.text_dim)
    SYM["x"][1] = SYM["dx"][1] = SYM["velocity"][1] = cfg.in_channels
    base = ["x", "t", "text", "rope_cos", "rope_sin"]
    paths = {}
    t0 = time.time()
    # forward-only graphs: dense attention as configured by dense_forward
    forward_table = None
    fused = {}
    if fused_norms:
        from .fused_ops import translation_table as fused_table
        fused = fused_table()
        forward_table = dict(fused)
    if custom_attention:
        set_attention_impl("custom", local=local_window, dense_forward=dense_forward)
        if dense_forward == "ort":
            from .ort_attention import translation_table as ort_table
            forward_table = {**fused, **ort_table(cfg.num_attention_heads)}
    else:
        set_attention_impl("math", local=local_window)
    if fused_modulation:
        from .fused_modulation import translation_table as modulation_table
        forward_table = {**(forward_table or {}), **modulation_table()}

    def forward_graph(mode):
        g = WanGraph(wan, mode, motion_block)
        g.fuse_modulation = fused_modulation
        return g

    if "denoiser" in graphs:
        paths["denoiser"] = export_graph(forward_graph("denoiser"), example(wan), base, ["velocity"],
                                         os.path.join(out_dir, "denoiser.onnx"), stand,
                                         custom_attention=custom_attention, extra_translation=forward_table,
                                         optimize=not structure_only)
    if "guidance_head" in graphs:
        paths["guidance_head"] = export_graph(forward_graph("guidance_head"), example(wan), base,
                                              ["q", "k"], os.path.join(out_dir, "guidance_head.onnx"), stand,
                                              custom_attention=custom_attention, extra_translation=forward_table,
                                              optimize=not structure_only)
    # gradient graphs: attention needs its backward, so it stays fastvmt.Attention / AttentionGrad
    set_attention_impl("custom" if custom_attention else "math", local=local_window)
    if "guidance_grad" in graphs:
        paths["guidance_grad"] = export_graph(WanGraph(wan, "guidance_grad", motion_block), example(wan, grad=True),
                                              base + ["dq", "dk"], ["dx"], os.path.join(out_dir, "guidance_grad.onnx"),
                                              stand, grad=True, custom_attention=custom_attention,
                                              extra_translation=fused, optimize=not structure_only)
    if "guidance_step" in graphs:
        from .amf_op import CONFIG_LEN, translation_table as amf_table
        x, t, text, cos, sin = example(wan)  # batch 2 keeps B symbolic; the plugin feeds 1
        g = torch.Generator().manual_seed(3)
        # 5 pairs of the example's 5 x 4 token frames; the sizes stay symbolic in the graph
        reference = torch.randn(5, 20, 2, generator=g)
        amf_config = torch.tensor([2.0, 0, 0, 0, 1.0, 1.0, -1.0, -1.0])[:CONFIG_LEN]
        paths["guidance_step"] = export_graph(
            WanGraph(wan, "guidance_step", motion_block), (x, t, text, cos, sin, reference, amf_config),
            base + ["reference", "amf_config"], ["loss", "dx"], os.path.join(out_dir, "guidance_step.onnx"),
            stand, grad=True, custom_attention=custom_attention, extra_translation={**fused, **amf_table()},
            optimize=not structure_only)
    SYM["x"][1] = SYM["dx"][1] = SYM["velocity"][1] = 3
    set_attention_impl("math")
    if structure_only:
        from .materialize import strip_weights
        for p in paths.values():
            strip_weights(p)
    print(f"exported in {time.time() - t0:.0f}s")
    return paths


BENCH_VOCAB = ["<pad>", "<unk>", "a", "the", "of", "and", "on", "in", "with", "dog", "cat", "car", "person",
               "runs", "walks", "flies", "street", "beach", "forest", "sky", "red", "blue", "small", "large"]


def random_text_encoder(path, dim, vocab=BENCH_VOCAB, seed=0):
    """tokens int64 [B, L] -> text float32 [B, L, dim]: a random embedding table (one row per
    word). Stands in for umT5-XXL where timing is what matters: the issue's benchmark asks for
    random text embeddings of the real width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    table = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["text"], axis=0)], "random_text_encoder",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "L"])],
        [helper.make_tensor_value_info("text", TensorProto.FLOAT, ["B", "L", dim])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def write_wan_manifest(wan, out_dir, name, description, motion_block, text_len, dtype, custom_attention,
                       local_window, defaults=None, dense_forward="fastvmt", fused_modulation=False):
    """manifest.json for an exported Wan bundle. The latent is Wan's VAE latent (16 channels, 4x
    temporal and 8x spatial compression), but the VAE and umT5 are not in the bundle: such a bundle
    is sampled from a latent by the library (bench/wan), not by the VIDEO nodes."""
    from .export import attention_manifest, io_spec, sha256
    cfg = wan.config
    hd = cfg.attention_head_dim
    dt, dh, dw = rope_axes_dim(hd)
    files = {}
    for key in ("text_encoder", "denoiser", "guidance_head", "guidance_grad", "guidance_step"):
        p = os.path.join(out_dir, key + ".onnx")
        if key.startswith("guidance_") and not os.path.exists(p):
            continue  # optional (the bundle then samples in mode none only): --graphs without it
        ins, outs = io_spec(p)
        files[key] = {"path": key + ".onnx", "sha256": sha256(p), "bytes": os.path.getsize(p),
                      "inputs": ins, "outputs": outs}
        data = p + ".data"
        if os.path.exists(data):  # weights above 2 GB live beside the graph
            files[key]["external_data_bytes"] = os.path.getsize(data)
    man = {
        "format": "fastvmt-bundle",
        "format_version": 1,
        "name": name,
        "description": description,
        "latent": {"kind": "vae", "channels": cfg.in_channels, "temporal_compression": 4,
                   "spatial_compression": 8, "vae": "not included (Wan2.1 VAE)"},
        "patch_size": list(cfg.patch_size),
        "width": cfg.num_attention_heads * hd,
        "blocks": cfg.num_layers,
        "heads": cfg.num_attention_heads,
        "head_dim": hd,
        "motion_block": cfg.num_layers // 2 if motion_block is None else motion_block,
        "token_layout": "frames_h_w",
        "weights_dtype": dtype,
        "scheduler": {"kind": "flow_matching", "prediction": "velocity", "shift": 3.0, "t_range": [0, 1]},
        "text": {"tokenizer": "words", "lowercase": True, "split": "[^a-z0-9]+", "vocab": list(BENCH_VOCAB),
                 "pad_id": 0, "unk_id": 1, "max_len": text_len, "dim": cfg.text_dim,
                 "encoder": "random embedding table (benchmark stand-in for umT5-XXL)"},
        "rope": {"theta": 10000.0, "axes_dim": [dt, dh, dw], "axes": ["frames", "rows", "cols"]},
        **attention_manifest(custom_attention, local_window),
        "defaults": defaults or {},
        "files": files,
    }
    if dense_forward == "ort":  # informative: the forward graphs' dense attention is ONNX Runtime's
        man["attention"]["dense_forward"] = "com.microsoft.MultiHeadAttention"
    if fused_modulation:
        from .fused_modulation import DOMAIN as NORM_DOMAIN, VERSION as NORM_VERSION
        man.setdefault("custom_ops", {})[NORM_DOMAIN] = NORM_VERSION
    if "guidance_step" in files:
        from .amf_op import DOMAIN as AMF_DOMAIN, VERSION as AMF_VERSION
        man.setdefault("custom_ops", {})[AMF_DOMAIN] = AMF_VERSION
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    return man


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def check(wan, paths, motion_block=None, shapes=((1, 2, 3, 4, 5), (2, 3, 5, 4, 7), (3, 4, 2, 6, 9))):
    """Parity: wrapper vs diffusers' own forward (torch), ORT vs wrapper, ORT VJP vs autograd."""
    import onnxruntime as ort
    sess = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    set_attention_impl("math")
    rows = []
    for (B, Fr, hh, ww, L) in shapes:
        x, t, text, cos, sin, dq, dk = example(wan, B, Fr, hh, ww, L, seed=B * 100 + Fr, grad=True)
        w_den = WanGraph(wan, "denoiser", motion_block)
        w_qk = WanGraph(wan, "guidance_head", motion_block)
        with torch.no_grad():
            ref = wan(x, t * 1000.0, text, return_dict=False)[0]
            v = w_den(x, t, text, cos, sin)
            q, k = w_qk(x, t, text, cos, sin)
        xr = x.clone().requires_grad_(True)
        q2, k2 = w_qk.qk(xr, t, text, cos, sin)
        (dx,) = torch.autograd.grad((q2, k2), (xr,), (dq, dk))
        feeds = dict(x=x.numpy(), t=t.numpy(), text=text.numpy(), rope_cos=cos.numpy(), rope_sin=sin.numpy())
        o_v = sess["denoiser"].run(None, feeds)[0]
        o_q, o_k = sess["guidance_head"].run(None, feeds)
        o_dx = sess["guidance_grad"].run(None, {**feeds, "dq": dq.numpy(), "dk": dk.numpy()})[0]
        row = dict(shape=dict(B=B, F=Fr, h=hh, w=ww, L=L), wrapper_vs_diffusers=rel(v, ref),
                   ort_denoiser=rel(o_v, v), ort_q=rel(o_q, q), ort_k=rel(o_k, k), ort_vjp_vs_autograd=rel(o_dx, dx))
        rows.append(row)
        print(json.dumps(row))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny random config (tests the route)")
    ap.add_argument("--wan13-dims", type=int, default=0, metavar="LAYERS",
                    help="random model with Wan2.1-1.3B dimensions and this many blocks")
    ap.add_argument("--model", default=None, help="diffusers checkpoint dir or hub id (local files)")
    ap.add_argument("--subfolder", default="transformer")
    ap.add_argument("--motion-block", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--check", action="store_true", help="parity check with onnxruntime (not with --custom-attention)")
    ap.add_argument("--custom-attention", action="store_true",
                    help="emit attention as fastvmt.Attention / AttentionGrad nodes (see custom_attention.py)")
    ap.add_argument("--local-window", default=None, metavar="T,S",
                    help="with --custom-attention: the blocks' self-attention sees only a 3D window of "
                         "temporal radius T and spatial radius S tokens")
    ap.add_argument("--dense-forward", choices=("fastvmt", "ort"), default="fastvmt",
                    help="with --custom-attention: dense attention in the forward-only graphs as "
                         "fastvmt.Attention or as ONNX Runtime's com.microsoft.MultiHeadAttention")
    ap.add_argument("--fused-norms", action="store_true",
                    help="RMSNorm and tanh-GELU as single ONNX Runtime contrib nodes (fused_ops.py)")
    ap.add_argument("--fused-modulation", action="store_true",
                    help="forward graphs: fp32 norm/modulation and gated residuals as fastvmt.norm nodes "
                         "(fused_modulation.py; run by the plugin)")
    ap.add_argument("--structure-only", action="store_true",
                    help="write the graphs without their weights (external references; "
                         "python -m fastvmt_onnx.materialize fills them in from the seeded model)")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                    help="weights and activations inside the graphs (inputs and outputs stay float32)")
    ap.add_argument("--bundle-name", default=None,
                    help="also write a random text encoder and manifest.json: a bundle the plugin loads")
    ap.add_argument("--text-len", type=int, default=512, help="text tokens of the bundle (Wan: 512)")
    ap.add_argument("--graphs", default=",".join(WAN_GRAPHS),
                    help="export only these graphs (run one process per graph to export in parallel)")
    ap.add_argument("--manifest-only", action="store_true",
                    help="with --bundle-name: write the text encoder and manifest for graphs already exported")
    a = ap.parse_args()
    local = None
    if a.local_window:
        if not a.custom_attention:
            ap.error("--local-window needs --custom-attention")
        local = tuple(int(v) for v in a.local_window.split(","))
    if a.dense_forward != "fastvmt" and not a.custom_attention:
        ap.error("--dense-forward ort needs --custom-attention")
    if a.tiny:
        wan = tiny_wan()
    elif a.wan13_dims:
        wan = wan13_dims(a.wan13_dims)
    else:
        from diffusers import WanTransformer3DModel
        wan = WanTransformer3DModel.from_pretrained(a.model, subfolder=a.subfolder, torch_dtype=torch.float32).eval()
    wan = to_dtype(wan, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype])
    graphs = [g for g in a.graphs.split(",") if g]
    if any(g not in WAN_GRAPHS for g in graphs):
        ap.error(f"--graphs: choose from {','.join(WAN_GRAPHS)}")
    paths = {} if a.manifest_only else export_wan(wan, a.out, a.motion_block, a.custom_attention, local, graphs,
                                                  a.dense_forward, a.fused_norms, a.structure_only,
                                                  a.fused_modulation)
    if a.bundle_name and (a.manifest_only or len(graphs) == len(WAN_GRAPHS)):
        random_text_encoder(os.path.join(a.out, "text_encoder.onnx"), wan.config.text_dim)
        desc = (f"Random-initialised WanTransformer3DModel, {wan.config.num_layers} blocks, "
                f"{a.dtype} weights, for timing only (bench/wan); text: a random embedding table.")
        write_wan_manifest(wan, a.out, a.bundle_name, desc, a.motion_block, a.text_len, a.dtype,
                           a.custom_attention, local, dense_forward=a.dense_forward,
                           fused_modulation=a.fused_modulation)
        print("wrote bundle", a.out)
    if a.custom_attention:
        import onnx
        for k, p in paths.items():
            ops = sorted({f"{n.domain or 'ai.onnx'}.{n.op_type}" for n in onnx.load(p, load_external_data=False).graph.node
                          if n.domain in ("fastvmt", "com.microsoft") or n.op_type == "Softmax"})
            print(k, ops)
    elif a.check:
        rows = check(wan, paths, a.motion_block)
        with open(os.path.join(a.out, "parity.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
