//! Frame-folder writer: `frame_00000.png`, … as 8-bit RGB.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::{check_cancel, frame_rgb8};
use crate::{Frames, VideoError};

pub(super) fn write_png_frames(
    frames: &Frames,
    dir: &Path,
    should_cancel: &dyn Fn() -> bool,
) -> Result<(), VideoError> {
    for i in 0..frames.frames {
        check_cancel(should_cancel)?;
        let path = dir.join(format!("frame_{i:05}.png"));
        let file = File::create_new(&path).map_err(VideoError::io(&path, "cannot create frame"))?;
        let mut out = BufWriter::new(file);
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(
                &frame_rgb8(frames, i),
                frames.width as u32,
                frames.height as u32,
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| VideoError::Io {
                path: path.clone(),
                action: "cannot encode PNG",
                source: std::io::Error::other(e),
            })?;
        out.into_inner()
            .map_err(|e| VideoError::io(&path, "cannot write frame")(e.into_error()))?;
    }
    Ok(())
}
