//! What the nodes run on: ONNX Runtime set-up and the machine report.

pub mod amf_ops;
pub mod attention_ops;
pub mod cuda_arena;
pub mod diagnostics;
pub mod norm_ops;
pub mod ort_env;

use node_abi::Diagnostic;

/// CUDA lines of the machine report: driver/NVRTC (for the AMF kernels) and ONNX Runtime's
/// CUDA execution provider.
pub fn cuda_report() -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let (ok, detail) = match fastvmt_kernels::Backend::cuda_available() {
        Ok(()) => (
            true,
            "CUDA driver and NVRTC found; AMF kernels can run on the GPU".to_string(),
        ),
        Err(why) => (false, why),
    };
    out.push(Diagnostic {
        subject: "CUDA driver / NVRTC (AMF kernels)".into(),
        available: ok,
        detail: detail.as_str().into(),
    });
    let (ok, detail) = match ort_env::environment() {
        Err(e) => (false, format!("ONNX Runtime not loaded: {e}")),
        Ok(_) => {
            use ort::ep::ExecutionProvider;
            match ort::ep::CUDA::is_available() {
                Ok(true) => (true, "this ONNX Runtime build has the CUDA execution provider".to_string()),
                Ok(false) => (false, "this ONNX Runtime build has no CUDA execution provider (the PyPI `onnxruntime` wheel is CPU-only; use `onnxruntime-gpu`'s library via ORT_DYLIB_PATH)".to_string()),
                Err(e) => (false, format!("cannot query the CUDA provider: {e}")),
            }
        }
    };
    out.push(Diagnostic {
        subject: "ONNX Runtime CUDA provider".into(),
        available: ok,
        detail: detail.as_str().into(),
    });
    out
}
