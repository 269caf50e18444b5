//! Shared by the bench's integration tests: the tiny Wan fixture and its PyTorch vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan-tiny")
}

/// The tiny Wan's forward graphs with the fp32 norm/modulation as `fastvmt.norm` nodes
/// (`make_wan_tiny_fixture.py --fused-modulation`); its vectors are the unfused model's.
pub fn fused_modulation_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan-tiny-fm")
}

pub fn vector(name: &str) -> (Vec<usize>, Vec<f32>) {
    vector_in(&fixture(), name)
}

pub fn vector_in(bundle: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let dir = bundle.join("vectors");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let shape: Vec<usize> = index[name]
        .as_array()
        .unwrap_or_else(|| panic!("no vector {name}"))
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{name}");
    (shape, data)
}

/// A fixture's test inputs: the latent (shape and values), t, the text states and the RoPE
/// tables of the latent's token grid.
pub struct Inputs {
    pub shape: [usize; 5],
    pub x: Vec<f32>,
    pub t: Vec<f32>,
    pub text: Vec<f32>,
    pub rope: fastvmt_plugin::model::dit::Rope,
}

impl Inputs {
    pub fn load(model: &fastvmt_plugin::model::DitModel, bundle: &Path) -> Inputs {
        let (xs, x) = vector_in(bundle, "x");
        let shape = [xs[0], xs[1], xs[2], xs[3], xs[4]];
        Inputs {
            shape,
            x,
            t: vector_in(bundle, "t").1,
            text: vector_in(bundle, "text").1,
            rope: model.rope(xs[2], xs[3], xs[4]).unwrap(),
        }
    }

    pub fn latent(&self) -> fastvmt_plugin::model::dit::Latent<'_> {
        fastvmt_plugin::model::dit::Latent {
            shape: self.shape,
            data: &self.x,
        }
    }

    /// The forward graphs' outputs: velocity, and Q/K of the motion block.
    pub fn forward(
        &self,
        model: &fastvmt_plugin::model::DitModel,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let never = || false;
        let v = model
            .velocity(&self.latent(), &self.t, &self.text, &self.rope, &never)
            .unwrap();
        let (q, k) = model
            .guidance_qk(&self.latent(), &self.t, &self.text, &self.rope, &never)
            .unwrap();
        (v, q, k)
    }
}

pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// One real gradient of the fixture both ways on `model`: the two-graph route (guidance head,
/// the kernels' AMF on `backend`, guidance grad) and the `guidance_step` graph. The reference
/// is the AMF of another latent (the vectors' x in reverse order). Returns
/// `(two-graph loss, guidance_step loss, dx relative difference, the step's inputs)`.
pub fn compare_routes(
    model: &fastvmt_plugin::model::DitModel,
    backend: fastvmt_kernels::Backend,
) -> (f32, f32, f64, StepInputs) {
    use fastvmt_kernels::{
        amf_loss_and_grad, compute_amf, Backend, LossSpec, PairWeights, Readout,
    };
    use fastvmt_plugin::model::dit::Latent;
    use fastvmt_plugin::runtime::amf_ops::OpConfig;
    let never = || false;
    let Inputs {
        shape,
        x,
        t,
        text,
        rope,
    } = Inputs::load(model, &fixture());
    let (_, h, w) = rope.grid;
    let spec = fixture_spec(model, &rope);
    let loss_spec = LossSpec {
        pair_weights: PairWeights::LinearDecay {
            first: 1.0,
            last: 0.8,
        },
        moving_threshold: None,
    };
    let config = OpConfig {
        tau: 2.0,
        span: 3,
        radius: 1,
        coarse_tiles: false,
        weight_first: 1.0,
        weight_last: 0.8,
        moving_threshold: None,
        cuda_device: match backend {
            Backend::Cpu => None,
            Backend::Cuda { device } => Some(device),
        },
    };
    let other: Vec<f32> = x.iter().rev().copied().collect();
    let (rq, rk) = model
        .guidance_qk(
            &Latent {
                shape,
                data: &other,
            },
            &t,
            &text,
            &rope,
            &never,
        )
        .unwrap();
    let reference = compute_amf(&backend, &rq, &rk, &spec, Readout::Argmax).unwrap();
    let latent = Latent { shape, data: &x };
    let (q, k) = model
        .guidance_qk(&latent, &t, &text, &rope, &never)
        .unwrap();
    let lg = amf_loss_and_grad(&backend, &q, &k, &spec, &reference, &loss_spec).unwrap();
    let dx_two = model
        .guidance_grad(&latent, &t, &text, &rope, &lg.dq, &lg.dk, &never)
        .unwrap();
    let (loss, dx_one) = model
        .guidance_step(&latent, &t, &text, &rope, &reference.disp, &config, &never)
        .unwrap();
    let inputs = StepInputs {
        x,
        t,
        text,
        shape,
        reference: reference.disp,
        pair_len: 2 * h * w,
        config,
    };
    (lg.loss, loss, rel_err(&dx_one, &dx_two), inputs)
}

/// The AMF of the fixture's checks: forward pairs within 3 frames, a radius-1 key window.
fn fixture_spec(
    model: &fastvmt_plugin::model::DitModel,
    rope: &fastvmt_plugin::model::dit::Rope,
) -> fastvmt_kernels::AmfSpec {
    use fastvmt_kernels::{AmfSpec, KeyWindow, PairSet, WindowCentre};
    let (f, h, w) = rope.grid;
    let m = model.manifest();
    AmfSpec {
        heads: m.heads,
        frames: f,
        grid_h: h,
        grid_w: w,
        head_dim: m.head_dim,
        tau: 2.0,
        pairs: PairSet::Forward { span: 3 },
        window: KeyWindow::Local {
            radius: 1,
            centre: WindowCentre::Query,
        },
    }
}

/// The reference AMF from the guidance head's Q/K left on the device
/// (`with_guidance_qk_on_device`, the kernels' f32 raw entry) against the same through the
/// host (`guidance_qk`, then `compute_amf` on the CUDA back end): the fraction of displacement
/// values that differ (argmax read-out of the same f32 kernels: 0 unless ONNX Runtime's two
/// runs differ).
pub fn device_reference_mismatch(model: &fastvmt_plugin::model::DitModel) -> f64 {
    use fastvmt_kernels::{compute_amf, cuda::CudaAmf, Backend, Readout};
    let never = || false;
    let inputs = Inputs::load(model, &fixture());
    let (t, text, rope) = (&inputs.t, &inputs.text, &inputs.rope);
    let spec = fixture_spec(model, rope);
    let latent = inputs.latent();
    let (q, k) = model.guidance_qk(&latent, t, text, rope, &never).unwrap();
    let want = compute_amf(&Backend::Cuda { device: 0 }, &q, &k, &spec, Readout::Argmax).unwrap();
    let amf = CudaAmf::get(0).unwrap();
    let got = model
        .with_guidance_qk_on_device(&latent, t, text, rope, &never, |qp, kp, len| {
            assert_eq!(len, q.len());
            // SAFETY: the model lends two synchronised f32 device buffers of `len` values.
            unsafe { amf.compute_amf_raw::<f32>(&spec, qp, kp, len, Readout::Argmax) }
        })
        .unwrap()
        .unwrap();
    assert_eq!(got.pairs, want.pairs);
    let differ = got
        .disp
        .iter()
        .zip(&want.disp)
        .filter(|(a, b)| a != b)
        .count();
    differ as f64 / want.disp.len() as f64
}

/// What [`compare_routes`] fed `guidance_step`, for further calls.
pub struct StepInputs {
    pub x: Vec<f32>,
    pub t: Vec<f32>,
    pub text: Vec<f32>,
    pub shape: [usize; 5],
    pub reference: Vec<f32>,
    /// Values of one frame pair in `reference`.
    pub pair_len: usize,
    pub config: fastvmt_plugin::runtime::amf_ops::OpConfig,
}

/// The GPU-host check shared by the AMF operator's CUDA-session tests: loads the fixture on
/// CUDA (or skips, saying why; `FASTVMT_TEST_CUDA=1` makes that a failure), then compares the
/// `guidance_step` route with the two-graph route. `route` names the route in the messages.
pub fn check_cuda_session_route(test: &str, route: &str) {
    use fastvmt_kernels::Backend;
    use fastvmt_plugin::model::{Device, DitModel};
    let required = std::env::var("FASTVMT_TEST_CUDA").is_ok_and(|v| v == "1");
    let model = match Backend::cuda_available()
        .map_err(|why| format!("no CUDA driver/NVRTC: {why}"))
        .and_then(|()| DitModel::load(&fixture(), Device::Cuda).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(why) => {
            assert!(!required, "FASTVMT_TEST_CUDA=1 but {why}");
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    let (want, loss, dx_err, _) = compare_routes(&model, Backend::Cuda { device: 0 });
    let loss_err = ((loss - want) / want).abs();
    println!("{route} vs two graphs: loss {loss} vs {want} ({loss_err:.1e}), dx {dx_err:.1e}");
    assert!(want > 0.0);
    assert!(loss_err < 1e-3, "loss {loss} vs {want}");
    assert!(dx_err < 5e-3, "dx relative error {dx_err:.3e}");
    let mismatch = device_reference_mismatch(&model);
    println!("reference AMF on the device vs through the host: {mismatch:.2e} of values differ");
    assert!(
        mismatch < 1e-3,
        "reference fields differ in {mismatch:.2e} of values"
    );
    fused_modulation_matches_pytorch(Device::Cuda);
    // The device-resident loop against the host loop: the same ONNX Runtime kernels and
    // bit-exact latent updates, so only ONNX Runtime's own run-to-run differences remain.
    let (host, bound) = sample_both_routes(&model, Backend::Cuda { device: 0 });
    let err = rel_err(&bound.latent, &host.latent);
    let (hb, bb) = (host.stats.host_device_bytes, bound.stats.host_device_bytes);
    println!(
        "bound vs host latents: relative difference {err:.2e}; copied {:.2} MB vs {:.2} MB; losses {:?} vs {:?}",
        bb as f64 / 1e6,
        hb as f64 / 1e6,
        bound.stats.real_losses,
        host.stats.real_losses
    );
    assert!(
        err < 1e-4,
        "bound latents differ from the host route's: {err:.3e}"
    );
    assert!(
        bb * 2 < hb,
        "the bound loop copied {bb} bytes, the host loop {hb}"
    );
    // What the bound loop may copy: the job's start (latent, reference, its noise, three text
    // embeddings, two RoPE tables) and end (the latent), plus bytes per run (its time value,
    // each real gradient's loss). Nothing latent-, Q/K- or field-sized inside the loop.
    let inputs = Inputs::load(&model, &fixture());
    let n = inputs.x.len();
    let once = 4 * (4 * n + 4 * inputs.text.len() + inputs.rope.cos.len() + inputs.rope.sin.len());
    let in_loop = bb as i64 - once as i64;
    println!("bound loop: {once} bytes at start and end, {in_loop} inside the loop");
    // With the AMF operator's CPU variant (`FASTVMT_AMF_OP=cpu`) the reference field goes to
    // the host once per guided step, by design of that variant.
    if fastvmt_plugin::runtime::amf_ops::cuda_variant_enabled() {
        assert!(
            (0..1024).contains(&in_loop),
            "the bound loop copied {in_loop} bytes inside the loop"
        );
    }
}

/// The fused-modulation fixture's forward graphs on `device` (CPU or CUDA variants of the
/// `fastvmt.norm` operators) against the unfused PyTorch model's vectors.
pub fn fused_modulation_matches_pytorch(device: fastvmt_plugin::model::Device) {
    use fastvmt_plugin::model::DitModel;
    let dir = fused_modulation_fixture();
    let model = DitModel::load(&dir, device).expect("the fused-modulation fixture loads");
    let (v, q, k) = Inputs::load(&model, &dir).forward(&model);
    for (name, got) in [("velocity", &v), ("q", &q), ("k", &k)] {
        let err = rel_err(got, &vector_in(&dir, name).1);
        println!("fused modulation on {device:?}, {name}: relative error {err:.2e}");
        // fp16 activations; the unfused bundle measured 7e-4 to 8e-4 against the same model
        assert!(err < 5e-3, "{name}: relative error {err:.3e} vs PyTorch");
    }
}

/// A `fastvmt` job on the fixture with its latents on the host and bound to the sessions'
/// memory (`LatentRoute`): returns `(host, bound)`. Reference: the vectors' latent; prompts:
/// the vectors' text states and the same reversed; 3 steps, 2 guided with 4 inner steps
/// (real gradients on inner steps 0 and 3) through the `guidance_step` graph.
pub fn sample_both_routes(
    model: &fastvmt_plugin::model::DitModel,
    backend: fastvmt_kernels::Backend,
) -> (
    fastvmt_plugin::sampler::SampleOutput,
    fastvmt_plugin::sampler::SampleOutput,
) {
    use fastvmt_plugin::sampler::{
        guidance::AmfPrecision, sample, AmfConfig, GuidanceMode, GuidanceSettings, LatentRoute,
        PromptEmbeddings, SampleSettings,
    };
    let never = || false;
    let inputs = Inputs::load(model, &fixture());
    let negative: Vec<f32> = inputs.text.iter().rev().copied().collect();
    let mut settings = SampleSettings {
        seed: 3,
        steps: 3,
        cfg: 5.0,
        denoise: 1.0,
        latents: LatentRoute::Host,
        guidance: GuidanceSettings {
            mode: GuidanceMode::FastVmt,
            fraction: 0.67,
            inner_steps: 4,
            reuse_interval: 3,
            cached_step_scale: fastvmt_plugin::sampler::CACHED_STEP_SCALE,
            lr: 0.015,
            lr_end_ratio: 0.7,
            weight_decay: 0.01,
            reference_noise_scale: 0.5,
            amf: AmfConfig {
                local: true,
                temporal_window: 3,
                spatial_radius: 1,
                coarse_tiles: false,
                tau: 2.0,
                precision: AmfPrecision::F32,
                backend,
            },
            adaptive: fastvmt_plugin::sampler::ADAPTIVE_RULE,
            moving_threshold: None,
            fused_step: true,
            device_reference: true,
        },
    };
    let mut job = |route| {
        settings.latents = route;
        sample(
            model,
            (&inputs.shape, &inputs.x),
            &PromptEmbeddings {
                positive: &inputs.text,
                negative: &negative,
            },
            &settings,
            &mut |_| {},
            &never,
        )
        .expect("the fixture samples")
    };
    let host = job(LatentRoute::Host);
    let bound = job(LatentRoute::Bound);
    assert!(!host.stats.bound_latents && bound.stats.bound_latents);
    let counts = |o: &fastvmt_plugin::sampler::SampleOutput| {
        let st = &o.stats;
        (
            st.denoiser_passes,
            st.real_forward,
            st.real_backward,
            st.cached_steps,
        )
    };
    assert_eq!(counts(&host), (3, 2 * 3, 2 * 2, 2 * 2));
    assert_eq!(counts(&bound), counts(&host));
    (host, bound)
}
