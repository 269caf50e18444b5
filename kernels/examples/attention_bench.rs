//! CUDA timing of the fused attention, forward and forward+backward, device-resident inputs.
//!
//! `cargo run -p fastvmt-kernels --release --example attention_bench -- [out.json]`
//! Shape of issue #5: 21 frames x 30 x 52 = 32,760 tokens, 12 heads x 128, batch 1; masks dense
//! and local (temporal/spatial radius) 1/7, 1/3, 2/10; bf16 and f16. CUDA events around each
//! call on the state's stream, 3 warm-up calls, median of `ATTN_BENCH_REPS` (default 10).
//! FLOPs count only visible pairs: forward `4 * pairs * d`, backward `2.5x` that.
//! With a path, writes JSON lines that `bench/attention_torch.py --ours` reads. Without CUDA
//! it prints the reason and exits 0. `ATTN_BENCH_MASKS=dense,local1/7` and
//! `ATTN_BENCH_DTYPES=bf16` keep only those cases.

use std::io::Write;
use std::process::ExitCode;

use cudarc::driver::{CudaSlice, DevicePtr};
use fastvmt_kernels::attention::cuda::{CudaAttention, DType};
use fastvmt_kernels::attention::{AttentionMask, AttentionShape, AttentionSpec, LocalWindow};
use fastvmt_kernels::KernelError;
use half::{bf16, f16};

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median device milliseconds of `f` (events on the state's stream).
fn time<F: FnMut() -> Result<(), KernelError>>(
    cu: &CudaAttention,
    mut f: F,
    reps: usize,
) -> Result<f64, KernelError> {
    let s = cu.stream();
    for _ in 0..3 {
        f()?;
    }
    s.synchronize().map_err(drv)?;
    let mut ts = Vec::new();
    for _ in 0..reps {
        let a = s
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv)?;
        f()?;
        let b = s
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv)?;
        b.synchronize().map_err(drv)?;
        ts.push(a.elapsed_ms(&b).map_err(drv)? as f64);
    }
    Ok(median(ts))
}

/// Times `f` once per value of the comma list in `list_var`, each with `switch_var` set to it
/// (the kernels read their variant switch per call), and prints ms, TF/s and the ratio to the
/// first value. Does nothing when `list_var` is unset.
#[allow(clippy::too_many_arguments)]
fn time_variants<F: FnMut() -> Result<(), KernelError>>(
    cu: &CudaAttention,
    label: &str,
    what: &str,
    list_var: &str,
    switch_var: &str,
    flops: f64,
    reps: usize,
    mut f: F,
) -> Result<(), KernelError> {
    let Ok(list) = std::env::var(list_var) else {
        return Ok(());
    };
    let mut base = None;
    for var in list.split(',') {
        // SAFETY (set_var): the benchmark is single-threaded.
        std::env::set_var(switch_var, var);
        let t = time(cu, &mut f, reps);
        std::env::remove_var(switch_var);
        let t = t?;
        let b = *base.get_or_insert(t);
        println!(
            "{label} {what} {switch_var}={var}: {t:.3} ms, {:.1} TF/s, {:.2}x vs the first",
            flops / t / 1e9,
            b / t
        );
    }
    Ok(())
}

fn rand_bits(n: usize, seed: u64, bf: bool, amp: f32) -> Vec<u16> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if bf {
                bf16::from_f32(u * amp).to_bits()
            } else {
                f16::from_f32(u * amp).to_bits()
            }
        })
        .collect()
}

fn run() -> Result<(), KernelError> {
    let out_path = std::env::args().nth(1);
    let mut out = out_path.map(|p| std::fs::File::create(p).expect("cannot create output file"));
    let cu = CudaAttention::get(0)?;
    let reps: usize = std::env::var("ATTN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (fr, h, w, heads, d) = (21usize, 30usize, 52usize, 12usize, 128usize);
    let n = fr * h * w;
    println!(
        "device: {} ({} SMs); {fr}x{h}x{w} = {n} tokens, {heads} heads x {d}, batch 1",
        cu.device_name(),
        cu.sm_count()
    );
    let shape = AttentionShape {
        batch: 1,
        heads,
        q_len: n,
        kv_len: n,
        head_dim: d,
        v_dim: d,
    };
    let masks: Vec<(String, AttentionMask, usize)> = {
        let mut v = vec![("dense".to_string(), AttentionMask::Dense, n)];
        for (rt, rs) in [(1usize, 7usize), (1, 3), (2, 10)] {
            let vis = (2 * rt + 1).min(fr) * (2 * rs + 1).min(h) * (2 * rs + 1).min(w);
            v.push((
                format!("local{rt}/{rs}"),
                AttentionMask::Local(LocalWindow {
                    frames: fr,
                    height: h,
                    width: w,
                    temporal_radius: rt,
                    spatial_radius: rs,
                }),
                vis,
            ));
        }
        v
    };
    // ATTN_BENCH_MASKS / ATTN_BENCH_DTYPES: comma lists that keep only the named masks / dtypes
    // (e.g. "dense" and "bf16" for a profiler run).
    let keep = |var: &str, name: &str| {
        std::env::var(var)
            .map(|l| l.split(',').any(|x| x == name))
            .unwrap_or(true)
    };
    let masks: Vec<_> = masks
        .into_iter()
        .filter(|(m, _, _)| keep("ATTN_BENCH_MASKS", m))
        .collect();
    let s = cu.stream().clone();
    let numel = heads * n * d;
    println!(
        "{:<12} {:>5} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "mask", "dtype", "fwd ms", "fwd TF/s", "f+b ms", "f+b TF/s", "bwd ms"
    );
    for (dt, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        if !keep("ATTN_BENCH_DTYPES", name) {
            continue;
        }
        let bf = dt == DType::BF16;
        let up = |seed: u64, amp: f32| -> Result<CudaSlice<u16>, KernelError> {
            s.clone_htod(&rand_bits(numel, seed, bf, amp)).map_err(drv)
        };
        let (q, k, v, dout) = (up(1, 2.0)?, up(2, 2.0)?, up(3, 1.0)?, up(4, 1.0)?);
        let o = up(5, 1.0)?;
        let lse = s.alloc_zeros::<f32>(heads * n).map_err(drv)?;
        let (dq, dk, dv) = (up(6, 1.0)?, up(7, 1.0)?, up(8, 1.0)?);
        let p = |b: &CudaSlice<u16>| b.device_ptr(&s).0;
        let (qp, kp, vp, dop, op, dqp, dkp, dvp) =
            (p(&q), p(&k), p(&v), p(&dout), p(&o), p(&dq), p(&dk), p(&dv));
        let lp = lse.device_ptr(&s).0;
        let raw = s.cu_stream();
        for (mname, mask, vis) in &masks {
            // Variants (ATTN_BENCH_VARIANTS set, bf16): forward and backward with 4 and 8 warps per block.
            if std::env::var_os("ATTN_BENCH_VARIANTS").is_some() && bf {
                let spec = AttentionSpec {
                    shape,
                    mask: *mask,
                    scale: 1.0 / (d as f32).sqrt(),
                };
                for (nw, mt) in [("4", "1"), ("8", "1"), ("4", "2")] {
                    // SAFETY (set_var): the benchmark is single-threaded.
                    std::env::set_var("FASTVMT_ATTN_FWD_WARPS", nw);
                    std::env::set_var("FASTVMT_ATTN_FWD_MT", mt);
                    let tf = time(
                        &cu,
                        || unsafe { cu.forward_raw(dt, &spec, qp, kp, vp, op, lp, raw) },
                        reps,
                    )?;
                    std::env::remove_var("FASTVMT_ATTN_FWD_WARPS");
                    std::env::remove_var("FASTVMT_ATTN_FWD_MT");
                    if mt == "2" {
                        println!(
                            "{:<12} {:>5} {:>9.3} {:>9.1}   (forward, 4 warps x 32 rows)",
                            mname,
                            name,
                            tf,
                            4.0 * (heads * n) as f64 * *vis as f64 * d as f64 / tf / 1e9
                        );
                        continue;
                    }
                    std::env::set_var("FASTVMT_ATTN_BWD_WARPS", nw);
                    unsafe { cu.forward_raw(dt, &spec, qp, kp, vp, op, lp, raw) }?;
                    let tb = time(
                        &cu,
                        || unsafe {
                            cu.backward_raw(dt, &spec, dop, qp, kp, vp, op, lp, dqp, dkp, dvp, raw)
                        },
                        reps,
                    )?;
                    std::env::remove_var("FASTVMT_ATTN_BWD_WARPS");
                    let flops_f = 4.0 * (heads * n) as f64 * *vis as f64 * d as f64;
                    println!(
                        "{:<12} {:>5} {:>9.3} {:>9.1}   (forward, {nw} warps x 16 rows); backward {tb:.3} ms, {:.1} TF/s ({nw} warps)",
                        mname,
                        name,
                        tf,
                        flops_f / tf / 1e9,
                        2.5 * flops_f / tb / 1e9
                    );
                }
            }
            let spec = AttentionSpec {
                shape,
                mask: *mask,
                scale: 1.0 / (d as f32).sqrt(),
            };
            if let AttentionMask::Dense = mask {
                let fwd = || unsafe { cu.forward_raw(dt, &spec, qp, kp, vp, op, lp, raw) };
                let bwd = || unsafe {
                    cu.backward_raw(dt, &spec, dop, qp, kp, vp, op, lp, dqp, dkp, dvp, raw)
                };
                let flops_f = 4.0 * (heads * n) as f64 * *vis as f64 * d as f64;
                let label = format!("{mname:<12} {name:>5}  ");
                // ATTN_BENCH_FWD_DENSE="0,1,2": the general kernel (0) and the dense kernel's row
                // tiles per warp; ATTN_BENCH_BWD_DENSE="0,32,64": the general kernel and the dense
                // kernel's query blocks (the backward reads the forward's lse: run it once first).
                time_variants(
                    &cu,
                    &label,
                    "forward",
                    "ATTN_BENCH_FWD_DENSE",
                    "FASTVMT_ATTN_FWD_DENSE",
                    flops_f,
                    reps,
                    fwd,
                )?;
                if std::env::var_os("ATTN_BENCH_BWD_DENSE").is_some() {
                    fwd()?;
                }
                time_variants(
                    &cu,
                    &label,
                    "backward",
                    "ATTN_BENCH_BWD_DENSE",
                    "FASTVMT_ATTN_BWD_DENSE",
                    2.5 * flops_f,
                    reps,
                    bwd,
                )?;
            }
            if let AttentionMask::Local(_) = mask {
                // ATTN_BENCH_FWD_WS="1,0": the warp-specialised local forward and fwd_tc.
                let fwd = || unsafe { cu.forward_raw(dt, &spec, qp, kp, vp, op, lp, raw) };
                let flops_f = 4.0 * (heads * n) as f64 * *vis as f64 * d as f64;
                time_variants(
                    &cu,
                    &format!("{mname:<12} {name:>5}  "),
                    "forward",
                    "ATTN_BENCH_FWD_WS",
                    "FASTVMT_ATTN_FWD_WS",
                    flops_f,
                    reps,
                    fwd,
                )?;
            }
            let fwd = || unsafe { cu.forward_raw(dt, &spec, qp, kp, vp, op, lp, raw) };
            let bwd = || unsafe {
                cu.backward_raw(dt, &spec, dop, qp, kp, vp, op, lp, dqp, dkp, dvp, raw)
            };
            let tf = time(&cu, fwd, reps)?;
            // The backward reads the forward's lse: run the forward once more before timing.
            fwd()?;
            let tb = time(&cu, bwd, reps)?;
            let tfb = time(
                &cu,
                || {
                    fwd()?;
                    bwd()
                },
                reps,
            )?;
            let flops_f = 4.0 * (heads * n) as f64 * *vis as f64 * d as f64;
            let flops_fb = 3.5 * flops_f;
            println!(
                "{:<12} {:>5} {:>9.3} {:>9.1} {:>10.3} {:>10.1} {:>9.3}",
                mname,
                name,
                tf,
                flops_f / tf / 1e9,
                tfb,
                flops_fb / tfb / 1e9,
                tb
            );
            if let Some(f) = out.as_mut() {
                writeln!(
                    f,
                    "{{\"mask\": \"{mname}\", \"dtype\": \"{name}\", \"fwd_ms\": {tf:.4}, \"fwdbwd_ms\": {tfb:.4}, \"bwd_ms\": {tb:.4}, \"visible_per_query\": {vis}, \"fwd_flops\": {flops_f:e}}}"
                )
                .expect("write");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(KernelError::CudaUnavailable(r)) => {
            println!("SKIPPED: CUDA unavailable: {r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
