"""RMSNorm and tanh-GELU as single ONNX Runtime contrib nodes (`export_wan.py --fused-norms`).

Why: at opset 18 the exporter writes `torch.nn.RMSNorm` as Cast/Pow/ReduceMean/Add/Sqrt/
Reciprocal/Mul/Cast and tanh-GELU as eight elementwise nodes, and ONNX Runtime's CUDA provider
runs each as its own pass over the activations (Wan2.1-1.3B: 4 RMSNorms and one GELU over
[2, 32760, 8960] per block). ONNX Runtime's own fusions do not match these patterns (checked on
the optimised graph), so the translation emits the fused nodes directly:

  aten.rms_norm(x, shape, weight, eps) -> SimplifiedLayerNormalization(x, weight) (ONNX Runtime
      registers it in the default domain)
      axis = -len(shape), epsilon = eps, stash_type = 1 (float32 statistics, as torch computes
      them for half inputs)
  aten.gelu(x, approximate="tanh")     -> com.microsoft.FastGelu(x)
      (erf GELU is left to the exporter)

Both are contrib operators of stock ONNX Runtime (CPU and CUDA providers).
"""
from __future__ import annotations

import torch

DOMAIN = "com.microsoft"
VERSION = 1


def _schemas():
    import onnx
    S = onnx.defs.OpSchema
    P = S.FormalParameter
    T = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")]
    norm = S("SimplifiedLayerNormalization", "", 1,
             inputs=[P("X", "T"), P("scale", "T")], outputs=[P("Y", "T")], type_constraints=T,
             attributes=[S.Attribute("axis", S.AttrType.INT, "first normalised axis", required=False),
                         S.Attribute("epsilon", S.AttrType.FLOAT, "epsilon", required=False),
                         S.Attribute("stash_type", S.AttrType.INT, "statistics type", required=False)])
    gelu = S("FastGelu", DOMAIN, VERSION, inputs=[P("X", "T")], outputs=[P("Y", "T")], type_constraints=T)
    return norm, gelu


def translation_table():
    """custom_translation_table entries for torch.onnx.export (dynamo)."""
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    s_norm, s_gelu = _schemas()
    # ONNX Runtime registers SimplifiedLayerNormalization in the default domain (a contrib op
    # there since version 1), FastGelu in com.microsoft.
    norm_op = Op(Opset("", 18), "SimplifiedLayerNormalization", s_norm)
    gelu_op = Op(Opset(DOMAIN, VERSION), "FastGelu", s_gelu)

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        if weight is None:
            raise NotImplementedError("fused_ops: RMSNorm without a weight is not translated")
        if eps is None:
            raise NotImplementedError("fused_ops: RMSNorm without an explicit eps is not translated")
        return norm_op(x, weight, axis=-len(normalized_shape), epsilon=float(eps), stash_type=1)

    def gelu(x, approximate="none"):
        if approximate == "tanh":
            return gelu_op(x)
        # erf GELU: the standard formula (opset 18 has no Gelu node)
        def c(v):
            return op.CastLike(op.Constant(value_float=v), x)
        return op.Mul(op.Mul(x, c(0.5)), op.Add(op.Erf(op.Div(x, c(2 ** 0.5))), c(1.0)))

    return {torch.ops.aten.rms_norm.default: rms_norm, torch.ops.aten.gelu.default: gelu}
