//! CPU implementation of [`super`]'s updates: plain single-threaded loops, written as the
//! definition reads (Rust never contracts `a * b + c` into a fused multiply-add), so the CUDA
//! kernels can match them bit for bit.

use super::{check_len, AdamWStep, VecStats};
use crate::error::KernelError;

/// `out = wa * a + wb * b` (see [`super`]); `a`, `b` as long as `out`.
pub fn lerp(out: &mut [f32], a: &[f32], b: &[f32], wa: f32, wb: f32) -> Result<(), KernelError> {
    check_len("a", out.len(), a.len())?;
    check_len("b", out.len(), b.len())?;
    for ((o, &ai), &bi) in out.iter_mut().zip(a).zip(b) {
        *o = wa * ai + wb * bi;
    }
    Ok(())
}

/// One Euler step `x += dt * v`, `v` the velocity or, with `cfg = Some(s)`, the guided
/// velocity from `velocity = [cond; uncond]` (`2 * x.len()` values; see [`super`]).
pub fn cfg_euler(
    x: &mut [f32],
    velocity: &[f32],
    cfg: Option<f32>,
    dt: f32,
) -> Result<(), KernelError> {
    let n = x.len();
    match cfg {
        None => {
            check_len("velocity", n, velocity.len())?;
            for (xi, &v) in x.iter_mut().zip(velocity) {
                *xi += dt * v;
            }
        }
        Some(s) => {
            check_len("velocity", 2 * n, velocity.len())?;
            let (cond, uncond) = velocity.split_at(n);
            for ((xi, &c), &u) in x.iter_mut().zip(cond).zip(uncond) {
                let v = u + s * (c - u);
                *xi += dt * v;
            }
        }
    }
    Ok(())
}

/// One AdamW step on `x` with moments `m`, `v` (updated in place; see [`super`]); `grad`, `m`,
/// `v` as long as `x`.
pub fn adamw(
    x: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: &AdamWStep,
) -> Result<(), KernelError> {
    let n = x.len();
    check_len("grad", n, grad.len())?;
    check_len("m", n, m.len())?;
    check_len("v", n, v.len())?;
    let one_minus_beta1 = 1.0 - step.beta1;
    let one_minus_beta2 = 1.0 - step.beta2;
    for i in 0..n {
        let g = grad[i];
        m[i] = step.beta1 * m[i] + one_minus_beta1 * g;
        v[i] = step.beta2 * v[i] + (one_minus_beta2 * g) * g;
        let update =
            (m[i] / step.bias_correction1) / ((v[i] / step.bias_correction2).sqrt() + step.eps);
        x[i] -= step.lr * (update + step.weight_decay * x[i]);
    }
    Ok(())
}

/// Non-finite count of `a` and the f64 sums of a cosine with `b` (see [`super`]); `b` as long
/// as `a`.
pub fn stats(a: &[f32], b: Option<&[f32]>) -> Result<VecStats, KernelError> {
    if let Some(b) = b {
        check_len("b", a.len(), b.len())?;
    }
    let mut out = VecStats {
        nonfinite: a.iter().filter(|v| !v.is_finite()).count() as u64,
        ..VecStats::default()
    };
    for &ai in a {
        out.norm_a2 += ai as f64 * ai as f64;
    }
    if let Some(b) = b {
        for (&ai, &bi) in a.iter().zip(b) {
            out.dot += ai as f64 * bi as f64;
            out.norm_b2 += bi as f64 * bi as f64;
        }
    }
    Ok(out)
}
