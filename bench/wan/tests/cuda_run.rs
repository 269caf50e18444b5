//! The `fastvmt.amf.AmfLossGrad` CUDA variant (`FASTVMT_AMF_OP=cuda`: Q/K and dQ/dK stay in
//! ONNX Runtime's device buffers) against the two-graph route, on the CUDA provider. Skips,
//! saying why, without a GPU and ONNX Runtime's CUDA provider; `FASTVMT_TEST_CUDA=1` makes
//! that a failure (the GPU host). One test in this binary: the variable is read when the
//! first session registers the domain.

mod common;

use common::{fixture, rel_err, vector};
use fastvmt_kernels::{
    amf_loss_and_grad, compute_amf, AmfSpec, Backend, KeyWindow, LossSpec, PairSet, PairWeights,
    Readout, WindowCentre,
};
use fastvmt_plugin::model::dit::Latent;
use fastvmt_plugin::model::{Device, DitModel};
use fastvmt_plugin::runtime::amf_ops::{cuda_variant_enabled, OpConfig};

#[test]
fn amf_operator_on_device_buffers_matches_the_two_graph_route() {
    std::env::set_var("FASTVMT_AMF_OP", "cuda");
    assert!(cuda_variant_enabled());
    let required = std::env::var("FASTVMT_TEST_CUDA").is_ok_and(|v| v == "1");
    let model = match Backend::cuda_available()
        .map_err(|why| format!("no CUDA driver/NVRTC: {why}"))
        .and_then(|()| DitModel::load(&fixture(), Device::Cuda).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(why) => {
            assert!(!required, "FASTVMT_TEST_CUDA=1 but {why}");
            println!("SKIPPED amf_operator_on_device_buffers_matches_the_two_graph_route: {why}");
            return;
        }
    };
    let never = || false;
    let (xs, x) = vector("x");
    let (_, t) = vector("t");
    let (_, text) = vector("text");
    let shape = [xs[0], xs[1], xs[2], xs[3], xs[4]];
    let rope = model.rope(xs[2], xs[3], xs[4]).unwrap();
    let (f, h, w) = rope.grid;
    let m = model.manifest();
    let spec = AmfSpec {
        heads: m.heads,
        frames: f,
        grid_h: h,
        grid_w: w,
        head_dim: m.head_dim,
        tau: 2.0,
        pairs: PairSet::Forward { span: 3 },
        window: KeyWindow::Local {
            radius: 1,
            centre: WindowCentre::Query,
        },
    };
    let loss_spec = LossSpec {
        pair_weights: PairWeights::LinearDecay {
            first: 1.0,
            last: 0.8,
        },
        moving_threshold: None,
    };
    let gpu = Backend::Cuda { device: 0 };
    let other: Vec<f32> = x.iter().rev().copied().collect();
    let (rq, rk) = model
        .guidance_qk(
            &Latent {
                shape,
                data: &other,
            },
            &t,
            &text,
            &rope,
            &never,
        )
        .unwrap();
    let reference = compute_amf(&gpu, &rq, &rk, &spec, Readout::Argmax).unwrap();
    let latent = Latent { shape, data: &x };
    let (q, k) = model
        .guidance_qk(&latent, &t, &text, &rope, &never)
        .unwrap();
    let lg = amf_loss_and_grad(&gpu, &q, &k, &spec, &reference, &loss_spec).unwrap();
    let dx_two = model
        .guidance_grad(&latent, &t, &text, &rope, &lg.dq, &lg.dk, &never)
        .unwrap();
    let config = OpConfig {
        tau: 2.0,
        span: 3,
        radius: 1,
        coarse_tiles: false,
        weight_first: 1.0,
        weight_last: 0.8,
        moving_threshold: None,
        cuda_device: Some(0),
    };
    let (loss, dx_one) = model
        .guidance_step(&latent, &t, &text, &rope, &reference.disp, &config, &never)
        .unwrap();
    let loss_err = ((loss - lg.loss) / lg.loss).abs();
    let dx_err = rel_err(&dx_one, &dx_two);
    println!(
        "CUDA operator vs two graphs: loss {loss} vs {} ({loss_err:.1e}), dx {dx_err:.1e}",
        lg.loss
    );
    assert!(lg.loss > 0.0);
    assert!(loss_err < 1e-3, "loss {loss} vs {}", lg.loss);
    assert!(dx_err < 5e-3, "dx relative error {dx_err:.3e}");
}
