//! Write then read back: GIF, PNG frames, stills; selection, fps, resizing.

use fastvmt_video_io::{load_video, save_video, Fit, Frames, LoadOptions, VideoFormat};

use super::util::*;

#[test]
fn gif_round_trip_within_quantisation_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let frames = smooth_frames(1, 5, 32, 48, 10.0);
    let path = write_gif(&frames, dir.path());
    assert_eq!(path, dir.path().join("src_00001.gif"));
    let back = load_video(&path, &LoadOptions::default()).unwrap();
    assert_eq!((back.frames, back.height, back.width), (5, 32, 48));
    assert_eq!(back.fps, 10.0);
    let mean = mean_abs_diff(&frames.data, &back.data);
    eprintln!("GIF quantisation: mean error {mean}");
    let max = max_abs_diff(&frames.data, &back.data);
    assert!(mean < 0.025, "mean error {mean}");
    assert!(max < 0.2, "max error {max}");
}

#[test]
fn gif_with_at_most_256_colours_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let frames = palette_frames(2, 4, 20, 24, 200, 12.5);
    let back = load_video(&write_gif(&frames, dir.path()), &LoadOptions::default()).unwrap();
    assert!(max_abs_diff(&frames.data, &back.data) < 0.5 / 255.0);
}

#[test]
fn png_frames_round_trip_exact_and_out_of_range_values_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames = noise_frames(3, 3, 9, 13, 8.0);
    let out = save_video(&frames, dir.path(), "seq", VideoFormat::PngFrames, &never).unwrap();
    assert_eq!(out, dir.path().join("seq_00001"));
    assert_eq!(
        listing(&out),
        ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    );
    let back = load_video(&out, &LoadOptions::default()).unwrap();
    assert_eq!(back, frames);

    frames.data[0] = 1.7;
    frames.data[1] = -0.3;
    let out = save_video(&frames, dir.path(), "seq", VideoFormat::PngFrames, &never).unwrap();
    let back = load_video(&out, &LoadOptions::default()).unwrap();
    assert_eq!((back.data[0], back.data[1]), (1.0, 0.0));
}

#[test]
fn fps_comes_from_gif_delays_divided_by_stride_unless_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gif(&palette_frames(4, 6, 8, 8, 16, 20.0), dir.path());
    let load = |opts: LoadOptions| load_video(&path, &opts).unwrap();
    assert_eq!(load(LoadOptions::default()).fps, 20.0);
    let halved = load(LoadOptions {
        stride: 2,
        ..Default::default()
    });
    assert_eq!((halved.frames, halved.fps), (3, 10.0));
    assert_eq!(
        load(LoadOptions {
            fps: Some(7.5),
            ..Default::default()
        })
        .fps,
        7.5
    );
    // A frame folder plays at 8 fps.
    let seq = save_video(
        &noise_frames(5, 2, 4, 4, 30.0),
        dir.path(),
        "seq",
        VideoFormat::PngFrames,
        &never,
    )
    .unwrap();
    assert_eq!(load_video(&seq, &LoadOptions::default()).unwrap().fps, 8.0);
}

#[test]
fn start_stride_and_max_frames_select_the_same_frames_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let frames = palette_frames(6, 12, 8, 12, 64, 10.0);
    let gif = write_gif(&frames, dir.path());
    let seq = save_video(&frames, dir.path(), "seq", VideoFormat::PngFrames, &never).unwrap();
    let opts = LoadOptions {
        start: 2,
        stride: 3,
        max_frames: Some(3),
        ..Default::default()
    };
    let expected: Vec<f32> = [2, 5, 8]
        .iter()
        .flat_map(|&i| frames.frame(i).to_vec())
        .collect();
    for path in [&gif, &seq] {
        let got = load_video(path, &opts).unwrap();
        assert_eq!(got.frames, 3, "{}", path.display());
        assert!(
            max_abs_diff(&got.data, &expected) < 0.5 / 255.0,
            "{}",
            path.display()
        );
    }
    // Without max_frames the stride runs to the end: 2, 5, 8, 11.
    let all = load_video(
        &seq,
        &LoadOptions {
            start: 2,
            stride: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all.frames, 4);
    assert_eq!(all.frame(3), frames.frame(11));
}

#[test]
fn resize_stretch_and_crop() {
    let dir = tempfile::tempdir().unwrap();
    let seq = dir.path().join("frames");
    std::fs::create_dir(&seq).unwrap();
    // 40x20: left half red, right half blue.
    let mut img = solid(40, 20, [255, 0, 0]);
    for y in 0..20 {
        for x in 20..40 {
            img.put_pixel(x, y, image::Rgb([0, 0, 255]));
        }
    }
    img.save(seq.join("f1.png")).unwrap();
    img.save(seq.join("f2.png")).unwrap();

    let stretched = load_video(
        &seq,
        &LoadOptions {
            size: Some((8, 6)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (stretched.frames, stretched.width, stretched.height),
        (2, 8, 6)
    );
    let px = |f: &Frames, x: usize, y: usize| f.frame(0)[(y * f.width + x) * 3..][..3].to_vec();
    assert!(px(&stretched, 0, 3)[0] > 0.99 && px(&stretched, 7, 3)[2] > 0.99);

    // Crop to a square keeps the centre 20x20: still half red, half blue.
    let cropped = load_video(
        &seq,
        &LoadOptions {
            size: Some((10, 10)),
            fit: Fit::Crop,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((cropped.width, cropped.height), (10, 10));
    assert!(px(&cropped, 0, 5)[0] > 0.99 && px(&cropped, 9, 5)[2] > 0.99);
    let mean_red: f32 = cropped.frame(0).chunks(3).map(|p| p[0]).sum::<f32>() / 100.0;
    assert!((mean_red - 0.5).abs() < 0.06, "{mean_red}");
}

#[test]
fn folder_frames_are_read_in_natural_order_and_other_files_ignored() {
    let dir = tempfile::tempdir().unwrap();
    for i in [1u8, 2, 10, 11, 3] {
        solid(4, 3, [i * 20, 0, 0])
            .save(dir.path().join(format!("frame{i}.png")))
            .unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not a frame").unwrap();
    std::fs::write(dir.path().join(".hidden.png"), "not a frame either").unwrap();
    let got = load_video(dir.path(), &LoadOptions::default()).unwrap();
    let reds: Vec<u8> = (0..got.frames)
        .map(|i| (got.frame(i)[0] * 255.0).round() as u8)
        .collect();
    assert_eq!(reds, [20, 40, 60, 200, 220]);
}

#[test]
fn a_still_image_is_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("still image.jpg");
    solid(16, 8, [10, 200, 30]).save(&path).unwrap();
    let got = load_video(&path, &LoadOptions::default()).unwrap();
    assert_eq!(
        (got.frames, got.height, got.width, got.fps),
        (1, 8, 16, 8.0)
    );
    assert!((got.frame(0)[1] - 200.0 / 255.0).abs() < 0.03);
}
