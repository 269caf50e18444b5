//! The fused norm/modulation and gated residual (src/norm): the CPU implementation against a
//! float64 reference written here from the definition, and the CUDA kernels against the CPU
//! implementation (skipped, saying why, without a CUDA driver). Fresh random inputs with a
//! non-zero mean per row, odd sizes, both table broadcasts (one row, one per sample).

mod common;

use common::rand_vec;
use fastvmt_kernels::norm::{cpu, cuda::CudaNorm, RowsShape};
use fastvmt_kernels::{Element, KernelError};
use half::{bf16, f16};

fn shapes() -> Vec<RowsShape> {
    [
        (1, 1, 7),
        (2, 5, 33),
        (3, 17, 96),
        (2, 9, 1536),
        (3, 5, 512),
        (1, 3, 2500),
    ]
    .into_iter()
    .map(|(batch, tokens, channels)| RowsShape {
        batch,
        tokens,
        channels,
    })
    .collect()
}

/// Rows with an offset per row (LayerNorm must remove it) and a spread of scales.
fn inputs(shape: RowsShape, seed: u64) -> Vec<f32> {
    let c = shape.channels;
    let offsets = rand_vec(shape.batch * shape.tokens, seed ^ 0xA5, 3.0);
    rand_vec(shape.numel(), seed, 2.0)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / c % 3) as f32) + offsets[i / c])
        .collect()
}

fn round<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn widen<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn ref_modln(x: &[f32], s: RowsShape, mul: &[f32], add: &[f32], eps: f64) -> Vec<f64> {
    let c = s.channels;
    let (mr, ar) = (mul.len() / c, add.len() / c);
    let mut y = vec![0f64; x.len()];
    for r in 0..s.batch * s.tokens {
        let b = r / s.tokens;
        let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            let m = mul[if mr == 1 { j } else { b * c + j }] as f64;
            let a = add[if ar == 1 { j } else { b * c + j }] as f64;
            y[r * c + j] = (row[j] - mean) / (var + eps).sqrt() * m + a;
        }
    }
    y
}

/// Max |got - want| over max |want| (outputs are O(1)..O(10)).
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite output");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
        / scale
}

fn tables(s: RowsShape, rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = rows * s.channels;
    let mul: Vec<f32> = rand_vec(n, seed, 0.5).iter().map(|v| 1.0 + v).collect();
    (mul, rand_vec(n, seed + 1, 0.7), rand_vec(n, seed + 2, 1.2))
}

/// The tolerance of one output element: the f64 reference's value rounded to T is within
/// half an ulp of T, plus f32 arithmetic.
fn tol<T: Element>() -> f64 {
    match std::mem::size_of::<T>() {
        4 => 2e-6,
        _ if T::from_f32(1.0 + 1.0 / 512.0).to_f32() == 1.0 => 8e-3, // bf16: 8 mantissa bits
        _ => 1e-3,                                                   // f16
    }
}

fn check_cpu<T: Element>(name: &str) {
    for (k, s) in shapes().into_iter().enumerate() {
        for rows in [1, s.batch] {
            let seed = 100 * k as u64 + rows as u64;
            let x32 = inputs(s, seed);
            let x: Vec<T> = round(&x32);
            let xr = widen(&x); // the values the operation sees
            let (mul, add, gate) = tables(s, rows, seed + 7);
            let mut y = vec![T::from_f32(f32::NAN); s.numel()];
            cpu::modulated_layer_norm(&x, s, &mul, &add, 1e-6, &mut y).unwrap();
            let e = max_err(&widen(&y), &ref_modln(&xr, s, &mul, &add, 1e-6));
            assert!(
                e < tol::<T>(),
                "{name} modln {s:?} rows {rows}: error {e:.2e}"
            );
            let o: Vec<T> = round(&rand_vec(s.numel(), seed + 3, 1.5));
            let mut g = vec![T::from_f32(f32::NAN); s.numel()];
            cpu::gated_residual(&x, &o, &gate, s, &mut g).unwrap();
            let c = s.channels;
            let want: Vec<f64> = (0..s.numel())
                .map(|i| {
                    let b = if rows == 1 { 0 } else { i / (s.tokens * c) };
                    xr[i] as f64 + o[i].to_f32() as f64 * gate[b * c + i % c] as f64
                })
                .collect();
            let e = max_err(&widen(&g), &want);
            assert!(
                e < tol::<T>(),
                "{name} gres {s:?} rows {rows}: error {e:.2e}"
            );
        }
    }
}

#[test]
fn cpu_matches_the_f64_reference() {
    check_cpu::<f32>("f32");
    check_cpu::<f16>("f16");
    check_cpu::<bf16>("bf16");
}

#[test]
fn bad_shapes_are_typed_errors() {
    let s = RowsShape {
        batch: 2,
        tokens: 3,
        channels: 4,
    };
    let x = vec![0.5f32; 24];
    let mut y = vec![0f32; 24];
    // a table of 3 rows for a batch of 2
    let err = cpu::modulated_layer_norm(&x, s, &[1.0; 12], &[0.0; 4], 1e-6, &mut y).unwrap_err();
    assert!(
        matches!(err, KernelError::ShapeMismatch { tensor: "mul", .. }),
        "{err}"
    );
    let err = cpu::gated_residual(&x, &x[..20], &[1.0; 4], s, &mut y).unwrap_err();
    assert!(
        matches!(err, KernelError::ShapeMismatch { tensor: "o", .. }),
        "{err}"
    );
}

fn cuda_case<T: Element>(
    dev: &CudaNorm,
    dtype: fastvmt_kernels::attention::cuda::DType,
    s: RowsShape,
    rows: usize,
    seed: u64,
) -> (f64, f64) {
    use cudarc::driver::DevicePtr;
    let x: Vec<T> = round(&inputs(s, seed));
    let (mul, add, gate) = tables(s, rows, seed + 7);
    let o: Vec<T> = round(&rand_vec(s.numel(), seed + 3, 1.5));
    let mut want_y = vec![T::from_f32(0.0); s.numel()];
    cpu::modulated_layer_norm(&x, s, &mul, &add, 1e-6, &mut want_y).unwrap();
    let mut want_g = vec![T::from_f32(0.0); s.numel()];
    cpu::gated_residual(&x, &o, &gate, s, &mut want_g).unwrap();
    let st = dev.stream();
    let up = |v: &[T]| st.clone_htod(v).unwrap();
    let upf = |v: &[f32]| st.clone_htod(v).unwrap();
    let (xd, od) = (up(&x), up(&o));
    let (md, ad, gd) = (upf(&mul), upf(&add), upf(&gate));
    // Poisoned outputs: an element the kernel does not write shows as NaN.
    let (yd, rd) = (
        up(&round::<T>(&vec![f32::NAN; s.numel()])),
        up(&round::<T>(&vec![f32::NAN; s.numel()])),
    );
    {
        let p = |b: &cudarc::driver::CudaSlice<T>| b.device_ptr(st).0;
        let pf = |b: &cudarc::driver::CudaSlice<f32>| b.device_ptr(st).0;
        // SAFETY: device buffers of the sizes the shape says, on this device; own stream.
        unsafe {
            dev.modulated_layer_norm_raw(
                dtype,
                p(&xd),
                s,
                pf(&md),
                rows,
                pf(&ad),
                rows,
                1e-6,
                p(&yd),
                std::ptr::null_mut(),
            )
            .unwrap();
            dev.gated_residual_raw(
                dtype,
                p(&xd),
                p(&od),
                pf(&gd),
                rows,
                s,
                p(&rd),
                std::ptr::null_mut(),
            )
            .unwrap();
        }
    }
    let y: Vec<T> = st.clone_dtoh(&yd).unwrap();
    let g: Vec<T> = st.clone_dtoh(&rd).unwrap();
    let w64 = |v: &[T]| widen(v).iter().map(|&x| x as f64).collect::<Vec<f64>>();
    (
        max_err(&widen(&y), &w64(&want_y)),
        max_err(&widen(&g), &w64(&want_g)),
    )
}

#[test]
fn cuda_matches_cpu() {
    if let Err(why) = fastvmt_kernels::Backend::cuda_available() {
        println!("SKIPPED cuda_matches_cpu: CUDA unavailable: {why}");
        return;
    }
    let dev = CudaNorm::get(0).expect("CUDA present but the norm module failed to build");
    // Both kernel families: the 16-byte-vector ones (1536, 512 channels) and the scalar ones.
    for vectorized in [true, false] {
        dev.set_vectorized(vectorized);
        compare_all(&dev, vectorized);
    }
    dev.set_vectorized(true);
}

fn compare_all(dev: &CudaNorm, vectorized: bool) {
    use fastvmt_kernels::attention::cuda::DType;
    let mut worst = [0f64; 6];
    for (k, s) in shapes().into_iter().enumerate() {
        for rows in [1, s.batch] {
            let seed = 1000 + 10 * k as u64 + rows as u64;
            let cases = [
                cuda_case::<f32>(dev, DType::F32, s, rows, seed),
                cuda_case::<f16>(dev, DType::F16, s, rows, seed),
                cuda_case::<bf16>(dev, DType::BF16, s, rows, seed),
            ];
            for (i, (a, b)) in cases.into_iter().enumerate() {
                worst[2 * i] = worst[2 * i].max(a);
                worst[2 * i + 1] = worst[2 * i + 1].max(b);
            }
        }
    }
    println!(
        "vectorized {vectorized}: worst CUDA vs CPU (modln, gres): f32 {:.1e} {:.1e}, f16 {:.1e} {:.1e}, bf16 {:.1e} {:.1e}",
        worst[0], worst[1], worst[2], worst[3], worst[4], worst[5]
    );
    // f32: summation order only; 16-bit: one rounding step of the output at most.
    assert!(worst[0] < 1e-5 && worst[1] == 0.0, "f32 {worst:?}");
    assert!(worst[2] < 2e-3 && worst[3] == 0.0, "f16 {worst:?}");
    assert!(worst[4] < 1e-2 && worst[5] == 0.0, "bf16 {worst:?}");
}

#[test]
fn nvrtc_compiles_the_norm_kernels() {
    match fastvmt_kernels::norm::cuda::compile("compute_80") {
        Ok(_) => println!("norm.cu compiled for compute_80"),
        Err(KernelError::CudaUnavailable(r)) => println!("SKIPPED: {r}"),
        Err(e) => panic!("NVRTC rejected norm.cu: {e}"),
    }
}
