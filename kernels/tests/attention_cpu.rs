//! Fused attention, CPU back end, against an independent float64 reference written here from
//! the definition in `src/attention/mod.rs` (the mask too: `AttentionSpec::visible` is only
//! checked, never used), plus finite differences, `visible()`, errors and NaN propagation.
//!
//! Inputs are fresh random numbers on every run; the seed is printed and every assertion
//! names it. `ATTN_SEED=<n>` replays a run.

use fastvmt_kernels::attention::{cpu, AttentionMask, AttentionShape, AttentionSpec, LocalWindow};
use fastvmt_kernels::{Element, KernelError};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Helpers.

fn base_seed() -> u64 {
    let seed = std::env::var("ATTN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("seed = {seed} (ATTN_SEED={seed} replays)");
    seed
}

fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

fn shape(b: usize, h: usize, nq: usize, nk: usize, d: usize, dv: usize) -> AttentionShape {
    AttentionShape {
        batch: b,
        heads: h,
        q_len: nq,
        kv_len: nk,
        head_dim: d,
        v_dim: dv,
    }
}

/// A local spec over an `f x hh x w` video with `text` extra keys.
#[allow(clippy::too_many_arguments)]
fn local_spec(
    b: usize,
    heads: usize,
    (f, hh, w): (usize, usize, usize),
    rt: usize,
    rs: usize,
    text: usize,
    d: usize,
    dv: usize,
) -> AttentionSpec {
    let n = f * hh * w;
    AttentionSpec {
        shape: shape(b, heads, n, n + text, d, dv),
        mask: AttentionMask::Local(LocalWindow {
            frames: f,
            height: hh,
            width: w,
            temporal_radius: rt,
            spatial_radius: rs,
        }),
        scale: 1.0 / (d as f32).sqrt(),
    }
}

fn dense_spec(b: usize, h: usize, nq: usize, nk: usize, d: usize, dv: usize) -> AttentionSpec {
    AttentionSpec::dense(shape(b, h, nq, nk, d, dv))
}

/// max |a - b| / max |b| (NaN counts as infinite error).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut err = 0f64;
    let mut big = 0f64;
    for (x, y) in a.iter().zip(b) {
        let e = (x - y).abs();
        // NaN must count as an error.
        err = if e.is_nan() {
            f64::INFINITY
        } else {
            err.max(e)
        };
        big = big.max(y.abs());
    }
    // An all-zero reference (e.g. dQ with one key) makes it an absolute error.
    if big == 0.0 {
        err
    } else {
        err / big
    }
}

fn to64<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f32() as f64).collect()
}

fn cast<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

// ---------------------------------------------------------------------------------------------
// The float64 reference, from the written definition.

/// Whether query `q` sees key `k` (own implementation of the module docs' mask).
fn mask_ref(spec: &AttentionSpec, q: usize, k: usize) -> bool {
    let AttentionMask::Local(w) = spec.mask else {
        return true;
    };
    let video = w.frames * w.height * w.width;
    if k >= video {
        return true;
    }
    let coords = |t: usize| {
        [
            (t / (w.height * w.width)) as i64,
            ((t / w.width) % w.height) as i64,
            (t % w.width) as i64,
        ]
    };
    let (qc, kc) = (coords(q), coords(k));
    let radii = [w.temporal_radius, w.spatial_radius, w.spatial_radius];
    let extents = [w.frames, w.height, w.width];
    (0..3).all(|a| {
        let (r, e) = (radii[a] as i64, extents[a] as i64);
        let size = (2 * r + 1).min(e);
        let start = (qc[a] - r).max(0).min(e - size);
        kc[a] >= start && kc[a] < start + size
    })
}

struct RefOut {
    o: Vec<f64>,
    lse: Vec<f64>,
}

/// Full masked logits per (b, h), softmax, O and lse in f64.
fn ref_forward(spec: &AttentionSpec, q: &[f64], k: &[f64], v: &[f64]) -> RefOut {
    let s = spec.shape;
    let (nq, nk, d, dv) = (s.q_len, s.kv_len, s.head_dim, s.v_dim);
    let mut o = vec![0f64; s.batch * s.heads * nq * dv];
    let mut lse = vec![0f64; s.batch * s.heads * nq];
    for bh in 0..s.batch * s.heads {
        for qi in 0..nq {
            let qr = &q[(bh * nq + qi) * d..][..d];
            let logits: Vec<Option<f64>> = (0..nk)
                .map(|ki| {
                    mask_ref(spec, qi, ki).then(|| {
                        let kr = &k[(bh * nk + ki) * d..][..d];
                        spec.scale as f64 * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>()
                    })
                })
                .collect();
            let m = logits
                .iter()
                .flatten()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let sum: f64 = logits.iter().flatten().map(|l| (l - m).exp()).sum();
            let l = m + sum.ln();
            lse[bh * nq + qi] = l;
            let orow = &mut o[(bh * nq + qi) * dv..][..dv];
            for (ki, lg) in logits.iter().enumerate() {
                if let Some(lg) = lg {
                    let p = (lg - l).exp();
                    for (x, vv) in orow.iter_mut().zip(&v[(bh * nk + ki) * dv..][..dv]) {
                        *x += p * vv;
                    }
                }
            }
        }
    }
    RefOut { o, lse }
}

/// dQ, dK, dV in f64 from the textbook formulas (materialised P, dP, dS), with
/// `delta = <dO, O>` taken from `out`, the forward output the backward is given (as the
/// definition says; in f16/bf16 that is the rounded O, whose rounding error the gradient
/// inherits through `dP - delta` when the softmax is peaked).
fn ref_backward(
    spec: &AttentionSpec,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    out: &[f64],
) -> [Vec<f64>; 3] {
    let s = spec.shape;
    let (nq, nk, d, dv) = (s.q_len, s.kv_len, s.head_dim, s.v_dim);
    let fwd = ref_forward(spec, q, k, v);
    let sc = spec.scale as f64;
    let mut dq = vec![0f64; q.len()];
    let mut dk = vec![0f64; k.len()];
    let mut dvv = vec![0f64; v.len()];
    for bh in 0..s.batch * s.heads {
        for qi in 0..nq {
            let row = bh * nq + qi;
            let qr = &q[row * d..][..d];
            let dor = &dout[row * dv..][..dv];
            let delta: f64 = dor
                .iter()
                .zip(&out[row * dv..][..dv])
                .map(|(a, b)| a * b)
                .sum();
            for ki in 0..nk {
                if !mask_ref(spec, qi, ki) {
                    continue;
                }
                let kr = &k[(bh * nk + ki) * d..][..d];
                let vr = &v[(bh * nk + ki) * dv..][..dv];
                let l = sc * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>();
                let p = (l - fwd.lse[row]).exp();
                let dp: f64 = dor.iter().zip(vr).map(|(a, b)| a * b).sum();
                let ds = p * (dp - delta);
                for j in 0..dv {
                    dvv[(bh * nk + ki) * dv + j] += p * dor[j];
                }
                for j in 0..d {
                    dq[row * d + j] += sc * ds * kr[j];
                    dk[(bh * nk + ki) * d + j] += sc * ds * qr[j];
                }
            }
        }
    }
    [dq, dk, dvv]
}

// ---------------------------------------------------------------------------------------------
// Parity with the reference.

struct Case {
    name: &'static str,
    spec: AttentionSpec,
    amp: f32,
}

fn cases() -> Vec<Case> {
    let mut big_scale = dense_spec(1, 2, 33, 70, 8, 8);
    big_scale.scale = 2.0;
    vec![
        Case {
            name: "dense self, odd N",
            spec: dense_spec(1, 2, 37, 37, 16, 16),
            amp: 1.0,
        },
        Case {
            name: "dense cross Nq!=Nk, dv!=d, B=2",
            spec: dense_spec(2, 3, 19, 45, 8, 12),
            amp: 1.0,
        },
        Case {
            name: "dense N=1 key",
            spec: dense_spec(1, 1, 5, 1, 4, 3),
            amp: 1.0,
        },
        Case {
            name: "dense large logits",
            spec: big_scale,
            amp: 2.0,
        },
        Case {
            name: "dense > 1 chunk, threaded",
            spec: dense_spec(1, 2, 300, 600, 8, 8),
            amp: 1.0,
        },
        Case {
            name: "local 3x5x7 r(1,1), B=2",
            spec: local_spec(2, 2, (3, 5, 7), 1, 1, 0, 16, 16),
            amp: 1.0,
        },
        Case {
            name: "local 4x6x5 r(1,2) + 7 text, dv!=d",
            spec: local_spec(1, 3, (4, 6, 5), 1, 2, 7, 12, 20),
            amp: 1.0,
        },
        Case {
            name: "local 1 frame 9x11 r(2,3) + 3 text",
            spec: local_spec(1, 2, (1, 9, 11), 2, 3, 3, 8, 8),
            amp: 1.0,
        },
        Case {
            name: "local window > video (dense) + 4 text",
            spec: local_spec(2, 1, (2, 3, 4), 5, 9, 4, 8, 8),
            amp: 1.0,
        },
        Case {
            name: "local r(0,1) 5x4x3",
            spec: local_spec(1, 2, (5, 4, 3), 0, 1, 0, 6, 5),
            amp: 1.0,
        },
        Case {
            name: "local r(0,0) (self only) + 2 text",
            spec: local_spec(1, 1, (2, 3, 3), 0, 0, 2, 4, 4),
            amp: 1.0,
        },
        Case {
            name: "local 6x8x10 r(2,3) + 20 text, > 1 chunk, threaded",
            spec: local_spec(2, 2, (6, 8, 10), 2, 3, 20, 16, 16),
            amp: 1.0,
        },
    ]
}

/// Worst relative errors (out, lse, dq, dk, dv) of element type `T` on one case.
fn parity<T: Element>(c: &Case, rng: &mut StdRng) -> [f64; 5] {
    let s = c.spec.shape;
    let [nq, nk, nv, no] = c.spec.numel().unwrap();
    let q: Vec<T> = cast(&rand_vec(rng, nq, c.amp));
    let k: Vec<T> = cast(&rand_vec(rng, nk, c.amp));
    let v: Vec<T> = cast(&rand_vec(rng, nv, 1.0));
    let dout: Vec<T> = cast(&rand_vec(rng, no, 1.0));
    let (q64, k64, v64, do64) = (to64(&q), to64(&k), to64(&v), to64(&dout));

    let zero = T::from_f32(0.0);
    let mut out = vec![zero; no];
    let mut lse = vec![0f32; s.batch * s.heads * s.q_len];
    cpu::forward(&c.spec, &q, &k, &v, &mut out, &mut lse).unwrap();
    let want = ref_forward(&c.spec, &q64, &k64, &v64);

    let (mut dq, mut dk, mut dv) = (vec![zero; nq], vec![zero; nk], vec![zero; nv]);
    cpu::backward(
        &c.spec, &dout, &q, &k, &v, &out, &lse, &mut dq, &mut dk, &mut dv,
    )
    .unwrap();
    let [wq, wk, wv] = ref_backward(&c.spec, &q64, &k64, &v64, &do64, &to64(&out));
    [
        rel_err(&to64(&out), &want.o),
        rel_err(&to64(&lse), &want.lse),
        rel_err(&to64(&dq), &wq),
        rel_err(&to64(&dk), &wk),
        rel_err(&to64(&dv), &wv),
    ]
}

fn check_dtype<T: Element>(label: &str, tol: f64, salt: u64) {
    let seed = base_seed() ^ salt;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut worst = [0f64; 5];
    let mut failures = Vec::new();
    for c in cases() {
        let e = parity::<T>(&c, &mut rng);
        println!(
            "{label} {:<52} out {:.1e} lse {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
            c.name, e[0], e[1], e[2], e[3], e[4]
        );
        for (w, x) in worst.iter_mut().zip(e) {
            *w = w.max(x);
        }
        if e.iter().any(|x| x.is_nan() || *x >= tol) {
            failures.push(format!("{}: {:?}", c.name, e.map(|x| format!("{x:.2e}"))));
        }
    }
    println!(
        "{label} worst: out {:.1e} lse {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
    assert!(
        failures.is_empty(),
        "{label} (seed {seed}) over tolerance {tol:e}: {failures:#?}"
    );
}

#[test]
fn f32_matches_f64_reference() {
    check_dtype::<f32>("f32", 1e-5, 0);
}

#[test]
fn f16_matches_f64_reference() {
    check_dtype::<f16>("f16", 1e-2, 1);
}

#[test]
fn bf16_matches_f64_reference() {
    check_dtype::<bf16>("bf16", 1e-2, 2);
}

// ---------------------------------------------------------------------------------------------
// Backward by finite differences of the f64 reference forward.

#[test]
fn backward_matches_finite_differences() {
    let seed = base_seed() ^ 3;
    let mut rng = StdRng::seed_from_u64(seed);
    let specs = [
        ("dense cross", dense_spec(1, 2, 3, 5, 3, 2)),
        ("local + text", local_spec(2, 1, (2, 2, 3), 0, 1, 2, 3, 4)),
        ("local 1 frame", local_spec(1, 1, (1, 3, 4), 1, 1, 0, 4, 3)),
    ];
    for (name, spec) in specs {
        let [nq, nk, nv, no] = spec.numel().unwrap();
        let q = rand_vec(&mut rng, nq, 1.0);
        let k = rand_vec(&mut rng, nk, 1.0);
        let v = rand_vec(&mut rng, nv, 1.0);
        let r = rand_vec(&mut rng, no, 1.0);
        let mut out = vec![0f32; no];
        let mut lse = vec![0f32; spec.lse_len()];
        cpu::forward(&spec, &q, &k, &v, &mut out, &mut lse).unwrap();
        let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nv]);
        cpu::backward(&spec, &r, &q, &k, &v, &out, &lse, &mut dq, &mut dk, &mut dv).unwrap();

        let r64: Vec<f64> = r.iter().map(|&x| x as f64).collect();
        let inputs: [Vec<f64>; 3] = [&q, &k, &v].map(|x| x.iter().map(|&y| y as f64).collect());
        let objective = |ins: &[Vec<f64>; 3]| -> f64 {
            let o = ref_forward(&spec, &ins[0], &ins[1], &ins[2]).o;
            o.iter().zip(&r64).map(|(a, b)| a * b).sum()
        };
        for (t, (label, got)) in [("dq", &dq), ("dk", &dk), ("dv", &dv)]
            .into_iter()
            .enumerate()
        {
            let eps = 1e-4;
            let fd: Vec<f64> = (0..inputs[t].len())
                .map(|i| {
                    let mut plus = inputs.clone();
                    plus[t][i] += eps;
                    let mut minus = inputs.clone();
                    minus[t][i] -= eps;
                    (objective(&plus) - objective(&minus)) / (2.0 * eps)
                })
                .collect();
            let e = rel_err(&to64(got), &fd);
            println!("finite differences {name} {label}: rel {e:.1e}");
            assert!(
                e < 1e-3,
                "{name} {label} (seed {seed}): {e:e} vs finite differences"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The mask, errors, non-finite inputs.

#[test]
fn visible_matches_own_mask() {
    let specs = [
        local_spec(1, 1, (3, 5, 7), 1, 1, 0, 4, 4),
        local_spec(1, 1, (4, 6, 5), 1, 2, 7, 4, 4),
        local_spec(1, 1, (1, 9, 11), 2, 3, 3, 4, 4),
        local_spec(1, 1, (2, 3, 4), 5, 9, 4, 4, 4),
        local_spec(1, 1, (5, 4, 3), 0, 1, 0, 4, 4),
        local_spec(1, 1, (7, 2, 9), 3, 0, 1, 4, 4),
        dense_spec(1, 1, 6, 9, 4, 4),
    ];
    for spec in specs {
        let s = spec.shape;
        let mut counts = std::collections::BTreeSet::new();
        for q in 0..s.q_len {
            let mut video_seen = 0;
            for k in 0..s.kv_len {
                assert_eq!(
                    spec.visible(q, k),
                    mask_ref(&spec, q, k),
                    "{spec:?} q {q} k {k}"
                );
                video_seen += usize::from(mask_ref(&spec, q, k) && k < s.q_len);
            }
            counts.insert(video_seen);
        }
        // Clamp-shifted windows: every query sees the same number of video keys.
        if let AttentionMask::Local(w) = spec.mask {
            let size = |r: usize, e: usize| (2 * r + 1).min(e);
            let want = size(w.temporal_radius, w.frames)
                * size(w.spatial_radius, w.height)
                * size(w.spatial_radius, w.width);
            assert_eq!(
                counts.into_iter().collect::<Vec<_>>(),
                vec![want],
                "{spec:?}"
            );
        }
    }
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let spec = local_spec(1, 2, (2, 3, 4), 1, 1, 3, 4, 5);
    let [nq, nk, nv, no] = spec.numel().unwrap();
    let nl = spec.lse_len();
    let (q, k, v) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nv]);
    let fwd = |q: &[f32], k: &[f32], v: &[f32], o: usize, l: usize| {
        let (mut o, mut l) = (vec![0f32; o], vec![0f32; l]);
        cpu::forward(&spec, q, k, v, &mut o, &mut l)
    };
    let mismatch = |r: Result<(), KernelError>, name: &str| match r {
        Err(KernelError::ShapeMismatch { tensor, .. }) => assert_eq!(tensor, name),
        other => panic!("{name}: expected ShapeMismatch, got {other:?}"),
    };
    assert!(fwd(&q, &k, &v, no, nl).is_ok());
    mismatch(fwd(&q[1..], &k, &v, no, nl), "q");
    mismatch(fwd(&q, &k[1..], &v, no, nl), "k");
    mismatch(fwd(&q, &k, &v[1..], no, nl), "v");
    mismatch(fwd(&q, &k, &v, no + 1, nl), "out");
    mismatch(fwd(&q, &k, &v, no, nl - 1), "lse");

    let bwd = |sizes: [usize; 9]| {
        let bufs: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0f32; n]).collect();
        let (mut dq, mut dk, mut dv) = (bufs[6].clone(), bufs[7].clone(), bufs[8].clone());
        cpu::backward(
            &spec, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &bufs[4], &bufs[5], &mut dq, &mut dk,
            &mut dv,
        )
    };
    let good = [no, nq, nk, nv, no, nl, nq, nk, nv];
    assert!(bwd(good).is_ok());
    for (i, name) in ["dout", "q", "k", "v", "out", "lse", "dq", "dk", "dv"]
        .into_iter()
        .enumerate()
    {
        let mut sizes = good;
        sizes[i] += 1;
        mismatch(bwd(sizes), name);
    }
}

#[test]
fn invalid_specs_are_errors() {
    let run = |spec: AttentionSpec| {
        // Sized for the intended spec so that only validation can fail.
        let n = 1 << 12;
        let (q, k, v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let (mut o, mut l) = (vec![0f32; n], vec![0f32; n]);
        let f = cpu::forward(&spec, &q, &k, &v, &mut o, &mut l);
        let (mut a, mut b, mut c) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let g = cpu::backward(&spec, &q, &q, &k, &v, &o, &l, &mut a, &mut b, &mut c);
        assert_eq!(f, g);
        f.unwrap_err()
    };
    let ok = local_spec(1, 1, (2, 3, 4), 1, 1, 2, 4, 4);
    let with_shape = |f: &dyn Fn(&mut AttentionShape)| {
        let mut s = ok;
        f(&mut s.shape);
        s
    };
    let with_window = |f: &dyn Fn(&mut LocalWindow)| {
        let mut s = ok;
        if let AttentionMask::Local(w) = &mut s.mask {
            f(w);
        }
        s
    };
    // q_len != frames * height * width
    let e = run(with_shape(&|s| s.q_len = 23));
    assert!(
        matches!(e, KernelError::InvalidParameter { name: "q_len", .. }),
        "{e:?}"
    );
    // kv_len < video tokens
    let e = run(with_shape(&|s| s.kv_len = 23));
    assert!(
        matches!(e, KernelError::InvalidParameter { name: "kv_len", .. }),
        "{e:?}"
    );
    for (field, spec) in [
        ("batch", with_shape(&|s| s.batch = 0)),
        ("heads", with_shape(&|s| s.heads = 0)),
        ("q_len", with_shape(&|s| s.q_len = 0)),
        ("kv_len", with_shape(&|s| s.kv_len = 0)),
        ("head_dim", with_shape(&|s| s.head_dim = 0)),
        ("v_dim", with_shape(&|s| s.v_dim = 0)),
        ("frames", with_window(&|w| w.frames = 0)),
        ("height", with_window(&|w| w.height = 0)),
        ("width", with_window(&|w| w.width = 0)),
    ] {
        assert_eq!(run(spec), KernelError::ZeroDimension { field }, "{field}");
    }
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let mut s = ok;
        s.scale = scale;
        let e = run(s);
        assert!(
            matches!(e, KernelError::InvalidParameter { name: "scale", .. }),
            "{scale}: {e:?}"
        );
    }
    let mut huge = dense_spec(1, 1, 4, 4, 4, 4);
    huge.shape.batch = usize::MAX / 2;
    assert!(matches!(run(huge), KernelError::TooLarge(_)));
}

#[test]
fn non_finite_inputs_propagate_without_panic() {
    for spec in [
        dense_spec(1, 2, 9, 11, 4, 4),
        local_spec(1, 1, (2, 3, 4), 1, 1, 2, 4, 4),
    ] {
        let [nq, nk, nv, no] = spec.numel().unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut q = rand_vec(&mut rng, nq, 1.0);
            q[2] = bad; // query row 0
            let k = rand_vec(&mut rng, nk, 1.0);
            let mut v = rand_vec(&mut rng, nv, 1.0);
            let (mut out, mut lse) = (vec![0f32; no], vec![0f32; spec.lse_len()]);
            cpu::forward(&spec, &q, &k, &v, &mut out, &mut lse).unwrap();
            if bad.is_nan() {
                assert!(
                    out[..spec.shape.v_dim].iter().all(|x| x.is_nan()),
                    "{out:?}"
                );
            }
            // Rows of other queries are untouched by query 0.
            assert!(out[spec.shape.v_dim..].iter().all(|x| x.is_finite()));
            v[0] = bad;
            cpu::forward(&spec, &q, &k, &v, &mut out, &mut lse).unwrap();
            let dout = rand_vec(&mut rng, no, 1.0);
            let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nv]);
            cpu::backward(
                &spec, &dout, &q, &k, &v, &out, &lse, &mut dq, &mut dk, &mut dv,
            )
            .unwrap();
            assert!(dq.iter().any(|x| !x.is_finite()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing (not a check): `cargo test -p fastvmt-kernels --test attention_cpu -- --ignored
// --nocapture`.

#[test]
#[ignore]
fn timing_tiny_dit() {
    let d = 32;
    let specs = [
        ("dense", dense_spec(2, 4, 2304, 2304, d, d)),
        (
            "dense + 77 text keys",
            dense_spec(2, 4, 2304, 2304 + 77, d, d),
        ),
        (
            "local 9x16x16 r(1,3)",
            local_spec(2, 4, (9, 16, 16), 1, 3, 0, d, d),
        ),
        (
            "local 9x16x16 r(1,3) + 77 text",
            local_spec(2, 4, (9, 16, 16), 1, 3, 77, d, d),
        ),
    ];
    let mut rng = StdRng::seed_from_u64(1);
    for (name, spec) in specs {
        let [nq, nk, nv, no] = spec.numel().unwrap();
        let q = rand_vec(&mut rng, nq, 1.0);
        let k = rand_vec(&mut rng, nk, 1.0);
        let v = rand_vec(&mut rng, nv, 1.0);
        let dout = rand_vec(&mut rng, no, 1.0);
        let (mut out, mut lse) = (vec![0f32; no], vec![0f32; spec.lse_len()]);
        let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nv]);
        // Best wall time of 5 (the build machines are shared), mean CPU time.
        let reps = 5;
        let (mut tf, mut tb) = (f64::INFINITY, f64::INFINITY);
        let c = cpu_seconds();
        for _ in 0..reps {
            let t = std::time::Instant::now();
            cpu::forward(&spec, &q, &k, &v, &mut out, &mut lse).unwrap();
            tf = tf.min(t.elapsed().as_secs_f64());
        }
        let cf = (cpu_seconds() - c) / reps as f64;
        let c = cpu_seconds();
        for _ in 0..reps {
            let t = std::time::Instant::now();
            cpu::backward(
                &spec, &dout, &q, &k, &v, &out, &lse, &mut dq, &mut dk, &mut dv,
            )
            .unwrap();
            tb = tb.min(t.elapsed().as_secs_f64());
        }
        let cb = (cpu_seconds() - c) / reps as f64;
        println!(
            "{name}: forward {:.1} ms (CPU time {:.0} ms), backward {:.1} ms (CPU {:.0} ms), {} threads available",
            tf * 1e3,
            cf * 1e3,
            tb * 1e3,
            cb * 1e3,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
    }
}

/// User + system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (clock ticks, 100 Hz).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() > 12 {
        (f[11] + f[12]) / 100.0
    } else {
        0.0
    }
}
