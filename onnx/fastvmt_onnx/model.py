"""A small Wan-like pixel-space video DiT (flow matching, velocity prediction).

Architecture (mirrors diffusers' WanTransformer3DModel at a tiny scale):
  * 3D patch embedding written as reshape + Linear (no Conv3d, so its backward exports to ONNX);
  * 3D RoPE on self-attention Q/K, the cos/sin tables are *inputs* (computed outside the graph,
    see `rope_tables`), interleaved pairs (Wan's complex-number convention);
  * QK-norm (RMSNorm over the full width, before the head split, as Wan's rms_norm_across_heads);
  * adaLN-zero: one shared time projection (6 x width) plus a learned per-block table, as Wan;
    the timestep embedding also receives the pooled text embedding;
  * cross-attention to the text tokens (from `TextEncoder`);
  * every attention goes through the single function `attention(q, k, v, grid)` so it can be
    swapped for the custom-domain fused attention operator (custom_attention.py), optionally
    with a 3D local window on the blocks' self-attention (grid = the video-token grid).

Graph entry points (all take RoPE tables as inputs):
  DiT.forward(x, t, text, rope_cos, rope_sin)              -> velocity [B,3,F,H,W]
  DiT.guidance_qk(x, t, text, rope_cos, rope_sin)          -> q, k [B,heads,N,head_dim] of block L
  GuidanceGrad(dit).forward(x, t, text, cos, sin, dq, dk)   -> dx  (VJP through blocks 0..L)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, field

import torch
import torch.nn as nn

from .model_np import rope_tables_np  # noqa: F401  (numpy-only, shared with the samplers)
import torch.nn.functional as F


@dataclass
class DiTConfig:
    in_channels: int = 3
    patch_size: tuple = (1, 4, 4)
    width: int = 192
    blocks: int = 8
    heads: int = 4
    ffn_mult: float = 3.0
    text_dim: int = 128
    vocab_size: int = 32
    max_len: int = 12
    text_layers: int = 1
    motion_block: int = 5
    rope_theta: float = 10000.0
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def rope_axes_dim(self):
        """Wan's split of head_dim between (t, h, w): h = w = 2*(d//6), t = the rest."""
        d = self.head_dim
        hw = 2 * (d // 6)
        return (d - 2 * hw, hw, hw)

    def to_dict(self):
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d


# --------------------------------------------------------------------------------------
# Attention: the ONE place where attention is computed.
# --------------------------------------------------------------------------------------
# "math": explicit softmax(QK^T/sqrt(d)) V, exportable to plain ONNX ops with a backward.
# "sdpa": torch's fused kernel (training on GPU only; its backward does not export).
# "custom": torch.ops.fastvmt.attention, exported as a fastvmt.Attention node (custom_attention.py).
# "local": None (dense) or (temporal_radius, spatial_radius): the self-attention of every block
# over the video tokens sees only a 3D window (kernels/src/attention/mod.rs defines it).
# "dense_forward": "fastvmt" (dense attention as fastvmt.Attention too) or "ort" (dense attention
# as ONNX Runtime's com.microsoft.MultiHeadAttention, forward-only graphs: ort_attention.py).
ATTENTION_IMPL = {"mode": "math", "local": None, "dense_forward": "fastvmt"}


def set_attention_impl(mode: str, local=None, dense_forward="fastvmt"):
    """mode: "math" (plain ops), "sdpa" (torch fused kernel, training) or "custom"
    (torch.ops.fastvmt.attention, exported as a fastvmt.Attention custom-domain node, see
    custom_attention.py). local: None or (temporal_radius, spatial_radius) for the blocks'
    self-attention ("custom" exports it; "math" computes it eagerly with an explicit mask).
    dense_forward="ort" (with "custom", graphs without a backward through attention only): dense
    attentions become com.microsoft.MultiHeadAttention nodes (ort_attention.py)."""
    assert mode in ("math", "sdpa", "custom")
    assert dense_forward in ("fastvmt", "ort")
    assert dense_forward == "fastvmt" or mode == "custom", "dense_forward='ort' needs mode 'custom'"
    if dense_forward == "ort":
        from . import ort_attention  # noqa: F401  (registers the op)
    if mode == "custom" or local is not None:
        from . import custom_attention  # noqa: F401  (registers the ops)
    if local is not None:
        assert mode != "sdpa", "the local window is not implemented for sdpa"
        local = (int(local[0]), int(local[1]))
        assert min(local) >= 0, local
    ATTENTION_IMPL["mode"] = mode
    ATTENTION_IMPL["local"] = local
    ATTENTION_IMPL["dense_forward"] = dense_forward


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
    """q [B,H,Nq,d], k/v [B,H,Nk,d] -> [B,H,Nq,d]. Scale 1/sqrt(d). grid = (frames, height,
    width) of the video tokens marks a video self-attention: it becomes local when a window is
    configured (set_attention_impl(..., local=...)); otherwise every key is visible."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    local = ATTENTION_IMPL["local"] if grid is not None else None
    if ATTENTION_IMPL["mode"] == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if ATTENTION_IMPL["mode"] == "custom" and local is None and ATTENTION_IMPL["dense_forward"] == "ort":
        return torch.ops.fastvmt.ort_mha(q.contiguous(), k.contiguous(), v.contiguous(), float(scale))
    if ATTENTION_IMPL["mode"] == "custom":
        from .custom_attention import attention as custom
        return custom(q, k, v, scale=scale, grid=grid, local=local)[0]
    logits = torch.matmul(q * scale, k.transpose(-1, -2))
    if local is not None:
        from .custom_attention import local_mask
        m = local_mask(*(int(g) for g in grid), *local, kv_len=k.shape[-2], device=q.device)
        logits = logits.masked_fill(~m, float("-inf"))
    return torch.matmul(torch.softmax(logits, dim=-1), v)


# --------------------------------------------------------------------------------------
# RoPE tables (computed outside the graph; the Rust side reimplements exactly this)
# --------------------------------------------------------------------------------------
def rope_tables(frames, h, w, cfg: DiTConfig, device=None):
    cos, sin = rope_tables_np(frames, h, w, cfg.rope_axes_dim, cfg.rope_theta)
    return torch.from_numpy(cos).to(device), torch.from_numpy(sin).to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B,H,N,d]; cos/sin [N, d/2]; interleaved pairs."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    o0 = x0 * cos - x1 * sin
    o1 = x0 * sin + x1 * cos
    return torch.stack([o0, o1], dim=-1).flatten(-2)


# --------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t*1000 (Wan uses t in [0,1000]); t [B] -> [B, dim]."""
    half = dim // 2
    dt = t.dtype if t.dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=dt, device=t.device) / half)
    args = (t.to(dt) * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TextEncoder(nn.Module):
    """tokens int64 [B, L] -> text float32 [B, L, D]. Word embedding + learned positions + a
    small pre-norm transformer (the only place word order is encoded)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.text_dim
        self.embed = nn.Embedding(cfg.vocab_size, D)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, D) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(cfg.text_layers):
            self.layers.append(nn.ModuleDict(dict(
                n1=nn.LayerNorm(D), qkv=nn.Linear(D, 3 * D), o=nn.Linear(D, D),
                n2=nn.LayerNorm(D), f1=nn.Linear(D, 2 * D), f2=nn.Linear(2 * D, D))))
        self.heads = 2
        self.norm = nn.LayerNorm(D)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:L]
        for ly in self.layers:
            q, k, v = ly["qkv"](ly["n1"](x)).chunk(3, dim=-1)
            q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
            a = attention(q, k, v).transpose(1, 2).flatten(-2)
            x = x + ly["o"](a)
            x = x + ly["f2"](F.gelu(ly["f1"](ly["n2"](x)), approximate="tanh"))
        return self.norm(x)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        W, H = cfg.width, cfg.heads
        self.heads = H
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=cfg.eps)
        self.qkv = nn.Linear(W, 3 * W)
        self.norm_q = RMSNorm(W, cfg.eps)
        self.norm_k = RMSNorm(W, cfg.eps)
        self.proj = nn.Linear(W, W)
        self.norm3 = nn.LayerNorm(W, eps=cfg.eps)
        self.cq = nn.Linear(W, W)
        self.ckv = nn.Linear(cfg.text_dim, 2 * W)
        self.cnorm_q = RMSNorm(W, cfg.eps)
        self.cnorm_k = RMSNorm(W, cfg.eps)
        self.cproj = nn.Linear(W, W)
        self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=cfg.eps)
        hidden = int(W * cfg.ffn_mult)
        self.ff1 = nn.Linear(W, hidden)
        self.ff2 = nn.Linear(hidden, W)
        # adaLN-zero: shift, scale, gate (msa), shift, scale, gate (ffn); gates start at 0.
        table = torch.randn(1, 6, W) / W ** 0.5
        table[:, 2] = 0
        table[:, 5] = 0
        self.scale_shift_table = nn.Parameter(table)

    def _heads(self, z):
        return z.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B,H,N,d]

    def mods(self, tproj):
        return (self.scale_shift_table + tproj).unbind(1)  # 6 x [B, W]

    def self_qk(self, x, mods, cos, sin):
        shift, scale = mods[0], mods[1]
        xn = self.norm1(x) * (1 + scale[:, None]) + shift[:, None]
        q, k, v = self.qkv(xn).chunk(3, dim=-1)
        q = apply_rope(self._heads(self.norm_q(q)), cos, sin)
        k = apply_rope(self._heads(self.norm_k(k)), cos, sin)
        return q, k, self._heads(v)

    def forward(self, x, tproj, text, cos, sin, grid=None):
        m = self.mods(tproj)
        q, k, v = self.self_qk(x, m, cos, sin)
        a = attention(q, k, v, grid=grid).transpose(1, 2).flatten(-2)
        x = x + self.proj(a) * m[2][:, None]
        # cross-attention (no RoPE, no gate, as Wan)
        xn = self.norm3(x)
        cq = self._heads(self.cnorm_q(self.cq(xn)))
        ck, cv = self.ckv(text).chunk(2, dim=-1)
        ck = self._heads(self.cnorm_k(ck))
        cv = self._heads(cv)
        x = x + self.cproj(attention(cq, ck, cv).transpose(1, 2).flatten(-2))
        xn = self.norm2(x) * (1 + m[4][:, None]) + m[3][:, None]
        x = x + self.ff2(F.gelu(self.ff1(xn), approximate="tanh")) * m[5][:, None]
        return x


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        pt, ph, pw = cfg.patch_size
        pdim = cfg.in_channels * pt * ph * pw
        self.patch = nn.Linear(pdim, W)
        self.t_in = nn.Linear(W, W)
        self.t_out = nn.Linear(W, W)
        self.text_pool = nn.Linear(cfg.text_dim, W)
        self.t_proj = nn.Linear(W, 6 * W)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.blocks)])
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=cfg.eps)
        self.out_table = nn.Parameter(torch.randn(1, 2, W) / W ** 0.5)
        self.out = nn.Linear(W, pdim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.t_proj.weight)
        nn.init.zeros_(self.t_proj.bias)

    # ---- patchify / unpatchify (pure reshapes, dynamic F/H/W) ----
    def patchify(self, x):
        B, C, Fr, H, W = x.shape
        pt, ph, pw = self.cfg.patch_size
        x = x.reshape(B, C, Fr // pt, pt, H // ph, ph, W // pw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.flatten(4).flatten(1, 3)  # [B, N, C*pt*ph*pw]

    def unpatchify(self, y, x_shape):
        B, C, Fr, H, W = x_shape
        pt, ph, pw = self.cfg.patch_size
        y = y.reshape(B, Fr // pt, H // ph, W // pw, C, pt, ph, pw)
        y = y.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return y.reshape(B, C, Fr, H, W)

    def embed(self, x, t, text):
        tok = self.patch(self.patchify(x))
        temb = self.t_out(F.silu(self.t_in(timestep_embedding(t, self.cfg.width))))
        temb = temb + self.text_pool(text.mean(dim=1))
        tproj = self.t_proj(F.silu(temb)).unflatten(1, (6, -1))  # [B,6,W]
        return tok, temb, tproj

    def token_grid(self, x):
        """(frames, height, width) of the video-token grid of x [B,C,F,H,W] (SymInts when traced)."""
        pt, ph, pw = self.cfg.patch_size
        return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)

    def forward(self, x, t, text, rope_cos, rope_sin):
        h, temb, tproj = self.embed(x, t, text)
        grid = self.token_grid(x)
        for blk in self.blocks:
            h = blk(h, tproj, text, rope_cos, rope_sin, grid)
        shift, scale = (self.out_table + temb[:, None]).unbind(1)
        h = self.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        return self.unpatchify(self.out(h), x.shape)

    def guidance_qk(self, x, t, text, rope_cos, rope_sin, block=None):
        L = self.cfg.motion_block if block is None else block
        h, temb, tproj = self.embed(x, t, text)
        grid = self.token_grid(x)
        for blk in self.blocks[:L]:
            h = blk(h, tproj, text, rope_cos, rope_sin, grid)
        blk = self.blocks[L]
        q, k, _ = blk.self_qk(h, blk.mods(tproj), rope_cos, rope_sin)
        return q, k


class GuidanceHead(nn.Module):
    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, text, rope_cos, rope_sin):
        return self.dit.guidance_qk(x, t, text, rope_cos, rope_sin)


class GuidanceGrad(nn.Module):
    """(x, t, text, cos, sin, dq, dk) -> dx = (dq . dQ/dx + dk . dK/dx), blocks 0..L only."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, text, rope_cos, rope_sin, dq, dk):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            q, k = self.dit.guidance_qk(x, t, text, rope_cos, rope_sin)
            (dx,) = torch.autograd.grad((q, k), (x,), (dq, dk))
        return dx


class GuidanceStep(nn.Module):
    """(x, t, text, cos, sin, reference, amf_config) -> (loss, dx): a whole real gradient in one
    graph, the AMF loss as the custom node fastvmt.amf.AmfLossGrad (amf_op.py)."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, text, rope_cos, rope_sin, reference, amf_config):
        from .amf_op import amf_loss_grad
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            q, k = self.dit.guidance_qk(x, t, text, rope_cos, rope_sin)
            loss, dq, dk = amf_loss_grad(q.detach(), k.detach(), reference, amf_config, self.dit.token_grid(x))
            (dx,) = torch.autograd.grad((q, k), (x,), (dq.to(q.dtype), dk.to(k.dtype)))
        return loss, dx


class Denoiser(nn.Module):
    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, text, rope_cos, rope_sin):
        return self.dit(x, t, text, rope_cos, rope_sin)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
