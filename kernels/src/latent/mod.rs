//! Elementwise sampler updates on flat f32 latents — CPU and CUDA, one definition.
//!
//! The plugin's sampler keeps its latents on the device (ONNX Runtime device tensors) across
//! denoising steps and applies these updates there; its host path calls [`cpu`]. Both back ends
//! evaluate the same f32 expressions in the same order with no fused multiply-add, so for
//! finite results `lerp`, `cfg_euler` and `adamw` are bit-identical across them (NaN payloads
//! may differ). `stats` sums in f64 in a different order on the device (last-bits differences).
//!
//! ## Definition
//! f32 arithmetic, evaluated in exactly this order, for each element `i`:
//!
//! ```text
//! lerp:      out[i] = (wa * a[i]) + (wb * b[i])
//! cfg_euler: n = x.len()
//!            cfg None:    velocity.len() == n,  v = velocity[i]
//!            cfg Some(s): velocity.len() == 2n, c = velocity[i], u = velocity[n + i],
//!                         v = u + s * (c - u)
//!            x[i] = x[i] + dt * v
//! adamw:     g = grad[i]
//!            m[i] = beta1 * m[i] + (1 - beta1) * g
//!            v[i] = beta2 * v[i] + ((1 - beta2) * g) * g
//!            update = (m[i] / bc1) / (sqrt(v[i] / bc2) + eps)
//!            x[i] = x[i] - lr * (update + weight_decay * x[i])
//!            (1 - beta1) and (1 - beta2) are single f32 subtractions, done once per call.
//! stats:     nonfinite = #{i : a[i] is NaN or infinite}
//!            dot = sum f64(a[i]) * f64(b[i]),  norm_a2 = sum f64(a[i])^2,
//!            norm_b2 = sum f64(b[i])^2           (f64 products and sums; 0 without b)
//!            Non-finite values enter the sums as they are.
//! ```
//!
//! Length mismatches are [`KernelError::ShapeMismatch`] naming the argument; the raw CUDA
//! entries (device pointers) trust their callers' sizes, as documented per function.

pub mod cpu;
pub mod cuda;

use crate::error::KernelError;

/// AdamW hyper-parameters of one step (torch's AdamW; bias corrections computed by the caller as
/// `1 - beta^t` in f32 with `powi`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
}

/// What `stats` measured: non-finite count of `a`, and f64 sums for a cosine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VecStats {
    pub nonfinite: u64,
    pub dot: f64,
    pub norm_a2: f64,
    pub norm_b2: f64,
}

/// `actual == expected`, else a typed error naming `tensor`.
fn check_len(tensor: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if actual != expected {
        return Err(KernelError::ShapeMismatch {
            tensor,
            expected,
            actual,
        });
    }
    Ok(())
}
