"""Attention as custom-domain ONNX nodes (`fastvmt.Attention`, `fastvmt.AttentionGrad`).

Route from shared/notes/FINDINGS.md: the attention is a torch.library custom op returning
(out, lse) with a fake implementation and an autograd formula whose backward is a second custom
op; torch.onnx.export(custom_translation_table=...) turns both into nodes of domain `fastvmt`
built on OpSchemas defined here. Stock ONNX Runtime cannot run such graphs until the project's
custom-op library (the fused attention kernels) is registered.

    from fastvmt_onnx.model import set_attention_impl
    set_attention_impl("custom")      # model.attention() now calls torch.ops.fastvmt.attention
    export_all(dit, te, out_dir, custom_attention=True)

Node contracts (all float32, scale = 1/sqrt(d), no mask):
  Attention(q [B,H,Nq,d], k [B,H,Nk,d], v [B,H,Nk,d]) -> out [B,H,Nq,d], lse [B,H,Nq]
  AttentionGrad(dout, q, k, v, out, lse) -> dq, dk, dv
"""
from __future__ import annotations

import math

import torch

DOMAIN = "fastvmt"


@torch.library.custom_op("fastvmt::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.matmul(torch.exp(logits - lse[..., None]), v)
    return out, lse


@attention_op.register_fake
def _(q, k, v):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],)), q.new_empty(q.shape[:-1])


@torch.library.custom_op("fastvmt::attention_bwd", mutates_args=())
def attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = torch.exp(torch.matmul(q, k.transpose(-1, -2)) * scale - lse[..., None])
    dv = torch.matmul(p.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    delta = (dout * out).sum(-1, keepdim=True)
    ds = p * (dp - delta) * scale
    dq = torch.matmul(ds, k)
    dk = torch.matmul(ds.transpose(-1, -2), q)
    return dq, dk, dv


@attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def _backward(ctx, dout, dlse):  # the LSE output's gradient is dropped (LSE is not used downstream)
    q, k, v, out, lse = ctx.saved_tensors
    return attention_bwd_op(dout.contiguous(), q, k, v, out, lse)


attention_op.register_autograd(_backward, setup_context=_setup)


def translation_table():
    """custom_translation_table for torch.onnx.export: emits fastvmt.Attention / AttentionGrad."""
    import onnx
    from onnxscript.values import Op, Opset

    T = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")]
    P = onnx.defs.OpSchema.FormalParameter
    s_fwd = onnx.defs.OpSchema("Attention", DOMAIN, 1, inputs=[P("q", "T"), P("k", "T"), P("v", "T")],
                               outputs=[P("out", "T"), P("lse", "T")], type_constraints=T)
    s_bwd = onnx.defs.OpSchema("AttentionGrad", DOMAIN, 1,
                               inputs=[P(n, "T") for n in ("dout", "q", "k", "v", "out", "lse")],
                               outputs=[P("dq", "T"), P("dk", "T"), P("dv", "T")], type_constraints=T)
    opset = Opset(DOMAIN, 1)
    op_fwd = Op(opset, "Attention", s_fwd)
    op_bwd = Op(opset, "AttentionGrad", s_bwd)

    def fwd(q, k, v):
        return op_fwd(q, k, v)

    def bwd(dout, q, k, v, out, lse):
        return op_bwd(dout, q, k, v, out, lse)

    return {torch.ops.fastvmt.attention.default: fwd, torch.ops.fastvmt.attention_bwd.default: bwd}
