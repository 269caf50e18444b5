//! The sampler's latent updates (src/latent): the CPU implementation against a float64
//! reference written here from the definition, typed errors for bad lengths, and the CUDA
//! kernels against the CPU bit for bit (skipped, saying why, without a CUDA driver unless
//! `FASTVMT_TEST_CUDA=1`). Fresh random inputs at odd sizes; the CUDA size spans many blocks.

mod common;

use std::sync::Arc;

use common::rand_vec;
use cudarc::driver::{CudaSlice, DevicePtr};
use fastvmt_kernels::latent::{cpu, cuda::CudaLatent, AdamWStep, VecStats};
use fastvmt_kernels::KernelError;

const SIZES: [usize; 4] = [1, 7, 1000, 65537];
const EPS: f64 = f32::EPSILON as f64;

/// Each `|got - want|` within `ulps` f32 epsilons of that element's magnitude: the sum of the
/// absolute values the expression combined, which is what its roundings scale with (a
/// cancelling sum keeps the errors of its terms).
fn assert_close(what: &str, got: &[f32], want: &[f64], magnitude: &[f64], ulps: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            g.is_finite() && err <= ulps * EPS * m,
            "{what}[{i}]: got {g}, f64 reference {w}, error {err:.2e} > {ulps} eps x {m:.3e}"
        );
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn lerp_matches_the_f64_reference() {
    for (k, n) in SIZES.into_iter().enumerate() {
        let seed = 10 * k as u64;
        let (a, b) = (rand_vec(n, seed, 2.0), rand_vec(n, seed + 1, 3.0));
        let t = rand_vec(1, seed + 2, 1.0)[0].abs();
        for (wa, wb) in [(1.0 - t, t), (0.3, 0.7), (-1.25, 2.5)] {
            let mut out = vec![f32::NAN; n];
            cpu::lerp(&mut out, &a, &b, wa, wb).unwrap();
            let (wa64, wb64) = (wa as f64, wb as f64);
            let want: Vec<f64> = (0..n)
                .map(|i| wa64 * a[i] as f64 + wb64 * b[i] as f64)
                .collect();
            let mag: Vec<f64> = (0..n)
                .map(|i| (wa64 * a[i] as f64).abs() + (wb64 * b[i] as f64).abs())
                .collect();
            assert_close(&format!("lerp n={n} w=({wa},{wb})"), &out, &want, &mag, 2.0);
        }
    }
}

#[test]
fn cfg_euler_matches_the_f64_reference() {
    for (k, n) in SIZES.into_iter().enumerate() {
        let seed = 100 + 10 * k as u64;
        let x0 = rand_vec(n, seed, 3.0);
        for cfg in [None, Some(5.0f32), Some(1.0), Some(0.0)] {
            let velocity = rand_vec(if cfg.is_some() { 2 * n } else { n }, seed + 1, 2.0);
            let dt = -0.0625f32 * (1.0 + k as f32 / 3.0);
            let mut x = x0.clone();
            cpu::cfg_euler(&mut x, &velocity, cfg, dt).unwrap();
            let dt64 = dt as f64;
            let (mut want, mut mag) = (vec![0f64; n], vec![0f64; n]);
            for i in 0..n {
                let (v, v_mag) = match cfg {
                    None => (velocity[i] as f64, (velocity[i] as f64).abs()),
                    Some(s) => {
                        let (c, u, s) = (velocity[i] as f64, velocity[n + i] as f64, s as f64);
                        (u + s * (c - u), u.abs() + s.abs() * (c.abs() + u.abs()))
                    }
                };
                want[i] = x0[i] as f64 + dt64 * v;
                mag[i] = (x0[i] as f64).abs() + dt64.abs() * v_mag;
            }
            assert_close(
                &format!("cfg_euler n={n} cfg={cfg:?}"),
                &x,
                &want,
                &mag,
                4.0,
            );
        }
    }
}

/// Step `t` (1-based) of the multi-step runs: lr varies, bias corrections as the sampler
/// computes them (f32, `powi`).
fn adamw_step(t: i32) -> AdamWStep {
    let (beta1, beta2) = (0.9f32, 0.999f32);
    AdamWStep {
        lr: [1e-2, 5e-3, 2e-2, 1e-3, 8e-3][(t as usize - 1) % 5],
        beta1,
        beta2,
        eps: 1e-8,
        weight_decay: 0.01,
        bias_correction1: 1.0 - beta1.powi(t),
        bias_correction2: 1.0 - beta2.powi(t),
    }
}

/// torch's AdamW as the definition states it, in f64, with the magnitudes its f32 roundings
/// scale with (see `assert_close`).
#[derive(Clone)]
struct AdamW64 {
    x: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    x_mag: Vec<f64>,
    m_mag: Vec<f64>,
}

impl AdamW64 {
    fn new(x: &[f32]) -> Self {
        let n = x.len();
        AdamW64 {
            x: widen(x),
            m: vec![0.0; n],
            v: vec![0.0; n],
            x_mag: x.iter().map(|v| v.abs() as f64).collect(),
            m_mag: vec![0.0; n],
        }
    }

    fn step(&mut self, grad: &[f32], s: &AdamWStep) {
        let (b1, b2) = (s.beta1 as f64, s.beta2 as f64);
        let (bc1, bc2) = (s.bias_correction1 as f64, s.bias_correction2 as f64);
        let (lr, eps, wd) = (s.lr as f64, s.eps as f64, s.weight_decay as f64);
        for (i, &g) in grad.iter().enumerate() {
            let g = g as f64;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.m_mag[i] = b1 * self.m_mag[i] + (1.0 - b1) * g.abs();
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let denom = (self.v[i] / bc2).sqrt() + eps;
            let update = (self.m[i] / bc1) / denom;
            let update_mag = (self.m_mag[i] / bc1) / denom;
            self.x_mag[i] += lr * (update_mag + wd * self.x_mag[i]);
            self.x[i] -= lr * (update + wd * self.x[i]);
        }
    }
}

#[test]
fn adamw_multi_step_matches_the_f64_reference() {
    const STEPS: i32 = 5;
    // Roundings per step (a few each), accumulated over the steps.
    let ulps = 4.0 * STEPS as f64;
    for (k, n) in SIZES.into_iter().enumerate() {
        let seed = 200 + 10 * k as u64;
        let mut x = rand_vec(n, seed, 1.5);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut reference = AdamW64::new(&x);
        for t in 1..=STEPS {
            let grad = rand_vec(n, seed + t as u64, 1.0);
            let step = adamw_step(t);
            cpu::adamw(&mut x, &grad, &mut m, &mut v, &step).unwrap();
            reference.step(&grad, &step);
        }
        let what = format!("adamw n={n} after {STEPS} steps");
        assert_close(
            &format!("{what}: x"),
            &x,
            &reference.x,
            &reference.x_mag,
            ulps,
        );
        assert_close(
            &format!("{what}: m"),
            &m,
            &reference.m,
            &reference.m_mag,
            ulps,
        );
        // v sums non-negative terms: relative.
        assert_close(&format!("{what}: v"), &v, &reference.v, &reference.v, ulps);
    }
}

fn stats_reference(a: &[f32], b: Option<&[f32]>) -> VecStats {
    let mut s = VecStats {
        nonfinite: a.iter().filter(|v| v.is_nan() || v.is_infinite()).count() as u64,
        ..VecStats::default()
    };
    for (i, &ai) in a.iter().enumerate() {
        let ai = ai as f64;
        s.norm_a2 += ai * ai;
        if let Some(b) = b {
            let bi = b[i] as f64;
            s.dot += ai * bi;
            s.norm_b2 += bi * bi;
        }
    }
    s
}

/// Sums equal within `rel` (the dot relative to `sqrt(norm_a2 * norm_b2)`, the scale of a
/// cosine's numerator), counts exactly.
fn assert_stats_close(what: &str, got: VecStats, want: VecStats, rel: f64) {
    assert_eq!(got.nonfinite, want.nonfinite, "{what}: nonfinite");
    let close = |g: f64, w: f64, scale: f64| (g - w).abs() <= rel * scale.max(f64::MIN_POSITIVE);
    let dot_scale = (want.norm_a2 * want.norm_b2).sqrt();
    assert!(
        close(got.norm_a2, want.norm_a2, want.norm_a2)
            && close(got.norm_b2, want.norm_b2, want.norm_b2)
            && close(got.dot, want.dot, dot_scale),
        "{what}: got {got:?}, want {want:?}"
    );
}

#[test]
fn stats_match_the_f64_reference() {
    for (k, n) in SIZES.into_iter().enumerate() {
        let seed = 300 + 10 * k as u64;
        let (a, b) = (rand_vec(n, seed, 2.0), rand_vec(n, seed + 1, 0.5));
        let got = cpu::stats(&a, Some(&b)).unwrap();
        assert_stats_close(
            &format!("stats n={n}"),
            got,
            stats_reference(&a, Some(&b)),
            1e-12,
        );
        let alone = cpu::stats(&a, None).unwrap();
        assert_eq!((alone.dot, alone.norm_b2), (0.0, 0.0), "no b: n={n}");
        assert_stats_close(&format!("stats n={n}, no b"), alone, without_b(got), 0.0);
    }
    assert_eq!(cpu::stats(&[], None).unwrap(), VecStats::default());
}

fn without_b(s: VecStats) -> VecStats {
    VecStats {
        dot: 0.0,
        norm_b2: 0.0,
        ..s
    }
}

#[test]
fn stats_count_nan_and_infinities_at_known_indices() {
    let mut a = rand_vec(1000, 400, 1.0);
    let b = rand_vec(1000, 401, 1.0);
    a[0] = f32::NAN;
    a[500] = f32::INFINITY;
    a[999] = f32::NEG_INFINITY;
    let s = cpu::stats(&a, Some(&b)).unwrap();
    assert_eq!(s.nonfinite, 3);
    // Non-finite values enter the sums as they are.
    assert!(
        s.norm_a2.is_nan() && s.dot.is_nan() && s.norm_b2.is_finite(),
        "{s:?}"
    );
    // Infinities alone: the squared norm is +inf, and b's values are never counted.
    a[0] = 0.25;
    let mut b_bad = b.clone();
    b_bad[7] = f32::NAN;
    let s = cpu::stats(&a, Some(&b_bad)).unwrap();
    assert_eq!(s.nonfinite, 2);
    assert_eq!(s.norm_a2, f64::INFINITY);
}

fn assert_shape_error(got: Result<impl std::fmt::Debug, KernelError>, tensor: &str) {
    match got {
        Err(KernelError::ShapeMismatch { tensor: t, .. }) if t == tensor => {}
        other => panic!("expected ShapeMismatch naming `{tensor}`, got {other:?}"),
    }
}

#[test]
fn length_mismatches_are_typed_errors_naming_the_argument() {
    let (four, three) = (vec![1.0f32; 4], vec![1.0f32; 3]);
    let mut out = vec![0f32; 4];
    assert_shape_error(cpu::lerp(&mut out, &three, &four, 0.5, 0.5), "a");
    assert_shape_error(cpu::lerp(&mut out, &four, &three, 0.5, 0.5), "b");
    // The first argument (`out`, `x`, `a`) sets the length the others must have.
    assert_shape_error(cpu::lerp(&mut out[..3], &four, &four, 0.5, 0.5), "a");
    let mut x = vec![0f32; 4];
    assert_shape_error(cpu::cfg_euler(&mut x, &three, None, 0.1), "velocity");
    // Guidance needs [cond; uncond]: 2n values, n is not enough.
    assert_shape_error(cpu::cfg_euler(&mut x, &four, Some(5.0), 0.1), "velocity");
    match cpu::cfg_euler(&mut x, &[1.0; 7], Some(5.0), 0.1) {
        Err(KernelError::ShapeMismatch {
            tensor: "velocity",
            expected: 8,
            actual: 7,
        }) => {}
        other => panic!("cfg velocity of 7 for n = 4: {other:?}"),
    }
    let step = adamw_step(1);
    let (mut m, mut v) = (vec![0f32; 4], vec![0f32; 4]);
    assert_shape_error(cpu::adamw(&mut x, &three, &mut m, &mut v, &step), "grad");
    assert_shape_error(cpu::adamw(&mut x, &four, &mut m[..3], &mut v, &step), "m");
    assert_shape_error(cpu::adamw(&mut x, &four, &mut m, &mut v[..3], &step), "v");
    assert_shape_error(cpu::stats(&four, Some(&three)), "b");
    // Nothing was written by the failed calls.
    assert!(x.iter().chain(&m).chain(&v).all(|&e| e == 0.0));
}

// ---- CUDA -------------------------------------------------------------------------------------

/// Elements of the CUDA comparisons: odd, and many grid-stride blocks.
const CUDA_N: usize = 3_000_001;

fn cuda_required() -> bool {
    std::env::var("FASTVMT_TEST_CUDA").is_ok_and(|v| v == "1")
}

/// The device state, or `None` after printing why the test is skipped; with
/// `FASTVMT_TEST_CUDA=1` an unavailable device fails the test instead.
fn cuda_or_skip(test: &str) -> Option<Arc<CudaLatent>> {
    match CudaLatent::get(0) {
        Ok(dev) => Some(dev),
        Err(KernelError::CudaUnavailable(why)) => {
            assert!(!cuda_required(), "FASTVMT_TEST_CUDA=1 but {why}");
            println!("SKIPPED {test}: CUDA unavailable: {why}");
            None
        }
        Err(e) => panic!("CUDA present but the latent module failed to build: {e}"),
    }
}

fn upload(dev: &CudaLatent, v: &[f32]) -> CudaSlice<f32> {
    dev.stream().clone_htod(v).unwrap()
}

fn ptr(dev: &CudaLatent, buf: &CudaSlice<f32>) -> u64 {
    buf.device_ptr(dev.stream()).0
}

fn download(dev: &CudaLatent, buf: &CudaSlice<f32>) -> Vec<f32> {
    dev.stream().clone_dtoh(buf).unwrap()
}

/// Bit-for-bit equality, reporting the first differing element.
fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}[{i}]: CUDA {} != CPU {}", got[i], want[i]);
    }
}

#[test]
fn cuda_lerp_and_cfg_euler_are_bit_identical_to_cpu() {
    let Some(dev) = cuda_or_skip("cuda_lerp_and_cfg_euler_are_bit_identical_to_cpu") else {
        return;
    };
    for n in [1, 1000, CUDA_N] {
        let (a, b) = (rand_vec(n, 500, 2.0), rand_vec(n, 501, 3.0));
        let (ad, bd) = (upload(&dev, &a), upload(&dev, &b));
        for (wa, wb) in [(0.3f32, 0.7f32), (-1.25, 2.5)] {
            let mut want = vec![0f32; n];
            cpu::lerp(&mut want, &a, &b, wa, wb).unwrap();
            let out = upload(&dev, &vec![f32::NAN; n]);
            // SAFETY: n f32 each on device 0.
            unsafe { dev.lerp_raw(ptr(&dev, &out), ptr(&dev, &ad), ptr(&dev, &bd), n, wa, wb) }
                .unwrap();
            assert_bits_equal(&format!("lerp n={n}"), &download(&dev, &out), &want);
        }
        // In place (out = a), as the sampler mixes noise into a latent.
        let in_place = upload(&dev, &a);
        let p = ptr(&dev, &in_place);
        // SAFETY: as above; out aliases a exactly, which lerp_raw allows.
        unsafe { dev.lerp_raw(p, p, ptr(&dev, &bd), n, 0.25, 0.75) }.unwrap();
        let mut want = vec![0f32; n];
        cpu::lerp(&mut want, &a, &b, 0.25, 0.75).unwrap();
        assert_bits_equal(
            &format!("lerp in place n={n}"),
            &download(&dev, &in_place),
            &want,
        );

        for cfg in [None, Some(5.0f32)] {
            let x0 = rand_vec(n, 502, 3.0);
            let velocity = rand_vec(if cfg.is_some() { 2 * n } else { n }, 503, 2.0);
            let dt = -0.037f32;
            let mut want = x0.clone();
            cpu::cfg_euler(&mut want, &velocity, cfg, dt).unwrap();
            let (xd, vd) = (upload(&dev, &x0), upload(&dev, &velocity));
            // SAFETY: x: n f32, velocity: n or 2n f32 on device 0.
            unsafe { dev.cfg_euler_raw(ptr(&dev, &xd), ptr(&dev, &vd), n, cfg, dt) }.unwrap();
            assert_bits_equal(
                &format!("cfg_euler n={n} cfg={cfg:?}"),
                &download(&dev, &xd),
                &want,
            );
        }
    }
}

#[test]
fn cuda_adamw_steps_are_bit_identical_to_cpu() {
    let Some(dev) = cuda_or_skip("cuda_adamw_steps_are_bit_identical_to_cpu") else {
        return;
    };
    let n = CUDA_N;
    let mut x = rand_vec(n, 600, 1.5);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let (xd, md, vd) = (upload(&dev, &x), upload(&dev, &m), upload(&dev, &v));
    for t in 1..=5 {
        let grad = rand_vec(n, 600 + t as u64, 1.0);
        let step = adamw_step(t);
        cpu::adamw(&mut x, &grad, &mut m, &mut v, &step).unwrap();
        let gd = upload(&dev, &grad);
        // SAFETY: n f32 each on device 0, distinct buffers.
        unsafe {
            dev.adamw_raw(
                ptr(&dev, &xd),
                ptr(&dev, &gd),
                ptr(&dev, &md),
                ptr(&dev, &vd),
                n,
                &step,
            )
        }
        .unwrap();
        assert_bits_equal(&format!("adamw step {t}: x"), &download(&dev, &xd), &x);
        assert_bits_equal(&format!("adamw step {t}: m"), &download(&dev, &md), &m);
        assert_bits_equal(&format!("adamw step {t}: v"), &download(&dev, &vd), &v);
    }
}

#[test]
fn cuda_stats_match_cpu() {
    let Some(dev) = cuda_or_skip("cuda_stats_match_cpu") else {
        return;
    };
    for n in [1, 1000, CUDA_N] {
        let (mut a, b) = (rand_vec(n, 700, 2.0), rand_vec(n, 701, 0.5));
        let (ad, bd) = (upload(&dev, &a), upload(&dev, &b));
        // SAFETY: n f32 each on device 0.
        let got = unsafe { dev.stats_raw(ptr(&dev, &ad), Some(ptr(&dev, &bd)), n) }.unwrap();
        let want = cpu::stats(&a, Some(&b)).unwrap();
        assert_stats_close(&format!("CUDA stats n={n}"), got, want, 1e-9);
        // SAFETY: as above.
        let alone = unsafe { dev.stats_raw(ptr(&dev, &ad), None, n) }.unwrap();
        assert_stats_close(
            &format!("CUDA stats n={n}, no b"),
            alone,
            without_b(want),
            1e-9,
        );

        // Counts of non-finite values at known indices (the accumulator is reset per call).
        let marks = [
            (0, f32::NAN),
            (n / 2, f32::INFINITY),
            (n - 1, f32::NEG_INFINITY),
        ];
        for &(i, value) in &marks {
            a[i] = value;
        }
        let bad = upload(&dev, &a);
        // SAFETY: as above.
        let s = unsafe { dev.stats_raw(ptr(&dev, &bad), None, n) }.unwrap();
        let distinct = if n == 1 { 1 } else { 3 };
        assert_eq!(s.nonfinite, distinct, "CUDA nonfinite n={n}");
        assert_eq!(cpu::stats(&a, None).unwrap().nonfinite, distinct);
    }
}

#[test]
fn cuda_copy_upload_download_roundtrip() {
    let Some(dev) = cuda_or_skip("cuda_copy_upload_download_roundtrip") else {
        return;
    };
    let n = CUDA_N;
    let values = rand_vec(n, 800, 4.0);
    let (src, dst) = (upload(&dev, &vec![0f32; n]), upload(&dev, &vec![0f32; n]));
    let mut back = vec![0f32; n];
    // SAFETY: n f32 each on device 0; `back` holds n.
    unsafe {
        dev.upload_raw(ptr(&dev, &src), &values).unwrap();
        dev.copy_raw(ptr(&dev, &dst), ptr(&dev, &src), n).unwrap();
        dev.download_raw(ptr(&dev, &dst), &mut back).unwrap();
    }
    assert_bits_equal("roundtrip", &back, &values);
    // fill: every value set (the buffer held random values before).
    // SAFETY: as above.
    unsafe {
        dev.fill_raw(ptr(&dev, &dst), n, 0.0).unwrap();
        dev.download_raw(ptr(&dev, &dst), &mut back).unwrap();
    }
    assert!(back.iter().all(|v| v.to_bits() == 0), "fill left values");
    dev.synchronize().unwrap();
    // n == 0 is a no-op even with null pointers; a null pointer with n > 0 is a typed error.
    // SAFETY: nothing is dereferenced.
    unsafe {
        dev.copy_raw(0, 0, 0).unwrap();
        dev.lerp_raw(0, 0, 0, 0, 1.0, 0.0).unwrap();
        assert_eq!(dev.stats_raw(0, None, 0).unwrap(), VecStats::default());
        assert!(matches!(
            dev.copy_raw(ptr(&dev, &dst), 0, 4),
            Err(KernelError::InvalidParameter { name: "src", .. })
        ));
    }
}

#[test]
fn nvrtc_compiles_the_latent_kernels() {
    for arch in ["compute_80", "compute_90"] {
        match fastvmt_kernels::latent::cuda::compile(arch) {
            Ok(_) => println!("latent.cu compiled for {arch}"),
            Err(KernelError::CudaUnavailable(r)) => {
                assert!(!cuda_required(), "FASTVMT_TEST_CUDA=1 but {r}");
                println!("SKIPPED nvrtc_compiles_the_latent_kernels: {r}");
                return;
            }
            Err(e) => panic!("NVRTC rejected latent.cu for {arch}: {e}"),
        }
    }
}
