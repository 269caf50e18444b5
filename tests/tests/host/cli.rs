//! The `nodehost` binary: listing, validating and running graphs, doctor, malformed inputs
//! (each a clean one-line error, never a panic or a hang) and Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use node_abi::SDK_VERSION;
use rand::Rng;
use serde_json::{json, Value as Json};

use super::util::{
    entries, library, lines, nodehost, nodehost_in, output, plugin_dir, read_gif, rng, target_dir,
    write_gif, Output, INCOMPATIBLE_PLUGIN, REAL_PLUGIN, TEST_PLUGIN,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary working folder with a plugin folder holding the real and the test plugins.
struct Workspace {
    dir: tempfile::TempDir,
    plugins: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        Self::with(&[REAL_PLUGIN, TEST_PLUGIN])
    }

    fn with(libs: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = plugin_dir(dir.path(), libs);
        Workspace { dir, plugins }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_graph(&self, name: &str, doc: &Json) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        path
    }

    /// Runs `nodehost --plugin-dir <plugins> ARGS…` in the folder.
    fn nodehost(&self, args: &[&str]) -> Output {
        let mut cmd = nodehost_in(self.path());
        cmd.arg("--plugin-dir").arg(&self.plugins).args(args);
        output(&mut cmd, TIMEOUT)
    }
}

#[test]
fn nodes_lists_every_class_as_a_table() {
    let ws = Workspace::new();
    let out = ws.nodehost(&["nodes"]);
    out.assert_success();
    for fragment in [
        "plugin org.fastvmt.nodes",
        "plugin org.fastvmt.test-nodes",
        "LoadReference",
        "SaveVideo (output)",
        "MakeNumber",
        "Collect (output)",
    ] {
        assert!(
            out.stdout.contains(fragment),
            "{fragment:?} missing from\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains(&format!("(SDK {SDK_VERSION})")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.is_empty(),
        "no warnings with a clean plugin folder: {}",
        out.stderr
    );
}

#[test]
fn nodes_json_is_valid_json_describing_the_classes() {
    let ws = Workspace::new();
    let out = ws.nodehost(&["nodes", "--json"]);
    out.assert_success();
    let json: Json =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.stdout));
    let classes = json.as_object().expect("an object keyed by class_type");
    for class in [
        "LoadReference",
        "SaveVideo",
        "MakeNumber",
        "AddNumbers",
        "SlowCounter",
        "WriteText",
        "Collect",
        "Panic",
    ] {
        assert_eq!(classes[class]["class_type"], class, "{class}");
    }
    assert_eq!(classes["SaveVideo"]["output_node"], true);
    assert_eq!(classes["LoadReference"]["output_node"], false);
    assert_eq!(classes["LoadReference"]["plugin"], "org.fastvmt.nodes");
    assert_eq!(classes["LoadReference"]["outputs"][0]["type"], "VIDEO");
    assert_eq!(classes["MakeNumber"]["plugin"], "org.fastvmt.test-nodes");
    let value = &classes["MakeNumber"]["inputs"][0];
    assert_eq!(
        (
            value["name"].as_str(),
            value["min"].as_f64(),
            value["max"].as_f64()
        ),
        (Some("value"), Some(-1e6), Some(1e6))
    );
    assert_eq!(classes["AddNumbers"]["inputs"][0]["accepts"], "link");
}

/// `1` and `2` → AddNumbers `3` → Collect `4` (logging to `log.txt`).
fn sum_graph(a: i64, b: i64) -> Json {
    json!({
        "1": {"class_type": "MakeNumber", "inputs": {"value": a}},
        "2": {"class_type": "MakeNumber", "inputs": {"value": b}},
        "3": {"class_type": "AddNumbers", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Collect", "inputs": {"value": ["3", 0], "log": "log.txt"}, "_meta": {"title": "result"}}
    })
}

#[test]
fn validate_passes_a_good_graph_and_lists_every_problem_of_a_bad_one() {
    let ws = Workspace::new();
    let good = ws.write_graph("good.json", &sum_graph(1, 2));
    let out = ws.nodehost(&["validate", good.to_str().unwrap()]);
    out.assert_success();
    assert!(out.stdout.contains("ok (4 nodes)"), "{}", out.stdout);

    let bad = ws.write_graph(
        "bad.json",
        &json!({
            "1": {"class_type": "MakeNumber", "inputs": {"value": 1e300}},
            "2": {"class_type": "Teleport", "inputs": {}},
            "3": {"class_type": "AddNumbers", "inputs": {"a": ["1", 0], "b": ["9", 0], "c": 1}},
            "4": {"class_type": "Collect", "inputs": {"value": ["3", 2]}},
            "5": {"class_type": "AddNumbers", "inputs": {"a": ["5", 0], "b": ["1", 0]}},
            "6": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "format": "webp"}}
        }),
    );
    let out = ws.nodehost(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(!out.stderr.contains("panicked"));
    let expected = [
        "node 1 (MakeNumber), input 'value'",
        "node 2 (Teleport)",
        "node 3 (AddNumbers), input 'b': links to node 9",
        "node 3 (AddNumbers), input 'c'",
        "node 4 (Collect), input 'value': links to output 2",
        "node 5 (AddNumbers): is part of a cycle",
        "node 6 (SaveVideo), input 'video': expects VIDEO",
        "node 6 (SaveVideo), input 'format'",
    ];
    assert!(
        out.stdout
            .contains(&format!("{} problem(s)", expected.len())),
        "{}",
        out.stdout
    );
    for e in expected {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("- {e}"))),
            "{e:?} missing from\n{}",
            out.stdout
        );
    }
}

#[test]
fn run_uses_set_overrides_without_editing_the_file() {
    let mut rng = rng();
    let ws = Workspace::new();
    let (a, b, c) = (
        rng.random_range(-1000..1000i64),
        rng.random_range(-1000..1000i64),
        rng.random_range(-1000..1000i64),
    );
    let path = ws.write_graph("sum.json", &sum_graph(a, b));
    let before = std::fs::read_to_string(&path).unwrap();
    let log = ws.path().join("log.txt");

    ws.nodehost(&["run", "sum.json", "--plain"])
        .assert_success();
    assert_eq!(lines(&log), [format!("Collect {}", a + b)]);

    let set = format!("1.value={c}");
    let out = ws.nodehost(&["run", "sum.json", "--set", &set, "--set", "4.log=other.txt"]);
    out.assert_success();
    assert!(out.stdout.contains("done in"), "{}", out.stdout);
    assert_eq!(
        lines(&ws.path().join("other.txt")),
        [format!("Collect {}", c + b)]
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "the graph file is untouched"
    );

    // A link can be overridden too: Collect the first number directly.
    ws.nodehost(&["run", "sum.json", "--set", r#"4.value=["2", 0]"#])
        .assert_success();
    assert_eq!(
        lines(&log),
        [format!("Collect {}", a + b), format!("Collect {b}")]
    );
}

#[test]
fn bad_overrides_are_one_line_errors() {
    let ws = Workspace::new();
    ws.write_graph("sum.json", &sum_graph(1, 2));
    ws.nodehost(&["run", "sum.json", "--set", "9.value=3"])
        .assert_error(&["--set 9.value=3", "no node 9"]);
    ws.nodehost(&["run", "sum.json", "--set", "1.value"])
        .assert_error(&["--set 1.value", "ID.INPUT=VALUE"]);
    ws.nodehost(&["run", "sum.json", "--set", "value=3"])
        .assert_error(&["--set value=3"]);
    for (set, why) in [
        ("1.value=2000000", "maximum"),
        ("1.value=-2000000", "minimum"),
        ("1.value=1e300", "integer"),
        ("1.value=0.5", "integer"),
    ] {
        let out = ws.nodehost(&["run", "sum.json", "--set", set]);
        out.assert_error(&["sum.json"]);
        assert!(
            out.stderr.contains("node 1 (MakeNumber), input 'value'") && out.stderr.contains(why),
            "{set}: {out:#?}"
        );
    }
    let out = ws.nodehost(&["run", "sum.json", "--set", "1.value=twelve"]);
    out.assert_error(&["sum.json"]);
    assert!(
        out.stderr.contains("input 'value': expected an integer"),
        "{out:#?}"
    );
    assert!(!ws.path().join("log.txt").exists(), "nothing ran");
}

#[test]
fn malformed_graph_files_are_one_line_errors() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("broken.json"),
        "{\"1\": {\"class_type\": \"MakeNumber\", \"inputs\": {\"value\": 3,}}",
    )
    .unwrap();
    std::fs::write(ws.path().join("list.json"), "[1, 2, 3]").unwrap();
    std::fs::write(ws.path().join("noclass.json"), r#"{"5": {"inputs": {}}}"#).unwrap();
    std::fs::write(
        ws.path().join("badlink.json"),
        r#"{"5": {"class_type": "Collect", "inputs": {"value": ["1", -2]}}}"#,
    )
    .unwrap();
    for command in ["validate", "run"] {
        ws.nodehost(&[command, "broken.json"]).assert_error(&[
            "broken.json",
            "not valid JSON",
            "line 1",
        ]);
        ws.nodehost(&[command, "missing.json"])
            .assert_error(&["missing.json", "cannot read"]);
        ws.nodehost(&[command, "list.json"])
            .assert_error(&["list.json", "JSON object"]);
        ws.nodehost(&[command, "noclass.json"]).assert_error(&[
            "noclass.json",
            "node 5",
            "class_type",
        ]);
        ws.nodehost(&[command, "badlink.json"]).assert_error(&[
            "badlink.json",
            "node 5",
            "input 'value'",
        ]);
    }
}

#[test]
fn real_runs_write_numbered_gifs_and_bad_sources_fail_cleanly() {
    let mut rng = rng();
    let ws = Workspace::new();
    let frames = rng.random_range(2..6usize);
    let colours: Vec<[[u8; 3]; 2]> = (0..frames).map(|_| [rng.random(), rng.random()]).collect();
    write_gif(&ws.path().join("ref.gif"), 24, 16, &colours, 8);
    let graph = json!({
        "1": {"class_type": "LoadReference", "inputs": {"path": "ref.gif"}},
        "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "folder": "out", "prefix": "take", "format": "gif"}}
    });
    ws.write_graph("video.json", &graph);
    for _ in 0..2 {
        let out = ws.nodehost(&["run", "video.json"]);
        out.assert_success();
        assert!(
            out.stderr.contains("[2] SaveVideo finished"),
            "{}",
            out.stderr
        );
    }
    let files = entries(&ws.path().join("out"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("take") && f.ends_with(".gif")),
        "{files:?}"
    );
    for f in &files {
        let gif = read_gif(&ws.path().join("out").join(f));
        assert_eq!(
            (gif.width, gif.height, gif.frames.len()),
            (24, 16, frames),
            "{f}"
        );
    }

    // A truncated GIF, an empty frame folder, a missing file, a huge size.
    let bytes = std::fs::read(ws.path().join("ref.gif")).unwrap();
    std::fs::write(ws.path().join("cut.gif"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    std::fs::create_dir(ws.path().join("no-frames")).unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("1.path=cut.gif", &["node 1 (LoadReference)", "cut.gif"]),
        (
            "1.path=no-frames",
            &["node 1 (LoadReference)", "no-frames", "no PNG or JPEG"],
        ),
        (
            "1.path=nowhere.gif",
            &["node 1 (LoadReference)", "nowhere.gif", "not found"],
        ),
        (
            "1.path=",
            &["node 1 (LoadReference)", "input 'path'", "empty"],
        ),
    ];
    for (set, fragments) in cases {
        ws.nodehost(&["run", "video.json", "--set", set])
            .assert_error(fragments);
    }
    for set in [
        "1.width=1000000000",
        "1.width=1e300",
        "1.width=-5",
        "1.width=99999999999999999999999",
    ] {
        let out = ws.nodehost(&["run", "video.json", "--set", set]);
        out.assert_error(&["video.json"]);
        assert!(
            out.stderr.contains("node 1 (LoadReference), input 'width'"),
            "{set}: {out:#?}"
        );
    }
    assert_eq!(
        entries(&ws.path().join("out")).len(),
        2,
        "failed runs write nothing"
    );
}

#[test]
fn a_panicking_node_fails_the_run_cleanly() {
    let ws = Workspace::new();
    ws.write_graph(
        "panic.json",
        &json!({
            "1": {"class_type": "Panic", "inputs": {"message": "kaboom in a node"}},
            "2": {"class_type": "Collect", "inputs": {"value": ["1", 0]}}
        }),
    );
    let mut cmd = nodehost_in(ws.path());
    cmd.arg("--plugin-dir")
        .arg(&ws.plugins)
        .args(["run", "panic.json"]);
    let out = output(&mut cmd, TIMEOUT);
    assert!(
        matches!(out.code, Some(c) if c != 0 && c != 101),
        "{out:#?}"
    );
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{out:#?}");
    assert!(
        errors[0].contains("node 1 (Panic)") && errors[0].contains("kaboom in a node"),
        "{out:#?}"
    );
}

#[test]
fn doctor_reports_plugins_refusals_and_onnx_runtime_honestly() {
    let ws = Workspace::with(&[REAL_PLUGIN, TEST_PLUGIN, INCOMPATIBLE_PLUGIN]);
    let out = ws.nodehost(&["doctor"]);
    out.assert_success();
    let text = &out.stdout;
    assert!(text.contains(&format!("host SDK {SDK_VERSION}")), "{text}");
    assert!(text.contains("[ok] plugin org.fastvmt.nodes"), "{text}");
    assert!(
        text.contains("[ok] plugin org.fastvmt.test-nodes"),
        "{text}"
    );
    let refused = text
        .lines()
        .find(|l| l.contains("[refused]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        refused.contains("99.0") && refused.contains(&SDK_VERSION.to_string()),
        "{refused}"
    );
    let ort = text
        .lines()
        .find(|l| l.contains("ONNX Runtime library"))
        .unwrap_or_else(|| panic!("{text}"));
    if ort.contains("[ok]") {
        // Found: the line names a version and a library path that exists.
        let path = ort.split(['(', ',']).nth(1).map(str::trim).unwrap_or("");
        assert!(
            Path::new(path).is_file(),
            "doctor says ONNX Runtime is at {path:?}, which does not exist: {ort}"
        );
    } else {
        assert!(
            ort.contains("[no]") && ort.len() > "  [no] ONNX Runtime library: ".len() + 10,
            "a reason is given: {ort}"
        );
    }

    // Pointed at a library that is not there, it says so.
    let bogus = ws.path().join("no-such-libonnxruntime.so");
    let mut cmd = nodehost_in(ws.path());
    cmd.env("ORT_DYLIB_PATH", &bogus)
        .arg("--plugin-dir")
        .arg(&ws.plugins)
        .arg("doctor");
    let out = output(&mut cmd, TIMEOUT);
    out.assert_success();
    let ort = out
        .stdout
        .lines()
        .find(|l| l.contains("ONNX Runtime library"))
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert!(
        ort.contains("[no]") && ort.contains(&bogus.display().to_string()),
        "{ort}"
    );
}

#[test]
fn plugins_are_found_next_to_the_binary_and_through_the_environment() {
    // A copy of the binary with the real plugin beside it (a link would resolve to cargo's
    // folder): without --plugin-dir it finds that plugin.
    let dir = tempfile::tempdir_in(target_dir()).unwrap();
    let exe = dir.path().join(nodehost().file_name().unwrap());
    let link_or_copy = |from: &Path, to: &Path| {
        std::fs::hard_link(from, to)
            .or_else(|_| std::fs::copy(from, to).map(|_| ()))
            .unwrap()
    };
    link_or_copy(&nodehost(), &exe);
    let plugin = library(REAL_PLUGIN);
    link_or_copy(&plugin, &dir.path().join(plugin.file_name().unwrap()));
    let run = |plugin_path: Option<&Path>, args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = Command::new(&exe);
        cmd.current_dir(dir.path())
            .env_remove(node_host::loader::PLUGIN_PATH_ENV)
            .stdin(Stdio::null());
        if let Some(p) = plugin_path {
            cmd.env(node_host::loader::PLUGIN_PATH_ENV, p);
        }
        cmd.args(args.iter().map(|a| a.as_ref()));
        output(&mut cmd, TIMEOUT)
    };
    let out = run(None, &[&"nodes", &"--json"]);
    out.assert_success();
    let json: Json = serde_json::from_str(&out.stdout).unwrap();
    assert!(json.get("LoadReference").is_some(), "{}", out.stdout);
    assert!(
        json.get("MakeNumber").is_none(),
        "only the plugin beside the binary: {}",
        out.stdout
    );

    // NODEHOST_PLUGIN_PATH is searched too (before the binary's folder).
    let extra = dir.path().join("extra");
    let extra_plugins = plugin_dir(&extra, &[TEST_PLUGIN]);
    std::fs::write(extra_plugins.join("junk.so"), "not a library").unwrap();
    let out = run(Some(extra_plugins.as_path()), &[&"nodes"]);
    out.assert_success();
    assert!(
        out.stdout.contains("plugin org.fastvmt.test-nodes")
            && out.stdout.contains("plugin org.fastvmt.nodes"),
        "{out:#?}"
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("warning:")
            && l.contains("junk.so")
            && l.contains("not a loadable node plugin")),
        "{out:#?}"
    );

    // --plugin-dir replaces the binary's folder (the environment's folders still count).
    let out = run(
        Some(extra_plugins.as_path()),
        &[&"--plugin-dir", &extra_plugins, &"nodes"],
    );
    out.assert_success();
    assert!(
        !out.stdout.contains("plugin org.fastvmt.nodes "),
        "{out:#?}"
    );
    // One without plugins says how to get one.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(None, &[&"--plugin-dir", &empty, &"nodes"]);
    out.assert_error(&["no plugin found", "empty"]);
}

/// Starts `nodehost run GRAPH` and sends it SIGINT once a stderr line matches `trigger`;
/// returns the exit code, stderr and the time from the signal to the exit.
#[cfg(unix)]
fn interrupt(ws: &Workspace, graph: &str, trigger: &str) -> (Option<i32>, String, Duration) {
    let mut cmd = nodehost_in(ws.path());
    cmd.arg("--plugin-dir")
        .arg(&ws.plugins)
        .args(["run", graph, "--plain"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no {trigger:?} line within {TIMEOUT:?}: {seen:#?}")
        });
        let hit = line.contains(trigger);
        seen.push(line);
        if hit {
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "{seen:#?}");
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("nodehost did not stop within 10 s of Ctrl-C: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let latency = signalled.elapsed();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    (exit.code(), seen.join("\n"), latency)
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_promptly_and_leaves_no_partial_output() {
    let ws = Workspace::new();
    std::fs::create_dir(ws.path().join("out")).unwrap();
    let slow = |steps: u64, step_ms: u64, chunks: u64, chunk_ms: u64| {
        json!({
            "1": {"class_type": "SlowCounter", "inputs": {"steps": steps, "step_ms": step_ms}},
            "2": {"class_type": "WriteText", "inputs": {"value": ["1", 0], "folder": "out", "chunks": chunks, "chunk_ms": chunk_ms}}
        })
    };
    // While counting (20 s if not cancelled), then while writing (20 s too).
    ws.write_graph("count.json", &slow(10_000, 2, 1, 0));
    ws.write_graph("write.json", &slow(1, 0, 10_000, 2));
    for (graph, trigger) in [("count.json", "[1] 3/10000"), ("write.json", "[2] 3/10000")] {
        let (code, stderr, latency) = interrupt(&ws, graph, trigger);
        assert_eq!(code, Some(130), "{graph}: {stderr}");
        assert!(latency < Duration::from_secs(2), "{graph}: {latency:?}");
        assert!(
            stderr.contains("cancelled") && !stderr.contains("panicked"),
            "{graph}: {stderr}"
        );
        assert_eq!(
            entries(&ws.path().join("out")),
            Vec::<String>::new(),
            "{graph}: no output and no temporary file"
        );
    }
}
