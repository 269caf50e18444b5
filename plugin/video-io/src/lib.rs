//! Video reading and writing behind the plugin's `LoadReference` and
//! `SaveVideo` nodes.
//!
//! This crate owns decoding sources into [`Frames`] (`f32` RGB, `[F, H, W, 3]`)
//! — animated GIFs, folders of PNG/JPEG frames, single stills, and movies
//! through the `ffmpeg`/`ffprobe` programs — and writing [`Frames`] back as
//! GIF, a PNG frame folder or MP4, atomically and under numbered names that
//! never overwrite. It knows nothing of the plugin ABI: the plugin converts.
//! Every failure is a [`VideoError`] whose message is one line naming the file.

mod error;
mod ffmpeg;
mod frames;
mod load;
mod options;
mod save;

pub use error::VideoError;
pub use ffmpeg::ffmpeg_available;
pub use frames::{Frames, MAX_BYTES, MAX_SIDE};
pub use load::load_video;
pub use options::{Fit, LoadOptions};
pub use save::{save_video, VideoFormat};
