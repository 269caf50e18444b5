//! Output naming, atomicity, cancellation and refusals of `save_video`.

use std::cell::Cell;

use fastvmt_video_io::{ffmpeg_available, save_video, Frames, VideoError, VideoFormat};

use super::util::*;

#[test]
fn numbered_names_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new sub dir");
    let frames = noise_frames(20, 2, 6, 6, 10.0);
    let first = save_video(&frames, &out, "clip", VideoFormat::Gif, &never).unwrap();
    let second = save_video(&frames, &out, "clip", VideoFormat::Gif, &never).unwrap();
    assert_eq!(first, out.join("clip_00001.gif"));
    assert_eq!(second, out.join("clip_00002.gif"));
    // Another format continues the same counter; another prefix has its own.
    let seq = save_video(&frames, &out, "clip", VideoFormat::PngFrames, &never).unwrap();
    assert_eq!(seq, out.join("clip_00003"));
    let other = save_video(&frames, &out, "clip_b", VideoFormat::Gif, &never).unwrap();
    assert_eq!(other, out.join("clip_b_00001.gif"));
    // A foreign file in the way is stepped over, not replaced.
    std::fs::write(out.join("clip_00004.gif"), b"keep me").unwrap();
    let next = save_video(&frames, &out, "clip", VideoFormat::Gif, &never).unwrap();
    assert_eq!(next, out.join("clip_00005.gif"));
    assert_eq!(
        std::fs::read(out.join("clip_00004.gif")).unwrap(),
        b"keep me"
    );
    assert_eq!(
        listing(&out),
        [
            "clip_00001.gif",
            "clip_00002.gif",
            "clip_00003",
            "clip_00004.gif",
            "clip_00005.gif",
            "clip_b_00001.gif"
        ]
    );
}

fn cancel_after(calls: usize) -> impl Fn() -> bool {
    let seen = Cell::new(0usize);
    move || {
        seen.set(seen.get() + 1);
        seen.get() > calls
    }
}

fn assert_cancel_leaves_nothing(format: VideoFormat) {
    let dir = tempfile::tempdir().unwrap();
    let frames = noise_frames(21, 6, 10, 10, 10.0);
    let cancel = cancel_after(3);
    let err = save_video(&frames, dir.path(), "clip", format, &cancel).unwrap_err();
    assert!(matches!(err, VideoError::Cancelled), "{format:?}: {err:?}");
    assert_message(&err, &["cancelled"]);
    assert!(
        listing(dir.path()).is_empty(),
        "{format:?} left {:?}",
        listing(dir.path())
    );
    // Cancelled before starting: nothing either.
    let err = save_video(&frames, dir.path(), "clip", format, &|| true).unwrap_err();
    assert!(matches!(err, VideoError::Cancelled));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn cancel_mid_write_leaves_no_file_and_no_temporary() {
    assert_cancel_leaves_nothing(VideoFormat::Gif);
    assert_cancel_leaves_nothing(VideoFormat::PngFrames);
    if ffmpeg_available() {
        assert_cancel_leaves_nothing(VideoFormat::Mp4);
    } else {
        eprintln!("skipping MP4 cancel: ffmpeg is not installed");
    }
}

#[test]
fn prefixes_with_paths_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let frames = noise_frames(22, 1, 4, 4, 10.0);
    for prefix in ["../escape", "..", "a/b", "", ".hidden"] {
        let err = save_video(&frames, dir.path(), prefix, VideoFormat::Gif, &never).unwrap_err();
        assert!(
            matches!(err, VideoError::InvalidPrefix { .. }),
            "{prefix:?}: {err:?}"
        );
        assert_message(&err, &["invalid prefix"]);
    }
    assert!(listing(dir.path()).is_empty());
    assert!(!dir
        .path()
        .parent()
        .unwrap()
        .join("escape_00001.gif")
        .exists());
}

#[test]
fn invalid_frames_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames = noise_frames(23, 2, 4, 4, 10.0);
    frames.data[5] = f32::NAN;
    let err = save_video(&frames, dir.path(), "clip", VideoFormat::PngFrames, &never).unwrap_err();
    assert!(matches!(err, VideoError::InvalidFrames { .. }), "{err:?}");
    assert_message(&err, &["NaN", "frame 0"]);
    let short = Frames {
        data: vec![0.5; 7],
        frames: 1,
        height: 2,
        width: 2,
        fps: 8.0,
    };
    let err = save_video(&short, dir.path(), "clip", VideoFormat::Gif, &never).unwrap_err();
    assert_message(&err, &["7 values"]);
    assert!(listing(dir.path()).is_empty());
}
