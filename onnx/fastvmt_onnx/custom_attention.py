"""Attention as custom-domain ONNX nodes (`fastvmt.Attention`, `fastvmt.AttentionGrad`, version 1).

Route from shared/notes/FINDINGS.md: the attention is a torch.library custom op returning
(out, lse) with a fake implementation and an autograd formula whose backward is a second custom
op; torch.onnx.export(custom_translation_table=...) turns both into nodes of domain `fastvmt`
built on OpSchemas defined here. Stock ONNX Runtime cannot run such graphs: the plugin registers
the operators (plugin/src/runtime/attention_ops.rs, CPU and CUDA) on every session.

    from fastvmt_onnx.model import set_attention_impl
    set_attention_impl("custom", local=(1, 2))   # model.attention() -> torch.ops.fastvmt.attention
    export_all(dit, te, out_dir, custom_attention=True, local_window=(1, 2))

Node contracts (the definition is kernels/src/attention/mod.rs; onnx/README.md documents them):
  Attention(q [B,H,Nq,d], k [B,H,Nk,d], v [B,H,Nk,dv], grid? int64 [3]) -> out [B,H,Nq,dv], lse f32 [B,H,Nq]
  AttentionGrad(dout, q, k, v, out, lse, grid?) -> dq, dk, dv
  attributes: scale (float; absent or 0 -> 1/sqrt(d)), temporal_radius, spatial_radius (int;
  absent or -1 -> dense; both >= 0 -> local 3D window over the (frames, height, width) = grid
  video tokens in raster order, windows clamp-shifted inside the video, keys past F*h*w visible
  to every query). q/k/v/out/dq/dk/dv share one type T in {float, float16, bfloat16}; lse is float.

The torch implementations below are the exact reference (masked logits are -inf, so masked keys
get probability 0 exactly); they compute in float32 whatever T is.
"""
from __future__ import annotations

import math

import torch

DOMAIN = "fastvmt"
VERSION = 1
DENSE = -1  # temporal_radius / spatial_radius value meaning "no window"


def _axis_window(extent: int, radius: int, device=None) -> torch.Tensor:
    """[extent, extent] bool: key coordinate kc inside the window of query coordinate c."""
    size = min(2 * radius + 1, extent)
    c = torch.arange(extent, device=device)
    start = (c - radius).clamp(min=0, max=extent - size)
    kc = torch.arange(extent, device=device)
    return (kc[None, :] >= start[:, None]) & (kc[None, :] < (start + size)[:, None])


def local_mask(frames: int, height: int, width: int, temporal_radius: int, spatial_radius: int,
               kv_len: int | None = None, device=None) -> torch.Tensor:
    """[N, Nk] bool visibility of the 3D local window (N = frames*height*width video tokens,
    raster order; keys past N are visible to every query)."""
    n = frames * height * width
    vf = _axis_window(frames, temporal_radius, device)
    vy = _axis_window(height, spatial_radius, device)
    vx = _axis_window(width, spatial_radius, device)
    m = (vf[:, None, None, :, None, None] & vy[None, :, None, None, :, None]
         & vx[None, None, :, None, None, :]).reshape(n, n)
    kv_len = n if kv_len is None else kv_len
    if kv_len < n:
        raise ValueError(f"a local window needs the {n} video keys first: kv_len is {kv_len}")
    if kv_len > n:
        m = torch.cat([m, torch.ones(n, kv_len - n, dtype=torch.bool, device=device)], dim=1)
    return m


def _check(q, k, frames, height, width, temporal_radius, spatial_radius):
    local = temporal_radius >= 0 and spatial_radius >= 0
    if local and q.shape[-2] != frames * height * width:
        raise ValueError(f"local attention: q_len {q.shape[-2]} != frames*height*width "
                         f"{frames}x{height}x{width}")
    return local


def _logits(q, k, scale, frames, height, width, temporal_radius, spatial_radius):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if _check(q, k, frames, height, width, temporal_radius, spatial_radius):
        m = local_mask(frames, height, width, temporal_radius, spatial_radius, k.shape[-2], q.device)
        s = s.masked_fill(~m, float("-inf"))
    return s


def resolve_scale(scale: float, d: int) -> float:
    return float(scale) if scale and scale > 0 else 1.0 / math.sqrt(d)


@torch.library.custom_op("fastvmt::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, frames: int, height: int,
                 width: int, temporal_radius: int, spatial_radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    sc = resolve_scale(scale, q.shape[-1])
    logits = _logits(q, k, sc, frames, height, width, temporal_radius, spatial_radius)
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.matmul(torch.exp(logits - lse[..., None]), v.float())
    return out.to(q.dtype), lse


@attention_op.register_fake
def _(q, k, v, scale, frames, height, width, temporal_radius, spatial_radius):
    return (q.new_empty(q.shape[:-1] + (v.shape[-1],)),
            q.new_empty(q.shape[:-1], dtype=torch.float32))


@torch.library.custom_op("fastvmt::attention_bwd", mutates_args=())
def attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     out: torch.Tensor, lse: torch.Tensor, scale: float, frames: int, height: int, width: int,
                     temporal_radius: int, spatial_radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sc = resolve_scale(scale, q.shape[-1])
    p = torch.exp(_logits(q, k, sc, frames, height, width, temporal_radius, spatial_radius) - lse[..., None])
    do = dout.float()
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.float().transpose(-1, -2))
    delta = (do * out.float()).sum(-1, keepdim=True)
    ds = p * (dp - delta) * sc
    dq = torch.matmul(ds, k.float())
    dk = torch.matmul(ds.transpose(-1, -2), q.float())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, scale, frames, height, width, temporal_radius, spatial_radius):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, scale, frames, height, width, tr, sr = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (scale, frames, height, width, tr, sr)


def _backward(ctx, dout, dlse):  # the LSE output's gradient is dropped (LSE is not used downstream)
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_bwd_op(dout.contiguous(), q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup)


def attention(q, k, v, scale: float = 0.0, grid=None, local=None):
    """(out, lse) through the custom op. grid = (frames, height, width) (ints or SymInts) and
    local = (temporal_radius, spatial_radius) make it a local window; otherwise dense."""
    if local is not None:
        if grid is None:
            raise ValueError("a local window needs the token grid (frames, height, width)")
        f, h, w = grid
        tr, sr = local
    else:
        f = h = w = 0
        tr = sr = DENSE
    return torch.ops.fastvmt.attention(q.contiguous(), k.contiguous(), v.contiguous(), float(scale),
                                       f, h, w, int(tr), int(sr))


def schemas():
    """The OpSchemas of both nodes (a custom domain has none otherwise)."""
    import onnx
    S = onnx.defs.OpSchema
    P = S.FormalParameter
    opt = S.FormalParameterOption.Optional
    T = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "q/k/v/out and gradients"),
         ("L", ["tensor(float)"], "log-sum-exp, always float32"),
         ("G", ["tensor(int64)"], "video-token grid (frames, height, width)")]
    attrs = [S.Attribute("scale", S.AttrType.FLOAT, "logit scale; absent or 0: 1/sqrt(d)", required=False),
             S.Attribute("temporal_radius", S.AttrType.INT, "frames either side; absent or -1: dense",
                         required=False),
             S.Attribute("spatial_radius", S.AttrType.INT, "rows/cols either side; absent or -1: dense",
                         required=False)]
    fwd = S("Attention", DOMAIN, VERSION,
            inputs=[P("q", "T"), P("k", "T"), P("v", "T"), P("grid", "G", param_option=opt)],
            outputs=[P("out", "T"), P("lse", "L")], type_constraints=T, attributes=attrs)
    bwd = S("AttentionGrad", DOMAIN, VERSION,
            inputs=[P(n, "T") for n in ("dout", "q", "k", "v", "out")] + [P("lse", "L"),
                                                                          P("grid", "G", param_option=opt)],
            outputs=[P("dq", "T"), P("dk", "T"), P("dv", "T")], type_constraints=T, attributes=attrs)
    return fwd, bwd


def grid_input(frames, height, width):
    """The int64 [3] `grid` input from (frames, height, width): ints become constants, SymInts
    (int64 scalar tensors inside the translation) are cast and concatenated."""
    from onnxscript import opset18 as op
    parts = []
    for v in (frames, height, width):
        if isinstance(v, int):
            parts.append(op.Constant(value_ints=[v]))
        else:
            parts.append(op.Reshape(op.Cast(v, to=7), op.Constant(value_ints=[1])))
    return op.Concat(*parts, axis=0)


def translation_table():
    """custom_translation_table for torch.onnx.export: emits fastvmt.Attention / AttentionGrad.

    Traps handled (FINDINGS): the scale is cast with float() (an integral value would become an
    INT attribute); frames/height/width are SymInts derived from the input's shape, so they reach
    here as int64 scalar tensors and become the int64 [3] `grid` input, never attributes."""
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    s_fwd, s_bwd = schemas()
    opset = Opset(DOMAIN, VERSION)
    op_fwd = Op(opset, "Attention", s_fwd)
    op_bwd = Op(opset, "AttentionGrad", s_bwd)

    def attrs(scale, tr, sr):
        a = {"scale": float(scale)}
        if tr >= 0 and sr >= 0:
            a.update(temporal_radius=int(tr), spatial_radius=int(sr))
        return a

    def fwd(q, k, v, scale, frames, height, width, temporal_radius, spatial_radius):
        if temporal_radius >= 0 and spatial_radius >= 0:
            return op_fwd(q, k, v, grid_input(frames, height, width), **attrs(scale, temporal_radius, spatial_radius))
        return op_fwd(q, k, v, **attrs(scale, temporal_radius, spatial_radius))

    def bwd(dout, q, k, v, out, lse, scale, frames, height, width, temporal_radius, spatial_radius):
        if temporal_radius >= 0 and spatial_radius >= 0:
            return op_bwd(dout, q, k, v, out, lse, grid_input(frames, height, width),
                          **attrs(scale, temporal_radius, spatial_radius))
        return op_bwd(dout, q, k, v, out, lse, **attrs(scale, temporal_radius, spatial_radius))

    return {torch.ops.fastvmt.attention.default: fwd, torch.ops.fastvmt.attention_bwd.default: bwd}
