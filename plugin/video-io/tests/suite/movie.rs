//! MP4 through ffmpeg; each test prints a skip reason when ffmpeg is absent.

use fastvmt_video_io::{
    ffmpeg_available, load_video, save_video, LoadOptions, VideoError, VideoFormat,
};

use super::util::*;

fn have_ffmpeg(test: &str) -> bool {
    let ok = ffmpeg_available();
    if !ok {
        eprintln!("skipping {test}: ffmpeg is not installed (apt-get install ffmpeg)");
    }
    ok
}

#[test]
fn mp4_round_trip_with_odd_size_and_spaces_in_path() {
    if !have_ffmpeg("mp4_round_trip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("with spaces -and dashes");
    let frames = smooth_frames(30, 8, 17, 33, 12.0);
    let path = save_video(&frames, &out, "clip", VideoFormat::Mp4, &never).unwrap();
    assert_eq!(path, out.join("clip_00001.mp4"));
    assert_eq!(listing(&out), ["clip_00001.mp4"]);

    let back = load_video(&path, &LoadOptions::default()).unwrap();
    // Odd sides were padded to even by repeating the edge.
    assert_eq!((back.frames, back.height, back.width), (8, 18, 34));
    assert!((back.fps - 12.0).abs() < 1e-3, "fps {}", back.fps);
    let cropped: Vec<f32> = (0..8)
        .flat_map(|f| {
            let frame = back.frame(f);
            (0..17).flat_map(move |y| frame[y * 34 * 3..(y * 34 + 33) * 3].to_vec())
        })
        .collect();
    let err = mean_abs_diff(&frames.data, &cropped);
    assert!(err < 0.03, "mean error {err}");

    // Selection stops ffmpeg early and keeps the duration.
    let some = load_video(
        &path,
        &LoadOptions {
            start: 1,
            stride: 2,
            max_frames: Some(2),
            size: Some((16, 8)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((some.frames, some.height, some.width), (2, 8, 16));
    assert!((some.fps - 6.0).abs() < 1e-3);
    let err = load_video(
        &path,
        &LoadOptions {
            start: 40,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_message(&err, &["start 40 is past the last frame (8 frames)"]);
}

#[test]
fn corrupt_movie_reports_the_ffmpeg_error_with_the_file() {
    if !have_ffmpeg("corrupt_movie") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken clip.mp4");
    let mut rng = Rng::new(31);
    std::fs::write(&path, (0..2000).map(|_| rng.byte()).collect::<Vec<u8>>()).unwrap();
    let err = load_video(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, VideoError::Ffmpeg { .. } | VideoError::Decode { .. }),
        "{err:?}"
    );
    assert_message(&err, &[&shown(&path)]);
}

#[test]
fn without_ffmpeg_movies_fail_with_install_advice_and_leave_nothing() {
    if ffmpeg_available() {
        eprintln!("skipping without_ffmpeg: ffmpeg is installed (the unit test in src/ffmpeg.rs covers the message)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    std::fs::write(&path, b"not really a movie").unwrap();
    let err = load_video(&path, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::FfmpegMissing { .. }), "{err:?}");
    assert_message(&err, &[&shown(&path), "apt-get install ffmpeg"]);

    let out = dir.path().join("out");
    let err = save_video(
        &smooth_frames(32, 2, 4, 4, 8.0),
        &out,
        "clip",
        VideoFormat::Mp4,
        &never,
    )
    .unwrap_err();
    assert!(matches!(err, VideoError::FfmpegMissing { .. }), "{err:?}");
    assert_message(&err, &["ffmpeg", "apt-get install ffmpeg"]);
    assert!(listing(&out).is_empty(), "left {:?}", listing(&out));
}
