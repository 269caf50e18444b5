//! Confined file access: which paths a graph may name and which files the API may serve.
//!
//! Paths in graphs are relative to the working folder, as with the CLI, so a graph saved in
//! the editor runs unchanged with `nodehost run` from the same folder. On top of that the
//! server only lets inputs with a file role ([`FileRole`]) name files inside the input
//! folder (reads) or the output folder (writes): absolute paths and `..` are refused outright,
//! and every path is resolved through its links (`canonicalize`) before the containment
//! check, so a link leaving the folder is refused too.

use std::path::{Component, Path, PathBuf};

use node_abi::FileRole;

/// The folders the server works with, canonical (links resolved).
#[derive(Debug, Clone)]
pub struct Folders {
    /// Where relative paths in graphs start (the server's working folder).
    pub work: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub graphs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("cannot use folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {role} folder {path} is not inside the working folder {work}: graphs name files relative to the working folder (as with `nodehost run`), so it could not be named")]
    OutsideWork {
        role: &'static str,
        path: PathBuf,
        work: PathBuf,
    },
}

fn canonical_dir(path: &Path) -> Result<PathBuf, FolderError> {
    let io = |source| FolderError::Io {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    path.canonicalize().map_err(io)
}

impl Folders {
    /// Creates missing folders and resolves them; `input` and `output` must lie inside `work`.
    /// Relative folders are taken from `work`.
    pub fn new(
        work: &Path,
        input: &Path,
        output: &Path,
        graphs: &Path,
    ) -> Result<Self, FolderError> {
        let work = canonical_dir(work)?;
        let outside = |role, path: PathBuf| FolderError::OutsideWork {
            role,
            path,
            work: work.clone(),
        };
        // Checked before anything is created, then again once links are resolved.
        for (role, path) in [("input", input), ("output", output)] {
            let joined = work.join(path);
            if !joined.starts_with(&work) || path.components().any(|c| c == Component::ParentDir) {
                return Err(outside(role, joined));
            }
        }
        let input = canonical_dir(&work.join(input))?;
        let output = canonical_dir(&work.join(output))?;
        let graphs = canonical_dir(&work.join(graphs))?;
        for (role, path) in [("input", &input), ("output", &output)] {
            if !path.starts_with(&work) {
                return Err(outside(role, path.clone()));
            }
        }
        Ok(Self {
            work,
            input,
            output,
            graphs,
        })
    }

    /// Resolves the value of an input with file role `role` to an absolute path inside its
    /// folder, or says why not (the message names no node: callers add it).
    pub fn resolve(&self, role: FileRole, value: &str) -> Result<PathBuf, String> {
        match role {
            FileRole::None => Ok(PathBuf::from(value)),
            FileRole::InputFile => self.input_file(value),
            FileRole::OutputFolder => self.output_folder(value),
        }
    }

    fn input_file(&self, value: &str) -> Result<PathBuf, String> {
        let full = self.work.join(relative(value)?);
        let real = full.canonicalize().map_err(|_| {
            format!(
                "'{value}' does not exist (choose a file in the input folder {})",
                self.shown(&self.input)
            )
        })?;
        if !real.starts_with(&self.input) {
            return Err(format!(
                "'{value}' is outside the input folder {} (links leaving it are refused too)",
                self.shown(&self.input)
            ));
        }
        Ok(real)
    }

    fn output_folder(&self, value: &str) -> Result<PathBuf, String> {
        let full = self.work.join(relative(value)?);
        // The folder may not exist yet: resolve its deepest existing ancestor.
        let mut existing = full.as_path();
        while std::fs::symlink_metadata(existing).is_err() {
            existing = existing.parent().unwrap_or(&self.work);
        }
        let rest = full.strip_prefix(existing).unwrap_or(Path::new(""));
        let real = existing
            .canonicalize()
            .map_err(|e| format!("'{value}': {e}"))?
            .join(rest);
        if !real.starts_with(&self.output) {
            return Err(format!(
                "'{value}' is outside the output folder {} (links leaving it are refused too)",
                self.shown(&self.output)
            ));
        }
        Ok(real)
    }

    /// A file or folder under the output folder, named relative to it (for downloads).
    pub fn output_entry(&self, rel: &str) -> Result<PathBuf, String> {
        let real = self
            .output
            .join(relative(rel)?)
            .canonicalize()
            .map_err(|_| format!("no output '{rel}'"))?;
        if !real.starts_with(&self.output) {
            return Err(format!("'{rel}' is outside the output folder"));
        }
        Ok(real)
    }

    /// `path` relative to the output folder with `/` separators, if it is inside it.
    pub fn output_relative(&self, path: &Path) -> Option<String> {
        let real = path.canonicalize().ok()?;
        let rel = real.strip_prefix(&self.output).ok()?;
        Some(slashes(rel))
    }

    /// How a folder is shown to users: relative to the working folder.
    pub fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.work) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
            Ok(rel) => slashes(rel),
            Err(_) => path.display().to_string(),
        }
    }

    /// Files under the input folder (not hidden, at most `limit`, sorted), as values for an
    /// input file widget: paths relative to the working folder.
    pub fn input_files(&self, limit: usize) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![(self.input.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                // Only what resolves inside the folder is offered.
                let Ok(real) = path.canonicalize() else {
                    continue;
                };
                if !real.starts_with(&self.input) {
                    continue;
                }
                if real.is_dir() {
                    if depth < 4 {
                        stack.push((path, depth + 1));
                    }
                } else if found.len() < limit {
                    found.push(self.shown(&path));
                }
            }
        }
        found.sort();
        found
    }

    /// The file of a saved graph named `name` (letters, digits, `-`, `_`, `.`, spaces;
    /// `.json` is added when missing).
    pub fn graph_file(&self, name: &str) -> Result<PathBuf, String> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c));
        if !ok {
            return Err(format!(
                "graph name '{name}' is not allowed: use letters, digits, '-', '_', '.' and spaces, not starting with '.'"
            ));
        }
        let file = if name.ends_with(".json") {
            name.to_string()
        } else {
            format!("{name}.json")
        };
        let path = self.graphs.join(file);
        if path.is_symlink() {
            return Err(format!("graph '{name}' is a link; links are refused"));
        }
        Ok(path)
    }

    /// The names of the saved graphs, sorted.
    pub fn graph_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.graphs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".json")?;
                (!name.starts_with('.') && e.path().is_file()).then(|| stem.to_string())
            })
            .collect();
        names.sort();
        names
    }
}

/// Checks that `value` is a relative path without `..`.
fn relative(value: &str) -> Result<&Path, String> {
    if value.trim().is_empty() {
        return Err("is empty".into());
    }
    let path = Path::new(value);
    for c in path.components() {
        match c {
            Component::ParentDir => return Err(format!("'{value}': '..' is refused")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                "'{value}': absolute paths are refused (use a path relative to the working folder)"
            ))
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(path)
}

fn slashes(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
