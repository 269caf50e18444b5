//! The `fastvmt.amf.AmfLossGrad` CPU variant inside a CUDA session (`FASTVMT_AMF_OP=cpu`: ONNX
//! Runtime copies Q/K to CUDA-pinned host memory for it) against the two-graph route. The GPU
//! host found this route failing to read its pinned input (2026-11-27); `attention_ops::host`
//! now reads pinned memory. Skips, saying why, without a GPU and ONNX Runtime's CUDA provider;
//! `FASTVMT_TEST_CUDA=1` makes that a failure (the GPU host). One test in this binary: the
//! variable is read when the first session registers the domain.

mod common;

use fastvmt_plugin::runtime::amf_ops::cuda_variant_enabled;

#[test]
fn amf_operator_on_pinned_host_buffers_matches_the_two_graph_route() {
    std::env::set_var("FASTVMT_AMF_OP", "cpu");
    assert!(!cuda_variant_enabled());
    common::check_cuda_session_route(
        "amf_operator_on_pinned_host_buffers_matches_the_two_graph_route",
        "CPU operator in a CUDA session",
    );
}
