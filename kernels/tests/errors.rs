//! Bad inputs give typed errors, never panics.

mod common;

use common::*;
use fastvmt_kernels::*;

fn ok_spec() -> AmfSpec {
    spec(2, 3, 4, 5, 3, PairSet::AllOrdered, local(1))
}

fn inputs(s: &AmfSpec) -> (Vec<f32>, Vec<f32>) {
    let n = s.heads * s.frames * s.grid_h * s.grid_w * s.head_dim;
    (rand_vec(n, 1, 1.0), rand_vec(n, 2, 1.0))
}

#[test]
fn bad_specs_are_typed_errors() {
    let s = ok_spec();
    let (q, k) = inputs(&s);
    let run = |s: &AmfSpec, q: &[f32], k: &[f32]| {
        compute_amf(&Backend::Cpu, q, k, s, Readout::SoftArgmax)
    };
    assert!(run(&s, &q, &k).is_ok());

    let zero = AmfSpec {
        heads: 0,
        ..s.clone()
    };
    assert_eq!(
        run(&zero, &q, &k).unwrap_err(),
        KernelError::ZeroDimension { field: "heads" }
    );
    assert!(matches!(
        run(&s, &q[1..], &k).unwrap_err(),
        KernelError::ShapeMismatch { tensor: "q", .. }
    ));
    assert!(matches!(
        run(&s, &q, &k[..k.len() - 3]).unwrap_err(),
        KernelError::ShapeMismatch { tensor: "k", .. }
    ));
    let r0 = AmfSpec {
        window: local(0),
        ..s.clone()
    };
    assert_eq!(run(&r0, &q, &k).unwrap_err(), KernelError::ZeroRadius);
    let tile0 = AmfSpec {
        window: coarse(2, 0, 3),
        ..s.clone()
    };
    assert!(matches!(
        run(&tile0, &q, &k).unwrap_err(),
        KernelError::InvalidParameter { .. }
    ));
    let tau = AmfSpec {
        tau: f32::NAN,
        ..s.clone()
    };
    assert!(matches!(
        run(&tau, &q, &k).unwrap_err(),
        KernelError::InvalidParameter { name: "tau", .. }
    ));

    // One frame: no pair.
    let one = AmfSpec {
        frames: 1,
        ..s.clone()
    };
    let (q1, k1) = inputs(&one);
    assert_eq!(
        run(&one, &q1, &k1).unwrap_err(),
        KernelError::EmptyPairSet { frames: 1 }
    );
    let span1 = AmfSpec {
        pairs: PairSet::Forward { span: 1 },
        ..s.clone()
    };
    assert_eq!(
        run(&span1, &q, &k).unwrap_err(),
        KernelError::EmptyPairSet { frames: 3 }
    );
    let oob = AmfSpec {
        pairs: PairSet::Explicit(vec![(0, 3)]),
        ..s.clone()
    };
    assert_eq!(
        run(&oob, &q, &k).unwrap_err(),
        KernelError::PairOutOfRange {
            i: 0,
            j: 3,
            frames: 3
        }
    );

    let mut qn = q.clone();
    qn[7] = f32::NAN;
    assert_eq!(
        run(&s, &qn, &k).unwrap_err(),
        KernelError::NonFinite {
            tensor: "q",
            index: 7
        }
    );
    let mut ki = k.clone();
    ki[11] = f32::INFINITY;
    assert_eq!(
        run(&s, &q, &ki).unwrap_err(),
        KernelError::NonFinite {
            tensor: "k",
            index: 11
        }
    );
}

/// The finiteness check tests blocks of values at once: the index it reports is still the
/// first bad element, wherever it lies (first block, a later one, the partial last one), for
/// f32 and 16-bit inputs.
#[test]
fn non_finite_inputs_name_the_first_bad_index() {
    let s = spec(2, 3, 6, 7, 16, PairSet::AllOrdered, local(1)); // 4,032 values
    let (q, k) = inputs(&s);
    for (first, later) in [(3, 2000), (1500, 3100), (4031, 4031), (1023, 1024)] {
        let mut qn = q.clone();
        qn[later] = f32::INFINITY;
        qn[first] = f32::NAN;
        assert_eq!(
            compute_amf(&Backend::Cpu, &qn, &k, &s, Readout::SoftArgmax).unwrap_err(),
            KernelError::NonFinite {
                tensor: "q",
                index: first
            },
            "NaN at {first}, inf at {later}"
        );
        let kb: Vec<half::bf16> = k.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut kn = kb.clone();
        kn[first] = half::bf16::NEG_INFINITY;
        let qb: Vec<half::bf16> = q.iter().map(|&v| half::bf16::from_f32(v)).collect();
        assert_eq!(
            compute_amf(&Backend::Cpu, &qb, &kn, &s, Readout::SoftArgmax).unwrap_err(),
            KernelError::NonFinite {
                tensor: "k",
                index: first
            }
        );
    }
}

#[test]
fn bad_references_are_typed_errors() {
    let s = ok_spec();
    let (q, k) = inputs(&s);
    let field = compute_amf(&Backend::Cpu, &q, &k, &s, Readout::Argmax).unwrap();
    let ls = LossSpec::fastvmt();
    let run = |r: &AmfField, l: &LossSpec| amf_loss_and_grad(&Backend::Cpu, &q, &k, &s, r, l);
    assert!(run(&field, &ls).is_ok());
    let mut short = field.clone();
    short.disp.pop();
    assert!(matches!(
        run(&short, &ls).unwrap_err(),
        KernelError::ReferenceMismatch(_)
    ));
    let mut other = field.clone();
    other.pairs.swap(0, 1);
    assert!(matches!(
        run(&other, &ls).unwrap_err(),
        KernelError::ReferenceMismatch(_)
    ));
    let mut nan = field.clone();
    nan.disp[3] = f32::NAN;
    assert!(matches!(
        run(&nan, &ls).unwrap_err(),
        KernelError::NonFinite { .. }
    ));
    let neg = LossSpec {
        moving_threshold: Some(-1.0),
        ..ls
    };
    assert!(matches!(
        run(&field, &neg).unwrap_err(),
        KernelError::InvalidParameter { .. }
    ));
    let w = LossSpec {
        pair_weights: PairWeights::LinearDecay {
            first: f32::INFINITY,
            last: 1.0,
        },
        ..ls
    };
    assert!(matches!(
        run(&field, &w).unwrap_err(),
        KernelError::InvalidParameter { .. }
    ));
}

#[test]
fn empty_mask_gives_zero_loss_and_gradients() {
    let s = ok_spec();
    let (q, k) = inputs(&s);
    let field = compute_amf(&Backend::Cpu, &q, &k, &s, Readout::Argmax).unwrap();
    let ls = LossSpec {
        pair_weights: PairWeights::Uniform,
        moving_threshold: Some(1e6),
    };
    let g = amf_loss_and_grad(&Backend::Cpu, &q, &k, &s, &field, &ls).unwrap();
    assert_eq!((g.loss, g.kept), (0.0, 0));
    assert!(g.dq.iter().chain(&g.dk).all(|&v| v == 0.0));
}

#[test]
fn cuda_without_driver_reports_why() {
    let s = ok_spec();
    let (q, k) = inputs(&s);
    match Backend::cuda_available() {
        Ok(()) => println!("CUDA present: nothing to check here"),
        Err(reason) => {
            println!("CUDA unavailable: {reason}");
            let e = compute_amf(
                &Backend::Cuda { device: 0 },
                &q,
                &k,
                &s,
                Readout::SoftArgmax,
            )
            .unwrap_err();
            assert_eq!(e, KernelError::CudaUnavailable(reason));
        }
    }
    // Validation happens before the back end is touched.
    let bad = AmfSpec {
        window: local(0),
        ..s.clone()
    };
    let e = compute_amf(
        &Backend::Cuda { device: 0 },
        &q,
        &k,
        &bad,
        Readout::SoftArgmax,
    )
    .unwrap_err();
    assert_eq!(e, KernelError::ZeroRadius);
}
