//! [`load_video`]: picks a reader by what the path is, and the [`Collector`]
//! every reader feeds (selection, resizing, size guard).

mod folder;
mod gif;
mod movie;
mod pixels;
mod resize;

use std::fs;
use std::path::Path;

use crate::frames::{checked_len, MAX_BYTES};
use crate::options::Select;
use crate::{Frames, LoadOptions, VideoError};

/// Extensions read through `ffmpeg`.
pub(crate) const MOVIE_EXTENSIONS: &[&str] = &["mp4", "webm", "mov", "mkv", "m4v", "avi"];
/// Extensions of still frames (single images and frame folders).
pub(crate) const STILL_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];
/// Frame rate of frame folders and single stills.
pub(crate) const STILL_FPS: f32 = 8.0;

/// Reads a video into memory.
///
/// `path` may be an animated GIF, a folder of PNG/JPEG frames (natural name
/// order, all the same size), a single PNG/JPEG (one frame), or an
/// MP4/WebM/MOV/MKV/M4V/AVI file (needs the `ffmpeg` and `ffprobe` programs).
/// Transparent pixels are composited over black.
pub fn load_video(path: &Path, opts: &LoadOptions) -> Result<Frames, VideoError> {
    opts.validate(path)?;
    let meta = fs::metadata(path).map_err(VideoError::io(path, "cannot read"))?;
    if meta.is_dir() {
        return folder::load_folder(path, opts);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext == "gif" {
        gif::load_gif(path, opts)
    } else if STILL_EXTENSIONS.contains(&ext.as_str()) {
        folder::load_still(path, opts)
    } else if MOVIE_EXTENSIONS.contains(&ext.as_str()) {
        movie::load_movie(path, opts)
    } else {
        Err(VideoError::UnsupportedFormat {
            path: path.to_path_buf(),
            ext,
        })
    }
}

/// Accumulates the frames a reader decodes: applies the selection, the
/// resize and the memory guard.
pub(crate) struct Collector<'a> {
    path: &'a Path,
    opts: &'a LoadOptions,
    data: Vec<f32>,
    kept: usize,
    /// Output (width, height), known after the first kept frame.
    size: Option<(usize, usize)>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(path: &'a Path, opts: &'a LoadOptions) -> Self {
        Collector {
            path,
            opts,
            data: Vec::new(),
            kept: 0,
            size: None,
        }
    }

    /// Whether source frame `index` is kept, skipped, or decoding can stop.
    pub(crate) fn select(&self, index: usize) -> Select {
        self.opts.select(index, self.kept)
    }

    /// Output frame size for a source of `width` x `height`.
    pub(crate) fn output_size(&self, width: usize, height: usize) -> (usize, usize) {
        self.opts.size.unwrap_or((width, height))
    }

    /// Refuses to go on if `count` frames of the output size would exceed the guards.
    pub(crate) fn check_budget(
        &self,
        count: usize,
        width: usize,
        height: usize,
    ) -> Result<usize, VideoError> {
        let (w, h) = self.output_size(width, height);
        checked_len(count, h, w).map_err(|reason| VideoError::TooLarge {
            path: self.path.to_path_buf(),
            reason: format!("{reason}; lower max_frames, raise stride or set a smaller size"),
        })
    }

    /// Adds one kept frame of `width` x `height` RGB `f32` values.
    pub(crate) fn push(
        &mut self,
        rgb: Vec<f32>,
        width: usize,
        height: usize,
    ) -> Result<(), VideoError> {
        let needed = self.check_budget(self.kept + 1, width, height)?;
        let (rgb, w, h) = resize::fit(rgb, width, height, self.opts.size, self.opts.fit);
        match self.size {
            None => self.size = Some((w, h)),
            Some(size) if size != (w, h) => {
                return Err(VideoError::decode(
                    self.path,
                    format!(
                        "frame {} is {w}x{h} but earlier frames are {}x{}",
                        self.kept, size.0, size.1
                    ),
                ))
            }
            Some(_) => {}
        }
        if self.data.capacity() < needed {
            // Grow geometrically, but never past what the guard allows.
            let limit = (MAX_BYTES / 4) as usize;
            let target = needed.max(self.data.capacity() * 2).min(limit);
            self.data
                .try_reserve_exact(target - self.data.len())
                .map_err(|e| VideoError::TooLarge {
                    path: self.path.to_path_buf(),
                    reason: format!("cannot allocate {} frames of {w}x{h}: {e}", self.kept + 1),
                })?;
        }
        self.data.extend_from_slice(&rgb);
        self.kept += 1;
        Ok(())
    }

    /// Reserves room for `count` frames of `width` x `height` source frames up front.
    pub(crate) fn reserve(
        &mut self,
        count: usize,
        width: usize,
        height: usize,
    ) -> Result<(), VideoError> {
        let needed = self.check_budget(count, width, height)?;
        self.data
            .try_reserve_exact(needed)
            .map_err(|e| VideoError::TooLarge {
                path: self.path.to_path_buf(),
                reason: format!("cannot allocate {count} frames: {e}"),
            })
    }

    /// The clip, or [`VideoError::NoFrames`] when nothing was kept out of
    /// `total` source frames.
    pub(crate) fn finish(self, total: usize, source_fps: f32) -> Result<Frames, VideoError> {
        let Some((width, height)) = self.size else {
            return Err(VideoError::NoFrames {
                path: self.path.to_path_buf(),
                reason: self.opts.nothing_kept(total),
            });
        };
        let fps = self.opts.output_fps(source_fps);
        Frames::new(self.data, self.kept, height, width, fps)
            .map_err(|e| VideoError::decode(self.path, e))
    }
}
