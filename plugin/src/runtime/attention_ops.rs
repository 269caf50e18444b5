//! The fused attention as ONNX Runtime custom operators: domain `fastvmt`, version 1.
//!
//! The exporter (`onnx/fastvmt_onnx/custom_attention.py`, `--custom-attention`) writes every
//! attention of a DiT as a `fastvmt.Attention` node and its backward (in `guidance_grad`) as a
//! `fastvmt.AttentionGrad` node, so that neither the forward nor the guidance gradient builds an
//! `N x N` matrix. [`domain`] holds every variant; [`crate::model::dit`] registers it on every
//! session. The operators are thin: the definition and the work live in
//! `fastvmt_kernels::attention` (its module docs define the mask and the backward).
//!
//! ## `fastvmt.Attention` (v1)
//! Inputs `q [B,H,Nq,d]`, `k [B,H,Nk,d]`, `v [B,H,Nk,dv]` (one element type T: float, float16
//! or bfloat16) and an optional `grid` (int64 `[3]` = frames, height, width of the video-token
//! grid; required when the window is local). Attributes: `scale` (float; absent or 0 →
//! `1/sqrt(d)`), `temporal_radius` and `spatial_radius` (int; both absent or -1 → dense; both
//! ≥ 0 → the 3D local window, `Nq == frames*height*width` video tokens in raster order and
//! `Nk ≥ Nq` keys whose extra trailing tokens every query sees). Outputs `out [B,H,Nq,dv]` (T)
//! and `lse [B,H,Nq]` (float32, natural log-sum-exp of the scaled, masked logits).
//!
//! ## `fastvmt.AttentionGrad` (v1)
//! Inputs `dout`, `q`, `k`, `v`, `out` (T), `lse` (float32), optional `grid`; the same
//! attributes; outputs `dq`, `dk`, `dv` (T, shaped like q, k, v).
//!
//! Create sessions with the domain under [`registration_lock`] (ONNX Runtime's domain map is
//! not safe against concurrent registration).
//!
//! ## Variants
//! One [`ort::operator::Operator`] per (op, element type, execution provider): 2 × 3 × 2. The
//! CPU variants call `attention::cpu::{forward, backward}` on ONNX Runtime's host buffers; the
//! CUDA variants (`CUDAExecutionProvider`) hand ONNX Runtime's device pointers and its compute
//! stream to `attention::cuda::CudaAttention::{forward_raw, backward_raw}` (asynchronous on that
//! stream). The CUDA variants declare `grid` a CPU input (`MemoryType::CPUInput`): ONNX Runtime
//! keeps or copies those three numbers on the host, so no device read is needed.
//!
//! Every failure inside a kernel (bad shapes, a missing `grid`, a kernel error, a panic) comes
//! back as an ONNX Runtime error naming the node and the problem; panics are caught here, since
//! ort does not catch them at the FFI boundary.

use std::ops::RangeInclusive;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fastvmt_kernels::attention::{AttentionMask, AttentionShape, AttentionSpec, LocalWindow};
use fastvmt_kernels::Element;
use ort::memory::MemoryType;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::PrimitiveTensorElementType;
use ort::value::{DynTensorValueType, TensorElementType, ValueRef, ValueRefMut};

/// The custom-op domain the exporter writes.
pub const DOMAIN: &str = "fastvmt";
/// The domain version these operators implement (the manifest's `custom_ops.fastvmt` and the
/// graphs' opset import must not ask for more).
pub const VERSION: u32 = 1;

const CUDA_EP: &str = "CUDAExecutionProvider";

/// Which operator of the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Forward,
    Grad,
}

/// Element type T of q/k/v/out and the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dt {
    F32,
    F16,
    Bf16,
}

impl Dt {
    pub(crate) fn ort(self) -> TensorElementType {
        match self {
            Dt::F32 => TensorElementType::Float32,
            Dt::F16 => TensorElementType::Float16,
            Dt::Bf16 => TensorElementType::Bfloat16,
        }
    }
}

/// Where the variant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ep {
    Cpu,
    Cuda,
}

/// One registered variant.
#[derive(Debug, Clone, Copy)]
struct AttentionOperator {
    op: Op,
    dt: Dt,
    ep: Ep,
}

/// Hold this while creating (committing) a session that registers [`domain`].
///
/// ONNX Runtime records a custom domain's version range in a process-wide map when a session
/// with that domain is created, with an unguarded check-then-insert: two sessions created at
/// once on different threads can both insert and one fails with "Trying to add a domain to
/// DomainToVersion map, but the domain is already exist" (seen with `cargo test`'s threads).
pub fn registration_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `fastvmt` domain with every variant (both ops × f32/f16/bf16 × CPU/CUDA).
pub fn domain() -> ort::Result<OperatorDomain> {
    let mut d = OperatorDomain::new(DOMAIN)?;
    for op in [Op::Forward, Op::Grad] {
        for dt in [Dt::F32, Dt::F16, Dt::Bf16] {
            for ep in [Ep::Cpu, Ep::Cuda] {
                d = d.add(AttentionOperator { op, dt, ep })?;
            }
        }
    }
    Ok(d)
}

impl AttentionOperator {
    fn op_name(&self) -> &'static str {
        match self.op {
            Op::Forward => "Attention",
            Op::Grad => "AttentionGrad",
        }
    }

    /// Index of the optional `grid` input.
    fn grid_index(&self) -> usize {
        match self.op {
            Op::Forward => 3,
            Op::Grad => 6,
        }
    }
}

impl Operator for AttentionOperator {
    type Kernel<'attr> = AttentionKernel;

    fn name(&self) -> &str {
        self.op_name()
    }

    fn versions(&self) -> RangeInclusive<u32> {
        VERSION..=VERSION
    }

    fn execution_provider_type(&self) -> Option<&str> {
        match self.ep {
            Ep::Cpu => None,
            Ep::Cuda => Some(CUDA_EP),
        }
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let t = || OperatorInput::required(self.dt.ort());
        let mut v = match self.op {
            Op::Forward => vec![t(), t(), t()],
            Op::Grad => vec![
                t(),
                t(),
                t(),
                t(),
                t(),
                OperatorInput::required(TensorElementType::Float32),
            ],
        };
        let grid = OperatorInput::optional(TensorElementType::Int64);
        v.push(match self.ep {
            Ep::Cpu => grid,
            Ep::Cuda => grid.memory_type(MemoryType::CPUInput),
        });
        v
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let t = || OperatorOutput::required(self.dt.ort());
        match self.op {
            Op::Forward => vec![t(), OperatorOutput::required(TensorElementType::Float32)],
            Op::Grad => vec![t(), t(), t()],
        }
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<AttentionKernel> {
        let node = kctx.node_name().unwrap_or_default();
        let label = format!("{DOMAIN}.{} node '{node}'", self.op_name());
        let scale = kctx.get::<f32>("scale").unwrap_or(0.0);
        if !scale.is_finite() || scale < 0.0 {
            return Err(ort::Error::new(format!(
                "{label}: attribute scale must be finite and >= 0 (0 = 1/sqrt(d)), got {scale}"
            )));
        }
        let tr = kctx.get::<i64>("temporal_radius").unwrap_or(-1);
        let sr = kctx.get::<i64>("spatial_radius").unwrap_or(-1);
        let radii = match (tr, sr) {
            (-1, -1) => None,
            (t, s) if t >= 0 && s >= 0 => Some((t as usize, s as usize)),
            (t, s) => {
                return Err(ort::Error::new(format!(
                    "{label}: temporal_radius {t} and spatial_radius {s}: both must be >= 0 (local window) or both -1/absent (dense)"
                )))
            }
        };
        Ok(AttentionKernel {
            operator: *self,
            label,
            scale,
            radii,
        })
    }
}

/// A node's kernel: its attributes, read once.
struct AttentionKernel {
    operator: AttentionOperator,
    /// `fastvmt.Attention node '<name>'`, the prefix of every error.
    label: String,
    /// 0 = `1/sqrt(d)`.
    scale: f32,
    /// `(temporal, spatial)` radii of a local window; `None` = dense.
    radii: Option<(usize, usize)>,
}

impl Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        guarded(&self.label, || self.compute_inner(ctx))
    }
}

/// Runs a kernel body and turns its error, or a panic (ort does not catch them at the FFI
/// boundary), into an ONNX Runtime error that starts with the node's `label`.
pub(crate) fn guarded(label: &str, body: impl FnOnce() -> Fallible<()>) -> ort::Result<()> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(ort::Error::new(format!("{label}: {message}"))),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ort::Error::new(format!(
                "{label}: the kernel panicked: {what}"
            )))
        }
    }
}

/// Errors inside a kernel, as text (turned into an `ort::Error` with the node's label).
pub(crate) type Fallible<T> = Result<T, String>;

/// A tensor input (downcast once: shapes, host slices and device pointers all need it).
pub(crate) type In<'a> = ValueRef<'a, DynTensorValueType>;
/// A tensor output.
pub(crate) type Out<'a> = ValueRefMut<'a, DynTensorValueType>;

pub(crate) fn input<'a>(ctx: &'a ComputeContext, idx: usize, name: &str) -> Fallible<In<'a>> {
    ctx.input(idx)
        .map_err(|e| format!("cannot read input {idx} ({name}): {e}"))?
        .ok_or_else(|| format!("input {idx} ({name}) is missing"))?
        .downcast::<DynTensorValueType>()
        .map_err(|e| format!("input {idx} ({name}) is not a tensor: {e}"))
}

pub(crate) fn output<'a>(
    ctx: &'a ComputeContext,
    idx: usize,
    name: &str,
    shape: &[usize],
) -> Fallible<Out<'a>> {
    let shape: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
    ctx.output(idx, shape)
        .map_err(|e| format!("cannot allocate output {idx} ({name}): {e}"))?
        .ok_or_else(|| format!("output {idx} ({name}) is not available"))?
        .downcast::<DynTensorValueType>()
        .map_err(|e| format!("output {idx} ({name}) is not a tensor: {e}"))
}

pub(crate) fn dims(t: &In<'_>, name: &str) -> Fallible<Vec<usize>> {
    t.shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("input {name} has a negative dimension")))
        .collect()
}

pub(crate) fn expect_shape(name: &str, got: &[usize], want: &[usize], hint: &str) -> Fallible<()> {
    if got != want {
        return Err(format!(
            "input {name} has shape {got:?}, expected {want:?} ({hint})"
        ));
    }
    Ok(())
}

impl AttentionKernel {
    fn compute_inner(&self, ctx: &ComputeContext) -> Fallible<()> {
        let grad = self.operator.op == Op::Grad;
        // Inputs q, k, v sit at 0..3 (forward) or 1..4 (gradient, after dout).
        let base = usize::from(grad);
        let q = input(ctx, base, "q")?;
        let k = input(ctx, base + 1, "k")?;
        let v = input(ctx, base + 2, "v")?;
        let (qs, ks, vs) = (dims(&q, "q")?, dims(&k, "k")?, dims(&v, "v")?);
        if qs.len() != 4 {
            return Err(format!("input q must be [B, H, Nq, d], got shape {qs:?}"));
        }
        let (b, h, nq, d) = (qs[0], qs[1], qs[2], qs[3]);
        if ks.len() != 4 {
            return Err(format!("input k must be [B, H, Nk, d], got shape {ks:?}"));
        }
        let nk = ks[2];
        expect_shape("k", &ks, &[b, h, nk, d], "[B, H, Nk, d] with q's B, H, d")?;
        if vs.len() != 4 {
            return Err(format!("input v must be [B, H, Nk, dv], got shape {vs:?}"));
        }
        let dv = vs[3];
        expect_shape(
            "v",
            &vs,
            &[b, h, nk, dv],
            "[B, H, Nk, dv] with k's B, H, Nk",
        )?;
        let shape = AttentionShape {
            batch: b,
            heads: h,
            q_len: nq,
            kv_len: nk,
            head_dim: d,
            v_dim: dv,
        };
        let mask = match self.radii {
            None => AttentionMask::Dense,
            Some((temporal_radius, spatial_radius)) => {
                let [frames, height, width] = self.grid(ctx)?;
                AttentionMask::Local(LocalWindow {
                    frames,
                    height,
                    width,
                    temporal_radius,
                    spatial_radius,
                })
            }
        };
        let scale = if self.scale > 0.0 {
            self.scale
        } else {
            1.0 / (d.max(1) as f32).sqrt()
        };
        let spec = AttentionSpec { shape, mask, scale };
        let out_shape = [b, h, nq, dv];
        if grad {
            let dout = input(ctx, 0, "dout")?;
            let out = input(ctx, 4, "out")?;
            let lse = input(ctx, 5, "lse")?;
            expect_shape("dout", &dims(&dout, "dout")?, &out_shape, "[B, H, Nq, dv]")?;
            expect_shape("out", &dims(&out, "out")?, &out_shape, "[B, H, Nq, dv]")?;
            expect_shape("lse", &dims(&lse, "lse")?, &[b, h, nq], "[B, H, Nq]")?;
            let dq = output(ctx, 0, "dq", &qs)?;
            let dk = output(ctx, 1, "dk", &ks)?;
            let dvv = output(ctx, 2, "dv", &vs)?;
            if qs.contains(&0) || ks.contains(&0) || vs.contains(&0) {
                return Ok(()); // nothing to compute; the kernels refuse empty shapes
            }
            spec.validate().map_err(|e| e.to_string())?;
            let ins = GradIo {
                dout,
                q,
                k,
                v,
                out,
                lse,
                dq,
                dk,
                dv: dvv,
            };
            match self.operator.ep {
                Ep::Cpu => match self.operator.dt {
                    Dt::F32 => cpu_backward::<f32>(&spec, ins),
                    Dt::F16 => cpu_backward::<half::f16>(&spec, ins),
                    Dt::Bf16 => cpu_backward::<half::bf16>(&spec, ins),
                },
                Ep::Cuda => cuda::backward(ctx, self.operator.dt, &spec, ins),
            }
        } else {
            let out = output(ctx, 0, "out", &out_shape)?;
            let lse = output(ctx, 1, "lse", &[b, h, nq])?;
            if qs.contains(&0) || ks.contains(&0) || vs.contains(&0) {
                return Ok(());
            }
            spec.validate().map_err(|e| e.to_string())?;
            let io = ForwardIo { q, k, v, out, lse };
            match self.operator.ep {
                Ep::Cpu => match self.operator.dt {
                    Dt::F32 => cpu_forward::<f32>(&spec, io),
                    Dt::F16 => cpu_forward::<half::f16>(&spec, io),
                    Dt::Bf16 => cpu_forward::<half::bf16>(&spec, io),
                },
                Ep::Cuda => cuda::forward(ctx, self.operator.dt, &spec, io),
            }
        }
    }

    /// The `grid` input (host memory on both providers; see the module docs).
    fn grid(&self, ctx: &ComputeContext) -> Fallible<[usize; 3]> {
        let idx = self.operator.grid_index();
        let missing = || {
            "a local window (temporal_radius/spatial_radius set) needs the grid input (int64 [3] = frames, height, width)".to_string()
        };
        let n = ctx
            .num_inputs()
            .map_err(|e| format!("cannot count inputs: {e}"))?;
        if n <= idx {
            return Err(missing());
        }
        let g = ctx
            .input(idx)
            .map_err(|e| format!("cannot read input grid: {e}"))?
            .ok_or_else(missing)?;
        let (shape, data) = g
            .try_extract_tensor::<i64>()
            .map_err(|e| format!("cannot read input grid (int64 [3] on the host): {e}"))?;
        if shape.len() != 1 || data.len() != 3 {
            return Err(format!(
                "input grid must be int64 [3] (frames, height, width), got shape {:?}",
                &shape[..]
            ));
        }
        let mut out = [0usize; 3];
        for (o, &x) in out.iter_mut().zip(data) {
            *o = usize::try_from(x)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("input grid {data:?} must be positive"))?;
        }
        Ok(out)
    }
}

struct ForwardIo<'a> {
    q: In<'a>,
    k: In<'a>,
    v: In<'a>,
    out: Out<'a>,
    lse: Out<'a>,
}

struct GradIo<'a> {
    dout: In<'a>,
    q: In<'a>,
    k: In<'a>,
    v: In<'a>,
    out: In<'a>,
    lse: In<'a>,
    dq: Out<'a>,
    dk: Out<'a>,
    dv: Out<'a>,
}

pub(crate) fn host<'a, T: PrimitiveTensorElementType>(
    v: &'a In<'_>,
    name: &str,
) -> Fallible<&'a [T]> {
    match v.try_extract_tensor::<T>() {
        Ok((_, d)) => Ok(d),
        Err(_) if is_pinned_host(v.memory_info()) => {
            let n = element_count::<T>(v.data_type(), v.shape(), name)?;
            if n == 0 {
                return Ok(&[]);
            }
            // SAFETY: CUDA-pinned memory is host memory; ONNX Runtime keeps this input's buffer of
            // `n` elements of type T (checked above) alive, and unwritten, for the compute call.
            Ok(unsafe { std::slice::from_raw_parts(v.data_ptr().cast::<T>(), n) })
        }
        Err(e) => Err(format!("input {name}: {e}")),
    }
}

pub(crate) fn host_mut<'a, T: PrimitiveTensorElementType>(
    v: &'a mut Out<'_>,
    name: &str,
) -> Fallible<&'a mut [T]> {
    if is_pinned_host(v.memory_info()) {
        let n = element_count::<T>(v.data_type(), v.shape(), name)?;
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `host`; this output buffer is ours alone to write until the compute
        // returns. (`ort` has no `data_ptr_mut` through `ValueRefMut`.)
        return Ok(unsafe {
            std::slice::from_raw_parts_mut(v.data_ptr().cast::<T>().cast_mut(), n)
        });
    }
    v.try_extract_tensor_mut::<T>()
        .map(|(_, d)| d)
        .map_err(|e| format!("output {name}: {e}"))
}

/// ONNX Runtime (1.23 on) hands a CPU node inside a CUDA session its tensors in CUDA-pinned host
/// memory, which `ort` below its api-23 feature does not count as host-accessible (found on the
/// GPU host: the AMF operator's CPU variant failed to read Q). It is host memory.
fn is_pinned_host(info: &ort::memory::MemoryInfo<'_>) -> bool {
    info.allocation_device() == ort::memory::AllocationDevice::CUDA_PINNED
}

fn element_count<T: PrimitiveTensorElementType>(
    ty: &TensorElementType,
    shape: &ort::value::Shape,
    name: &str,
) -> Fallible<usize> {
    if *ty != T::into_tensor_element_type() {
        return Err(format!(
            "{name}: a tensor of {ty}, expected {}",
            T::into_tensor_element_type()
        ));
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
        .ok_or_else(|| format!("{name}: bad shape {shape:?}"))
}

fn cpu_forward<T: Element + PrimitiveTensorElementType>(
    spec: &AttentionSpec,
    mut io: ForwardIo<'_>,
) -> Fallible<()> {
    let (q, k, v) = (
        host::<T>(&io.q, "q")?,
        host::<T>(&io.k, "k")?,
        host::<T>(&io.v, "v")?,
    );
    let out = host_mut::<T>(&mut io.out, "out")?;
    let lse = host_mut::<f32>(&mut io.lse, "lse")?;
    fastvmt_kernels::attention::cpu::forward(spec, q, k, v, out, lse).map_err(|e| e.to_string())
}

fn cpu_backward<T: Element + PrimitiveTensorElementType>(
    spec: &AttentionSpec,
    mut io: GradIo<'_>,
) -> Fallible<()> {
    let dout = host::<T>(&io.dout, "dout")?;
    let (q, k, v) = (
        host::<T>(&io.q, "q")?,
        host::<T>(&io.k, "k")?,
        host::<T>(&io.v, "v")?,
    );
    let out = host::<T>(&io.out, "out")?;
    let lse = host::<f32>(&io.lse, "lse")?;
    let dq = host_mut::<T>(&mut io.dq, "dq")?;
    let dk = host_mut::<T>(&mut io.dk, "dk")?;
    let dv = host_mut::<T>(&mut io.dv, "dv")?;
    fastvmt_kernels::attention::cpu::backward(spec, dout, q, k, v, out, lse, dq, dk, dv)
        .map_err(|e| e.to_string())
}

/// The CUDA variants: ONNX Runtime's device pointers and stream, handed to the CUDA kernels.
mod cuda {
    use super::{Dt, Fallible, ForwardIo, GradIo, In, Out};
    use fastvmt_kernels::attention::cuda::{CudaAttention, DType};
    use fastvmt_kernels::attention::AttentionSpec;
    use ort::operator::ComputeContext;

    fn dtype(dt: Dt) -> DType {
        match dt {
            Dt::F32 => DType::F32,
            Dt::F16 => DType::F16,
            Dt::Bf16 => DType::BF16,
        }
    }

    fn ptr(v: &In<'_>) -> u64 {
        v.data_ptr() as u64
    }

    /// Device pointer of an output (ort has no `data_ptr_mut` through `ValueRefMut`).
    fn ptr_mut(v: &Out<'_>) -> u64 {
        v.data_ptr() as u64
    }

    type Setup = (std::sync::Arc<CudaAttention>, *mut std::ffi::c_void);

    /// The device's kernels (compiled once per device) and ONNX Runtime's stream.
    fn setup(ctx: &ComputeContext, q: &In<'_>) -> Fallible<Setup> {
        let device = q.memory_info().device_id();
        let stream = ctx
            .stream()
            .map_err(|e| format!("cannot get ONNX Runtime's CUDA stream: {e}"))?
            .ok_or("ONNX Runtime gave no CUDA stream to a CUDA kernel")?;
        let device = usize::try_from(device).map_err(|_| format!("bad CUDA device id {device}"))?;
        let kernels = CudaAttention::get(device).map_err(|e| e.to_string())?;
        Ok((kernels, stream.as_ptr()))
    }

    pub(super) fn forward(
        ctx: &ComputeContext,
        dt: Dt,
        spec: &AttentionSpec,
        io: ForwardIo<'_>,
    ) -> Fallible<()> {
        let (kernels, stream) = setup(ctx, &io.q)?;
        let (q, k, v) = (ptr(&io.q), ptr(&io.k), ptr(&io.v));
        let (out, lse) = (ptr_mut(&io.out), ptr_mut(&io.lse));
        // SAFETY: the pointers are ONNX Runtime's device buffers of the shapes `spec` was built
        // from (checked by the caller), alive until this compute returns; the kernels are
        // queued on ONNX Runtime's own stream, which orders every later use of the outputs.
        unsafe { kernels.forward_raw(dtype(dt), spec, q, k, v, out, lse, stream as _) }
            .map_err(|e| e.to_string())
    }

    pub(super) fn backward(
        ctx: &ComputeContext,
        dt: Dt,
        spec: &AttentionSpec,
        io: GradIo<'_>,
    ) -> Fallible<()> {
        let (kernels, stream) = setup(ctx, &io.q)?;
        let (dout, q, k, v) = (ptr(&io.dout), ptr(&io.q), ptr(&io.k), ptr(&io.v));
        let (out, lse) = (ptr(&io.out), ptr(&io.lse));
        let (dq, dk, dv) = (ptr_mut(&io.dq), ptr_mut(&io.dk), ptr_mut(&io.dv));
        // SAFETY: as in `forward`.
        unsafe {
            kernels.backward_raw(
                dtype(dt),
                spec,
                dout,
                q,
                k,
                v,
                out,
                lse,
                dq,
                dk,
                dv,
                stream as _,
            )
        }
        .map_err(|e| e.to_string())
    }
}
