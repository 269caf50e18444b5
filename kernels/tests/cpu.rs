//! CPU back end vs the independent float64 reference (tests/common).

mod common;

use common::*;
use fastvmt_kernels::*;
use half::{bf16, f16};

#[test]
fn forward_matches_f64_reference() {
    for (n, s) in cases().iter().enumerate() {
        let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
        let q = rand_vec(len, 100 + n as u64, 1.5);
        let k = rand_vec(len, 200 + n as u64, 1.5);
        let r = Ref::new(s, &q, &k);
        let wins = r.windows();
        for (readout, argmax) in [(Readout::SoftArgmax, false), (Readout::Argmax, true)] {
            let got = compute_amf(&Backend::Cpu, &q, &k, s, readout).unwrap();
            assert_eq!(got.pairs, r.pairs());
            let want = r.amf_with(&r.q, &r.k, &wins, argmax);
            let e = rel_err(&got.disp, &want);
            let maxabs = got
                .disp
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            println!(
                "{} {readout:?}: rel {e:.2e} max abs {maxabs:.2e}",
                window_name(s)
            );
            // Argmax displacements are integers: any difference is a wrong key.
            assert!(
                maxabs <= 2e-5,
                "{} {readout:?}: max abs err {maxabs}",
                window_name(s)
            );
        }
    }
}

#[test]
fn loss_and_grad_match_f64_reference() {
    for (n, s) in cases().iter().enumerate() {
        let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
        let q = rand_vec(len, 300 + n as u64, 1.5);
        let k = rand_vec(len, 400 + n as u64, 1.5);
        let r = Ref::new(s, &q, &k);
        let wins = r.windows();
        let np = r.pairs().len();
        let reference = AmfField {
            pairs: r.pairs(),
            grid_h: s.grid_h,
            grid_w: s.grid_w,
            disp: rand_vec(np * s.grid_h * s.grid_w * 2, 500 + n as u64, 2.0),
        };
        let losses = [
            LossSpec {
                pair_weights: PairWeights::Uniform,
                moving_threshold: None,
            },
            LossSpec::fastvmt(),
            LossSpec {
                pair_weights: PairWeights::LinearDecay {
                    first: 1.0,
                    last: 0.5,
                },
                moving_threshold: Some(1.0),
            },
        ];
        for ls in losses {
            let got = amf_loss_and_grad(&Backend::Cpu, &q, &k, s, &reference, &ls).unwrap();
            let c = r.weights_mask(ls.pair_weights, ls.moving_threshold, &reference.disp);
            let want_loss = r.loss_with(&r.q, &r.k, &wins, &c, &reference.disp);
            let (dq, dk) = r.grad_with(&wins, &c, &reference.disp);
            let el = ((got.loss as f64 - want_loss) / want_loss).abs();
            let eq = rel_err(&got.dq, &dq);
            let ek = rel_err(&got.dk, &dk);
            println!(
                "{} {ls:?}: loss {el:.1e} dq {eq:.1e} dk {ek:.1e}",
                window_name(s)
            );
            assert!(
                el < 1e-5 && eq < 1e-4 && ek < 1e-4,
                "{}: {el} {eq} {ek}",
                window_name(s)
            );
            assert_eq!(got.kept, c.iter().filter(|&&v| v > 0.0).count());
        }
    }
}

/// The reference's analytic gradient against central finite differences of its own loss
/// (windows held fixed: the coarse centre is a constant by definition).
#[test]
fn reference_gradient_matches_finite_differences() {
    let specs = [
        spec(2, 3, 4, 5, 3, PairSet::AllOrdered, local(1)),
        spec(2, 3, 5, 6, 4, PairSet::Forward { span: 3 }, coarse(1, 2, 3)),
        spec(1, 2, 3, 4, 5, PairSet::AllOrdered, KeyWindow::Full),
    ];
    for (n, s) in specs.iter().enumerate() {
        let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
        let q = rand_vec(len, 600 + n as u64, 1.5);
        let k = rand_vec(len, 700 + n as u64, 1.5);
        let r = Ref::new(s, &q, &k);
        let wins = r.windows();
        let np = r.pairs().len();
        let reference = rand_vec(np * s.grid_h * s.grid_w * 2, 800 + n as u64, 2.0);
        let c = r.weights_mask(
            PairWeights::LinearDecay {
                first: 1.0,
                last: 0.8,
            },
            Some(0.5),
            &reference,
        );
        let (dq, dk) = r.grad_with(&wins, &c, &reference);
        let lib = amf_loss_and_grad(
            &Backend::Cpu,
            &q,
            &k,
            s,
            &AmfField {
                pairs: r.pairs(),
                grid_h: s.grid_h,
                grid_w: s.grid_w,
                disp: reference.clone(),
            },
            &LossSpec {
                pair_weights: PairWeights::LinearDecay {
                    first: 1.0,
                    last: 0.8,
                },
                moving_threshold: Some(0.5),
            },
        )
        .unwrap();
        let eps = 1e-5;
        let mut worst = 0f64;
        for idx in (0..len).step_by((len / 23).max(1)) {
            for which in 0..2 {
                let (mut qp, mut kp) = (r.q.clone(), r.k.clone());
                let (mut qm, mut km) = (r.q.clone(), r.k.clone());
                if which == 0 {
                    qp[idx] += eps;
                    qm[idx] -= eps;
                } else {
                    kp[idx] += eps;
                    km[idx] -= eps;
                }
                let fd = (r.loss_with(&qp, &kp, &wins, &c, &reference)
                    - r.loss_with(&qm, &km, &wins, &c, &reference))
                    / (2.0 * eps);
                let an = if which == 0 { dq[idx] } else { dk[idx] };
                let lb = if which == 0 { lib.dq[idx] } else { lib.dk[idx] } as f64;
                let scale = dq.iter().chain(&dk).map(|v| v.abs()).fold(0.0, f64::max);
                worst = worst.max((fd - an).abs() / scale);
                assert!((fd - an).abs() <= 1e-6 * scale, "FD {fd} vs analytic {an}");
                assert!((fd - lb).abs() <= 1e-4 * scale, "FD {fd} vs library {lb}");
            }
        }
        println!(
            "{}: worst FD error / max |grad| = {worst:.1e}",
            window_name(s)
        );
    }
}

#[test]
fn half_inputs_match_f32() {
    let s = spec(
        2,
        4,
        7,
        9,
        16,
        PairSet::Forward { span: 4 },
        coarse(2, 3, 4),
    );
    let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
    let q = rand_vec(len, 900, 1.0);
    let k = rand_vec(len, 901, 1.0);
    let f32_amf = compute_amf(&Backend::Cpu, &q, &k, &s, Readout::SoftArgmax).unwrap();
    let reference = AmfField {
        disp: rand_vec(f32_amf.disp.len(), 902, 2.0),
        ..f32_amf.clone()
    };
    let ls = LossSpec::fastvmt();
    let g32 = amf_loss_and_grad(&Backend::Cpu, &q, &k, &s, &reference, &ls).unwrap();
    let qh: Vec<f16> = q.iter().map(|&v| f16::from_f32(v)).collect();
    let kh: Vec<f16> = k.iter().map(|&v| f16::from_f32(v)).collect();
    let qb: Vec<bf16> = q.iter().map(|&v| bf16::from_f32(v)).collect();
    let kb: Vec<bf16> = k.iter().map(|&v| bf16::from_f32(v)).collect();
    let a16 = compute_amf(&Backend::Cpu, &qh, &kh, &s, Readout::SoftArgmax).unwrap();
    let ab = compute_amf(&Backend::Cpu, &qb, &kb, &s, Readout::SoftArgmax).unwrap();
    let g16 = amf_loss_and_grad(&Backend::Cpu, &qh, &kh, &s, &reference, &ls).unwrap();
    let gb = amf_loss_and_grad(&Backend::Cpu, &qb, &kb, &s, &reference, &ls).unwrap();
    for (name, a, g) in [("f16", &a16, &g16), ("bf16", &ab, &gb)] {
        let e = [
            rel_err32(&a.disp, &f32_amf.disp),
            rel_err32(&g.dq, &g32.dq),
            rel_err32(&g.dk, &g32.dk),
            ((g.loss - g32.loss) / g32.loss).abs() as f64,
        ];
        println!(
            "{name} vs f32: disp {:.1e} dq {:.1e} dk {:.1e} loss {:.1e}",
            e[0], e[1], e[2], e[3]
        );
        assert!(e.iter().all(|&v| v < 1e-2), "{name}: {e:?}");
    }
    // And exactly the f32 computation on the rounded values.
    let q16: Vec<f32> = qh.iter().map(|v| v.to_f32()).collect();
    let k16: Vec<f32> = kh.iter().map(|v| v.to_f32()).collect();
    let a16_32 = compute_amf(&Backend::Cpu, &q16, &k16, &s, Readout::SoftArgmax).unwrap();
    assert_eq!(a16_32.disp, a16.disp);
}

/// The CPU backward's recomputing path (used when the score matrix is too large to keep).
#[test]
fn recomputing_backward_matches_stored() {
    let s = spec(2, 4, 7, 9, 5, PairSet::AllOrdered, coarse(2, 3, 4));
    let len = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
    let q = rand_vec(len, 1100, 1.5);
    let k = rand_vec(len, 1101, 1.5);
    let f = compute_amf(&Backend::Cpu, &q, &k, &s, Readout::Argmax).unwrap();
    let ls = LossSpec {
        pair_weights: PairWeights::LinearDecay {
            first: 1.0,
            last: 0.8,
        },
        moving_threshold: Some(0.5),
    };
    let r = Ref::new(&s, &q, &k);
    let c = r.weights_mask(ls.pair_weights, ls.moving_threshold, &f.disp);
    let (dq, dk) = r.grad_with(&r.windows(), &c, &f.disp);
    std::env::set_var("FASTVMT_AMF_CPU_STORE_LIMIT", "0");
    let g = amf_loss_and_grad(&Backend::Cpu, &q, &k, &s, &f, &ls).unwrap();
    std::env::remove_var("FASTVMT_AMF_CPU_STORE_LIMIT");
    let (eq, ek) = (rel_err(&g.dq, &dq), rel_err(&g.dk, &dk));
    println!("recomputing path: dq {eq:.1e} dk {ek:.1e}");
    assert!(eq < 1e-4 && ek < 1e-4);
}
