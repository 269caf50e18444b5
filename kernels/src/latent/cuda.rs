//! CUDA back end of [`super`]: `src/cuda/latent.cu` compiled with NVRTC once per device.
//!
//! Every entry launches on the state's own stream and waits for it before returning: the
//! sampler hands the same buffers to ONNX Runtime next, which runs on a stream of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig,
    PushKernelArg,
};

use super::{AdamWStep, VecStats};
use crate::cuda::{cached_device_state, compile_source, device_context, loaded};
use crate::error::KernelError;

const SRC: &str = include_str!("../cuda/latent.cu");

const FUNCS: &[&str] = &[
    "latent_lerp",
    "latent_euler",
    "latent_cfg_euler",
    "latent_adamw",
    "latent_stats",
];

/// Threads a block (the stats kernel's shared arrays assume 256).
const THREADS: usize = 256;
/// Grid caps: enough blocks to fill any current GPU; the grid-stride loops cover the rest.
const MAX_BLOCKS: usize = 65_536;
/// Fewer blocks for `stats`: one set of atomics per block.
const STATS_BLOCKS: usize = 1024;

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

/// Compile latent.cu for a virtual architecture (e.g. `"compute_90"`); needs only NVRTC.
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    compile_source(SRC, arch)
}

fn launch_config(n: usize, max_blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS).clamp(1, max_blocks) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A null pointer where `n > 0` elements are expected is a typed error, not a device fault.
fn non_null(pointers: &[(&'static str, u64)]) -> Result<(), KernelError> {
    match pointers.iter().find(|(_, p)| *p == 0) {
        Some((name, _)) => Err(KernelError::InvalidParameter {
            name,
            reason: "null device pointer".into(),
        }),
        None => Ok(()),
    }
}

/// `n` as the kernels' `long long`, and `n * factor` f32 values as bytes, without overflow.
fn sizes(n: usize, factor: usize) -> Result<(i64, usize), KernelError> {
    let too_large = || KernelError::TooLarge(format!("{n} latent elements"));
    let bytes = n
        .checked_mul(factor)
        .and_then(|e| e.checked_mul(std::mem::size_of::<f32>()))
        .ok_or_else(too_large)?;
    let n64 = i64::try_from(bytes)
        .map(|_| n as i64)
        .map_err(|_| too_large())?;
    Ok((n64, bytes))
}

/// Cached per-device state: primary context, its stream, the compiled module and the `stats`
/// accumulator.
pub struct CudaLatent {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// `[nonfinite (u64), dot, norm_a2, norm_b2 (f64 bits)]`, zeroed per call; the lock
    /// serialises concurrent `stats_raw` calls.
    stats_sums: Mutex<CudaSlice<u64>>,
}

impl std::fmt::Debug for CudaLatent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaLatent(device {})", self.ctx.ordinal())
    }
}

static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CudaLatent>>>> = OnceLock::new();

impl CudaLatent {
    /// The cached state of `device` (compiled on first use); `CudaUnavailable` without a driver.
    pub fn get(device: usize) -> Result<Arc<CudaLatent>, KernelError> {
        cached_device_state(&CACHE, device, Self::create)
    }

    fn create(device: usize) -> Result<Self, KernelError> {
        let (ctx, _, arch) = device_context(device)?;
        let module = ctx.load_module(compile(arch)?).map_err(drv)?;
        let mut funcs = HashMap::new();
        for &name in FUNCS {
            funcs.insert(name, module.load_function(name).map_err(drv)?);
        }
        let stream = ctx.default_stream();
        let stats_sums = stream.alloc_zeros::<u64>(4).map_err(drv)?;
        Ok(CudaLatent {
            ctx,
            stream,
            _module: module,
            funcs,
            stats_sums: Mutex::new(stats_sums),
        })
    }

    /// The stream every entry runs on (for callers that allocate or fill buffers themselves).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn f(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        loaded(&self.funcs, name)
    }

    /// Make this device's context current on the calling thread (the raw driver calls need it).
    fn bind(&self) -> Result<(), KernelError> {
        self.ctx.bind_to_thread().map_err(drv)
    }

    /// Wait for everything queued on the state's stream.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.bind()?;
        self.stream.synchronize().map_err(drv)
    }

    /// `out = wa * a + wb * b` (see [`super`]), synchronous.
    ///
    /// # Safety
    /// `out`, `a`, `b`: `n` f32 each on this device (4-byte aligned, live until the call
    /// returns); `out` may alias `a` or `b` exactly, but not overlap them otherwise.
    pub unsafe fn lerp_raw(
        &self,
        out: u64,
        a: u64,
        b: u64,
        n: usize,
        wa: f32,
        wb: f32,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("out", out), ("a", a), ("b", b)])?;
        let (n64, _) = sizes(n, 1)?;
        self.bind()?;
        let f = self.f("latent_lerp")?;
        // SAFETY: argument list matches latent_lerp in latent.cu; buffers per the contract.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&out)
                .arg(&a)
                .arg(&b)
                .arg(&n64)
                .arg(&wa)
                .arg(&wb)
                .launch(launch_config(n, MAX_BLOCKS))
        }
        .map_err(drv)?;
        self.synchronize()
    }

    /// One Euler step `x += dt * v` with the plain (`cfg = None`) or guided velocity (see
    /// [`super`]), synchronous.
    ///
    /// # Safety
    /// `x`: `n` f32 on this device; `velocity`: `n` f32 there, `2 * n` (`[cond; uncond]`) with
    /// `cfg = Some(_)`; 4-byte aligned, not overlapping `x`, live until the call returns.
    pub unsafe fn cfg_euler_raw(
        &self,
        x: u64,
        velocity: u64,
        n: usize,
        cfg: Option<f32>,
        dt: f32,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("x", x), ("velocity", velocity)])?;
        let (n64, _) = sizes(n, if cfg.is_some() { 2 } else { 1 })?;
        self.bind()?;
        let config = launch_config(n, MAX_BLOCKS);
        // SAFETY: argument lists match latent_cfg_euler / latent_euler in latent.cu; buffers
        // per the contract.
        match cfg {
            Some(scale) => unsafe {
                self.stream
                    .launch_builder(self.f("latent_cfg_euler")?)
                    .arg(&x)
                    .arg(&velocity)
                    .arg(&n64)
                    .arg(&scale)
                    .arg(&dt)
                    .launch(config)
            },
            None => unsafe {
                self.stream
                    .launch_builder(self.f("latent_euler")?)
                    .arg(&x)
                    .arg(&velocity)
                    .arg(&n64)
                    .arg(&dt)
                    .launch(config)
            },
        }
        .map_err(drv)?;
        self.synchronize()
    }

    /// One AdamW step on `x`, updating the moments `m`, `v` (see [`super`]), synchronous.
    ///
    /// # Safety
    /// `x`, `grad`, `m`, `v`: `n` f32 each on this device, 4-byte aligned, pairwise
    /// non-overlapping, live until the call returns.
    pub unsafe fn adamw_raw(
        &self,
        x: u64,
        grad: u64,
        m: u64,
        v: u64,
        n: usize,
        step: &AdamWStep,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("x", x), ("grad", grad), ("m", m), ("v", v)])?;
        let (n64, _) = sizes(n, 1)?;
        // Once, in Rust, as the CPU implementation does.
        let one_minus_beta1 = 1.0 - step.beta1;
        let one_minus_beta2 = 1.0 - step.beta2;
        self.bind()?;
        let f = self.f("latent_adamw")?;
        // SAFETY: argument list matches latent_adamw in latent.cu; buffers per the contract.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&x)
                .arg(&grad)
                .arg(&m)
                .arg(&v)
                .arg(&n64)
                .arg(&step.lr)
                .arg(&step.beta1)
                .arg(&step.beta2)
                .arg(&one_minus_beta1)
                .arg(&one_minus_beta2)
                .arg(&step.eps)
                .arg(&step.weight_decay)
                .arg(&step.bias_correction1)
                .arg(&step.bias_correction2)
                .launch(launch_config(n, MAX_BLOCKS))
        }
        .map_err(drv)?;
        self.synchronize()
    }

    /// Non-finite count of `a` and the f64 cosine sums with `b` (see [`super`]), synchronous.
    /// The device sums in another order than the CPU: equal up to f64 rounding.
    ///
    /// # Safety
    /// `a` and (if given) `b`: `n` f32 each on this device, 4-byte aligned, live until the call
    /// returns.
    pub unsafe fn stats_raw(
        &self,
        a: u64,
        b: Option<u64>,
        n: usize,
    ) -> Result<VecStats, KernelError> {
        if n == 0 {
            return Ok(VecStats::default());
        }
        non_null(&[("a", a)])?;
        if let Some(b) = b {
            non_null(&[("b", b)])?;
        }
        let (n64, _) = sizes(n, 1)?;
        let (b_ptr, has_b) = (b.unwrap_or(0), i32::from(b.is_some()));
        self.bind()?;
        let f = self.f("latent_stats")?;
        let mut sums = self
            .stats_sums
            .lock()
            .map_err(|_| KernelError::CudaDriver("stats accumulator lock poisoned".into()))?;
        self.stream.memset_zeros(&mut *sums).map_err(drv)?;
        // SAFETY: argument list matches latent_stats in latent.cu; `sums` holds 4 u64; the
        // input buffers per the contract.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&a)
                .arg(&b_ptr)
                .arg(&has_b)
                .arg(&n64)
                .arg(&mut *sums)
                .launch(launch_config(n, STATS_BLOCKS))
        }
        .map_err(drv)?;
        let mut host = [0u64; 4];
        self.stream.memcpy_dtoh(&*sums, &mut host).map_err(drv)?;
        self.synchronize()?;
        Ok(VecStats {
            nonfinite: host[0],
            dot: f64::from_bits(host[1]),
            norm_a2: f64::from_bits(host[2]),
            norm_b2: f64::from_bits(host[3]),
        })
    }

    /// Copy `n` f32 from `src` to `dst` on the device, synchronous.
    ///
    /// # Safety
    /// `dst`, `src`: `n` f32 each on this device, not overlapping, live until the call returns.
    pub unsafe fn copy_raw(&self, dst: u64, src: u64, n: usize) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("dst", dst), ("src", src)])?;
        let (_, bytes) = sizes(n, 1)?;
        self.bind()?;
        // SAFETY: both ranges are `bytes` long on this device (the caller's contract).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(drv)?;
        self.synchronize()
    }

    /// Set `n` f32 at `dst` to `value`, synchronous (the optimiser's moments start at zero).
    ///
    /// # Safety
    /// `dst`: `n` f32 on this device, live until the call returns.
    pub unsafe fn fill_raw(&self, dst: u64, n: usize, value: f32) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("dst", dst)])?;
        sizes(n, 1)?;
        self.bind()?;
        // SAFETY: `dst` holds `n` 4-byte words on this device (the caller's contract).
        unsafe {
            cudarc::driver::sys::cuMemsetD32Async(dst, value.to_bits(), n, self.stream.cu_stream())
        }
        .result()
        .map_err(drv)?;
        self.synchronize()
    }

    /// Copy the host values `src` to the device at `dst`, synchronous.
    ///
    /// # Safety
    /// `dst`: room for `src.len()` f32 on this device, live until the call returns.
    pub unsafe fn upload_raw(&self, dst: u64, src: &[f32]) -> Result<(), KernelError> {
        if src.is_empty() {
            return Ok(());
        }
        non_null(&[("dst", dst)])?;
        sizes(src.len(), 1)?;
        self.bind()?;
        // SAFETY: `dst` per the contract; `src` stays borrowed until the stream is synchronised
        // below, so the asynchronous copy never outlives it.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv)?;
        self.synchronize()
    }

    /// Copy `dst.len()` f32 from the device at `src` to the host, synchronous.
    ///
    /// # Safety
    /// `src`: `dst.len()` f32 on this device, live until the call returns.
    pub unsafe fn download_raw(&self, src: u64, dst: &mut [f32]) -> Result<(), KernelError> {
        if dst.is_empty() {
            return Ok(());
        }
        non_null(&[("src", src)])?;
        sizes(dst.len(), 1)?;
        self.bind()?;
        // SAFETY: `src` per the contract; `dst` stays borrowed until the stream is synchronised
        // below.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv)?;
        self.synchronize()
    }
}
