//! AdamW on a latent buffer (decoupled weight decay, bias-corrected moments), as torch's. The
//! update itself is `fastvmt_kernels::latent::adamw` (CPU or CUDA, bit-identical).

use fastvmt_kernels::latent::AdamWStep;

use super::latents::{Buf, Space};
use super::SampleError;

pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    m: Buf,
    v: Buf,
    t: i32,
}

impl AdamW {
    /// Moments for a latent of `shape` in `space`, zeroed.
    pub fn new(space: &Space<'_>, shape: &[usize], weight_decay: f32) -> Result<Self, SampleError> {
        let mut opt = Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: space.alloc(shape)?,
            v: space.alloc(shape)?,
            t: 0,
        };
        opt.reset(space)?;
        Ok(opt)
    }

    /// Back to step 0 with zero moments (a new optimisation on the same buffers).
    pub fn reset(&mut self, space: &Space<'_>) -> Result<(), SampleError> {
        space.zero(&mut self.m)?;
        space.zero(&mut self.v)?;
        self.t = 0;
        Ok(())
    }

    pub fn step(
        &mut self,
        space: &Space<'_>,
        x: &mut Buf,
        grad: &Buf,
        lr: f32,
    ) -> Result<(), SampleError> {
        self.t += 1;
        let step = AdamWStep {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias_correction1: 1.0 - self.beta1.powi(self.t),
            bias_correction2: 1.0 - self.beta2.powi(self.t),
        };
        space.adamw(x, grad, &mut self.m, &mut self.v, &step)
    }
}
