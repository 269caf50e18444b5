//! How the CUDA sessions of one model share GPU memory (`FASTVMT_CUDA_ARENA`).
//!
//! Each ONNX Runtime session has its own memory arena by default, and an arena keeps what it
//! grew to. A model has up to four sessions, and at Wan2.1 scale the gradient graph's
//! activations alone are tens of GB: left in its arena they starve the denoiser's (measured:
//! out of memory at 32,760 tokens, `bench/wan/README.md`). The policies:
//!
//! - `shared` (default): one arena registered on the ONNX Runtime environment and used by every
//!   CUDA session (`CreateAndRegisterAllocatorV2` + `session.use_env_allocators`): peak memory is
//!   the largest graph's rather than the sum, and nothing is re-allocated. If registration fails
//!   the sessions fall back to `shrink` and say why.
//! - `shrink`: each run gives the memory its arena grew by back at the end, and re-allocates it
//!   on the next run. The lowest peak; the choice for a card the shared arena overfills.
//! - `keep`: ONNX Runtime's behaviour (fastest while everything fits).
//!
//! Measured on the H100, Wan2.1-1.3B dims, 32,760 tokens, preset small, one lease
//! (`bench/wan/results/2026-11-27-h100-lease2/`): plain sampling shrink 19.90 s, shared 18.10 s,
//! keep 17.92 s; `fastvmt` shrink 56.2 s (peak 64.2 GiB), shared 43.4 s (peak 76.1 GiB); so
//! `shared` is the default and `shrink` the fallback the out-of-memory message names.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use ort::AsPointer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaPolicy {
    Shrink,
    Shared,
    Keep,
}

impl ArenaPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "shrink" => Some(Self::Shrink),
            "shared" => Some(Self::Shared),
            "keep" => Some(Self::Keep),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Shrink => "shrink",
            Self::Shared => "shared",
            Self::Keep => "keep",
        }
    }

    /// The policy asked for by `FASTVMT_CUDA_ARENA` (default `shared`); an unknown value is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("FASTVMT_CUDA_ARENA") {
            Err(_) => Ok(Self::Shared),
            Ok(v) => Self::parse(&v)
                .ok_or_else(|| format!("FASTVMT_CUDA_ARENA='{v}': use shrink, shared or keep")),
        }
    }
}

/// Registers one CUDA arena (device 0, blocks sized as requested) on the environment, once per
/// process. `Err` says why it could not.
pub fn register_shared(env: &ort::environment::Environment) -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| register(env)).clone()
}

fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API; its message is a C string it owns until release.
    let message = unsafe {
        let msg = (api.GetErrorMessage)(status.0);
        let text = std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(format!("{what}: {message}"))
}

fn register(env: &ort::environment::Environment) -> Result<(), String> {
    let api = ort::api();
    let info = ort::memory::MemoryInfo::new(
        ort::memory::AllocationDevice::CUDA,
        0,
        ort::memory::AllocatorType::Arena,
        ort::memory::MemoryType::Default,
    )
    .map_err(|e| format!("CUDA memory info: {e}"))?;
    // kSameAsRequested (1): blocks of the requested size, as the per-session arenas use.
    let keys = [CString::new("arena_extend_strategy").expect("no NUL")];
    let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
    let values = [1usize];
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: arrays of equal length that outlive the call; `cfg` is released below.
    check(
        unsafe { (api.CreateArenaCfgV2)(key_ptrs.as_ptr(), values.as_ptr(), 1, &mut cfg) },
        "CreateArenaCfgV2",
    )?;
    let provider = CString::new("CUDAExecutionProvider").expect("no NUL");
    // SAFETY: the environment, memory info and arena config are live; no provider options.
    let status = unsafe {
        (api.CreateAndRegisterAllocatorV2)(
            env.ptr().cast_mut(),
            provider.as_ptr(),
            info.ptr(),
            cfg,
            std::ptr::null(),
            std::ptr::null(),
            0,
        )
    };
    // SAFETY: created above, not used after.
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    check(status, "CreateAndRegisterAllocatorV2")
}

#[cfg(test)]
mod tests {
    use super::ArenaPolicy;

    #[test]
    fn policy_names_round_trip() {
        for p in [ArenaPolicy::Shrink, ArenaPolicy::Shared, ArenaPolicy::Keep] {
            assert_eq!(ArenaPolicy::parse(p.name()), Some(p));
        }
        assert_eq!(ArenaPolicy::parse("grow"), None);
    }
}
