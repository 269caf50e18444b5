//! The public description of an AMF computation, its validation, and the window geometry
//! shared by both back ends. The exact definition is in the crate docs (`lib.rs`) and README.

use crate::element::Element;
use crate::error::KernelError;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Always available: the reference implementation (multi-threaded with `std::thread`).
    Cpu,
    /// CUDA device `device` through cudarc + NVRTC (module compiled once per device and cached).
    Cuda { device: usize },
}

impl Backend {
    /// `Ok(())` when the CUDA driver and NVRTC can be loaded and at least one device exists;
    /// otherwise the reason, e.g. `"libcuda not found"`. Never panics.
    pub fn cuda_available() -> Result<(), String> {
        crate::cuda::cuda_available()
    }
}

/// Which ordered frame pairs `(i, j)` (query frame i, key frame j) to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairSet {
    /// DiTFlow: every ordered pair with `i != j`, i-major (`(0,1), (0,2), ..., (1,0), (1,2), ...`).
    AllOrdered,
    /// FastVMT's temporal window: `(i, i+o)` for `o = 1 ..= span-1`, i-major, `i+o < frames`.
    /// The self pair `o = 0` carries no motion and is skipped. `span` default: 4.
    Forward { span: usize },
    /// Any list, in the given order (duplicates and self pairs allowed).
    Explicit(Vec<(usize, usize)>),
}

/// The centre of the local key window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCentre {
    /// The query's own position (neighbourhood attention).
    Query,
    /// FastVMT's coarse-to-fine: the grid is cut into `tile_h x tile_w` tiles (the last ones
    /// clipped at the border); the tile's centre query (row `r0 + (rows-1)/2`, col
    /// `c0 + (cols-1)/2`) does a soft-argmax over *all* keys of frame j; that expected position,
    /// rounded (`floor(x + 0.5)`), is the window centre of every query of the tile. The centre
    /// is a constant: no gradient flows through it.
    CoarseTiles { tile_h: usize, tile_w: usize },
}

/// Which keys of frame j a query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWindow {
    /// All `grid_h * grid_w` keys (DiTFlow).
    Full,
    /// A `(2r+1) x (2r+1)` window (each side capped at the grid size), shifted inside the frame
    /// at the border (never wrapped, never shrunk). `radius` must be >= 1 (0 is an error).
    Local { radius: usize, centre: WindowCentre },
}

/// How a distribution over keys becomes a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// Expected key position (differentiable; the loss always uses this).
    SoftArgmax,
    /// Position of the largest logit (first in raster order on ties); for references.
    Argmax,
}

/// Shapes and settings of one AMF computation. Q and K are `[heads, frames, grid_h*grid_w, head_dim]`,
/// row-major, tokens in raster order (`token = row * grid_w + col`).
#[derive(Debug, Clone, PartialEq)]
pub struct AmfSpec {
    pub heads: usize,
    pub frames: usize,
    pub grid_h: usize,
    pub grid_w: usize,
    pub head_dim: usize,
    /// Temperature: logits are `tau * <q, k> / sqrt(head_dim)`, averaged over heads.
    pub tau: f32,
    pub pairs: PairSet,
    pub window: KeyWindow,
}

/// An attention motion flow: one displacement per (pair, query token).
#[derive(Debug, Clone, PartialEq)]
pub struct AmfField {
    /// The resolved pairs, in order.
    pub pairs: Vec<(usize, usize)>,
    pub grid_h: usize,
    pub grid_w: usize,
    /// `[P, S, 2]`, `(dy, dx)` in token units: read-out key position minus query position.
    pub disp: Vec<f32>,
}

/// Per-pair loss weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairWeights {
    Uniform,
    /// By temporal offset `o = |j - i|`: `first` at the smallest offset of the pair set, `last`
    /// at the largest, linear in between (FastVMT: 1 -> 0.8). One offset only: `first`.
    LinearDecay {
        first: f32,
        last: f32,
    },
}

/// The loss against a reference AMF.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSpec {
    pub pair_weights: PairWeights,
    /// DiTFlow's mask: keep only entries whose reference displacement magnitude is `> t`.
    pub moving_threshold: Option<f32>,
}

/// Loss value and its gradients w.r.t. Q and K (f32, `[heads, frames, S, head_dim]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LossAndGrad {
    pub loss: f32,
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    /// Number of (pair, query) entries that the mask kept.
    pub kept: usize,
}

/// Resolved window geometry (internal, shared by the back ends).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub h: usize,
    pub w: usize,
    /// Window extent (rows, cols): both equal the grid for `Full`.
    pub wh: usize,
    pub ww: usize,
    pub radius: usize,
    pub mode: CentreMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CentreMode {
    Full,
    Query,
    Coarse { th: usize, tw: usize },
}

impl Geometry {
    pub fn s(&self) -> usize {
        self.h * self.w
    }
    /// Keys per window.
    pub fn wlen(&self) -> usize {
        self.wh * self.ww
    }
    /// Window start (row, col) for a window centred on (cy, cx), shifted inside the grid.
    pub fn start_for_centre(&self, cy: i64, cx: i64) -> (usize, usize) {
        let r = self.radius as i64;
        let r0 = (cy - r).clamp(0, (self.h - self.wh) as i64) as usize;
        let c0 = (cx - r).clamp(0, (self.w - self.ww) as i64) as usize;
        (r0, c0)
    }
    pub fn tiles(&self) -> (usize, usize) {
        match self.mode {
            CentreMode::Coarse { th, tw } => (self.h.div_ceil(th), self.w.div_ceil(tw)),
            _ => (0, 0),
        }
    }
    /// Token of the centre query of coarse tile (ty, tx).
    pub fn tile_centre_token(&self, ty: usize, tx: usize) -> usize {
        let CentreMode::Coarse { th, tw } = self.mode else {
            return 0;
        };
        let r0 = ty * th;
        let c0 = tx * tw;
        let rows = th.min(self.h - r0);
        let cols = tw.min(self.w - c0);
        (r0 + (rows - 1) / 2) * self.w + c0 + (cols - 1) / 2
    }
}

/// Round an expected position to a window centre: `floor(x + 0.5)`, clamped to `[0, n-1]`.
pub(crate) fn round_centre(x: f32, n: usize) -> i64 {
    ((x + 0.5).floor() as i64).clamp(0, n as i64 - 1)
}

/// Everything validated, ready for a back end.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub heads: usize,
    pub frames: usize,
    pub d: usize,
    pub geom: Geometry,
    pub pairs: Vec<(usize, usize)>,
    /// `tau / (sqrt(d) * heads)`: multiplies the sum over heads of the dot products.
    pub scale: f32,
}

impl Plan {
    pub fn numel(&self) -> usize {
        self.heads * self.frames * self.geom.s() * self.d
    }
}

/// Resolve the pair set (errors: empty, out of range).
pub fn resolve_pairs(pairs: &PairSet, frames: usize) -> Result<Vec<(usize, usize)>, KernelError> {
    let out: Vec<(usize, usize)> = match pairs {
        PairSet::AllOrdered => (0..frames)
            .flat_map(|i| (0..frames).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect(),
        PairSet::Forward { span } => (0..frames)
            .flat_map(|i| (1..*span).map(move |o| (i, i + o)))
            .filter(|&(_, j)| j < frames)
            .collect(),
        PairSet::Explicit(list) => {
            for &(i, j) in list {
                if i >= frames || j >= frames {
                    return Err(KernelError::PairOutOfRange { i, j, frames });
                }
            }
            list.clone()
        }
    };
    if out.is_empty() {
        return Err(KernelError::EmptyPairSet { frames });
    }
    Ok(out)
}

pub(crate) fn check_finite<T: Element>(name: &'static str, x: &[T]) -> Result<(), KernelError> {
    // A branch-free test per block (vectorised), the index only where a block fails: ~6x
    // faster than a per-element early exit on the loss's 178K-value reference field.
    const BLOCK: usize = 1024;
    for (b, block) in x.chunks(BLOCK).enumerate() {
        if block
            .iter()
            .fold(false, |bad, v| bad | !v.to_f32().is_finite())
        {
            let index = b * BLOCK
                + block
                    .iter()
                    .position(|v| !v.to_f32().is_finite())
                    .unwrap_or(0);
            return Err(KernelError::NonFinite {
                tensor: name,
                index,
            });
        }
    }
    Ok(())
}

/// Validate a spec and the inputs' lengths and values.
pub(crate) fn plan<T: Element>(spec: &AmfSpec, q: &[T], k: &[T]) -> Result<Plan, KernelError> {
    let plan = plan_lens(spec, q.len(), k.len())?;
    check_finite("q", q)?;
    check_finite("k", k)?;
    Ok(plan)
}

/// Validate a spec against the inputs' lengths (values unchecked: device buffers).
pub(crate) fn plan_lens(spec: &AmfSpec, q_len: usize, k_len: usize) -> Result<Plan, KernelError> {
    for (field, v) in [
        ("heads", spec.heads),
        ("frames", spec.frames),
        ("grid_h", spec.grid_h),
        ("grid_w", spec.grid_w),
        ("head_dim", spec.head_dim),
    ] {
        if v == 0 {
            return Err(KernelError::ZeroDimension { field });
        }
    }
    if !spec.tau.is_finite() {
        return Err(KernelError::InvalidParameter {
            name: "tau",
            reason: format!("{} is not finite", spec.tau),
        });
    }
    let expected = [spec.frames, spec.grid_h, spec.grid_w, spec.head_dim]
        .iter()
        .try_fold(spec.heads, |a, &b| a.checked_mul(b))
        .ok_or_else(|| KernelError::TooLarge("heads*frames*grid_h*grid_w*head_dim".into()))?;
    for (tensor, len) in [("q", q_len), ("k", k_len)] {
        if len != expected {
            return Err(KernelError::ShapeMismatch {
                tensor,
                expected,
                actual: len,
            });
        }
    }
    let (h, w) = (spec.grid_h, spec.grid_w);
    let geom = match spec.window {
        KeyWindow::Full => Geometry {
            h,
            w,
            wh: h,
            ww: w,
            radius: h.max(w),
            mode: CentreMode::Full,
        },
        KeyWindow::Local { radius, centre } => {
            if radius == 0 {
                return Err(KernelError::ZeroRadius);
            }
            let side = radius.saturating_mul(2).saturating_add(1);
            let mode = match centre {
                WindowCentre::Query => CentreMode::Query,
                WindowCentre::CoarseTiles { tile_h, tile_w } => {
                    if tile_h == 0 || tile_w == 0 {
                        return Err(KernelError::InvalidParameter {
                            name: "tile_h/tile_w",
                            reason: "must be >= 1".into(),
                        });
                    }
                    CentreMode::Coarse {
                        th: tile_h.min(h),
                        tw: tile_w.min(w),
                    }
                }
            };
            // A window covering the whole frame is the full window (the centre is irrelevant).
            if side >= h && side >= w {
                Geometry {
                    h,
                    w,
                    wh: h,
                    ww: w,
                    radius,
                    mode: CentreMode::Full,
                }
            } else {
                Geometry {
                    h,
                    w,
                    wh: side.min(h),
                    ww: side.min(w),
                    radius,
                    mode,
                }
            }
        }
    };
    let pairs = resolve_pairs(&spec.pairs, spec.frames)?;
    let scale = spec.tau / ((spec.head_dim as f32).sqrt() * spec.heads as f32);
    Ok(Plan {
        heads: spec.heads,
        frames: spec.frames,
        d: spec.head_dim,
        geom,
        pairs,
        scale,
    })
}

/// Per-pair weights, the mask, and the normaliser `sum(w * m)`, validated against the plan.
pub(crate) struct LossPlan {
    /// Per (pair, query): `w_pair * mask`, already divided by `sum(w * m)` (0 where masked).
    pub coef: Vec<f32>,
    pub kept: usize,
}

pub(crate) fn pair_weights(pw: &PairWeights, pairs: &[(usize, usize)]) -> Vec<f32> {
    let off = |&(i, j): &(usize, usize)| i.abs_diff(j);
    match *pw {
        PairWeights::Uniform => vec![1.0; pairs.len()],
        PairWeights::LinearDecay { first, last } => {
            let lo = pairs.iter().map(off).min().unwrap_or(0);
            let hi = pairs.iter().map(off).max().unwrap_or(0);
            pairs
                .iter()
                .map(|p| {
                    if hi == lo {
                        first
                    } else {
                        let t = (off(p) - lo) as f32 / (hi - lo) as f32;
                        first + (last - first) * t
                    }
                })
                .collect()
        }
    }
}

/// The loss spec's parameters are in their domain (pair weights finite and >= 0, threshold
/// finite and >= 0).
pub(crate) fn check_loss_spec(loss: &LossSpec) -> Result<(), KernelError> {
    if let PairWeights::LinearDecay { first, last } = loss.pair_weights {
        if !(first.is_finite() && last.is_finite() && first >= 0.0 && last >= 0.0) {
            return Err(KernelError::InvalidParameter {
                name: "pair_weights",
                reason: format!("weights must be finite and >= 0, got {first}, {last}"),
            });
        }
    }
    if let Some(t) = loss.moving_threshold {
        if !t.is_finite() || t < 0.0 {
            return Err(KernelError::InvalidParameter {
                name: "moving_threshold",
                reason: format!("{t} must be finite and >= 0"),
            });
        }
    }
    Ok(())
}

pub(crate) fn loss_plan(
    plan: &Plan,
    reference: &AmfField,
    loss: &LossSpec,
) -> Result<LossPlan, KernelError> {
    let s = plan.geom.s();
    if reference.pairs != plan.pairs {
        return Err(KernelError::ReferenceMismatch(format!(
            "{} reference pairs vs {} resolved pairs (or a different order)",
            reference.pairs.len(),
            plan.pairs.len()
        )));
    }
    if reference.grid_h != plan.geom.h || reference.grid_w != plan.geom.w {
        return Err(KernelError::ReferenceMismatch(format!(
            "grid {}x{} vs {}x{}",
            reference.grid_h, reference.grid_w, plan.geom.h, plan.geom.w
        )));
    }
    if reference.disp.len() != plan.pairs.len() * s * 2 {
        return Err(KernelError::ReferenceMismatch(format!(
            "disp has {} values, expected {} (P*S*2)",
            reference.disp.len(),
            plan.pairs.len() * s * 2
        )));
    }
    check_finite("reference.disp", &reference.disp)?;
    check_loss_spec(loss)?;
    let pw = pair_weights(&loss.pair_weights, &plan.pairs);
    let mut coef = vec![0f32; plan.pairs.len() * s];
    let mut total = 0f64;
    let mut kept = 0usize;
    let rows = coef
        .chunks_exact_mut(s)
        .zip(reference.disp.chunks_exact(2 * s));
    for ((c, r), &wp) in rows.zip(&pw) {
        let n = match loss.moving_threshold {
            Some(th) => c
                .iter_mut()
                .zip(r.chunks_exact(2))
                .fold(0usize, |n, (c, r)| {
                    let keep = (r[0] * r[0] + r[1] * r[1]).sqrt() > th;
                    *c = if keep { wp } else { 0.0 };
                    n + usize::from(keep)
                }),
            None => {
                c.fill(wp);
                s
            }
        };
        // n equal f32 terms: their f64 sum is exactly n * wp.
        total += wp as f64 * n as f64;
        kept += n;
    }
    if total > 0.0 {
        let inv = (1.0 / total) as f32;
        coef.iter_mut().for_each(|c| *c *= inv);
    }
    Ok(LossPlan { coef, kept })
}
