//! The DiT block's fp32 islands as ONNX Runtime custom operators: domain `fastvmt.norm`,
//! version 1 (`export_wan.py --fused-modulation` writes them into the forward-only graphs).
//!
//! ## `fastvmt.norm.ModulatedLayerNorm` (v1)
//! Inputs `x [B, N, C]` (T: float, float16 or bfloat16), `mul`, `add` (float32, `C` values per
//! row, one row or one per sample: shapes `[C]`, `[1, C]`, `[B, 1, C]`...). Attribute
//! `epsilon` (float, default 1e-6). Output `y` (T, x's shape):
//! `y = T((x - mean) * rsqrt(var + epsilon) * mul + add)` over the C channels, in f32.
//!
//! ## `fastvmt.norm.GatedResidual` (v1)
//! Inputs `h`, `o` (T, `[B, N, C]`), `gate` (float32, as `mul`). Output `y = T(f32(h) + f32(o) *
//! gate)`.
//!
//! The definitions and the work live in `fastvmt_kernels::norm`; the CPU variants call its CPU
//! functions on ONNX Runtime's host buffers, the CUDA variants its kernels on ONNX Runtime's
//! device buffers and stream (asynchronous). Errors name the node and the problem.

use std::ops::RangeInclusive;

use fastvmt_kernels::norm::{check_table, RowsShape};
use fastvmt_kernels::Element;
use half::{bf16, f16};
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::{PrimitiveTensorElementType, TensorElementType};

use super::attention_ops::{dims, guarded, host, host_mut, input, output, Dt, Fallible, In};

/// The custom-op domain the exporter writes.
pub const DOMAIN: &str = "fastvmt.norm";
/// The domain version these operators implement.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ModulatedLayerNorm,
    GatedResidual,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ModulatedLayerNorm => "ModulatedLayerNorm",
            Op::GatedResidual => "GatedResidual",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct NormOperator {
    op: Op,
    dt: Dt,
    cuda: bool,
}

/// The domain with every variant (both ops × f32/f16/bf16 × CPU/CUDA).
pub fn domain() -> ort::Result<OperatorDomain> {
    let mut d = OperatorDomain::new(DOMAIN)?;
    for op in [Op::ModulatedLayerNorm, Op::GatedResidual] {
        for dt in [Dt::F32, Dt::F16, Dt::Bf16] {
            for cuda in [false, true] {
                d = d.add(NormOperator { op, dt, cuda })?;
            }
        }
    }
    Ok(d)
}

impl Operator for NormOperator {
    type Kernel<'attr> = NormKernel;

    fn name(&self) -> &str {
        self.op.name()
    }

    fn versions(&self) -> RangeInclusive<u32> {
        VERSION..=VERSION
    }

    fn execution_provider_type(&self) -> Option<&str> {
        self.cuda.then_some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let t = || OperatorInput::required(self.dt.ort());
        let f = || OperatorInput::required(TensorElementType::Float32);
        match self.op {
            Op::ModulatedLayerNorm => vec![t(), f(), f()],
            Op::GatedResidual => vec![t(), t(), f()],
        }
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.dt.ort())]
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<NormKernel> {
        let node = kctx.node_name().unwrap_or_default();
        let label = format!("{DOMAIN}.{} node '{node}'", self.op.name());
        let eps = kctx.get::<f32>("epsilon").unwrap_or(1e-6);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(ort::Error::new(format!(
                "{label}: attribute epsilon must be finite and >= 0, got {eps}"
            )));
        }
        Ok(NormKernel {
            operator: *self,
            label,
            eps,
        })
    }
}

struct NormKernel {
    operator: NormOperator,
    /// `fastvmt.norm.<Op> node '<name>'`, the prefix of every error.
    label: String,
    eps: f32,
}

impl Kernel for NormKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        guarded(&self.label, || self.compute_inner(ctx))
    }
}

/// `[B, N, C]` of a rank-3 input.
fn rows_shape(t: &In<'_>, name: &str) -> Fallible<RowsShape> {
    match dims(t, name)?[..] {
        [batch, tokens, channels] => Ok(RowsShape {
            batch,
            tokens,
            channels,
        }),
        ref other => Err(format!(
            "input {name} must be [B, N, C], got shape {other:?}"
        )),
    }
}

/// Rows of a per-channel table (1 or B), with a message naming the input.
fn table_rows(t: &In<'_>, name: &'static str, shape: &RowsShape) -> Fallible<usize> {
    let ts = dims(t, name)?;
    let len: usize = ts.iter().product();
    let per_token = ts.len() < 3 || ts[ts.len() - 2] == 1;
    match check_table(shape, name, len) {
        Ok(rows) if per_token && ts.last() == Some(&shape.channels) => Ok(rows),
        _ => Err(format!(
            "input {name} has shape {ts:?}: expected {} channels for one sample or each of {} (e.g. [{}] or [{}, 1, {}])",
            shape.channels, shape.batch, shape.channels, shape.batch, shape.channels
        )),
    }
}

impl NormKernel {
    fn compute_inner(&self, ctx: &ComputeContext) -> Fallible<()> {
        let op = self.operator;
        let names = match op.op {
            Op::ModulatedLayerNorm => ["x", "mul", "add"],
            Op::GatedResidual => ["h", "o", "gate"],
        };
        let first = input(ctx, 0, names[0])?;
        let shape = rows_shape(&first, names[0])?;
        let second = input(ctx, 1, names[1])?;
        let third = input(ctx, 2, names[2])?;
        let out_dims = [shape.batch, shape.tokens, shape.channels];
        match op.op {
            Op::ModulatedLayerNorm => {
                let mul_rows = table_rows(&second, "mul", &shape)?;
                let add_rows = table_rows(&third, "add", &shape)?;
                let mut y = output(ctx, 0, "y", &out_dims)?;
                if op.cuda {
                    let (kernels, stream) = cuda::setup(ctx, &first)?;
                    // SAFETY: ONNX Runtime's device buffers of the shapes checked above, alive
                    // during this compute; queued on its own stream.
                    return unsafe {
                        kernels.modulated_layer_norm_raw(
                            cuda::dtype(op.dt),
                            first.data_ptr() as u64,
                            shape,
                            second.data_ptr() as u64,
                            mul_rows,
                            third.data_ptr() as u64,
                            add_rows,
                            self.eps,
                            y.data_ptr() as u64,
                            stream as _,
                        )
                    }
                    .map_err(|e| e.to_string());
                }
                let (mul, add) = (host::<f32>(&second, "mul")?, host::<f32>(&third, "add")?);
                match op.dt {
                    Dt::F32 => cpu_modln::<f32>(&first, shape, mul, add, self.eps, &mut y),
                    Dt::F16 => cpu_modln::<f16>(&first, shape, mul, add, self.eps, &mut y),
                    Dt::Bf16 => cpu_modln::<bf16>(&first, shape, mul, add, self.eps, &mut y),
                }
            }
            Op::GatedResidual => {
                if dims(&second, "o")? != out_dims {
                    return Err(format!(
                        "input o has shape {:?}, h has {out_dims:?}",
                        dims(&second, "o")?
                    ));
                }
                let gate_rows = table_rows(&third, "gate", &shape)?;
                let mut y = output(ctx, 0, "y", &out_dims)?;
                if op.cuda {
                    let (kernels, stream) = cuda::setup(ctx, &first)?;
                    // SAFETY: as above.
                    return unsafe {
                        kernels.gated_residual_raw(
                            cuda::dtype(op.dt),
                            first.data_ptr() as u64,
                            second.data_ptr() as u64,
                            third.data_ptr() as u64,
                            gate_rows,
                            shape,
                            y.data_ptr() as u64,
                            stream as _,
                        )
                    }
                    .map_err(|e| e.to_string());
                }
                let gate = host::<f32>(&third, "gate")?;
                match op.dt {
                    Dt::F32 => cpu_gres::<f32>(&first, &second, gate, shape, &mut y),
                    Dt::F16 => cpu_gres::<f16>(&first, &second, gate, shape, &mut y),
                    Dt::Bf16 => cpu_gres::<bf16>(&first, &second, gate, shape, &mut y),
                }
            }
        }
    }
}

fn cpu_modln<T: Element + PrimitiveTensorElementType>(
    x: &In<'_>,
    shape: RowsShape,
    mul: &[f32],
    add: &[f32],
    eps: f32,
    y: &mut super::attention_ops::Out<'_>,
) -> Fallible<()> {
    let x = host::<T>(x, "x")?;
    let y = host_mut::<T>(y, "y")?;
    fastvmt_kernels::norm::cpu::modulated_layer_norm(x, shape, mul, add, eps, y)
        .map_err(|e| e.to_string())
}

fn cpu_gres<T: Element + PrimitiveTensorElementType>(
    h: &In<'_>,
    o: &In<'_>,
    gate: &[f32],
    shape: RowsShape,
    y: &mut super::attention_ops::Out<'_>,
) -> Fallible<()> {
    let (h, o) = (host::<T>(h, "h")?, host::<T>(o, "o")?);
    let y = host_mut::<T>(y, "y")?;
    fastvmt_kernels::norm::cpu::gated_residual(h, o, gate, shape, y).map_err(|e| e.to_string())
}

/// The CUDA variants' set-up: the device's kernels and ONNX Runtime's stream.
mod cuda {
    use super::{Dt, Fallible, In};
    use fastvmt_kernels::attention::cuda::DType;
    use fastvmt_kernels::norm::cuda::CudaNorm;
    use ort::operator::ComputeContext;

    pub(super) fn dtype(dt: Dt) -> DType {
        match dt {
            Dt::F32 => DType::F32,
            Dt::F16 => DType::F16,
            Dt::Bf16 => DType::BF16,
        }
    }

    pub(super) fn setup(
        ctx: &ComputeContext,
        x: &In<'_>,
    ) -> Fallible<(std::sync::Arc<CudaNorm>, *mut std::ffi::c_void)> {
        let device = x.memory_info().device_id();
        let device = usize::try_from(device).map_err(|_| format!("bad CUDA device id {device}"))?;
        let stream = ctx
            .stream()
            .map_err(|e| format!("cannot get ONNX Runtime's CUDA stream: {e}"))?
            .ok_or("ONNX Runtime gave no CUDA stream to a CUDA kernel")?;
        let kernels = CudaNorm::get(device).map_err(|e| e.to_string())?;
        Ok((kernels, stream.as_ptr()))
    }
}
