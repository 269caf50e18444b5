//! The real plugin's `LoadReference` → `SaveVideo` on GIFs generated here, through the
//! executor: frames, sizes and colours survive, saves never overwrite, bad sources fail
//! cleanly for their node.

use std::path::Path;

use node_abi::NodeErrorKind;
use node_host::{ExecError, Executor};
use rand::Rng;
use serde_json::json;

use super::util::{close, entries, graph, read_gif, registry, rng, run, write_gif};

type Colours = Vec<[[u8; 3]; 2]>;

fn random_colours(rng: &mut impl Rng, frames: usize) -> Colours {
    (0..frames).map(|_| [rng.random(), rng.random()]).collect()
}

fn pipeline(source: &Path, out: &Path, extra: serde_json::Value) -> serde_json::Value {
    let mut load = json!({"path": source.display().to_string()});
    load.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({
        "1": {"class_type": "LoadReference", "inputs": load},
        "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "folder": out.display().to_string(), "prefix": "clip", "format": "gif"}}
    })
}

#[test]
fn a_gif_goes_through_load_and_save_and_saves_never_overwrite() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let frames = rng.random_range(3..7);
    let colours = random_colours(&mut rng, frames);
    let (width, height) = (2 * rng.random_range(8..24u16), rng.random_range(8..24u16));
    let source = dir.path().join("reference.gif");
    write_gif(&source, width, height, &colours, 5);
    let out = dir.path().join("out");

    let mut executor = Executor::new(registry());
    let g = graph(pipeline(&source, &out, json!({})));
    let (first, _) = run(&mut executor, &g);
    first.unwrap_or_else(|e| panic!("{e}"));
    let (second, _) = run(&mut executor, &g);
    let second = second.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        second.cached,
        ["1"],
        "the unchanged load comes from the cache"
    );
    assert_eq!(second.executed, ["2"], "the saver runs again");

    let files = entries(&out);
    assert_eq!(files.len(), 2, "two runs, two numbered files: {files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("clip") && f.ends_with(".gif")),
        "{files:?}"
    );
    assert_ne!(files[0], files[1]);
    for file in &files {
        let gif = read_gif(&out.join(file));
        assert_eq!(
            (gif.width, gif.height, gif.frames.len()),
            (width as usize, height as usize, frames),
            "{file}"
        );
        for (i, [left, right]) in colours.iter().enumerate() {
            let (l, r) = (
                gif.pixel(i, 1, height as usize / 2),
                gif.pixel(i, width as usize - 2, height as usize / 2),
            );
            assert!(
                close(l, *left, 12) && close(r, *right, 12),
                "{file} frame {i}: got {l:?} {r:?}, wrote {left:?} {right:?}"
            );
        }
    }
}

#[test]
fn load_options_select_frames_and_resize() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let colours = random_colours(&mut rng, 9);
    let source = dir.path().join("nine.gif");
    write_gif(&source, 40, 20, &colours, 4);
    let out = dir.path().join("out");
    let (start, stride) = (rng.random_range(0..3usize), rng.random_range(1..4usize));
    let (w, h) = (rng.random_range(4..30u32), rng.random_range(4..30u32));
    let g = graph(pipeline(
        &source,
        &out,
        json!({"start_frame": start, "stride": stride, "width": w, "height": h, "fit": "stretch"}),
    ));
    run(&mut Executor::new(registry()), &g)
        .0
        .unwrap_or_else(|e| panic!("{e}"));
    let files = entries(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    let gif = read_gif(&out.join(&files[0]));
    let kept: Vec<usize> = (start..9).step_by(stride).collect();
    assert_eq!(
        (gif.width, gif.height, gif.frames.len()),
        (w as usize, h as usize, kept.len())
    );
    for (i, &source_frame) in kept.iter().enumerate() {
        let left = gif.pixel(i, 0, h as usize / 2);
        assert!(
            close(left, colours[source_frame][0], 16),
            "frame {i} (source {source_frame}): {left:?} vs {:?}",
            colours[source_frame][0]
        );
    }
}

/// Runs LoadReference on `source` and returns the node error.
fn load_error(source: &Path) -> node_abi::NodeError {
    let out = source.parent().unwrap().join("out");
    let g = graph(pipeline(source, &out, json!({})));
    let err = run(&mut Executor::new(registry()), &g)
        .0
        .expect_err("the load must fail");
    assert!(entries(&out).is_empty(), "nothing saved");
    match err {
        ExecError::Node {
            node,
            class_type,
            error,
        } => {
            assert_eq!((node.as_str(), class_type.as_str()), ("1", "LoadReference"));
            assert!(!error.message.contains('\n'), "one line: {error}");
            assert_ne!(error.kind, NodeErrorKind::Panic, "{error}");
            *error
        }
        other => panic!("expected a node error, got {other}"),
    }
}

#[test]
fn bad_sources_fail_for_their_node_with_a_clear_message() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();

    let whole = dir.path().join("whole.gif");
    write_gif(&whole, 32, 32, &random_colours(&mut rng, 6), 5);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path().join("truncated.gif");
    let cut = rng.random_range(bytes.len() / 3..bytes.len() - 8);
    std::fs::write(&truncated, &bytes[..cut]).unwrap();
    let e = load_error(&truncated);
    assert!(e.message.contains("truncated.gif"), "{e}");

    let header_only = dir.path().join("header.gif");
    std::fs::write(&header_only, &bytes[..10]).unwrap();
    assert!(load_error(&header_only).message.contains("header.gif"));

    let empty = dir.path().join("frames");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no frames here").unwrap();
    let e = load_error(&empty);
    assert!(
        e.message.contains("frames") && e.message.contains("no PNG or JPEG"),
        "{e}"
    );

    let missing = dir.path().join("missing.gif");
    assert!(load_error(&missing).message.contains("not found"));

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(load_error(&text).message.contains("unsupported"));
}
