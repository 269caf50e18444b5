//! Finding ONNX Runtime's shared library and creating the one process-wide environment.
//!
//! Search order: `ORT_DYLIB_PATH`; the per-user cache; an installed Python `onnxruntime`
//! package; else the `onnxruntime` wheel is fetched from PyPI with pip into the cache and the
//! library extracted from it. Nothing is downloaded from anywhere but the package registry.
//! ONNX Runtime allows one environment per process, ever, so the result (success or the
//! reason for failure) is kept for the life of the process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The ONNX Runtime release fetched when none is found (the GPU build of the same release
/// is staged on GPU hosts).
pub const ORT_VERSION: &str = "1.30.0";
/// Oldest library accepted (the `api-22` feature the crate is built with).
pub const ORT_MIN_MINOR: u32 = 22;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtSetupError {
    #[error("ORT_DYLIB_PATH points to {0}, which does not exist")]
    EnvPathMissing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime {found} at {path} is too old (need 1.{ORT_MIN_MINOR} or newer)")]
    TooOld { path: PathBuf, found: String },
    #[error("ONNX Runtime library not found and could not be fetched: {0}. Install it with `python3 -m pip install onnxruntime=={ORT_VERSION}` or set ORT_DYLIB_PATH to libonnxruntime.so")]
    Fetch(String),
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

/// Where the library came from, for `doctor` and logs.
#[derive(Debug, Clone)]
pub struct OrtLibrary {
    pub path: PathBuf,
    pub version: String,
    pub source: &'static str,
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FASTVMT_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("fastvmt")
}

fn cached_library() -> PathBuf {
    cache_dir()
        .join(format!("onnxruntime-{ORT_VERSION}"))
        .join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

/// The library inside an installed Python `onnxruntime` package, if any.
fn python_package_library() -> Option<PathBuf> {
    let script = "import glob, os, onnxruntime as o; \
                  libs = sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), 'capi', 'libonnxruntime.so*'))); \
                  print(libs[-1] if libs else '')";
    let out = Command::new(python()).args(["-c", script]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty())
        .then(|| PathBuf::from(path))
        .filter(|p| p.is_file())
}

/// Fetches the wheel with pip (from the package registry only) and extracts the library.
fn fetch_wheel(target: &Path) -> Result<(), String> {
    let dir = target.parent().ok_or("bad cache path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let download = dir.join(format!(".download-{}", std::process::id()));
    eprintln!("fastvmt: ONNX Runtime not found; fetching the onnxruntime=={ORT_VERSION} wheel from PyPI with pip into {} …", dir.display());
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
        ])
        .args([
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_27_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(&download)
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&download);
        return Err(format!(
            "pip download of onnxruntime=={ORT_VERSION} failed ({status})"
        ));
    }
    // Extract to a temporary name, then rename: a concurrent or interrupted fetch never
    // leaves a truncated library under the final name.
    let script = "import glob, os, sys, zipfile\n\
                  whl = glob.glob(os.path.join(sys.argv[1], 'onnxruntime-*.whl'))[0]\n\
                  z = zipfile.ZipFile(whl)\n\
                  name = [n for n in z.namelist() if os.path.basename(n).startswith('libonnxruntime.so.') and '/capi/' in n][0]\n\
                  tmp = sys.argv[2] + '.part'\n\
                  open(tmp, 'wb').write(z.read(name))\n\
                  os.chmod(tmp, 0o755)\n\
                  os.replace(tmp, sys.argv[2])\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&download)
        .arg(target)
        .status();
    let _ = std::fs::remove_dir_all(&download);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "extracting the library from the wheel failed ({s})"
        )),
        Err(e) => Err(format!("cannot run python to extract the wheel: {e}")),
    }
}

/// Finds the library without loading it (used by `doctor` too).
pub fn locate(fetch: bool) -> Result<(PathBuf, &'static str), OrtSetupError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok((p, "ORT_DYLIB_PATH"))
        } else {
            Err(OrtSetupError::EnvPathMissing(p))
        };
    }
    let cached = cached_library();
    if cached.is_file() {
        return Ok((cached, "cache"));
    }
    if let Some(p) = python_package_library() {
        return Ok((p, "python onnxruntime package"));
    }
    if !fetch {
        return Err(OrtSetupError::Fetch("not in ORT_DYLIB_PATH, the cache or a Python package (it would be fetched on first use)".into()));
    }
    fetch_wheel(&cached).map_err(OrtSetupError::Fetch)?;
    Ok((cached, "fetched from PyPI"))
}

fn version_of(path: &Path) -> String {
    // libonnxruntime.so.1.30.0 → 1.30.0; the build info string is the authority once loaded.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("libonnxruntime.so.")
        .unwrap_or("unknown")
        .to_string()
}

struct State {
    library: OrtLibrary,
    env: ort::environment::Environment,
}

static STATE: OnceLock<Result<State, OrtSetupError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (finding or fetching the library first).
pub fn environment(
) -> Result<(&'static ort::environment::Environment, &'static OrtLibrary), OrtSetupError> {
    let state = STATE.get_or_init(|| {
        let (path, source) = locate(true)?;
        let version = version_of(&path);
        if let Some(minor) = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
        {
            if minor < ORT_MIN_MINOR {
                return Err(OrtSetupError::TooOld {
                    path,
                    found: version,
                });
            }
        }
        // init_from reports a missing or broken library as an error; ort's lazy loading
        // would panic instead.
        let builder = ort::init_from(&path).map_err(|e| OrtSetupError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let env = builder
            .with_name("fastvmt")
            .build()
            .map_err(|e| OrtSetupError::Environment(e.to_string()))?;
        let build = ort::info().to_string();
        let version = build
            .split(|c: char| c.is_whitespace() || c == ',')
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
            .map(str::to_string)
            .unwrap_or(version);
        Ok(State {
            library: OrtLibrary {
                path,
                version,
                source,
            },
            env,
        })
    });
    match state {
        Ok(s) => Ok((&s.env, &s.library)),
        Err(e) => Err(e.clone()),
    }
}
