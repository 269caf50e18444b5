//! Shared helpers: seeded content, file makers, assertions.

use std::path::{Path, PathBuf};

use fastvmt_video_io::{Frames, VideoError};

/// SplitMix64: small, seeded, good enough for test content.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Uniform random 8-bit colours (exactly representable after a PNG round trip).
pub fn noise_frames(seed: u64, frames: usize, height: usize, width: usize, fps: f32) -> Frames {
    let mut rng = Rng::new(seed);
    let data = (0..frames * height * width * 3)
        .map(|_| f32::from(rng.byte()) / 255.0)
        .collect();
    Frames::new(data, frames, height, width, fps).unwrap()
}

/// Blocks of 4x4 pixels, each one of `colours` random 8-bit colours.
pub fn palette_frames(
    seed: u64,
    frames: usize,
    height: usize,
    width: usize,
    colours: usize,
    fps: f32,
) -> Frames {
    let mut rng = Rng::new(seed);
    let palette: Vec<[u8; 3]> = (0..colours)
        .map(|_| [rng.byte(), rng.byte(), rng.byte()])
        .collect();
    let mut data = Vec::with_capacity(frames * height * width * 3);
    for _ in 0..frames {
        let blocks: Vec<usize> = (0..height.div_ceil(4) * width.div_ceil(4))
            .map(|_| rng.below(colours))
            .collect();
        for y in 0..height {
            for x in 0..width {
                let c = palette[blocks[(y / 4) * width.div_ceil(4) + x / 4]];
                data.extend(c.iter().map(|&v| f32::from(v) / 255.0));
            }
        }
    }
    Frames::new(data, frames, height, width, fps).unwrap()
}

/// Smooth gradients that move per frame, plus a little seeded noise.
pub fn smooth_frames(seed: u64, frames: usize, height: usize, width: usize, fps: f32) -> Frames {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(frames * height * width * 3);
    for f in 0..frames {
        for y in 0..height {
            for x in 0..width {
                let u = x as f32 / width as f32;
                let v = y as f32 / height as f32;
                let t = f as f32 / frames as f32;
                let noise = (f32::from(rng.byte()) / 255.0 - 0.5) * 0.04;
                data.push((0.1 + 0.8 * u + noise).clamp(0.0, 1.0));
                data.push((0.1 + 0.8 * v).clamp(0.0, 1.0));
                data.push((0.2 + 0.6 * ((u + v) * 0.5 + t).fract()).clamp(0.0, 1.0));
            }
        }
    }
    Frames::new(data, frames, height, width, fps).unwrap()
}

/// One solid 8-bit colour frame.
pub fn solid(width: u32, height: u32, rgb: [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts the message is one line and mentions every needle.
pub fn assert_message(err: &VideoError, needles: &[&str]) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    }
}

/// Names of the entries of `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Path as shown in messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}

pub fn never() -> bool {
    false
}

/// Writes a GIF of `frames` into `dir` and returns its path.
pub fn write_gif(frames: &Frames, dir: &Path) -> PathBuf {
    fastvmt_video_io::save_video(
        frames,
        dir,
        "src",
        fastvmt_video_io::VideoFormat::Gif,
        &never,
    )
    .unwrap()
}
