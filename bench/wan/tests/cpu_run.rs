//! The benchmark's Wan route at test size, on CPU: the tiny Wan bundle exported exactly as the
//! benchmark exports Wan2.1-1.3B (fp16 weights, local-window custom attention, random text
//! encoder, 'vae' latent; `onnx/scripts/make_wan_tiny_fixture.py`) matches the PyTorch model
//! it came from, and the benchmark binary runs every mode with the schedule's pass counts.

mod common;

use common::{compare_routes, fixture, rel_err, vector, Inputs};
use fastvmt_plugin::model::{Device, DitModel};
use serde_json::Value;

#[test]
fn tiny_wan_bundle_matches_pytorch_on_cpu() {
    let model = DitModel::load(&fixture(), Device::Cpu).expect("the fixture bundle loads");
    let m = model.manifest();
    assert!(!m.is_pixel_space(), "a Wan bundle's latent is a VAE latent");
    let never = || false;
    let inputs = Inputs::load(&model, &fixture());
    let (v, q, k) = inputs.forward(&model);
    let (latent, t, text, rope) = (inputs.latent(), &inputs.t, &inputs.text, &inputs.rope);
    let (_, dq) = vector("dq");
    let (_, dk) = vector("dk");
    let dx = model
        .guidance_grad(&latent, t, text, rope, &dq, &dk, &never)
        .unwrap();
    // The IoBinding route (on CUDA: the reference AMF's Q/K left on the device) gives the
    // same values as the plain run; on CPU the pointers lent are host memory.
    let (bq, bk) = model
        .with_guidance_qk_on_device(&latent, t, text, rope, &never, |qp, kp, len| {
            // SAFETY: two live f32 host buffers of `len` values, lent for this call.
            let read =
                |p: u64| unsafe { std::slice::from_raw_parts(p as *const f32, len) }.to_vec();
            (read(qp), read(kp))
        })
        .unwrap();
    assert_eq!(
        (bq, bk),
        (q.clone(), k.clone()),
        "bound outputs differ from a plain run"
    );
    // fp16 weights and activations on both sides, different kernels: measured 7e-4 to 8e-4.
    for (name, got) in [("velocity", &v), ("q", &q), ("k", &k), ("dx", &dx)] {
        let err = rel_err(got, &vector(name).1);
        eprintln!("{name}: relative error {err:.2e}");
        assert!(err < 5e-3, "{name}: relative error {err:.3e} vs PyTorch");
    }
}

/// The latents bound to the sessions' memory (on CPU: host tensors through the route CUDA
/// models take with device memory) give exactly what the host loop gives.
#[test]
fn bound_latents_match_the_host_loop_on_cpu() {
    let model = DitModel::load(&fixture(), Device::Cpu).expect("the fixture bundle loads");
    let (host, bound) = common::sample_both_routes(&model, fastvmt_kernels::Backend::Cpu);
    assert_eq!(bound.stats.real_losses, host.stats.real_losses);
    assert_eq!(bound.stats.gradient_cosines, host.stats.gradient_cosines);
    assert!(
        bound.latent == host.latent,
        "bound latents differ from the host loop's"
    );
}

/// The forward graphs with Wan's fp32 norm/modulation islands and gated residuals as
/// `fastvmt.norm` nodes (the plugin's operators) against the unfused PyTorch model.
#[test]
fn fused_modulation_bundle_matches_pytorch_on_cpu() {
    common::fused_modulation_matches_pytorch(Device::Cpu);
}

#[test]
fn guidance_step_matches_the_two_graph_route() {
    use fastvmt_plugin::model::dit::Latent;
    let model = DitModel::load(&fixture(), Device::Cpu).expect("the fixture bundle loads");
    assert!(model.has_guidance_step());
    let (want, loss, dx_err, s) = compare_routes(&model, fastvmt_kernels::Backend::Cpu);
    assert!(want > 0.0, "a reference that differs gives a positive loss");
    let loss_err = ((loss - want) / want).abs();
    eprintln!(
        "guidance_step vs two graphs: loss {loss} vs {want} ({loss_err:.1e}), dx {dx_err:.1e}"
    );
    assert!(loss_err < 1e-4, "loss {loss} vs {want}");
    // Both are fp16 graphs that recompute the forward with their own node order: measured
    // 1.2e-3, the size of either graph's difference from PyTorch (7e-4 to 8e-4).
    assert!(dx_err < 5e-3, "dx relative error {dx_err:.3e}");
    // A reference with a pair missing is refused by the operator, naming it.
    let rope = model.rope(s.shape[2], s.shape[3], s.shape[4]).unwrap();
    let short = &s.reference[..s.reference.len() - s.pair_len];
    let latent = Latent {
        shape: s.shape,
        data: &s.x,
    };
    let err = model
        .guidance_step(&latent, &s.t, &s.text, &rope, short, &s.config, &|| false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AmfLossGrad") && err.contains("reference"),
        "{err}"
    );
}

fn run_bench(extra: &[&str]) -> Value {
    // One file per call: the tests run in parallel threads of one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "fastvmt-wan-bench-{}-{call}.json",
        std::process::id()
    ));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fastvmt-wan-bench"))
        .args(["--bundle", fixture().to_str().unwrap(), "--device", "cpu"])
        .args([
            "--frames", "4", "--height", "8", "--width", "10", "--steps", "5",
        ])
        .args([
            "--radius",
            "2",
            "--temporal-window",
            "3",
            "--amf-precision",
            "f32",
        ])
        .args(["--modes", "none,ditflow,fastvmt,adaptive", "--out"])
        .arg(&out)
        .args(extra)
        .status()
        .expect("the bench binary starts");
    assert!(status.success());
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    doc
}

#[test]
fn both_gradient_routes_give_the_same_run() {
    let one = run_bench(&[]);
    let two = run_bench(&["--two-graph"]);
    assert_eq!(one["gradient_route"], "guidance_step");
    assert_eq!(two["gradient_route"], "guidance_head + guidance_grad");
    let (a_rows, b_rows) = (
        one["rows"].as_array().unwrap(),
        two["rows"].as_array().unwrap(),
    );
    assert_eq!(a_rows.len(), 4);
    for (a, b) in a_rows.iter().zip(b_rows) {
        assert_eq!(a["mode"], b["mode"]);
        for key in [
            "denoiser_passes",
            "real_forward",
            "real_backward",
            "cached_steps",
        ] {
            assert_eq!(a[key], b[key], "{} {key}", a["mode"]);
        }
        if let (Some(x), Some(y)) = (a["final_loss"].as_f64(), b["final_loss"].as_f64()) {
            assert!(
                (x - y).abs() <= 1e-3 * y.abs().max(1e-6),
                "{}: final loss {x} vs {y}",
                a["mode"]
            );
        }
    }
}

#[test]
fn bench_binary_runs_every_mode_with_the_schedule_pass_counts() {
    let doc = run_bench(&[]);

    let row = |mode: &str| {
        doc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mode"] == mode)
            .unwrap_or_else(|| panic!("no row {mode}"))
            .clone()
    };
    let counts = |mode: &str| {
        let r = row(mode);
        assert!(r["nonfinite"].is_null(), "{mode}: {}", r["nonfinite"]);
        assert!(r["wall_s"].as_f64().unwrap() > 0.0);
        [
            "denoiser_passes",
            "real_forward",
            "real_backward",
            "cached_steps",
        ]
        .map(|k| r[k].as_u64().unwrap())
    };
    // 5 steps, 20 % guided = 1 guided step of 10 inner steps; each guided step adds one
    // reference-AMF forward.
    assert_eq!(counts("none"), [5, 0, 0, 0]);
    assert_eq!(counts("ditflow"), [5, 11, 10, 0]);
    assert_eq!(counts("fastvmt"), [5, 5, 4, 6]);
    let adaptive = counts("adaptive");
    assert!(
        adaptive[2] <= 4 && adaptive[2] >= 1,
        "adaptive: {adaptive:?}"
    );
    assert_eq!(adaptive[2] as usize + adaptive[3] as usize, 10);
    assert_eq!(doc["tokens"], 80);
    assert_eq!(doc["window"], serde_json::json!([1, 1]));
}
