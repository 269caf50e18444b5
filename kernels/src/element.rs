//! Input element types: f32, f16 and bf16 (`half`). All arithmetic happens in f32.

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A floating-point input element. Sealed: implemented for `f32`, `half::f16`, `half::bf16`.
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + 'static + cudarc::driver::DeviceRepr
{
    /// Suffix of the CUDA entry points for this type (`f32`, `f16`, `bf16`), candle-style.
    const CUDA_SUFFIX: &'static str;
    /// Convert to f32 (exact for all three types).
    fn to_f32(self) -> f32;
    /// Convert from f32 (round to nearest even).
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const CUDA_SUFFIX: &'static str = "f32";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const CUDA_SUFFIX: &'static str = "f16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const CUDA_SUFFIX: &'static str = "bf16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
