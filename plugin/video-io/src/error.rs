//! The one error type of this crate: every message is a single line that
//! names the file (or folder) and what went wrong with it.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading or writing a video.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    /// The path does not exist.
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },

    /// The extension is not one this crate reads or writes.
    #[error(
        "{}: unsupported extension {ext:?} (expected .gif, .png, .jpg, .jpeg, .mp4, .webm, .mov, .mkv or a folder of PNG/JPEG frames)",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, ext: String },

    /// The file exists but could not be decoded (truncated, corrupt, not what its name says).
    #[error("{}: cannot decode: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },

    /// Nothing left to return, either in the file or after start/stride selection.
    #[error("{}: no frames: {reason}", path.display())]
    NoFrames { path: PathBuf, reason: String },

    /// A frame folder without a single PNG or JPEG file.
    #[error("{}: folder holds no PNG or JPEG frames", path.display())]
    EmptyFolder { path: PathBuf },

    /// Two frames of a folder differ in size.
    #[error(
        "{}: frame sizes differ: {} is {}x{} but {} is {}x{}; every frame must have the same size",
        folder.display(), first.display(), first_size.0, first_size.1,
        other.display(), other_size.0, other_size.1
    )]
    SizeMismatch {
        folder: PathBuf,
        first: PathBuf,
        /// (width, height)
        first_size: (usize, usize),
        other: PathBuf,
        /// (width, height)
        other_size: (usize, usize),
    },

    /// `ffmpeg` or `ffprobe` could not be started because it is not installed.
    #[error(
        "{}: {tool} is not installed or not on PATH; install ffmpeg (e.g. `apt-get install ffmpeg`, `brew install ffmpeg`) to read or write MP4/WebM/MOV/MKV",
        path.display()
    )]
    FfmpegMissing { path: PathBuf, tool: &'static str },

    /// `ffmpeg` or `ffprobe` ran and failed; `message` is the last line of its stderr.
    #[error("{}: {tool} failed: {message}", path.display())]
    Ffmpeg {
        path: PathBuf,
        tool: &'static str,
        message: String,
    },

    /// A [`crate::LoadOptions`] field is out of range.
    #[error("{}: invalid load options: {reason}", path.display())]
    InvalidOptions { path: PathBuf, reason: String },

    /// The video (or the requested output) exceeds the size guards of [`crate::Frames`].
    #[error("{}: too large: {reason}", path.display())]
    TooLarge { path: PathBuf, reason: String },

    /// A [`crate::Frames`] value is inconsistent (length, sizes, fps, NaN).
    #[error("invalid frames: {reason}")]
    InvalidFrames { reason: String },

    /// The file-name prefix given to [`crate::save_video`] is not a plain name.
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix { prefix: String, reason: String },

    /// An operating-system error on a file; `action` says what was being done.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// `should_cancel()` returned true; the temporary output was removed.
    #[error("cancelled: the video was not written (temporary output removed)")]
    Cancelled,
}

impl VideoError {
    /// Builds a closure mapping an [`io::Error`] on `path` to [`VideoError::Io`]
    /// (or [`VideoError::NotFound`] when the file is missing).
    pub(crate) fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> VideoError {
        let path = path.to_path_buf();
        move |source| {
            if source.kind() == io::ErrorKind::NotFound {
                VideoError::NotFound { path }
            } else {
                VideoError::Io {
                    path,
                    action,
                    source,
                }
            }
        }
    }

    pub(crate) fn decode(path: &Path, reason: impl std::fmt::Display) -> VideoError {
        VideoError::Decode {
            path: path.to_path_buf(),
            reason: one_line(&reason.to_string()),
        }
    }
}

/// Collapses a multi-line message into one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
