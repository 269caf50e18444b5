//! The motion-transfer example graph (`examples/motion-transfer.json`) run by `nodehost`
//! with the real plugin and the shipped model: a short real run, and bad inputs refused with
//! the node and input named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::util::{nodehost_in, output, plugin_dir, read_gif, Output, REAL_PLUGIN};

const TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the example graph in a temporary folder with `--set` overrides.
fn run_example(dir: &Path, sets: &[String]) -> Output {
    let plugins = plugin_dir(dir, &[REAL_PLUGIN]);
    let reference = repo().join("examples/references/red_circle_right.gif");
    let mut cmd = nodehost_in(dir);
    cmd.arg("--plugin-dir")
        .arg(&plugins)
        .arg("run")
        .arg(repo().join("examples/motion-transfer.json"))
        .arg("--plain");
    cmd.arg("--set")
        .arg(format!("1.path={}", reference.display()));
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    output(&mut cmd, TIMEOUT)
}

fn short() -> Vec<String> {
    [
        "4.steps=3",
        "4.guided_fraction=0.34",
        "4.inner_steps=3",
        "4.cfg=2.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn the_example_graph_transfers_motion_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(dir.path(), &short());
    out.assert_success();
    // One guided step of 3 inner steps with reuse interval 3: 1 reference + 1 real pass.
    assert!(
        out.stderr.contains("2 real forward / 1 real backward"),
        "{out:#?}"
    );
    let gif = dir.path().join("output/motion-transfer_00001.gif");
    let decoded = read_gif(&gif);
    assert_eq!(
        (decoded.frames.len(), decoded.width, decoded.height),
        (8, 48, 48)
    );
}

#[test]
fn an_empty_prompt_is_refused_naming_the_node_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = short();
    sets.push("3.positive=".into());
    let out = run_example(dir.path(), &sets);
    out.assert_error(&["node 3", "EncodePrompt", "positive", "empty"]);
    assert!(!dir.path().join("output").exists(), "nothing written");
}

#[test]
fn a_single_frame_reference_cannot_guide_motion() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = short();
    sets.push("1.frame_count=1".into());
    let out = run_example(dir.path(), &sets);
    out.assert_error(&["node 4", "GradientCachedSampler", "reference", "at least 2"]);
}

#[test]
fn a_size_the_model_cannot_take_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = short();
    sets.extend(["1.width=50".to_string(), "1.height=50".to_string()]);
    let out = run_example(dir.path(), &sets);
    out.assert_error(&["node 4", "reference", "multiples of 4"]);
}

#[test]
fn cuda_on_a_machine_without_it_is_an_error_not_a_silent_cpu_run() {
    if fastvmt_kernels_cuda_present() {
        println!("skipped: this machine has a CUDA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sets = short();
    sets.push("2.device=cuda".into());
    let out = run_example(dir.path(), &sets);
    out.assert_error(&["node 2", "LocalAttentionDiT", "device", "not available"]);
}

fn fastvmt_kernels_cuda_present() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}
