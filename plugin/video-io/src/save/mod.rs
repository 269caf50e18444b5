//! [`save_video`]: validates, encodes into a hidden temporary in the target
//! folder, then publishes it under the next free numbered name.

mod atomic;
mod gif;
mod mp4;
mod png;

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Frames, VideoError};
use atomic::TempOutput;

/// Output container of [`save_video`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoFormat {
    /// Animated GIF, looping forever, one NeuQuant palette per frame.
    Gif,
    /// A folder `prefix_NNNNN/` of `frame_00000.png`, … (8-bit RGB, lossless to 1/255).
    PngFrames,
    /// H.264 (libx264, yuv420p) MP4 through the `ffmpeg` program.
    Mp4,
}

impl VideoFormat {
    /// What follows `prefix_NNNNN` in the output name (`""` for the frame folder).
    pub fn extension(self) -> &'static str {
        match self {
            VideoFormat::Gif => ".gif",
            VideoFormat::PngFrames => "",
            VideoFormat::Mp4 => ".mp4",
        }
    }
}

/// Writes `frames` to `dir` as `prefix_00001.gif` (or `.mp4`, or the folder
/// `prefix_00001/`), taking the next number after the highest existing
/// `prefix_NNNNN…` entry and never overwriting anything.
///
/// The output appears under its final name only once complete and synced:
/// it is written to a hidden temporary beside it first. `should_cancel` is
/// polled between frames; when it returns true, or on any error, the
/// temporary is removed ([`VideoError::Cancelled`] on cancel). `dir` is
/// created if missing. Values outside `0..=1` are clamped; NaN or infinite
/// values are refused ([`Frames::validate`]).
pub fn save_video(
    frames: &Frames,
    dir: &Path,
    prefix: &str,
    format: VideoFormat,
    should_cancel: &dyn Fn() -> bool,
) -> Result<PathBuf, VideoError> {
    frames.validate()?;
    check_prefix(prefix)?;
    fs::create_dir_all(dir).map_err(VideoError::io(dir, "cannot create output folder"))?;
    if should_cancel() {
        return Err(VideoError::Cancelled);
    }
    let temp = match format {
        VideoFormat::PngFrames => TempOutput::new_dir(dir, prefix)?,
        VideoFormat::Gif | VideoFormat::Mp4 => TempOutput::new_file(dir, prefix)?,
    };
    match format {
        VideoFormat::Gif => gif::write_gif(frames, temp.path(), should_cancel)?,
        VideoFormat::PngFrames => png::write_png_frames(frames, temp.path(), should_cancel)?,
        VideoFormat::Mp4 => mp4::write_mp4(frames, temp.path(), dir, should_cancel)?,
    }
    if should_cancel() {
        return Err(VideoError::Cancelled);
    }
    temp.publish(dir, prefix, format.extension())
}

/// Refuses prefixes that are not a plain file name.
fn check_prefix(prefix: &str) -> Result<(), VideoError> {
    let refuse = |reason: &str| {
        Err(VideoError::InvalidPrefix {
            prefix: prefix.to_string(),
            reason: reason.to_string(),
        })
    };
    if prefix.is_empty() {
        return refuse("it is empty");
    }
    if prefix.contains(['/', '\\']) {
        return refuse("it contains a path separator; pass the folder as `dir`");
    }
    if prefix.contains("..") {
        return refuse("it contains `..`");
    }
    if prefix.starts_with('.') {
        return refuse("it starts with `.` (hidden names are reserved for temporary files)");
    }
    if prefix.chars().any(|c| c.is_control() || c == ':') {
        return refuse("it contains a control character or `:`");
    }
    if prefix.len() > 200 {
        return refuse("it is longer than 200 bytes");
    }
    Ok(())
}

/// One frame as 8-bit RGB (values clamped to `0..=1`).
pub(crate) fn frame_rgb8(frames: &Frames, i: usize) -> Vec<u8> {
    frames
        .frame(i)
        .iter()
        .map(|&v| crate::frames::to_u8(v))
        .collect()
}

/// Returns [`VideoError::Cancelled`] when `should_cancel()` says so.
pub(crate) fn check_cancel(should_cancel: &dyn Fn() -> bool) -> Result<(), VideoError> {
    if should_cancel() {
        Err(VideoError::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_prefix;

    #[test]
    fn prefixes() {
        for ok in ["clip", "my clip", "a.b", "ComfyUI_video", "é"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a\\b", "..", "a..b", ".hidden", "a\nb", "c:d"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
