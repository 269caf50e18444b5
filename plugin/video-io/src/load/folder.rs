//! Frame folders (PNG/JPEG files in natural name order) and single stills.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use image::ImageReader;

use super::pixels::dynamic_rgb;
use super::{Collector, STILL_EXTENSIONS, STILL_FPS};
use crate::frames::check_side;
use crate::options::Select;
use crate::{Frames, LoadOptions, VideoError};

pub(super) fn load_folder(dir: &Path, opts: &LoadOptions) -> Result<Frames, VideoError> {
    let files = frame_files(dir)?;
    if files.is_empty() {
        return Err(VideoError::EmptyFolder {
            path: dir.to_path_buf(),
        });
    }
    let picked: Vec<&PathBuf> = {
        let mut picked = Vec::new();
        for (index, file) in files.iter().enumerate() {
            match opts.select(index, picked.len()) {
                Select::Done => break,
                Select::Keep => picked.push(file),
                Select::Skip => {}
            }
        }
        picked
    };
    // Every frame of the folder must share one size, kept or not: read the headers.
    let first_size = dimensions(&files[0])?;
    for file in &files[1..] {
        let size = dimensions(file)?;
        if size != first_size {
            return Err(VideoError::SizeMismatch {
                folder: dir.to_path_buf(),
                first: files[0].clone(),
                first_size,
                other: file.clone(),
                other_size: size,
            });
        }
    }
    let mut collector = Collector::new(dir, opts);
    if !picked.is_empty() {
        collector.reserve(picked.len(), first_size.0, first_size.1)?;
    }
    for file in picked {
        let (rgb, w, h) = decode_still(file)?;
        if (w, h) != first_size {
            return Err(VideoError::SizeMismatch {
                folder: dir.to_path_buf(),
                first: files[0].clone(),
                first_size,
                other: file.clone(),
                other_size: (w, h),
            });
        }
        collector.push(rgb, w, h)?;
    }
    collector.finish(files.len(), STILL_FPS)
}

pub(super) fn load_still(path: &Path, opts: &LoadOptions) -> Result<Frames, VideoError> {
    let mut collector = Collector::new(path, opts);
    if collector.select(0) == Select::Keep {
        let (w, h) = dimensions(path)?;
        collector.check_budget(1, w, h)?;
        let (rgb, w, h) = decode_still(path)?;
        collector.push(rgb, w, h)?;
    }
    collector.finish(1, STILL_FPS)
}

/// The PNG/JPEG files of `dir` (hidden files skipped), in natural order.
fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, VideoError> {
    let entries = fs::read_dir(dir).map_err(VideoError::io(dir, "cannot list folder"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(VideoError::io(dir, "cannot list folder"))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_frame = !name.starts_with('.')
            && path.extension().is_some_and(|e| {
                STILL_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
            })
            && path.is_file();
        if is_frame {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        natural_cmp(
            &a.file_name().unwrap_or_default().to_string_lossy(),
            &b.file_name().unwrap_or_default().to_string_lossy(),
        )
    });
    Ok(files)
}

/// (width, height) from the header, refusing sides above the limit.
fn dimensions(path: &Path) -> Result<(usize, usize), VideoError> {
    let (w, h) = ImageReader::open(path)
        .map_err(VideoError::io(path, "cannot open"))?
        .with_guessed_format()
        .map_err(VideoError::io(path, "cannot read"))?
        .into_dimensions()
        .map_err(|e| VideoError::decode(path, e))?;
    let (w, h) = (w as usize, h as usize);
    check_side(w, h).map_err(|reason| VideoError::TooLarge {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok((w, h))
}

/// Decodes a PNG/JPEG into `f32` RGB, with its (width, height).
fn decode_still(path: &Path) -> Result<(Vec<f32>, usize, usize), VideoError> {
    let img = ImageReader::open(path)
        .map_err(VideoError::io(path, "cannot open"))?
        .with_guessed_format()
        .map_err(VideoError::io(path, "cannot read"))?
        .decode()
        .map_err(|e| VideoError::decode(path, e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((dynamic_rgb(img), w, h))
}

/// Compares names with digit runs taken as numbers: `frame2 < frame10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a_rest, mut b_rest) = (a, b);
    loop {
        match (a_rest.chars().next(), b_rest.chars().next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(ca), Some(cb)) if ca.is_ascii_digit() && cb.is_ascii_digit() => {
                let (da, ra) = split_digits(a_rest);
                let (db, rb) = split_digits(b_rest);
                let (ta, tb) = (da.trim_start_matches('0'), db.trim_start_matches('0'));
                let by_value = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (a_rest, b_rest) = (ra, rb);
            }
            (Some(ca), Some(cb)) => {
                if ca != cb {
                    return ca.cmp(&cb);
                }
                (a_rest, b_rest) = (&a_rest[ca.len_utf8()..], &b_rest[cb.len_utf8()..]);
            }
        }
    }
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn natural_order() {
        let mut names = vec![
            "frame10.png",
            "frame2.png",
            "frame1.png",
            "frame02.png",
            "a.png",
            "frame1b.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.png",
                "frame1.png",
                "frame1b.png",
                "frame02.png",
                "frame2.png",
                "frame10.png"
            ]
        );
    }
}
