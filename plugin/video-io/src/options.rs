//! [`LoadOptions`]: which frames to keep, at what size and frame rate.

use std::path::Path;

use crate::frames::check_side;
use crate::VideoError;

/// How a frame is brought to [`LoadOptions::size`] when the aspect ratio differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fit {
    /// Resize to the exact size, distorting the aspect ratio if needed.
    #[default]
    Stretch,
    /// Cut the largest centred region of the target aspect ratio, then resize.
    Crop,
}

/// What [`crate::load_video`] returns out of a source.
///
/// Frames kept are `start, start + stride, start + 2 * stride, …`, at most
/// `max_frames` of them.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// Index of the first frame kept (0-based).
    pub start: usize,
    /// Keep at most this many frames; `None` keeps all. `Some(0)` is refused.
    pub max_frames: Option<usize>,
    /// Keep every `stride`-th frame; at least 1.
    pub stride: usize,
    /// Resize every frame to `(width, height)` (triangle filter); `None` keeps the source size.
    pub size: Option<(usize, usize)>,
    /// How to handle a differing aspect ratio when `size` is set.
    pub fit: Fit,
    /// Frame rate of the result. `None` takes the source's (GIF frame delays,
    /// ffprobe for movies, 8 for frame folders and stills) divided by `stride`,
    /// so that the clip keeps its duration.
    pub fps: Option<f32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            start: 0,
            max_frames: None,
            stride: 1,
            size: None,
            fit: Fit::Stretch,
            fps: None,
        }
    }
}

impl LoadOptions {
    /// Refuses stride 0, `max_frames` 0, zero or oversized `size`, and a
    /// non-finite or non-positive `fps`.
    pub fn validate(&self, path: &Path) -> Result<(), VideoError> {
        let invalid = |reason: String| VideoError::InvalidOptions {
            path: path.to_path_buf(),
            reason,
        };
        if self.stride == 0 {
            return Err(invalid("stride is 0 (must be at least 1)".into()));
        }
        if self.max_frames == Some(0) {
            return Err(invalid(
                "max_frames is 0 (must be at least 1, or None for all frames)".into(),
            ));
        }
        if let Some((w, h)) = self.size {
            if w == 0 || h == 0 {
                return Err(invalid(format!(
                    "size {w}x{h} has a zero side (both must be at least 1)"
                )));
            }
            check_side(w, h).map_err(invalid)?;
        }
        if let Some(fps) = self.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(invalid(format!(
                    "fps is {fps} (must be finite and positive)"
                )));
            }
        }
        Ok(())
    }

    /// What to do with source frame `index`, given `kept` frames kept so far.
    pub(crate) fn select(&self, index: usize, kept: usize) -> Select {
        if self.max_frames.is_some_and(|max| kept >= max) {
            return Select::Done;
        }
        if index >= self.start && (index - self.start).is_multiple_of(self.stride) {
            Select::Keep
        } else {
            Select::Skip
        }
    }

    /// The "no frames" explanation when nothing was kept out of `total` source frames.
    pub(crate) fn nothing_kept(&self, total: usize) -> String {
        if total == 0 {
            "the source holds no frames".into()
        } else {
            let plural = if total == 1 { "" } else { "s" };
            format!(
                "start {} is past the last frame ({total} frame{plural})",
                self.start
            )
        }
    }

    /// The frame rate of the result given the source's.
    pub(crate) fn output_fps(&self, source_fps: f32) -> f32 {
        self.fps.unwrap_or(source_fps / self.stride as f32)
    }
}

/// Verdict of [`LoadOptions::select`] on one source frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Select {
    Skip,
    Keep,
    /// `max_frames` reached: stop decoding.
    Done,
}
