//! Every refusal: the right variant, and a one-line message naming the file and problem.

use fastvmt_video_io::{load_video, Frames, LoadOptions, VideoError, MAX_SIDE};

use super::util::*;

#[test]
fn truncated_gif_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gif(&smooth_frames(10, 4, 24, 24, 10.0), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gif");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let err = load_video(&cut, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::Decode { .. }), "{err:?}");
    assert_message(&err, &[&shown(&cut), "truncated or corrupt"]);
    // Frames before the cut are fine when not asked for more.
    let first = load_video(
        &cut,
        &LoadOptions {
            max_frames: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(first.frames, 1);
}

#[test]
fn garbage_named_gif_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.gif");
    let mut rng = Rng::new(11);
    std::fs::write(&path, (0..500).map(|_| rng.byte()).collect::<Vec<u8>>()).unwrap();
    let err = load_video(&path, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::Decode { .. }), "{err:?}");
    assert_message(&err, &[&shown(&path), "not a valid GIF"]);
}

#[test]
fn empty_folder_and_folder_without_frames() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_video(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::EmptyFolder { .. }), "{err:?}");
    assert_message(&err, &[&shown(dir.path()), "no PNG or JPEG frames"]);
    std::fs::write(dir.path().join("readme.txt"), "x").unwrap();
    let err = load_video(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::EmptyFolder { .. }), "{err:?}");
}

#[test]
fn mismatched_frame_sizes_name_both_files_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    solid(8, 6, [1, 2, 3])
        .save(dir.path().join("f1.png"))
        .unwrap();
    solid(8, 6, [4, 5, 6])
        .save(dir.path().join("f2.png"))
        .unwrap();
    solid(9, 6, [7, 8, 9])
        .save(dir.path().join("f10.png"))
        .unwrap();
    let err = load_video(
        dir.path(),
        &LoadOptions {
            max_frames: Some(1),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, VideoError::SizeMismatch { .. }), "{err:?}");
    assert_message(&err, &["f1.png", "8x6", "f10.png", "9x6"]);
}

#[test]
fn no_frames_left_after_selection() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gif(&palette_frames(12, 12, 4, 4, 8, 10.0), dir.path());
    let err = load_video(
        &path,
        &LoadOptions {
            start: 40,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, VideoError::NoFrames { .. }), "{err:?}");
    assert_message(
        &err,
        &[&shown(&path), "start 40 is past the last frame (12 frames)"],
    );

    let seq = dir.path().join("seq");
    std::fs::create_dir(&seq).unwrap();
    solid(4, 4, [9, 9, 9]).save(seq.join("a.png")).unwrap();
    let err = load_video(
        &seq,
        &LoadOptions {
            start: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_message(
        &err,
        &[&shown(&seq), "start 1 is past the last frame (1 frame)"],
    );
}

#[test]
fn invalid_options_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gif(&palette_frames(13, 2, 4, 4, 8, 10.0), dir.path());
    let cases = [
        (
            LoadOptions {
                stride: 0,
                ..Default::default()
            },
            "stride is 0",
        ),
        (
            LoadOptions {
                max_frames: Some(0),
                ..Default::default()
            },
            "max_frames is 0",
        ),
        (
            LoadOptions {
                size: Some((0, 10)),
                ..Default::default()
            },
            "size 0x10",
        ),
        (
            LoadOptions {
                size: Some((MAX_SIDE + 1, 10)),
                ..Default::default()
            },
            "limit of 16384",
        ),
        (
            LoadOptions {
                fps: Some(f32::NAN),
                ..Default::default()
            },
            "fps is NaN",
        ),
    ];
    for (opts, needle) in cases {
        let err = load_video(&path, &opts).unwrap_err();
        assert!(matches!(err, VideoError::InvalidOptions { .. }), "{err:?}");
        assert_message(&err, &[&shown(&path), needle]);
    }
}

#[test]
fn missing_path_and_unknown_extension() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope here.gif");
    let err = load_video(&missing, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::NotFound { .. }), "{err:?}");
    assert_message(&err, &[&shown(&missing), "file not found"]);

    let text = dir.path().join("clip.txt");
    std::fs::write(&text, "hello").unwrap();
    let err = load_video(&text, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, VideoError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    assert_message(&err, &[&shown(&text), "unsupported extension \"txt\""]);
}

/// A GIF of a `width` x `height` canvas holding one 1x1 frame: tiny file, big canvas.
fn big_canvas_gif(path: &std::path::Path, width: u16, height: u16) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = gif::Encoder::new(file, width, height, &[0, 0, 0, 255, 255, 255]).unwrap();
    let frame = gif::Frame {
        width: 1,
        height: 1,
        buffer: std::borrow::Cow::Borrowed(&[1]),
        ..Default::default()
    };
    enc.write_frame(&frame).unwrap();
}

#[test]
fn oversized_gif_canvas_is_refused_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.gif");
    big_canvas_gif(&path, 20000, 20000);
    let err = load_video(&path, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::TooLarge { .. }), "{err:?}");
    assert_message(&err, &[&shown(&path), "20000x20000", "16384"]);

    let path = dir.path().join("large.gif");
    big_canvas_gif(&path, 4000, 4000);
    let err = load_video(&path, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, VideoError::TooLarge { .. }), "{err:?}");
    assert_message(&err, &[&shown(&path), "4000x4000", "50 MB"]);
}

#[test]
fn frames_constructor_guards_sizes_lengths_and_nan() {
    // 100 frames of 16384x16384 would need 300 GiB: refused before any allocation.
    let err = Frames::new(Vec::new(), 100, MAX_SIDE, MAX_SIDE, 8.0).unwrap_err();
    assert_message(&err, &["GiB", "limit 4.0 GiB"]);
    let err = Frames::new(vec![0.5; 10], 1, 2, 2, 8.0).unwrap_err();
    assert_message(&err, &["10 values", "need 12"]);
    let err = Frames::new(vec![0.5; 12], 0, 2, 2, 8.0).unwrap_err();
    assert_message(&err, &["at least 1"]);
    let err = Frames::new(vec![0.5; 12], 1, 2, 2, 0.0).unwrap_err();
    assert_message(&err, &["fps is 0"]);
    let mut data = vec![0.5; 24];
    data[12 + 3 * 3 + 1] = f32::NAN;
    let err = Frames::new(data, 2, 2, 2, 8.0).unwrap_err();
    assert_message(&err, &["frame 1", "NaN", "row 1, column 1", "refused"]);
}
