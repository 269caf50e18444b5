//! AMF guidance: on the first denoising steps, optimise the latent so the motion flow read
//! from the motion block's attention matches the reference's.
//!
//! Modes (`GuidanceMode`):
//! - `ditflow`: dense AMF (all ordered frame pairs, all keys; DiTFlow's moving-entries mask),
//!   a real forward+backward on every inner step.
//! - `fastvmt`: the model's AMF setting (by default local: spatial key window, optional
//!   temporal window, pair weights 1 → 0.8) and gradient skipping: a real gradient on inner
//!   steps `0, r, 2r, …` (r = reuse interval), the cached one otherwise.
//! - `adaptive`: like `fastvmt`, plus reuse across denoising steps ([`AdaptiveRule`]): a
//!   guided step after the first starts on the previous step's last real gradient and takes
//!   its first real gradient at the reuse interval (13 backward passes where `fastvmt` makes
//!   16). Optionally the gap to the next real gradient within a step follows the measured loss
//!   trend ([`LossTrend`]: the relative AMF-loss decrease per inner step since the previous
//!   real gradient picks a gap of 1, FastVMT's interval, or a stretched one). The cosine
//!   between successive real gradients is recorded (`SampleStats::gradient_cosines`) but
//!   decides nothing: right after Adam's first update of a step it is high (≈ 0.95), three
//!   inner steps later often negative (the cached updates overshoot), so a rule on it either
//!   stretches too early or never. What the harness found (64 clips, three seeds,
//!   `harness/README.md`, "Reuse across denoising steps"): every rule that saves passes loses
//!   some fidelity at this scale; reuse across steps loses least (−0.018 ± 0.010 for 3 of 16
//!   passes), the loss trend −0.036 to −0.039 for 4.5–5.5.
//!
//! Per guided step the reference AMF is recomputed: the reference noised to
//! `reference_noise_scale * t` with fixed noise, through the guidance head with the empty
//! prompt, read out with argmax.

use fastvmt_kernels::{
    amf_loss_and_grad, compute_amf, AmfField, AmfSpec, Backend, KeyWindow, LossAndGrad, LossSpec,
    PairSet, PairWeights, Readout, WindowCentre,
};
use std::time::Instant;

use half::{bf16, f16};

use super::adamw::AdamW;
use super::latents::{Buf, Conditioning, Field, Space};
use super::{SampleError, SampleStats};
use crate::model::dit::{CancelCheck, Device, Latent, ModelError, Rope};
use crate::model::DitModel;
use crate::runtime::amf_ops::OpConfig;
use fastvmt_kernels::latent::VecStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceMode {
    None,
    DitFlow,
    FastVmt,
    Adaptive,
}

impl GuidanceMode {
    pub const NAMES: [&'static str; 4] = ["none", "ditflow", "fastvmt", "adaptive"];

    pub fn name(self) -> &'static str {
        match self {
            GuidanceMode::None => "none",
            GuidanceMode::DitFlow => "ditflow",
            GuidanceMode::FastVmt => "fastvmt",
            GuidanceMode::Adaptive => "adaptive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(GuidanceMode::None),
            "ditflow" => Some(GuidanceMode::DitFlow),
            "fastvmt" => Some(GuidanceMode::FastVmt),
            "adaptive" => Some(GuidanceMode::Adaptive),
            _ => None,
        }
    }

    /// A comma-separated list of modes (`none,ditflow,...`), as the runner binaries take it.
    pub fn parse_list(list: &str) -> Result<Vec<GuidanceMode>, String> {
        list.split(',')
            .map(|m| {
                GuidanceMode::parse(m.trim())
                    .ok_or_else(|| format!("unknown mode '{m}' (none, ditflow, fastvmt, adaptive)"))
            })
            .collect()
    }
}

/// Numeric precision of the Q/K fed to the AMF kernels (accumulation is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmfPrecision {
    F32,
    F16,
    Bf16,
}

/// The AMF used by `fastvmt` and `adaptive` (set on the MODEL by `LocalAttentionDiT`).
#[derive(Debug, Clone)]
pub struct AmfConfig {
    /// Local (key window) or dense AMF.
    pub local: bool,
    /// Forward pairs `1 <= j-i < temporal_window`; 0 = all ordered pairs.
    pub temporal_window: usize,
    pub spatial_radius: usize,
    /// Window centre from FastVMT's coarse tile search (else the query's own position).
    pub coarse_tiles: bool,
    pub tau: f32,
    pub precision: AmfPrecision,
    pub backend: Backend,
}

#[derive(Debug, Clone)]
pub struct GuidanceSettings {
    pub mode: GuidanceMode,
    /// Fraction of the denoising steps that are guided (the first ones).
    pub fraction: f32,
    pub inner_steps: usize,
    pub reuse_interval: usize,
    /// Learning-rate factor of the inner steps that reuse the cached gradient (0: they make no
    /// update at all, not even Adam's moment update).
    pub cached_step_scale: f32,
    /// Learning rate at the first guided step, decaying linearly to `lr * lr_end_ratio`.
    pub lr: f32,
    pub lr_end_ratio: f32,
    pub weight_decay: f32,
    pub reference_noise_scale: f32,
    pub amf: AmfConfig,
    /// `adaptive`'s refresh rule (see [`AdaptiveRule`]).
    pub adaptive: AdaptiveRule,
    /// `fastvmt`/`adaptive`: restrict the loss to entries where the reference moves more than
    /// this many tokens (DiTFlow's mask; `ditflow` always uses 0.5). `None`: every entry.
    pub moving_threshold: Option<f32>,
    /// Use the bundle's one-run `guidance_step` graph for real gradients when it has one (the
    /// AMF then runs on the graph's Q/K dtype, whatever `amf.precision` says); `false` keeps
    /// the two-graph route (for comparisons).
    pub fused_step: bool,
    /// On a CUDA model with the CUDA AMF back end, compute each guided step's reference AMF
    /// from the guidance head's Q/K where they are, in device memory
    /// ([`DitModel::with_guidance_qk_on_device`]); `false` copies them through the host (for
    /// comparisons; CPU models always do).
    pub device_reference: bool,
}

/// How `adaptive` decides where it needs a real gradient.
///
/// - `carry_over` (reuse across denoising steps): a guided step after the first starts on the
///   previous step's last real gradient instead of a fresh one, and takes its first real
///   gradient at the reuse interval. Why: FastVMT's last real gradient of a step (inner step
///   9 of 10) serves one update; carried over it serves four. Measured on the harness: the
///   cosine between that gradient and the next step's first real one averaged 0.59–0.66,
///   higher than between real gradients 3 inner steps apart within a step (−0.46 to 0.59).
/// - `loss_trend` (within a step; `None`: FastVMT's reuse interval): gaps from the measured
///   loss trend ([`LossTrend`]).
///
/// The default ([`super::ADAPTIVE_RULE`]) and what each part is worth: `harness/README.md`,
/// "Reuse across denoising steps".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveRule {
    pub carry_over: bool,
    pub loss_trend: Option<LossTrend>,
}

/// Gaps between real gradients from the loss trend.
///
/// After each real gradient `rate` is the relative AMF-loss decrease per inner step since the
/// previous real gradient of the same denoising step (the first real gradient of a step reuses
/// the last rate of the previous step; until a rate exists, FastVMT's interval). Then:
/// `rate >= steep` — the loss is falling fast, so the landscape moves and a cached gradient
/// goes stale quickly: refresh on the next inner step; `flat <= rate < steep` — FastVMT's
/// reuse interval; `rate < flat` — little is left to gain here: stretch to `max_interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossTrend {
    pub steep: f32,
    pub flat: f32,
    pub max_interval: usize,
}

impl LossTrend {
    /// The gap to the next real gradient for a measured `rate` (`None`: nothing measured yet).
    pub fn gap(&self, rate: Option<f32>, reuse_interval: usize) -> usize {
        let base = reuse_interval.max(1);
        match rate {
            None => base,
            Some(r) if r >= self.steep => 1,
            Some(r) if r >= self.flat => base,
            Some(_) => self.max_interval.max(base),
        }
    }
}

/// What one guided step needs to know (buffers in the job's [`Space`]).
pub struct StepContext<'a> {
    pub step: usize,
    pub t: f32,
    /// The reference latent and its fixed noise.
    pub reference: &'a Buf,
    pub ref_noise: &'a Buf,
    /// Text (`positive` for gradients, `empty` for the reference AMF) and RoPE tables.
    pub cond: &'a Conditioning<'a>,
}

/// Buffers a guide keeps across guided steps, allocated on the first one.
struct Work {
    /// The reference noised to the step's time.
    x_ref: Buf,
    /// The latent at the start of the guided step (restored if guidance fails).
    snapshot: Buf,
    /// The newest real gradient (also the cached one) and the one before it (for the cosine).
    grad: Buf,
    previous: Buf,
    opt: AdamW,
    /// The reference AMF field `[pairs, S, 2]` where it stays in device memory.
    field: Option<Buf>,
}

/// A guided step's reference AMF: on the host, or in the guide's device field buffer
/// (`Work::field`), where `guidance_step`'s operator reads it in place.
enum StepReference {
    Host(AmfField),
    InBuffer,
}

pub struct Guide<'m> {
    model: &'m DitModel,
    settings: GuidanceSettings,
    rope: &'m Rope,
    guided_steps: usize,
    spec: AmfSpec,
    loss: LossSpec,
    work: Option<Work>,
    /// `adaptive`: the last measured loss-decrease rate, carried into the next denoising step.
    last_rate: Option<f32>,
    /// The guided step of the newest real gradient, which `work.grad` holds (`None`: no real
    /// gradient yet). `adaptive` carries only the previous step's over, so a step too short to
    /// take its own (inner steps <= reuse interval) starts the next one on a fresh gradient
    /// instead of passing an ever older one along.
    last_real_step: Option<usize>,
}

/// The cosine from [`VecStats`] sums (0 where a vector is zero).
fn cosine(s: &VecStats) -> f32 {
    if s.norm_a2 == 0.0 || s.norm_b2 == 0.0 {
        return 0.0;
    }
    (s.dot / (s.norm_a2.sqrt() * s.norm_b2.sqrt())) as f32
}

impl<'m> Guide<'m> {
    pub fn new(
        model: &'m DitModel,
        settings: &GuidanceSettings,
        rope: &'m Rope,
        guided_steps: usize,
    ) -> Result<Self, SampleError> {
        let m = model.manifest();
        let (f, h, w) = rope.grid;
        let dense = settings.mode == GuidanceMode::DitFlow || !settings.amf.local;
        let (pairs, window) = if dense {
            (PairSet::AllOrdered, KeyWindow::Full)
        } else {
            let pairs = if settings.amf.temporal_window == 0 {
                PairSet::AllOrdered
            } else {
                PairSet::Forward {
                    span: settings.amf.temporal_window,
                }
            };
            let centre = if settings.amf.coarse_tiles {
                WindowCentre::CoarseTiles {
                    tile_h: 3,
                    tile_w: 4,
                }
            } else {
                WindowCentre::Query
            };
            (
                pairs,
                KeyWindow::Local {
                    radius: settings.amf.spatial_radius,
                    centre,
                },
            )
        };
        let spec = AmfSpec {
            heads: m.heads,
            frames: f,
            grid_h: h,
            grid_w: w,
            head_dim: m.head_dim,
            tau: settings.amf.tau,
            pairs,
            window,
        };
        let loss = if settings.mode == GuidanceMode::DitFlow {
            LossSpec {
                pair_weights: PairWeights::Uniform,
                moving_threshold: Some(0.5),
            }
        } else {
            LossSpec {
                pair_weights: PairWeights::LinearDecay {
                    first: 1.0,
                    last: 0.8,
                },
                moving_threshold: settings.moving_threshold,
            }
        };
        Ok(Self {
            model,
            settings: settings.clone(),
            rope,
            guided_steps,
            spec,
            loss,
            work: None,
            last_rate: None,
            last_real_step: None,
        })
    }

    fn amf(&self, q: &[f32], k: &[f32]) -> Result<AmfField, fastvmt_kernels::KernelError> {
        let b = &self.settings.amf.backend;
        match self.settings.amf.precision {
            AmfPrecision::F32 => compute_amf(b, q, k, &self.spec, Readout::Argmax),
            AmfPrecision::F16 => compute_amf(
                b,
                &to_half::<f16>(q),
                &to_half::<f16>(k),
                &self.spec,
                Readout::Argmax,
            ),
            AmfPrecision::Bf16 => compute_amf(
                b,
                &to_half::<bf16>(q),
                &to_half::<bf16>(k),
                &self.spec,
                Readout::Argmax,
            ),
        }
    }

    fn loss_grad(
        &self,
        q: &[f32],
        k: &[f32],
        reference: &AmfField,
    ) -> Result<LossAndGrad, fastvmt_kernels::KernelError> {
        let b = &self.settings.amf.backend;
        match self.settings.amf.precision {
            AmfPrecision::F32 => amf_loss_and_grad(b, q, k, &self.spec, reference, &self.loss),
            AmfPrecision::F16 => amf_loss_and_grad(
                b,
                &to_half::<f16>(q),
                &to_half::<f16>(k),
                &self.spec,
                reference,
                &self.loss,
            ),
            AmfPrecision::Bf16 => amf_loss_and_grad(
                b,
                &to_half::<bf16>(q),
                &to_half::<bf16>(k),
                &self.spec,
                reference,
                &self.loss,
            ),
        }
    }

    /// The reference AMF at time `t` (one guidance-head pass, no gradient): the reference
    /// noised into `x_ref`, the head's Q/K read where they are computed when they can be.
    fn reference_amf(
        &self,
        space: &Space<'_>,
        x_ref: &mut Buf,
        field: Option<&mut Buf>,
        ctx: &StepContext<'_>,
        stats: &mut SampleStats,
        cancel: CancelCheck<'_>,
    ) -> Result<StepReference, SampleError> {
        let rt = (self.settings.reference_noise_scale * ctx.t).clamp(0.0, 1.0);
        space.lerp(x_ref, ctx.reference, ctx.ref_noise, 1.0 - rt, rt)?;
        let timer = Instant::now();
        // Device 0: where the model's CUDA provider (ort's default device) leaves the outputs.
        let cuda0 = self.model.device == Device::Cuda
            && self.settings.amf.backend == (Backend::Cuda { device: 0 });
        if let (true, true, Some(out)) = (space.is_bound(), cuda0, field) {
            // The field is written into the device buffer `guidance_step` reads.
            let out_len = out.len();
            let out_ptr = space.device_ptr(out)?;
            let written = space.with_head_qk(
                x_ref,
                &[rt],
                &ctx.cond.empty,
                ctx.cond,
                cancel,
                |q, k, len| self.amf_on_device_into(0, q, k, len, out_ptr, out_len),
            )?;
            stats.real_forward += 1;
            stats.guidance_model_s += timer.elapsed().as_secs_f64();
            written?;
            return Ok(StepReference::InBuffer);
        }
        if space.is_bound() && (cuda0 || self.model.device == Device::Cpu) {
            // The head's run and the AMF are timed together here (the Q/K never leave the
            // session's memory; the AMF is ~2 ms of the ~0.2 s at Wan scale).
            let field = space.with_head_qk(
                x_ref,
                &[rt],
                &ctx.cond.empty,
                ctx.cond,
                cancel,
                |q, k, len| {
                    if cuda0 {
                        self.amf_on_device(0, q, k, len)
                    } else {
                        // SAFETY: a CPU model's head lends two live host buffers of `len` f32
                        // for the duration of this call.
                        let (q, k) = unsafe {
                            (
                                std::slice::from_raw_parts(q as *const f32, len),
                                std::slice::from_raw_parts(k as *const f32, len),
                            )
                        };
                        self.amf(q, k)
                    }
                },
            )?;
            stats.real_forward += 1;
            stats.guidance_model_s += timer.elapsed().as_secs_f64();
            return Ok(StepReference::Host(field?));
        }
        let x_host = space.host_values(x_ref)?;
        let empty = space.host_values(&ctx.cond.empty)?;
        let latent = Latent {
            shape: latent_shape(x_ref.shape())?,
            data: &x_host,
        };
        if self.settings.device_reference && cuda0 {
            let field = self.model.with_guidance_qk_on_device(
                &latent,
                &[rt],
                &empty,
                self.rope,
                cancel,
                |q, k, len| self.amf_on_device(0, q, k, len),
            )?;
            stats.real_forward += 1;
            stats.guidance_model_s += timer.elapsed().as_secs_f64();
            return Ok(StepReference::Host(field?));
        }
        let (q, k) = self
            .model
            .guidance_qk(&latent, &[rt], &empty, self.rope, cancel)?;
        stats.real_forward += 1;
        stats.guidance_model_s += timer.elapsed().as_secs_f64();
        let timer = Instant::now();
        let field = self.amf(&q, &k)?;
        stats.guidance_amf_s += timer.elapsed().as_secs_f64();
        Ok(StepReference::Host(field))
    }

    /// [`Self::amf`] on f32 Q/K in device memory (`len` values each), converted to the
    /// configured precision there.
    fn amf_on_device(
        &self,
        device: usize,
        q: u64,
        k: u64,
        len: usize,
    ) -> Result<AmfField, fastvmt_kernels::KernelError> {
        let amf = fastvmt_kernels::cuda::CudaAmf::get(device)?;
        // SAFETY: `with_guidance_qk_on_device` lends two live, synchronised f32 buffers of
        // `len` values on the CUDA provider's device for the duration of this call.
        let field = unsafe {
            match self.settings.amf.precision {
                AmfPrecision::F32 => {
                    amf.compute_amf_raw::<f32>(&self.spec, q, k, len, Readout::Argmax)
                }
                AmfPrecision::F16 => {
                    amf.compute_amf_raw::<f16>(&self.spec, q, k, len, Readout::Argmax)
                }
                AmfPrecision::Bf16 => {
                    amf.compute_amf_raw::<bf16>(&self.spec, q, k, len, Readout::Argmax)
                }
            }
        }?;
        // The field comes back to the host (the AMF operator's loss plan reads it there).
        self.model.count_transfer(4 * field.disp.len());
        Ok(field)
    }

    /// [`Self::amf_on_device`] with the field written into device memory at `out` (`out_len`
    /// f32) instead of returned.
    fn amf_on_device_into(
        &self,
        device: usize,
        q: u64,
        k: u64,
        len: usize,
        out: u64,
        out_len: usize,
    ) -> Result<(), fastvmt_kernels::KernelError> {
        let amf = fastvmt_kernels::cuda::CudaAmf::get(device)?;
        let (spec, argmax) = (&self.spec, Readout::Argmax);
        // SAFETY: as in `amf_on_device`; `out` is a live device tensor of `out_len` f32 of the
        // job's space.
        unsafe {
            match self.settings.amf.precision {
                AmfPrecision::F32 => {
                    amf.compute_amf_raw_into::<f32>(spec, q, k, len, argmax, out, out_len)
                }
                AmfPrecision::F16 => {
                    amf.compute_amf_raw_into::<f16>(spec, q, k, len, argmax, out, out_len)
                }
                AmfPrecision::Bf16 => {
                    amf.compute_amf_raw_into::<bf16>(spec, q, k, len, argmax, out, out_len)
                }
            }
        }
        .map(|_| ())
    }

    /// The fused operator's config for this guide, or `None` where it cannot express the
    /// spec (explicit pair lists, other coarse tile sizes): those take the two-graph route.
    fn op_config(&self) -> Option<OpConfig> {
        let span = match self.spec.pairs {
            PairSet::AllOrdered => 0,
            PairSet::Forward { span } if span > 0 => span,
            _ => return None,
        };
        let (radius, coarse_tiles) = match self.spec.window {
            KeyWindow::Full => (0, false),
            KeyWindow::Local {
                radius,
                centre: WindowCentre::Query,
            } => (radius, false),
            KeyWindow::Local {
                radius,
                centre:
                    WindowCentre::CoarseTiles {
                        tile_h: 3,
                        tile_w: 4,
                    },
            } => (radius, true),
            _ => return None,
        };
        if radius == 0 && self.spec.window != KeyWindow::Full {
            return None; // radius 0 is an error the kernels report; keep their message
        }
        let (weight_first, weight_last) = match self.loss.pair_weights {
            PairWeights::Uniform => (1.0, 1.0),
            PairWeights::LinearDecay { first, last } => (first, last),
        };
        Some(OpConfig {
            tau: self.spec.tau,
            span,
            radius,
            coarse_tiles,
            weight_first,
            weight_last,
            moving_threshold: self.loss.moving_threshold,
            cuda_device: match self.settings.amf.backend {
                Backend::Cpu => None,
                Backend::Cuda { device } => Some(device),
            },
        })
    }

    /// The `guidance_step` operator's config where this guide takes the one-run route.
    fn fused_config(&self) -> Option<OpConfig> {
        if self.settings.fused_step && self.model.has_guidance_step() {
            self.op_config()
        } else {
            None
        }
    }

    /// A real gradient into `grad`; returns the AMF loss (NaN where the model's Q/K were not
    /// finite). One `guidance_step` run where the guide has a `fused` operator config, else
    /// the two-graph route through the host: head
    /// forward, AMF loss and gradient, VJP to the latent.
    #[allow(clippy::too_many_arguments)]
    fn real_gradient(
        &self,
        space: &Space<'_>,
        x: &Buf,
        ctx: &StepContext<'_>,
        reference: &StepReference,
        field: Option<&Buf>,
        fused: Option<&OpConfig>,
        grad: &mut Buf,
        stats: &mut SampleStats,
        cancel: CancelCheck<'_>,
    ) -> Result<f32, SampleError> {
        let t = [ctx.t];
        let no_field = || {
            SampleError::Model(ModelError::Runtime(
                "sampler: the reference AMF is in a device buffer the guide does not have (a bug)"
                    .into(),
            ))
        };
        if let Some(config) = fused {
            let field = match reference {
                StepReference::Host(r) => Field::Host(&r.disp),
                StepReference::InBuffer => Field::Buffer(field.ok_or_else(no_field)?),
            };
            let timer = Instant::now();
            let result = space.guidance_step(
                x,
                &t,
                &ctx.cond.positive,
                ctx.cond,
                field,
                config,
                grad,
                cancel,
            );
            stats.guidance_model_s += timer.elapsed().as_secs_f64();
            let loss = match result {
                Ok(loss) => loss,
                // Non-finite Q/K inside the graph: the operator reports the kernels' NonFinite.
                Err(ModelError::Onnx { message, .. }) if message.contains("non-finite value") => {
                    f32::NAN
                }
                Err(e) => return Err(e.into()),
            };
            stats.real_forward += 1;
            stats.real_backward += 1;
            return Ok(loss);
        }
        let x_host = space.host_values(x)?;
        let text = space.host_values(&ctx.cond.positive)?;
        let latent = Latent {
            shape: latent_shape(x.shape())?,
            data: &x_host,
        };
        let timer = Instant::now();
        let (q, k) = self
            .model
            .guidance_qk(&latent, &t, &text, self.rope, cancel)?;
        stats.real_forward += 1;
        stats.guidance_model_s += timer.elapsed().as_secs_f64();
        let timer = Instant::now();
        let StepReference::Host(reference) = reference else {
            return Err(no_field());
        };
        let lg = self.loss_grad(&q, &k, reference)?;
        stats.guidance_amf_s += timer.elapsed().as_secs_f64();
        let timer = Instant::now();
        let dx = self
            .model
            .guidance_grad(&latent, &t, &text, self.rope, &lg.dq, &lg.dk, cancel)?;
        stats.real_backward += 1;
        stats.guidance_model_s += timer.elapsed().as_secs_f64();
        space.write(grad, &dx)?;
        Ok(lg.loss)
    }

    /// Runs the inner optimisation of one guided denoising step on `x`.
    pub fn optimise(
        &mut self,
        space: &Space<'_>,
        x: &mut Buf,
        ctx: &StepContext<'_>,
        stats: &mut SampleStats,
        progress: &mut dyn FnMut(usize, &str),
        cancel: CancelCheck<'_>,
    ) -> Result<(), SampleError> {
        let mut work = match self.work.take() {
            Some(mut w) => {
                w.opt.reset(space)?;
                w
            }
            None => {
                let shape = x.shape().to_vec();
                Work {
                    x_ref: space.alloc(&shape)?,
                    snapshot: space.alloc(&shape)?,
                    grad: space.alloc(&shape)?,
                    previous: space.alloc(&shape)?,
                    opt: AdamW::new(space, &shape, self.settings.weight_decay)?,
                    field: None,
                }
            }
        };
        let result = self.optimise_with(space, &mut work, x, ctx, stats, progress, cancel);
        self.work = Some(work);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn optimise_with(
        &mut self,
        space: &Space<'_>,
        work: &mut Work,
        x: &mut Buf,
        ctx: &StepContext<'_>,
        stats: &mut SampleStats,
        progress: &mut dyn FnMut(usize, &str),
        cancel: CancelCheck<'_>,
    ) -> Result<(), SampleError> {
        let s = self.settings.clone();
        let decay = if self.guided_steps > 1 {
            ctx.step as f32 / (self.guided_steps - 1) as f32
        } else {
            0.0
        };
        let lr = s.lr * (1.0 - (1.0 - s.lr_end_ratio) * decay);
        let fused = self.fused_config();
        // The reference field stays in device memory where `guidance_step`'s operator reads it
        // there: the bound space of a CUDA model with the CUDA AMF back end on device 0.
        let field_on_device = fused.is_some()
            && space.is_bound()
            && self.model.device == Device::Cuda
            && self.settings.amf.backend == (Backend::Cuda { device: 0 })
            && crate::runtime::amf_ops::reference_on_device(true);
        if field_on_device && work.field.is_none() {
            let pairs = fastvmt_kernels::resolve_pairs(&self.spec.pairs, self.spec.frames)?;
            let s = self.spec.grid_h * self.spec.grid_w;
            work.field = Some(space.alloc(&[pairs.len(), s, 2])?);
        }
        let field = if field_on_device {
            work.field.as_mut()
        } else {
            None
        };
        let reference = self.reference_amf(space, &mut work.x_ref, field, ctx, stats, cancel)?;
        space.copy(&mut work.snapshot, x)?;
        let mode = s.mode;
        let inner = s.inner_steps;

        // A denoising step starts on a real gradient, unless `adaptive` carries the previous
        // step's last one over (`AdaptiveRule::carry_over`).
        let base = s.reuse_interval.max(1);
        let carry = mode == GuidanceMode::Adaptive
            && s.adaptive.carry_over
            && self.last_real_step.is_some_and(|k| k + 1 == ctx.step);
        let mut cached = carry;
        let mut next_real = if carry { base } else { 0 };
        let mut previous: Option<(usize, f32)> = None; // (inner step, loss) of the last real gradient

        for j in 0..inner {
            if cancel() {
                return Err(SampleError::Model(ModelError::Cancelled));
            }
            let need_real = !cached
                || match mode {
                    GuidanceMode::DitFlow => true,
                    GuidanceMode::FastVmt => j % base == 0,
                    GuidanceMode::Adaptive => j >= next_real,
                    GuidanceMode::None => false,
                };
            let mut note = String::new();
            if need_real {
                // Keep the last real gradient for the cosine; the new one goes in the other
                // buffer.
                if self.last_real_step.is_some() {
                    std::mem::swap(&mut work.grad, &mut work.previous);
                }
                let field = if field_on_device {
                    work.field.as_ref()
                } else {
                    None
                };
                let loss = match self.real_gradient(
                    space,
                    x,
                    ctx,
                    &reference,
                    field,
                    fused.as_ref(),
                    &mut work.grad,
                    stats,
                    cancel,
                ) {
                    Ok(loss) => loss,
                    // Non-finite Q/K from the model: handled like a non-finite loss below.
                    Err(SampleError::Kernel(fastvmt_kernels::KernelError::NonFinite {
                        ..
                    })) => f32::NAN,
                    Err(e) => return Err(e),
                };
                let check = if loss.is_finite() {
                    let prev = self.last_real_step.is_some().then_some(&work.previous);
                    Some(space.stats(&work.grad, prev)?)
                } else {
                    None
                };
                let Some(check) = check.filter(|c| c.nonfinite == 0) else {
                    stats.stopped_on_nan = Some(format!("non-finite AMF loss or gradient at guided step {}, inner step {j}; guidance stopped, sampling went on unguided", ctx.step));
                    space.copy(x, &work.snapshot)?;
                    return Ok(());
                };
                stats.first_loss.get_or_insert(loss);
                stats.final_loss = Some(loss);
                stats.real_losses.push((ctx.step, j, loss));
                if self.last_real_step.is_some() {
                    stats.gradient_cosines.push(cosine(&check));
                }
                if mode == GuidanceMode::Adaptive {
                    let step_rate = previous.and_then(|(pj, before)| {
                        (before > 0.0 && j > pj)
                            .then(|| (before - loss) / (before * (j - pj) as f32))
                    });
                    if step_rate.is_some() {
                        self.last_rate = step_rate;
                    }
                    previous = Some((j, loss));
                    next_real = j + match &s.adaptive.loss_trend {
                        Some(trend) => trend.gap(self.last_rate, base),
                        None => base,
                    };
                }
                note = format!(", real gradient, loss {loss:.4}");
                self.last_real_step = Some(ctx.step);
                cached = true;
            } else {
                stats.cached_steps += 1;
                if carry && previous.is_none() {
                    note = ", the previous step's last real gradient".into();
                }
            }
            let step_lr = if need_real {
                lr
            } else {
                lr * s.cached_step_scale
            };
            if step_lr > 0.0 {
                work.opt.step(space, x, &work.grad, step_lr)?;
            }
            if space.stats(x, None)?.nonfinite > 0 {
                stats.stopped_on_nan = Some(format!("the latent became non-finite at guided step {}, inner step {j} (learning rate {lr} too high?); guidance stopped, sampling went on unguided", ctx.step));
                space.copy(x, &work.snapshot)?;
                return Ok(());
            }
            progress(
                j,
                &format!(
                    "guided step {}/{}, inner {}/{inner}{note}",
                    ctx.step + 1,
                    self.guided_steps,
                    j + 1
                ),
            );
        }
        Ok(())
    }
}

fn latent_shape(shape: &[usize]) -> Result<[usize; 5], SampleError> {
    shape.try_into().map_err(|_| SampleError::Input {
        input: "reference",
        message: format!("latent of rank {}, expected 5", shape.len()),
    })
}

fn to_half<T: HalfFrom>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

trait HalfFrom {
    fn from_f32(x: f32) -> Self;
}
impl HalfFrom for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl HalfFrom for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

#[cfg(test)]
mod tests {
    use super::LossTrend;

    #[test]
    fn loss_trend_gap_follows_the_loss_rate() {
        let rule = LossTrend {
            steep: 0.02,
            flat: 0.008,
            max_interval: 5,
        };
        assert_eq!(
            rule.gap(None, 3),
            3,
            "nothing measured yet: FastVMT's interval"
        );
        assert_eq!(
            rule.gap(Some(0.05), 3),
            1,
            "falling fast: refresh next step"
        );
        assert_eq!(rule.gap(Some(0.02), 3), 1);
        assert_eq!(rule.gap(Some(0.01), 3), 3);
        assert_eq!(rule.gap(Some(0.001), 3), 5, "flat: stretch");
        assert_eq!(rule.gap(Some(-0.1), 3), 5, "rising loss counts as flat");
        assert_eq!(rule.gap(Some(f32::NAN), 3), 5);
        let short = LossTrend {
            max_interval: 2,
            ..rule
        };
        assert_eq!(
            short.gap(Some(0.0), 3),
            3,
            "max_interval below the reuse interval: the reuse interval"
        );
    }
}
