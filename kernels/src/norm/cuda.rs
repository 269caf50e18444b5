//! CUDA back end of [`super`]: `src/cuda/norm.cu` compiled with NVRTC once per device,
//! launched asynchronously on the caller's stream (ONNX Runtime's, in the plugin's operators).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUstream;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use super::RowsShape;
use crate::attention::cuda::DType;
use crate::cuda::{cached_device_state, caller_stream, compile_source, device_context, loaded};
use crate::error::KernelError;

const SRC: &str = include_str!("../cuda/norm.cu");

fn drv<E: std::fmt::Debug>(e: E) -> KernelError {
    KernelError::CudaDriver(format!("{e:?}"))
}

/// Compile norm.cu for a virtual architecture (e.g. `"compute_90"`); needs only NVRTC.
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    compile_source(SRC, arch)
}

/// Cached per-device state: primary context, the compiled module.
pub struct CudaNorm {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    /// The 16-byte-vector kernels where shapes and alignment allow (default; off for
    /// comparisons and tests of the scalar kernels).
    vectorized: AtomicBool,
}

impl std::fmt::Debug for CudaNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaNorm(device {})", self.ctx.ordinal())
    }
}

static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CudaNorm>>>> = OnceLock::new();

const WARPS: usize = 8;

impl CudaNorm {
    /// The cached state of `device` (compiled on first use); `CudaUnavailable` without a driver.
    pub fn get(device: usize) -> Result<Arc<CudaNorm>, KernelError> {
        cached_device_state(&CACHE, device, Self::create)
    }

    fn create(device: usize) -> Result<Self, KernelError> {
        let (ctx, _, arch) = device_context(device)?;
        let module = ctx.load_module(compile(arch)?).map_err(drv)?;
        let mut funcs = HashMap::new();
        for kind in ["modln", "gres", "modln_v", "gres_v"] {
            for t in ["f32", "f16", "bf16"] {
                if kind.ends_with("_v") && t == "f32" {
                    continue;
                }
                let name = format!("norm_{kind}_{t}");
                funcs.insert(name.clone(), module.load_function(&name).map_err(drv)?);
            }
        }
        Ok(CudaNorm {
            stream: ctx.default_stream(),
            ctx,
            _module: module,
            funcs,
            vectorized: AtomicBool::new(std::env::var_os("FASTVMT_NORM_SCALAR").is_none()),
        })
    }

    /// Use the vector kernels where they apply (default, unless `FASTVMT_NORM_SCALAR` is set).
    pub fn set_vectorized(&self, on: bool) {
        self.vectorized.store(on, Ordering::Relaxed);
    }

    /// The vector kernels apply: a 16-bit type, the channel condition, 16-byte aligned pointers.
    fn vector_ok(&self, dtype: DType, channels_ok: bool, ptrs: &[u64]) -> bool {
        self.vectorized.load(Ordering::Relaxed)
            && dtype != DType::F32
            && channels_ok
            && ptrs.iter().all(|p| p % 16 == 0)
    }

    fn f(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        loaded(&self.funcs, name)
    }

    /// The state's own stream, used when a raw entry gets a null stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn stream_for(&self, raw: CUstream) -> Result<Arc<CudaStream>, KernelError> {
        // SAFETY: the raw entries' callers guarantee `raw` is null or a live stream of this
        // device's context.
        unsafe { caller_stream(&self.ctx, &self.stream, raw) }
    }

    /// `ModulatedLayerNorm` on device buffers; `mul_rows`/`add_rows` are 1 or `shape.batch`
    /// (checked by the caller with [`super::check_table`]). Launches on `stream` (null: this
    /// state's), no host synchronisation.
    ///
    /// # Safety
    /// `x`, `y`: `shape.numel()` values of `dtype` on this device; `mul`, `add`: `rows x
    /// channels` f32 there; `stream` null or a live stream of this device's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn modulated_layer_norm_raw(
        &self,
        dtype: DType,
        x: u64,
        shape: RowsShape,
        mul: u64,
        mul_rows: usize,
        add: u64,
        add_rows: usize,
        eps: f32,
        y: u64,
        stream: CUstream,
    ) -> Result<(), KernelError> {
        let rows = shape.batch * shape.tokens;
        if rows == 0 || shape.channels == 0 {
            return Ok(());
        }
        let st = self.stream_for(stream)?;
        let c_ok = shape.channels.is_multiple_of(256) && shape.channels <= 2048;
        let kind = if self.vector_ok(dtype, c_ok, &[x, mul, add, y]) {
            "modln_v"
        } else {
            "modln"
        };
        let f = self.f(&format!("norm_{kind}_{}", dtype.suffix()))?;
        let (mr, ar) = (mul_rows as i32, add_rows as i32);
        let (rows_i, tokens, c) = (rows as i32, shape.tokens as i32, shape.channels as i32);
        // SAFETY: argument list matches norm_modln_* in norm.cu; buffers per the contract.
        unsafe {
            st.launch_builder(f)
                .arg(&x)
                .arg(&mul)
                .arg(&mr)
                .arg(&add)
                .arg(&ar)
                .arg(&rows_i)
                .arg(&tokens)
                .arg(&c)
                .arg(&eps)
                .arg(&y)
                .launch(LaunchConfig {
                    grid_dim: (rows.div_ceil(WARPS) as u32, 1, 1),
                    block_dim: (32 * WARPS as u32, 1, 1),
                    shared_mem_bytes: 0,
                })
        }
        .map_err(drv)?;
        Ok(())
    }

    /// `GatedResidual` on device buffers; `gate_rows` is 1 or `shape.batch`. Launches on
    /// `stream` (null: this state's), no host synchronisation.
    ///
    /// # Safety
    /// `h`, `o`, `y`: `shape.numel()` values of `dtype` on this device; `gate`: `rows x
    /// channels` f32 there; `stream` null or a live stream of this device's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gated_residual_raw(
        &self,
        dtype: DType,
        h: u64,
        o: u64,
        gate: u64,
        gate_rows: usize,
        shape: RowsShape,
        y: u64,
        stream: CUstream,
    ) -> Result<(), KernelError> {
        let n = shape.numel();
        if n == 0 {
            return Ok(());
        }
        let st = self.stream_for(stream)?;
        let vector = self.vector_ok(dtype, shape.channels.is_multiple_of(8), &[h, o, gate, y]);
        let kind = if vector { "gres_v" } else { "gres" };
        let f = self.f(&format!("norm_{kind}_{}", dtype.suffix()))?;
        let (gr, n64) = (gate_rows as i32, n as i64);
        let per_sample = (shape.tokens * shape.channels) as i64;
        let c = shape.channels as i32;
        let threads = if vector { n / 8 } else { n };
        let blocks = threads.div_ceil(256).min(65536);
        // SAFETY: argument list matches norm_gres_* in norm.cu; buffers per the contract.
        unsafe {
            st.launch_builder(f)
                .arg(&h)
                .arg(&o)
                .arg(&gate)
                .arg(&gr)
                .arg(&n64)
                .arg(&per_sample)
                .arg(&c)
                .arg(&y)
                .launch(LaunchConfig {
                    grid_dim: (blocks as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                })
        }
        .map_err(drv)?;
        Ok(())
    }
}
