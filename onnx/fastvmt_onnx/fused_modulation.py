"""Wan's fp32 norm/modulation and gated residual as single custom nodes (`export_wan.py
--fused-modulation`): domain `fastvmt.norm`, version 1, computed by the plugin
(`plugin/src/runtime/norm_ops.rs`, definitions in `kernels/src/norm/mod.rs`).

Why: diffusers keeps Wan's norms and modulation in float32 while the activations are 16-bit, so
`(norm(h.float()) * (1 + scale) + shift).type_as(h)` and `(h.float() + o * gate).type_as(h)`
export as five to eight elementwise nodes over [B, N, C] float32 tensors each; at Wan2.1-1.3B
scale they are about a fifth of a denoiser pass. One node each reads the 16-bit input once and
writes the 16-bit output once.

    ModulatedLayerNorm(x T [B,N,C], mul f32, add f32; epsilon) -> T: LayerNorm over C in f32,
        * mul + add (mul, add: C values, one row or one per sample), rounded to T
    GatedResidual(h T, o T, gate f32) -> T: f32(h) + f32(o) * gate, rounded to T

The eager implementations are the expressions they replace, exactly, so a model traced with
them computes what diffusers computes. Forward only: no autograd formula is registered, so
the gradient graphs keep the decomposed form (`WanGraph` uses these only in forward graphs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DOMAIN = "fastvmt.norm"
VERSION = 1


@torch.library.custom_op("fastvmt::modulated_layer_norm", mutates_args=())
def modulated_layer_norm_op(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor, eps: float) -> torch.Tensor:
    return (F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * mul + add).to(x.dtype)


@modulated_layer_norm_op.register_fake
def _(x, mul, add, eps):
    return torch.empty_like(x)


@torch.library.custom_op("fastvmt::gated_residual", mutates_args=())
def gated_residual_op(h: torch.Tensor, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return (h.float() + o.float() * gate).to(h.dtype)


@gated_residual_op.register_fake
def _(h, o, gate):
    return torch.empty_like(h)


def modulated_layer_norm(x, mul, add, eps):
    """`(layer_norm(x.float()) * mul + add).to(x.dtype)`; mul/add float32."""
    return torch.ops.fastvmt.modulated_layer_norm(x.contiguous(), mul.float().contiguous(),
                                                  add.float().contiguous(), float(eps))


def gated_residual(h, o, gate):
    """`(h.float() + o.float() * gate).to(h.dtype)`; o is cast to h's dtype first if it differs."""
    return torch.ops.fastvmt.gated_residual(h.contiguous(), o.to(h.dtype).contiguous(),
                                            gate.float().contiguous())


def _schemas():
    import onnx
    S = onnx.defs.OpSchema
    P = S.FormalParameter
    T = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
         ("F", ["tensor(float)"], "per-channel tables")]
    mln = S("ModulatedLayerNorm", DOMAIN, VERSION,
            inputs=[P("x", "T"), P("mul", "F"), P("add", "F")], outputs=[P("y", "T")], type_constraints=T,
            attributes=[S.Attribute("epsilon", S.AttrType.FLOAT, "LayerNorm epsilon", required=False)])
    gres = S("GatedResidual", DOMAIN, VERSION,
             inputs=[P("h", "T"), P("o", "T"), P("gate", "F")], outputs=[P("y", "T")], type_constraints=T)
    return mln, gres


def translation_table():
    """custom_translation_table entries for torch.onnx.export (dynamo)."""
    from onnxscript.values import Op, Opset

    s_mln, s_gres = _schemas()
    mln_node = Op(Opset(DOMAIN, VERSION), "ModulatedLayerNorm", s_mln)
    gres_node = Op(Opset(DOMAIN, VERSION), "GatedResidual", s_gres)

    def mln(x, mul, add, eps):
        return mln_node(x, mul, add, epsilon=float(eps))

    def gres(h, o, gate):
        return gres_node(h, o, gate)

    return {torch.ops.fastvmt.modulated_layer_norm.default: mln,
            torch.ops.fastvmt.gated_residual.default: gres}
