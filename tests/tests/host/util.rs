//! Shared helpers: the built artifacts, the loaded plugins, graphs from JSON, events, GIFs
//! and running `nodehost` with a timeout.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX, EXE_SUFFIX};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use node_host::{
    loader::load_plugin, CancelToken, Event, ExecError, Executor, Graph, Registry, RunReport,
};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value as Json;

pub const REAL_PLUGIN: &str = "fastvmt_plugin";
pub const TEST_PLUGIN: &str = "test_nodes_plugin";
pub const INCOMPATIBLE_PLUGIN: &str = "incompatible_plugin";

/// `target/<profile>`: test executables live in its `deps/` folder.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its path");
    let deps = exe.parent().expect("the test executable is in a folder");
    assert!(
        deps.file_name().is_some_and(|n| n == "deps"),
        "expected the test executable in target/<profile>/deps, it is {}",
        exe.display()
    );
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// A file cargo built into `target/<profile>`, or a failure saying how to build it.
pub fn artifact(file: &str) -> PathBuf {
    let path = target_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: these tests run the workspace's nodehost binary; build it with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The shared library of the workspace crate `lib_name` (e.g. `fastvmt_plugin`): `cargo
/// build` puts it in `target/<profile>`, `cargo test` (which builds it as a dependency of this
/// crate) only in `target/<profile>/deps`; the newer of the two wins.
pub fn library(lib_name: &str) -> PathBuf {
    let file = format!("{DLL_PREFIX}{lib_name}{DLL_SUFFIX}");
    let target = target_dir();
    [target.join(&file), target.join("deps").join(&file)]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "{file} is missing from {} and its deps/ folder: these tests load the workspace's built plugins; build them with `cargo test --workspace`",
                target.display()
            )
        })
}

/// The `nodehost` binary. Cargo builds it for `node-host-cli`'s own integration tests, so
/// `cargo test --workspace` (or `-p node-host-cli -p workspace-tests`) keeps it current; with
/// `-p workspace-tests` alone a binary from an earlier build is used as it is.
pub fn nodehost() -> PathBuf {
    artifact(&format!("nodehost{EXE_SUFFIX}"))
}

/// The real plugin and the test-nodes plugin, loaded once per process (libraries are never
/// unloaded anyway).
pub fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let plugins = [TEST_PLUGIN, REAL_PLUGIN]
                .iter()
                .map(|name| load_plugin(&library(name)).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            let registry = Registry::new(plugins);
            assert!(registry.conflicts.is_empty(), "{:?}", registry.conflicts);
            Arc::new(registry)
        })
        .clone()
}

pub fn graph(json: Json) -> Graph {
    Graph::from_json(json, Path::new("test.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// A seeded generator; the seed is printed so a failure can be replayed.
pub fn rng() -> StdRng {
    let seed: u64 = rand::random();
    eprintln!("random seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// Runs `graph`, collecting its events.
pub fn run(executor: &mut Executor, graph: &Graph) -> (Result<RunReport, ExecError>, Vec<Event>) {
    run_with(executor, graph, &CancelToken::new(), &|_| {})
}

/// Runs `graph` with `cancel`, calling `also` on each event as it happens.
pub fn run_with(
    executor: &mut Executor,
    graph: &Graph,
    cancel: &CancelToken,
    also: &(dyn Fn(&Event) + Sync),
) -> (Result<RunReport, ExecError>, Vec<Event>) {
    let events = Mutex::new(Vec::new());
    let result = executor.run(
        graph,
        &|e| {
            also(&e);
            events.lock().unwrap().push(e);
        },
        cancel,
    );
    (result, events.into_inner().unwrap())
}

/// The lines of a `log` file the test nodes append to (none when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Names of the entries of a folder, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A folder holding links to the given plugin libraries, for `--plugin-dir`.
pub fn plugin_dir(root: &Path, libs: &[&str]) -> PathBuf {
    let dir = root.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for lib in libs {
        let src = library(lib);
        let dst = dir.join(src.file_name().unwrap());
        #[cfg(unix)]
        std::os::unix::fs::symlink(&src, &dst).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&src, &dst).unwrap();
    }
    dir
}

/// What a finished `nodehost` run printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts a clean failure: a non-zero exit that is not a crash, no panic, and an
    /// `error:` line mentioning each of `fragments`. Returns that line.
    #[track_caller]
    pub fn assert_error(&self, fragments: &[&str]) -> String {
        assert!(
            matches!(self.code, Some(c) if c != 0 && c != 101),
            "expected a clean non-zero exit: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "a panic: {self:#?}");
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line: {self:#?}");
        let line = errors[0];
        for f in fragments {
            assert!(
                line.contains(f),
                "the error line {line:?} should mention {f:?}\n{self:#?}"
            );
        }
        line.to_string()
    }

    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
    }
}

/// A `nodehost` command run in `cwd`, with no plugin path from the environment.
pub fn nodehost_in(cwd: &Path) -> Command {
    let mut cmd = Command::new(nodehost());
    cmd.current_dir(cwd)
        .env_remove(node_host::loader::PLUGIN_PATH_ENV)
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, failing the test if it takes longer than `timeout` (a hang).
pub fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nodehost starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?} (a hang?)\nstdout: {}\nstderr: {}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Writes an animated GIF whose frame `i` is colour `colours[i][0]` on the left half and
/// `colours[i][1]` on the right, with exact (palette) colours.
pub fn write_gif(path: &Path, width: u16, height: u16, colours: &[[[u8; 3]; 2]], delay_cs: u16) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = gif::Encoder::new(file, width, height, &[]).unwrap();
    encoder.set_repeat(gif::Repeat::Infinite).unwrap();
    for pair in colours {
        let indices: Vec<u8> = (0..height as usize)
            .flat_map(|_| (0..width as usize).map(|x| u8::from(x >= width as usize / 2)))
            .collect();
        let frame = gif::Frame {
            width,
            height,
            delay: delay_cs,
            palette: Some(pair.iter().flatten().copied().collect()),
            buffer: indices.into(),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).unwrap();
    }
}

/// A decoded GIF: canvas size and each frame composited as RGB bytes.
pub struct DecodedGif {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<u8>>,
}

impl DecodedGif {
    pub fn pixel(&self, frame: usize, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        let f = &self.frames[frame];
        [f[i], f[i + 1], f[i + 2]]
    }
}

pub fn read_gif(path: &Path) -> DecodedGif {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options
        .read_info(std::fs::File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (width, height) = (decoder.width() as usize, decoder.height() as usize);
    let mut canvas = vec![0u8; width * height * 3];
    let mut frames = Vec::new();
    while let Some(frame) = decoder
        .read_next_frame()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    {
        for y in 0..frame.height as usize {
            for x in 0..frame.width as usize {
                let src = (y * frame.width as usize + x) * 4;
                if frame.buffer[src + 3] == 0 {
                    continue;
                }
                let dst = ((y + frame.top as usize) * width + x + frame.left as usize) * 3;
                canvas[dst..dst + 3].copy_from_slice(&frame.buffer[src..src + 3]);
            }
        }
        frames.push(canvas.clone());
    }
    DecodedGif {
        width,
        height,
        frames,
    }
}

/// Whether two colours are within `tolerance` per channel.
pub fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}
