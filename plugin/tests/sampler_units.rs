//! Sampler pieces checked against independent formulas (no model needed).

use fastvmt_plugin::sampler::{latent_to_video, schedule, video_to_latent};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[test]
fn sigmas_follow_the_shifted_schedule() {
    for shift in [1.0f32, 3.0, 7.0] {
        let s = schedule::sigmas(10, shift);
        assert_eq!(s.len(), 11);
        assert!((s[0] - 1.0).abs() < 1e-6 && s[10].abs() < 1e-6);
        for (i, v) in s.iter().enumerate() {
            let u = 1.0 - i as f64 / 10.0;
            let want = shift as f64 * u / (1.0 + (shift as f64 - 1.0) * u);
            assert!(
                (*v as f64 - want).abs() < 1e-6,
                "shift {shift} step {i}: {v} vs {want}"
            );
        }
        assert!(s.windows(2).all(|w| w[1] < w[0]), "strictly decreasing");
    }
}

#[test]
fn denoise_strength_picks_the_first_sigma_at_or_below_it() {
    let s = schedule::sigmas(20, 3.0);
    assert_eq!(schedule::start_index(&s, 1.0), 0);
    let i = schedule::start_index(&s, 0.6);
    assert!(s[i] <= 0.6 + 1e-6 && s[i - 1] > 0.6);
    // Even a tiny strength leaves one step to run.
    assert_eq!(schedule::start_index(&s, 0.0), 19);
}

#[test]
fn video_and_latent_layouts_round_trip() {
    let mut rng = StdRng::seed_from_u64(3);
    let (f, h, w) = (3, 5, 7);
    let video: Vec<f32> = (0..f * h * w * 3)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let latent = video_to_latent(f, h, w, &video);
    // [1, 3, F, H, W]: channel-major; spot-check one element against the definition.
    let (fi, y, x, c) = (2, 4, 6, 1);
    assert!(
        (latent[((c * f + fi) * h + y) * w + x]
            - (video[((fi * h + y) * w + x) * 3 + c] * 2.0 - 1.0))
            .abs()
            < 1e-6
    );
    let back = latent_to_video(f, h, w, &latent);
    for (a, b) in video.iter().zip(&back) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn out_of_memory_messages_are_recognised_and_named() {
    use fastvmt_plugin::sampler::{is_out_of_memory, SampleError};
    // The message the H100 run produced when the denoiser's arena could not grow.
    assert!(is_out_of_memory("/tmp/wanbench/wan13-dense/denoiser.onnx: Non-zero status code returned while running Add node. Name:'node_linear_14' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory for requested buffer of size 1174118400"));
    assert!(is_out_of_memory("CUDA failure 2: out of memory ; GPU=0"));
    assert!(is_out_of_memory("driver error: CUDA_ERROR_OUT_OF_MEMORY"));
    assert!(!is_out_of_memory("input 'x' has rank 4, expected 5"));
    assert!(!is_out_of_memory("cancelled"));
    let e = SampleError::OutOfMemory {
        device: "cuda",
        mode: "ditflow",
        shape: "1x16x21x60x104".into(),
        tokens: 32760,
        detail: "denoiser.onnx: Failed to allocate memory".into(),
    };
    let text = e.to_string();
    for part in [
        "cuda",
        "'ditflow'",
        "1x16x21x60x104",
        "32760 tokens",
        "denoiser.onnx",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
}
