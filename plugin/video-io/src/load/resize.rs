//! Resizing (triangle filter) with optional centre crop to the target aspect ratio.

use image::imageops::{self, FilterType};
use image::{GenericImageView, ImageBuffer, Rgb};

use crate::Fit;

/// `rgb` (`width` x `height`) brought to `size` per `fit`; returns the new
/// buffer and its (width, height). Unchanged when `size` is `None` or equal.
pub(crate) fn fit(
    rgb: Vec<f32>,
    width: usize,
    height: usize,
    size: Option<(usize, usize)>,
    fit: Fit,
) -> (Vec<f32>, usize, usize) {
    let Some((tw, th)) = size else {
        return (rgb, width, height);
    };
    if (tw, th) == (width, height) {
        return (rgb, width, height);
    }
    let img: ImageBuffer<Rgb<f32>, Vec<f32>> =
        ImageBuffer::from_raw(width as u32, height as u32, rgb)
            .expect("buffer length matches its dimensions");
    let (x, y, cw, ch) = match fit {
        Fit::Stretch => (0, 0, width, height),
        Fit::Crop => crop_box(width, height, tw, th),
    };
    let view = img.view(x as u32, y as u32, cw as u32, ch as u32);
    let out = imageops::resize(&*view, tw as u32, th as u32, FilterType::Triangle);
    (out.into_raw(), tw, th)
}

/// Largest centred box of `width` x `height` with the aspect ratio of `tw` x `th`:
/// (x, y, w, h).
fn crop_box(width: usize, height: usize, tw: usize, th: usize) -> (usize, usize, usize, usize) {
    // Compare width/height with tw/th without floating point.
    if width as u128 * th as u128 > tw as u128 * height as u128 {
        let w = ((height as u128 * tw as u128 + th as u128 / 2) / th as u128)
            .clamp(1, width as u128) as usize;
        ((width - w) / 2, 0, w, height)
    } else {
        let h = ((width as u128 * th as u128 + tw as u128 / 2) / tw as u128)
            .clamp(1, height as u128) as usize;
        (0, (height - h) / 2, width, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_box_keeps_target_aspect() {
        assert_eq!(crop_box(200, 100, 50, 50), (50, 0, 100, 100));
        assert_eq!(crop_box(100, 200, 50, 50), (0, 50, 100, 100));
        assert_eq!(crop_box(100, 100, 64, 32), (0, 25, 100, 50));
        assert_eq!(crop_box(1, 1000, 1000, 1), (0, 499, 1, 1));
    }

    #[test]
    fn crop_then_resize_takes_the_centre() {
        // Left third red, middle third green, right third blue; crop to square keeps green.
        let (w, h) = (30usize, 10usize);
        let rgb: Vec<f32> = (0..w * h)
            .flat_map(|i| match (i % w) / 10 {
                0 => [1.0, 0.0, 0.0],
                1 => [0.0, 1.0, 0.0],
                _ => [0.0, 0.0, 1.0],
            })
            .collect();
        let (out, ow, oh) = fit(rgb, w, h, Some((4, 4)), Fit::Crop);
        assert_eq!((ow, oh), (4, 4));
        for px in out.chunks_exact(3) {
            assert!(px[1] > 0.99 && px[0] < 0.01 && px[2] < 0.01, "{px:?}");
        }
    }
}
