//! CPU implementation of [`super`]'s operations, one row after another.

use super::{check_len, check_table, RowsShape};
use crate::element::Element;
use crate::error::KernelError;

/// `ModulatedLayerNorm` (see [`super`]): writes `out`.
pub fn modulated_layer_norm<T: Element>(
    x: &[T],
    shape: RowsShape,
    mul: &[f32],
    add: &[f32],
    eps: f32,
    out: &mut [T],
) -> Result<(), KernelError> {
    check_len(&shape, "x", x.len())?;
    check_len(&shape, "out", out.len())?;
    let mul_rows = check_table(&shape, "mul", mul.len())?;
    let add_rows = check_table(&shape, "add", add.len())?;
    let c = shape.channels;
    let mut row = vec![0f32; c];
    for (r, (xr, yr)) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).enumerate() {
        let b = r / shape.tokens.max(1);
        for (v, &e) in row.iter_mut().zip(xr) {
            *v = e.to_f32();
        }
        let mean = row.iter().sum::<f32>() / c as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        let m = &mul[(if mul_rows == 1 { 0 } else { b }) * c..][..c];
        let a = &add[(if add_rows == 1 { 0 } else { b }) * c..][..c];
        for (j, y) in yr.iter_mut().enumerate() {
            *y = T::from_f32((row[j] - mean) * rstd * m[j] + a[j]);
        }
    }
    Ok(())
}

/// `GatedResidual` (see [`super`]): writes `out`.
pub fn gated_residual<T: Element>(
    h: &[T],
    o: &[T],
    gate: &[f32],
    shape: RowsShape,
    out: &mut [T],
) -> Result<(), KernelError> {
    check_len(&shape, "h", h.len())?;
    check_len(&shape, "o", o.len())?;
    check_len(&shape, "out", out.len())?;
    let gate_rows = check_table(&shape, "gate", gate.len())?;
    let c = shape.channels;
    let per_sample = shape.tokens * c;
    for (i, y) in out.iter_mut().enumerate() {
        let b = if gate_rows == 1 { 0 } else { i / per_sample };
        *y = T::from_f32(h[i].to_f32() + o[i].to_f32() * gate[b * c + i % c]);
    }
    Ok(())
}
