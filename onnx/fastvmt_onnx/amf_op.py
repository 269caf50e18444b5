"""The AMF loss as a custom-domain ONNX node (`fastvmt.amf.AmfLossGrad`, version 1).

It lets the `guidance_step` graph do a whole real gradient in one run: forward to the motion
block's Q/K, the AMF loss and dL/dQ, dL/dK (this node), then the backward to the latent with
those as the VJP's cotangents. The computation lives in the plugin (`kernels/` through
`plugin/src/runtime/amf_ops.rs`, which documents the node); torch only traces it here, so the
eager implementation refuses to run.

    AmfLossGrad(q [1,H,N,d] T, k T, grid int64 [3], reference f32 [P,S,2], config f32 [8])
        -> loss f32 [1], dq f32 [1,H,N,d], dk f32 [1,H,N,d]
"""
from __future__ import annotations

import torch

DOMAIN = "fastvmt.amf"
VERSION = 1
CONFIG_LEN = 8


@torch.library.custom_op("fastvmt::amf_loss_grad", mutates_args=())
def amf_loss_grad_op(q: torch.Tensor, k: torch.Tensor, reference: torch.Tensor, config: torch.Tensor,
                     frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise NotImplementedError("fastvmt::amf_loss_grad is computed by the plugin's AMF kernels "
                              "(plugin/src/runtime/amf_ops.rs); torch only traces it for export")


@amf_loss_grad_op.register_fake
def _(q, k, reference, config, frames, height, width):
    return (q.new_empty((1,), dtype=torch.float32), q.new_empty(q.shape, dtype=torch.float32),
            k.new_empty(k.shape, dtype=torch.float32))


def amf_loss_grad(q, k, reference, config, grid):
    """(loss, dq, dk) for Q/K of the token grid (frames, height, width) (ints or SymInts)."""
    f, h, w = grid
    return torch.ops.fastvmt.amf_loss_grad(q.contiguous(), k.contiguous(), reference, config, f, h, w)


def schema():
    import onnx
    S = onnx.defs.OpSchema
    P = S.FormalParameter
    T = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "Q/K of the motion block"),
         ("F", ["tensor(float)"], "float32 tensors"),
         ("G", ["tensor(int64)"], "video-token grid (frames, height, width)")]
    return S("AmfLossGrad", DOMAIN, VERSION,
             inputs=[P("q", "T"), P("k", "T"), P("grid", "G"), P("reference", "F"), P("config", "F")],
             outputs=[P("loss", "F"), P("dq", "F"), P("dk", "F")], type_constraints=T)


def translation_table():
    """custom_translation_table entry for torch.onnx.export (grid as an int64 [3] input, as the
    attention nodes take it)."""
    from onnxscript.values import Op, Opset

    from .custom_attention import grid_input

    node = Op(Opset(DOMAIN, VERSION), "AmfLossGrad", schema())

    def amf(q, k, reference, config, frames, height, width):
        return node(q, k, grid_input(frames, height, width), reference, config)

    return {torch.ops.fastvmt.amf_loss_grad.default: amf}
