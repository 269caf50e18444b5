//! Conversions from decoded 8/16-bit pixels to `f32` RGB in `0..=1`.

use image::DynamicImage;

/// RGBA8 composited over black, as `f32` RGB.
pub(crate) fn rgba8_over_black(rgba: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let alpha = px[3];
        for &c in &px[..3] {
            out.push(if alpha == 255 {
                f32::from(c) / 255.0
            } else {
                f32::from(c) * f32::from(alpha) / (255.0 * 255.0)
            });
        }
    }
    out
}

/// RGB8 bytes as `f32` RGB.
pub(crate) fn rgb8(rgb: &[u8]) -> Vec<f32> {
    rgb.iter().map(|&c| f32::from(c) / 255.0).collect()
}

/// Any decoded still as `f32` RGB (alpha composited over black).
pub(crate) fn dynamic_rgb(img: DynamicImage) -> Vec<f32> {
    match img {
        DynamicImage::ImageRgb8(buf) => rgb8(buf.as_raw()),
        DynamicImage::ImageRgba8(buf) => rgba8_over_black(buf.as_raw()),
        other if other.color().has_alpha() => {
            let rgba = other.to_rgba32f();
            rgba.as_raw()
                .chunks_exact(4)
                .flat_map(|px| [px[0] * px[3], px[1] * px[3], px[2] * px[3]])
                .collect()
        }
        other => other.to_rgb32f().into_raw(),
    }
}
