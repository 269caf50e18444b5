//! Motion-transfer sampling: flow-matching Euler sampling with classifier-free guidance, and
//! AMF guidance on the first denoising steps (DiTFlow, FastVMT, or our adaptive schedule).
//! Used by the `GradientCachedSampler` node and by the motion-fidelity harness binary.

pub mod adamw;
pub mod guidance;
pub mod latents;
pub mod schedule;

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::model::dit::{CancelCheck, Device, ModelError};
use crate::model::DitModel;
pub use guidance::{AdaptiveRule, AmfConfig, GuidanceMode, GuidanceSettings, LossTrend};
use latents::Space;

/// `adaptive`'s default rule (see [`guidance::AdaptiveRule`]): reuse across denoising steps
/// (a guided step after the first starts on the previous step's last real gradient) and
/// FastVMT's reuse interval within a step: 13 backward passes where `fastvmt` makes 16 (20
/// steps, 4 guided, 10 inner). Decided by the harness at the shipped radius 3 (64 clips, 3 seeds
/// each, paired; `harness/results/2026-11-28-adaptive`): this rule −0.018 ± 0.010 against
/// `fastvmt`; the loss-trend gaps ([`LOSS_TREND`]) without reuse (11.5 passes) −0.039 ± 0.013,
/// with it (10.5 passes) −0.036 ± 0.013. So the loss trend saves 2.5 more passes for about 0.02
/// of fidelity, and it is off by default.
pub const ADAPTIVE_RULE: AdaptiveRule = AdaptiveRule {
    carry_over: true,
    loss_trend: None,
};

/// The loss-trend gaps measured for `adaptive` (the default of sessions 6–12): FastVMT's
/// interval while the loss falls at least 0.8 % per inner step, 5 inner steps once it falls
/// slower; the refresh-next-step branch off (`steep` 1.0 is never reached). At radius 6
/// (64 clips): 10.8 passes at MF 0.257, the same as with the branch on (`steep` 0.02: 12.1
/// passes, 0.254); `fastvmt` 16 at 0.346.
pub const LOSS_TREND: LossTrend = LossTrend {
    steep: 1.0,
    flat: 0.008,
    max_interval: 5,
};

/// `fastvmt`/`adaptive`'s default motion mask: the loss counts only entries where the
/// reference moves more than half a token. Decided by the harness (16 clips): `fastvmt` 0.39
/// without the mask, 0.52 with it, `ditflow` (always masked) 0.49.
pub const FASTVMT_MOVING_THRESHOLD: f32 = 0.5;

/// `fastvmt`/`adaptive`: the learning-rate factor of an inner step that reuses the cached
/// gradient (1 = FastVMT's reuse as the paper describes it; 0 = such steps make no update).
/// Kept at 1 by the harness (32 clips, `harness/README.md`, "What the cached steps are
/// worth"): MF 0.351 at 1, 0.310 at 0, 0.284 at 0.33 — within a standard error of each other.
pub const CACHED_STEP_SCALE: f32 = 1.0;

/// Everything a sampling run needs besides the model and the prompts.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    pub seed: u64,
    pub steps: usize,
    pub cfg: f32,
    /// 1 starts from pure noise; below 1 starts from the reference noised to that level.
    pub denoise: f32,
    pub guidance: GuidanceSettings,
    /// Where the job keeps its latents ([`LatentRoute`]).
    pub latents: LatentRoute,
}

/// Where a sampling job keeps its latents (see [`latents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatentRoute {
    /// Bound to the sessions' memory on a CUDA model, host vectors on a CPU one.
    #[default]
    Auto,
    /// Host vectors, copied through every run (CUDA: for comparisons).
    Host,
    /// Tensors in the sessions' memory, bound to every run (on a CPU model: host tensors
    /// through the same route, which is how CI tests it).
    Bound,
}

/// What the run did, for logs, the node's report output and the harness.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SampleStats {
    pub denoiser_passes: usize,
    /// Guidance-head forward passes (reference AMF and real gradients).
    pub real_forward: usize,
    /// Guidance-gradient (VJP) passes.
    pub real_backward: usize,
    /// Inner optimisation steps that reused a cached gradient.
    pub cached_steps: usize,
    pub guided_steps: usize,
    pub inner_steps: usize,
    /// AMF loss at the first and last real gradient.
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    /// Cosine between each real gradient and the previous one (what `adaptive` decides on).
    pub gradient_cosines: Vec<f32>,
    /// Every real gradient's AMF loss as `(guided step, inner step, loss)`: the loss trend
    /// `adaptive` reads, and what the harness logs to tune it.
    pub real_losses: Vec<(usize, usize, f32)>,
    /// Set when guidance was stopped because a loss or gradient was not finite.
    pub stopped_on_nan: Option<String>,
    pub wall_s: f64,
    /// Of `wall_s`, the seconds spent in guidance (reference AMF, real gradients, optimiser).
    pub guidance_s: f64,
    /// Of `guidance_s`: inside the guidance graphs (head and gradient runs, with their
    /// host/device copies) and inside the AMF kernels (with the Q/K conversion and copies);
    /// the rest is host work between them (optimiser, checks).
    pub guidance_model_s: f64,
    pub guidance_amf_s: f64,
    /// Whether the job kept its latents in the sessions' memory (`latents::Space::bound`).
    pub bound_latents: bool,
    /// Bytes copied between host and device memory during the job (0 on a CPU model; see
    /// [`DitModel::host_device_bytes`]; jobs running at the same time on one model add up).
    pub host_device_bytes: u64,
}

/// A progress report: `step` of `total` units (denoising steps plus inner steps).
pub struct Progress<'a> {
    pub step: u64,
    pub total: u64,
    pub message: &'a str,
}

/// Prompt embeddings for one run: conditional and unconditional, each `[1, L, D]`.
pub struct PromptEmbeddings<'a> {
    pub positive: &'a [f32],
    pub negative: &'a [f32],
}

pub struct SampleOutput {
    /// `[1, C, F, H, W]` in the model's pixel space (-1..1).
    pub latent: Vec<f32>,
    pub stats: SampleStats,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{input}: {message}")]
    Input {
        input: &'static str,
        message: String,
    },
    #[error("AMF kernel: {0}")]
    Kernel(#[from] fastvmt_kernels::KernelError),
    /// The job does not fit the device's memory (the model and host go on; a smaller job can
    /// run next).
    #[error("out of {device} memory in mode '{mode}' with a latent of {shape} ({tokens} tokens): {detail}. Use fewer frames or a smaller size, or set FASTVMT_CUDA_ARENA=shrink (lower peak, slower)")]
    OutOfMemory {
        device: &'static str,
        mode: &'static str,
        shape: String,
        tokens: usize,
        detail: String,
    },
}

/// Whether an ONNX Runtime or CUDA error message reports exhausted memory (the BFC arena's
/// "Failed to allocate memory", CUDA's "out of memory", the driver's `CUDA_ERROR_OUT_OF_MEMORY`,
/// a C++ `bad_alloc`).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("failed to allocate memory")
        || m.contains("out of memory")
        || m.contains("out_of_memory")
        || m.contains("bad_alloc")
}

/// Turns an out-of-memory failure into [`SampleError::OutOfMemory`] naming the job.
fn name_out_of_memory(
    e: SampleError,
    model: &DitModel,
    settings: &SampleSettings,
    shape: &[usize; 5],
) -> SampleError {
    let detail = match &e {
        SampleError::Model(m @ ModelError::Onnx { .. }) => m.to_string(),
        SampleError::Kernel(k) => format!("AMF kernel: {k}"),
        _ => return e,
    };
    if !is_out_of_memory(&detail) {
        return e;
    }
    let [pt, ph, pw] = model.manifest().patch_size;
    let tokens = shape[2] / pt.max(1) * (shape[3] / ph.max(1)) * (shape[4] / pw.max(1));
    SampleError::OutOfMemory {
        device: model.device.name(),
        mode: settings.guidance.mode.name(),
        shape: shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x"),
        tokens,
        detail: detail.lines().next().unwrap_or_default().trim().to_string(),
    }
}

fn gaussian(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Samples a video with the prompt's content; with guidance, moving like `reference`.
///
/// `reference` is `[1, C, F, H, W]` in the model's space (-1..1). Guidance needs it; plain
/// sampling uses it only for the shape (and as the start when `denoise < 1`).
pub fn sample(
    model: &DitModel,
    reference: (&[usize; 5], &[f32]),
    prompts: &PromptEmbeddings<'_>,
    settings: &SampleSettings,
    progress: &mut dyn FnMut(Progress<'_>),
    cancel: CancelCheck<'_>,
) -> Result<SampleOutput, SampleError> {
    sample_job(model, reference, prompts, settings, progress, cancel)
        .map_err(|e| name_out_of_memory(e, model, settings, reference.0))
}

fn sample_job(
    model: &DitModel,
    reference: (&[usize; 5], &[f32]),
    prompts: &PromptEmbeddings<'_>,
    settings: &SampleSettings,
    progress: &mut dyn FnMut(Progress<'_>),
    cancel: CancelCheck<'_>,
) -> Result<SampleOutput, SampleError> {
    let started = std::time::Instant::now();
    let (shape, ref_data) = reference;
    let [b, c, f, h, w] = *shape;
    if b != 1 {
        return Err(SampleError::Input {
            input: "reference",
            message: format!("batch {b}: one video at a time"),
        });
    }
    if c != model.manifest().latent.channels {
        return Err(SampleError::Input {
            input: "reference",
            message: format!(
                "{c} channels, the model takes {}",
                model.manifest().latent.channels
            ),
        });
    }
    if settings.steps == 0 {
        return Err(SampleError::Input {
            input: "steps",
            message: "must be at least 1".into(),
        });
    }
    let rope = model.rope(f, h, w).map_err(|e| SampleError::Input {
        input: "reference",
        message: e.to_string(),
    })?;
    let guided = settings.guidance.mode != GuidanceMode::None;
    if guided {
        if !model.has_guidance() {
            return Err(SampleError::Input {
                input: "mode",
                message: format!(
                    "guidance mode '{}' needs the bundle's guidance_head graph and its guidance_step or guidance_grad graph, which {} lacks; use mode 'none'",
                    settings.guidance.mode.name(),
                    model.bundle.dir.display()
                ),
            });
        }
        if rope.grid.0 < 2 {
            return Err(SampleError::Input {
                input: "reference",
                message: format!("has {f} frame(s); motion guidance needs at least 2 latent frames ({} video frames)", 2 * model.manifest().patch_size[0]),
            });
        }
    }

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let n = ref_data.len();
    let noise = gaussian(&mut rng, n);
    // Fixed noise for the reference AMF, drawn once so every guided step sees the same one.
    let ref_noise = gaussian(&mut rng, n);

    let sigmas = schedule::sigmas(settings.steps, model.manifest().scheduler.shift);
    let start = schedule::start_index(&sigmas, settings.denoise);
    let s0 = sigmas[start];
    let x0: Vec<f32> = if settings.denoise >= 1.0 {
        noise
    } else {
        ref_data
            .iter()
            .zip(&noise)
            .map(|(r, e)| (1.0 - s0) * r + s0 * e)
            .collect()
    };

    let run_steps = settings.steps - start;
    let guided_steps = if guided {
        ((settings.guidance.fraction * run_steps as f32).round() as usize).min(run_steps)
    } else {
        0
    };
    let inner = settings.guidance.inner_steps;
    let total = (run_steps + guided_steps * inner) as u64;
    let mut done_units = 0u64;
    let copied_before = model.host_device_bytes();
    let space = match (settings.latents, model.device) {
        (LatentRoute::Bound, _) | (LatentRoute::Auto, Device::Cuda) => Space::bound(model)?,
        _ => Space::host(model),
    };
    let mut stats = SampleStats {
        guided_steps,
        inner_steps: inner,
        bound_latents: space.is_bound(),
        ..Default::default()
    };

    let empty = model.empty_text(cancel)?.to_vec();
    let use_cfg = (settings.cfg - 1.0).abs() > 1e-6;
    let cond = space.conditioning(&rope, prompts.positive, prompts.negative, &empty, use_cfg)?;
    let mut guide = guidance::Guide::new(model, &settings.guidance, &rope, guided_steps)?;
    let mut x = space.upload(shape, &x0)?;
    drop(x0);
    // The reference and its noise stay in the space for the guided steps.
    let guide_refs = if guided_steps > 0 {
        Some((
            space.upload(shape, ref_data)?,
            space.upload(shape, &ref_noise)?,
        ))
    } else {
        None
    };
    let batch2 = [2, c, f, h, w];
    let mut x_pair = if use_cfg {
        Some(space.alloc(&batch2)?)
    } else {
        None
    };
    let mut velocity = space.alloc(if use_cfg { &batch2 } else { shape })?;

    for (k, i) in (start..settings.steps).enumerate() {
        let (t, t_next) = (sigmas[i], sigmas[i + 1]);
        if let (true, None, Some((reference, ref_noise))) =
            (k < guided_steps, &stats.stopped_on_nan, &guide_refs)
        {
            let ctx = guidance::StepContext {
                step: k,
                t,
                reference,
                ref_noise,
                cond: &cond,
            };
            let mut inner_progress = |j: usize, msg: &str| {
                progress(Progress {
                    step: done_units + j as u64 + 1,
                    total,
                    message: msg,
                });
            };
            let guiding = std::time::Instant::now();
            guide.optimise(
                &space,
                &mut x,
                &ctx,
                &mut stats,
                &mut inner_progress,
                cancel,
            )?;
            stats.guidance_s += guiding.elapsed().as_secs_f64();
            done_units += inner as u64;
        }
        // Classifier-free guidance: conditional and unconditional in one batch.
        match (&mut x_pair, &cond.cfg_text) {
            (Some(pair), Some(text)) => {
                space.duplicate(pair, &x)?;
                space.velocity(pair, &[t, t], text, &cond, &mut velocity, cancel)?;
            }
            _ => space.velocity(&x, &[t], &cond.positive, &cond, &mut velocity, cancel)?,
        }
        stats.denoiser_passes += 1;
        let cfg = use_cfg.then_some(settings.cfg);
        space.cfg_euler(&mut x, &velocity, cfg, t_next - t)?;
        done_units += 1;
        progress(Progress {
            step: done_units,
            total,
            message: &format!("denoising step {}/{run_steps} (t={t:.3})", k + 1),
        });
    }
    let x = space.download(&x)?;
    stats.host_device_bytes = model.host_device_bytes().saturating_sub(copied_before);
    stats.wall_s = started.elapsed().as_secs_f64();
    Ok(SampleOutput { latent: x, stats })
}

/// Video frames `[F, H, W, 3]` in 0..1 → the model's pixel latent `[1, 3, F, H, W]` in -1..1.
pub fn video_to_latent(frames: usize, height: usize, width: usize, data: &[f32]) -> Vec<f32> {
    let plane = height * width;
    let mut out = vec![0.0f32; 3 * frames * plane];
    for fi in 0..frames {
        for p in 0..plane {
            for ch in 0..3 {
                out[(ch * frames + fi) * plane + p] = data[(fi * plane + p) * 3 + ch] * 2.0 - 1.0;
            }
        }
    }
    out
}

/// The inverse of [`video_to_latent`], clamped to 0..1.
pub fn latent_to_video(frames: usize, height: usize, width: usize, latent: &[f32]) -> Vec<f32> {
    let plane = height * width;
    let mut out = vec![0.0f32; 3 * frames * plane];
    for fi in 0..frames {
        for p in 0..plane {
            for ch in 0..3 {
                out[(fi * plane + p) * 3 + ch] =
                    ((latent[(ch * frames + fi) * plane + p] + 1.0) * 0.5).clamp(0.0, 1.0);
            }
        }
    }
    out
}
