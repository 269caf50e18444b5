//! CUDA timing of the AMF forward and forward+backward (device-resident inputs).
//!
//! `cargo run -p fastvmt-kernels --release --example amf_bench -- [out.json]`
//! Prints a table; with a path, also writes JSON lines that `bench/amf_torch.py --ours` reads.
//! Without CUDA it prints the reason and exits 0.
//!
//! dtype column: `bf16` = the default tensor-core path (fused forward, backward logits split 3
//! ways per block, packed score gradient, version-3 gradient kernels on 16x8 tiles with
//! per-group partner ranges), `bf16-g2` = the version-2 gradient kernels on 8x8 tiles
//! (`FASTVMT_AMF_GRAD_TILE=2`), `bf16-g32` = version 3 on 32x8 tiles, `bf16-g16w` = version 3
//! with 256 features per block, `bf16-g16s3` = version 3 with 3 pipeline stages (the default: 4),
//! `bf16-g16` = version 3 on `mma.sync` (16x8 tiles, 128 features: the default before run 16
//! and on GPUs other than sm_90), `bf16-g16g` = the same tiles on Hopper's `wgmma` (the
//! default on sm_90), `bf16-lg0` = the backward's logits on `mma.sync`
//! (`FASTVMT_AMF_LOGITS_WG=0`; default on sm_90: `wgmma`), `bf16-ov0` / `bf16-ov1` = the
//! version-3 phases on one stream / only dK's packing beside dQ's packing and product
//! (`FASTVMT_AMF_OVERLAP`; the default runs dQ's and dK's whole chains on one stream each), `bf16-m10` / `bf16-g2-m10` = versions 3 / 2 with a reference
//! that moves only in a block of ~10 % of each frame and DiTFlow's motion mask (query mode),
//! `bf16-z1` = backward logits unsplit (`FASTVMT_AMF_LOGITS_ZX=1`), `bf16-ga` = gradient
//! kernels gathering the score gradient (`FASTVMT_AMF_GRAD_GATHER`), `bf16-st` = stored-logits
//! forward (`FASTVMT_AMF_FWD_STORED`; fwd column), `bf16-legacy` = the run-3 kernels
//! (`FASTVMT_AMF_LEGACY`), `f32` = CUDA-core kernels; all in
//! the same process, so before/after numbers come from the same card and run.
//! `AMF_BENCH_SHAPES`, `AMF_BENCH_MODES` (substrings) and `AMF_BENCH_DTYPES` (comma lists)
//! restrict the table, e.g. for a profiler run.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use fastvmt_kernels::cuda::CudaAmf;
use fastvmt_kernels::*;
use half::bf16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<(), KernelError>>(
    dev: &CudaAmf,
    mut f: F,
    reps: usize,
) -> Result<f64, KernelError> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let mut ts = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ts))
}

fn run() -> Result<(), KernelError> {
    let out_path = std::env::args().nth(1);
    let mut out = out_path.map(|p| std::fs::File::create(p).expect("cannot create output file"));
    let dev = CudaAmf::get(0)?;
    println!("device: {}", dev.device_name());
    let shapes = [
        ("small", 12usize, 9usize, 15usize, 26usize, 128usize),
        ("fastvmt", 12, 21, 30, 52, 128),
        ("2x", 12, 21, 42, 74, 128),
    ];
    let modes: Vec<(&str, PairSet, KeyWindow)> = vec![
        (
            "span4 r10 query",
            PairSet::Forward { span: 4 },
            KeyWindow::Local {
                radius: 10,
                centre: WindowCentre::Query,
            },
        ),
        (
            "span4 r10 coarse3x4",
            PairSet::Forward { span: 4 },
            KeyWindow::Local {
                radius: 10,
                centre: WindowCentre::CoarseTiles {
                    tile_h: 3,
                    tile_w: 4,
                },
            },
        ),
        (
            "allpairs r3 query",
            PairSet::AllOrdered,
            KeyWindow::Local {
                radius: 3,
                centre: WindowCentre::Query,
            },
        ),
        ("span4 full", PairSet::Forward { span: 4 }, KeyWindow::Full),
    ];
    println!(
        "{:<8} {:<20} {:<12} {:>9} {:>11} {:>8} {:>9} {:>10} {:>10} {:>9}",
        "shape",
        "mode",
        "dtype",
        "fwd ms",
        "fwd+bwd ms",
        "GFLOP",
        "TFLOP/s",
        "TC floor",
        "SIMT floor",
        "floor/fb"
    );
    // Filters for profiling runs: comma lists of shape names, mode-name substrings, dtypes.
    let pick = |var: &str, name: &str, exact: bool| {
        std::env::var(var).map_or(true, |v| {
            v.split(',')
                .any(|p| if exact { p == name } else { name.contains(p) })
        })
    };
    for (sname, hn, f, gh, gw, d) in shapes {
        if !pick("AMF_BENCH_SHAPES", sname, true) {
            continue;
        }
        let n = hn * f * gh * gw * d;
        let mut rng = Rng(0x9E3779B97F4A7C15 ^ n as u64);
        let q32: Vec<f32> = (0..n).map(|_| rng.next() * 1.5).collect();
        let k32: Vec<f32> = (0..n).map(|_| rng.next() * 1.5).collect();
        let qb: Vec<bf16> = q32.iter().map(|&v| bf16::from_f32(v)).collect();
        let kb: Vec<bf16> = k32.iter().map(|&v| bf16::from_f32(v)).collect();
        for (mname, pairs, window) in &modes {
            if !pick("AMF_BENCH_MODES", mname, false) {
                continue;
            }
            let spec = AmfSpec {
                heads: hn,
                frames: f,
                grid_h: gh,
                grid_w: gw,
                head_dim: d,
                tau: 2.0,
                pairs: pairs.clone(),
                window: *window,
            };
            let np = resolve_pairs(&spec.pairs, f)?.len();
            let s = gh * gw;
            let wl = match window {
                KeyWindow::Full => s,
                KeyWindow::Local { radius, .. } => {
                    (2 * radius + 1).min(gh) * (2 * radius + 1).min(gw)
                }
            };
            // Useful FLOPs: logits 2*P*S*W*D; backward dQ + dK 2 more of the same.
            let g1 = 2.0 * (np * s * wl * hn * d) as f64 / 1e9;
            let gflop = 3.0 * g1;
            let bytes = (2 * n * 2 + 2 * n * 4) as f64; // q, k bf16 in; dq, dk f32 out
                                                        // ms: GFLOP / (TFLOP/s) = ms; bytes / (B/s) * 1e3 = ms.
            let tc_floor = (gflop / 798.0).max(bytes / 3.0e12 * 1e3);
            let simt_floor = (gflop / 67.0).max(bytes / 3.0e12 * 1e3);
            for dtype in [
                "bf16",
                "bf16-g2",
                "bf16-g32",
                "bf16-g16w",
                "bf16-g16s3",
                "bf16-g16",
                "bf16-g16g",
                "bf16-lg0",
                "bf16-ov0",
                "bf16-ov1",
                "bf16-m10",
                "bf16-g2-m10",
                "bf16-z1",
                "bf16-ga",
                "bf16-st",
                "bf16-legacy",
                "f32",
            ] {
                for (var, on) in [
                    ("FASTVMT_AMF_GRAD_GATHER", dtype == "bf16-ga"),
                    ("FASTVMT_AMF_LOGITS_ZX", dtype == "bf16-z1"),
                    ("FASTVMT_AMF_LEGACY", dtype == "bf16-legacy"),
                    ("FASTVMT_AMF_FWD_STORED", dtype == "bf16-st"),
                ] {
                    if on {
                        std::env::set_var(var, "1");
                    } else {
                        std::env::remove_var(var);
                    }
                }
                match dtype {
                    "bf16-g2" | "bf16-g2-m10" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "2"),
                    "bf16-g32" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "32"),
                    "bf16-g16w" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "16w"),
                    "bf16-g16s3" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "16s3"),
                    "bf16-g16" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "16"),
                    "bf16-g16g" => std::env::set_var("FASTVMT_AMF_GRAD_TILE", "16g"),
                    _ => std::env::remove_var("FASTVMT_AMF_GRAD_TILE"),
                }
                match dtype {
                    "bf16-ov0" => std::env::set_var("FASTVMT_AMF_OVERLAP", "0"),
                    "bf16-ov1" => std::env::set_var("FASTVMT_AMF_OVERLAP", "1"),
                    _ => std::env::remove_var("FASTVMT_AMF_OVERLAP"),
                }
                match dtype {
                    "bf16-lg0" => std::env::set_var("FASTVMT_AMF_LOGITS_WG", "0"),
                    _ => std::env::remove_var("FASTVMT_AMF_LOGITS_WG"),
                }
                if !pick("AMF_BENCH_DTYPES", dtype, true) {
                    continue;
                }
                if dtype == "f32" && (sname == "2x" || !mname.contains("query")) {
                    continue; // CUDA-core path: one mode at the small and FastVMT shapes
                }
                let masked = dtype.ends_with("-m10");
                if masked && *mname != "span4 r10 query" {
                    continue;
                }
                let (fwd, fb, phases) = if dtype.starts_with("bf16") {
                    bench(&dev, &spec, &qb, &kb, masked)?
                } else {
                    bench(&dev, &spec, &q32, &k32, masked)?
                };
                let floor = if dtype == "f32" { simt_floor } else { tc_floor };
                println!(
                    "{:<8} {:<20} {:<12} {:>9.3} {:>11.3} {:>8.1} {:>9.1} {:>10.3} {:>10.3} {:>8.1}%",
                    sname,
                    mname,
                    dtype,
                    fwd,
                    fb,
                    gflop,
                    gflop / fb,
                    tc_floor,
                    simt_floor,
                    100.0 * floor / fb
                );
                println!("    fwd+bwd phases (ms per call): {phases}");
                if let Some(o) = out.as_mut() {
                    writeln!(
                        o,
                        "{{\"shape\":\"{sname}\",\"mode\":\"{mname}\",\"dtype\":\"{dtype}\",\"fwd_ms\":{fwd},\"fb_ms\":{fb},\"gflop\":{gflop}}}"
                    )
                    .ok();
                }
            }
        }
    }
    Ok(())
}

/// `masked`: the reference moves only in a block of about 10 % of each frame (the rest scaled
/// below DiTFlow's 0.5-token mask) and the loss uses that mask, as the sampler does by default
/// for `fastvmt`: what a clip with one moving object looks like to the backward.
fn bench<T: Element>(
    dev: &CudaAmf,
    spec: &AmfSpec,
    q: &[T],
    k: &[T],
    masked: bool,
) -> Result<(f64, f64, String), KernelError> {
    let (qd, kd) = (dev.to_device(q)?, dev.to_device(k)?);
    let mut reference = dev.compute_amf_device(spec, &qd, &kd, Readout::Argmax)?;
    let mut ls = LossSpec::fastvmt();
    if masked {
        let (h, w) = (spec.grid_h, spec.grid_w);
        let (y0, x0) = (h / 3, w / 3);
        let (bh, bw) = (
            (h as f64 * 0.32).ceil() as usize,
            (w as f64 * 0.32).ceil() as usize,
        );
        for (i, d) in reference.disp.chunks_mut(2).enumerate() {
            let t = i % (h * w);
            let (y, x) = (t / w, t % w);
            if !((y0..y0 + bh).contains(&y) && (x0..x0 + bw).contains(&x)) {
                d[0] = 0.0;
                d[1] = 0.0;
            } else if d[0].hypot(d[1]) <= 0.5 {
                d[0] = 1.0; // inside the block every token moves
            }
        }
        ls.moving_threshold = Some(0.5);
    }
    let fwd = time(
        dev,
        || {
            dev.compute_amf_device(spec, &qd, &kd, Readout::SoftArgmax)
                .map(|_| ())
        },
        10,
    )?;
    let (mut dq, mut dk) = (dev.zeros(q.len())?, dev.zeros(q.len())?);
    let fb = time(
        dev,
        || {
            dev.loss_and_grad_device(spec, &qd, &kd, &reference, &ls, &mut dq, &mut dk)
                .map(|_| ())
        },
        10,
    )?;
    // Phase breakdown of fwd+bwd (device events between phases; separate runs).
    std::env::set_var("FASTVMT_AMF_PROFILE", "1");
    dev.take_profile();
    for _ in 0..3 {
        dev.loss_and_grad_device(spec, &qd, &kd, &reference, &ls, &mut dq, &mut dk)?;
    }
    std::env::remove_var("FASTVMT_AMF_PROFILE");
    let phases: Vec<String> = dev
        .take_profile()
        .into_iter()
        .map(|(l, ms, _)| format!("{l} {:.3}", ms / 3.0))
        .collect();
    Ok((fwd, fb, phases.join(", ")))
}

fn main() -> ExitCode {
    if let Err(reason) = Backend::cuda_available() {
        println!("CUDA unavailable: {reason}");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
