//! CUDA back end vs the CPU back end. Skips (passing, with the reason printed) where no CUDA
//! driver is present. Outputs and scratch buffers are NaN-poisoned before every run.

mod common;

use common::*;
use fastvmt_kernels::cuda::CudaAmf;
use fastvmt_kernels::*;
use half::{bf16, f16};

fn cuda() -> Option<Backend> {
    match Backend::cuda_available() {
        Ok(()) => {
            let dev = CudaAmf::get(0).expect("CUDA present but the module failed to build");
            println!("CUDA device: {}", dev.device_name());
            dev.set_poison(true);
            Some(Backend::Cuda { device: 0 })
        }
        Err(reason) => {
            println!("SKIPPED: CUDA unavailable: {reason}");
            None
        }
    }
}

fn gpu_cases() -> Vec<AmfSpec> {
    let mut v = cases();
    v.push(spec(
        2,
        4,
        13,
        19,
        40,
        PairSet::Forward { span: 4 },
        local(4),
    ));
    v.push(spec(2, 3, 13, 19, 40, PairSet::AllOrdered, coarse(3, 3, 4)));
    v.push(spec(3, 3, 9, 10, 33, PairSet::AllOrdered, KeyWindow::Full));
    // head_dim % 64 == 0: f16/bf16 take the tensor-core kernels.
    v.push(spec(
        2,
        4,
        11,
        13,
        64,
        PairSet::Forward { span: 4 },
        local(3),
    ));
    v.push(spec(1, 3, 9, 7, 64, PairSet::AllOrdered, coarse(2, 3, 4)));
    v.push(spec(2, 3, 6, 5, 128, PairSet::AllOrdered, KeyWindow::Full));
    v.push(spec(
        12,
        3,
        30,
        52,
        128,
        PairSet::Forward { span: 4 },
        coarse(10, 3, 4),
    ));
    // Several tall (16- and 32-row) gradient tiles, the last ones partial in both directions.
    v.push(spec(
        1,
        5,
        37,
        21,
        64,
        PairSet::Forward { span: 4 },
        local(5),
    ));
    // With a reference that moves only in a small block (SPARSE_CASE): most rows fall outside
    // the motion mask, so the gradient kernels leave most tiles and groups out.
    v.push(spec(
        2,
        5,
        24,
        33,
        64,
        PairSet::Forward { span: 4 },
        local(5),
    ));
    v
}

/// Index in `gpu_cases` of the case whose reference moves only inside a 6x7 block.
const SPARSE_CASE: usize = 18;

struct Report {
    worst: [f64; 5],
}

/// Compare one dtype on one case; returns rel errors (soft disp, argmax mismatch fraction,
/// loss, dq, dk) of CUDA vs CPU on the same inputs.
fn compare<T: Element>(
    gpu: &Backend,
    s: &AmfSpec,
    q: &[T],
    k: &[T],
    reference: &AmfField,
) -> [f64; 5] {
    let cpu = Backend::Cpu;
    let sc = compute_amf(&cpu, q, k, s, Readout::SoftArgmax).unwrap();
    let sg = compute_amf(gpu, q, k, s, Readout::SoftArgmax).unwrap();
    let ac = compute_amf(&cpu, q, k, s, Readout::Argmax).unwrap();
    let ag = compute_amf(gpu, q, k, s, Readout::Argmax).unwrap();
    assert_eq!(sg.pairs, sc.pairs);
    let mism =
        ac.disp.iter().zip(&ag.disp).filter(|(a, b)| a != b).count() as f64 / ac.disp.len() as f64;
    let ls = LossSpec {
        pair_weights: PairWeights::LinearDecay {
            first: 1.0,
            last: 0.8,
        },
        moving_threshold: Some(0.5),
    };
    let gc = amf_loss_and_grad(&cpu, q, k, s, reference, &ls).unwrap();
    let gg = amf_loss_and_grad(gpu, q, k, s, reference, &ls).unwrap();
    assert_eq!(gc.kept, gg.kept);
    [
        rel_err32(&sg.disp, &sc.disp),
        mism,
        ((gg.loss - gc.loss) / gc.loss).abs() as f64,
        rel_err32(&gg.dq, &gc.dq),
        rel_err32(&gg.dk, &gc.dk),
    ]
}

#[test]
fn cuda_matches_cpu() {
    let Some(gpu) = cuda() else { return };
    let mut rep = Report { worst: [0.0; 5] };
    // Every case runs; failures are collected and reported together at the end.
    let mut failures: Vec<String> = Vec::new();
    // Under compute-sanitizer: only the small cases (the big one is slow there).
    let small = std::env::var("FASTVMT_CUDA_TEST_SMALL").is_ok();
    // FASTVMT_CUDA_TEST_CASE=<index>: only that case (e.g. the big one under the sanitizer).
    let only: Option<usize> = std::env::var("FASTVMT_CUDA_TEST_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let all = gpu_cases();
    assert_eq!((all[SPARSE_CASE].grid_h, all[SPARSE_CASE].grid_w), (24, 33));
    for (n, s) in all.iter().enumerate() {
        if small && s.grid_h * s.grid_w * s.heads > 1000 && only.is_none() {
            continue;
        }
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
        let q = rand_vec(len, 1000 + n as u64, 1.5);
        let k = rand_vec(len, 2000 + n as u64, 1.5);
        let np = resolve_pairs(&s.pairs, s.frames).unwrap().len();
        let mut disp = rand_vec(np * s.grid_h * s.grid_w * 2, 3000 + n as u64, 2.0);
        if n == SPARSE_CASE {
            // Still (below the 0.5-token mask) outside rows 9..15, columns 20..27.
            for (i, d) in disp.chunks_mut(2).enumerate() {
                let t = i % (s.grid_h * s.grid_w);
                let (y, x) = (t / s.grid_w, t % s.grid_w);
                if !((9..15).contains(&y) && (20..27).contains(&x)) {
                    d[0] *= 0.1;
                    d[1] *= 0.1;
                }
            }
        }
        let reference = AmfField {
            pairs: resolve_pairs(&s.pairs, s.frames).unwrap(),
            grid_h: s.grid_h,
            grid_w: s.grid_w,
            disp,
        };
        // Multi-chunk path (accumulating gradients) on every other case.
        // (FASTVMT_CUDA_TEST_FLIP_CHUNK: the other one, to run one case both ways.)
        if (n % 2 == 1) != std::env::var_os("FASTVMT_CUDA_TEST_FLIP_CHUNK").is_some() {
            std::env::set_var("FASTVMT_AMF_CHUNK_BYTES", "1");
        }
        let e32 = compare(&gpu, s, &q, &k, &reference);
        let qh: Vec<f16> = q.iter().map(|&v| f16::from_f32(v)).collect();
        let kh: Vec<f16> = k.iter().map(|&v| f16::from_f32(v)).collect();
        let qb: Vec<bf16> = q.iter().map(|&v| bf16::from_f32(v)).collect();
        let kb: Vec<bf16> = k.iter().map(|&v| bf16::from_f32(v)).collect();
        let e16 = compare(&gpu, s, &qh, &kh, &reference);
        let eb = compare(&gpu, s, &qb, &kb, &reference);
        // Half inputs on CUDA against the f32 CPU computation on the unrounded inputs.
        let cpu32 = compute_amf(&Backend::Cpu, &q, &k, s, Readout::SoftArgmax).unwrap();
        let gb = compute_amf(&gpu, &qb, &kb, s, Readout::SoftArgmax).unwrap();
        let half_vs_f32 = rel_err32(&gb.disp, &cpu32.disp);
        std::env::remove_var("FASTVMT_AMF_CHUNK_BYTES");
        println!(
            "{}\n  f32 {:?}\n  f16 {:?}\n  bf16 {:?}\n  bf16-cuda vs f32-cpu disp {half_vs_f32:.1e}",
            window_name(s),
            e32.map(|v| format!("{v:.1e}")),
            e16.map(|v| format!("{v:.1e}")),
            eb.map(|v| format!("{v:.1e}"))
        );
        // Tensor-core path (half inputs, head_dim % 64 == 0): the backward's score matrix is
        // rounded to the 16-bit input type, so the gradients are checked at 1e-2.
        let tc = s.head_dim % 64 == 0;
        for (e, half) in [(&e32, false), (&e16, true), (&eb, true)] {
            for (a, b) in rep.worst.iter_mut().zip(e) {
                *a = a.max(*b);
            }
            let gtol = if half && tc { 1e-2 } else { 1e-5 };
            // `below` is false for NaN, so NaN fails.
            let below = |x: f64, tol: f64| x < tol;
            if !(below(e[0], 1e-5) && below(e[2], 1e-5)) {
                failures.push(format!("{} disp/loss: {e:?}", window_name(s)));
            }
            if !(below(e[3], gtol) && below(e[4], gtol)) {
                failures.push(format!("{} dq/dk: {e:?}", window_name(s)));
            }
            if !below(e[1], 1e-3) {
                failures.push(format!(
                    "{} argmax mismatch fraction {}",
                    window_name(s),
                    e[1]
                ));
            }
        }
        if half_vs_f32.is_nan() || half_vs_f32 >= 1e-2 {
            failures.push(format!("{} bf16 vs f32 disp {half_vs_f32}", window_name(s)));
        }
    }
    println!(
        "worst CUDA vs CPU: disp {:.1e}, argmax mismatch {:.1e}, loss {:.1e}, dq {:.1e}, dk {:.1e}",
        rep.worst[0], rep.worst[1], rep.worst[2], rep.worst[3], rep.worst[4]
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn cuda_errors_are_typed() {
    let Some(gpu) = cuda() else { return };
    let s = spec(2, 3, 4, 5, 3, PairSet::AllOrdered, local(1));
    let n = 2 * 3 * 20 * 3;
    let (q, k) = (rand_vec(n, 1, 1.0), rand_vec(n, 2, 1.0));
    assert!(matches!(
        compute_amf(&gpu, &q[1..], &k, &s, Readout::SoftArgmax).unwrap_err(),
        KernelError::ShapeMismatch { .. }
    ));
    assert!(matches!(
        compute_amf(
            &Backend::Cuda { device: 99 },
            &q,
            &k,
            &s,
            Readout::SoftArgmax
        )
        .unwrap_err(),
        KernelError::CudaUnavailable(_)
    ));
}

/// The kernel source compiles with NVRTC (needs only libnvrtc, no GPU), for Ampere, for
/// Hopper's generic target and for its architecture-specific one, where the wgmma kernels have
/// bodies.
#[test]
fn nvrtc_compiles_the_kernels() {
    for arch in ["compute_80", "compute_90", "compute_90a"] {
        match fastvmt_kernels::cuda::compile(arch) {
            Ok(ptx) => {
                let src = ptx.to_src();
                // Every kernel the back end loads (a missing one would fail its set-up on a GPU).
                for name in fastvmt_kernels::cuda::kernel_names() {
                    assert!(
                        src.contains(&format!(".entry {name}(")),
                        "{name} missing from the {arch} PTX"
                    );
                }
                let wgmma = src.matches("wgmma.mma_async").count();
                // The wgmma of the gradient and logits kernels (inlined per k-step).
                assert_eq!(wgmma > 0, arch == "compute_90a", "{arch}: {wgmma} wgmma");
                println!("NVRTC {arch}: {} bytes of PTX, {wgmma} wgmma", src.len());
                if let Ok(path) = std::env::var("FASTVMT_PTX_OUT") {
                    std::fs::write(format!("{path}.{arch}"), &src).unwrap();
                }
            }
            Err(KernelError::CudaUnavailable(r)) => {
                println!("SKIPPED: {r}");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
}

/// The raw-pointer entry (ONNX Runtime's buffers in the `AmfLossGrad` CUDA operator) against
/// the host entry, on buffers this test owns.
#[test]
fn raw_pointer_entry_matches_the_host_entry() {
    use cudarc::driver::DevicePtr;
    let Some(gpu) = cuda() else { return };
    let dev = CudaAmf::get(0).unwrap();
    let s = spec(2, 4, 11, 13, 64, PairSet::Forward { span: 3 }, local(3));
    let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
    let q: Vec<bf16> = rand_vec(len, 71, 1.5)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let k: Vec<bf16> = rand_vec(len, 72, 1.5)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let pairs = resolve_pairs(&s.pairs, s.frames).unwrap();
    let reference = AmfField {
        disp: rand_vec(pairs.len() * s.grid_h * s.grid_w * 2, 73, 2.0),
        pairs,
        grid_h: s.grid_h,
        grid_w: s.grid_w,
    };
    let loss = LossSpec::fastvmt();
    let want = amf_loss_and_grad(&gpu, &q, &k, &s, &reference, &loss).unwrap();
    let (qd, kd) = (dev.to_device(&q).unwrap(), dev.to_device(&k).unwrap());
    let (dqd, dkd) = (dev.zeros(len).unwrap(), dev.zeros(len).unwrap());
    let stream = dev.stream();
    let (qp, _a) = qd.device_ptr(stream);
    let (kp, _b) = kd.device_ptr(stream);
    let (dqp, _c) = dqd.device_ptr(stream);
    let (dkp, _d) = dkd.device_ptr(stream);
    // SAFETY: four live allocations of `len` elements on device 0; no producer stream.
    let (got, kept) = unsafe {
        dev.loss_and_grad_raw::<bf16>(
            &s,
            qp,
            kp,
            len,
            &reference,
            &loss,
            dqp,
            dkp,
            0,
            std::ptr::null_mut(),
        )
    }
    .unwrap();
    drop((_a, _b, _c, _d));
    assert_eq!(kept, want.kept);
    assert!((got - want.loss).abs() <= 1e-5 * want.loss.abs().max(1e-6));
    let (dq, dk) = (dev.to_host(&dqd).unwrap(), dev.to_host(&dkd).unwrap());
    assert!(rel_err32(&dq, &want.dq) < 1e-5 && rel_err32(&dk, &want.dk) < 1e-5);
}

/// The f32 raw-pointer forward (the guidance head's Q/K in ONNX Runtime's device memory,
/// converted on the device) against the host entry fed the same values rounded on the host:
/// identical fields, for each dtype, local and dense; a NaN is refused with its tensor and index.
#[test]
fn raw_f32_forward_matches_the_host_entry() {
    use cudarc::driver::DevicePtr;
    let Some(gpu) = cuda() else { return };
    let dev = CudaAmf::get(0).unwrap();
    fn round<T: Element>(v: &[f32]) -> Vec<T> {
        v.iter().map(|&x| T::from_f32(x)).collect()
    }
    fn raw<T: Element>(
        dev: &CudaAmf,
        s: &AmfSpec,
        q: &[f32],
        k: &[f32],
    ) -> Result<AmfField, KernelError> {
        let (qd, kd) = (dev.to_device(q).unwrap(), dev.to_device(k).unwrap());
        dev.synchronize().unwrap();
        let stream = dev.stream();
        let (qp, _a) = qd.device_ptr(stream);
        let (kp, _b) = kd.device_ptr(stream);
        // SAFETY: two live f32 allocations of q.len() values on device 0, written above.
        unsafe { dev.compute_amf_raw::<T>(s, qp, kp, q.len(), Readout::Argmax) }
    }
    for (i, s) in [
        spec(2, 4, 11, 13, 64, PairSet::Forward { span: 3 }, local(3)),
        spec(2, 3, 6, 5, 128, PairSet::AllOrdered, KeyWindow::Full),
    ]
    .iter()
    .enumerate()
    {
        let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
        let q = rand_vec(len, 81 + i as u64, 1.5);
        let k = rand_vec(len, 91 + i as u64, 1.5);
        let want = compute_amf(&gpu, &q, &k, s, Readout::Argmax).unwrap();
        assert_eq!(
            raw::<f32>(&dev, s, &q, &k).unwrap().disp,
            want.disp,
            "f32, case {i}"
        );
        let want = compute_amf(
            &gpu,
            &round::<f16>(&q),
            &round::<f16>(&k),
            s,
            Readout::Argmax,
        )
        .unwrap();
        assert_eq!(
            raw::<f16>(&dev, s, &q, &k).unwrap().disp,
            want.disp,
            "f16, case {i}"
        );
        let want = compute_amf(
            &gpu,
            &round::<bf16>(&q),
            &round::<bf16>(&k),
            s,
            Readout::Argmax,
        )
        .unwrap();
        let got = raw::<bf16>(&dev, s, &q, &k).unwrap();
        assert_eq!(got.disp, want.disp, "bf16, case {i}");
        assert_eq!(got.pairs, want.pairs);
        let mut bad = k.clone();
        bad[len / 3] = f32::NAN;
        match raw::<bf16>(&dev, s, &q, &bad) {
            Err(KernelError::NonFinite { tensor: "k", index }) => assert_eq!(index, len / 3),
            other => panic!("a NaN in k gave {other:?}"),
        }
    }
}

/// The reference field kept in device memory: `compute_amf_raw_into` writes the same field the
/// host entry returns, and `loss_and_grad_raw_device_reference` (loss plan built on the device)
/// gives the host-reference entry's loss, kept count and gradients, with DiTFlow's motion mask
/// (part of the field masked) and without; a wrong length and a NaN in the field are refused.
#[test]
fn device_reference_matches_the_host_reference() {
    use cudarc::driver::DevicePtr;
    let Some(_gpu) = cuda() else { return };
    let dev = CudaAmf::get(0).unwrap();
    let s = spec(2, 4, 11, 13, 64, PairSet::Forward { span: 3 }, local(3));
    let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
    let stream = dev.stream();
    // The reference field: the AMF of another random Q/K (displacements of whole tokens, so
    // the 0.5-token mask keeps some entries and drops others).
    let (rq, rk) = (rand_vec(len, 111, 1.5), rand_vec(len, 112, 1.5));
    let (rqd, rkd) = (dev.to_device(&rq).unwrap(), dev.to_device(&rk).unwrap());
    dev.synchronize().unwrap();
    let (rqp, _a) = rqd.device_ptr(stream);
    let (rkp, _b) = rkd.device_ptr(stream);
    // SAFETY: two live f32 allocations of `len` values on device 0, written above.
    let host_field =
        unsafe { dev.compute_amf_raw::<bf16>(&s, rqp, rkp, len, Readout::Argmax) }.unwrap();
    let n_field = host_field.disp.len();
    let field_d = dev.zeros(n_field).unwrap();
    let (fp, _c) = field_d.device_ptr(stream);
    // SAFETY: as above; `field_d` holds the field's length.
    let pairs = unsafe {
        dev.compute_amf_raw_into::<bf16>(&s, rqp, rkp, len, Readout::Argmax, fp, n_field)
    }
    .unwrap();
    assert_eq!(pairs, host_field.pairs);
    assert_eq!(
        dev.to_host(&field_d).unwrap(),
        host_field.disp,
        "field on the device"
    );
    let moving = host_field
        .disp
        .chunks(2)
        .filter(|d| d[0].hypot(d[1]) > 0.5)
        .count();
    assert!(
        moving > 0 && moving < n_field / 2,
        "the mask must keep some, drop some"
    );

    let q: Vec<bf16> = rand_vec(len, 113, 1.5)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let k: Vec<bf16> = rand_vec(len, 114, 1.5)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let (qd, kd) = (dev.to_device(&q).unwrap(), dev.to_device(&k).unwrap());
    let (qp, _d) = qd.device_ptr(stream);
    let (kp, _e) = kd.device_ptr(stream);
    for threshold in [None, Some(0.5f32)] {
        let loss = LossSpec {
            pair_weights: PairWeights::LinearDecay {
                first: 1.0,
                last: 0.8,
            },
            moving_threshold: threshold,
        };
        let grads = || (dev.zeros(len).unwrap(), dev.zeros(len).unwrap());
        let ((dq1, dk1), (dq2, dk2)) = (grads(), grads());
        let (dq1p, _f) = dq1.device_ptr(stream);
        let (dk1p, _g) = dk1.device_ptr(stream);
        let (dq2p, _h) = dq2.device_ptr(stream);
        let (dk2p, _i) = dk2.device_ptr(stream);
        // SAFETY: live allocations of `len` (and the field's) elements on device 0.
        let (want, want_kept) = unsafe {
            dev.loss_and_grad_raw::<bf16>(
                &s,
                qp,
                kp,
                len,
                &host_field,
                &loss,
                dq1p,
                dk1p,
                0,
                std::ptr::null_mut(),
            )
        }
        .unwrap();
        let (got, kept) = unsafe {
            dev.loss_and_grad_raw_device_reference::<bf16>(
                &s,
                qp,
                kp,
                len,
                fp,
                n_field,
                &loss,
                dq2p,
                dk2p,
                0,
                std::ptr::null_mut(),
            )
        }
        .unwrap();
        assert_eq!(kept, want_kept, "threshold {threshold:?}");
        assert_eq!(
            kept,
            if threshold.is_some() {
                moving
            } else {
                n_field / 2
            }
        );
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-6),
            "loss {got} vs {want}"
        );
        let (a, b) = (dev.to_host(&dq2).unwrap(), dev.to_host(&dq1).unwrap());
        let (c, d) = (dev.to_host(&dk2).unwrap(), dev.to_host(&dk1).unwrap());
        assert!(rel_err32(&a, &b) < 1e-6 && rel_err32(&c, &d) < 1e-6);
    }
    // Refusals: a field of the wrong length, a NaN in the field.
    let loss = LossSpec::fastvmt();
    let (dq, dk) = (dev.zeros(len).unwrap(), dev.zeros(len).unwrap());
    let (dqp, _j) = dq.device_ptr(stream);
    let (dkp, _k) = dk.device_ptr(stream);
    let call = |field: u64, n: usize| unsafe {
        // SAFETY: live allocations of at least these lengths on device 0.
        dev.loss_and_grad_raw_device_reference::<bf16>(
            &s,
            qp,
            kp,
            len,
            field,
            n,
            &loss,
            dqp,
            dkp,
            0,
            std::ptr::null_mut(),
        )
    };
    assert!(matches!(
        call(fp, n_field - 2),
        Err(KernelError::ReferenceMismatch(_))
    ));
    let mut bad = host_field.disp.clone();
    bad[7] = f32::NAN;
    let bad_d = dev.to_device(&bad).unwrap();
    dev.synchronize().unwrap();
    let (bp, _l) = bad_d.device_ptr(stream);
    match call(bp, n_field) {
        Err(KernelError::NonFinite {
            tensor: "reference.disp",
            index,
        }) => assert_eq!(index, 7),
        other => panic!("a NaN in the field gave {other:?}"),
    }
}
