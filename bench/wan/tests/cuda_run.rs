//! The `fastvmt.amf.AmfLossGrad` CUDA variant (the default on CUDA sessions: Q/K and dQ/dK stay
//! in ONNX Runtime's device buffers) against the two-graph route, on the CUDA provider (H100,
//! 2026-11-27: loss and dx identical). Skips,
//! saying why, without a GPU and ONNX Runtime's CUDA provider; `FASTVMT_TEST_CUDA=1` makes
//! that a failure (the GPU host). One test in this binary: the variable is read when the
//! first session registers the domain.

mod common;

use fastvmt_plugin::runtime::amf_ops::cuda_variant_enabled;

#[test]
fn amf_operator_on_device_buffers_matches_the_two_graph_route() {
    std::env::set_var("FASTVMT_AMF_OP", "cuda");
    assert!(cuda_variant_enabled());
    common::check_cuda_session_route(
        "amf_operator_on_device_buffers_matches_the_two_graph_route",
        "CUDA operator",
    );
}
