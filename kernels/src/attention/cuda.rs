//! CUDA back end of the fused attention (see the parent module for the definition).
//!
//! `src/cuda/attention.cu` is compiled with NVRTC once per device; [`CudaAttention::get`] caches
//! the state (the device's primary context — the one ONNX Runtime uses —, a stream, the module)
//! and never panics (`CudaUnavailable(reason)` without a driver or device).
//!
//! Paths: f16/bf16 with `d % 8 == 0`, `dv % 8 == 0`, `max(d, dv) <= 128` run tensor-core kernels
//! (FlashAttention-2 style, mma.sync m16n8k16, f32 accumulation, head dims zero-padded to
//! 32/64/128). `Local` query blocks are 3D tiles of the token grid that iterate the union box of
//! their windows (and dK/dV key tiles the box of queries that see them) with an exact per-pair
//! mask; on sm_90 the Local forward runs a persistent warp-specialised kernel (producer warps
//! stream key blocks through an mbarrier-guarded ring, consumer warps skip the blocks their rows
//! do not see; `FASTVMT_ATTN_FWD_WS=0` selects the block-synchronous one). dQ is accumulated in
//! f32 scratch by vector reductions. Everything else — f32 always,
//! and f16/bf16 of other head dims up to 256 — runs SIMT kernels (a warp per query or key over
//! exactly the visible set: correct, not tuned). Larger head dims are an error.
//! `FASTVMT_ATTN_NO_TC` forces the SIMT path; `FASTVMT_ATTN_FWD_WARPS`, `FASTVMT_ATTN_FWD_MT`,
//! `FASTVMT_ATTN_BWD_WARPS` override block shapes (benchmarks). Timings: `BENCHMARKS.md`.
//!
//! Backward scratch (delta `[BH, Nq]` f32, and on the tensor-core path the f32 dQ accumulator
//! `[BH, Nq, d]`) is taken with stream-ordered allocations (`cuMemAllocAsync` /
//! `cuMemFreeAsync` from the device's default memory pool) on the caller's stream: no host
//! synchronisation, nothing shared between streams, the pool keeps the memory for reuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUstream;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};

use super::{AttentionMask, AttentionSpec};
use crate::cuda::{cached_device_state, caller_stream, compile_source, device_context, loaded};
use crate::element::Element;
use crate::error::KernelError;

const SRC: &str = include_str!("../cuda/attention.cu");
/// Keys per forward block (`BN` in attention.cu).
const BN: usize = 64;
/// Queries per backward query block (`BQ`).
const BQ: usize = 32;
/// Largest head dim of the SIMT path (`32 * MAXF`).
const SIMT_MAX_DIM: usize = 256;

/// Element type of Q, K, V, O and the gradients (lse is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// The dtype of an [`Element`].
    pub fn of<T: Element>() -> DType {
        match T::CUDA_SUFFIX {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            _ => DType::F32,
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }
}

/// `Geo` of attention.cu (by value).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Geo {
    bh: i32,
    nq: i32,
    nk: i32,
    d: i32,
    dv: i32,
    local: i32,
    f: i32,
    h: i32,
    w: i32,
    rt: i32,
    rs: i32,
    fsz: i32,
    ysz: i32,
    xsz: i32,
    video: i32,
    scale: f32,
    scale_log2: f32,
}

// SAFETY: plain-old-data, layout identical to the C struct.
unsafe impl DeviceRepr for Geo {}

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

fn i32of(v: usize, what: &str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::TooLarge(format!("{what} = {v} exceeds i32")))
}

/// How one call runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    geo: Geo,
    /// Padded head dim of the tensor-core path, or `None` for SIMT.
    dp: Option<usize>,
    bh: usize,
}

fn plan(spec: &AttentionSpec, dtype: DType) -> Result<Plan, KernelError> {
    spec.validate()?;
    let s = &spec.shape;
    let bh = s.batch * s.heads;
    if bh > 65535 {
        return Err(KernelError::TooLarge(format!(
            "batch * heads = {bh} exceeds the CUDA grid's 65535"
        )));
    }
    let (local, f, h, w, rt, rs, video) = match spec.mask {
        AttentionMask::Dense => (0, 1, 1, s.q_len, 0, 0, 0),
        AttentionMask::Local(lw) => (
            1,
            lw.frames,
            lw.height,
            lw.width,
            lw.temporal_radius,
            lw.spatial_radius,
            lw.frames * lw.height * lw.width,
        ),
    };
    let size = |r: usize, e: usize| r.saturating_mul(2).saturating_add(1).min(e);
    let (fsz, ysz, xsz) = if local == 1 {
        (size(rt, f), size(rs, h), size(rs, w))
    } else {
        (1, 1, 1)
    };
    let geo = Geo {
        bh: i32of(bh, "batch * heads")?,
        nq: i32of(s.q_len, "q_len")?,
        nk: i32of(s.kv_len, "kv_len")?,
        d: i32of(s.head_dim, "head_dim")?,
        dv: i32of(s.v_dim, "v_dim")?,
        local,
        f: i32of(f, "frames")?,
        h: i32of(h, "height")?,
        w: i32of(w, "width")?,
        rt: i32of(rt.min(f), "temporal_radius")?,
        rs: i32of(rs.min(h.max(w)), "spatial_radius")?,
        fsz: fsz as i32,
        ysz: ysz as i32,
        xsz: xsz as i32,
        video: i32of(video, "video tokens")?,
        scale: spec.scale,
        scale_log2: spec.scale * std::f32::consts::LOG2_E,
    };
    // Radii are clamped to the extent above: a window never exceeds the extent, so
    // `start = clamp(c - r, 0, E - size)` is unchanged by that clamp for r >= E - 1.
    let dmax = s.head_dim.max(s.v_dim);
    let tc = dtype != DType::F32
        && s.head_dim.is_multiple_of(8)
        && s.v_dim.is_multiple_of(8)
        && dmax <= 128
        && std::env::var_os("FASTVMT_ATTN_NO_TC").is_none();
    if !tc && dmax > SIMT_MAX_DIM {
        return Err(KernelError::InvalidParameter {
            name: "head_dim",
            reason: format!(
                "head dims up to 128 (multiples of 8, f16/bf16) or up to {SIMT_MAX_DIM} (any) are supported, got d={} dv={}",
                s.head_dim, s.v_dim
            ),
        });
    }
    let dp = if !tc {
        None
    } else if dmax <= 32 {
        Some(32)
    } else if dmax <= 64 {
        Some(64)
    } else {
        Some(128)
    };
    Ok(Plan { geo, dp, bh })
}

/// A 3D tile shape `(tf, ty, tx)` for `rows` tokens over a `(f, h, w)` grid with radii
/// `(rt, rs)`, minimising the partner rows visited (union boxes rounded up to `chunk`s).
fn tile_shape(
    rows: usize,
    grid: (usize, usize, usize),
    r: (usize, usize),
    chunk: usize,
    extra_chunks: usize,
) -> (usize, usize, usize) {
    let (f, h, w) = grid;
    let mut best = (usize::MAX, (1, 1, rows));
    let pows: Vec<usize> = (0..=rows.trailing_zeros()).map(|e| 1usize << e).collect();
    for &tf in &pows {
        for &ty in &pows {
            if tf * ty > rows {
                continue;
            }
            let tx = rows / (tf * ty);
            // The kernels' visibility codes hold tf + ty + tx bits.
            if tf + ty + tx > 32 {
                continue;
            }
            let ntiles = f.div_ceil(tf) * h.div_ceil(ty) * w.div_ceil(tx);
            let span = |t: usize, r: usize, e: usize| (t.min(e) + 2 * r).min(e);
            let boxn = span(tf, r.0, f) * span(ty, r.1, h) * span(tx, r.1, w);
            let cost = ntiles * (boxn.div_ceil(chunk) + extra_chunks + 1);
            if cost < best.0 {
                best = (cost, (tf, ty, tx));
            }
        }
    }
    best.1
}

/// `FASTVMT_ATTN_FWD_TILE=TFxTYxTX` (product = the forward block's rows): the local forward's
/// query tile, for benchmarks.
fn tile_override(rows: usize) -> Option<(usize, usize, usize)> {
    let v = std::env::var("FASTVMT_ATTN_FWD_TILE").ok()?;
    let d: Vec<usize> = v.split('x').filter_map(|x| x.parse().ok()).collect();
    match d[..] {
        [a, b, c] if a * b * c == rows && a + b + c <= 32 => Some((a, b, c)),
        _ => None,
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Cached per-device state: primary context, a stream, the compiled module.
pub struct CudaAttention {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    sm_count: usize,
    /// sm_90 or newer: the warp-specialised local forward (212 KB of shared memory at d = 128).
    hopper: bool,
}

impl std::fmt::Debug for CudaAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaAttention(device {})", self.ctx.ordinal())
    }
}

static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CudaAttention>>>> = OnceLock::new();

/// Compile attention.cu for a virtual architecture (e.g. `"compute_90"`); needs only NVRTC.
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    compile_source(SRC, arch)
}

fn fwd_smem(dp: usize, nw: usize, mt: usize) -> usize {
    (16 * mt * nw + 4 * BN) * (dp + 8) * 2 + 3 * BN * 8 + 64
}

/// Forward block: (warps, 16-row tiles per warp). Dense: 4 warps x 32 rows (each K/V fragment
/// serves two row tiles) where the head dim is >= 64, else 8 x 16; Local: 4 x 32 for spatial
/// radius >= 5, else 4 x 16 (64-query tiles keep the union of small windows small). H100 run 2:
/// dense 25.9 / 30.4 / 32.8 ms (4x32 / 8x16 / 4x16), local 1/7 1.47 / 1.54, 2/10 3.29 / 3.53,
/// 1/3 0.79 / 0.69 (4x32 / 4x16). `FASTVMT_ATTN_FWD_WARPS=4|8` and `FASTVMT_ATTN_FWD_MT=1|2`
/// override (MT 2 only with 4 warps and head dim >= 64).
fn fwd_config(dp: usize, local: bool, rs: usize) -> (usize, usize) {
    let (mut nw, mut mt) = match (local, dp >= 64) {
        (false, true) => (4, 2),
        (false, false) => (8, 1),
        (true, true) if rs >= 5 => (4, 2),
        (true, _) => (4, 1),
    };
    if let Some(n) = env_usize("FASTVMT_ATTN_FWD_WARPS").filter(|&n| n == 4 || n == 8) {
        nw = n;
        mt = 1;
    }
    if let Some(m) = env_usize("FASTVMT_ATTN_FWD_MT").filter(|&m| m == 1 || m == 2) {
        mt = m;
    }
    if mt == 2 && (nw != 4 || dp < 64) {
        mt = 1;
    }
    (nw, mt)
}

fn dkdv_smem(dp: usize, nw: usize) -> usize {
    let bk = 16 * nw;
    (2 * bk + 4 * BQ) * (dp + 8) * 2 + bk * (BQ + 8) * 2 + 3 * BQ * 16 + 64
}

/// Warps of the dK/dV kernel (keys per tile = 16 x warps): Dense 8 (half the dQ atomics and
/// Q/dO re-reads per key; H100 run 2: 134 vs 160 ms) where the dQ product can be split 4 ways
/// (head dim >= 64); Local 4 (smaller query boxes; run 2: 6.8 vs 7.4 ms at 1/7);
/// `FASTVMT_ATTN_BWD_WARPS=4|8` overrides.
fn dkdv_warps(dp: usize, local: bool) -> usize {
    if dp < 64 {
        return 4;
    }
    env_usize("FASTVMT_ATTN_BWD_WARPS")
        .filter(|&n| n == 4 || n == 8)
        .unwrap_or(if local { 4 } else { 8 })
}

fn bwd_dense_smem(dp: usize, bq: usize) -> usize {
    let bk = 128;
    (2 * bk + 4 * bq) * (dp + 8) * 2 + 2 * bk * (bq + 8) * 2 + 4 * bq * 4
}

/// Whether the Dense-only kernels (`attn_fwd_dense_tc`, `attn_bwd_dense_tc`) take this call:
/// Dense mask with d == dv == the padded head dim (64 or 128).
fn dense_kernels(dp: usize, spec: &AttentionSpec) -> bool {
    let s = &spec.shape;
    matches!(spec.mask, AttentionMask::Dense) && dp >= 64 && s.head_dim == dp && s.v_dim == dp
}

fn fwd_dense_smem(dp: usize, mt: usize) -> usize {
    (64 * mt + 4 * BN) * (dp + 8) * 2
}

/// Row tiles per warp of `attn_fwd_dense_tc` (4 warps x 16*MT queries): 2 unless
/// `FASTVMT_ATTN_FWD_DENSE=1`; `FASTVMT_ATTN_FWD_DENSE=0` keeps the general kernel.
fn fwd_dense_rows() -> usize {
    match env_usize("FASTVMT_ATTN_FWD_DENSE") {
        Some(0) => 0,
        Some(1) => 1,
        _ => 2,
    }
}

/// Pipeline stages of `attn_fwd_ws_*_d<dp>` (as its entry points in attention.cu): as many
/// 64-key stages as fit the H100's 227 KB of shared memory (a 128-row Q tile takes one stage).
fn fwd_ws_stages(dp: usize) -> usize {
    if dp == 128 {
        6
    } else {
        9
    }
}

fn fwd_ws_smem(dp: usize) -> usize {
    let n = fwd_ws_stages(dp);
    2 * n * BN * (dp + 8) * 2 + n * BN * 8 + n * 16 + 32 + 3 * n * 8
}

/// Query rows per tile of the warp-specialised local forward (8 consumer warps x 16).
const FWD_WS_ROWS: usize = 128;

/// Whether a Local forward with head dims padded to `dp` runs `attn_fwd_ws` (sm_90, dp 64/128)
/// rather than `attn_fwd_tc`; `FASTVMT_ATTN_FWD_WS=0` keeps the latter (benchmarks, tests).
fn fwd_ws(dp: usize, hopper: bool) -> bool {
    hopper && dp >= 64 && env_usize("FASTVMT_ATTN_FWD_WS") != Some(0)
}

/// The dense backward kernel's query block for this call, or `None` for the general
/// `attn_dkdv_tc` (see [`dense_kernels`]). Query block 64 unless `FASTVMT_ATTN_BWD_DENSE=32`;
/// `FASTVMT_ATTN_BWD_DENSE=0` keeps the general kernel (for side-by-side benchmarks).
fn bwd_dense_queries(dp: usize, spec: &AttentionSpec) -> Option<usize> {
    if !dense_kernels(dp, spec) {
        return None;
    }
    match env_usize("FASTVMT_ATTN_BWD_DENSE") {
        Some(0) => None,
        Some(32) => Some(32),
        _ => Some(BWD_DENSE_QUERIES),
    }
}

/// Default query block of `attn_bwd_dense_tc`.
const BWD_DENSE_QUERIES: usize = 64;

fn function_names(hopper: bool) -> Vec<(String, usize)> {
    let mut v = Vec::new();
    for t in ["f32", "f16", "bf16"] {
        for k in [
            "attn_delta",
            "attn_dq_convert",
            "attn_fwd_simt",
            "attn_dq_simt",
            "attn_dkdv_simt",
        ] {
            v.push((format!("{k}_{t}"), 0));
        }
    }
    for t in ["f16", "bf16"] {
        for dp in [32, 64, 128] {
            for nw in [4, 8] {
                v.push((
                    format!("attn_fwd_tc_{t}_d{dp}_w{nw}_m1"),
                    fwd_smem(dp, nw, 1),
                ));
            }
            if dp >= 64 {
                v.push((format!("attn_fwd_tc_{t}_d{dp}_w4_m2"), fwd_smem(dp, 4, 2)));
            }
            for nw in [4, 8] {
                if dp >= 64 || nw == 4 {
                    v.push((format!("attn_dkdv_tc_{t}_d{dp}_w{nw}"), dkdv_smem(dp, nw)));
                }
            }
            if dp >= 64 && hopper {
                v.push((format!("attn_fwd_ws_{t}_d{dp}"), fwd_ws_smem(dp)));
            }
            if dp >= 64 {
                for mt in [1, 2] {
                    v.push((
                        format!("attn_fwd_dense_tc_{t}_d{dp}_m{mt}"),
                        fwd_dense_smem(dp, mt),
                    ));
                }
                for bq in [32, 64] {
                    v.push((
                        format!("attn_bwd_dense_tc_{t}_d{dp}_q{bq}"),
                        bwd_dense_smem(dp, bq),
                    ));
                }
            }
        }
    }
    v
}

fn cfg(grid: (usize, usize), block: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

impl CudaAttention {
    /// The cached state of `device` (compiled on first use). `CudaUnavailable(reason)` without
    /// a driver or device; never panics.
    pub fn get(device: usize) -> Result<Arc<CudaAttention>, KernelError> {
        cached_device_state(&CACHE, device, Self::create)
    }

    fn create(device: usize) -> Result<Self, KernelError> {
        let (ctx, (major, minor), arch) = device_context(device)?;
        if major < 8 {
            return Err(KernelError::CudaUnavailable(format!(
                "compute capability {major}.{minor}: the attention kernels need sm_80 or newer"
            )));
        }
        let ptx = compile(arch)?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let mut funcs = HashMap::new();
        for (name, smem) in function_names(major >= 9) {
            let f = module.load_function(&name).map_err(drv)?;
            if smem > 48 * 1024 {
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(drv)?;
            }
            funcs.insert(name, f);
        }
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv)?
            .max(1) as usize;
        Ok(CudaAttention {
            stream: ctx.default_stream(),
            ctx,
            _module: module,
            funcs,
            sm_count,
            hopper: major >= 9,
        })
    }

    fn f(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        loaded(&self.funcs, name)
    }

    /// The device's name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// The primary context of the device.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The state's own stream (the context's default stream), used when `stream` is null.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    fn stream_for(&self, raw: CUstream) -> Result<Arc<CudaStream>, KernelError> {
        // SAFETY: the raw entries' callers guarantee `raw` is null or a live stream of this
        // device's context.
        unsafe { caller_stream(&self.ctx, &self.stream, raw) }
    }

    /// Forward: writes `out` and `lse`.
    ///
    /// # Safety
    /// `q, k, v, out, lse` are device allocations of this device with `spec.numel()` /
    /// `spec.lse_len()` elements of `dtype` (lse: f32); `stream` is a `CUstream` of this
    /// device (raw, e.g. ONNX Runtime's) or null for [`Self::stream`]. Launches asynchronously
    /// on `stream`; no host synchronisation.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward_raw(
        &self,
        dtype: DType,
        spec: &AttentionSpec,
        q: u64,
        k: u64,
        v: u64,
        out: u64,
        lse: u64,
        stream: CUstream,
    ) -> Result<(), KernelError> {
        let p = plan(spec, dtype)?;
        let st = self.stream_for(stream)?;
        let g = p.geo;
        let t = dtype.suffix();
        // Read once: the guard and the launch must agree.
        let dense_mt = fwd_dense_rows();
        match p.dp {
            None => {
                let rows = p.bh * spec.shape.q_len;
                let func = self.f(&format!("attn_fwd_simt_{t}"))?;
                unsafe {
                    st.launch_builder(func)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&out)
                        .arg(&lse)
                        .arg(&g)
                        .launch(cfg((rows.div_ceil(4), 1), 128, 0))
                }
                .map_err(drv)?;
            }
            Some(dp) if dense_kernels(dp, spec) && dense_mt > 0 => {
                let mt = dense_mt;
                let (nqi, nki) = (g.nq, g.nk);
                let func = self.f(&format!("attn_fwd_dense_tc_{t}_d{dp}_m{mt}"))?;
                unsafe {
                    st.launch_builder(func)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&out)
                        .arg(&lse)
                        .arg(&nqi)
                        .arg(&nki)
                        .arg(&g.scale_log2)
                        .launch(cfg(
                            (spec.shape.q_len.div_ceil(64 * mt), p.bh),
                            128,
                            fwd_dense_smem(dp, mt),
                        ))
                }
                .map_err(drv)?;
            }
            Some(dp) if matches!(spec.mask, AttentionMask::Local(_)) && fwd_ws(dp, self.hopper) => {
                self.forward_ws(&st, t, dp, spec, &g, p.bh, [q, k, v, out, lse])?;
            }
            Some(dp) => {
                let local = matches!(spec.mask, AttentionMask::Local(_));
                let (nw, mt) = fwd_config(dp, local, g.rs as usize);
                let bm = 16 * nw * mt;
                let (tf, ty, tx, grid) = if local {
                    let (f, h, w) = (g.f as usize, g.h as usize, g.w as usize);
                    let text = (spec.shape.kv_len - g.video as usize).div_ceil(BN);
                    let (tf, ty, tx) = tile_override(bm).unwrap_or_else(|| {
                        tile_shape(bm, (f, h, w), (g.rt as usize, g.rs as usize), BN, text)
                    });
                    (tf, ty, tx, (f.div_ceil(tf), h.div_ceil(ty), w.div_ceil(tx)))
                } else {
                    (1, 1, bm, (1, 1, spec.shape.q_len.div_ceil(bm)))
                };
                let ntiles = grid.0 * grid.1 * grid.2;
                let (tf, ty, tx, nty, ntx) = (
                    tf as i32,
                    ty as i32,
                    tx as i32,
                    i32of(grid.1, "tiles")?,
                    i32of(grid.2, "tiles")?,
                );
                let func = self.f(&format!("attn_fwd_tc_{t}_d{dp}_w{nw}_m{mt}"))?;
                unsafe {
                    st.launch_builder(func)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&out)
                        .arg(&lse)
                        .arg(&g)
                        .arg(&tf)
                        .arg(&ty)
                        .arg(&tx)
                        .arg(&nty)
                        .arg(&ntx)
                        .launch(cfg((ntiles, p.bh), 32 * nw, fwd_smem(dp, nw, mt)))
                }
                .map_err(drv)?;
            }
        }
        Ok(())
    }

    /// The warp-specialised Local forward: one persistent block per SM taking (tile, head) items
    /// from a counter in stream-ordered scratch (zeroed here, freed after the launch).
    #[allow(clippy::too_many_arguments)]
    fn forward_ws(
        &self,
        st: &Arc<CudaStream>,
        t: &str,
        dp: usize,
        spec: &AttentionSpec,
        g: &Geo,
        bh: usize,
        ptrs: [u64; 5],
    ) -> Result<(), KernelError> {
        let [q, k, v, out, lse] = ptrs;
        let (f, h, w) = (g.f as usize, g.h as usize, g.w as usize);
        let text = (spec.shape.kv_len - g.video as usize).div_ceil(BN);
        let (tf, ty, tx) = tile_override(FWD_WS_ROWS).unwrap_or_else(|| {
            tile_shape(
                FWD_WS_ROWS,
                (f, h, w),
                (g.rt as usize, g.rs as usize),
                BN,
                text,
            )
        });
        let (ntf, nty, ntx) = (f.div_ceil(tf), h.div_ceil(ty), w.div_ceil(tx));
        // The kernel indexes items as i32.
        i32of(ntf * nty * ntx * bh, "tiles x heads")?;
        let blocks = (ntf * nty * ntx * bh).min(self.sm_count);
        let (tf, ty, tx, nty, ntx) = (tf as i32, ty as i32, tx as i32, nty as i32, ntx as i32);
        let func = self.f(&format!("attn_fwd_ws_{t}_d{dp}"))?;
        let raw = st.cu_stream();
        let counter = unsafe { cudarc::driver::result::malloc_async(raw, 4) }.map_err(drv)?;
        let res = unsafe {
            cudarc::driver::result::memset_d8_async(counter, 0, 4, raw)
                .map_err(drv)
                .and_then(|()| {
                    st.launch_builder(func)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&out)
                        .arg(&lse)
                        .arg(g)
                        .arg(&tf)
                        .arg(&ty)
                        .arg(&tx)
                        .arg(&nty)
                        .arg(&ntx)
                        .arg(&counter)
                        .launch(cfg((blocks, 1), 32 * 12, fwd_ws_smem(dp)))
                        .map(|_| ())
                        .map_err(drv)
                })
        };
        let freed = unsafe { cudarc::driver::result::free_async(counter, raw) }.map_err(drv);
        res?;
        freed
    }

    /// Backward: writes `dq, dk, dv` from `dout` and the forward's `out`, `lse`.
    ///
    /// # Safety
    /// As [`Self::forward_raw`]; `dout, dq` have Q's/O's sizes, `dk, dv` K's/V's.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn backward_raw(
        &self,
        dtype: DType,
        spec: &AttentionSpec,
        dout: u64,
        q: u64,
        k: u64,
        v: u64,
        out: u64,
        lse: u64,
        dq: u64,
        dk: u64,
        dv: u64,
        stream: CUstream,
    ) -> Result<(), KernelError> {
        let p = plan(spec, dtype)?;
        let st = self.stream_for(stream)?;
        let raw = st.cu_stream();
        let rows = p.bh * spec.shape.q_len;
        let [nq_el, _, _, _] = spec.numel()?;
        // Scratch: stream-ordered, freed on the same stream after the last use.
        let delta = unsafe { cudarc::driver::result::malloc_async(raw, rows * 4) }.map_err(drv)?;
        let dqacc = match p.dp {
            Some(_) => {
                let ptr = unsafe { cudarc::driver::result::malloc_async(raw, nq_el * 4) };
                match ptr {
                    Ok(ptr) => Some(ptr),
                    Err(e) => {
                        let _ = unsafe { cudarc::driver::result::free_async(delta, raw) };
                        return Err(drv(e));
                    }
                }
            }
            None => None,
        };
        let ptrs = [dout, q, k, v, out, lse, dq, dk, dv];
        let res = self.backward_launches(&st, &p, dtype, spec, ptrs, delta, dqacc, rows, nq_el);
        unsafe {
            let f1 = cudarc::driver::result::free_async(delta, raw);
            let f2 = match dqacc {
                Some(ptr) => cudarc::driver::result::free_async(ptr, raw),
                None => Ok(()),
            };
            res?;
            f1.map_err(drv)?;
            f2.map_err(drv)?;
        }
        Ok(())
    }

    /// dq (dtype) = scale * the f32 accumulator of the dQ atomics.
    fn convert_dq(
        &self,
        st: &Arc<CudaStream>,
        dtype: DType,
        acc: u64,
        dq: u64,
        nq_el: usize,
        scale: f32,
    ) -> Result<(), KernelError> {
        let n = nq_el as i64;
        let blocks = nq_el.div_ceil(256).min(self.sm_count * 16).max(1);
        unsafe {
            st.launch_builder(self.f(&format!("attn_dq_convert_{}", dtype.suffix()))?)
                .arg(&acc)
                .arg(&dq)
                .arg(&n)
                .arg(&scale)
                .launch(cfg((blocks, 1), 256, 0))
        }
        .map_err(drv)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_launches(
        &self,
        st: &Arc<CudaStream>,
        p: &Plan,
        dtype: DType,
        spec: &AttentionSpec,
        ptrs: [u64; 9],
        delta: u64,
        dqacc: Option<u64>,
        rows: usize,
        nq_el: usize,
    ) -> Result<(), KernelError> {
        let [dout, q, k, v, out, lse, dq, dk, dv] = ptrs;
        let g = p.geo;
        let t = dtype.suffix();
        let rows_i = rows as i64;
        let dvi = g.dv;
        unsafe {
            st.launch_builder(self.f(&format!("attn_delta_{t}"))?)
                .arg(&out)
                .arg(&dout)
                .arg(&delta)
                .arg(&rows_i)
                .arg(&dvi)
                .launch(cfg((rows.div_ceil(8), 1), 256, 0))
        }
        .map_err(drv)?;
        match (p.dp, dqacc) {
            (Some(dp), Some(acc)) => {
                unsafe {
                    cudarc::driver::result::memset_d8_async(acc, 0, nq_el * 4, st.cu_stream())
                }
                .map_err(drv)?;
                if let Some(bq) = bwd_dense_queries(dp, spec) {
                    let (nqi, nki) = (g.nq, g.nk);
                    let ntiles = spec.shape.kv_len.div_ceil(128);
                    unsafe {
                        st.launch_builder(self.f(&format!("attn_bwd_dense_tc_{t}_d{dp}_q{bq}"))?)
                            .arg(&q)
                            .arg(&k)
                            .arg(&v)
                            .arg(&dout)
                            .arg(&lse)
                            .arg(&delta)
                            .arg(&dk)
                            .arg(&dv)
                            .arg(&acc)
                            .arg(&nqi)
                            .arg(&nki)
                            .arg(&g.scale)
                            .arg(&g.scale_log2)
                            .launch(cfg((ntiles, p.bh), 256, bwd_dense_smem(dp, bq)))
                    }
                    .map_err(drv)?;
                    return self.convert_dq(st, dtype, acc, dq, nq_el, g.scale);
                }
                let local = matches!(spec.mask, AttentionMask::Local(_));
                let nwk = dkdv_warps(dp, local);
                let bk = 16 * nwk;
                let (kt, grid, nvt) = if local {
                    let (f, h, w) = (g.f as usize, g.h as usize, g.w as usize);
                    let kt = tile_shape(bk, (f, h, w), (g.rt as usize, g.rs as usize), BQ, 0);
                    let grid = (f.div_ceil(kt.0), h.div_ceil(kt.1), w.div_ceil(kt.2));
                    (kt, grid, grid.0 * grid.1 * grid.2)
                } else {
                    let n = spec.shape.kv_len.div_ceil(bk);
                    ((1, 1, bk), (1, 1, n), n)
                };
                let text = if local {
                    (spec.shape.kv_len - g.video as usize).div_ceil(bk)
                } else {
                    0
                };
                let ntiles = nvt + text;
                let (ktf, kty, ktx) = (kt.0 as i32, kt.1 as i32, kt.2 as i32);
                let (nty, ntx, nvti) = (
                    i32of(grid.1, "tiles")?,
                    i32of(grid.2, "tiles")?,
                    i32of(nvt, "tiles")?,
                );
                unsafe {
                    st.launch_builder(self.f(&format!("attn_dkdv_tc_{t}_d{dp}_w{nwk}"))?)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&dout)
                        .arg(&lse)
                        .arg(&delta)
                        .arg(&dk)
                        .arg(&dv)
                        .arg(&acc)
                        .arg(&g)
                        .arg(&ktf)
                        .arg(&kty)
                        .arg(&ktx)
                        .arg(&nty)
                        .arg(&ntx)
                        .arg(&nvti)
                        .launch(cfg((ntiles, p.bh), 32 * nwk, dkdv_smem(dp, nwk)))
                }
                .map_err(drv)?;
                self.convert_dq(st, dtype, acc, dq, nq_el, g.scale)?;
            }
            _ => {
                let nk_rows = p.bh * spec.shape.kv_len;
                unsafe {
                    st.launch_builder(self.f(&format!("attn_dq_simt_{t}"))?)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&dout)
                        .arg(&lse)
                        .arg(&delta)
                        .arg(&dq)
                        .arg(&g)
                        .launch(cfg((rows.div_ceil(4), 1), 128, 0))
                }
                .map_err(drv)?;
                unsafe {
                    st.launch_builder(self.f(&format!("attn_dkdv_simt_{t}"))?)
                        .arg(&q)
                        .arg(&k)
                        .arg(&v)
                        .arg(&dout)
                        .arg(&lse)
                        .arg(&delta)
                        .arg(&dk)
                        .arg(&dv)
                        .arg(&g)
                        .launch(cfg((nk_rows.div_ceil(4), 1), 128, 0))
                }
                .map_err(drv)?;
            }
        }
        Ok(())
    }

    fn upload<T: Element>(
        &self,
        host: &[T],
        expected: usize,
        tensor: &'static str,
    ) -> Result<cudarc::driver::CudaSlice<T>, KernelError> {
        if host.len() != expected {
            return Err(KernelError::ShapeMismatch {
                tensor,
                expected,
                actual: host.len(),
            });
        }
        self.stream.clone_htod(host).map_err(drv)
    }

    /// A device buffer of `n` elements filled with NaN (all bits set), so unwritten outputs show.
    fn poisoned<T: Element>(&self, n: usize) -> Result<cudarc::driver::CudaSlice<T>, KernelError> {
        let buf = unsafe { self.stream.alloc::<T>(n) }.map_err(drv)?;
        {
            let (ptr, _sync) = buf.device_ptr(&self.stream);
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    ptr,
                    0xff,
                    n * std::mem::size_of::<T>(),
                    self.stream.cu_stream(),
                )
            }
            .map_err(drv)?;
        }
        Ok(buf)
    }

    /// Host-slice forward (upload, run on [`Self::stream`], download): `(out, lse)`. Outputs are
    /// NaN-poisoned before the launch.
    pub fn forward<T: Element>(
        &self,
        spec: &AttentionSpec,
        q: &[T],
        k: &[T],
        v: &[T],
    ) -> Result<(Vec<T>, Vec<f32>), KernelError> {
        spec.validate()?;
        let [nq, nk, nv, no] = spec.numel()?;
        self.ctx.bind_to_thread().map_err(drv)?;
        let (qd, kd, vd) = (
            self.upload(q, nq, "q")?,
            self.upload(k, nk, "k")?,
            self.upload(v, nv, "v")?,
        );
        let od = self.poisoned::<T>(no)?;
        let ld = self.poisoned::<f32>(spec.lse_len())?;
        {
            let s = &self.stream;
            let (qp, _a) = qd.device_ptr(s);
            let (kp, _b) = kd.device_ptr(s);
            let (vp, _c) = vd.device_ptr(s);
            let (op, _d) = od.device_ptr(s);
            let (lp, _e) = ld.device_ptr(s);
            unsafe {
                self.forward_raw(DType::of::<T>(), spec, qp, kp, vp, op, lp, s.cu_stream())?;
            }
        }
        let o = self.stream.clone_dtoh(&od).map_err(drv)?;
        let l = self.stream.clone_dtoh(&ld).map_err(drv)?;
        Ok((o, l))
    }

    /// Host-slice backward: `(dq, dk, dv)`. Outputs are NaN-poisoned before the launch.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn backward<T: Element>(
        &self,
        spec: &AttentionSpec,
        dout: &[T],
        q: &[T],
        k: &[T],
        v: &[T],
        out: &[T],
        lse: &[f32],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>), KernelError> {
        spec.validate()?;
        let [nq, nk, nv, no] = spec.numel()?;
        self.ctx.bind_to_thread().map_err(drv)?;
        let dod = self.upload(dout, no, "dout")?;
        let (qd, kd, vd) = (
            self.upload(q, nq, "q")?,
            self.upload(k, nk, "k")?,
            self.upload(v, nv, "v")?,
        );
        let od = self.upload(out, no, "out")?;
        let ld = self.upload(lse, spec.lse_len(), "lse")?;
        let dqd = self.poisoned::<T>(nq)?;
        let dkd = self.poisoned::<T>(nk)?;
        let dvd = self.poisoned::<T>(nv)?;
        {
            let s = &self.stream;
            let (p_do, _s1) = dod.device_ptr(s);
            let (p_q, _s2) = qd.device_ptr(s);
            let (p_k, _s3) = kd.device_ptr(s);
            let (p_v, _s4) = vd.device_ptr(s);
            let (p_o, _s5) = od.device_ptr(s);
            let (p_l, _s6) = ld.device_ptr(s);
            let (p_dq, _s7) = dqd.device_ptr(s);
            let (p_dk, _s8) = dkd.device_ptr(s);
            let (p_dv, _s9) = dvd.device_ptr(s);
            unsafe {
                self.backward_raw(
                    DType::of::<T>(),
                    spec,
                    p_do,
                    p_q,
                    p_k,
                    p_v,
                    p_o,
                    p_l,
                    p_dq,
                    p_dk,
                    p_dv,
                    s.cu_stream(),
                )?;
            }
        }
        Ok((
            self.stream.clone_dtoh(&dqd).map_err(drv)?,
            self.stream.clone_dtoh(&dkd).map_err(drv)?,
            self.stream.clone_dtoh(&dvd).map_err(drv)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_shapes_fill_the_rows() {
        for rows in [64, 128] {
            let (a, b, c) = tile_shape(rows, (21, 30, 52), (1, 7), 64, 0);
            assert_eq!(a * b * c, rows);
        }
        // A tiny grid packs frames into one tile.
        let (a, b, c) = tile_shape(64, (4, 3, 5), (1, 1), 64, 0);
        assert!(a > 1, "{a} {b} {c}");
    }
}
