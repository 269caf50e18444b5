//! Animated GIF writer: loops forever, one NeuQuant palette per frame (exact
//! palette when a frame has at most 256 colours), delay from the fps.

use std::fs::OpenOptions;
use std::io::{self, BufWriter};
use std::path::Path;

use gif::{Encoder, Frame, Repeat};

use super::{check_cancel, frame_rgb8};
use crate::{Frames, VideoError};

/// NeuQuant learns from about this many sampled pixels per frame: every
/// pixel of small frames (best quality), one in ten of a 1080p frame.
const QUANT_SAMPLES: usize = 200_000;

pub(super) fn write_gif(
    frames: &Frames,
    path: &Path,
    should_cancel: &dyn Fn() -> bool,
) -> Result<(), VideoError> {
    let fail = |e: gif::EncodingError| VideoError::Io {
        path: path.to_path_buf(),
        action: "cannot write GIF",
        source: match e {
            gif::EncodingError::Io(e) => e,
            other => io::Error::other(other),
        },
    };
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(VideoError::io(path, "cannot open temporary GIF"))?;
    // MAX_SIDE (16384) keeps both sides within GIF's u16.
    let (w, h) = (frames.width as u16, frames.height as u16);
    let mut encoder = Encoder::new(BufWriter::new(file), w, h, &[]).map_err(fail)?;
    encoder.set_repeat(Repeat::Infinite).map_err(fail)?;
    let delay = delay_cs(frames.fps);
    let speed = quant_speed(frames.width * frames.height);
    for i in 0..frames.frames {
        check_cancel(should_cancel)?;
        let rgb = frame_rgb8(frames, i);
        let mut frame = Frame::from_rgb_speed(w, h, &rgb, speed);
        frame.delay = delay;
        encoder.write_frame(&frame).map_err(fail)?;
    }
    let writer = encoder.into_inner().map_err(fail)?;
    writer
        .into_inner()
        .map_err(|e| fail(gif::EncodingError::Io(e.into_error())))?;
    Ok(())
}

/// Frame delay in hundredths of a second for `fps`, at least 2 (browsers
/// slow down anything shorter to 10).
pub(crate) fn delay_cs(fps: f32) -> u16 {
    (100.0 / f64::from(fps))
        .round()
        .clamp(2.0, f64::from(u16::MAX)) as u16
}

/// NeuQuant sampling factor (1 = every pixel … 30) for frames of `pixels` pixels.
fn quant_speed(pixels: usize) -> i32 {
    (pixels / QUANT_SAMPLES).clamp(1, 30) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn delays() {
        assert_eq!(super::delay_cs(10.0), 10);
        assert_eq!(super::delay_cs(25.0), 4);
        assert_eq!(super::delay_cs(100.0), 2);
        assert_eq!(super::delay_cs(0.001), u16::MAX);
        assert_eq!(super::quant_speed(64 * 64), 1);
        assert_eq!(super::quant_speed(1920 * 1080), 10);
        assert_eq!(super::quant_speed(16384 * 16384), 30);
    }
}
