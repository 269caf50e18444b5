"""Dense forward-only attention as ONNX Runtime's own fused node, `com.microsoft.MultiHeadAttention`.

Why: graphs that never differentiate through attention (denoiser, guidance_head) only need a
dense forward, and ONNX Runtime's CUDA provider runs that node with its flash / memory-efficient
attention kernels. Whether those beat our fastvmt.Attention is measured, not assumed
(bench/wan/README.md): the exporter emits it only on request (`export_wan.py --dense-forward ort`).
Gradient graphs keep fastvmt.Attention / AttentionGrad (ONNX Runtime has no attention backward),
and local windows stay ours (the contrib node has no 3D window).

Node emitted (contrib domain `com.microsoft`, version 1; stock ONNX Runtime, CPU and CUDA):
  MultiHeadAttention(query [B,Nq,H*d], key [B,Nk,H*d], value [B,Nk,H*dv]) -> [B,Nq,H*dv]
  attributes num_heads = H, scale. The translation reshapes our [B,H,N,d] tensors to that layout
  and back (Transpose + Reshape; ONNX Runtime folds the transposes that cancel).

    set_attention_impl("custom", dense_forward="ort")   # model.attention() -> this op when dense
"""
from __future__ import annotations

import torch

DOMAIN = "com.microsoft"
VERSION = 1


@torch.library.custom_op("fastvmt::ort_mha", mutates_args=())
def ort_mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B,H,Nq,d], k [B,H,Nk,d], v [B,H,Nk,dv] -> [B,H,Nq,dv]; computed in float32 (eager
    reference; the exported node is ONNX Runtime's)."""
    p = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(p, v.float()).to(q.dtype)


@ort_mha.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],))


def schema():
    """The subset of the contrib node's schema the translation uses (the onnx package has no
    schemas for ONNX Runtime's contrib domain)."""
    import onnx
    S = onnx.defs.OpSchema
    P = S.FormalParameter
    return S("MultiHeadAttention", DOMAIN, VERSION,
             inputs=[P("query", "T"), P("key", "T"), P("value", "T")],
             outputs=[P("output", "T")],
             type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
             attributes=[S.Attribute("num_heads", S.AttrType.INT, "heads"),
                         S.Attribute("scale", S.AttrType.FLOAT, "logit scale", required=False)])


def translation_table(heads: int):
    """custom_translation_table entry for torch.onnx.export. `heads` is static (the model's head
    count): the node needs it as an attribute, and the graph only knows it as a shape."""
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    mha = Op(Opset(DOMAIN, VERSION), "MultiHeadAttention", schema())

    def to_bsd(x):  # [B,H,N,d] -> [B,N,H*d]
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

    def fwd(q, k, v, scale):
        out = mha(to_bsd(q), to_bsd(k), to_bsd(v), num_heads=int(heads), scale=float(scale))
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, int(heads), -1])), perm=[0, 2, 1, 3])

    return {torch.ops.fastvmt.ort_mha.default: fwd}
