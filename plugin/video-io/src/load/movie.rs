//! Movies (MP4/WebM/MOV/MKV/…) through `ffprobe` (size, frame rate, rotation)
//! and `ffmpeg` (decoded to raw RGB24 over a pipe).

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::Stdio;

use super::pixels::rgb8;
use super::Collector;
use crate::ffmpeg::{failure, file_url, spawn, ChildGuard, StderrTail, Tool};
use crate::frames::check_side;
use crate::options::Select;
use crate::{Frames, LoadOptions, VideoError};

/// Frame rate assumed when the file states none.
const FALLBACK_FPS: f32 = 25.0;

/// What `ffprobe` says about the first video stream.
#[derive(Debug, PartialEq)]
struct Probe {
    /// Size of decoded frames, rotation applied.
    width: usize,
    height: usize,
    fps: f32,
}

pub(super) fn load_movie(path: &Path, opts: &LoadOptions) -> Result<Frames, VideoError> {
    let probe = probe(path)?;
    let (width, height) = (probe.width, probe.height);
    check_side(width, height).map_err(|reason| VideoError::TooLarge {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut collector = Collector::new(path, opts);
    collector.check_budget(1, width, height)?;

    let mut cmd = Tool::Ffmpeg.command();
    cmd.arg("-i")
        .arg(file_url(path)?)
        .args([
            "-map", "0:v:0", "-an", "-sn", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::new(spawn(&mut cmd, Tool::Ffmpeg, path)?);
    let stderr = StderrTail::start(child.child().stderr.take().expect("stderr piped"));
    let stdout = child.child().stdout.take().expect("stdout piped");
    let mut stdout = BufReader::with_capacity(1 << 20, stdout);

    let mut buf = vec![0u8; width * height * 3];
    let mut index = 0;
    loop {
        let select = collector.select(index);
        if select == Select::Done {
            // Enough frames: dropping the guard stops ffmpeg.
            drop(child);
            return collector.finish(index, probe.fps);
        }
        let read = read_full(&mut stdout, &mut buf)
            .map_err(VideoError::io(path, "cannot read ffmpeg output"))?;
        if read < buf.len() {
            break;
        }
        if select == Select::Keep {
            collector.push(rgb8(&buf), width, height)?;
        }
        index += 1;
    }
    drop(stdout);
    let status = child
        .wait()
        .map_err(VideoError::io(path, "cannot wait for ffmpeg"))?;
    if !status.success() {
        return Err(failure(Tool::Ffmpeg, path, status, stderr));
    }
    collector.finish(index, probe.fps)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn probe(path: &Path) -> Result<Probe, VideoError> {
    let mut cmd = Tool::Ffprobe.command();
    cmd.args([
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=width,height,avg_frame_rate,r_frame_rate:stream_side_data=rotation:stream_tags=rotate",
        "-of",
        "default=noprint_wrappers=1",
    ])
    .arg(file_url(path)?)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = spawn(&mut cmd, Tool::Ffprobe, path)?;
    let out = child
        .wait_with_output()
        .map_err(VideoError::io(path, "cannot run ffprobe"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(VideoError::Ffmpeg {
            path: path.to_path_buf(),
            tool: "ffprobe",
            message: text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("failed without a message")
                .to_string(),
        });
    }
    parse_probe(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| VideoError::decode(path, "ffprobe found no video stream"))
}

/// Parses `key=value` lines of ffprobe's default writer.
fn parse_probe(text: &str) -> Option<Probe> {
    let mut width = None;
    let mut height = None;
    let (mut avg, mut real) = (None, None);
    let mut rotation = 0i64;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        match key {
            "width" => width = value.parse::<usize>().ok(),
            "height" => height = value.parse::<usize>().ok(),
            "avg_frame_rate" => avg = parse_rate(value),
            "r_frame_rate" => real = parse_rate(value),
            "rotation" | "TAG:rotate" => {
                if let Ok(r) = value.parse::<f64>() {
                    rotation = r.round() as i64;
                }
            }
            _ => {}
        }
    }
    let (mut width, mut height) = (width?, height?);
    if width == 0 || height == 0 {
        return None;
    }
    // ffmpeg rotates on decode by default, so quarter turns swap the sides.
    if rotation.rem_euclid(180) == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    Some(Probe {
        width,
        height,
        fps: avg.or(real).unwrap_or(FALLBACK_FPS),
    })
}

/// `"30000/1001"` or `"25"` as frames per second; `None` for `0/0` and the like.
fn parse_rate(value: &str) -> Option<f32> {
    let rate = match value.split_once('/') {
        Some((n, d)) => n.parse::<f64>().ok()? / d.parse::<f64>().ok()?,
        None => value.parse::<f64>().ok()?,
    };
    (rate.is_finite() && rate > 0.0).then_some(rate as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_parsed_with_rotation() {
        let text =
            "width=640\nheight=480\nr_frame_rate=30/1\navg_frame_rate=30000/1001\nrotation=-90\n";
        let p = parse_probe(text).unwrap();
        assert_eq!((p.width, p.height), (480, 640));
        assert!((p.fps - 29.97).abs() < 0.01);
        let p =
            parse_probe("width=64\nheight=48\navg_frame_rate=0/0\nr_frame_rate=12/1\n").unwrap();
        assert_eq!((p.width, p.height, p.fps), (64, 48, 12.0));
        assert_eq!(parse_probe(""), None);
    }
}
