//! CUDA back end: `amf.cu` compiled once per device with NVRTC, launched through cudarc.
//!
//! [`CudaAmf::get`] returns the process-wide cached state of one device (primary context, a
//! stream, the loaded module). Entry points are dtype-suffixed (`amf_logits_bf16`, ...).
//! Host-slice calls upload Q/K, run, and download; the `*_device` methods take device buffers
//! (same layout) and leave the gradients on the device. Index tables (per plan) and scratch
//! buffers (per role) are cached in the state and reused across calls; a call holds the
//! state's lock from its first launch to its read-back, so concurrent callers serialise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};

use crate::element::Element;
use crate::error::KernelError;
use crate::spec::{self, AmfField, AmfSpec, CentreMode, LossPlan, LossSpec, Plan, Readout};

const SRC: &str = include_str!("amf.cu");
/// Tokens per query/key tile of the kernels (`TQ` in amf.cu), laid out as TILE_H x TILE_W.
const TQ: usize = 32;
const TILE_H: usize = 4;
const TILE_W: usize = 8;
/// Feature slice of the gradient kernels (`DS` / `GB_N` in amf.cu).
const DS: usize = 128;
const DS_TC: usize = 256;
/// Largest logits/score buffer per pair chunk.
const CHUNK_BYTES: usize = 1 << 30;
/// Version-2 tensor-core kernels: pairs per logits group, dynamic shared memory of
/// `amf_logits3_*` (3 stages x (96 + 128) rows x 72 u16), gradient tile side and feature slice.
const L3_PG: usize = 3;
const L3_SMEM: usize = 3 * (3 * 32 + 128) * 72 * 2;
/// `amf_logits3g*` (wgmma): 3 stages x (128 + 96) rows x 128 bytes, and 1 KB to align them.
const L3G_SMEM: usize = 3 * (128 + 96) * 128 + 1024;
const G_T: usize = 8;
/// Default key-chunk split of the stored-logits kernel (see `launch_logits`).
const LOGITS_ZX: usize = 3;
/// Dynamic shared memory of `amf_dq2pw_*`/`amf_dk2pw_*`: 3 stages x (64 x 40 + 32 x 264) u16.
const G2PW_SMEM: usize = 3 * (64 * 40 + 32 * 264) * 2;

/// Version-2 gradient blocks: `FASTVMT_AMF_GRAD_WIDE` set selects 256 features x 512 threads
/// (`amf_dq2pw`/`amf_dk2pw`, gathered: `amf_dq2w`/`amf_dk2w`) instead of 128 features x 256
/// threads (H100 run 4: 1.2x slower with packed operands).
fn grad_wide() -> bool {
    std::env::var_os("FASTVMT_AMF_GRAD_WIDE").is_some()
}

/// Version-2 gradients, default: the score gradient is first packed per (pair, 8x8 tile)
/// (`amf_pack_dq`/`amf_pack_dk`) and the gradient kernels load it by `cp.async`
/// (`amf_dq2p`/`amf_dk2p`). `FASTVMT_AMF_GRAD_GATHER` set: the gradient kernels gather it from
/// `[P, S, W]` once per feature slice instead (`amf_dq2`/`amf_dk2`; H100 run 4: 1.7x slower).
fn grad_packed() -> bool {
    std::env::var_os("FASTVMT_AMF_GRAD_GATHER").is_none()
}

/// Largest packed score buffer (bytes, each of dQ and dK) before the gather kernels are used.
const PACK_BYTES: usize = 2 << 30;

/// Version-3 gradients (`amf_grad_ranges`, `amf_pack3_*`, `amf_dq3t*`/`amf_dk3t*`): own tiles of
/// `TY x 8` tokens whose groups of 32 skip the partner chunks outside their windows, times
/// GN features per block. `FASTVMT_AMF_GRAD_TILE` forces (TY, GN): `16` (16, 128), `16w`
/// (16, 256), `32` (32, 128), `16g` (16, 128 on `wgmma`; on a GPU other than sm_90 the same
/// tile on `mma.sync`), or `2`: the version-2 8x8 kernels (for before/after measurements and
/// tests). Unset: [`G3_WG`] on sm_90, else [`G3_TILE`], where its grid fills the GPU
/// ([`GradTile::Auto`]). Read once per call.
fn grad_tile() -> GradTile {
    match std::env::var("FASTVMT_AMF_GRAD_TILE").as_deref() {
        Ok("2") => GradTile::V2,
        Ok("16") => GradTile::Forced(G3_TILE),
        Ok("16s3") => GradTile::Forced(G3_S3),
        Ok("16w") => GradTile::Forced(G3Tile { gn: 256, ..G3_S3 }),
        Ok("32") => GradTile::Forced(G3Tile { ty: 32, ..G3_S3 }),
        Ok("16g") => GradTile::Forced(G3_WG),
        _ => GradTile::Auto,
    }
}

/// A version-3 kernel: tile height, features per block, pipeline stages, and whether it
/// multiplies with Hopper's warpgroup MMA (`wgmma`, sm_90a only; see `grad3wg_impl`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct G3Tile {
    ty: usize,
    gn: usize,
    stages: usize,
    wg: bool,
}

impl G3Tile {
    /// Kernel-name suffix (`amf_dq3<suffix>_<type>`).
    fn name(self) -> String {
        if self.wg {
            return format!("t{}g", self.ty);
        }
        let wide = if self.gn == 256 { "w" } else { "" };
        // Only the default kernel also exists with the other depth (see G3_KERNELS).
        let s3 = if self.stages == 3 && self.ty == 16 && self.gn == 128 {
            "s3"
        } else {
            ""
        };
        format!("t{}{wide}{s3}", self.ty)
    }

    /// Dynamic shared memory: stages x (TY*8 x 40 + 32 x (GN+8)) u16 (`wgmma`: both tiles
    /// swizzled, without padding: TY*8 x 32 + 32 x GN, and 1 KB to align the stages).
    const fn smem(self) -> usize {
        if self.wg {
            // Stage bases are aligned to 1 KB inside the block's allocation.
            self.stages * (self.ty * 8 + self.gn) * 32 * 2 + 1024
        } else {
            self.stages * (self.ty * 8 * 40 + 32 * (self.gn + 8)) * 2
        }
    }

    /// Threads per block: a warp per 32 own rows x 64 features (`mma.sync`), or a warpgroup
    /// per 64 own rows (`wgmma`).
    const fn threads(self) -> usize {
        if self.wg {
            self.ty * 8 / 64 * 128
        } else {
            self.ty * self.gn / 8
        }
    }
}

/// Which gradient kernels a call runs.
#[derive(Clone, Copy)]
enum GradTile {
    V2,
    Forced(G3Tile),
    /// [`G3_WG`] (sm_90) or [`G3_TILE`] when its grid has at least [`G3_MIN_WAVES`] blocks per
    /// SM, else version 2:
    /// a 16x8 tile has half the blocks of an 8x8 one, and on a small grid the GPU runs idle
    /// (H100, run 14: 15x26 tokens x 9 frames, 432 blocks: 0.44 ms against 0.39 for version 2;
    /// FastVMT's 30x52 x 21 frames, 3528 blocks: 3.7-4.0 against 4.0-4.1).
    Auto,
}
/// How the version-3 gradient phases share the device (`FASTVMT_AMF_OVERLAP`, read once per
/// call). The score-gradient packing is a latency-bound gather and the gradient products are
/// bound by L2 bandwidth, so running them side by side on two streams hides part of the
/// packing. `2` (default): dQ's and dK's chains (ranges, packing, product) on one stream each;
/// `1`: only dK's ranges and packing beside dQ's, then dK after dQ; `0`: one stream, in order.
/// H200, run 15 (fwd+bwd at FastVMT's shape, query-centred, three runs): 3.45 / 3.49 / 3.55 ms
/// (`2`), 3.58 / 3.49 / 3.59 (`1`), 3.66 / 3.68 / 3.54 (`0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlap {
    Serial,
    PackBesideDq,
    TwoChains,
}

fn overlap() -> Overlap {
    match std::env::var("FASTVMT_AMF_OVERLAP").as_deref() {
        Ok("0") => Overlap::Serial,
        Ok("1") => Overlap::PackBesideDq,
        _ => Overlap::TwoChains,
    }
}

/// The backward's stored logits (and the coarse mode's tile centres) on `wgmma`, sm_90 only
/// (the fused forward stays on `mma.sync`): on unless `FASTVMT_AMF_LOGITS_WG=0`. H100, run 16,
/// FastVMT's shape: 0.54 against 0.89 ms. Read once per call.
fn logits_wg() -> bool {
    std::env::var("FASTVMT_AMF_LOGITS_WG").as_deref() != Ok("0")
}

/// Blocks per SM below which [`GradTile::Auto`] keeps version 2.
const G3_MIN_WAVES: usize = 4;
/// Default version-3 kernel: 16x8 tiles, 128 features, 4 pipeline stages (H100, run 14:
/// dQ 0.886 -> 0.848, dK 1.057 -> 1.002 ms against 3 stages; fwd+bwd at FastVMT's shape
/// 3.65-3.83 against 3.86-3.98 ms in three alternating runs, coarse-centred windows unchanged).
const G3_TILE: G3Tile = G3Tile {
    ty: 16,
    gn: 128,
    stages: 4,
    wg: false,
};
/// The same with 3 stages; the 256-feature and 32-row variants use 3 (shared memory).
const G3_S3: G3Tile = G3Tile {
    stages: 3,
    ..G3_TILE
};
/// The 16x8 tiles x 128 features on `wgmma` (sm_90a; the default there): H100, run 16, dQ
/// 0.77 and dK 0.68 ms beside each other against 1.07 / 1.02 for [`G3_TILE`] (fwd+bwd at
/// FastVMT's shape 2.98 against 3.58 ms).
const G3_WG: G3Tile = G3Tile {
    wg: true,
    ..G3_TILE
};
/// Every compiled version-3 kernel (see `GRAD3_ENTRY` and `GRAD3WG_ENTRY` in amf.cu).
const G3_KERNELS: [G3Tile; 5] = [
    G3_TILE,
    G3_S3,
    G3Tile { gn: 256, ..G3_S3 },
    G3Tile { ty: 32, ..G3_S3 },
    G3_WG,
];

const FUNCS: &[&str] = &[
    "amf_fill",
    "amf_cast16",
    "amf_first_nonfinite",
    "amf_loss_coef",
    "amf_scale",
    "amf_windows",
    "amf_rows",
    "amf_logits_f32",
    "amf_logits_f16",
    "amf_logits_bf16",
    "amf_dq_f32",
    "amf_dq_f16",
    "amf_dq_bf16",
    "amf_dk_f32",
    "amf_dk_f16",
    "amf_dk_bf16",
    "amf_logits_tc_f16",
    "amf_logits_tc_bf16",
    "amf_logits_tcw_f16",
    "amf_logits_tcw_bf16",
    "amf_dq_tc_f16",
    "amf_dq_tc_bf16",
    "amf_dk_tc_f16",
    "amf_dk_tc_bf16",
    "amf_logits3_f16",
    "amf_logits3_bf16",
    "amf_logits3f_f16",
    "amf_logits3f_bf16",
    "amf_logits3g_f16",
    "amf_logits3g_bf16",
    "amf_grad_boxes",
    "amf_dq2_f16",
    "amf_dq2_bf16",
    "amf_dk2_f16",
    "amf_dk2_bf16",
    "amf_dq2w_f16",
    "amf_dq2w_bf16",
    "amf_dk2w_f16",
    "amf_dk2w_bf16",
    "amf_dq2p_f16",
    "amf_dq2p_bf16",
    "amf_dk2p_f16",
    "amf_dk2p_bf16",
    "amf_dq2pw_f16",
    "amf_dq2pw_bf16",
    "amf_dk2pw_f16",
    "amf_dk2pw_bf16",
    "amf_pack_dq",
    "amf_pack_dk",
    "amf_grad_ranges",
    "amf_pack3_dq",
    "amf_pack3_dk",
    "amf_sum",
];

/// The version-3 gradient kernels by name (`amf_dq3<tile>_<type>`, see `GRAD3_ENTRY` in amf.cu).
fn g3_functions() -> impl Iterator<Item = (String, G3Tile)> {
    G3_KERNELS.into_iter().flat_map(|t| {
        ["dq", "dk"].into_iter().flat_map(move |dir| {
            ["f16", "bf16"]
                .into_iter()
                .map(move |ty| (format!("amf_{dir}3{}_{ty}", t.name()), t))
        })
    })
}

/// Every kernel the AMF back end loads from the compiled module (a name missing from the PTX
/// fails the device set-up; the NVRTC test checks them all without a GPU).
pub fn kernel_names() -> Vec<String> {
    FUNCS
        .iter()
        .map(|s| s.to_string())
        .chain(g3_functions().map(|(n, _)| n))
        .collect()
}

/// Tensor-core kernels serve f16/bf16 inputs with `head_dim % 64 == 0`, unless the
/// environment variable `FASTVMT_AMF_NO_TC` is set (then the f32 SIMT kernels run).
fn use_tc<T: Element>(d: usize) -> bool {
    T::CUDA_SUFFIX != "f32"
        && d.is_multiple_of(64)
        && std::env::var_os("FASTVMT_AMF_NO_TC").is_none()
}

/// `FASTVMT_AMF_LEGACY` set: the tensor-core path uses the run-3 kernels (per-pair logits,
/// `amf_dq_tc`/`amf_dk_tc`) instead of version 2 (for before/after measurements).
fn legacy() -> bool {
    std::env::var_os("FASTVMT_AMF_LEGACY").is_some()
}

/// Why CUDA cannot run here, or `Ok(())`. Never panics (checks the libraries before cudarc
/// touches them).
pub fn cuda_available() -> Result<(), String> {
    // SAFETY: only tries to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda) was not found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the NVRTC library (libnvrtc) was not found".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver reports no device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("CUDA driver initialisation failed: {e:?}")),
    }
}

/// Compile `amf.cu` with NVRTC for a virtual architecture (e.g. `"compute_90"`). Needs only
/// the NVRTC library (no driver, no GPU): the tests use it to check the source everywhere.
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    compile_source(SRC, arch)
}

/// Compile one of the crate's CUDA sources with NVRTC (C++17) for `arch`; shared by the AMF
/// and attention back ends.
pub(crate) fn compile_source(
    src: &str,
    arch: &'static str,
) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::CudaUnavailable(
            "the NVRTC library (libnvrtc) was not found".into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            KernelError::Nvrtc(log.to_string_lossy().into_owned())
        }
        other => KernelError::Nvrtc(format!("{other:?}")),
    })
}

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

/// A view of device memory someone else owns and frees (ONNX Runtime's buffers): dropping it,
/// also while unwinding, only lets go of the view.
struct Borrowed<U>(Option<CudaSlice<U>>);

impl<U> Borrowed<U> {
    fn get(&self) -> &CudaSlice<U> {
        self.0.as_ref().expect("a view lives until dropped")
    }

    fn get_mut(&mut self) -> &mut CudaSlice<U> {
        self.0.as_mut().expect("a view lives until dropped")
    }
}

impl<U> Drop for Borrowed<U> {
    fn drop(&mut self) {
        if let Some(view) = self.0.take() {
            view.leak();
        }
    }
}

/// Where a loss call's reference field and loss-plan coefficients come from.
enum LossSource<'a> {
    Host {
        reference: &'a [f32],
        coef: &'a [f32],
    },
    Device {
        reference: &'a CudaSlice<f32>,
        coef: &'a CudaSlice<f32>,
    },
}

/// Cached per-device state: context, stream, compiled module, device workspace.
pub struct CudaAmf {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// A second, non-blocking stream for work that runs beside `stream`'s ([`Overlap`]),
    /// ordered against it by events. Created raw and wrapped as borrowed, so the context stays
    /// in cudarc's single-stream mode (no per-launch event tracking on every buffer); it lives
    /// as long as the process's cached state.
    side: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    poison: AtomicBool,
    work: Mutex<Work>,
    sm_count: usize,
    /// The module was built for `compute_90a`, so the `wgmma` kernels (the backward's logits,
    /// the version-3 gradient products) have bodies.
    wgmma: bool,
    /// One f32 on the device: the unused pointer argument of a kernel.
    dummy: CudaSlice<f32>,
}

/// Device memory kept across calls: index tables per plan, scratch buffers per role (exact
/// length; a call with other sizes reallocates that role).
#[derive(Default)]
struct Work {
    tables: HashMap<String, Arc<Tables>>,
    f32s: HashMap<&'static str, CudaSlice<f32>>,
    u16s: HashMap<&'static str, CudaSlice<u16>>,
    i32s: HashMap<&'static str, CudaSlice<i32>>,
    /// Profiling (`FASTVMT_AMF_PROFILE`): events recorded after each phase, and the summed
    /// milliseconds per phase since the last [`CudaAmf::take_profile`].
    marks: Vec<(&'static str, cudarc::driver::CudaEvent)>,
    /// Page-locked staging buffer of the loss's host reference field ([`CudaAmf::upload_beside`]).
    pinned: Option<cudarc::driver::PinnedHostSlice<f32>>,
    prof: Vec<(&'static str, f64, usize)>,
}

fn profiling() -> bool {
    std::env::var_os("FASTVMT_AMF_PROFILE").is_some()
}

/// A back end's per-device state, created on first use and kept for the process (one per
/// device: the module is compiled once). Checks the driver and the device index first, so a
/// machine without CUDA gets `CudaUnavailable(reason)`, never a panic.
/// A loaded kernel by name; a typed error naming it where the module lacks it.
pub(crate) fn loaded<'a, K: std::borrow::Borrow<str> + std::hash::Hash + Eq>(
    funcs: &'a HashMap<K, CudaFunction>,
    name: &str,
) -> Result<&'a CudaFunction, KernelError> {
    funcs
        .get(name)
        .ok_or_else(|| KernelError::CudaDriver(format!("kernel {name} not loaded")))
}

/// The stream a raw-pointer entry launches on: the caller's `raw` stream (e.g. ONNX Runtime's),
/// or `own` where `raw` is null. Binds `ctx` to this thread first.
///
/// # Safety
/// `raw` is null or a live stream of `ctx`.
pub(crate) unsafe fn caller_stream(
    ctx: &Arc<CudaContext>,
    own: &Arc<CudaStream>,
    raw: cudarc::driver::sys::CUstream,
) -> Result<Arc<CudaStream>, KernelError> {
    ctx.bind_to_thread().map_err(drv)?;
    Ok(if raw.is_null() {
        own.clone()
    } else {
        // SAFETY: the caller's contract.
        unsafe { ctx.wrap_borrowed_stream(raw) }
    })
}

/// A device's primary context, its compute capability (major, minor), and the matching NVRTC
/// virtual architecture (`compute_XY`; leaked once per device state, NVRTC takes a `'static`
/// name).
pub(crate) type DeviceContext = (Arc<CudaContext>, (i32, i32), &'static str);

/// See [`DeviceContext`].
pub(crate) fn device_context(device: usize) -> Result<DeviceContext, KernelError> {
    let ctx = CudaContext::new(device).map_err(drv)?;
    let (major, minor) = ctx.compute_capability().map_err(drv)?;
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    Ok((ctx, (major, minor), arch))
}

pub(crate) fn cached_device_state<S>(
    cache: &'static OnceLock<Mutex<HashMap<usize, Arc<S>>>>,
    device: usize,
    create: impl FnOnce(usize) -> Result<S, KernelError>,
) -> Result<Arc<S>, KernelError> {
    cuda_available().map_err(KernelError::CudaUnavailable)?;
    let count = CudaContext::device_count().map_err(drv)? as usize;
    if device >= count {
        return Err(KernelError::CudaUnavailable(format!(
            "device {device} requested, {count} present"
        )));
    }
    let mut map = cache
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| KernelError::CudaDriver("device cache poisoned".into()))?;
    if let Some(s) = map.get(&device) {
        return Ok(s.clone());
    }
    let state = Arc::new(create(device)?);
    map.insert(device, state.clone());
    Ok(state)
}

static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CudaAmf>>>> = OnceLock::new();

impl std::fmt::Debug for CudaAmf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaAmf(device {})", self.ctx.ordinal())
    }
}

fn cfg(grid: (usize, usize, usize), block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32of(v: usize, what: &str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::TooLarge(format!("{what} = {v} exceeds i32")))
}

/// Tokens of an `h x w` grid in tile order (TILE_H x TILE_W tiles, raster inside and across).
fn tile_order(h: usize, w: usize) -> Vec<i32> {
    let mut out = Vec::with_capacity(h * w);
    for ty in (0..h).step_by(TILE_H) {
        for tx in (0..w).step_by(TILE_W) {
            for y in ty..(ty + TILE_H).min(h) {
                for x in tx..(tx + TILE_W).min(w) {
                    out.push((y * w + x) as i32);
                }
            }
        }
    }
    out
}

/// CSR of chunk-local pair indices grouped by `key(pair)` (a frame index).
fn csr(
    pairs: &[(usize, usize)],
    frames: usize,
    key: impl Fn(&(usize, usize)) -> usize,
) -> (Vec<i32>, Vec<i32>) {
    let mut off = vec![0i32; frames + 1];
    let mut idx = Vec::with_capacity(pairs.len());
    for f in 0..frames {
        for (p, pr) in pairs.iter().enumerate() {
            if key(pr) == f {
                idx.push(p as i32);
            }
        }
        off[f + 1] = idx.len() as i32;
    }
    (off, idx)
}

/// Groups of up to `L3_PG` chunk-local pairs with the same key frame (`-1` pads a group).
fn key_frame_groups(pairs: &[(usize, usize)], frames: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for f in 0..frames {
        let members: Vec<i32> = (0..pairs.len())
            .filter(|&p| pairs[p].1 == f)
            .map(|p| p as i32)
            .collect();
        for g in members.chunks(L3_PG) {
            out.extend_from_slice(g);
            out.extend(std::iter::repeat_n(-1, L3_PG - g.len()));
        }
    }
    out
}

/// Index tables of one pair chunk.
struct ChunkTables {
    /// First pair of the chunk (global index) and its pairs as `(i, j)` int2.
    p0: usize,
    pairs_host: Vec<(usize, usize)>,
    pairs: CudaSlice<i32>,
    /// `[ngroups][L3_PG]` key-frame groups (logits v3).
    groups: CudaSlice<i32>,
    ngroups: usize,
    /// CSR by query frame (dQ) and by key frame (dK).
    qoff: CudaSlice<i32>,
    qidx: CudaSlice<i32>,
    koff: CudaSlice<i32>,
    kidx: CudaSlice<i32>,
    /// Coarse mode: all-zero window starts of the tile-centre rows (`2 * np * ntiles`).
    zero_win: Option<CudaSlice<i32>>,
}

/// Version-3 gradient geometry of one call (see [`grad_tile`]).
struct Grad3 {
    /// The kernel, tiles per row, tiles per frame.
    k: G3Tile,
    ntx: usize,
    nt: usize,
    /// Packed score row strides (whole chunks of 32 partners) and buffer lengths (u16).
    stride_q: usize,
    stride_k: usize,
    len_q: usize,
    len_k: usize,
}

/// The scalar arguments the version-3 ranges, packing and gradient kernels share.
struct G3Args {
    h: i32,
    w: i32,
    s: i32,
    wh: i32,
    ww: i32,
    ty: i32,
    ntx: i32,
    heads: i32,
    frames: i32,
    d: i32,
    /// First pair of the chunk (global index) and its number of pairs.
    p0: i32,
    np: usize,
    /// The 16-bit scores' scale factor, inverted, and whether to add to the output.
    inv: f32,
    acc: i32,
}

/// dQ (own = queries) or dK (own = keys): the kernels' mode and names, the packed row stride,
/// and the chunk's CSR of pairs by own frame.
struct Grad3Dir<'a> {
    mode: i32,
    name: &'static str,
    stride: usize,
    off: &'a CudaSlice<i32>,
    idx: &'a CudaSlice<i32>,
}

/// A version-3 direction's buffers: boxes (`int4` per pair and tile), per-group partner ranges
/// (`int2 x 8` per pair and tile) and the packed score gradient.
type Grad3Bufs = (CudaSlice<i32>, CudaSlice<i32>, CudaSlice<u16>);

/// Index arrays of one plan, cached across calls.
struct Tables {
    slot_tok: CudaSlice<i32>,
    identity: CudaSlice<i32>,
    /// Coarse tiles: tile-centre tokens, 0..ntiles, ntiles, tiles per row.
    coarse: Option<(CudaSlice<i32>, CudaSlice<i32>, usize, usize)>,
    chunks: Vec<ChunkTables>,
    /// Pairs per chunk these tables were cut with: every buffer of a call is sized from this,
    /// not from a fresh `chunk_pairs` (its environment override may change between the two
    /// reads when tests run in parallel: run 12 found `win` sized for fewer pairs than a chunk
    /// held, an out-of-bounds write in `amf_windows`).
    cp: usize,
}

impl CudaAmf {
    /// The cached state of `device` (compiled on first use). Errors: CUDA unavailable (with the
    /// reason), device out of range, NVRTC or driver failure.
    pub fn get(device: usize) -> Result<Arc<CudaAmf>, KernelError> {
        cached_device_state(&CACHE, device, Self::create)
    }

    fn create(device: usize) -> Result<Self, KernelError> {
        let (ctx, cc, arch) = device_context(device)?;
        // Hopper (9.0) gets the architecture-specific target: the wgmma kernels exist only
        // there (elsewhere their entries compile empty and are never chosen).
        let wgmma = cc == (9, 0);
        let ptx = compile(if wgmma { "compute_90a" } else { arch })?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let mut funcs = HashMap::new();
        for name in kernel_names() {
            let f = module.load_function(&name).map_err(drv)?;
            funcs.insert(name, f);
        }
        let smem = g3_functions().map(|(name, t)| (name, t.smem()));
        for (name, bytes) in [
            ("amf_logits3_f16", L3_SMEM),
            ("amf_logits3_bf16", L3_SMEM),
            ("amf_logits3f_f16", L3_SMEM),
            ("amf_logits3f_bf16", L3_SMEM),
            ("amf_logits3g_f16", L3G_SMEM),
            ("amf_logits3g_bf16", L3G_SMEM),
            ("amf_dq2pw_f16", G2PW_SMEM),
            ("amf_dq2pw_bf16", G2PW_SMEM),
            ("amf_dk2pw_f16", G2PW_SMEM),
            ("amf_dk2pw_bf16", G2PW_SMEM),
        ]
        .map(|(n, b)| (n.to_string(), b))
        .into_iter()
        .chain(smem)
        {
            funcs[&name]
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(drv)?;
        }
        let stream = ctx.default_stream();
        let side_raw = cudarc::driver::result::stream::create(
            cudarc::driver::result::stream::StreamKind::NonBlocking,
        )
        .map_err(drv)?;
        // SAFETY: a live stream of `ctx`, never destroyed (the state is kept for the process).
        let side = unsafe { ctx.wrap_borrowed_stream(side_raw) };
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv)?
            .max(1) as usize;
        Ok(CudaAmf {
            ctx,
            _module: module,
            funcs,
            poison: AtomicBool::new(false),
            work: Mutex::new(Work::default()),
            sm_count,
            wgmma,
            dummy: unsafe { stream.alloc::<f32>(1) }.map_err(drv)?,
            stream,
            side,
        })
    }

    /// Record the end of phase `label` (profiling only).
    fn mark(&self, work: &mut Work, label: &'static str) -> Result<(), KernelError> {
        if profiling() {
            let ev = self
                .stream
                .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(drv)?;
            work.marks.push((label, ev));
        }
        Ok(())
    }

    /// Add the phase times of the finished call to the totals (profiling only).
    fn flush_marks(&self, work: &mut Work) -> Result<(), KernelError> {
        let marks = std::mem::take(&mut work.marks);
        for w in marks.windows(2) {
            let ms = w[0].1.elapsed_ms(&w[1].1).map_err(drv)? as f64;
            match work.prof.iter_mut().find(|p| p.0 == w[1].0) {
                Some(p) => {
                    p.1 += ms;
                    p.2 += 1;
                }
                None => work.prof.push((w[1].0, ms, 1)),
            }
        }
        Ok(())
    }

    /// Benchmarking: with `FASTVMT_AMF_PROFILE` set, the device time of each phase (ms, summed
    /// over the calls since the last take, with the number of calls), in order of appearance.
    pub fn take_profile(&self) -> Vec<(String, f64, usize)> {
        match self.work.lock() {
            Ok(mut w) => std::mem::take(&mut w.prof)
                .into_iter()
                .map(|(l, ms, n)| (l.to_string(), ms, n))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The device's name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// The stream all work is queued on (the context's default stream).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Tests: fill outputs and scratch buffers with NaN before every kernel sequence, so any
    /// element a kernel fails to write shows up.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    fn f(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        loaded(&self.funcs, name)
    }

    fn fill(&self, buf: &mut CudaSlice<f32>, v: f32) -> Result<(), KernelError> {
        let n = buf.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let blocks = (buf.len().div_ceil(256)).min(4096);
        let f = self.f("amf_fill")?;
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(buf)
                .arg(&n)
                .arg(&v)
                .launch(cfg((blocks, 1, 1), 256))
        }
        .map_err(drv)?;
        Ok(())
    }

    fn maybe_poison(&self, buf: &mut CudaSlice<f32>) -> Result<(), KernelError> {
        if self.poison.load(Ordering::Relaxed) {
            self.fill(buf, f32::NAN)?;
        }
        Ok(())
    }

    fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(v).map_err(drv)
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>, KernelError> {
        // SAFETY: every buffer is written by a kernel (or filled) before it is read.
        unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(drv)
    }

    /// A cached scratch buffer of exactly `n.max(1)` elements for `role` (contents undefined:
    /// every user writes before reading). Give it back with `map.insert(role, buf)`.
    fn take<T: DeviceRepr>(
        &self,
        map: &mut HashMap<&'static str, CudaSlice<T>>,
        role: &'static str,
        n: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        let n = n.max(1);
        match map.remove(role) {
            Some(b) if b.len() == n => Ok(b),
            _ => unsafe { self.stream.alloc::<T>(n) }.map_err(drv),
        }
    }

    fn tables(&self, work: &mut Work, plan: &Plan) -> Result<Arc<Tables>, KernelError> {
        let cp = self.chunk_pairs(plan);
        let key = format!("{plan:?}|{cp}");
        if let Some(t) = work.tables.get(&key) {
            return Ok(t.clone());
        }
        let g = plan.geom;
        let s = g.s();
        let slot_tok = self.upload(&tile_order(g.h, g.w))?;
        let identity = self.upload(&(0..s as i32).collect::<Vec<_>>())?;
        let coarse = if let CentreMode::Coarse { .. } = g.mode {
            let (nty, ntx) = g.tiles();
            let toks: Vec<i32> = (0..nty * ntx)
                .map(|t| g.tile_centre_token(t / ntx, t % ntx) as i32)
                .collect();
            let ids: Vec<i32> = (0..(nty * ntx) as i32).collect();
            Some((self.upload(&toks)?, self.upload(&ids)?, nty * ntx, ntx))
        } else {
            None
        };
        let mut chunks = Vec::new();
        for (ci, chunk) in plan.pairs.chunks(cp).enumerate() {
            let flat: Vec<i32> = chunk
                .iter()
                .flat_map(|&(i, j)| [i as i32, j as i32])
                .collect();
            let groups = key_frame_groups(chunk, plan.frames);
            let (qoff, qidx) = csr(chunk, plan.frames, |p| p.0);
            let (koff, kidx) = csr(chunk, plan.frames, |p| p.1);
            let zero_win = match &coarse {
                Some((_, _, ntiles, _)) => Some(
                    self.stream
                        .alloc_zeros::<i32>(2 * chunk.len() * ntiles)
                        .map_err(drv)?,
                ),
                None => None,
            };
            chunks.push(ChunkTables {
                p0: ci * cp,
                pairs_host: chunk.to_vec(),
                pairs: self.upload(&flat)?,
                ngroups: groups.len() / L3_PG,
                groups: self.upload(&groups)?,
                qoff: self.upload(&qoff)?,
                qidx: self.upload(&qidx.iter().copied().chain([0]).collect::<Vec<_>>())?,
                koff: self.upload(&koff)?,
                kidx: self.upload(&kidx.iter().copied().chain([0]).collect::<Vec<_>>())?,
                zero_win,
            });
        }
        let t = Arc::new(Tables {
            slot_tok,
            identity,
            coarse,
            chunks,
            cp,
        });
        if work.tables.len() >= 32 {
            work.tables.clear();
        }
        work.tables.insert(key, t.clone());
        Ok(t)
    }

    /// Logits of `nslots` query slots (tokens `slot_tok`, rows `slot_row` of `nrows` per pair)
    /// of every pair of the chunk over their windows (`win`, `wh x ww`), into `out`
    /// (`[np, nrows, wh*ww]`); or, with `fused = Some((omode, p0))` (version 3 only), the
    /// online-softmax read-out of every row straight into `out` (`[P, nrows, 2]`, rows from
    /// pair `p0` on; omode as `amf_rows`: 1 soft disp, 2 argmax disp, 3 absolute position).
    #[allow(clippy::too_many_arguments)]
    fn launch_logits<T: Element>(
        &self,
        plan: &Plan,
        ct: &ChunkTables,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        (slot_tok, slot_row, nslots, nrows): (&CudaSlice<i32>, &CudaSlice<i32>, usize, usize),
        win: &CudaSlice<i32>,
        (wh, ww): (usize, usize),
        out: &mut CudaSlice<f32>,
        fused: Option<(i32, usize)>,
        active: Option<&CudaSlice<f32>>,
    ) -> Result<(), KernelError> {
        let np = ct.pairs_host.len();
        let (hn, fr, si, d, w) = (
            i32of(plan.heads, "heads")?,
            i32of(plan.frames, "frames")?,
            i32of(plan.geom.s(), "S")?,
            i32of(plan.d, "head_dim")?,
            i32of(plan.geom.w, "grid_w")?,
        );
        let (ns, nr, whi, wwi) = (
            i32of(nslots, "slots")?,
            i32of(nrows, "rows")?,
            i32of(wh, "wh")?,
            i32of(ww, "ww")?,
        );
        let tc = use_tc::<T>(plan.d);
        let v3 = tc && !legacy();
        // Legacy tensor-core logits: 128-key chunks (4 warps), or 256-key chunks (8 warps)
        // with FASTVMT_AMF_LOGITS_WIDE set.
        let wide = std::env::var_os("FASTVMT_AMF_LOGITS_WIDE").is_some();
        if fused.is_some() && !v3 {
            return Err(KernelError::CudaDriver(
                "fused logits need the version-3 kernels".into(),
            ));
        }
        let (func, threads, grid_y, smem) = if v3 {
            let wg = (fused.is_none() && self.wgmma && logits_wg()).then_some("3g");
            let v = wg.unwrap_or(if fused.is_some() { "3f" } else { "3" });
            (
                self.f(&format!("amf_logits{v}_{}", T::CUDA_SUFFIX))?,
                256,
                ct.ngroups,
                if wg.is_some() { L3G_SMEM } else { L3_SMEM } as u32,
            )
        } else if tc {
            let v = if wide { "tcw" } else { "tc" };
            let t = if wide { 256 } else { 128 };
            (
                self.f(&format!("amf_logits_{v}_{}", T::CUDA_SUFFIX))?,
                t,
                np,
                0,
            )
        } else {
            (
                self.f(&format!("amf_logits_{}", T::CUDA_SUFFIX))?,
                128,
                np,
                0,
            )
        };
        // Version 3: split the key chunks over grid z when the blocks would not fill the GPU
        // (coarse tile centres, small grids): about two waves of 2 blocks per SM.
        let blocks = nslots.div_ceil(TQ) * grid_y;
        let z = if v3 && fused.is_none() {
            let sms = self.sm_count;
            (4 * sms).div_ceil(blocks.max(1)).clamp(1, 8)
        } else {
            1
        };
        // Stored logits, full grids: split the key chunks of every block LOGITS_ZX ways (default
        // 3; `FASTVMT_AMF_LOGITS_ZX` overrides, 1 = off), folded into grid x with the split
        // fastest, so that fewer key-frame groups run at once and their frames stay in L2
        // (H100 run 5: backward logits 1.40 -> 1.26 ms at FastVMT's shape).
        let zx = std::env::var("FASTVMT_AMF_LOGITS_ZX")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(LOGITS_ZX);
        let zx = if zx > 1 && z == 1 && v3 && fused.is_none() {
            zx.min(8)
        } else {
            1
        };
        let (gx, gz) = if zx > 1 {
            (nslots.div_ceil(TQ) * zx, 1)
        } else {
            (nslots.div_ceil(TQ), z)
        };
        let zxi = i32of(zx, "zx")?;
        let mut lc = cfg((gx, grid_y, gz), threads);
        lc.shared_mem_bytes = smem;
        let mut b = self.stream.launch_builder(func);
        b.arg(q).arg(k).arg(&ct.pairs);
        if v3 {
            b.arg(&ct.groups);
        }
        b.arg(&hn)
            .arg(&fr)
            .arg(&si)
            .arg(&d)
            .arg(&w)
            .arg(slot_tok)
            .arg(slot_row)
            .arg(&ns)
            .arg(&nr)
            .arg(win)
            .arg(&whi)
            .arg(&wwi)
            .arg(&plan.scale);
        let (omode, p0) = match fused {
            Some((m, p)) => (m, i32of(p, "pair offset")?),
            None => (0, i32of(ct.p0, "pair offset")?),
        };
        let has_active = i32::from(active.is_some());
        let active = active.unwrap_or(&self.dummy);
        match (v3, fused.is_some()) {
            (true, true) => b.arg(&self.dummy).arg(&omode).arg(&p0).arg(out).arg(&zxi),
            (true, false) => b.arg(out).arg(&omode).arg(&p0).arg(&self.dummy).arg(&zxi),
            _ => b.arg(out),
        };
        if v3 {
            b.arg(active).arg(&has_active);
        }
        // SAFETY: the argument lists match amf_logits3_* / amf_logits_tc* / amf_logits_* in amf.cu.
        unsafe { b.launch(lc) }.map_err(drv)?;
        Ok(())
    }

    /// Copies `host` into `dst` through a pinned staging buffer on the side stream, and makes
    /// `self.stream` wait for it: the host-side copy and the transfer overlap the work already
    /// queued on `self.stream` (a pageable copy would hold the host until it is done).
    fn upload_beside(
        &self,
        work: &mut Work,
        host: &[f32],
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        if host.is_empty() {
            return Ok(());
        }
        let mut staging = match work.pinned.take() {
            Some(p) if p.len() == host.len() => p,
            // SAFETY: page-locked host memory of this context, written below before any use.
            _ => unsafe { self.ctx.alloc_pinned::<f32>(host.len()) }.map_err(drv)?,
        };
        // Waits for the staging buffer's previous transfer, if any is still in flight.
        staging.as_mut_slice().map_err(drv)?.copy_from_slice(host);
        self.side.memcpy_htod(&staging, dst).map_err(drv)?;
        self.stream.join(&self.side).map_err(drv)?;
        work.pinned = Some(staging);
        Ok(())
    }

    /// dQ and dK of one pair chunk by the version-3 kernels: for each direction its partner
    /// ranges, packed score gradient and product (`acc` = 1 adds to what earlier chunks
    /// wrote), on one stream or two ([`Overlap`]). Returns with every launch ordered before
    /// `self.stream`'s next work.
    #[allow(clippy::too_many_arguments)]
    fn grad3<T: Element>(
        &self,
        work: &mut Work,
        plan: &Plan,
        v: &Grad3,
        bufs: &mut [Grad3Bufs; 2],
        ct: &ChunkTables,
        (s16, win, coef): (&CudaSlice<u16>, &CudaSlice<i32>, &CudaSlice<f32>),
        (q, k): (&CudaSlice<T>, &CudaSlice<T>),
        np: usize,
        (inv, acc): (f32, i32),
        (dq, dk): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
    ) -> Result<(), KernelError> {
        let g = plan.geom;
        let a = G3Args {
            h: i32of(g.h, "grid_h")?,
            w: i32of(g.w, "grid_w")?,
            s: i32of(g.s(), "S")?,
            wh: i32of(g.wh, "wh")?,
            ww: i32of(g.ww, "ww")?,
            ty: i32of(v.k.ty, "tile")?,
            ntx: i32of(v.ntx, "tiles")?,
            heads: i32of(plan.heads, "heads")?,
            frames: i32of(plan.frames, "frames")?,
            d: i32of(plan.d, "head_dim")?,
            p0: i32of(ct.p0, "pair offset")?,
            np,
            inv,
            acc,
        };
        let [(bq, rq, pq), (bk, rk, pk)] = bufs;
        let main = &*self.stream;
        let side = &*self.side;
        let q_dir = Grad3Dir {
            mode: 0,
            name: "dq",
            stride: v.stride_q,
            off: &ct.qoff,
            idx: &ct.qidx,
        };
        let k_dir = Grad3Dir {
            mode: 1,
            name: "dk",
            stride: v.stride_k,
            off: &ct.koff,
            idx: &ct.kidx,
        };
        let ov = overlap();
        if ov != Overlap::Serial {
            // The side stream starts after the rows kernel wrote the score gradient.
            side.join(main).map_err(drv)?;
            self.grad3_pack(side, &a, v, &k_dir, (s16, win, coef), (bk, rk, pk))?;
        }
        self.grad3_pack(main, &a, v, &q_dir, (s16, win, coef), (bq, rq, pq))?;
        if ov == Overlap::Serial {
            self.grad3_pack(main, &a, v, &k_dir, (s16, win, coef), (bk, rk, pk))?;
        }
        self.mark(work, "pack")?;
        let (bq, rq, pq, bk, rk, pk) = (&*bq, &*rq, &*pq, &*bk, &*rk, &*pk);
        if ov == Overlap::TwoChains {
            self.grad3_product(side, plan, &a, v, &k_dir, ct, q, (bk, rk, pk), dk)?;
        }
        self.grad3_product(main, plan, &a, v, &q_dir, ct, k, (bq, rq, pq), dq)?;
        self.mark(work, "dq")?;
        if ov != Overlap::Serial {
            // Everything after this call (the next chunk's logits overwrite the score
            // gradient; the caller reads dK) waits for the side stream's work.
            main.join(side).map_err(drv)?;
        }
        if ov != Overlap::TwoChains {
            self.grad3_product(main, plan, &a, v, &k_dir, ct, q, (bk, rk, pk), dk)?;
        }
        self.mark(work, "dk")?;
        Ok(())
    }

    /// One direction's partner boxes, group ranges and packed score gradient, on `stream`.
    fn grad3_pack(
        &self,
        stream: &CudaStream,
        a: &G3Args,
        v: &Grad3,
        dir: &Grad3Dir<'_>,
        (s16, win, coef): (&CudaSlice<u16>, &CudaSlice<i32>, &CudaSlice<f32>),
        (bx, rg, out): (
            &mut CudaSlice<i32>,
            &mut CudaSlice<i32>,
            &mut CudaSlice<u16>,
        ),
    ) -> Result<(), KernelError> {
        let grid = cfg((v.nt, a.np, 1), 256);
        // SAFETY: argument list of amf_grad_ranges; boxes/ranges hold np * nt entries.
        unsafe {
            stream
                .launch_builder(self.f("amf_grad_ranges")?)
                .arg(&dir.mode)
                .arg(&a.h)
                .arg(&a.w)
                .arg(&a.wh)
                .arg(&a.ww)
                .arg(&a.ntx)
                .arg(&a.ty)
                .arg(win)
                .arg(coef)
                .arg(&a.p0)
                .arg(&mut *bx)
                .arg(&mut *rg)
                .launch(grid)
        }
        .map_err(drv)?;
        let st = i32of(dir.stride, "packed stride")?;
        // SAFETY: argument list of amf_pack3_*; out holds np * nt * TY * 8 * stride values.
        unsafe {
            stream
                .launch_builder(self.f(&format!("amf_pack3_{}", dir.name))?)
                .arg(s16)
                .arg(&*bx)
                .arg(&*rg)
                .arg(&a.s)
                .arg(&a.w)
                .arg(&a.ntx)
                .arg(&a.ty)
                .arg(win)
                .arg(&a.wh)
                .arg(&a.ww)
                .arg(&st)
                .arg(out)
                .launch(grid)
        }
        .map_err(drv)?;
        Ok(())
    }

    /// One direction's gradient product (dQ from K, dK from Q), on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn grad3_product<T: Element>(
        &self,
        stream: &CudaStream,
        plan: &Plan,
        a: &G3Args,
        v: &Grad3,
        dir: &Grad3Dir<'_>,
        ct: &ChunkTables,
        operand: &CudaSlice<T>,
        (bx, rg, packed): (&CudaSlice<i32>, &CudaSlice<i32>, &CudaSlice<u16>),
        out: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let grid = (v.nt, (plan.heads * plan.d).div_ceil(v.k.gn), plan.frames);
        let lc = LaunchConfig {
            shared_mem_bytes: v.k.smem() as u32,
            ..cfg(grid, v.k.threads())
        };
        let func = self.f(&format!(
            "amf_{}3{}_{}",
            dir.name,
            v.k.name(),
            T::CUDA_SUFFIX
        ))?;
        let st = i32of(dir.stride, "packed stride")?;
        // SAFETY: argument list of amf_dq3t* / amf_dk3t*; the operand is the 16-bit Q or K.
        unsafe {
            stream
                .launch_builder(func)
                .arg(&ct.pairs)
                .arg(dir.off)
                .arg(dir.idx)
                .arg(bx)
                .arg(rg)
                .arg(operand)
                .arg(&a.heads)
                .arg(&a.frames)
                .arg(&a.s)
                .arg(&a.d)
                .arg(&a.w)
                .arg(&a.ntx)
                .arg(&a.inv)
                .arg(&a.acc)
                .arg(out)
                .arg(packed)
                .arg(&st)
                .launch(lc)
        }
        .map_err(drv)?;
        Ok(())
    }

    /// Windows and logits of one pair chunk into `win` (`2 * np * S`) and `logits`; with
    /// `fused = Some((omode, p0))` the read-out goes straight into `logits` = the `[P, S, 2]`
    /// displacement buffer (see [`Self::launch_logits`]). `active` (per global pair row, the
    /// loss weights): rows where it is 0 get no logits (version-3 kernels; the rows kernel
    /// then skips them too).
    #[allow(clippy::too_many_arguments)]
    fn chunk_logits<T: Element>(
        &self,
        plan: &Plan,
        tb: &Tables,
        ct: &ChunkTables,
        work: &mut Work,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        win: &mut CudaSlice<i32>,
        logits: &mut CudaSlice<f32>,
        fused: Option<(i32, usize)>,
        active: Option<&CudaSlice<f32>>,
    ) -> Result<(), KernelError> {
        let g = plan.geom;
        let s = g.s();
        let np = ct.pairs_host.len();
        let (w, h) = (i32of(g.w, "grid_w")?, i32of(g.h, "grid_h")?);
        let npi = i32of(np, "pairs")?;
        // Coarse pass: tile centres over all keys -> absolute expected positions.
        let mode: i32 = match g.mode {
            CentreMode::Full => 0,
            CentreMode::Query => 1,
            CentreMode::Coarse { .. } => 2,
        };
        let (mut th, mut tw, mut ntx) = (1i32, 1i32, 1i32);
        let ncent = tb.coarse.as_ref().map_or(2, |c| np * c.2 * 2);
        let mut centres = self.take(&mut work.f32s, "centres", ncent)?;
        if let (CentreMode::Coarse { th: a, tw: b }, Some((ctok, cids, ntiles, nx))) =
            (g.mode, tb.coarse.as_ref())
        {
            th = i32of(a, "tile_h")?;
            tw = i32of(b, "tile_w")?;
            ntx = i32of(*nx, "tiles")?;
            let zero_win = ct
                .zero_win
                .as_ref()
                .ok_or_else(|| KernelError::CudaDriver("coarse table missing".into()))?;
            let mut cl = self.take(&mut work.f32s, "coarse_logits", np * ntiles * s)?;
            self.maybe_poison(&mut cl)?;
            self.launch_logits(
                plan,
                ct,
                q,
                k,
                (ctok, cids, *ntiles, *ntiles),
                zero_win,
                (g.h, g.w),
                &mut cl,
                None,
                None,
            )?;
            self.maybe_poison(&mut centres)?;
            self.rows(
                &mut cl,
                np,
                *ntiles,
                (g.h, g.w, g.w),
                zero_win,
                ctok,
                2,
                0,
                None,
                plan.scale,
                &mut centres,
                None,
                None,
            )?;
            work.f32s.insert("coarse_logits", cl);
            self.mark(work, "coarse centres")?;
        }
        let (wh, ww) = (i32of(g.wh, "wh")?, i32of(g.ww, "ww")?);
        let radius = i32of(g.radius.min(1 << 30), "radius")?;
        let n = np * s;
        unsafe {
            self.stream
                .launch_builder(self.f("amf_windows")?)
                .arg(&mode)
                .arg(&npi)
                .arg(&h)
                .arg(&w)
                .arg(&wh)
                .arg(&ww)
                .arg(&radius)
                .arg(&th)
                .arg(&tw)
                .arg(&ntx)
                .arg(&centres)
                .arg(&mut *win)
                .launch(cfg((n.div_ceil(256), 1, 1), 256))
        }
        .map_err(drv)?;
        work.f32s.insert("centres", centres);
        if fused.is_none() {
            self.maybe_poison(logits)?;
        }
        self.mark(work, "windows")?;
        self.launch_logits(
            plan,
            ct,
            q,
            k,
            (&tb.slot_tok, &tb.slot_tok, s, s),
            win,
            (g.wh, g.ww),
            logits,
            fused,
            active,
        )?;
        self.mark(work, "logits")
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        logits: &mut CudaSlice<f32>,
        np: usize,
        nrows: usize,
        (wh, ww, w): (usize, usize, usize),
        win: &CudaSlice<i32>,
        row_tok: &CudaSlice<i32>,
        mode: i32,
        p0: usize,
        grad: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        scale: f32,
        out: &mut CudaSlice<f32>,
        loss_rows: Option<&mut CudaSlice<f32>>,
        s16: Option<(&mut CudaSlice<u16>, f32, i32)>,
    ) -> Result<(), KernelError> {
        let n = np * nrows;
        let (npi, nr, whi, wwi, p0i) = (
            i32of(np, "pairs")?,
            i32of(nrows, "rows")?,
            i32of(wh, "wh")?,
            i32of(ww, "ww")?,
            i32of(p0, "pair offset")?,
        );
        let wgrid = i32of(w, "grid_w")?;
        let dummy = self.alloc(1)?;
        let (r, c) = grad.unwrap_or((&dummy, &dummy));
        let mut dummy_out = self.alloc(1)?;
        let lr = match loss_rows {
            Some(l) => l,
            None => &mut dummy_out,
        };
        let null = 0u64;
        let mut launch = self.stream.launch_builder(self.f("amf_rows")?);
        launch
            .arg(logits)
            .arg(&npi)
            .arg(&nr)
            .arg(&whi)
            .arg(&wwi)
            .arg(&wgrid)
            .arg(win)
            .arg(row_tok)
            .arg(&mode)
            .arg(&p0i)
            .arg(r)
            .arg(c)
            .arg(&scale)
            .arg(out)
            .arg(lr);
        let (gscale, bf) = match &s16 {
            Some((_, g, b)) => (*g, *b),
            None => (1.0f32, 0i32),
        };
        match s16 {
            Some((buf, _, _)) => launch.arg(buf),
            None => launch.arg(&null),
        };
        launch.arg(&gscale).arg(&bf);
        // SAFETY: argument list matches amf_rows in amf.cu.
        unsafe { launch.launch(cfg((n.div_ceil(8), 1, 1), 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Forward on device buffers; returns `[P, S, 2]` on the host.
    fn forward_dev<T: Element>(
        &self,
        plan: &Plan,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        readout: Readout,
    ) -> Result<Vec<f32>, KernelError> {
        self.forward_dev_to(plan, q, k, readout, None)
    }

    /// [`Self::forward_dev`]; with `sink` (a device pointer and its length in f32), the field is
    /// copied there on the device instead of to the host (an empty `Vec` is returned).
    fn forward_dev_to<T: Element>(
        &self,
        plan: &Plan,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        readout: Readout,
        sink: Option<(u64, usize)>,
    ) -> Result<Vec<f32>, KernelError> {
        let mut guard = self
            .work
            .lock()
            .map_err(|_| KernelError::CudaDriver("workspace lock poisoned".into()))?;
        let work = &mut *guard;
        let g = plan.geom;
        let s = g.s();
        let tb = self.tables(work, plan)?;
        let np_all = plan.pairs.len();
        self.mark(work, "start")?;
        let mut disp = self.take(&mut work.f32s, "disp", np_all * s * 2)?;
        self.maybe_poison(&mut disp)?;
        let mode = match readout {
            Readout::SoftArgmax => 0,
            Readout::Argmax => 1,
        };
        let cp = tb.cp;
        let np_max = cp.min(np_all);
        let mut win = self.take(&mut work.i32s, "win", 2 * np_max * s)?;
        // Version 3 on tensor cores: online softmax inside the logits kernel, nothing stored
        // (FASTVMT_AMF_FWD_STORED: logits buffer + rows kernel, as the backward does).
        let fused = use_tc::<T>(plan.d)
            && !legacy()
            && std::env::var_os("FASTVMT_AMF_FWD_STORED").is_none();
        if fused {
            for ct in &tb.chunks {
                let omode = mode + 1;
                self.chunk_logits(
                    plan,
                    &tb,
                    ct,
                    work,
                    q,
                    k,
                    &mut win,
                    &mut disp,
                    Some((omode, ct.p0)),
                    None,
                )?;
            }
            let out = self.read_field(&disp, sink);
            self.mark(work, "read-back")?;
            self.flush_marks(work)?;
            work.f32s.insert("disp", disp);
            work.i32s.insert("win", win);
            return out;
        }
        let mut logits = self.take(&mut work.f32s, "logits", np_max * s * g.wlen())?;
        for ct in &tb.chunks {
            self.chunk_logits(plan, &tb, ct, work, q, k, &mut win, &mut logits, None, None)?;
            self.rows(
                &mut logits,
                ct.pairs_host.len(),
                s,
                (g.wh, g.ww, g.w),
                &win,
                &tb.identity,
                mode,
                ct.p0,
                None,
                plan.scale,
                &mut disp,
                None,
                None,
            )?;
            self.mark(work, "rows")?;
        }
        let out = self.read_field(&disp, sink);
        self.mark(work, "read-back")?;
        self.flush_marks(work)?;
        work.f32s.insert("disp", disp);
        work.i32s.insert("win", win);
        work.f32s.insert("logits", logits);
        out
    }

    fn chunk_pairs(&self, plan: &Plan) -> usize {
        let g = plan.geom;
        let per_pair = 4 * g.s() * g.wlen().max(g.tiles().0 * g.tiles().1);
        // Tests shrink the chunk to exercise the multi-chunk (accumulating) path.
        let limit = std::env::var("FASTVMT_AMF_CHUNK_BYTES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(CHUNK_BYTES);
        // Pairs are the grid's y dimension (at most 65535 blocks).
        (limit / per_pair.max(1)).clamp(1, 65535)
    }

    /// The field to the host, or (`sink`) into a device buffer of exactly its length.
    fn read_field(
        &self,
        disp: &CudaSlice<f32>,
        sink: Option<(u64, usize)>,
    ) -> Result<Vec<f32>, KernelError> {
        let Some((ptr, len)) = sink else {
            return self.stream.clone_dtoh(disp).map_err(drv);
        };
        if len != disp.len() {
            return Err(KernelError::ShapeMismatch {
                tensor: "field output",
                expected: disp.len(),
                actual: len,
            });
        }
        let (src, _guard) = cudarc::driver::DevicePtr::device_ptr(disp, &self.stream);
        // SAFETY: `ptr` holds `len` f32 on this device (the public entry's contract); `src` is
        // this state's buffer of that length; the stream is synchronised before returning.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(ptr, src, 4 * len, self.stream.cu_stream())
        }
        .map_err(drv)?;
        self.stream.synchronize().map_err(drv)?;
        Ok(Vec::new())
    }

    /// Loss and gradients on device buffers; `dq`, `dk` (f32, numel) are overwritten.
    #[allow(clippy::too_many_arguments)]
    fn loss_grad_dev<T: Element>(
        &self,
        plan: &Plan,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        source: LossSource<'_>,
        kept: usize,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
    ) -> Result<f32, KernelError> {
        let mut guard = self
            .work
            .lock()
            .map_err(|_| KernelError::CudaDriver("workspace lock poisoned".into()))?;
        let work = &mut *guard;
        let g = plan.geom;
        let s = g.s();
        let tb = self.tables(work, plan)?;
        let np_all = plan.pairs.len();
        self.mark(work, "start")?;
        let (mut refd, coef, mut ref_host) = match source {
            LossSource::Host { reference, coef } => {
                // The reference's upload (below, on the side stream) must not wait for this
                // call's logits: the side stream joins here, before they are queued.
                self.side.join(&self.stream).map_err(drv)?;
                let refd = self.take(&mut work.f32s, "ref", reference.len())?;
                let mut c = self.take(&mut work.f32s, "coef", coef.len())?;
                self.stream.memcpy_htod(coef, &mut c).map_err(drv)?;
                (refd, c, Some(reference))
            }
            LossSource::Device { reference, coef } => {
                let mut refd = self.take(&mut work.f32s, "ref", reference.len())?;
                self.stream.memcpy_dtod(reference, &mut refd).map_err(drv)?;
                let mut c = self.take(&mut work.f32s, "coef", coef.len())?;
                self.stream.memcpy_dtod(coef, &mut c).map_err(drv)?;
                (refd, c, None)
            }
        };
        let mut disp = self.take(&mut work.f32s, "disp", np_all * s * 2)?;
        let mut loss_rows = self.take(&mut work.f32s, "loss_rows", np_all * s)?;
        self.maybe_poison(&mut disp)?;
        self.maybe_poison(&mut loss_rows)?;
        self.maybe_poison(dq)?;
        self.maybe_poison(dk)?;
        self.mark(work, "upload")?;
        let (hn, fr, si, d, w) = (
            i32of(plan.heads, "heads")?,
            i32of(plan.frames, "frames")?,
            i32of(s, "S")?,
            i32of(plan.d, "head_dim")?,
            i32of(g.w, "grid_w")?,
        );
        let (wh, ww) = (i32of(g.wh, "wh")?, i32of(g.ww, "ww")?);
        let tc = use_tc::<T>(plan.d);
        let v2 = tc && !legacy();
        let wide = grad_wide();
        // Packed A tiles: row strides (box bounds, whole chunks of 32) and whether they fit.
        let (ntx8, nt8) = (g.w.div_ceil(G_T), g.w.div_ceil(G_T) * g.h.div_ceil(G_T));
        let cp = tb.cp;
        let np_max = cp.min(np_all);
        let stride_q = match g.mode {
            CentreMode::Query => {
                (g.h.min(g.wh + G_T - 1) * g.w.min(g.ww + G_T - 1)).div_ceil(32) * 32
            }
            _ => s.div_ceil(32) * 32,
        };
        let stride_k = s.div_ceil(32) * 32;
        let pack_len = |stride: usize| np_max * nt8 * G_T * G_T * stride;
        let packed = v2 && grad_packed() && 2 * pack_len(stride_k) <= PACK_BYTES;
        // Version 3 (default): TY x 8 own tiles with per-group partner ranges; falls back to
        // version 2 where its packed buffers would not fit.
        let tile = match grad_tile() {
            GradTile::V2 => None,
            // The wgmma kernels have bodies only in a compute_90a module.
            GradTile::Forced(t) => Some((
                G3Tile {
                    wg: t.wg && self.wgmma,
                    ..t
                },
                false,
            )),
            GradTile::Auto => Some((if self.wgmma { G3_WG } else { G3_TILE }, true)),
        };
        let v3 = match tile {
            Some((k, auto)) if packed && !wide => {
                let (ty, gn) = (k.ty, k.gn);
                let ntx = g.w.div_ceil(G_T);
                let nt = ntx * g.h.div_ceil(ty);
                let blocks = nt * (plan.heads * plan.d).div_ceil(gn) * plan.frames;
                let fills = !auto || blocks >= G3_MIN_WAVES * self.sm_count;
                let stride_q = match g.mode {
                    // The union of TY rows' clamped windows spans at most wh + TY - 1 rows.
                    CentreMode::Query => {
                        (g.h.min(g.wh + ty - 1) * g.w.min(g.ww + G_T - 1)).div_ceil(32) * 32
                    }
                    _ => s.div_ceil(32) * 32,
                };
                let len = |stride: usize| np_max * nt * ty * G_T * stride;
                (fills && 2 * len(stride_q).max(len(stride_k)) <= PACK_BYTES).then_some(Grad3 {
                    k,
                    ntx,
                    nt,
                    stride_q,
                    stride_k,
                    len_q: len(stride_q),
                    len_k: len(stride_k),
                })
            }
            _ => None,
        };
        let kind = match (v2, packed, wide) {
            (true, true, true) => "2pw",
            (true, true, false) => "2p",
            (true, false, true) => "2w",
            (true, false, false) => "2",
            _ if tc => "_tc",
            _ => "",
        };
        let dq_fn = self.f(&format!("amf_dq{kind}_{}", T::CUDA_SUFFIX))?;
        let dk_fn = self.f(&format!("amf_dk{kind}_{}", T::CUDA_SUFFIX))?;
        // 16-bit scores are scaled by a power of two near the number of kept rows (coef ~ 1/kept)
        // so that f16 neither underflows nor overflows; the gradient kernels divide it out.
        let gscale = (2f32).powi((kept.max(1) as f64).log2().floor() as i32);
        let inv = 1.0 / gscale;
        let bf = i32::from(T::CUDA_SUFFIX == "bf16");
        let dd = plan.heads * plan.d;
        let mut win = self.take(&mut work.i32s, "win", 2 * np_max * s)?;
        let mut scores = self.take(&mut work.f32s, "logits", np_max * s * g.wlen())?;
        // Tensor-core backward: the rows kernel writes the scores as 16-bit values.
        let mut s16 = if tc {
            Some(self.take(&mut work.u16s, "s16", np_max * s * g.wlen())?)
        } else {
            None
        };
        // Version 2: 8x8 tiles of own tokens, partner boxes per (pair, tile).
        let mut packs = if packed && v3.is_none() {
            Some((
                self.take(&mut work.u16s, "pack_q", pack_len(stride_q))?,
                self.take(&mut work.u16s, "pack_k", pack_len(stride_k))?,
            ))
        } else {
            None
        };
        let mut boxes = if v2 && v3.is_none() {
            Some((
                self.take(&mut work.i32s, "boxes_q", 4 * np_max * nt8)?,
                self.take(&mut work.i32s, "boxes_k", 4 * np_max * nt8)?,
            ))
        } else {
            None
        };
        // Version 3: (boxes, ranges, packed scores) for dQ and for dK.
        let mut bufs3 = match &v3 {
            Some(v) => Some([
                (
                    self.take(&mut work.i32s, "boxes3_q", 4 * np_max * v.nt)?,
                    self.take(&mut work.i32s, "ranges3_q", 2 * 8 * np_max * v.nt)?,
                    self.take(&mut work.u16s, "pack3_q", v.len_q)?,
                ),
                (
                    self.take(&mut work.i32s, "boxes3_k", 4 * np_max * v.nt)?,
                    self.take(&mut work.i32s, "ranges3_k", 2 * 8 * np_max * v.nt)?,
                    self.take(&mut work.u16s, "pack3_k", v.len_k)?,
                ),
            ]),
            None => None,
        };
        for (ci, ct) in tb.chunks.iter().enumerate() {
            let np = ct.pairs_host.len();
            // Rows outside the loss (weight 0: the motion mask) need no logits.
            self.chunk_logits(
                plan,
                &tb,
                ct,
                work,
                q,
                k,
                &mut win,
                &mut scores,
                None,
                Some(&coef),
            )?;
            if let Some(reference) = ref_host.take() {
                // Only the rows kernel reads the reference field: its upload runs beside the
                // first chunk's logits.
                self.upload_beside(work, reference, &mut refd)?;
            }
            self.rows(
                &mut scores,
                np,
                s,
                (g.wh, g.ww, g.w),
                &win,
                &tb.identity,
                3,
                ct.p0,
                Some((&refd, &coef)),
                plan.scale,
                &mut disp,
                Some(&mut loss_rows),
                s16.as_mut().map(|b| (b, gscale, bf)),
            )?;
            self.mark(work, "rows")?;
            let acc = i32::from(ci > 0);
            if let (Some(s16), Some(v), Some(b3)) = (s16.as_ref(), v3.as_ref(), bufs3.as_mut()) {
                self.grad3::<T>(
                    work,
                    plan,
                    v,
                    b3,
                    ct,
                    (s16, &win, &coef),
                    (q, k),
                    np,
                    (inv, acc),
                    (&mut *dq, &mut *dk),
                )?;
                continue;
            }
            if let (Some(s16), Some((bq, bk))) = (s16.as_ref(), boxes.as_mut()) {
                let (hh, ww8, whh, wwh, ntxi) = (
                    i32of(g.h, "grid_h")?,
                    i32of(g.w, "grid_w")?,
                    wh,
                    ww,
                    i32of(ntx8, "tiles")?,
                );
                for (mode, bx) in [(0i32, &mut *bq), (1i32, &mut *bk)] {
                    unsafe {
                        self.stream
                            .launch_builder(self.f("amf_grad_boxes")?)
                            .arg(&mode)
                            .arg(&hh)
                            .arg(&ww8)
                            .arg(&whh)
                            .arg(&wwh)
                            .arg(&ntxi)
                            .arg(&win)
                            .arg(bx)
                            .launch(cfg((nt8, np, 1), 256))
                    }
                    .map_err(drv)?;
                }
                self.mark(work, "boxes")?;
                if let Some((pq, pk)) = packs.as_mut() {
                    for (name, bx, stride, out) in [
                        ("amf_pack_dq", &*bq, stride_q, &mut *pq),
                        ("amf_pack_dk", &*bk, stride_k, &mut *pk),
                    ] {
                        let st = i32of(stride, "packed stride")?;
                        unsafe {
                            self.stream
                                .launch_builder(self.f(name)?)
                                .arg(s16)
                                .arg(bx)
                                .arg(&si)
                                .arg(&w)
                                .arg(&ntxi)
                                .arg(&win)
                                .arg(&wh)
                                .arg(&ww)
                                .arg(&st)
                                .arg(out)
                                .launch(cfg((nt8, np, 1), 256))
                        }
                        .map_err(drv)?;
                    }
                    self.mark(work, "pack")?;
                }
                let (gn, threads) = if wide { (256, 512) } else { (128, 256) };
                let grid = (nt8, dd.div_ceil(gn), plan.frames);
                let dummy16 = s16;
                let (pq, pk, sq, sk) = match packs.as_ref() {
                    Some((pq, pk)) => (
                        pq,
                        pk,
                        i32of(stride_q, "stride")?,
                        i32of(stride_k, "stride")?,
                    ),
                    None => (dummy16, dummy16, 0, 0),
                };
                for (func, operand, off, idx, bx, out, pk_buf, pk_stride) in [
                    (dq_fn, k, &ct.qoff, &ct.qidx, &*bq, &mut *dq, pq, sq),
                    (dk_fn, q, &ct.koff, &ct.kidx, &*bk, &mut *dk, pk, sk),
                ] {
                    unsafe {
                        self.stream
                            .launch_builder(func)
                            .arg(s16)
                            .arg(operand)
                            .arg(&ct.pairs)
                            .arg(off)
                            .arg(idx)
                            .arg(bx)
                            .arg(&hn)
                            .arg(&fr)
                            .arg(&si)
                            .arg(&d)
                            .arg(&w)
                            .arg(&ntxi)
                            .arg(&win)
                            .arg(&wh)
                            .arg(&ww)
                            .arg(&inv)
                            .arg(&acc)
                            .arg(out)
                            .arg(pk_buf)
                            .arg(&pk_stride)
                            .launch(LaunchConfig {
                                shared_mem_bytes: if packed && wide { G2PW_SMEM as u32 } else { 0 },
                                ..cfg(grid, threads)
                            })
                    }
                    .map_err(drv)?;
                    self.mark(
                        work,
                        if std::ptr::eq(func, dq_fn) {
                            "dq"
                        } else {
                            "dk"
                        },
                    )?;
                }
                continue;
            }
            let nslices = dd.div_ceil(if tc { DS_TC } else { DS });
            let grid = (s.div_ceil(TQ), nslices, plan.frames);
            if let Some(s16) = s16.as_ref() {
                for (func, operand, off, idx, out) in [
                    (dq_fn, k, &ct.qoff, &ct.qidx, &mut *dq),
                    (dk_fn, q, &ct.koff, &ct.kidx, &mut *dk),
                ] {
                    unsafe {
                        self.stream
                            .launch_builder(func)
                            .arg(s16)
                            .arg(operand)
                            .arg(&ct.pairs)
                            .arg(off)
                            .arg(idx)
                            .arg(&hn)
                            .arg(&fr)
                            .arg(&si)
                            .arg(&d)
                            .arg(&w)
                            .arg(&tb.slot_tok)
                            .arg(&win)
                            .arg(&wh)
                            .arg(&ww)
                            .arg(&inv)
                            .arg(&acc)
                            .arg(out)
                            .launch(cfg(grid, 256))
                    }
                    .map_err(drv)?;
                    self.mark(
                        work,
                        if std::ptr::eq(func, dq_fn) {
                            "dq"
                        } else {
                            "dk"
                        },
                    )?;
                }
                continue;
            }
            for (func, operand, off, idx, out) in [
                (dq_fn, k, &ct.qoff, &ct.qidx, &mut *dq),
                (dk_fn, q, &ct.koff, &ct.kidx, &mut *dk),
            ] {
                unsafe {
                    self.stream
                        .launch_builder(func)
                        .arg(&scores)
                        .arg(operand)
                        .arg(&ct.pairs)
                        .arg(off)
                        .arg(idx)
                        .arg(&hn)
                        .arg(&fr)
                        .arg(&si)
                        .arg(&d)
                        .arg(&w)
                        .arg(&tb.slot_tok)
                        .arg(&win)
                        .arg(&wh)
                        .arg(&ww)
                        .arg(&acc)
                        .arg(out)
                        .launch(cfg(grid, 256))
                }
                .map_err(drv)?;
                self.mark(
                    work,
                    if std::ptr::eq(func, dq_fn) {
                        "dq"
                    } else {
                        "dk"
                    },
                )?;
            }
        }
        // Loss: one-block device sum of the row terms; 4 bytes come back.
        let mut total = self.take(&mut work.f32s, "loss", 1)?;
        let n = (np_all * s) as i64;
        unsafe {
            self.stream
                .launch_builder(self.f("amf_sum")?)
                .arg(&loss_rows)
                .arg(&n)
                .arg(&mut total)
                .launch(cfg((1, 1, 1), 1024))
        }
        .map_err(drv)?;
        let out = self.stream.clone_dtoh(&total).map_err(drv);
        self.mark(work, "loss+read-back")?;
        self.flush_marks(work)?;
        work.f32s.insert("loss", total);
        work.f32s.insert("ref", refd);
        work.f32s.insert("coef", coef);
        work.f32s.insert("disp", disp);
        work.f32s.insert("loss_rows", loss_rows);
        work.i32s.insert("win", win);
        work.f32s.insert("logits", scores);
        if let Some(b) = s16 {
            work.u16s.insert("s16", b);
        }
        if let Some((bq, bk)) = boxes {
            work.i32s.insert("boxes_q", bq);
            work.i32s.insert("boxes_k", bk);
        }
        if let Some((pq, pk)) = packs {
            work.u16s.insert("pack_q", pq);
            work.u16s.insert("pack_k", pk);
        }
        if let Some([(bq, rq, pq), (bk, rk, pk)]) = bufs3 {
            work.i32s.insert("boxes3_q", bq);
            work.i32s.insert("ranges3_q", rq);
            work.u16s.insert("pack3_q", pq);
            work.i32s.insert("boxes3_k", bk);
            work.i32s.insert("ranges3_k", rk);
            work.u16s.insert("pack3_k", pk);
        }
        Ok(out?[0])
    }

    pub(crate) fn forward<T: Element>(
        &self,
        plan: &Plan,
        q: &[T],
        k: &[T],
        readout: Readout,
    ) -> Result<Vec<f32>, KernelError> {
        let (qd, kd) = (self.upload(q)?, self.upload(k)?);
        self.forward_dev(plan, &qd, &kd, readout)
    }

    pub(crate) fn loss_and_grad<T: Element>(
        &self,
        plan: &Plan,
        q: &[T],
        k: &[T],
        reference: &[f32],
        lp: &LossPlan,
    ) -> Result<(f32, Vec<f32>, Vec<f32>), KernelError> {
        let (qd, kd) = (self.upload(q)?, self.upload(k)?);
        let n = plan.numel();
        let (mut dq, mut dk) = (self.alloc(n)?, self.alloc(n)?);
        let source = LossSource::Host {
            reference,
            coef: &lp.coef,
        };
        let loss = self.loss_grad_dev(plan, &qd, &kd, source, lp.kept, &mut dq, &mut dk)?;
        let dqh = self.stream.clone_dtoh(&dq).map_err(drv)?;
        let dkh = self.stream.clone_dtoh(&dk).map_err(drv)?;
        Ok((loss, dqh, dkh))
    }

    /// [`crate::compute_amf`] on device buffers of this device (`[heads, frames, S, head_dim]`).
    /// Values are not checked for NaN/Inf (they would propagate to the output).
    pub fn compute_amf_device<T: Element>(
        &self,
        spec: &AmfSpec,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        readout: Readout,
    ) -> Result<AmfField, KernelError> {
        self.compute_amf_device_to(spec, q, k, readout, None)
    }

    /// [`Self::compute_amf_device`]; with `sink` the field goes to that device buffer and the
    /// returned field's `disp` is empty.
    fn compute_amf_device_to<T: Element>(
        &self,
        spec: &AmfSpec,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        readout: Readout,
        sink: Option<(u64, usize)>,
    ) -> Result<AmfField, KernelError> {
        let plan = spec::plan_lens(spec, q.len(), k.len())?;
        let disp = self.forward_dev_to(&plan, q, k, readout, sink)?;
        Ok(AmfField {
            pairs: plan.pairs,
            grid_h: spec.grid_h,
            grid_w: spec.grid_w,
            disp,
        })
    }

    /// [`crate::amf_loss_and_grad`] on device buffers: writes `dq`, `dk` (f32, same length as
    /// `q`) on the device and returns `(loss, kept)`. Work is queued on [`Self::stream`]; the
    /// loss read-back synchronises it.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad_device<T: Element>(
        &self,
        spec: &AmfSpec,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        reference: &AmfField,
        loss: &LossSpec,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
    ) -> Result<(f32, usize), KernelError> {
        let plan = spec::plan_lens(spec, q.len(), k.len())?;
        let lp = spec::loss_plan(&plan, reference, loss)?;
        for (tensor, len) in [("dq", dq.len()), ("dk", dk.len())] {
            if len != plan.numel() {
                return Err(KernelError::ShapeMismatch {
                    tensor,
                    expected: plan.numel(),
                    actual: len,
                });
            }
        }
        if lp.kept == 0 {
            self.fill(dq, 0.0)?;
            self.fill(dk, 0.0)?;
            return Ok((0.0, 0));
        }
        let source = LossSource::Host {
            reference: &reference.disp,
            coef: &lp.coef,
        };
        let l = self.loss_grad_dev(&plan, q, k, source, lp.kept, dq, dk)?;
        Ok((l, lp.kept))
    }

    /// A view of `len` values of `U` at `ptr` on this device, owned by someone else.
    ///
    /// # Safety
    /// `ptr` holds `len` values of `U` on this device, valid while the view is used.
    unsafe fn borrow<U: cudarc::driver::DeviceRepr>(&self, ptr: u64, len: usize) -> Borrowed<U> {
        // SAFETY: the caller's contract.
        Borrowed(Some(unsafe {
            self.stream.upgrade_device_ptr::<U>(ptr, len)
        }))
    }

    /// Waits for `producer` (a raw `CUstream` of this context; null = none).
    fn wait_for(&self, producer: *mut std::ffi::c_void) -> Result<(), KernelError> {
        let producer = producer as cudarc::driver::sys::CUstream;
        if !producer.is_null() {
            // SAFETY: a live stream of this context (the raw entries' contract).
            unsafe { cudarc::driver::result::stream::synchronize(producer) }.map_err(drv)?;
        }
        Ok(())
    }

    /// The end of a raw loss entry: synchronises this state's stream (the loss read-back does,
    /// but the all-masked branch only queues its fills) and writes the loss to `loss_out`.
    ///
    /// # Safety
    /// `loss_out` is 0 or room for one f32 on this device.
    unsafe fn finish_loss(
        &self,
        result: Result<(f32, usize), KernelError>,
        loss_out: u64,
    ) -> Result<(f32, usize), KernelError> {
        self.stream.synchronize().map_err(drv)?;
        let (value, kept) = result?;
        if loss_out != 0 {
            self.stream.context().bind_to_thread().map_err(drv)?;
            // SAFETY: room for one f32 on this device (the caller's contract).
            unsafe { cudarc::driver::result::memcpy_htod_sync(loss_out, &[value]) }.map_err(drv)?;
        }
        Ok((value, kept))
    }

    /// [`Self::loss_and_grad_device`] on device buffers this crate does not own (ONNX
    /// Runtime's, in the `fastvmt.amf.AmfLossGrad` CUDA operator): waits for `producer` (the
    /// stream that wrote `q`/`k`; null = none), runs on this device's stream and returns when
    /// `dq`/`dk` (and the loss at `loss_out`, a one-f32 device buffer, unless 0) are written.
    /// Returns `(loss, kept)`.
    ///
    /// # Safety
    /// `q`, `k` hold `len` values of `T`, and `dq`, `dk` room for `len` f32, on this device,
    /// valid until this returns; `loss_out` is 0 or room for one f32 there; `producer` is null
    /// or a live `CUstream` of this context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn loss_and_grad_raw<T: Element>(
        &self,
        spec: &AmfSpec,
        q: u64,
        k: u64,
        len: usize,
        reference: &AmfField,
        loss: &LossSpec,
        dq: u64,
        dk: u64,
        loss_out: u64,
        producer: *mut std::ffi::c_void,
    ) -> Result<(f32, usize), KernelError> {
        self.wait_for(producer)?;
        // SAFETY: the caller's contract: allocations of `len` elements of these types.
        let (qv, kv, mut dqv, mut dkv) = unsafe {
            (
                self.borrow::<T>(q, len),
                self.borrow::<T>(k, len),
                self.borrow::<f32>(dq, len),
                self.borrow::<f32>(dk, len),
            )
        };
        let result = self.loss_and_grad_device(
            spec,
            qv.get(),
            kv.get(),
            reference,
            loss,
            dqv.get_mut(),
            dkv.get_mut(),
        );
        // SAFETY: `loss_out` per the caller's contract.
        unsafe { self.finish_loss(result, loss_out) }
    }

    /// [`Self::loss_and_grad_raw`] with the reference field in device memory: `reference`
    /// holds `ref_len` f32, `[pairs, S, 2]` for the spec's resolved pairs in their order (the
    /// caller checks the pairs; the length is checked here). The loss plan (motion mask, pair
    /// weights, normalisation) is built on the device (`amf_loss_coef`, `amf_scale`), so the
    /// field never crosses to the host. Same result as the host entry: the mask decides
    /// bit-exactly as `spec::loss_plan`; the normalising sum is added in another order.
    ///
    /// # Safety
    /// As [`Self::loss_and_grad_raw`]; `reference` holds `ref_len` f32 on this device, written
    /// before the call and valid until it returns.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn loss_and_grad_raw_device_reference<T: Element>(
        &self,
        spec: &AmfSpec,
        q: u64,
        k: u64,
        len: usize,
        reference: u64,
        ref_len: usize,
        loss: &LossSpec,
        dq: u64,
        dk: u64,
        loss_out: u64,
        producer: *mut std::ffi::c_void,
    ) -> Result<(f32, usize), KernelError> {
        self.wait_for(producer)?;
        let plan = spec::plan_lens(spec, len, len)?;
        let n = plan.pairs.len() * plan.geom.s();
        if ref_len != 2 * n {
            return Err(KernelError::ReferenceMismatch(format!(
                "disp has {ref_len} values, expected {} (P*S*2)",
                2 * n
            )));
        }
        spec::check_loss_spec(loss)?;
        // SAFETY: the caller's contract: allocations of these lengths and types.
        let (qv, kv, refv, mut dqv, mut dkv) = unsafe {
            (
                self.borrow::<T>(q, len),
                self.borrow::<T>(k, len),
                self.borrow::<f32>(reference, ref_len),
                self.borrow::<f32>(dq, len),
                self.borrow::<f32>(dk, len),
            )
        };
        let (qs, ks, rs) = (qv.get(), kv.get(), refv.get());
        let (dqs, dks) = (dqv.get_mut(), dkv.get_mut());
        if let Some(index) = self.first_nonfinite(rs)? {
            return Err(KernelError::NonFinite {
                tensor: "reference.disp",
                index,
            });
        }
        let pw = self.upload(&spec::pair_weights(&loss.pair_weights, &plan.pairs))?;
        // SAFETY: written in full by amf_loss_coef below before anything reads it.
        let mut coef = unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(drv)?;
        let mut total = self.upload(&[0f64])?;
        let mut kept = self.upload(&[0u64])?;
        let (s64, n64) = (plan.geom.s() as i64, n as i64);
        let (th, has_th) = match loss.moving_threshold {
            Some(t) => (t, 1i32),
            None => (0.0f32, 0i32),
        };
        let blocks = n.div_ceil(256).clamp(1, 4096);
        // SAFETY: argument list matches amf_loss_coef in amf.cu; `rs` holds 2n f32, `pw` one
        // weight per pair, `coef` n.
        unsafe {
            self.stream
                .launch_builder(self.f("amf_loss_coef")?)
                .arg(rs)
                .arg(&pw)
                .arg(&s64)
                .arg(&n64)
                .arg(&th)
                .arg(&has_th)
                .arg(&mut coef)
                .arg(&mut total)
                .arg(&mut kept)
                .launch(cfg((blocks, 1, 1), 256))
        }
        .map_err(drv)?;
        let total = self.stream.clone_dtoh(&total).map_err(drv)?[0];
        let kept = self.stream.clone_dtoh(&kept).map_err(drv)?[0] as usize;
        let result = if kept == 0 {
            self.fill(dqs, 0.0)
                .and_then(|()| self.fill(dks, 0.0))
                .map(|()| 0.0)
        } else {
            if total > 0.0 {
                let inv = (1.0 / total) as f32;
                // SAFETY: argument list matches amf_scale in amf.cu; `coef` holds n f32.
                unsafe {
                    self.stream
                        .launch_builder(self.f("amf_scale")?)
                        .arg(&mut coef)
                        .arg(&n64)
                        .arg(&inv)
                        .launch(cfg((blocks, 1, 1), 256))
                }
                .map_err(drv)?;
            }
            let source = LossSource::Device {
                reference: rs,
                coef: &coef,
            };
            self.loss_grad_dev(&plan, qs, ks, source, kept, dqs, dks)
        };
        // SAFETY: `loss_out` per the caller's contract.
        unsafe { self.finish_loss(result.map(|v| (v, kept)), loss_out) }
    }

    /// [`Self::compute_amf_raw`] with the field written into device memory at `out` (`out_len`
    /// f32, `[pairs, S, 2]`) instead of returned: for a reference that stays on the device
    /// ([`Self::loss_and_grad_raw_device_reference`]). Returns the resolved pairs (the field's
    /// order).
    ///
    /// # Safety
    /// As [`Self::compute_amf_raw`]; `out` holds `out_len` f32 on this device.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn compute_amf_raw_into<T: Element>(
        &self,
        spec: &AmfSpec,
        q: u64,
        k: u64,
        len: usize,
        readout: Readout,
        out: u64,
        out_len: usize,
    ) -> Result<Vec<(usize, usize)>, KernelError> {
        // SAFETY: the caller's contract (the same as compute_amf_raw's, plus `out`).
        unsafe { self.amf_raw::<T>(spec, q, k, len, readout, Some((out, out_len))) }
            .map(|field| field.pairs)
    }

    /// [`Self::compute_amf_device`] on f32 device buffers this crate does not own (ONNX
    /// Runtime's outputs, e.g. the guidance head's Q/K bound to device memory), read as `T`:
    /// f16/bf16 are converted on the device first (the tensor-core kernels), so nothing crosses
    /// to the host but the field. Non-finite inputs are refused as by the host entry (found on
    /// the device).
    ///
    /// # Safety
    /// `q`, `k` hold `len` f32 values on this device, written (the producing stream
    /// synchronised) before the call and valid until it returns.
    pub unsafe fn compute_amf_raw<T: Element>(
        &self,
        spec: &AmfSpec,
        q: u64,
        k: u64,
        len: usize,
        readout: Readout,
    ) -> Result<AmfField, KernelError> {
        // SAFETY: the caller's contract.
        unsafe { self.amf_raw::<T>(spec, q, k, len, readout, None) }
    }

    /// `compute_amf_raw` with the field to the host (`sink` None) or into a device buffer.
    unsafe fn amf_raw<T: Element>(
        &self,
        spec: &AmfSpec,
        q: u64,
        k: u64,
        len: usize,
        readout: Readout,
        sink: Option<(u64, usize)>,
    ) -> Result<AmfField, KernelError> {
        // SAFETY: the caller's contract: `len` f32 on this device.
        let (qv, kv) = unsafe { (self.borrow::<f32>(q, len), self.borrow::<f32>(k, len)) };
        let (qs, ks) = (qv.get(), kv.get());
        for (tensor, v) in [("q", qs), ("k", ks)] {
            if let Some(index) = self.first_nonfinite(v)? {
                return Err(KernelError::NonFinite { tensor, index });
            }
        }
        if T::CUDA_SUFFIX == "f32" {
            self.compute_amf_device_to(spec, qs, ks, readout, sink)
        } else {
            let bf16 = i32::from(T::CUDA_SUFFIX == "bf16");
            let (q16, k16) = (self.cast16::<T>(qs, bf16)?, self.cast16::<T>(ks, bf16)?);
            self.compute_amf_device_to(spec, &q16, &k16, readout, sink)
        }
    }

    /// The lowest flat index of a NaN or infinity in `v`, found on the device.
    fn first_nonfinite(&self, v: &CudaSlice<f32>) -> Result<Option<usize>, KernelError> {
        let mut first = self.upload(&[u64::MAX])?;
        let f = self.f("amf_first_nonfinite")?;
        let n = v.len() as i64;
        let blocks = v.len().div_ceil(256).clamp(1, 8192);
        // SAFETY: argument list matches amf_first_nonfinite in amf.cu.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(v)
                .arg(&n)
                .arg(&mut first)
                .launch(cfg((blocks, 1, 1), 256))
        }
        .map_err(drv)?;
        let index = self.stream.clone_dtoh(&first).map_err(drv)?[0];
        Ok((index != u64::MAX).then_some(index as usize))
    }

    /// `src` rounded to f16 (`bf16 == 0`) or bf16 in a new buffer of `T` (a 16-bit type).
    fn cast16<T: Element>(
        &self,
        src: &CudaSlice<f32>,
        bf16: i32,
    ) -> Result<CudaSlice<T>, KernelError> {
        let n = src.len();
        // SAFETY: written in full by amf_cast16 below before anything reads it.
        let mut dst = unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(drv)?;
        let f = self.f("amf_cast16")?;
        let n64 = n as i64;
        let blocks = n.div_ceil(256).clamp(1, 8192);
        // SAFETY: argument list matches amf_cast16 in amf.cu; `dst` holds n 16-bit values.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(src)
                .arg(&mut dst)
                .arg(&n64)
                .arg(&bf16)
                .launch(cfg((blocks, 1, 1), 256))
        }
        .map_err(drv)?;
        Ok(dst)
    }

    /// Copy host data to a new device buffer on this device's stream (for callers of the
    /// `*_device` methods, e.g. benchmarks).
    pub fn to_device<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.upload(v)
    }

    /// Copy a device buffer back to the host.
    pub fn to_host<T: DeviceRepr>(&self, v: &CudaSlice<T>) -> Result<Vec<T>, KernelError> {
        self.stream.clone_dtoh(v).map_err(drv)
    }

    /// A new uninitialised-then-zeroed f32 device buffer.
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, KernelError> {
        self.stream.alloc_zeros::<f32>(n).map_err(drv)
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(drv)
    }
}
