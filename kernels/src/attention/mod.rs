//! Fused attention — dense or a 3D local window — forward and backward, CPU and CUDA.
//!
//! The DiT's attention as one operator, so that neither ONNX Runtime nor the guidance
//! gradient ever materialises an `N x N` matrix, and so that a local window is compute
//! saved, not a mask. The ONNX Runtime custom operators `fastvmt.Attention` /
//! `fastvmt.AttentionGrad` (in `plugin/`) call these functions; the exporter in `onnx/`
//! emits the nodes.
//!
//! ## Definition
//! Q `[B, H, Nq, d]`, K `[B, H, Nk, d]`, V `[B, H, Nk, dv]`, row-major. With the visible set
//! `W(q)` of query `q` (see [`AttentionMask`]) and `s = scale`:
//!
//! ```text
//! l(q,k)  = s * <Q[q,:], K[k,:]>                 for k in W(q)
//! lse(q)  = log sum_{k in W(q)} exp l(q,k)       (natural log, f32)
//! O[q,:]  = sum_{k in W(q)} exp(l(q,k) - lse(q)) * V[k,:]
//! ```
//!
//! Backward (flash-attention style, probabilities recomputed from `lse`):
//! `P = exp(l - lse)`, `dV = P^T dO`, `dP = dO V^T`, `delta(q) = <dO[q], O[q]>`,
//! `dS = P * (dP - delta)`, `dQ = s * dS K`, `dK = s * dS^T Q`.
//!
//! ## Masks
//! `Dense`: every key. `Local(w)`: queries are the `F*h*w` video tokens in raster order
//! (`token = (f*h + row)*w + col`, so `Nq == F*h*w`); keys are the same video tokens followed by
//! `Nk - F*h*w >= 0` extra tokens (e.g. text) that every query sees. A video key is visible
//! when it lies in the query's window on all three axes. Per axis with extent `E`, radius `r`
//! and query coordinate `c`, the window is `[start, start + size)` with
//! `size = min(2r + 1, E)` and `start = clamp(c - r, 0, E - size)`: shifted inside the video
//! at the borders, as in neighbourhood attention (never wrapped, never shrunk). So every query
//! sees exactly `min(2rt+1,F) * min(2rs+1,h) * min(2rs+1,w)` video keys. A radius at least as
//! large as the extent makes that axis dense.
//!
//! ## Types
//! Q, K, V, O, dO, dQ, dK, dV share one element type (f32, f16 or bf16); `lse` is always f32;
//! all accumulation is f32.

pub mod cpu;
pub mod cuda;

use crate::error::KernelError;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    /// Query tokens `Nq`.
    pub q_len: usize,
    /// Key/value tokens `Nk`.
    pub kv_len: usize,
    /// Q/K feature size `d`.
    pub head_dim: usize,
    /// V/O feature size `dv` (equal to `d` in every model we export).
    pub v_dim: usize,
}

/// A 3D neighbourhood over the video-token grid (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalWindow {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Frames either side of the query's frame.
    pub temporal_radius: usize,
    /// Rows and columns either side of the query's position.
    pub spatial_radius: usize,
}

/// Which keys each query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMask {
    Dense,
    Local(LocalWindow),
}

/// One attention call: sizes, mask and logit scale (usually `1/sqrt(d)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    pub shape: AttentionShape,
    pub mask: AttentionMask,
    pub scale: f32,
}

/// `[start, start + size)` of one window axis (see the module docs).
#[inline]
pub fn window_axis(coord: usize, radius: usize, extent: usize) -> (usize, usize) {
    let size = (2 * radius + 1).min(extent);
    let start = coord.saturating_sub(radius).min(extent - size);
    (start, size)
}

impl AttentionSpec {
    /// Dense attention with the default scale `1/sqrt(head_dim)`.
    pub fn dense(shape: AttentionShape) -> Self {
        AttentionSpec {
            shape,
            mask: AttentionMask::Dense,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
        }
    }

    /// Element counts of Q, K, V and O (LSE has `batch * heads * q_len`).
    pub fn numel(&self) -> Result<[usize; 4], KernelError> {
        let s = &self.shape;
        let too_large = || KernelError::TooLarge(format!("{s:?}"));
        let bh = s.batch.checked_mul(s.heads).ok_or_else(too_large)?;
        let m = |a: usize, b: usize| {
            bh.checked_mul(a)
                .and_then(|x| x.checked_mul(b))
                .ok_or_else(too_large)
        };
        Ok([
            m(s.q_len, s.head_dim)?,
            m(s.kv_len, s.head_dim)?,
            m(s.kv_len, s.v_dim)?,
            m(s.q_len, s.v_dim)?,
        ])
    }

    /// Rows of `lse`: `batch * heads * q_len`.
    pub fn lse_len(&self) -> usize {
        self.shape.batch * self.shape.heads * self.shape.q_len
    }

    /// Checks sizes, scale and mask before any back end runs.
    pub fn validate(&self) -> Result<(), KernelError> {
        let s = &self.shape;
        for (field, v) in [
            ("batch", s.batch),
            ("heads", s.heads),
            ("q_len", s.q_len),
            ("kv_len", s.kv_len),
            ("head_dim", s.head_dim),
            ("v_dim", s.v_dim),
        ] {
            if v == 0 {
                return Err(KernelError::ZeroDimension { field });
            }
        }
        if !self.scale.is_finite() || self.scale <= 0.0 {
            return Err(KernelError::InvalidParameter {
                name: "scale",
                reason: format!("must be finite and > 0, got {}", self.scale),
            });
        }
        self.numel()?;
        if let AttentionMask::Local(w) = self.mask {
            for (field, v) in [
                ("frames", w.frames),
                ("height", w.height),
                ("width", w.width),
            ] {
                if v == 0 {
                    return Err(KernelError::ZeroDimension { field });
                }
            }
            let video = w
                .frames
                .checked_mul(w.height)
                .and_then(|x| x.checked_mul(w.width))
                .ok_or_else(|| KernelError::TooLarge(format!("{w:?}")))?;
            if s.q_len != video {
                return Err(KernelError::InvalidParameter {
                    name: "q_len",
                    reason: format!(
                        "a local window needs one query per video token: q_len {} != frames*height*width {}x{}x{} = {video}",
                        s.q_len, w.frames, w.height, w.width
                    ),
                });
            }
            if s.kv_len < video {
                return Err(KernelError::InvalidParameter {
                    name: "kv_len",
                    reason: format!(
                        "a local window needs the {video} video keys first: kv_len is {}",
                        s.kv_len
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether query `q` sees key `k` (the definition every back end must match).
    pub fn visible(&self, q: usize, k: usize) -> bool {
        match self.mask {
            AttentionMask::Dense => true,
            AttentionMask::Local(w) => {
                let hw = w.height * w.width;
                if k >= w.frames * hw {
                    return true;
                }
                let (qf, qy, qx) = (q / hw, (q % hw) / w.width, q % w.width);
                let (kf, ky, kx) = (k / hw, (k % hw) / w.width, k % w.width);
                let inside = |c: usize, kc: usize, r: usize, e: usize| {
                    let (start, size) = window_axis(c, r, e);
                    kc >= start && kc < start + size
                };
                inside(qf, kf, w.temporal_radius, w.frames)
                    && inside(qy, ky, w.spatial_radius, w.height)
                    && inside(qx, kx, w.spatial_radius, w.width)
            }
        }
    }
}
