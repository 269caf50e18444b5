//! Finding and loading plugin libraries.
//!
//! `abi_stable` checks the library's abi_stable version and the layout of every type
//! reachable from the root module; we then check the SDK version the plugin was built
//! against. Libraries are never unloaded (abi_stable's rule), so values a plugin made stay
//! valid for the life of the process.

use std::path::{Path, PathBuf};

use node_abi::{
    abi_stable::library::{lib_header_from_path, LibraryError},
    NodeDescriptor, PluginInfo, PluginModRef, SdkVersion, SDK_VERSION,
};

/// Environment variable with extra plugin folders (separated like `PATH`).
pub const PLUGIN_PATH_ENV: &str = "NODEHOST_PLUGIN_PATH";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: not a loadable node plugin: {message}")]
    NotAPlugin { path: PathBuf, message: String },
    #[error("{path}: plugin '{plugin}' was built for SDK {plugin_sdk}, this host speaks SDK {host_sdk} (a plugin must have the same major version and a minor version no newer than the host's); rebuild it against SDK {host_sdk}")]
    IncompatibleSdk {
        path: PathBuf,
        plugin: String,
        plugin_sdk: SdkVersion,
        host_sdk: SdkVersion,
    },
    #[error("{path}: incompatible plugin ABI: {message}")]
    Abi { path: PathBuf, message: String },
    #[error("{path}: plugin panicked or failed while describing itself")]
    Describe { path: PathBuf },
    #[error("cannot read plugin folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A plugin that passed every check.
pub struct LoadedPlugin {
    /// The file it came from (`None` for plugins registered in-process).
    pub path: Option<PathBuf>,
    pub info: PluginInfo,
    pub sdk: SdkVersion,
    pub module: PluginModRef,
    pub nodes: Vec<NodeDescriptor>,
}

impl LoadedPlugin {
    /// Wraps a root module that is already in this process (tests, statically linked plugins).
    pub fn from_module(module: PluginModRef, path: Option<PathBuf>) -> Result<Self, LoadError> {
        let shown = path
            .clone()
            .unwrap_or_else(|| PathBuf::from("<in-process>"));
        let sdk = module.sdk_version();
        let info = (module.info())();
        if !SDK_VERSION.can_load(sdk) {
            return Err(LoadError::IncompatibleSdk {
                path: shown,
                plugin: info.id.to_string(),
                plugin_sdk: sdk,
                host_sdk: SDK_VERSION,
            });
        }
        let nodes = (module.nodes())().into_vec();
        Ok(Self {
            path,
            info,
            sdk,
            module,
            nodes,
        })
    }
}

/// Loads one plugin library.
pub fn load_plugin(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| classify(path, e))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| classify(path, e))?;
    LoadedPlugin::from_module(module, Some(path.to_path_buf()))
}

fn classify(path: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::AbiInstability(_)
        | LibraryError::IncompatibleVersionNumber { .. }
        | LibraryError::InvalidAbiHeader(_) => LoadError::Abi {
            path: path.into(),
            message: one_line(&e.to_string()),
        },
        other => LoadError::NotAPlugin {
            path: path.into(),
            message: one_line(&other.to_string()),
        },
    }
}

fn one_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_string();
    match lines.count() {
        0 => first,
        n => format!("{first} (+{n} more lines)"),
    }
}

fn is_library(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(ext, "so" | "dylib" | "dll") && path.is_file()
}

/// The plugin libraries in `dir` (not recursive), sorted by name.
pub fn libraries_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Folder {
        path: dir.into(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_library(p))
        .collect();
    found.sort();
    Ok(found)
}

/// Where to look for plugins: explicit folders first, then `NODEHOST_PLUGIN_PATH`, then the
/// folder of the running executable (where cargo puts the workspace's own plugin; test
/// binaries live one level down, in `deps/`).
pub fn search_dirs(explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    if let Some(paths) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    if explicit.is_empty() {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                dirs.push(dir.to_path_buf());
                if dir.file_name().is_some_and(|n| n == "deps") {
                    if let Some(up) = dir.parent() {
                        dirs.push(up.to_path_buf());
                    }
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

/// Loads every plugin in `dirs`; failures are returned beside the successes so a host can
/// report them and go on.
pub fn discover(dirs: &[PathBuf]) -> (Vec<LoadedPlugin>, Vec<LoadError>) {
    let mut plugins = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        let libs = match libraries_in(dir) {
            Ok(libs) => libs,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for lib in libs {
            match load_plugin(&lib) {
                Ok(p) => plugins.push(p),
                Err(e) => errors.push(e),
            }
        }
    }
    (plugins, errors)
}
