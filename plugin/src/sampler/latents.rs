//! Where the sampling loop keeps its latents, and the updates it makes on them (issue #7).
//!
//! - **Host** ([`Space::host`]): `Vec<f32>`s; every model call copies its inputs in and its
//!   outputs out. CPU models, and CUDA models with `GuidanceSettings::device_loop` off (for
//!   comparisons).
//! - **Bound** ([`Space::bound`]): tensors in the memory the model's sessions compute in,
//!   allocated once per job and bound to every run (`model/device.rs`). On a CUDA model the
//!   latent, its batch-of-two copy for classifier-free guidance, the velocity, the reference
//!   and its noise, the text embeddings, the RoPE tables, the reference AMF field, the
//!   gradients and the optimiser's moments all stay in device memory for the whole job; the
//!   updates between runs are `fastvmt_kernels::latent`'s CUDA kernels. What crosses: the
//!   start latent, reference, text and RoPE tables once, the final latent once; per run its
//!   time value and the AMF operator's config (bytes); per real gradient its loss (4 bytes) and
//!   the nonfinite count and gradient cosine sums (32 bytes). The reference AMF field is
//!   written by the kernels into a device buffer (`CudaAmf::compute_amf_raw_into`) that
//!   `guidance_step`'s operator reads in place (its loss plan is built on the device).
//!   On a CPU model the bound space runs the same route on host tensors, so CI tests it.
//!
//! Both run the same arithmetic (`fastvmt_kernels::latent`: the CUDA kernels are bit-exact to
//! the CPU functions), so a job's result does not depend on the space, up to ONNX Runtime.

use std::borrow::Cow;
use std::sync::Arc;

use fastvmt_kernels::latent::{self, cuda::CudaLatent, AdamWStep, VecStats};

use super::SampleError;
use crate::model::device::{DeviceConditioning, DeviceTensor, FieldIn};
use crate::model::dit::{CancelCheck, Device, Latent, ModelError, Rope};
use crate::model::DitModel;
use crate::runtime::amf_ops::OpConfig;

/// One latent-sized (or text-sized) buffer of a [`Space`].
pub enum Buf {
    Host { shape: Vec<usize>, data: Vec<f32> },
    Bound(DeviceTensor),
}

impl Buf {
    pub fn shape(&self) -> &[usize] {
        match self {
            Buf::Host { shape, .. } => shape,
            Buf::Bound(t) => t.shape(),
        }
    }

    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ptr(&self) -> Result<u64, SampleError> {
        match self {
            Buf::Bound(t) => Ok(t.ptr()),
            Buf::Host { .. } => Err(internal("a host buffer in a bound space")),
        }
    }

    fn slice(&self) -> Result<&[f32], SampleError> {
        match self {
            Buf::Host { data, .. } => Ok(data),
            Buf::Bound(t) => t
                .host()
                .ok_or_else(|| internal("device memory without the CUDA kernels")),
        }
    }

    fn slice_mut(&mut self) -> Result<&mut [f32], SampleError> {
        match self {
            Buf::Host { data, .. } => Ok(data),
            Buf::Bound(t) => t
                .host_mut()
                .ok_or_else(|| internal("device memory without the CUDA kernels")),
        }
    }

    fn tensor(&self) -> Result<&DeviceTensor, SampleError> {
        match self {
            Buf::Bound(t) => Ok(t),
            Buf::Host { .. } => Err(internal("a host buffer in a bound space")),
        }
    }
}

fn internal(what: &str) -> SampleError {
    SampleError::Model(ModelError::Runtime(format!(
        "sampler latent space: {what} (a bug)"
    )))
}

fn latent_shape(shape: &[usize]) -> Result<[usize; 5], SampleError> {
    shape
        .try_into()
        .map_err(|_| internal("a latent buffer that is not 5-D"))
}

/// A guided step's reference AMF field `[pairs, S, 2]`: host values, or a buffer of the space
/// (on a CUDA model: device memory that `guidance_step`'s operator reads in place).
pub enum Field<'a> {
    Host(&'a [f32]),
    Buffer(&'a Buf),
}

/// The job's conditioning in the space: text embeddings per call kind and the RoPE tables.
pub struct Conditioning<'r> {
    /// `[2, L, D]`: positive then negative (classifier-free guidance in one batch).
    pub cfg_text: Option<Buf>,
    /// `[1, L, D]`.
    pub positive: Buf,
    /// `[1, L, D]`, the empty prompt (the reference AMF's text).
    pub empty: Buf,
    pub rope: &'r Rope,
    rope_tables: Option<(Buf, Buf)>,
}

impl Conditioning<'_> {
    fn device<'a>(&'a self, text: &'a Buf) -> Result<DeviceConditioning<'a>, SampleError> {
        let (cos, sin) = self
            .rope_tables
            .as_ref()
            .ok_or_else(|| internal("no bound RoPE tables"))?;
        Ok(DeviceConditioning {
            text: text.tensor()?,
            rope_cos: cos.tensor()?,
            rope_sin: sin.tensor()?,
            grid: self.rope.grid,
        })
    }
}

/// See the module notes.
pub struct Space<'m> {
    model: &'m DitModel,
    bound: bool,
    /// The CUDA kernels, on a bound space of a CUDA model.
    cuda: Option<Arc<CudaLatent>>,
}

impl<'m> Space<'m> {
    pub fn host(model: &'m DitModel) -> Self {
        Space {
            model,
            bound: false,
            cuda: None,
        }
    }

    /// The bound space of `model` (the CUDA kernels loaded on a CUDA model).
    pub fn bound(model: &'m DitModel) -> Result<Self, SampleError> {
        let cuda = match model.device {
            // Device 0: the CUDA provider's device, where the sessions' tensors live.
            Device::Cuda => Some(CudaLatent::get(0)?),
            Device::Cpu => None,
        };
        Ok(Space {
            model,
            bound: true,
            cuda,
        })
    }

    pub fn is_bound(&self) -> bool {
        self.bound
    }

    /// The device address of a bound buffer on a CUDA model (for kernels writing into it).
    pub fn device_ptr(&self, buf: &Buf) -> Result<u64, SampleError> {
        if self.cuda.is_none() {
            return Err(internal("a device address outside device memory"));
        }
        buf.ptr()
    }

    /// An uninitialised buffer (zeros on the host).
    pub fn alloc(&self, shape: &[usize]) -> Result<Buf, SampleError> {
        if !self.bound {
            return Ok(Buf::Host {
                shape: shape.to_vec(),
                data: vec![0.0; shape.iter().product()],
            });
        }
        Ok(Buf::Bound(self.model.device_tensor(shape)?))
    }

    /// A buffer holding `data` (copied to the device on a CUDA model).
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Buf, SampleError> {
        let mut buf = self.alloc(shape)?;
        self.write(&mut buf, data)?;
        Ok(buf)
    }

    /// Overwrites `buf` with `data` (same length).
    pub fn write(&self, buf: &mut Buf, data: &[f32]) -> Result<(), SampleError> {
        check_len("data", buf.len(), data.len())?;
        match &self.cuda {
            Some(k) => {
                self.model.count_transfer(4 * data.len());
                // SAFETY: `buf` is a live device tensor of `data.len()` f32 on device 0.
                unsafe { k.upload_raw(buf.ptr()?, data)? }
            }
            None => buf.slice_mut()?.copy_from_slice(data),
        }
        Ok(())
    }

    /// The values of `buf` in host memory (copied from the device on a CUDA model).
    pub fn download(&self, buf: &Buf) -> Result<Vec<f32>, SampleError> {
        match &self.cuda {
            Some(k) => {
                let mut out = vec![0.0; buf.len()];
                self.model.count_transfer(4 * out.len());
                // SAFETY: as in `write`.
                unsafe { k.download_raw(buf.ptr()?, &mut out)? };
                Ok(out)
            }
            None => Ok(buf.slice()?.to_vec()),
        }
    }

    /// The values of `buf` for a host-memory call: borrowed where they are in host memory,
    /// downloaded from the device otherwise (the routes that fall back to the host).
    pub fn host_values<'b>(&self, buf: &'b Buf) -> Result<Cow<'b, [f32]>, SampleError> {
        if self.cuda.is_some() {
            return Ok(Cow::Owned(self.download(buf)?));
        }
        Ok(Cow::Borrowed(buf.slice()?))
    }

    /// `dst = src` (same length).
    pub fn copy(&self, dst: &mut Buf, src: &Buf) -> Result<(), SampleError> {
        check_len("copy source", dst.len(), src.len())?;
        match &self.cuda {
            // SAFETY: both live device tensors of that length.
            Some(k) => unsafe { k.copy_raw(dst.ptr()?, src.ptr()?, src.len())? },
            None => dst.slice_mut()?.copy_from_slice(src.slice()?),
        }
        Ok(())
    }

    /// `dst = [src; src]`: a batch of two for classifier-free guidance.
    pub fn duplicate(&self, dst: &mut Buf, src: &Buf) -> Result<(), SampleError> {
        let n = src.len();
        check_len("batch of two", dst.len(), 2 * n)?;
        match &self.cuda {
            Some(k) => {
                let (d, s) = (dst.ptr()?, src.ptr()?);
                // SAFETY: `dst` holds 2n f32, `src` n, both live on the device.
                unsafe {
                    k.copy_raw(d, s, n)?;
                    k.copy_raw(d + 4 * n as u64, s, n)?;
                }
            }
            None => {
                let (s, d) = (src.slice()?, dst.slice_mut()?);
                d[..n].copy_from_slice(s);
                d[n..].copy_from_slice(s);
            }
        }
        Ok(())
    }

    /// `out = wa * a + wb * b`.
    pub fn lerp(
        &self,
        out: &mut Buf,
        a: &Buf,
        b: &Buf,
        wa: f32,
        wb: f32,
    ) -> Result<(), SampleError> {
        match &self.cuda {
            Some(k) => {
                check_len("lerp a", out.len(), a.len())?;
                check_len("lerp b", out.len(), b.len())?;
                // SAFETY: three live device tensors of `out.len()` f32.
                unsafe { k.lerp_raw(out.ptr()?, a.ptr()?, b.ptr()?, out.len(), wa, wb)? }
            }
            None => latent::cpu::lerp(out.slice_mut()?, a.slice()?, b.slice()?, wa, wb)?,
        }
        Ok(())
    }

    /// The Euler step `x += dt * v`, `v` the velocity or (with `cfg`) the guided combination of
    /// a `[cond; uncond]` batch.
    pub fn cfg_euler(
        &self,
        x: &mut Buf,
        velocity: &Buf,
        cfg: Option<f32>,
        dt: f32,
    ) -> Result<(), SampleError> {
        match &self.cuda {
            Some(k) => {
                let want = x.len() * if cfg.is_some() { 2 } else { 1 };
                check_len("velocity", want, velocity.len())?;
                // SAFETY: live device tensors of the checked lengths.
                unsafe { k.cfg_euler_raw(x.ptr()?, velocity.ptr()?, x.len(), cfg, dt)? }
            }
            None => latent::cpu::cfg_euler(x.slice_mut()?, velocity.slice()?, cfg, dt)?,
        }
        Ok(())
    }

    /// One AdamW update of `x` with `grad` and the moments `m`, `v`.
    pub fn adamw(
        &self,
        x: &mut Buf,
        grad: &Buf,
        m: &mut Buf,
        v: &mut Buf,
        step: &AdamWStep,
    ) -> Result<(), SampleError> {
        match &self.cuda {
            Some(k) => {
                let n = x.len();
                for (name, len) in [("gradient", grad.len()), ("m", m.len()), ("v", v.len())] {
                    check_len(name, n, len)?;
                }
                // SAFETY: four live device tensors of `n` f32.
                unsafe { k.adamw_raw(x.ptr()?, grad.ptr()?, m.ptr()?, v.ptr()?, n, step)? }
            }
            None => latent::cpu::adamw(
                x.slice_mut()?,
                grad.slice()?,
                m.slice_mut()?,
                v.slice_mut()?,
                step,
            )?,
        }
        Ok(())
    }

    /// Sets every value of `buf` to zero.
    pub fn zero(&self, buf: &mut Buf) -> Result<(), SampleError> {
        match &self.cuda {
            // SAFETY: a live device tensor of `buf.len()` f32.
            Some(k) => unsafe { k.fill_raw(buf.ptr()?, buf.len(), 0.0)? },
            None => buf.slice_mut()?.fill(0.0),
        }
        Ok(())
    }

    /// Nonfinite count of `a`, and the sums for the cosine of `a` and `b`.
    pub fn stats(&self, a: &Buf, b: Option<&Buf>) -> Result<VecStats, SampleError> {
        if let Some(b) = b {
            check_len("second vector", a.len(), b.len())?;
        }
        Ok(match &self.cuda {
            Some(k) => {
                let b = b.map(|b| b.ptr()).transpose()?;
                // SAFETY: live device tensors of `a.len()` f32.
                unsafe { k.stats_raw(a.ptr()?, b, a.len())? }
            }
            None => latent::cpu::stats(a.slice()?, b.map(|b| b.slice()).transpose()?)?,
        })
    }

    /// Uploads the job's text embeddings and, bound, the RoPE tables.
    pub fn conditioning<'r>(
        &self,
        rope: &'r Rope,
        positive: &[f32],
        negative: &[f32],
        empty: &[f32],
        use_cfg: bool,
    ) -> Result<Conditioning<'r>, SampleError> {
        let spec = &self.model.manifest().text;
        let one = [1, spec.max_len, spec.dim];
        let cfg_text = if use_cfg {
            let mut both = Vec::with_capacity(positive.len() + negative.len());
            both.extend_from_slice(positive);
            both.extend_from_slice(negative);
            Some(self.upload(&[2, spec.max_len, spec.dim], &both)?)
        } else {
            None
        };
        let rope_tables = if self.bound {
            let shape = [rope.tokens, rope.cols];
            Some((
                self.upload(&shape, &rope.cos)?,
                self.upload(&shape, &rope.sin)?,
            ))
        } else {
            None
        };
        Ok(Conditioning {
            cfg_text,
            positive: self.upload(&one, positive)?,
            empty: self.upload(&one, empty)?,
            rope,
            rope_tables,
        })
    }

    /// The denoiser's velocity for `x` at times `t` with `text` (batch of `x`) into `out`.
    pub fn velocity(
        &self,
        x: &Buf,
        t: &[f32],
        text: &Buf,
        cond: &Conditioning<'_>,
        out: &mut Buf,
        cancel: CancelCheck<'_>,
    ) -> Result<(), SampleError> {
        match (x, &mut *out) {
            (Buf::Bound(xt), Buf::Bound(o)) => {
                self.model
                    .velocity_on_device(xt, t, &cond.device(text)?, o, cancel)?;
            }
            (Buf::Host { shape, data }, Buf::Host { data: o, .. }) => {
                let latent = Latent {
                    shape: latent_shape(shape)?,
                    data,
                };
                *o = self
                    .model
                    .velocity(&latent, t, text.slice()?, cond.rope, cancel)?;
            }
            _ => return Err(internal("mixed buffers")),
        }
        Ok(())
    }

    /// One `guidance_step` run: the AMF loss of `x` against the `reference` AMF field and dL/dx
    /// into `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn guidance_step(
        &self,
        x: &Buf,
        t: &[f32],
        text: &Buf,
        cond: &Conditioning<'_>,
        reference: Field<'_>,
        config: &OpConfig,
        dx: &mut Buf,
        cancel: CancelCheck<'_>,
    ) -> Result<f32, ModelError> {
        let bug = |what: &str| match internal(what) {
            SampleError::Model(m) => m,
            _ => ModelError::Runtime(what.into()),
        };
        match (x, &mut *dx) {
            (Buf::Bound(xt), Buf::Bound(d)) => {
                let device = cond
                    .device(text)
                    .map_err(|_| bug("no bound conditioning"))?;
                let reference = match reference {
                    Field::Host(r) => FieldIn::Host(r),
                    Field::Buffer(b) => FieldIn::Device(b.tensor().map_err(|_| bug("field"))?),
                };
                self.model
                    .guidance_step_on_device(xt, t, &device, reference, config, d, cancel)
            }
            (Buf::Host { shape, data }, Buf::Host { data: d, .. }) => {
                let latent = Latent {
                    shape: latent_shape(shape).map_err(|_| bug("latent rank"))?,
                    data,
                };
                let text = text.slice().map_err(|_| bug("text"))?;
                let reference = match reference {
                    Field::Host(r) => r,
                    Field::Buffer(b) => b.slice().map_err(|_| bug("field"))?,
                };
                let (loss, grad) = self
                    .model
                    .guidance_step(&latent, t, text, cond.rope, reference, config, cancel)?;
                *d = grad;
                Ok(loss)
            }
            _ => Err(bug("mixed buffers")),
        }
    }

    /// The guidance head on a bound `x`, its Q/K lent to `use_qk` where they were computed.
    pub fn with_head_qk<R>(
        &self,
        x: &Buf,
        t: &[f32],
        text: &Buf,
        cond: &Conditioning<'_>,
        cancel: CancelCheck<'_>,
        use_qk: impl FnOnce(u64, u64, usize) -> R,
    ) -> Result<R, SampleError> {
        Ok(self.model.with_guidance_qk_of_device_latent(
            x.tensor()?,
            t,
            &cond.device(text)?,
            cancel,
            use_qk,
        )?)
    }
}

fn check_len(name: &'static str, expected: usize, actual: usize) -> Result<(), SampleError> {
    if expected != actual {
        return Err(SampleError::Kernel(
            fastvmt_kernels::KernelError::ShapeMismatch {
                tensor: name,
                expected,
                actual,
            },
        ));
    }
    Ok(())
}
