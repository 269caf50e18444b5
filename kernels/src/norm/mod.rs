//! The DiT block's fp32 islands as single passes: a LayerNorm computed in f32 from 16-bit
//! activations and modulated, and a gated residual — forward only, CPU and CUDA.
//!
//! Wan (diffusers) keeps its norms and modulation in f32 while the activations are f16/bf16:
//! `(norm(h.float()) * (1 + scale) + shift).type_as(h)` and `(h.float() + o * gate).type_as(h)`
//! export as five to eight elementwise nodes over `[B, N, C]` f32 tensors each, about a fifth of
//! a denoiser pass at Wan2.1-1.3B scale (`bench/wan/README.md`). The plugin's
//! `fastvmt.norm.ModulatedLayerNorm` / `GatedResidual` operators call these functions.
//!
//! ## Definition
//! `x`, `h`, `o`: `[B, N, C]` of one element type `T` (f32, f16 or bf16), row-major. The
//! per-channel tables `mul`, `add`, `gate` are f32 `[rows, C]` with `rows` 1 (shared by the
//! batch) or `B` (one row per sample), broadcast over the `N` tokens.
//!
//! ```text
//! ModulatedLayerNorm: y[b,n,:] = T( (x - mean) * rsqrt(var + eps) * mul[b] + add[b] )
//!                     mean, var over the C channels of f32(x[b,n,:]) (biased variance)
//! GatedResidual:      y[b,n,c] = T( f32(h[b,n,c]) + f32(o[b,n,c]) * gate[b,c] )
//! ```
//! Everything in f32; `T(.)` rounds to nearest even. `mul = 1 + scale, add = shift` is Wan's
//! modulated `norm1`/`norm3`/`norm_out`; `mul = weight, add = bias` its affine `norm2`.

pub mod cpu;
pub mod cuda;

use crate::error::KernelError;

/// Sizes of one call: `batch x tokens` rows of `channels` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsShape {
    pub batch: usize,
    pub tokens: usize,
    pub channels: usize,
}

impl RowsShape {
    pub fn numel(&self) -> usize {
        self.batch * self.tokens * self.channels
    }
}

/// A per-channel f32 table broadcast over tokens: `rows` is 1 or the batch.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    pub name: &'static str,
    pub values: &'a [f32],
    pub rows: usize,
}

/// Checks a table against `shape` (typed error naming the table).
pub fn check_table(
    shape: &RowsShape,
    name: &'static str,
    len: usize,
) -> Result<usize, KernelError> {
    let c = shape.channels.max(1);
    let rows = len / c;
    if shape.channels == 0 || !len.is_multiple_of(c) || !(rows == 1 || rows == shape.batch) {
        return Err(KernelError::ShapeMismatch {
            tensor: name,
            expected: shape.channels,
            actual: len,
        });
    }
    Ok(rows)
}

/// Checks a tensor of the call's size.
pub fn check_len(shape: &RowsShape, name: &'static str, len: usize) -> Result<(), KernelError> {
    if len != shape.numel() {
        return Err(KernelError::ShapeMismatch {
            tensor: name,
            expected: shape.numel(),
            actual: len,
        });
    }
    Ok(())
}
