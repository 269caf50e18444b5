//! # fastvmt-kernels — attention motion flow (AMF) and its loss, CPU and CUDA
//!
//! Owns the motion signal of FastVMT/DiTFlow guidance: from the query/key tensors of one
//! attention block it computes, for every selected frame pair, where each query token "looks"
//! in the other frame (a displacement field), a weighted MSE loss against a reference field,
//! and the gradients of that loss w.r.t. Q and K. It does not own the model, the sampler or
//! the optimiser (see `plugin/`).
//!
//! ## Definition
//! Q, K: `[H, F, S, d]` row-major, `S = h*w` tokens per frame in raster order
//! (`token = row*w + col`). For a pair `(i, j)` and query token `p` of frame i, over the keys
//! `k` in the window `W(p)` of frame j:
//!
//! ```text
//! l(p,k)  = tau / sqrt(d) * (1/H) * sum_h <Q[h,i,p,:], K[h,j,k,:]>     (head-averaged logits)
//! a(p,k)  = softmax_{k in W(p)} l(p,k)
//! disp(p) = sum_k a(p,k) * pos(k) - pos(p)          (SoftArgmax, pos = (row, col))
//!         | pos(argmax_k l(p,k)) - pos(p)           (Argmax; first in raster order on ties)
//! ```
//!
//! Windows ([`KeyWindow`]): `Full` = all S keys; `Local { radius r, centre }` = a
//! `min(2r+1,h) x min(2r+1,w)` rectangle whose start is `clamp(centre - r, 0, h - wh)` per
//! axis (shifted inside the frame like neighbourhood attention; never wrapped or shrunk). A
//! window at least as large as the frame is `Full`. Centre = the query's own position, or
//! (`CoarseTiles`) the rounded soft-argmax over all keys of the tile's centre query, shared
//! by the tile and treated as a constant (no gradient). `radius = 0` is an error.
//!
//! Pairs ([`PairSet`]): `AllOrdered` (DiTFlow), `Forward { span }` (FastVMT: `1 <= j-i <= span-1`;
//! the self pair carries no motion and is skipped), or `Explicit`. An empty set is an error.
//!
//! Loss ([`LossSpec`]), with `w_P` the pair weight and `m` the mask (`|ref| > threshold`, or 1):
//!
//! ```text
//! L = sum_{P,p} w_P m_{P,p} |disp(P,p) - ref(P,p)|^2 / (2 * sum_{P,p} w_P m_{P,p})
//! ```
//!
//! i.e. the weighted mean of the squared error over both components; `L = 0` with zero
//! gradients when the mask keeps nothing. The loss always uses the soft-argmax. Gradients are
//! exact (f32) for the soft-argmax path; inputs may be f32, f16 or bf16, accumulation is f32.
//!
//! ## Back ends
//! [`Backend::Cpu`] is always available. [`Backend::Cuda`] compiles `src/cuda/amf.cu` with NVRTC
//! once per device (cached for the process, see [`cuda::CudaAmf::get`]) and reports
//! [`KernelError::CudaUnavailable`] with the reason on machines without a driver.

pub mod attention;
mod cpu;
pub mod cuda;
mod element;
mod error;
pub mod latent;
pub mod norm;
mod spec;

pub use element::Element;
pub use error::KernelError;
pub use spec::{
    resolve_pairs, AmfField, AmfSpec, Backend, KeyWindow, LossAndGrad, LossSpec, PairSet,
    PairWeights, Readout, WindowCentre,
};

impl AmfSpec {
    /// FastVMT's local setting: forward pairs `span`, query-centred or coarse-tile windows.
    pub fn fastvmt(
        heads: usize,
        frames: usize,
        grid_h: usize,
        grid_w: usize,
        head_dim: usize,
    ) -> Self {
        AmfSpec {
            heads,
            frames,
            grid_h,
            grid_w,
            head_dim,
            tau: 2.0,
            pairs: PairSet::Forward { span: 4 },
            window: KeyWindow::Local {
                radius: 10,
                centre: WindowCentre::CoarseTiles {
                    tile_h: 3,
                    tile_w: 4,
                },
            },
        }
    }
}

impl LossSpec {
    /// FastVMT's loss: pair weights 1 -> 0.8 by temporal offset, no mask.
    pub fn fastvmt() -> Self {
        LossSpec {
            pair_weights: PairWeights::LinearDecay {
                first: 1.0,
                last: 0.8,
            },
            moving_threshold: None,
        }
    }
}

/// Compute the AMF of `(q, k)` (`[heads, frames, grid_h*grid_w, head_dim]` each).
pub fn compute_amf<T: Element>(
    backend: &Backend,
    q: &[T],
    k: &[T],
    spec: &AmfSpec,
    readout: Readout,
) -> Result<AmfField, KernelError> {
    let plan = spec::plan(spec, q, k)?;
    let disp = match backend {
        Backend::Cpu => {
            let pre = cpu::prepare(&plan, q, k);
            cpu::forward(&plan, &pre, readout)
        }
        Backend::Cuda { device } => cuda::CudaAmf::get(*device)?.forward(&plan, q, k, readout)?,
    };
    Ok(AmfField {
        pairs: plan.pairs,
        grid_h: spec.grid_h,
        grid_w: spec.grid_w,
        disp,
    })
}

/// The loss of the soft-argmax AMF of `(q, k)` against `reference` and its gradients
/// `dL/dQ`, `dL/dK` (f32, same layout as the inputs).
pub fn amf_loss_and_grad<T: Element>(
    backend: &Backend,
    q: &[T],
    k: &[T],
    spec: &AmfSpec,
    reference: &AmfField,
    loss: &LossSpec,
) -> Result<LossAndGrad, KernelError> {
    let plan = spec::plan(spec, q, k)?;
    let lp = spec::loss_plan(&plan, reference, loss)?;
    let numel = plan.numel();
    if lp.kept == 0 {
        return Ok(LossAndGrad {
            loss: 0.0,
            dq: vec![0.0; numel],
            dk: vec![0.0; numel],
            kept: 0,
        });
    }
    let (loss, dq, dk) = match backend {
        Backend::Cpu => {
            let pre = cpu::prepare(&plan, q, k);
            cpu::loss_and_grad(&plan, &pre, &reference.disp, &lp)
        }
        Backend::Cuda { device } => {
            cuda::CudaAmf::get(*device)?.loss_and_grad(&plan, q, k, &reference.disp, &lp)?
        }
    };
    Ok(LossAndGrad {
        loss,
        dq,
        dk,
        kept: lp.kept,
    })
}
