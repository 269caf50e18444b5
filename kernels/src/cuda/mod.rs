//! CUDA back end: `amf.cu` compiled once per device with NVRTC, launched through cudarc.
//!
//! [`CudaAmf::get`] returns the process-wide cached state of one device (primary context, a
//! stream, the loaded module). Entry points are dtype-suffixed (`amf_logits_bf16`, ...).
//! Host-slice calls upload Q/K, run, and download; the `*_device` methods take device buffers
//! (same layout) and leave the gradients on the device.

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

const FUNCS: &[&str] = &[
    "amf_fill",
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
];

/// Tensor-core kernels serve f16/bf16 inputs with `head_dim % 64 == 0`, unless the
/// environment variable `FASTVMT_AMF_NO_TC` is set (then the f32 SIMT kernels run).
fn use_tc<T: Element>(d: usize) -> bool {
    T::CUDA_SUFFIX != "f32"
        && d.is_multiple_of(64)
        && std::env::var_os("FASTVMT_AMF_NO_TC").is_none()
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
    cudarc::nvrtc::compile_ptx_with_opts(SRC, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            KernelError::Nvrtc(log.to_string_lossy().into_owned())
        }
        other => KernelError::Nvrtc(format!("{other:?}")),
    })
}

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

/// Cached per-device state: context, stream, compiled module.
pub struct CudaAmf {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    poison: AtomicBool,
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

/// Pairs (int2), window starts (int2) and logits of one pair chunk, on the device.
type ChunkBuffers = (CudaSlice<i32>, CudaSlice<i32>, CudaSlice<f32>);

/// Index arrays shared by all chunks of one call.
struct Tables {
    slot_tok: CudaSlice<i32>,
    identity: CudaSlice<i32>,
    /// Coarse tiles: tile-centre tokens and 0..ntiles.
    coarse: Option<(CudaSlice<i32>, CudaSlice<i32>, usize, usize)>,
}

impl CudaAmf {
    /// The cached state of `device` (compiled on first use). Errors: CUDA unavailable (with the
    /// reason), device out of range, NVRTC or driver failure.
    pub fn get(device: usize) -> Result<Arc<CudaAmf>, KernelError> {
        cuda_available().map_err(KernelError::CudaUnavailable)?;
        let count = CudaContext::device_count().map_err(drv)? as usize;
        if device >= count {
            return Err(KernelError::CudaUnavailable(format!(
                "device {device} requested, {count} present"
            )));
        }
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache
            .lock()
            .map_err(|_| KernelError::CudaDriver("device cache poisoned".into()))?;
        if let Some(s) = map.get(&device) {
            return Ok(s.clone());
        }
        let state = Arc::new(Self::create(device)?);
        map.insert(device, state.clone());
        Ok(state)
    }

    fn create(device: usize) -> Result<Self, KernelError> {
        let ctx = CudaContext::new(device).map_err(drv)?;
        let (major, minor) = ctx.compute_capability().map_err(drv)?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = compile(arch)?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let mut funcs = HashMap::new();
        for &name in FUNCS {
            funcs.insert(name, module.load_function(name).map_err(drv)?);
        }
        let stream = ctx.default_stream();
        Ok(CudaAmf {
            ctx,
            stream,
            _module: module,
            funcs,
            poison: AtomicBool::new(false),
        })
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
        self.funcs
            .get(name)
            .ok_or_else(|| KernelError::CudaDriver(format!("kernel {name} not loaded")))
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

    fn tables(&self, plan: &Plan) -> Result<Tables, KernelError> {
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
        Ok(Tables {
            slot_tok,
            identity,
            coarse,
        })
    }

    /// Windows and logits of one pair chunk. Returns (pairs on device, win, logits).
    fn chunk_logits<T: Element>(
        &self,
        plan: &Plan,
        tb: &Tables,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        chunk: &[(usize, usize)],
    ) -> Result<ChunkBuffers, KernelError> {
        let g = plan.geom;
        let s = g.s();
        let np = chunk.len();
        let (hn, fr, si, d, w, h) = (
            i32of(plan.heads, "heads")?,
            i32of(plan.frames, "frames")?,
            i32of(s, "S")?,
            i32of(plan.d, "head_dim")?,
            i32of(g.w, "grid_w")?,
            i32of(g.h, "grid_h")?,
        );
        let flat: Vec<i32> = chunk
            .iter()
            .flat_map(|&(i, j)| [i as i32, j as i32])
            .collect();
        let pairs = self.upload(&flat)?;
        // Tensor-core logits: 128-key chunks (4 warps), or 256-key chunks (8 warps) with
        // FASTVMT_AMF_LOGITS_WIDE set.
        let wide = std::env::var_os("FASTVMT_AMF_LOGITS_WIDE").is_some();
        let (logits_fn, lthreads) = if use_tc::<T>(plan.d) {
            let v = if wide { "tcw" } else { "tc" };
            let t = if wide { 256 } else { 128 };
            (self.f(&format!("amf_logits_{v}_{}", T::CUDA_SUFFIX))?, t)
        } else {
            (self.f(&format!("amf_logits_{}", T::CUDA_SUFFIX))?, 128)
        };
        let npi = i32of(np, "pairs")?;
        // Coarse pass: tile centres over all keys -> absolute expected positions.
        let mut centres = self.alloc(2)?;
        let mode: i32 = match g.mode {
            CentreMode::Full => 0,
            CentreMode::Query => 1,
            CentreMode::Coarse { .. } => 2,
        };
        let (mut th, mut tw, mut ntx) = (1i32, 1i32, 1i32);
        if let (CentreMode::Coarse { th: a, tw: b }, Some((ctok, cids, ntiles, nx))) =
            (g.mode, tb.coarse.as_ref())
        {
            th = i32of(a, "tile_h")?;
            tw = i32of(b, "tile_w")?;
            ntx = i32of(*nx, "tiles")?;
            let nt = i32of(*ntiles, "tiles")?;
            let zero_win = self
                .stream
                .alloc_zeros::<i32>(2 * np * ntiles)
                .map_err(drv)?;
            let mut cl = self.alloc(np * ntiles * s)?;
            self.maybe_poison(&mut cl)?;
            unsafe {
                self.stream
                    .launch_builder(logits_fn)
                    .arg(q)
                    .arg(k)
                    .arg(&pairs)
                    .arg(&hn)
                    .arg(&fr)
                    .arg(&si)
                    .arg(&d)
                    .arg(&w)
                    .arg(ctok)
                    .arg(cids)
                    .arg(&nt)
                    .arg(&nt)
                    .arg(&zero_win)
                    .arg(&h)
                    .arg(&w)
                    .arg(&plan.scale)
                    .arg(&mut cl)
                    .launch(cfg((ntiles.div_ceil(TQ), np, 1), lthreads))
            }
            .map_err(drv)?;
            centres = self.alloc(np * ntiles * 2)?;
            self.maybe_poison(&mut centres)?;
            self.rows(
                &mut cl,
                np,
                *ntiles,
                (g.h, g.w, g.w),
                &zero_win,
                ctok,
                2,
                0,
                None,
                plan.scale,
                &mut centres,
                None,
                None,
            )?;
        }
        let mut win = self.stream.alloc_zeros::<i32>(2 * np * s).map_err(drv)?;
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
                .arg(&mut win)
                .launch(cfg((n.div_ceil(256), 1, 1), 256))
        }
        .map_err(drv)?;
        let mut logits = self.alloc(np * s * g.wlen())?;
        self.maybe_poison(&mut logits)?;
        unsafe {
            self.stream
                .launch_builder(logits_fn)
                .arg(q)
                .arg(k)
                .arg(&pairs)
                .arg(&hn)
                .arg(&fr)
                .arg(&si)
                .arg(&d)
                .arg(&w)
                .arg(&tb.slot_tok)
                .arg(&tb.slot_tok)
                .arg(&si)
                .arg(&si)
                .arg(&win)
                .arg(&wh)
                .arg(&ww)
                .arg(&plan.scale)
                .arg(&mut logits)
                .launch(cfg((s.div_ceil(TQ), np, 1), lthreads))
        }
        .map_err(drv)?;
        Ok((pairs, win, logits))
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
        let g = plan.geom;
        let s = g.s();
        let tb = self.tables(plan)?;
        let np_all = plan.pairs.len();
        let mut disp = self.alloc(np_all * s * 2)?;
        self.maybe_poison(&mut disp)?;
        let mode = match readout {
            Readout::SoftArgmax => 0,
            Readout::Argmax => 1,
        };
        for (ci, chunk) in plan.pairs.chunks(self.chunk_pairs(plan)).enumerate() {
            let p0 = ci * self.chunk_pairs(plan);
            let (_pairs, win, mut logits) = self.chunk_logits(plan, &tb, q, k, chunk)?;
            self.rows(
                &mut logits,
                chunk.len(),
                s,
                (g.wh, g.ww, g.w),
                &win,
                &tb.identity,
                mode,
                p0,
                None,
                plan.scale,
                &mut disp,
                None,
                None,
            )?;
        }
        self.stream.clone_dtoh(&disp).map_err(drv)
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

    /// Loss and gradients on device buffers; `dq`, `dk` (f32, numel) are overwritten.
    #[allow(clippy::too_many_arguments)]
    fn loss_grad_dev<T: Element>(
        &self,
        plan: &Plan,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        reference: &[f32],
        lp: &LossPlan,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
    ) -> Result<f32, KernelError> {
        let g = plan.geom;
        let s = g.s();
        let tb = self.tables(plan)?;
        let np_all = plan.pairs.len();
        let refd = self.upload(reference)?;
        let coef = self.upload(&lp.coef)?;
        let mut disp = self.alloc(np_all * s * 2)?;
        let mut loss_rows = self.alloc(np_all * s)?;
        self.maybe_poison(&mut disp)?;
        self.maybe_poison(&mut loss_rows)?;
        self.maybe_poison(dq)?;
        self.maybe_poison(dk)?;
        let (hn, fr, si, d, w) = (
            i32of(plan.heads, "heads")?,
            i32of(plan.frames, "frames")?,
            i32of(s, "S")?,
            i32of(plan.d, "head_dim")?,
            i32of(g.w, "grid_w")?,
        );
        let (wh, ww) = (i32of(g.wh, "wh")?, i32of(g.ww, "ww")?);
        let tc = use_tc::<T>(plan.d);
        let kind = if tc { "_tc" } else { "" };
        let dq_fn = self.f(&format!("amf_dq{kind}_{}", T::CUDA_SUFFIX))?;
        let dk_fn = self.f(&format!("amf_dk{kind}_{}", T::CUDA_SUFFIX))?;
        // 16-bit scores are scaled by a power of two near the number of kept rows (coef ~ 1/kept)
        // so that f16 neither underflows nor overflows; the gradient kernels divide it out.
        let gscale = (2f32).powi((lp.kept.max(1) as f64).log2().floor() as i32);
        let inv = 1.0 / gscale;
        let bf = i32::from(T::CUDA_SUFFIX == "bf16");
        let nslices = (plan.heads * plan.d).div_ceil(if tc { DS_TC } else { DS });
        let cp = self.chunk_pairs(plan);
        for (ci, chunk) in plan.pairs.chunks(cp).enumerate() {
            let p0 = ci * cp;
            let (pairs, win, mut scores) = self.chunk_logits(plan, &tb, q, k, chunk)?;
            // Tensor-core backward: the rows kernel writes the scores as 16-bit values.
            let mut s16 = if tc {
                // SAFETY: every element is written by amf_rows (mode 3).
                Some(unsafe { self.stream.alloc::<u16>(scores.len()) }.map_err(drv)?)
            } else {
                None
            };
            self.rows(
                &mut scores,
                chunk.len(),
                s,
                (g.wh, g.ww, g.w),
                &win,
                &tb.identity,
                3,
                p0,
                Some((&refd, &coef)),
                plan.scale,
                &mut disp,
                Some(&mut loss_rows),
                s16.as_mut().map(|b| (b, gscale, bf)),
            )?;
            let acc = i32::from(ci > 0);
            let (qoff, qidx) = csr(chunk, plan.frames, |p| p.0);
            let (koff, kidx) = csr(chunk, plan.frames, |p| p.1);
            let (qoff, qidx) = (self.upload(&qoff)?, self.upload(&qidx)?);
            let (koff, kidx) = (self.upload(&koff)?, self.upload(&kidx)?);
            let grid = (s.div_ceil(TQ), nslices, plan.frames);
            if let Some(s16) = s16 {
                for (func, operand, off, idx, out) in [
                    (dq_fn, k, &qoff, &qidx, &mut *dq),
                    (dk_fn, q, &koff, &kidx, &mut *dk),
                ] {
                    unsafe {
                        self.stream
                            .launch_builder(func)
                            .arg(&s16)
                            .arg(operand)
                            .arg(&pairs)
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
                }
                continue;
            }
            for (func, operand, off, idx, out) in [
                (dq_fn, k, &qoff, &qidx, &mut *dq),
                (dk_fn, q, &koff, &kidx, &mut *dk),
            ] {
                unsafe {
                    self.stream
                        .launch_builder(func)
                        .arg(&scores)
                        .arg(operand)
                        .arg(&pairs)
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
            }
        }
        let rows = self.stream.clone_dtoh(&loss_rows).map_err(drv)?;
        Ok(rows.iter().map(|&v| v as f64).sum::<f64>() as f32)
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
        let loss = self.loss_grad_dev(plan, &qd, &kd, reference, lp, &mut dq, &mut dk)?;
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
        let plan = spec::plan_lens(spec, q.len(), k.len())?;
        let disp = self.forward_dev(&plan, q, k, readout)?;
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
        let l = self.loss_grad_dev(&plan, q, k, &reference.disp, &lp, dq, dk)?;
        Ok((l, lp.kept))
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
