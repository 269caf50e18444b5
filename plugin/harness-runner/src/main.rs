//! The motion-fidelity harness's runner: samples every reference clip of a clip set with each
//! guidance mode, writes the videos and `runs.json` (wall time and pass counts per run).
//! `harness/run.sh` calls it between making the clips and scoring them.
//!
//! Usage: cargo run --release -p fastvmt-harness -- --clips DIR/clips.json --out RUN_DIR [--modes none,ditflow,fastvmt,adaptive]
//!        [--bundle DIR] [--device cpu|cuda] [--steps N] [--seed S] [--limit N] [--shard K/N] [--tag T]

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fastvmt_kernels::Backend;
use fastvmt_plugin::model::{bundle::default_bundle_dir, Device, DitModel};
use fastvmt_plugin::sampler::{
    self, guidance::AmfPrecision, AdaptiveRule, AmfConfig, GuidanceMode, GuidanceSettings,
    LossTrend, PromptEmbeddings, SampleSettings,
};
use fastvmt_video_io::{load_video, save_video, Frames, LoadOptions, VideoFormat};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    about = "Run every clip of a clip set with each guidance mode and record time and pass counts."
)]
struct Args {
    #[arg(long)]
    clips: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "none,ditflow,fastvmt,adaptive")]
    modes: String,
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Denoising steps (default: the bundle's).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only the first N clips.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 10)]
    inner_steps: usize,
    #[arg(long, default_value_t = 0.2)]
    guided_fraction: f32,
    /// Key-window radius for fastvmt/adaptive (default: the bundle's).
    #[arg(long)]
    radius: Option<usize>,
    /// Forward temporal window for fastvmt/adaptive; 0 = all pairs.
    #[arg(long, default_value_t = 0)]
    temporal_window: usize,
    /// Centre key windows on FastVMT's coarse tile search instead of the query's position.
    #[arg(long)]
    coarse_tiles: bool,
    /// Adaptive: take the within-step gaps from the loss trend (`--steep`, `--flat`,
    /// `--max-interval`) instead of the reuse interval.
    #[arg(long)]
    loss_trend: bool,
    /// Adaptive, with `--loss-trend`: loss-decrease rate per inner step at or above which it
    /// refreshes on the next inner step.
    #[arg(long, default_value_t = fastvmt_plugin::sampler::LOSS_TREND.steep)]
    steep: f32,
    /// Adaptive, with `--loss-trend`: rate below which it stretches the gap to `--max-interval`.
    #[arg(long, default_value_t = fastvmt_plugin::sampler::LOSS_TREND.flat)]
    flat: f32,
    /// Adaptive, with `--loss-trend`: the longest gap between real gradients.
    #[arg(long, default_value_t = fastvmt_plugin::sampler::LOSS_TREND.max_interval)]
    max_interval: usize,
    /// Adaptive: start every guided step on a fresh real gradient instead of carrying the
    /// previous step's last one over (the default rule carries it).
    #[arg(long)]
    no_carry_over: bool,
    /// fastvmt/adaptive: inner steps between real gradients (FastVMT's 3).
    #[arg(long, default_value_t = 3)]
    reuse_interval: usize,
    /// Run only clip i of every N (`K/N`, K from 0): shards a clip set over processes.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Appended to each run's mode name in runs.json and its file names (to compare settings
    /// of one mode in one table, e.g. `--modes adaptive --tag -s03`).
    #[arg(long, default_value = "")]
    tag: String,
    /// fastvmt/adaptive: loss only where the reference moves more than this many tokens
    /// (DiTFlow's mask); 0 = every entry. Default: the sampler node's.
    #[arg(long, default_value_t = fastvmt_plugin::sampler::FASTVMT_MOVING_THRESHOLD)]
    moving_threshold: f32,
    /// fastvmt/adaptive: learning-rate factor of the inner steps that reuse the cached gradient
    /// (0: they make no update).
    #[arg(long, default_value_t = fastvmt_plugin::sampler::CACHED_STEP_SCALE)]
    cached_scale: f32,
    /// Guidance learning rate (default: the bundle's `guidance_lr`).
    #[arg(long)]
    lr: Option<f32>,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (k, n) = s.split_once('/').ok_or("use K/N, e.g. 0/4")?;
    let (k, n): (usize, usize) = (
        k.parse().map_err(|e| format!("K: {e}"))?,
        n.parse().map_err(|e| format!("N: {e}"))?,
    );
    if n == 0 || k >= n {
        return Err(format!("need 0 <= K < N, got {k}/{n}"));
    }
    Ok((k, n))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} threads",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let clips: Value = serde_json::from_str(
        &std::fs::read_to_string(&args.clips)
            .with_context(|| format!("reading {}", args.clips.display()))?,
    )
    .with_context(|| format!("{} is not JSON", args.clips.display()))?;
    let clips = clips.as_array().context("clips.json must be a list")?;
    let clip_dir = args.clips.parent().unwrap_or(Path::new("."));
    let modes = GuidanceMode::parse_list(&args.modes).map_err(anyhow::Error::msg)?;
    let Some(device) = Device::parse(&args.device) else {
        bail!("--device {}: use cpu or cuda", args.device);
    };
    let dir = args.bundle.clone().unwrap_or_else(default_bundle_dir);
    let model =
        DitModel::load(&dir, device).with_context(|| format!("loading {}", dir.display()))?;
    let m = model.manifest();
    let steps = args.steps.unwrap_or(m.default_f64("steps", 30.0) as usize);
    let amf = AmfConfig {
        local: true,
        temporal_window: args.temporal_window,
        spatial_radius: args
            .radius
            .unwrap_or(m.default_f64("spatial_radius", 3.0) as usize),
        coarse_tiles: args.coarse_tiles,
        tau: m.default_f64("amf_temperature", 2.0) as f32,
        precision: AmfPrecision::F32,
        backend: if device == Device::Cuda {
            Backend::Cuda { device: 0 }
        } else {
            Backend::Cpu
        },
    };
    std::fs::create_dir_all(&args.out)?;
    let never = || false;
    let mut runs = Vec::new();
    let (shard_k, shard_n) = args.shard.unwrap_or((0, 1));
    for clip in clips
        .iter()
        .take(args.limit.unwrap_or(usize::MAX))
        .enumerate()
        .filter(|(i, _)| i % shard_n == shard_k)
        .map(|(_, c)| c)
    {
        let name = clip["name"].as_str().context("clip without name")?;
        let gif = clip_dir.join(clip["gif"].as_str().context("clip without gif")?);
        let prompt = clip["prompt"].as_str().context("clip without prompt")?;
        let frames =
            load_video(&gif, &LoadOptions::default()).with_context(|| format!("clip {name}"))?;
        let (f, h, w) = (frames.frames, frames.height, frames.width);
        let reference = sampler::video_to_latent(f, h, w, &frames.data);
        let (emb, _) = model.encode_text(&[prompt, ""], &never)?;
        let (pos, neg) = emb.split_at(emb.len() / 2);
        for &mode in &modes {
            let settings = SampleSettings {
                seed: args.seed,
                steps,
                cfg: m.default_f64("cfg", 5.0) as f32,
                denoise: 1.0,
                latents: Default::default(),
                guidance: GuidanceSettings {
                    mode,
                    fraction: args.guided_fraction,
                    inner_steps: args.inner_steps,
                    reuse_interval: args.reuse_interval.max(1),
                    cached_step_scale: args.cached_scale,
                    lr: args
                        .lr
                        .unwrap_or(m.default_f64("guidance_lr", 0.015) as f32),
                    lr_end_ratio: 0.7,
                    weight_decay: 0.01,
                    reference_noise_scale: 0.5,
                    amf: amf.clone(),
                    adaptive: AdaptiveRule {
                        carry_over: !args.no_carry_over,
                        loss_trend: args.loss_trend.then_some(LossTrend {
                            steep: args.steep,
                            flat: args.flat,
                            max_interval: args.max_interval,
                        }),
                    },
                    moving_threshold: (args.moving_threshold > 0.0)
                        .then_some(args.moving_threshold),
                    fused_step: true,
                    device_reference: true,
                },
            };
            let out = sampler::sample(
                &model,
                (&[1, 3, f, h, w], &reference),
                &PromptEmbeddings {
                    positive: pos,
                    negative: neg,
                },
                &settings,
                &mut |_| {},
                &never,
            )
            .with_context(|| format!("clip {name}, mode {}", mode.name()))?;
            let video = Frames::new(
                sampler::latent_to_video(f, h, w, &out.latent),
                f,
                h,
                w,
                frames.fps,
            )?;
            let written = save_video(
                &video,
                &args.out,
                &format!("{name}.{}{}", mode.name(), args.tag),
                VideoFormat::Gif,
                &never,
            )?;
            let s = &out.stats;
            eprintln!(
                "{name} {:<8} {:>6.1} s  fwd {:>3} bwd {:>3} cached {:>3} loss {:?} -> {:?}",
                mode.name(),
                s.wall_s,
                s.real_forward,
                s.real_backward,
                s.cached_steps,
                s.first_loss,
                s.final_loss
            );
            runs.push(json!({
                "clip": name, "mode": format!("{}{}", mode.name(), args.tag),
                "gif": written.file_name().map(|n| n.to_string_lossy().into_owned()),
                "reference_gif": gif.canonicalize().unwrap_or(gif.clone()).display().to_string(),
                "prompt": prompt, "wall_s": s.wall_s, "real_forward": s.real_forward, "real_backward": s.real_backward,
                "cached_steps": s.cached_steps, "guided_steps": s.guided_steps, "denoiser_passes": s.denoiser_passes,
                "first_loss": s.first_loss, "final_loss": s.final_loss, "stopped_on_nan": s.stopped_on_nan, "seed": args.seed,
                "gradient_cosines": s.gradient_cosines,
                "real_losses": s.real_losses,
            }));
        }
    }
    let doc = json!({"machine": machine(), "model": m.name, "device": device.name(), "steps": steps, "runs": runs});
    let path = args.out.join("runs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
