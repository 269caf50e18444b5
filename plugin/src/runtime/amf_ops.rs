//! The AMF loss and its gradient as an ONNX Runtime custom operator: domain `fastvmt.amf`,
//! version 1. It lets one graph (`guidance_step`, `export_wan.py --guidance-step`) do a whole
//! real gradient — forward to the motion block's Q/K, the AMF loss, the backward to the latent —
//! in one run, instead of a `guidance_head` run, the AMF on the host and a `guidance_grad` run
//! that repeats the forward.
//!
//! ## `fastvmt.amf.AmfLossGrad` (v1)
//! Inputs:
//! - `q`, `k` `[1, H, F*h*w, d]` (T: float, float16 or bfloat16; raster token order, as the
//!   guidance head outputs them);
//! - `grid` int64 `[3]` = (F, h, w);
//! - `reference` float `[P, h*w, 2]`: the reference AMF for the pair set the config names;
//! - `config` float `[8]` ([`OpConfig`]): tau, span, radius, centre, pair weights, threshold,
//!   backend.
//!
//! Outputs: `loss` float `[1]`, `dq`, `dk` float (shaped like q, k): the definitions of
//! `fastvmt_kernels` (its crate docs), computed by `amf_loss_and_grad`.
//!
//! Variants: the CUDA provider's (default on CUDA sessions): the kernels' raw-pointer entry
//! (`CudaAmf::loss_and_grad_raw_device_reference`) on ONNX Runtime's device buffers, after its
//! stream, with the reference in device memory too (its loss plan is built there, so a sampler
//! that keeps the reference field on the device copies nothing); and the CPU
//! provider's (CPU sessions, or every session with `FASTVMT_AMF_OP=cpu`: in a CUDA session ONNX
//! Runtime then copies Q/K to the host and dQ/dK back, and the config's backend runs the AMF on
//! the GPU through the kernels' host entry). Measured on the H100 at Wan2.1-1.3B scale
//! (`bench/wan/README.md`): the CUDA variant matches the two-graph route exactly
//! (`bench/wan/tests/cuda_run.rs`), and one `guidance_step` run per real gradient took `fastvmt`
//! from 81.0 s (two graphs) to 67.0 s, host AMF time from 6.0 s to 0.6 s.

use std::ops::RangeInclusive;

use fastvmt_kernels::{
    amf_loss_and_grad, resolve_pairs, AmfField, AmfSpec, Backend, KeyWindow, LossSpec, PairSet,
    PairWeights, WindowCentre,
};
use half::{bf16, f16};
use ort::memory::MemoryType;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use super::attention_ops::{dims, guarded, host, host_mut, input, output, Dt, Fallible, In};

pub const DOMAIN: &str = "fastvmt.amf";
pub const VERSION: u32 = 1;

/// `guidance_step`'s graph inputs the operator reads in host memory (both variants), so a host
/// tensor bound to them is never copied to the device. (The reference: on the host for the
/// CPU variant only; see [`reference_on_device`].)
pub const HOST_INPUTS: [&str; 1] = ["amf_config"];

/// Whether `guidance_step`'s operator reads the reference field in device memory: its CUDA
/// variant on a CUDA session (the default there, see [`cuda_variant_enabled`]).
pub fn reference_on_device(cuda_session: bool) -> bool {
    cuda_session && cuda_variant_enabled()
}

/// The operator's `config` input, 8 floats in this order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpConfig {
    pub tau: f32,
    /// Forward pairs `1 <= j-i < span`; 0 = every ordered pair (DiTFlow).
    pub span: usize,
    /// Key-window radius; 0 = every key.
    pub radius: usize,
    /// Window centre from FastVMT's coarse 3x4 tiles (else the query's own position).
    pub coarse_tiles: bool,
    pub weight_first: f32,
    pub weight_last: f32,
    /// Loss only where the reference moves more than this (None: every entry).
    pub moving_threshold: Option<f32>,
    /// Where the AMF runs: None = CPU, Some(d) = CUDA device d.
    pub cuda_device: Option<usize>,
}

pub const CONFIG_LEN: usize = 8;

impl OpConfig {
    pub fn encode(&self) -> [f32; CONFIG_LEN] {
        [
            self.tau,
            self.span as f32,
            self.radius as f32,
            if self.coarse_tiles { 1.0 } else { 0.0 },
            self.weight_first,
            self.weight_last,
            self.moving_threshold.unwrap_or(-1.0),
            self.cuda_device.map_or(-1.0, |d| d as f32),
        ]
    }

    pub fn decode(v: &[f32]) -> Fallible<Self> {
        if v.len() != CONFIG_LEN || v.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "input config must be {CONFIG_LEN} finite floats, got {v:?}"
            ));
        }
        let count = |x: f32, what: &str| {
            if x < 0.0 || x.fract() != 0.0 {
                Err(format!(
                    "config {what} must be a whole number >= 0, got {x}"
                ))
            } else {
                Ok(x as usize)
            }
        };
        Ok(OpConfig {
            tau: v[0],
            span: count(v[1], "span")?,
            radius: count(v[2], "radius")?,
            coarse_tiles: v[3] != 0.0,
            weight_first: v[4],
            weight_last: v[5],
            moving_threshold: (v[6] >= 0.0).then_some(v[6]),
            cuda_device: if v[7] < 0.0 {
                None
            } else {
                Some(count(v[7], "backend device")?)
            },
        })
    }

    /// The kernels' pair set, window, loss and back end.
    pub fn kernel_specs(&self) -> (PairSet, KeyWindow, LossSpec, Backend) {
        let pairs = match self.span {
            0 => PairSet::AllOrdered,
            span => PairSet::Forward { span },
        };
        let window = match self.radius {
            0 => KeyWindow::Full,
            radius => KeyWindow::Local {
                radius,
                centre: if self.coarse_tiles {
                    WindowCentre::CoarseTiles {
                        tile_h: 3,
                        tile_w: 4,
                    }
                } else {
                    WindowCentre::Query
                },
            },
        };
        let pair_weights = if self.weight_first == 1.0 && self.weight_last == 1.0 {
            PairWeights::Uniform
        } else {
            PairWeights::LinearDecay {
                first: self.weight_first,
                last: self.weight_last,
            }
        };
        let backend = match self.cuda_device {
            None => Backend::Cpu,
            Some(device) => Backend::Cuda { device },
        };
        (
            pairs,
            window,
            LossSpec {
                pair_weights,
                moving_threshold: self.moving_threshold,
            },
            backend,
        )
    }
}

/// Whether the CUDA-provider variant is registered: yes unless `FASTVMT_AMF_OP=cpu` (which
/// keeps the node on the CPU provider, the route to compare with or to fall back to).
pub fn cuda_variant_enabled() -> bool {
    std::env::var("FASTVMT_AMF_OP").map_or(true, |v| v.trim() != "cpu")
}

/// The `fastvmt.amf` domain: f32, f16 and bf16 Q/K on the CPU provider, and on the CUDA
/// provider when [`cuda_variant_enabled`] (ONNX Runtime picks the session's provider's kernel).
pub fn domain() -> ort::Result<OperatorDomain> {
    let mut d = OperatorDomain::new(DOMAIN)?;
    for dt in [Dt::F32, Dt::F16, Dt::Bf16] {
        d = d.add(AmfOperator { dt, cuda: false })?;
        if cuda_variant_enabled() {
            d = d.add(AmfOperator { dt, cuda: true })?;
        }
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy)]
struct AmfOperator {
    dt: Dt,
    /// The CUDA-provider variant: Q/K and dQ/dK stay in ONNX Runtime's device buffers.
    cuda: bool,
}

impl Operator for AmfOperator {
    type Kernel<'attr> = AmfKernel;

    fn name(&self) -> &str {
        "AmfLossGrad"
    }

    fn versions(&self) -> RangeInclusive<u32> {
        VERSION..=VERSION
    }

    fn execution_provider_type(&self) -> Option<&str> {
        self.cuda.then_some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        // grid and config are small: on the host for either variant. The reference stays in
        // device memory for the CUDA variant (its loss plan is built there), so a sampler that
        // keeps the reference field on the device never copies it.
        let host = |t| {
            let input = OperatorInput::required(t);
            if self.cuda {
                input.memory_type(MemoryType::CPUInput)
            } else {
                input
            }
        };
        [
            OperatorInput::required(self.dt.ort()),
            OperatorInput::required(self.dt.ort()),
            host(TensorElementType::Int64),
            OperatorInput::required(TensorElementType::Float32),
            host(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [(); 3].map(|_| OperatorOutput::required(TensorElementType::Float32))
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<AmfKernel> {
        let node = kctx.node_name().unwrap_or_default();
        Ok(AmfKernel {
            dt: self.dt,
            cuda: self.cuda,
            label: format!("{DOMAIN}.AmfLossGrad node '{node}'"),
        })
    }
}

struct AmfKernel {
    dt: Dt,
    cuda: bool,
    label: String,
}

impl Kernel for AmfKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        guarded(&self.label, || self.compute_inner(ctx))
    }
}

impl AmfKernel {
    fn compute_inner(&self, ctx: &ComputeContext) -> Fallible<()> {
        let q = input(ctx, 0, "q")?;
        let k = input(ctx, 1, "k")?;
        let grid_in = input(ctx, 2, "grid")?;
        let reference_in = input(ctx, 3, "reference")?;
        let config_in = input(ctx, 4, "config")?;
        let qs = dims(&q, "q")?;
        if qs.len() != 4 || qs[0] != 1 {
            return Err(format!(
                "input q has shape {qs:?}, expected [1, heads, tokens, head_dim]"
            ));
        }
        if dims(&k, "k")? != qs {
            return Err(format!(
                "input k has shape {:?}, q has {qs:?}",
                dims(&k, "k")?
            ));
        }
        let grid = host::<i64>(&grid_in, "grid")?;
        let [f, h, w] = match grid {
            [f, h, w] if *f > 0 && *h > 0 && *w > 0 => [*f as usize, *h as usize, *w as usize],
            other => {
                return Err(format!(
                    "input grid must be 3 positive sizes, got {other:?}"
                ))
            }
        };
        if f * h * w != qs[2] {
            return Err(format!(
                "grid {f}x{h}x{w} has {} tokens, q has {}",
                f * h * w,
                qs[2]
            ));
        }
        let config = OpConfig::decode(host::<f32>(&config_in, "config")?)?;
        let (pairs, window, loss_spec, backend) = config.kernel_specs();
        let spec = AmfSpec {
            heads: qs[1],
            frames: f,
            grid_h: h,
            grid_w: w,
            head_dim: qs[3],
            tau: config.tau,
            pairs,
            window,
        };
        let resolved = resolve_pairs(&spec.pairs, f).map_err(|e| e.to_string())?;
        let want = [resolved.len(), h * w, 2];
        let rs = dims(&reference_in, "reference")?;
        if rs != want {
            return Err(format!(
                "input reference has shape {rs:?}, expected {want:?} (the reference AMF of the config's {} frame pairs)",
                resolved.len()
            ));
        }
        if self.cuda {
            return cuda::loss_and_grad(
                ctx,
                self.dt,
                &q,
                &k,
                &qs,
                &spec,
                &reference_in,
                &loss_spec,
            );
        }
        let field = AmfField {
            pairs: resolved,
            grid_h: h,
            grid_w: w,
            disp: host::<f32>(&reference_in, "reference")?.to_vec(),
        };
        let lg = match self.dt {
            Dt::F32 => run::<f32>(&q, &k, &spec, &field, &loss_spec, &backend)?,
            Dt::F16 => run::<f16>(&q, &k, &spec, &field, &loss_spec, &backend)?,
            Dt::Bf16 => run::<bf16>(&q, &k, &spec, &field, &loss_spec, &backend)?,
        };
        let mut loss = output(ctx, 0, "loss", &[1])?;
        host_mut::<f32>(&mut loss, "loss")?[0] = lg.loss;
        let mut dq = output(ctx, 1, "dq", &qs)?;
        host_mut::<f32>(&mut dq, "dq")?.copy_from_slice(&lg.dq);
        let mut dk = output(ctx, 2, "dk", &qs)?;
        host_mut::<f32>(&mut dk, "dk")?.copy_from_slice(&lg.dk);
        Ok(())
    }
}

/// The CUDA variant: the kernels' raw-pointer entry on ONNX Runtime's device buffers, after
/// ONNX Runtime's stream (which produced Q/K) has finished.
mod cuda {
    use super::{dims, output, Dt, Fallible, In};
    use fastvmt_kernels::cuda::CudaAmf;
    use fastvmt_kernels::{AmfSpec, LossSpec};
    use half::{bf16, f16};
    use ort::operator::ComputeContext;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn loss_and_grad(
        ctx: &ComputeContext,
        dt: Dt,
        q: &In<'_>,
        k: &In<'_>,
        shape: &[usize],
        spec: &AmfSpec,
        reference: &In<'_>,
        loss_spec: &LossSpec,
    ) -> Fallible<()> {
        let device = usize::try_from(q.memory_info().device_id())
            .map_err(|_| "bad CUDA device id".to_string())?;
        let stream = ctx
            .stream()
            .map_err(|e| format!("cannot get ONNX Runtime's CUDA stream: {e}"))?
            .ok_or("ONNX Runtime gave no CUDA stream to a CUDA kernel")?;
        let amf = CudaAmf::get(device).map_err(|e| e.to_string())?;
        let len: usize = shape.iter().product();
        let loss_out = output(ctx, 0, "loss", &[1])?;
        let dq_out = output(ctx, 1, "dq", shape)?;
        let dk_out = output(ctx, 2, "dk", shape)?;
        let (qp, kp) = (q.data_ptr() as u64, k.data_ptr() as u64);
        let (dqp, dkp) = (dq_out.data_ptr() as u64, dk_out.data_ptr() as u64);
        // ort has no `data_ptr_mut` through `ValueRefMut` (as in attention_ops' CUDA variant).
        let lp = loss_out.data_ptr() as u64;
        // The reference's shape was checked against the config's pairs by the caller.
        let (rp, rlen) = (
            reference.data_ptr() as u64,
            dims(reference, "reference")?.iter().product(),
        );
        let producer = stream.as_ptr();
        // SAFETY: ONNX Runtime's device buffers of `len` elements and the reference's `rlen`
        // (shapes checked by the caller; the outputs were just allocated with `shape`), alive
        // during this compute;
        // `producer` is ONNX Runtime's stream on this device.
        unsafe {
            match dt {
                Dt::F32 => amf.loss_and_grad_raw_device_reference::<f32>(
                    spec, qp, kp, len, rp, rlen, loss_spec, dqp, dkp, lp, producer,
                ),
                Dt::F16 => amf.loss_and_grad_raw_device_reference::<f16>(
                    spec, qp, kp, len, rp, rlen, loss_spec, dqp, dkp, lp, producer,
                ),
                Dt::Bf16 => amf.loss_and_grad_raw_device_reference::<bf16>(
                    spec, qp, kp, len, rp, rlen, loss_spec, dqp, dkp, lp, producer,
                ),
            }
        }
        .map(|_| ())
        .map_err(|e| format!("AMF kernel: {e}"))
    }
}

fn run<T: fastvmt_kernels::Element + ort::value::PrimitiveTensorElementType>(
    q: &In<'_>,
    k: &In<'_>,
    spec: &AmfSpec,
    field: &AmfField,
    loss: &LossSpec,
    backend: &Backend,
) -> Fallible<fastvmt_kernels::LossAndGrad> {
    amf_loss_and_grad(
        backend,
        host::<T>(q, "q")?,
        host::<T>(k, "k")?,
        spec,
        field,
        loss,
    )
    .map_err(|e| format!("AMF kernel: {e}"))
}

#[cfg(test)]
mod tests {
    use super::OpConfig;

    #[test]
    fn config_round_trips_and_refuses_garbage() {
        let c = OpConfig {
            tau: 2.0,
            span: 4,
            radius: 10,
            coarse_tiles: true,
            weight_first: 1.0,
            weight_last: 0.8,
            moving_threshold: Some(0.5),
            cuda_device: Some(0),
        };
        assert_eq!(OpConfig::decode(&c.encode()).unwrap(), c);
        let none = OpConfig {
            moving_threshold: None,
            cuda_device: None,
            ..c
        };
        assert_eq!(OpConfig::decode(&none.encode()).unwrap(), none);
        assert!(OpConfig::decode(&[1.0; 7]).is_err());
        let mut bad = c.encode();
        bad[1] = 2.5;
        assert!(OpConfig::decode(&bad).is_err());
        bad[1] = f32::NAN;
        assert!(OpConfig::decode(&bad).is_err());
    }
}
