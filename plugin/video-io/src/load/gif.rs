//! Animated GIF reader: composited frames from the `image` crate, frame rate
//! from the frame delays.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, ImageDecoder};

use super::pixels::rgba8_over_black;
use super::Collector;
use crate::frames::check_side;
use crate::options::Select;
use crate::{Frames, LoadOptions, VideoError};

/// Delay browsers use for frames that ask for 0 or 10 ms, in milliseconds.
const DEFAULT_DELAY_MS: f64 = 100.0;

/// Bytes of one decoded RGBA frame the `gif` crate accepts (its fixed default).
const GIF_FRAME_LIMIT: usize = 50_000_000;

pub(super) fn load_gif(path: &Path, opts: &LoadOptions) -> Result<Frames, VideoError> {
    let file = File::open(path).map_err(VideoError::io(path, "cannot open"))?;
    let decoder = GifDecoder::new(BufReader::new(file))
        .map_err(|e| VideoError::decode(path, format!("not a valid GIF: {e}")))?;
    let (width, height) = decoder.dimensions();
    let (width, height) = (width as usize, height as usize);
    if width == 0 || height == 0 {
        return Err(VideoError::decode(
            path,
            format!("GIF canvas is {width}x{height}"),
        ));
    }
    check_side(width, height).map_err(|reason| VideoError::TooLarge {
        path: path.to_path_buf(),
        reason,
    })?;

    if width * height * 4 > GIF_FRAME_LIMIT {
        return Err(VideoError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "GIF canvas {width}x{height} exceeds the GIF decoder's limit of {} MB per RGBA frame (about 3500x3500)",
                GIF_FRAME_LIMIT / 1_000_000
            ),
        });
    }
    let mut collector = Collector::new(path, opts);
    collector.check_budget(1, width, height)?;
    let mut total_ms = 0.0f64;
    let mut seen = 0usize;
    for (index, frame) in decoder.into_frames().enumerate() {
        let select = collector.select(index);
        if select == Select::Done {
            break;
        }
        let frame = frame.map_err(|e| {
            VideoError::decode(
                path,
                format!("GIF frame {index} is truncated or corrupt: {e}"),
            )
        })?;
        seen = index + 1;
        let (num, den) = frame.delay().numer_denom_ms();
        let ms = f64::from(num) / f64::from(den.max(1));
        total_ms += if ms <= 10.0 { DEFAULT_DELAY_MS } else { ms };
        if select == Select::Keep {
            let rgb = rgba8_over_black(frame.buffer().as_raw());
            collector.push(rgb, width, height)?;
        }
    }
    let fps = if seen == 0 {
        1000.0 / DEFAULT_DELAY_MS
    } else {
        seen as f64 * 1000.0 / total_ms
    };
    collector.finish(seen, fps as f32)
}
