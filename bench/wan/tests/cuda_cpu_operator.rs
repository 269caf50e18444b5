//! The `fastvmt.amf.AmfLossGrad` CPU variant inside a CUDA session (`FASTVMT_AMF_OP=cpu`: ONNX
//! Runtime copies Q/K to CUDA-pinned host memory for it) against the two-graph route. The GPU
//! host found this route failing to read its pinned input (2026-11-27); `attention_ops::host`
//! now reads pinned memory. Skips, saying why, without a GPU and ONNX Runtime's CUDA provider;
//! `FASTVMT_TEST_CUDA=1` makes that a failure (the GPU host). One test in this binary: the
//! variable is read when the first session registers the domain.

mod common;

use common::{compare_routes, fixture};
use fastvmt_kernels::Backend;
use fastvmt_plugin::model::{Device, DitModel};
use fastvmt_plugin::runtime::amf_ops::cuda_variant_enabled;

#[test]
fn amf_operator_on_pinned_host_buffers_matches_the_two_graph_route() {
    std::env::set_var("FASTVMT_AMF_OP", "cpu");
    assert!(!cuda_variant_enabled());
    let required = std::env::var("FASTVMT_TEST_CUDA").is_ok_and(|v| v == "1");
    let model = match Backend::cuda_available()
        .map_err(|why| format!("no CUDA driver/NVRTC: {why}"))
        .and_then(|()| DitModel::load(&fixture(), Device::Cuda).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(why) => {
            assert!(!required, "FASTVMT_TEST_CUDA=1 but {why}");
            println!(
                "SKIPPED amf_operator_on_pinned_host_buffers_matches_the_two_graph_route: {why}"
            );
            return;
        }
    };
    let (want, loss, dx_err, _) = compare_routes(&model, Backend::Cuda { device: 0 });
    let loss_err = ((loss - want) / want).abs();
    println!("CPU operator in a CUDA session vs two graphs: loss {loss} vs {want} ({loss_err:.1e}), dx {dx_err:.1e}");
    assert!(want > 0.0);
    assert!(loss_err < 1e-3, "loss {loss} vs {want}");
    assert!(dx_err < 5e-3, "dx relative error {dx_err:.3e}");
}
