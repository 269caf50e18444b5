//! Times the plugin's sampler on an exported Wan-sized bundle: every requested mode in one
//! process, after an untimed warm-up (NVRTC compiles, cuBLAS/cuDNN set-up, arena growth), and
//! writes one JSON row per mode — wall seconds, seconds in guidance, pass counts, peak device
//! memory. `bench/wan/run_device.sh` runs it beside the PyTorch reference on the same card.
//!
//! Usage: fastvmt-wan-bench --bundle DIR --device cuda --frames 21 --height 60 --width 104
//!        --steps 10 --modes none,ditflow,fastvmt,adaptive --out rows.json

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fastvmt_kernels::Backend;
use fastvmt_plugin::model::{bundle::AttentionKind, Device, DitModel};
use fastvmt_plugin::sampler::{
    self, guidance::AmfPrecision, AmfConfig, GuidanceMode, GuidanceSettings, PromptEmbeddings,
    SampleSettings, ADAPTIVE_RULE, FASTVMT_MOVING_THRESHOLD,
};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Time the sampler's guidance modes on one bundle, side by side in one run.")]
struct Args {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Latent frames, height and width (Wan2.1 at 81x480x832: 21 x 60 x 104).
    #[arg(long, default_value_t = 21)]
    frames: usize,
    #[arg(long, default_value_t = 60)]
    height: usize,
    #[arg(long, default_value_t = 104)]
    width: usize,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 0.2)]
    guided_fraction: f32,
    #[arg(long, default_value_t = 10)]
    inner_steps: usize,
    #[arg(long, default_value_t = 3)]
    reuse_interval: usize,
    #[arg(long, default_value = "none,ditflow,fastvmt,adaptive")]
    modes: String,
    #[arg(long, default_value_t = 5.0)]
    cfg: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// fastvmt/adaptive AMF key-window radius (FastVMT's 10: a 21x21 window).
    #[arg(long, default_value_t = 10)]
    radius: usize,
    /// fastvmt/adaptive forward temporal window (FastVMT's 4).
    #[arg(long, default_value_t = 4)]
    temporal_window: usize,
    /// Precision of Q/K fed to the AMF kernels: f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    amf_precision: String,
    #[arg(long, default_value_t = 0.015)]
    lr: f32,
    /// Appended to each row's mode name (e.g. `-local` for a local-attention bundle).
    #[arg(long, default_value = "")]
    tag: String,
    #[arg(long)]
    no_warmup: bool,
    /// Real gradients through guidance_head + guidance_grad even where the bundle has the
    /// one-run guidance_step graph (to compare the two routes).
    #[arg(long)]
    two_graph: bool,
    /// Copy the guidance head's Q/K to the host for each reference AMF (the route before the
    /// device-resident reference; to compare the two).
    #[arg(long)]
    host_reference: bool,
    /// Keep the latents on the host and copy them through every run (the route before the
    /// device-resident loop; to compare the two). The reference then follows
    /// `--host-reference`.
    #[arg(long)]
    host_loop: bool,
    #[arg(long)]
    out: PathBuf,
}

/// Polls the device's memory in use (all of it, as `cuMemGetInfo` reports) and keeps the peak.
struct MemoryWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryWatch {
    fn start(device: usize) -> Result<Self> {
        let ctx = cudarc::driver::CudaContext::new(device)
            .map_err(|e| anyhow::anyhow!("CUDA context for the memory watch: {e:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            if ctx.bind_to_thread().is_err() {
                return;
            }
            while !s.load(Ordering::Relaxed) {
                if let Ok((free, total)) = ctx.mem_get_info() {
                    p.fetch_max(total - free, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(Self {
            stop,
            peak,
            thread: Some(thread),
        })
    }

    /// The peak since the last reset, in GiB, and starts a new period.
    fn take_peak_gib(&self) -> f64 {
        self.peak.swap(0, Ordering::Relaxed) as f64 / (1u64 << 30) as f64
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn settings(
    args: &Args,
    mode: GuidanceMode,
    device: Device,
    steps: usize,
) -> Result<SampleSettings> {
    let precision = match args.amf_precision.as_str() {
        "f32" => AmfPrecision::F32,
        "f16" => AmfPrecision::F16,
        "bf16" => AmfPrecision::Bf16,
        other => bail!("--amf-precision {other}: use f32, f16 or bf16"),
    };
    Ok(SampleSettings {
        seed: args.seed,
        steps,
        cfg: args.cfg,
        denoise: 1.0,
        latents: if args.host_loop {
            fastvmt_plugin::sampler::LatentRoute::Host
        } else {
            fastvmt_plugin::sampler::LatentRoute::Auto
        },
        guidance: GuidanceSettings {
            mode,
            fraction: args.guided_fraction,
            inner_steps: args.inner_steps,
            reuse_interval: args.reuse_interval.max(1),
            cached_step_scale: fastvmt_plugin::sampler::CACHED_STEP_SCALE,
            lr: args.lr,
            lr_end_ratio: 0.7,
            weight_decay: 0.01,
            reference_noise_scale: 0.5,
            amf: AmfConfig {
                local: true,
                temporal_window: args.temporal_window,
                spatial_radius: args.radius,
                coarse_tiles: false,
                tau: 2.0,
                precision,
                backend: match device {
                    Device::Cuda => Backend::Cuda { device: 0 },
                    Device::Cpu => Backend::Cpu,
                },
            },
            adaptive: ADAPTIVE_RULE,
            moving_threshold: Some(FASTVMT_MOVING_THRESHOLD),
            fused_step: !args.two_graph,
            device_reference: !args.host_reference,
        },
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(device) = Device::parse(&args.device) else {
        bail!("--device {}: use cpu or cuda", args.device);
    };
    let modes = GuidanceMode::parse_list(&args.modes).map_err(anyhow::Error::msg)?;
    let loading = Instant::now();
    let model = DitModel::load(&args.bundle, device)
        .with_context(|| format!("loading {}", args.bundle.display()))?;
    let load_s = loading.elapsed().as_secs_f64();
    let m = model.manifest();
    eprintln!(
        "loaded {} ({} blocks, width {}, attention {:?}) on {} in {load_s:.1} s",
        m.name,
        m.blocks,
        m.width,
        m.attention,
        device.name()
    );
    let watch = match device {
        Device::Cuda => Some(MemoryWatch::start(0)?),
        Device::Cpu => None,
    };

    let never = || false;
    let c = m.latent.channels;
    let shape = [1, c, args.frames, args.height, args.width];
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let reference: Vec<f32> = (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(&mut rng);
            0.5 * z
        })
        .collect();
    let (emb, _) = model.encode_text(&["a dog runs on the beach", ""], &never)?;
    let (pos, neg) = emb.split_at(emb.len() / 2);
    let prompts = PromptEmbeddings {
        positive: pos,
        negative: neg,
    };
    let rope = model.rope(args.frames, args.height, args.width)?;
    eprintln!(
        "latent {}x{}x{}x{} = {} tokens ({}x{}x{}), {} steps, {} inner steps on {:.0}% of them",
        c,
        args.frames,
        args.height,
        args.width,
        rope.tokens,
        rope.grid.0,
        rope.grid.1,
        rope.grid.2,
        args.steps,
        args.inner_steps,
        args.guided_fraction * 100.0
    );

    if !args.no_warmup {
        // One guided step of two inner steps per AMF kind: compiles every kernel the timed runs
        // use and grows ONNX Runtime's arenas to the shapes they need.
        let warm = Instant::now();
        let wants = |m: GuidanceMode| modes.contains(&m);
        let mut kinds = Vec::new();
        if wants(GuidanceMode::DitFlow) {
            kinds.push(GuidanceMode::DitFlow); // dense AMF
        }
        if wants(GuidanceMode::FastVmt) || wants(GuidanceMode::Adaptive) {
            kinds.push(GuidanceMode::FastVmt); // local AMF
        }
        if kinds.is_empty() {
            kinds.push(GuidanceMode::None);
        }
        for mode in kinds {
            let mut s = settings(&args, mode, device, 1)?;
            s.guidance.fraction = 1.0;
            s.guidance.inner_steps = 2;
            sampler::sample(
                &model,
                (&shape, &reference),
                &prompts,
                &s,
                &mut |_| {},
                &never,
            )
            .with_context(|| format!("warm-up ({})", mode.name()))?;
        }
        eprintln!("warm-up {:.1} s", warm.elapsed().as_secs_f64());
    }

    let mut rows: Vec<Value> = Vec::new();
    for &mode in &modes {
        let s = settings(&args, mode, device, args.steps)?;
        if let Some(w) = &watch {
            w.take_peak_gib();
        }
        let out = match sampler::sample(
            &model,
            (&shape, &reference),
            &prompts,
            &s,
            &mut |_| {},
            &never,
        ) {
            Ok(out) => out,
            // A mode that does not fit is a row of the table, not the end of the run.
            Err(e @ sampler::SampleError::OutOfMemory { .. }) => {
                eprintln!("{}{}: {e}", mode.name(), args.tag);
                rows.push(json!({"pipeline": "ours", "mode": format!("{}{}", mode.name(), args.tag), "failed": e.to_string()}));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("mode {}", mode.name())),
        };
        let st = &out.stats;
        let peak = watch.as_ref().map(|w| w.take_peak_gib());
        eprintln!(
            "{:<16} {:>8.2} s  (guidance {:>7.2} s)  denoiser {:>3}  fwd {:>3}  bwd {:>3}  cached {:>3}  peak {}",
            format!("{}{}", mode.name(), args.tag),
            st.wall_s,
            st.guidance_s,
            st.denoiser_passes,
            st.real_forward,
            st.real_backward,
            st.cached_steps,
            peak.map_or("-".into(), |p| format!("{p:.1} GiB"))
        );
        if st.guidance_s > 0.0 {
            eprintln!(
                "  guidance: {:.2} s in the guidance graphs, {:.2} s in the AMF kernels, {:.2} s other host work",
                st.guidance_model_s,
                st.guidance_amf_s,
                st.guidance_s - st.guidance_model_s - st.guidance_amf_s
            );
        }
        eprintln!(
            "  latents {}: {:.1} MB copied between host and device",
            if st.bound_latents {
                "bound to device memory"
            } else {
                "on the host"
            },
            st.host_device_bytes as f64 / 1e6
        );
        if let Some(why) = &st.stopped_on_nan {
            eprintln!("  warning: {why}");
        }
        rows.push(json!({
            "pipeline": "ours", "mode": format!("{}{}", mode.name(), args.tag),
            "wall_s": st.wall_s, "guidance_s": st.guidance_s, "denoise_s": st.wall_s - st.guidance_s,
            "guidance_model_s": st.guidance_model_s, "guidance_amf_s": st.guidance_amf_s,
            "denoiser_passes": st.denoiser_passes, "real_forward": st.real_forward,
            "real_backward": st.real_backward, "cached_steps": st.cached_steps,
            "guided_steps": st.guided_steps, "peak_mem_gib": peak,
            "nonfinite": st.stopped_on_nan, "first_loss": st.first_loss, "final_loss": st.final_loss,
            "bound_latents": st.bound_latents, "host_device_mb": st.host_device_bytes as f64 / 1e6,
        }));
    }
    let window = match m.attention {
        AttentionKind::Dense => None,
        AttentionKind::Local {
            temporal_radius,
            spatial_radius,
        } => Some([temporal_radius, spatial_radius]),
    };
    if std::env::var_os("FASTVMT_ORT_PROFILE").is_some() {
        for file in model.end_profiling()? {
            eprintln!("ONNX Runtime profile: {}", file.display());
        }
    }
    let arena = fastvmt_plugin::runtime::cuda_arena::ArenaPolicy::from_env()
        .map_err(anyhow::Error::msg)?
        .name();
    let doc = json!({
        "cuda_arena": arena,
        "bundle": args.bundle.display().to_string(), "model": m.name, "blocks": m.blocks,
        "attention": format!("{:?}", m.attention), "device": device.name(), "load_s": load_s,
        "latent": shape, "tokens": rope.tokens, "steps": args.steps,
        "grid": [rope.grid.0, rope.grid.1, rope.grid.2], "window": window,
        "text_len": m.text.max_len, "motion_block": m.motion_block, "cfg": args.cfg,
        "guided_fraction": args.guided_fraction, "inner_steps": args.inner_steps,
        "reuse_interval": args.reuse_interval, "amf_precision": args.amf_precision,
        "radius": args.radius, "temporal_window": args.temporal_window,
        "gradient_route": if args.two_graph || !model.has_guidance_step() {
            "guidance_head + guidance_grad"
        } else if fastvmt_plugin::runtime::amf_ops::cuda_variant_enabled() && device == Device::Cuda {
            "guidance_step (AMF operator on device buffers)"
        } else {
            "guidance_step"
        },
        "latent_route": if device == Device::Cuda && !args.host_loop {
            "device-resident loop (latents, text, RoPE, gradients, optimiser in device memory)"
        } else {
            "host loop (latents copied through every run)"
        },
        "reference_route": if device == Device::Cuda && (!args.host_loop || !args.host_reference) {
            "guidance_head with Q/K bound to device memory, AMF on them"
        } else {
            "guidance_head, Q/K through the host"
        },
        "rows": rows,
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
