//! The flow-matching time grid: `sigma(s) = shift*s / (1 + (shift-1)*s)` on `s = 1 - i/steps`,
//! from pure noise (1) to data (0), as Wan's scheduler with `shift`.

pub fn sigmas(steps: usize, shift: f32) -> Vec<f32> {
    (0..=steps)
        .map(|i| {
            let s = 1.0 - i as f32 / steps as f32;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .collect()
}

/// The first step for a denoising strength: the first sigma at or below `denoise`.
pub fn start_index(sigmas: &[f32], denoise: f32) -> usize {
    if denoise >= 1.0 {
        return 0;
    }
    let last = sigmas.len().saturating_sub(2);
    sigmas
        .iter()
        .position(|&s| s <= denoise + 1e-6)
        .unwrap_or(last)
        .min(last)
}
