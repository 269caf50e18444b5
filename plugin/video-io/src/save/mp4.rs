//! MP4 writer: raw RGB24 piped into `ffmpeg` (libx264, yuv420p). Odd sides
//! are made even by repeating the last column / row.

use std::io::{self, Write};
use std::path::Path;
use std::process::Stdio;

use super::{check_cancel, frame_rgb8};
use crate::ffmpeg::{failure, file_url, spawn, ChildGuard, StderrTail, Tool};
use crate::{Frames, VideoError};

/// libx264 constant rate factor: visually near-lossless.
const CRF: &str = "18";

/// Encodes `frames` into `temp`; `dir` names the output folder in errors.
pub(super) fn write_mp4(
    frames: &Frames,
    temp: &Path,
    dir: &Path,
    should_cancel: &dyn Fn() -> bool,
) -> Result<(), VideoError> {
    let (w, h) = (frames.width, frames.height);
    let (ew, eh) = (w + w % 2, h + h % 2);
    let mut cmd = Tool::Ffmpeg.command();
    cmd.arg("-y")
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
        .arg("-s")
        .arg(format!("{ew}x{eh}"))
        .arg("-framerate")
        .arg(frames.fps.to_string())
        .args(["-i", "pipe:0"])
        .args([
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", CRF, "-preset", "medium",
        ])
        .args(["-movflags", "+faststart", "-f", "mp4"])
        .arg(file_url(temp)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::new(spawn(&mut cmd, Tool::Ffmpeg, dir)?);
    let stderr = StderrTail::start(child.child().stderr.take().expect("stderr piped"));
    let mut stdin = child.child().stdin.take().expect("stdin piped");
    for i in 0..frames.frames {
        // On cancel or error the guard kills ffmpeg and the caller removes `temp`.
        check_cancel(should_cancel)?;
        let rgb = pad_even(&frame_rgb8(frames, i), w, h);
        match stdin.write_all(&rgb) {
            Ok(()) => {}
            // ffmpeg quit early: its exit status and stderr tell why.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(VideoError::io(dir, "cannot feed ffmpeg")(e)),
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(VideoError::io(dir, "cannot wait for ffmpeg"))?;
    if !status.success() {
        return Err(failure(Tool::Ffmpeg, dir, status, stderr));
    }
    Ok(())
}

/// RGB8 `w` x `h` grown to even sides by repeating the last column and row.
fn pad_even(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    if w.is_multiple_of(2) && h.is_multiple_of(2) {
        return rgb.to_vec();
    }
    let ew = w + w % 2;
    let mut out = Vec::with_capacity(ew * (h + h % 2) * 3);
    for row in rgb.chunks_exact(w * 3) {
        out.extend_from_slice(row);
        if ew > w {
            out.extend_from_slice(&row[(w - 1) * 3..]);
        }
    }
    if h % 2 == 1 {
        let last = out[(h - 1) * ew * 3..].to_vec();
        out.extend_from_slice(&last);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pad_even_repeats_edges() {
        let rgb: Vec<u8> = (0..3 * 3 * 3).map(|v| v as u8).collect();
        let out = super::pad_even(&rgb, 3, 3);
        assert_eq!(out.len(), 4 * 4 * 3);
        assert_eq!(&out[9..12], &rgb[6..9]); // row 0, column 3 = column 2
        assert_eq!(&out[36..48], &out[24..36]); // row 3 = row 2
    }
}
