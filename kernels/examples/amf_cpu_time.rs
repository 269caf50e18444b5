//! CPU timing of the AMF at a few small shapes (the back end CI and small models use).
//! `cargo run -p fastvmt-kernels --release --example amf_cpu_time`

use std::time::Instant;

use fastvmt_kernels::*;

fn main() -> Result<(), KernelError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("CPU threads: {threads}");
    let cases = [
        (
            "16 fr 8x8, 4x48, all pairs r3",
            4,
            16,
            8,
            8,
            48,
            PairSet::AllOrdered,
            3,
        ),
        (
            "16 fr 12x12, 4x48, all pairs r3",
            4,
            16,
            12,
            12,
            48,
            PairSet::AllOrdered,
            3,
        ),
        (
            "16 fr 12x12, 4x48, span4 r3",
            4,
            16,
            12,
            12,
            48,
            PairSet::Forward { span: 4 },
            3,
        ),
    ];
    for (name, h, f, gh, gw, d, pairs, r) in cases {
        let spec = AmfSpec {
            heads: h,
            frames: f,
            grid_h: gh,
            grid_w: gw,
            head_dim: d,
            tau: 2.0,
            pairs,
            window: KeyWindow::Local {
                radius: r,
                centre: WindowCentre::Query,
            },
        };
        let n = h * f * gh * gw * d;
        let mut x = 0x12345678u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 3.0 - 1.5
        };
        let q: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let k: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let t = Instant::now();
        let reference = compute_amf(&Backend::Cpu, &q, &k, &spec, Readout::Argmax)?;
        let fwd = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let g = amf_loss_and_grad(
            &Backend::Cpu,
            &q,
            &k,
            &spec,
            &reference,
            &LossSpec::fastvmt(),
        )?;
        let fb = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{name:<34} fwd {fwd:8.2} ms  fwd+bwd {fb:8.2} ms  (loss {:.3})",
            g.loss
        );
    }
    Ok(())
}
