//! The on-disk model bundle (`onnx/README.md` defines it): `manifest.json` plus ONNX files.
//!
//! Checks, each failing with the file and the problem: manifest format and version, every
//! listed file present with the recorded SHA-256, and (once a session is opened, in
//! [`super::dit`]) the graph's input/output names and ranks equal to the manifest's and to
//! what the plugin feeds.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "fastvmt-bundle";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
}

impl BundleError {
    pub fn file(file: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        BundleError::File {
            file: file.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LatentSpec {
    pub kind: String,
    pub channels: usize,
    #[serde(default = "one")]
    pub temporal_compression: usize,
    #[serde(default = "one")]
    pub spatial_compression: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSpec {
    pub kind: String,
    pub prediction: String,
    #[serde(default = "default_shift")]
    pub shift: f32,
}

fn default_shift() -> f32 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextSpec {
    pub tokenizer: String,
    #[serde(default)]
    pub lowercase: bool,
    pub vocab: Vec<String>,
    pub pad_id: i64,
    pub unk_id: i64,
    pub max_len: usize,
    pub dim: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeSpec {
    pub theta: f64,
    pub axes_dim: [usize; 3],
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    #[serde(default)]
    pub dtype: String,
    #[serde(default)]
    pub shape: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileSpec {
    pub path: String,
    pub sha256: String,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub latent: LatentSpec,
    pub patch_size: [usize; 3],
    pub width: usize,
    pub blocks: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub motion_block: usize,
    pub scheduler: SchedulerSpec,
    pub text: TextSpec,
    pub rope: RopeSpec,
    #[serde(default)]
    pub defaults: serde_json::Map<String, serde_json::Value>,
    pub files: BTreeMap<String, FileSpec>,
}

impl Manifest {
    /// A number from `defaults`, or `fallback`.
    pub fn default_f64(&self, key: &str, fallback: f64) -> f64 {
        self.defaults
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or(fallback)
    }
}

/// The graphs a bundle may contain, with the inputs and outputs the plugin uses.
pub struct GraphRole {
    pub key: &'static str,
    pub required: bool,
    pub inputs: &'static [(&'static str, usize)],
    pub outputs: &'static [(&'static str, usize)],
}

const DIT_INPUTS: [(&str, usize); 5] = [
    ("x", 5),
    ("t", 1),
    ("text", 3),
    ("rope_cos", 2),
    ("rope_sin", 2),
];

pub const ROLES: [GraphRole; 4] = [
    GraphRole {
        key: "text_encoder",
        required: true,
        inputs: &[("tokens", 2)],
        outputs: &[("text", 3)],
    },
    GraphRole {
        key: "denoiser",
        required: true,
        inputs: &DIT_INPUTS,
        outputs: &[("velocity", 5)],
    },
    GraphRole {
        key: "guidance_head",
        required: false,
        inputs: &DIT_INPUTS,
        outputs: &[("q", 4), ("k", 4)],
    },
    GraphRole {
        key: "guidance_grad",
        required: false,
        inputs: &[
            ("x", 5),
            ("t", 1),
            ("text", 3),
            ("rope_cos", 2),
            ("rope_sin", 2),
            ("dq", 4),
            ("dk", 4),
        ],
        outputs: &[("dx", 5)],
    },
];

/// A bundle whose manifest and files passed the checks.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Bundle {
    /// Reads the manifest and checks the files (presence, hashes, declared names).
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest_path = dir.join("manifest.json");
        if !dir.is_dir() {
            return Err(BundleError::file(dir, "model bundle folder not found"));
        }
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| BundleError::file(&manifest_path, format!("cannot read: {e}")))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            BundleError::file(&manifest_path, format!("not a valid bundle manifest: {e}"))
        })?;
        let bad = |problem: String| BundleError::file(&manifest_path, problem);
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "format is '{}', expected '{FORMAT}'",
                manifest.format
            )));
        }
        if manifest.format_version > FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is newer than this plugin's ({FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        if manifest.latent.kind != "pixels" {
            return Err(bad(format!(
                "latent kind '{}' is not supported (this plugin runs pixel-space bundles)",
                manifest.latent.kind
            )));
        }
        if manifest.scheduler.kind != "flow_matching" || manifest.scheduler.prediction != "velocity"
        {
            return Err(bad(format!(
                "scheduler {}/{} is not supported (flow_matching/velocity)",
                manifest.scheduler.kind, manifest.scheduler.prediction
            )));
        }
        if manifest.patch_size.contains(&0) || manifest.heads == 0 || manifest.head_dim == 0 {
            return Err(bad("patch_size, heads and head_dim must be positive".into()));
        }
        if manifest.rope.axes_dim.iter().sum::<usize>() != manifest.head_dim
            || manifest.rope.axes_dim.iter().any(|d| d % 2 == 1)
        {
            return Err(bad(format!(
                "rope axes_dim {:?} must be even and sum to head_dim {}",
                manifest.rope.axes_dim, manifest.head_dim
            )));
        }
        if manifest.motion_block >= manifest.blocks {
            return Err(bad(format!(
                "motion_block {} is not below blocks {}",
                manifest.motion_block, manifest.blocks
            )));
        }
        for role in ROLES.iter() {
            let Some(spec) = manifest.files.get(role.key) else {
                if role.required {
                    return Err(bad(format!("files.{} is missing", role.key)));
                }
                continue;
            };
            let path = dir.join(&spec.path);
            if !path.is_file() {
                return Err(BundleError::file(
                    &path,
                    format!("listed as files.{} in the manifest but missing", role.key),
                ));
            }
            let actual = sha256_of(&path)
                .map_err(|e| BundleError::file(&path, format!("cannot read: {e}")))?;
            if !actual.eq_ignore_ascii_case(&spec.sha256) {
                return Err(BundleError::file(&path, format!("content hash mismatch: the manifest says {}, the file is {actual} (corrupt or replaced file)", spec.sha256)));
            }
            for (name, _) in role.inputs {
                if !spec.inputs.is_empty() && !spec.inputs.iter().any(|i| i.name == *name) {
                    return Err(bad(format!(
                        "files.{}.inputs lacks '{name}', which the plugin feeds",
                        role.key
                    )));
                }
            }
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.manifest.files.contains_key(key)
    }

    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.manifest.files.get(key).map(|f| self.dir.join(&f.path))
    }
}

/// The shipped small model (in the repository, next to the plugin's sources), unless
/// `FASTVMT_MODEL_DIR` names another bundle.
pub fn default_bundle_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FASTVMT_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../onnx/models/tiny-shapes"
    ))
}
