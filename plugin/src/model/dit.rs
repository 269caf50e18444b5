//! A loaded DiT: one ONNX Runtime session per graph, created once and shared by every node
//! and run of the process (see [`DitModel::load`], which caches by bundle folder and device).
//! Every call can be cancelled mid-run: a watcher thread polls the caller's cancel flag and
//! terminates the run through ONNX Runtime's run options.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use super::bundle::{Bundle, BundleError, GraphRole, ROLES};
use super::{rope, tokenizer};
use crate::runtime::cuda_arena::{self, ArenaPolicy};
use crate::runtime::{amf_ops, attention_ops, norm_ops, ort_env};

/// Where the DiT runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    /// `cpu` or `cuda` (the inverse of [`Device::name`]).
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Runtime(String),
    #[error("{file}: {message}")]
    Onnx { file: PathBuf, message: String },
    #[error("CUDA was asked for but is not available: {0}")]
    CudaUnavailable(String),
    #[error("the model bundle has no {0} graph")]
    MissingGraph(&'static str),
    #[error("{0}")]
    Shape(String),
    #[error("cancelled")]
    Cancelled,
}

/// Per-call cancellation check (the node's host services).
pub type CancelCheck<'a> = &'a (dyn Fn() -> bool + Sync);

pub(super) struct Graph {
    pub(super) file: PathBuf,
    pub(super) session: Mutex<Session>,
    /// Give the device memory the run's arena grew by back at the end of each run
    /// (`FASTVMT_CUDA_ARENA=shrink`, see [`cuda_arena`]).
    shrink_arena: bool,
}

impl Graph {
    /// An ONNX Runtime failure of this graph, naming its file.
    pub(super) fn error(&self, message: String) -> ModelError {
        ModelError::Onnx {
            file: self.file.clone(),
            message,
        }
    }

    /// Run options of one run: with the arena given back at its end where the session shrinks
    /// (see [`cuda_arena`]).
    pub(super) fn run_options(&self) -> Result<RunOptions, String> {
        let mut options = RunOptions::new().map_err(|e| e.to_string())?;
        if self.shrink_arena {
            options
                .set("memory.enable_memory_arena_shrinkage", "gpu:0")
                .map_err(|e| e.to_string())?;
        }
        Ok(options)
    }
}

/// A model bundle with its sessions.
pub struct DitModel {
    pub bundle: Bundle,
    pub device: Device,
    text_encoder: Graph,
    pub(super) denoiser: Graph,
    pub(super) guidance_head: Option<Graph>,
    guidance_grad: Option<Graph>,
    pub(super) guidance_step: Option<Graph>,
    empty_text: OnceLock<Vec<f32>>,
    /// Bytes copied between host and device memory by this model's runs on CUDA (host inputs
    /// ONNX Runtime uploads, outputs it downloads) and by the sampler's explicit copies: the
    /// copy count issue #7 asks to show ([`DitModel::host_device_bytes`]).
    pub(super) transferred: std::sync::atomic::AtomicU64,
}

/// A tensor coming back from a graph.
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// `FASTVMT_ORT_THREADS=N`: ONNX Runtime intra-op threads per session (default: ONNX Runtime's
/// choice, one per physical core). Lets a harness run several processes side by side on one
/// machine without oversubscribing it.
fn intra_threads() -> Option<usize> {
    std::env::var("FASTVMT_ORT_THREADS")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// A session and whether its runs shrink their arena (see [`cuda_arena`]).
fn open_session(
    path: &Path,
    role: &GraphRole,
    device: Device,
) -> Result<(Session, bool), ModelError> {
    let (env, _) = ort_env::environment().map_err(|e| ModelError::Runtime(e.to_string()))?;
    let onnx = |message: String| ModelError::Onnx {
        file: path.to_path_buf(),
        message,
    };
    let policy = match device {
        Device::Cuda => ArenaPolicy::from_env().map_err(ModelError::Runtime)?,
        Device::Cpu => ArenaPolicy::Keep,
    };
    let shared = policy == ArenaPolicy::Shared
        && match cuda_arena::register_shared(env) {
            Ok(()) => true,
            Err(why) => {
                eprintln!("fastvmt: the shared CUDA arena is unavailable ({why}); shrinking each session's arena instead");
                false
            }
        };
    let shrink = policy == ArenaPolicy::Shrink || (policy == ArenaPolicy::Shared && !shared);
    let build = || -> ort::Result<Session> {
        // The fused attention operators (fastvmt.Attention / AttentionGrad, CPU and CUDA
        // variants) on every session; graphs without them are unaffected. Sessions with the
        // domain are created one at a time (see `attention_ops::registration_lock`).
        let _registering = attention_ops::registration_lock();
        let mut builder = Session::builder(env)?
            .with_operators(attention_ops::domain()?)?
            .with_operators(amf_ops::domain()?)?
            .with_operators(norm_ops::domain()?)?;
        if let Some(n) = intra_threads() {
            builder = builder.with_intra_threads(n)?;
        }
        // `FASTVMT_ORT_PROFILE=PREFIX`: ONNX Runtime's per-node trace (op, provider, time) to
        // PREFIX<graph>_<date>.json; `bench/wan/profile_summary.py` sums it.
        if let Some(prefix) = std::env::var_os("FASTVMT_ORT_PROFILE") {
            let mut file = prefix;
            file.push(role.key);
            builder = builder.with_profiling(file)?;
        }
        if device == Device::Cuda {
            // Arena blocks sized as requested: the default doubles each extension, which at
            // Wan scale (multi-GB activations) wastes tens of GB and runs out of memory.
            let cuda = ort::ep::CUDA::default()
                .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
            builder = builder.with_execution_providers([cuda.build().error_on_failure()])?;
            if shared {
                builder = builder.with_env_allocators()?;
            }
        }
        builder.commit_from_file(path)
    };
    let session = build().map_err(|e| onnx(format!("cannot open with ONNX Runtime: {e}")))?;
    // The graph must take and give what the plugin feeds and reads, with the right ranks.
    check_outlets("input", session.inputs(), role.inputs).map_err(onnx)?;
    check_outlets("output", session.outputs(), role.outputs).map_err(onnx)?;
    Ok((session, shrink))
}

/// Loaded models by (bundle folder, device): one set of sessions per process.
type ModelCache = Mutex<HashMap<(PathBuf, Device), Arc<DitModel>>>;
/// Checks that every `(name, rank)` of `expected` is among `outlets` with that rank.
fn check_outlets(
    kind: &str,
    outlets: &[ort::value::Outlet],
    expected: &[(&str, usize)],
) -> Result<(), String> {
    for (name, rank) in expected {
        let Some(outlet) = outlets.iter().find(|o| o.name() == *name) else {
            let found: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            return Err(format!(
                "{kind} '{name}' is missing (the graph's {kind}s: {})",
                found.join(", ")
            ));
        };
        if let Some(shape) = outlet.dtype().tensor_shape() {
            if shape.len() != *rank {
                return Err(format!(
                    "{kind} '{name}' has rank {}, expected {rank}",
                    shape.len()
                ));
            }
        }
    }
    Ok(())
}

static LOADED: OnceLock<ModelCache> = OnceLock::new();

impl DitModel {
    /// Opens the bundle in `dir` on `device`, or returns the already loaded one.
    pub fn load(dir: &Path, device: Device) -> Result<Arc<DitModel>, ModelError> {
        let key = (
            dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            device,
        );
        let cache = LOADED.get_or_init(Default::default);
        if let Some(m) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let bundle = Bundle::open(dir)?;
        if device == Device::Cuda {
            fastvmt_kernels::Backend::cuda_available().map_err(ModelError::CudaUnavailable)?;
        }
        let mut graphs: HashMap<&str, Graph> = HashMap::new();
        for role in ROLES.iter() {
            if let Some(path) = bundle.path(role.key) {
                let (session, shrink_arena) = open_session(&path, role, device)?;
                graphs.insert(
                    role.key,
                    Graph {
                        file: path,
                        session: Mutex::new(session),
                        shrink_arena,
                    },
                );
            }
        }
        let take = |graphs: &mut HashMap<&str, Graph>, key: &'static str| {
            graphs.remove(key).ok_or(ModelError::MissingGraph(key))
        };
        let model = Arc::new(DitModel {
            text_encoder: take(&mut graphs, "text_encoder")?,
            denoiser: take(&mut graphs, "denoiser")?,
            guidance_head: graphs.remove("guidance_head"),
            guidance_grad: graphs.remove("guidance_grad"),
            guidance_step: graphs.remove("guidance_step"),
            bundle,
            device,
            empty_text: OnceLock::new(),
            transferred: Default::default(),
        });
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, model.clone());
        Ok(model)
    }

    pub fn manifest(&self) -> &super::Manifest {
        &self.bundle.manifest
    }

    /// Ends ONNX Runtime's profiling (`FASTVMT_ORT_PROFILE`) on every session, writing the
    /// traces now (the sessions live for the whole process); returns the files written.
    pub fn end_profiling(&self) -> Result<Vec<PathBuf>, ModelError> {
        let mut files = Vec::new();
        for graph in [
            Some(&self.text_encoder),
            Some(&self.denoiser),
            self.guidance_head.as_ref(),
            self.guidance_grad.as_ref(),
            self.guidance_step.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let mut session = graph.session.lock().unwrap_or_else(|p| p.into_inner());
            let file = session.end_profiling().map_err(|e| ModelError::Onnx {
                file: graph.file.clone(),
                message: format!("ending the profile: {e}"),
            })?;
            if !file.is_empty() {
                files.push(PathBuf::from(file));
            }
        }
        Ok(files)
    }

    /// Whether the bundle has the one-run gradient graph (`guidance_step`).
    pub fn has_guidance_step(&self) -> bool {
        self.guidance_step.is_some()
    }

    /// Whether guided sampling can run: the head (reference AMF) and a way to a real gradient,
    /// `guidance_step` (one run) or `guidance_grad` (the two-graph route). A bundle with only
    /// `guidance_step` refuses, naming `guidance_grad`, the settings it cannot express
    /// (`GuidanceSettings::fused_step` off, or an AMF outside the operator's config).
    pub fn has_guidance(&self) -> bool {
        self.guidance_head.is_some()
            && (self.guidance_step.is_some() || self.guidance_grad.is_some())
    }

    /// Runs one graph with f32/i64 inputs, terminating it when `cancel` turns true.
    fn run(
        &self,
        graph: &Graph,
        inputs: Vec<(&str, Input<'_>)>,
        outputs: &[&str],
        cancel: CancelCheck<'_>,
    ) -> Result<Vec<Output>, ModelError> {
        let onnx = |message: String| graph.error(message);
        if cancel() {
            return Err(ModelError::Cancelled);
        }
        let options = graph.run_options().map_err(onnx)?;
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, input) in &inputs {
            let value = match input {
                Input::F32(shape, data) => {
                    TensorRef::from_array_view((shape.clone(), *data)).map(Into::into)
                }
                Input::I64(shape, data) => {
                    TensorRef::from_array_view((shape.clone(), *data)).map(Into::into)
                }
                Input::Device(_) => {
                    return Err(onnx(format!(
                        "input '{name}' is in device memory: it needs the bound route"
                    )))
                }
            }
            .map_err(|e| onnx(format!("input '{name}': {e}")))?;
            values.push((name.to_string(), value));
        }
        let uploaded: usize = inputs.iter().map(|(n, i)| i.host_bytes(n)).sum();
        let mut session = graph.session.lock().unwrap_or_else(|p| p.into_inner());
        let outs: Vec<Output> = Self::watching_cancel(&options, cancel, || {
            let outs = session
                .run_with_options(values, &options)
                .map_err(|e| onnx(e.to_string()))?;
            outputs
                .iter()
                .map(|name| {
                    let (shape, data) = outs[*name]
                        .try_extract_tensor::<f32>()
                        .map_err(|e| onnx(format!("output '{name}': {e}")))?;
                    Ok(Output {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: data.to_vec(),
                    })
                })
                .collect()
        })?;
        let downloaded: usize = outs.iter().map(|o| 4 * o.data.len()).sum();
        self.count_transfer(uploaded + downloaded);
        Ok(outs)
    }

    /// Adds `bytes` to [`Self::host_device_bytes`] on a CUDA model.
    pub(crate) fn count_transfer(&self, bytes: usize) {
        if self.device == Device::Cuda {
            self.transferred
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes copied between host and device memory so far (0 on a CPU model): inputs fed from
    /// host memory, outputs read into it, and the sampler's explicit uploads and downloads.
    pub fn host_device_bytes(&self) -> u64 {
        self.transferred.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` (one ONNX Runtime run with `options`) while a watcher thread polls `cancel`
    /// and terminates the run through `options`; a run that fails after cancellation reports
    /// [`ModelError::Cancelled`].
    pub(super) fn watching_cancel<R>(
        options: &RunOptions,
        cancel: CancelCheck<'_>,
        work: impl FnOnce() -> Result<R, ModelError>,
    ) -> Result<R, ModelError> {
        let done = std::sync::atomic::AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if cancel() {
                        let _ = options.terminate();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let r = work();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        });
        match result {
            Err(_) if cancel() => Err(ModelError::Cancelled),
            other => other,
        }
    }

    /// Text embeddings `[B, L, D]` for `prompts` (words outside the vocabulary are returned
    /// so the caller can warn).
    pub fn encode_text(
        &self,
        prompts: &[&str],
        cancel: CancelCheck<'_>,
    ) -> Result<(Vec<f32>, Vec<String>), ModelError> {
        let spec = &self.manifest().text;
        let mut ids = Vec::with_capacity(prompts.len() * spec.max_len);
        let mut unknown = Vec::new();
        for p in prompts {
            let (t, u) = tokenizer::tokenize(spec, p);
            ids.extend(t);
            unknown.extend(u);
        }
        let out = self.run(
            &self.text_encoder,
            vec![(
                "tokens",
                Input::I64(vec![prompts.len() as i64, spec.max_len as i64], &ids),
            )],
            &["text"],
            cancel,
        )?;
        Ok((
            out.into_iter().next().map(|o| o.data).unwrap_or_default(),
            unknown,
        ))
    }

    /// Embeddings of the empty prompt `[1, L, D]` (the unconditional input).
    pub fn empty_text(&self, cancel: CancelCheck<'_>) -> Result<&[f32], ModelError> {
        if let Some(t) = self.empty_text.get() {
            return Ok(t);
        }
        let (t, _) = self.encode_text(&[""], cancel)?;
        Ok(self.empty_text.get_or_init(|| t))
    }

    /// Checks a pixel latent shape `[B, C, F, H, W]` against the bundle and returns the token grid.
    pub fn token_grid(
        &self,
        frames: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize, usize), ModelError> {
        let [pt, ph, pw] = self.manifest().patch_size;
        if !frames.is_multiple_of(pt) || !height.is_multiple_of(ph) || !width.is_multiple_of(pw) {
            return Err(ModelError::Shape(format!(
                "{frames} frames of {width}x{height} do not divide into the model's {pt}x{ph}x{pw} patches (width and height must be multiples of {pw} and {ph})"
            )));
        }
        Ok((frames / pt, height / ph, width / pw))
    }

    /// RoPE tables for a latent of `frames x height x width`.
    pub fn rope(&self, frames: usize, height: usize, width: usize) -> Result<Rope, ModelError> {
        let (f, h, w) = self.token_grid(frames, height, width)?;
        let m = self.manifest();
        let (cos, sin) = rope::tables(f, h, w, m.rope.axes_dim, m.rope.theta);
        Ok(Rope {
            tokens: f * h * w,
            cols: m.head_dim / 2,
            cos,
            sin,
            grid: (f, h, w),
        })
    }

    pub(super) fn dit_inputs<'a>(
        x: &'a Latent<'a>,
        t: &'a [f32],
        text: &'a [f32],
        rope: &'a Rope,
        text_shape: [i64; 3],
    ) -> Vec<(&'static str, Input<'a>)> {
        vec![
            (
                "x",
                Input::F32(x.shape.iter().map(|&d| d as i64).collect(), x.data),
            ),
            ("t", Input::F32(vec![t.len() as i64], t)),
            ("text", Input::F32(text_shape.to_vec(), text)),
            (
                "rope_cos",
                Input::F32(vec![rope.tokens as i64, rope.cols as i64], &rope.cos),
            ),
            (
                "rope_sin",
                Input::F32(vec![rope.tokens as i64, rope.cols as i64], &rope.sin),
            ),
        ]
    }

    fn text_shape(&self, batch: usize, text: &[f32]) -> Result<[i64; 3], ModelError> {
        self.text_shape_of(batch, text.len())
    }

    pub(super) fn text_shape_of(&self, batch: usize, len: usize) -> Result<[i64; 3], ModelError> {
        let spec = &self.manifest().text;
        let per = spec.max_len * spec.dim;
        if len != batch * per {
            return Err(ModelError::Shape(format!(
                "text embeddings have {} values, expected {batch} x {} x {}",
                len, spec.max_len, spec.dim
            )));
        }
        Ok([batch as i64, spec.max_len as i64, spec.dim as i64])
    }

    /// Velocity prediction for a batch `x [B,C,F,H,W]` at times `t [B]` with text `[B,L,D]`.
    pub fn velocity(
        &self,
        x: &Latent<'_>,
        t: &[f32],
        text: &[f32],
        rope: &Rope,
        cancel: CancelCheck<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        let ts = self.text_shape(x.shape[0], text)?;
        let out = self.run(
            &self.denoiser,
            Self::dit_inputs(x, t, text, rope, ts),
            &["velocity"],
            cancel,
        )?;
        Ok(out.into_iter().next().map(|o| o.data).unwrap_or_default())
    }

    /// Q and K `[B, heads, N, head_dim]` of the motion block.
    pub fn guidance_qk(
        &self,
        x: &Latent<'_>,
        t: &[f32],
        text: &[f32],
        rope: &Rope,
        cancel: CancelCheck<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let graph = self
            .guidance_head
            .as_ref()
            .ok_or(ModelError::MissingGraph("guidance_head"))?;
        let ts = self.text_shape(x.shape[0], text)?;
        let mut out = self
            .run(
                graph,
                Self::dit_inputs(x, t, text, rope, ts),
                &["q", "k"],
                cancel,
            )?
            .into_iter();
        let q = out.next().map(|o| o.data).unwrap_or_default();
        let k = out.next().map(|o| o.data).unwrap_or_default();
        Ok((q, k))
    }

    /// dL/dx given dL/dQ and dL/dK of the motion block (the VJP through blocks 0..L).
    #[allow(clippy::too_many_arguments)]
    pub fn guidance_grad(
        &self,
        x: &Latent<'_>,
        t: &[f32],
        text: &[f32],
        rope: &Rope,
        dq: &[f32],
        dk: &[f32],
        cancel: CancelCheck<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        let graph = self
            .guidance_grad
            .as_ref()
            .ok_or(ModelError::MissingGraph("guidance_grad"))?;
        let ts = self.text_shape(x.shape[0], text)?;
        let m = self.manifest();
        let qk_shape = vec![
            x.shape[0] as i64,
            m.heads as i64,
            rope.tokens as i64,
            m.head_dim as i64,
        ];
        let mut inputs = Self::dit_inputs(x, t, text, rope, ts);
        inputs.push(("dq", Input::F32(qk_shape.clone(), dq)));
        inputs.push(("dk", Input::F32(qk_shape, dk)));
        let out = self.run(graph, inputs, &["dx"], cancel)?;
        Ok(out.into_iter().next().map(|o| o.data).unwrap_or_default())
    }
}

impl DitModel {
    /// One real gradient in one run of `guidance_step`: the AMF loss of `x` against
    /// `reference` (the reference AMF for the pair set `config` names) and dL/dx.
    #[allow(clippy::too_many_arguments)]
    pub fn guidance_step(
        &self,
        x: &Latent<'_>,
        t: &[f32],
        text: &[f32],
        rope: &Rope,
        reference: &[f32],
        config: &amf_ops::OpConfig,
        cancel: CancelCheck<'_>,
    ) -> Result<(f32, Vec<f32>), ModelError> {
        let graph = self
            .guidance_step
            .as_ref()
            .ok_or(ModelError::MissingGraph("guidance_step"))?;
        let ts = self.text_shape(x.shape[0], text)?;
        let s = rope.grid.1 * rope.grid.2;
        if s == 0 || !reference.len().is_multiple_of(2 * s) {
            return Err(ModelError::Shape(format!(
                "reference AMF has {} values, not a multiple of {s} tokens x 2",
                reference.len()
            )));
        }
        let encoded = config.encode();
        let mut inputs = Self::dit_inputs(x, t, text, rope, ts);
        inputs.push((
            "reference",
            Input::F32(
                vec![(reference.len() / (2 * s)) as i64, s as i64, 2],
                reference,
            ),
        ));
        inputs.push((
            "amf_config",
            Input::F32(vec![encoded.len() as i64], &encoded),
        ));
        let mut out = self
            .run(graph, inputs, &["loss", "dx"], cancel)?
            .into_iter();
        let loss = out
            .next()
            .and_then(|o| o.data.first().copied())
            .unwrap_or(f32::NAN);
        let dx = out.next().map(|o| o.data).unwrap_or_default();
        Ok((loss, dx))
    }
}

/// An input tensor borrowed from the caller: host data, or a tensor already in the CUDA
/// provider's memory (only the bound route takes those, see `model/device.rs`).
pub enum Input<'a> {
    F32(Vec<i64>, &'a [f32]),
    I64(Vec<i64>, &'a [i64]),
    Device(&'a super::device::DeviceTensor),
}

impl Input<'_> {
    /// Bytes ONNX Runtime copies to a CUDA session for input `name`: 0 for a device tensor and
    /// for the inputs the AMF operator reads on the host ([`amf_ops::HOST_INPUTS`], and the
    /// reference where its CPU variant runs).
    pub(super) fn host_bytes(&self, name: &str) -> usize {
        let host_read = amf_ops::HOST_INPUTS.contains(&name)
            || (name == "reference" && !amf_ops::cuda_variant_enabled());
        if host_read {
            return 0;
        }
        match self {
            Input::F32(_, d) => 4 * d.len(),
            Input::I64(_, d) => 8 * d.len(),
            Input::Device(_) => 0,
        }
    }
}

/// A borrowed latent `[B, C, F, H, W]`.
pub struct Latent<'a> {
    pub shape: [usize; 5],
    pub data: &'a [f32],
}

/// RoPE tables for one token grid.
pub struct Rope {
    pub tokens: usize,
    pub cols: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Token grid (frames, rows, cols).
    pub grid: (usize, usize, usize),
}
