//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in an AMF call. No function of this crate panics on bad input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// A size in [`crate::AmfSpec`] is zero.
    #[error("spec field `{field}` must be > 0")]
    ZeroDimension { field: &'static str },
    /// A tensor has the wrong number of elements for the spec (AMF: `[heads, frames,
    /// grid_h*grid_w, head_dim]`; attention: see `attention::AttentionSpec::numel`).
    #[error("tensor `{tensor}` has {actual} elements, the spec needs {expected}")]
    ShapeMismatch {
        tensor: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The sizes overflow `usize` (or the CUDA back end's 32-bit indexing).
    #[error("sizes too large: {0}")]
    TooLarge(String),
    /// `KeyWindow::Local { radius: 0, .. }`: a 1x1 window has no soft-argmax and no gradient.
    #[error("window radius 0 is not allowed (a 1x1 window carries no motion and no gradient)")]
    ZeroRadius,
    /// A parameter is out of its domain (tau not finite, tile size 0, negative weight, ...).
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// The pair set resolves to no pair (e.g. one frame, or `Forward { span: 1 }`).
    #[error("the pair set is empty for {frames} frame(s)")]
    EmptyPairSet { frames: usize },
    /// An explicit pair names a frame that does not exist.
    #[error("pair ({i}, {j}) is out of range for {frames} frames")]
    PairOutOfRange { i: usize, j: usize, frames: usize },
    /// An input holds NaN or an infinity.
    #[error("tensor `{tensor}` holds a non-finite value at flat index {index}")]
    NonFinite { tensor: &'static str, index: usize },
    /// The reference field does not match the spec (pairs, grid or length).
    #[error("reference AMF does not match the spec: {0}")]
    ReferenceMismatch(String),
    /// The CUDA back end cannot run here; the string says why.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    CudaDriver(String),
    /// NVRTC could not compile the kernels.
    #[error("NVRTC compilation failed: {0}")]
    Nvrtc(String),
}
