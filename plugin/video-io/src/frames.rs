//! [`Frames`]: decoded video held as `f32` RGB, and the size guards that keep
//! a hostile or mistaken input from asking for an absurd allocation.

use crate::VideoError;

/// Largest width or height accepted anywhere in this crate, in pixels.
pub const MAX_SIDE: usize = 16_384;

/// Largest `data` buffer accepted anywhere in this crate, in bytes of `f32` (4 GiB).
pub const MAX_BYTES: u64 = 4 << 30;

/// A clip of RGB frames.
///
/// `data` is `[frames, height, width, 3]`, row-major, each value in `0..=1`
/// (values outside are clamped when written; NaN and infinities are refused).
#[derive(Clone, Debug, PartialEq)]
pub struct Frames {
    pub data: Vec<f32>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f32,
}

impl Frames {
    /// Builds a clip and checks it with [`Frames::validate`].
    pub fn new(
        data: Vec<f32>,
        frames: usize,
        height: usize,
        width: usize,
        fps: f32,
    ) -> Result<Frames, VideoError> {
        let frames = Frames {
            data,
            frames,
            height,
            width,
            fps,
        };
        frames.validate()?;
        Ok(frames)
    }

    /// Number of `f32` values in one frame (`height * width * 3`).
    pub fn frame_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// The `i`-th frame as `[height, width, 3]`.
    ///
    /// # Panics
    /// When `i >= self.frames` or `data` is shorter than the dimensions say
    /// (call [`Frames::validate`] first on untrusted values).
    pub fn frame(&self, i: usize) -> &[f32] {
        assert!(
            i < self.frames,
            "frame {i} out of range ({} frames)",
            self.frames
        );
        let len = self.frame_len();
        &self.data[i * len..(i + 1) * len]
    }

    /// Checks dimensions (non-zero, at most [`MAX_SIDE`] per side, at most
    /// [`MAX_BYTES`] in all), that `data.len()` matches them, that `fps` is
    /// finite and positive, and that no value is NaN or infinite (out-of-range
    /// finite values are allowed: writers clamp them to `0..=1`).
    pub fn validate(&self) -> Result<(), VideoError> {
        let invalid = |reason: String| VideoError::InvalidFrames { reason };
        let expected = checked_len(self.frames, self.height, self.width).map_err(invalid)?;
        if self.data.len() != expected {
            return Err(invalid(format!(
                "data holds {} values but {} frames of {}x{} RGB need {expected}",
                self.data.len(),
                self.frames,
                self.width,
                self.height
            )));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(invalid(format!(
                "fps is {} (must be finite and positive)",
                self.fps
            )));
        }
        if let Some(at) = self.data.iter().position(|v| !v.is_finite()) {
            let pixel = at / 3;
            let per_frame = self.height * self.width;
            let (frame, rest) = (pixel / per_frame, pixel % per_frame);
            return Err(invalid(format!(
                "frame {frame} holds {} at row {}, column {} (NaN and infinities are refused, not clamped)",
                self.data[at],
                rest / self.width,
                rest % self.width
            )));
        }
        Ok(())
    }
}

/// Number of `f32` values of `frames` RGB frames of `height` x `width`,
/// refusing zero or oversized dimensions.
pub(crate) fn checked_len(frames: usize, height: usize, width: usize) -> Result<usize, String> {
    if frames == 0 || height == 0 || width == 0 {
        return Err(format!(
            "{frames} frames of {width}x{height}: every dimension must be at least 1"
        ));
    }
    check_side(width, height)?;
    let bytes = (frames as u64)
        .checked_mul(height as u64 * width as u64 * 3 * 4)
        .filter(|b| *b <= MAX_BYTES)
        .ok_or_else(|| {
            format!(
                "{frames} frames of {width}x{height} need {} of f32 (limit {})",
                gib(frames as f64 * height as f64 * width as f64 * 12.0),
                gib(MAX_BYTES as f64)
            )
        })?;
    Ok((bytes / 4) as usize)
}

/// Refuses a frame side above [`MAX_SIDE`].
pub(crate) fn check_side(width: usize, height: usize) -> Result<(), String> {
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "frames of {width}x{height} exceed the limit of {MAX_SIDE} pixels per side"
        ));
    }
    Ok(())
}

/// Formats a byte count as GiB for messages.
pub(crate) fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// `v` clamped to `0..=1` and rounded to 8 bits.
pub(crate) fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}
