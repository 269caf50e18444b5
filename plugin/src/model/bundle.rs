//! The on-disk model bundle (`onnx/README.md` defines it): `manifest.json` plus ONNX files.
//!
//! Checks, each failing with the file and the problem: manifest format and version, every
//! listed file present with the recorded SHA-256, the custom-operator versions the manifest
//! (`custom_ops`) and each graph (its opset imports) ask for against the ones this plugin
//! registers (before ONNX Runtime sees the file), and (once a session is opened, in
//! [`super::dit`]) the graph's input/output names and ranks equal to the manifest's and to
//! what the plugin feeds.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::runtime::{amf_ops, attention_ops, norm_ops};

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

/// The attention the bundle's graphs compute (`attention` in the manifest; dense when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttentionKind {
    #[default]
    Dense,
    /// Every block's self-attention sees a 3D window of the video tokens
    /// (`fastvmt_kernels::attention::LocalWindow`).
    Local {
        temporal_radius: usize,
        spatial_radius: usize,
    },
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
    /// Custom-operator domains the graphs need, with the version (`{"fastvmt": 1}`).
    #[serde(default)]
    pub custom_ops: BTreeMap<String, u32>,
    #[serde(default)]
    pub attention: AttentionKind,
}

impl Manifest {
    /// Whether the latent is the video itself (what the VIDEO nodes need).
    pub fn is_pixel_space(&self) -> bool {
        self.latent.kind == "pixels"
    }

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

pub const ROLES: [GraphRole; 5] = [
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
    // One run per real gradient: forward to Q/K, the AMF loss (`fastvmt.amf.AmfLossGrad`,
    // `runtime/amf_ops.rs`), backward to the latent. Optional; preferred when present.
    GraphRole {
        key: "guidance_step",
        required: false,
        inputs: &[
            ("x", 5),
            ("t", 1),
            ("text", 3),
            ("rope_cos", 2),
            ("rope_sin", 2),
            ("reference", 3),
            ("amf_config", 1),
        ],
        outputs: &[("loss", 1), ("dx", 5)],
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
        // "vae": a VAE latent whose VAE is not in the bundle (exported Wan bundles): the
        // library samples it from a latent; the VIDEO nodes refuse it (see `is_pixel_space`).
        if manifest.latent.kind != "pixels" && manifest.latent.kind != "vae" {
            return Err(bad(format!(
                "latent kind '{}' is not supported ('pixels', or 'vae' for latent-only bundles)",
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
        for (domain, &version) in &manifest.custom_ops {
            check_custom_op_version(domain, i64::from(version)).map_err(|why| {
                bad(format!(
                    "custom_ops asks for {why} (refused before ONNX Runtime sees the graphs)"
                ))
            })?;
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
            let imports = opset_imports(&path).map_err(|e| {
                BundleError::file(&path, format!("cannot read the ONNX opset imports: {e}"))
            })?;
            for (domain, version) in imports {
                if CUSTOM_DOMAINS.iter().any(|(d, _)| *d == domain) {
                    check_custom_op_version(&domain, version).map_err(|why| {
                        BundleError::file(&path, format!("the graph asks for {why}"))
                    })?;
                }
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

/// Whether this plugin registers custom-op `domain` at `version`; the refusal names both the
/// version asked for and the one available.
/// The custom-operator domains this plugin registers, with their versions.
const CUSTOM_DOMAINS: [(&str, u32); 3] = [
    (attention_ops::DOMAIN, attention_ops::VERSION),
    (amf_ops::DOMAIN, amf_ops::VERSION),
    (norm_ops::DOMAIN, norm_ops::VERSION),
];

fn check_custom_op_version(domain: &str, version: i64) -> Result<(), String> {
    let Some((_, have)) = CUSTOM_DOMAINS.iter().find(|(d, _)| *d == domain) else {
        let known: Vec<String> = CUSTOM_DOMAINS
            .iter()
            .map(|(d, v)| format!("'{d}' version {v}"))
            .collect();
        return Err(format!(
            "custom operator domain '{domain}' version {version}, which this plugin does not have (it has {})",
            known.join(", ")
        ));
    };
    if version != i64::from(*have) {
        return Err(format!(
            "custom operator domain '{domain}' version {version}, but this plugin has version {have}"
        ));
    }
    Ok(())
}

/// The `(domain, version)` opset imports of an ONNX model file (`ModelProto.opset_import`,
/// field 8), read straight from the protobuf encoding: the graph itself is skipped, not read.
pub fn opset_imports(path: &Path) -> std::io::Result<Vec<(String, i64)>> {
    use std::io::{BufReader, ErrorKind};
    let bad = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_string());
    fn varint(r: &mut impl Read) -> std::io::Result<Option<u64>> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            if r.read(&mut b)? == 0 {
                return if shift == 0 {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "truncated varint",
                    ))
                };
            }
            value |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "varint too long",
        ))
    }
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    while let Some(key) = varint(&mut r)? {
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut r)?.ok_or_else(|| bad("truncated field"))?;
            }
            1 => r.seek_relative(8)?,
            5 => r.seek_relative(4)?,
            2 => {
                let len = varint(&mut r)?.ok_or_else(|| bad("truncated length"))?;
                if field != 8 {
                    r.seek_relative(i64::try_from(len).map_err(|_| bad("length too large"))?)?;
                    continue;
                }
                let mut msg = vec![0u8; usize::try_from(len).map_err(|_| bad("bad length"))?];
                r.read_exact(&mut msg)?;
                let (mut domain, mut version) = (String::new(), 0i64);
                let mut m = &msg[..];
                while let Some(k) = varint(&mut m)? {
                    match (k >> 3, k & 7) {
                        (1, 2) => {
                            let n =
                                varint(&mut m)?.ok_or_else(|| bad("truncated domain"))? as usize;
                            let s = m.get(..n).ok_or_else(|| bad("truncated domain"))?;
                            domain = String::from_utf8_lossy(s).into_owned();
                            m = &m[n..];
                        }
                        (2, 0) => {
                            version =
                                varint(&mut m)?.ok_or_else(|| bad("truncated version"))? as i64
                        }
                        (_, 0) => {
                            varint(&mut m)?;
                        }
                        (_, 2) => {
                            let n = varint(&mut m)?.ok_or_else(|| bad("truncated field"))? as usize;
                            m = m.get(n..).ok_or_else(|| bad("truncated field"))?;
                        }
                        _ => return Err(bad("unexpected field in an opset import")),
                    }
                }
                out.push((domain, version));
            }
            _ => return Err(bad("not an ONNX model (unexpected protobuf wire type)")),
        }
    }
    if out.is_empty() {
        return Err(bad("not an ONNX model (no opset import)"));
    }
    Ok(out)
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
