//! The shipped bundle through ONNX Runtime on CPU: tokenizer, RoPE tables and every graph
//! against reference values exported with the bundle from the PyTorch model; the bundle
//! checks; and the sampler's behaviour (pass counts, refusals, NaN handling, cancellation).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastvmt_kernels::Backend;
use fastvmt_plugin::model::{
    bundle::default_bundle_dir, dit::Latent, rope, tokenizer, Bundle, Device, DitModel, ModelError,
};
use fastvmt_plugin::sampler::{
    self,
    adamw::AdamW,
    guidance::AmfPrecision,
    latents::{Buf, Space},
    AmfConfig, GuidanceMode, GuidanceSettings, LatentRoute, PromptEmbeddings, SampleError,
    SampleSettings,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

fn bundle_dir() -> PathBuf {
    let dir = default_bundle_dir();
    assert!(
        dir.join("manifest.json").is_file(),
        "the shipped bundle is missing at {}",
        dir.display()
    );
    dir
}

fn model() -> Arc<DitModel> {
    DitModel::load(&bundle_dir(), Device::Cpu).expect("the shipped bundle loads on CPU")
}

struct Vectors {
    dir: PathBuf,
    index: Value,
}

impl Vectors {
    fn load() -> Self {
        let dir = bundle_dir().join("test_vectors");
        let index: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("index.json")).expect("test_vectors/index.json"),
        )
        .unwrap();
        Self { dir, index }
    }
    fn entry(&self, name: &str) -> &Value {
        let e = &self.index[name];
        if e.is_null() {
            let names: Vec<&String> = self
                .index
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            panic!("test vector '{name}' missing; have {names:?}");
        }
        e
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.entry(name)["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(self.entry(name)["file"].as_str().unwrap())).unwrap()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.bytes(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn i64(&self, name: &str) -> Vec<i64> {
        self.bytes(name)
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want
        .iter()
        .map(|v| v.abs() as f64)
        .fold(0.0, f64::max)
        .max(1e-6);
    got.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn rope_tables_match_the_exported_ones() {
    let v = Vectors::load();
    let m = Bundle::open(&bundle_dir()).unwrap().manifest;
    let x_shape = v.shape("x");
    let [pt, ph, pw] = m.patch_size;
    let (f, h, w) = (x_shape[2] / pt, x_shape[3] / ph, x_shape[4] / pw);
    let (cos, sin) = rope::tables(f, h, w, m.rope.axes_dim, m.rope.theta);
    assert!(max_rel_err(&cos, &v.f32("rope_cos")) < 1e-6);
    assert!(max_rel_err(&sin, &v.f32("rope_sin")) < 1e-6);
}

#[test]
fn tokenizer_matches_the_exported_ids() {
    let v = Vectors::load();
    let m = Bundle::open(&bundle_dir()).unwrap().manifest;
    let prompts: Vec<String> = v.index["tokens"]["prompts"]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert!(!prompts.is_empty(), "test vectors name their prompts");
    let ids = v.i64("tokens");
    for (i, p) in prompts.iter().enumerate() {
        let (got, _) = tokenizer::tokenize(&m.text, p);
        assert_eq!(
            got,
            ids[i * m.text.max_len..(i + 1) * m.text.max_len],
            "prompt {p:?}"
        );
    }
}

#[test]
fn every_graph_matches_the_pytorch_reference_values() {
    let v = Vectors::load();
    let model = model();
    let never = || false;
    let prompts: Vec<&str> = v.index["tokens"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let (text_emb, unknown) = model.encode_text(&prompts, &never).unwrap();
    let e = max_rel_err(&text_emb, &v.f32("text"));
    assert!(e < 1e-4, "text encoder rel err {e}");
    assert_eq!(
        unknown,
        vec!["unknown".to_string(), "thing".to_string()],
        "words outside the vocabulary are reported"
    );

    let x_shape = v.shape("x");
    let shape: [usize; 5] = x_shape.clone().try_into().unwrap();
    let (x, t, text) = (v.f32("x"), v.f32("t"), v.f32("text"));
    let rope = model.rope(shape[2], shape[3], shape[4]).unwrap();
    let latent = Latent { shape, data: &x };

    let vel = model.velocity(&latent, &t, &text, &rope, &never).unwrap();
    let e = max_rel_err(&vel, &v.f32("velocity"));
    assert!(e < 1e-4, "denoiser rel err {e}");

    let (q, k) = model
        .guidance_qk(&latent, &t, &text, &rope, &never)
        .unwrap();
    assert!(max_rel_err(&q, &v.f32("q")) < 1e-4 && max_rel_err(&k, &v.f32("k")) < 1e-4);

    let dx = model
        .guidance_grad(
            &latent,
            &t,
            &text,
            &rope,
            &v.f32("dq"),
            &v.f32("dk"),
            &never,
        )
        .unwrap();
    let e = max_rel_err(&dx, &v.f32("dx"));
    assert!(e < 1e-4, "guidance gradient rel err {e}");
}

fn copy_bundle(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(bundle_dir()).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn bad_bundles_are_refused_naming_the_file_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Bundle::open(&bundle_dir()).unwrap().manifest;
    let denoiser = base.files["denoiser"].path.clone();

    // Missing file.
    let d = tmp.path().join("missing");
    copy_bundle(&d);
    std::fs::remove_file(d.join(&denoiser)).unwrap();
    let e = Bundle::open(&d).unwrap_err().to_string();
    assert!(e.contains(&denoiser) && e.contains("missing"), "{e}");

    // Corrupt file (hash mismatch).
    let d = tmp.path().join("corrupt");
    copy_bundle(&d);
    let mut bytes = std::fs::read(d.join(&denoiser)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(d.join(&denoiser), bytes).unwrap();
    let e = Bundle::open(&d).unwrap_err().to_string();
    assert!(e.contains(&denoiser) && e.contains("hash mismatch"), "{e}");

    // A graph with the wrong inputs: the text encoder listed as the denoiser.
    let d = tmp.path().join("wrong-graph");
    copy_bundle(&d);
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    manifest["files"]["denoiser"] = manifest["files"]["text_encoder"].clone();
    manifest["files"]["denoiser"]["inputs"] = Value::Array(vec![]);
    std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
    let e = DitModel::load(&d, Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("input 'x' is missing"), "{e}");

    // Not a manifest at all.
    let d = tmp.path().join("garbage");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("manifest.json"), "{\"format\": 3").unwrap();
    let e = Bundle::open(&d).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("not a valid bundle manifest"),
        "{e}"
    );
}

fn settings(mode: GuidanceMode, steps: usize, inner: usize) -> SampleSettings {
    SampleSettings {
        seed: 1,
        steps,
        cfg: 4.0,
        denoise: 1.0,
        latents: Default::default(),
        guidance: GuidanceSettings {
            mode,
            fraction: 0.5,
            inner_steps: inner,
            reuse_interval: 3,
            cached_step_scale: fastvmt_plugin::sampler::CACHED_STEP_SCALE,
            lr: 0.015,
            lr_end_ratio: 0.7,
            weight_decay: 0.01,
            reference_noise_scale: 0.5,
            amf: AmfConfig {
                local: true,
                temporal_window: 0,
                spatial_radius: 2,
                coarse_tiles: false,
                tau: 2.0,
                precision: AmfPrecision::F32,
                backend: Backend::Cpu,
            },
            adaptive: fastvmt_plugin::sampler::ADAPTIVE_RULE,
            moving_threshold: None,
            fused_step: true,
            device_reference: true,
        },
    }
}

/// A small random reference clip `[1, 3, F, H, W]` at the model's patch multiple.
fn reference(model: &DitModel, frames: usize, patches: usize) -> ([usize; 5], Vec<f32>) {
    let m = model.manifest();
    let (h, w) = (m.patch_size[1] * patches, m.patch_size[2] * patches);
    let mut rng = StdRng::seed_from_u64(11);
    let data = (0..3 * frames * h * w)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    ([1, 3, frames, h, w], data)
}

fn run(
    model: &DitModel,
    reference: &([usize; 5], Vec<f32>),
    s: &SampleSettings,
) -> Result<sampler::SampleOutput, SampleError> {
    run_logged(model, reference, s, &mut Vec::new())
}

/// [`run`], collecting the progress messages in `log`.
fn run_logged(
    model: &DitModel,
    reference: &([usize; 5], Vec<f32>),
    s: &SampleSettings,
    log: &mut Vec<String>,
) -> Result<sampler::SampleOutput, SampleError> {
    let never = || false;
    let (emb, _) = model
        .encode_text(&["a red circle on a white background", ""], &never)
        .unwrap();
    let (p, n) = emb.split_at(emb.len() / 2);
    sampler::sample(
        model,
        (&reference.0, &reference.1),
        &PromptEmbeddings {
            positive: p,
            negative: n,
        },
        s,
        &mut |p| log.push(p.message.to_string()),
        &never,
    )
}

#[test]
fn guidance_modes_make_the_passes_their_schedules_promise() {
    let model = model();
    let r = reference(&model, 4, 4);
    // 4 steps, half guided = 2 guided steps, 4 inner steps each.
    let none = run(&model, &r, &settings(GuidanceMode::None, 4, 4)).unwrap();
    assert_eq!(
        (
            none.stats.real_forward,
            none.stats.real_backward,
            none.stats.denoiser_passes
        ),
        (0, 0, 4)
    );
    assert!(none.latent.iter().all(|v| v.is_finite()));

    let dit = run(&model, &r, &settings(GuidanceMode::DitFlow, 4, 4)).unwrap();
    // Per guided step: 1 reference pass + 4 real forward/backward.
    assert_eq!(
        (
            dit.stats.real_forward,
            dit.stats.real_backward,
            dit.stats.cached_steps
        ),
        (2 * 5, 2 * 4, 0)
    );

    let fast = run(&model, &r, &settings(GuidanceMode::FastVmt, 4, 4)).unwrap();
    // Real gradients on inner steps 0 and 3 only.
    assert_eq!(
        (
            fast.stats.real_forward,
            fast.stats.real_backward,
            fast.stats.cached_steps
        ),
        (2 * 3, 2 * 2, 2 * 2)
    );
    assert!(fast.stats.first_loss.is_some() && fast.stats.final_loss.unwrap().is_finite());

    // The default rule: the second guided step starts on the first's last real gradient
    // (inner step 3) and takes its own at inner step 3.
    let mut log = Vec::new();
    let adaptive = run_logged(
        &model,
        &r,
        &settings(GuidanceMode::Adaptive, 4, 4),
        &mut log,
    )
    .unwrap();
    let carried: Vec<&String> = log
        .iter()
        .filter(|m| m.contains("the previous step's last real gradient"))
        .collect();
    assert_eq!(
        carried.len(),
        3,
        "progress says which steps are carried: {log:?}"
    );
    assert!(
        carried[0].starts_with("guided step 2/2, inner 1/4"),
        "{log:?}"
    );
    let inner_steps = |reals: &[(usize, usize, f32)]| -> Vec<(usize, usize)> {
        reals.iter().map(|&(s, j, _)| (s, j)).collect()
    };
    assert_eq!(
        inner_steps(&adaptive.stats.real_losses),
        [(0, 0), (0, 3), (1, 3)]
    );
    assert_eq!(
        (
            adaptive.stats.real_forward,
            adaptive.stats.real_backward,
            adaptive.stats.cached_steps
        ),
        (2 + 3, 3, 5)
    );
    // The carried gradient moved the latent: without carrying, the second step's inner step
    // 0 is a real gradient and the result differs.
    let mut fresh = settings(GuidanceMode::Adaptive, 4, 4);
    fresh.guidance.adaptive.carry_over = false;
    let fresh = run(&model, &r, &fresh).unwrap();
    assert_eq!(
        inner_steps(&fresh.stats.real_losses),
        [(0, 0), (0, 3), (1, 0), (1, 3)]
    );
    assert_eq!(
        fresh.latent, fast.latent,
        "no carry, no loss trend: fastvmt"
    );
    assert!(adaptive
        .latent
        .iter()
        .zip(&fast.latent)
        .any(|(a, b)| (a - b).abs() > 1e-6));

    // Steps too short for a real gradient of their own (2 inner steps, interval 3) carry the
    // previous step's gradient, and the step after them starts on a fresh one: a gradient is
    // never carried twice.
    let short = run(&model, &r, &settings(GuidanceMode::Adaptive, 8, 2)).unwrap();
    assert_eq!(
        inner_steps(&short.stats.real_losses),
        [(0, 0), (2, 0)],
        "4 guided steps of 2 inner steps"
    );
    assert_eq!(short.stats.cached_steps, 6);

    // With the loss trend and 10 inner steps the interval can stretch: replay the rule on the
    // losses it recorded (the relative loss decrease per inner step since the previous real
    // gradient, carried across denoising steps, picks the next gap) and check the inner steps
    // it refreshed on.
    let trend = fastvmt_plugin::sampler::LOSS_TREND;
    let mut with_trend = settings(GuidanceMode::Adaptive, 4, 10);
    with_trend.guidance.adaptive.loss_trend = Some(trend);
    let adaptive = run(&model, &r, &with_trend).unwrap();
    let reals = &adaptive.stats.real_losses;
    assert_eq!(adaptive.stats.real_backward, reals.len());
    let mut rate: Option<f32> = None;
    for step in 0..2 {
        let got: Vec<(usize, f32)> = reals
            .iter()
            .filter(|(s, _, _)| *s == step)
            .map(|&(_, j, l)| (j, l))
            .collect();
        // Step 1 starts on step 0's last gradient.
        let first = if step == 0 { 0 } else { 3 };
        let (mut expected, mut next, mut previous) = (vec![], first, None::<(usize, f32)>);
        while next < 10 {
            expected.push(next);
            let loss = got
                .iter()
                .find(|(j, _)| *j == next)
                .unwrap_or_else(|| panic!("no real gradient at step {step}, inner {next}: {got:?}"))
                .1;
            if let Some((pj, before)) = previous {
                if before > 0.0 {
                    rate = Some((before - loss) / (before * (next - pj) as f32));
                }
            }
            previous = Some((next, loss));
            next += trend.gap(rate, 3);
        }
        let inner: Vec<usize> = got.iter().map(|(j, _)| *j).collect();
        assert_eq!(inner, expected, "guided step {step}: losses {got:?}");
        assert!(inner.len() <= 4, "never more than fastvmt's 4 of 10");
    }
    // Guidance changed the result.
    assert!(fast
        .latent
        .iter()
        .zip(&none.latent)
        .any(|(a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn adamw_matches_the_textbook_update() {
    // The optimiser on a host latent space (its step counter and bias corrections; the
    // update itself is `fastvmt_kernels::latent::adamw`, tested there).
    let model = model();
    let space = Space::host(&model);
    let mut rng = StdRng::seed_from_u64(7);
    let n = 33;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (mut m, mut v) = (vec![0f64; n], vec![0f64; n]);
    let mut opt = AdamW::new(&space, &[n], 0.01).unwrap();
    let host = |data: Vec<f32>| Buf::Host {
        shape: vec![n],
        data,
    };
    let mut xb = host(x.clone());
    for t in 1..=5 {
        let g: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        opt.step(&space, &mut xb, &host(g.clone()), 0.05).unwrap();
        for i in 0..n {
            let gi = g[i] as f64;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            let mh = m[i] / (1.0 - 0.9f64.powi(t));
            let vh = v[i] / (1.0 - 0.999f64.powi(t));
            x64[i] -= 0.05 * (mh / (vh.sqrt() + 1e-8) + 0.01 * x64[i]);
        }
    }
    let x = space.download(&xb).unwrap();
    for i in 0..n {
        assert!(
            (x[i] as f64 - x64[i]).abs() < 1e-4,
            "{i}: {} vs {}",
            x[i],
            x64[i]
        );
    }
}

/// The bound route (`LatentRoute::Bound`: latents, text, RoPE tables, reference, gradients and
/// optimiser moments as tensors bound to every run; on a CUDA model in device memory) gives
/// exactly what the host route gives. On a CPU model both run the same ONNX Runtime kernels
/// and the same `fastvmt_kernels::latent` updates on the same values, so latents, losses and
/// gradient cosines must be identical, through the one-run gradient graph and through the
/// two-graph route the bound space falls back to via the host.
#[test]
fn bound_latents_give_what_host_latents_give() {
    let model = model();
    let r = reference(&model, 4, 4);
    for (mode, fused) in [
        (GuidanceMode::None, true),
        (GuidanceMode::FastVmt, true),
        (GuidanceMode::Adaptive, false),
    ] {
        let mut s = settings(mode, 4, 4);
        s.guidance.fused_step = fused;
        s.latents = LatentRoute::Host;
        let host = run(&model, &r, &s).unwrap();
        s.latents = LatentRoute::Bound;
        let bound = run(&model, &r, &s).unwrap();
        let what = format!("{} (one-run gradients: {fused})", mode.name());
        assert!(
            !host.stats.bound_latents && bound.stats.bound_latents,
            "{what}"
        );
        assert_eq!(
            bound.stats.host_device_bytes, 0,
            "a CPU model copies nothing"
        );
        let counts = |o: &sampler::SampleOutput| {
            let st = &o.stats;
            (
                st.denoiser_passes,
                st.real_forward,
                st.real_backward,
                st.cached_steps,
            )
        };
        assert_eq!(counts(&bound), counts(&host), "{what}");
        assert_eq!(bound.stats.real_losses, host.stats.real_losses, "{what}");
        assert_eq!(
            bound.stats.gradient_cosines, host.stats.gradient_cosines,
            "{what}"
        );
        if mode != GuidanceMode::None {
            assert!(!host.stats.real_losses.is_empty() && !host.stats.gradient_cosines.is_empty());
        }
        assert!(bound.latent == host.latent, "{what}: latents differ");
    }
}

/// `cached_step_scale` 0 turns the cached inner steps into no-ops (no update, no Adam step), so
/// fastvmt's real gradients on inner steps 0 and 3 of 4 must give exactly what 2 inner steps
/// with a real gradient each give; at scale 1 the cached steps move the latent.
#[test]
fn cached_steps_at_scale_zero_are_no_ops() {
    let model = model();
    let r = reference(&model, 4, 4);
    let mut skipped = settings(GuidanceMode::FastVmt, 4, 4);
    skipped.guidance.cached_step_scale = 0.0;
    let mut two_real = settings(GuidanceMode::FastVmt, 4, 2);
    two_real.guidance.reuse_interval = 1;
    let a = run(&model, &r, &skipped).unwrap();
    let b = run(&model, &r, &two_real).unwrap();
    assert_eq!((a.stats.real_backward, a.stats.cached_steps), (4, 4));
    assert_eq!((b.stats.real_backward, b.stats.cached_steps), (4, 0));
    assert_eq!(
        a.stats.real_losses,
        b.stats
            .real_losses
            .iter()
            .map(|&(s, j, l)| (s, if j == 1 { 3 } else { j }, l))
            .collect::<Vec<_>>()
    );
    assert!(
        a.latent == b.latent,
        "scale 0 must leave only the real steps' updates"
    );
    let reused = run(&model, &r, &settings(GuidanceMode::FastVmt, 4, 4)).unwrap();
    assert!(
        reused
            .latent
            .iter()
            .zip(&a.latent)
            .any(|(x, y)| (x - y).abs() > 1e-5),
        "at scale 1 the cached steps change the result"
    );
}

#[test]
fn bad_inputs_are_refused_with_the_input_named() {
    let model = model();
    let one_frame = reference(&model, 1, 4);
    let e = run(&model, &one_frame, &settings(GuidanceMode::FastVmt, 2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("reference") && e.contains("at least 2"), "{e}");
    // Plain sampling of one frame is fine.
    run(&model, &one_frame, &settings(GuidanceMode::None, 2, 2)).unwrap();

    let m = model.manifest();
    let mut odd = reference(&model, 3, 4);
    odd.0[3] = m.patch_size[1] * 4 + 1;
    odd.1 = vec![0.1; odd.0.iter().product()];
    let e = run(&model, &odd, &settings(GuidanceMode::None, 2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("reference") && e.contains("multiples"), "{e}");

    let r = reference(&model, 3, 4);
    let e = run(&model, &r, &settings(GuidanceMode::None, 0, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("steps"), "{e}");
}

#[test]
fn a_runaway_learning_rate_stops_guidance_and_sampling_goes_on() {
    let model = model();
    let r = reference(&model, 3, 4);
    let mut s = settings(GuidanceMode::DitFlow, 2, 3);
    s.guidance.lr = 1e38;
    let out = run(&model, &r, &s).unwrap();
    let why = out.stats.stopped_on_nan.expect("guidance stopped");
    assert!(why.contains("non-finite"), "{why}");
    assert!(out.latent.iter().all(|v| v.is_finite()));
}

#[test]
fn a_bundle_without_guidance_graphs_samples_only_unguided() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("no-guidance");
    copy_bundle(&d);
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_object_mut().unwrap();
    files.remove("guidance_head");
    files.remove("guidance_grad");
    std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
    let model = DitModel::load(&d, Device::Cpu).unwrap();
    let r = reference(&model, 3, 4);
    let e = run(&model, &r, &settings(GuidanceMode::FastVmt, 2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("guidance_head") && e.contains("mode 'none'"),
        "{e}"
    );
    run(&model, &r, &settings(GuidanceMode::None, 2, 2)).unwrap();
}

#[test]
fn cancellation_stops_within_one_model_call() {
    let model = model();
    let r = reference(&model, 8, 8);
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        f2.store(true, Ordering::SeqCst);
        Instant::now()
    });
    let cancel = || flag.load(Ordering::SeqCst);
    let never = || false;
    let (emb, _) = model.encode_text(&["a blue square", ""], &never).unwrap();
    let (p, n) = emb.split_at(emb.len() / 2);
    let result = sampler::sample(
        &model,
        (&r.0, &r.1),
        &PromptEmbeddings {
            positive: p,
            negative: n,
        },
        &settings(GuidanceMode::DitFlow, 200, 10),
        &mut |_| {},
        &cancel,
    );
    let stopped = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert!(
        matches!(result, Err(SampleError::Model(ModelError::Cancelled))),
        "{:?}",
        result.err()
    );
    assert!(
        stopped.duration_since(cancelled_at) < Duration::from_secs(2),
        "took {:?} to stop",
        stopped.duration_since(cancelled_at)
    );
}
