//! `LocalAttentionDiT`: loads a model bundle (default: the shipped small model) on a device
//! and returns a MODEL carrying the AMF settings used by guided sampling.

use std::path::PathBuf;
use std::sync::Arc;

use fastvmt_kernels::Backend;
use node_abi::{
    abi_stable::std_types::RString,
    plugin::{into_instance, opaque, Host, Inputs, Node},
    InputSpec, Literal, NodeDescriptor, NodeError, NodeErrorKind, Opaque, Value, ValueType,
};

use super::NodeClass;
use crate::model::{bundle::default_bundle_dir, Device, DitModel, ModelError};
use crate::runtime::ort_env;
use crate::sampler::guidance::{AmfConfig, AmfPrecision};

pub const CLASS: NodeClass = NodeClass {
    descriptor: schema,
    create: || into_instance(LocalAttentionDit),
};

fn schema() -> NodeDescriptor {
    NodeDescriptor::new("LocalAttentionDiT", "FastVMT/model", "Loads a DiT model bundle (ONNX) and sets how its attention motion flow is read: dense, or local (a spatial key window and an optional temporal window). Sessions are created once and shared.")
        .display_name("Local-Attention DiT")
        .version(1)
        .inputs(vec![
            InputSpec::new("bundle", ValueType::String).default(Literal::String("".into())).tooltip("model bundle folder (manifest.json + ONNX files); empty = the shipped small model").build(),
            InputSpec::new("device", ValueType::Choice).choices(&["auto", "cpu", "cuda"]).default(Literal::String("auto".into())).tooltip("auto uses CUDA when both ONNX Runtime's CUDA provider and the driver are there; cuda fails if they are not").build(),
            InputSpec::new("motion_block", ValueType::Int).default(Literal::Int(-1)).range(-1.0, 1000.0, 1.0).tooltip("block whose attention gives the motion flow; -1 = the bundle's (its guidance graphs are exported for that block)").build(),
            InputSpec::new("amf_mode", ValueType::Choice).choices(&["local", "dense"]).default(Literal::String("local".into())).tooltip("AMF used by the fastvmt and adaptive sampler modes (ditflow is always dense)").build(),
            InputSpec::new("temporal_window", ValueType::Int).default(Literal::Int(0)).range(0.0, 1000.0, 1.0).tooltip("local mode: pairs (i, j) with 1 <= j-i < window; 0 = all frame pairs (measured best on the shipped model)").build(),
            InputSpec::new("spatial_radius", ValueType::Int).default(Literal::Int(-1)).range(-1.0, 1000.0, 1.0).tooltip("local mode: key window radius in tokens; -1 = the bundle's default").build(),
            InputSpec::new("window_centre", ValueType::Choice).choices(&["query", "coarse_tiles"]).default(Literal::String("query".into())).tooltip("centre of the key window: the query's own position, or FastVMT's coarse tile search").build(),
            InputSpec::new("precision", ValueType::Choice).choices(&["fp32", "fp16", "bf16"]).default(Literal::String("fp32".into())).tooltip("precision of Q/K in the AMF kernels (accumulation is f32; the shipped bundle's graphs are fp32)").build(),
        ])
        .outputs(&[("model", ValueType::Model)])
}

/// A loaded model and its AMF settings (the MODEL value).
pub struct ModelHandle {
    pub model: Arc<DitModel>,
    pub amf: AmfConfig,
}

impl Opaque for ModelHandle {
    fn describe(&self) -> RString {
        format!(
            "{} on {}",
            self.model.manifest().name,
            self.model.device.name()
        )
        .into()
    }
}

fn model_error(input: &str, e: ModelError) -> NodeError {
    match e {
        ModelError::Cancelled => NodeError::cancelled(),
        ModelError::CudaUnavailable(_) => NodeError::input("device", e.to_string()),
        other => NodeError::new(NodeErrorKind::Model, other.to_string()).with_input(input),
    }
}

struct LocalAttentionDit;

impl Node for LocalAttentionDit {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let bundle = inputs.string("bundle")?;
        let dir = if bundle.trim().is_empty() {
            default_bundle_dir()
        } else {
            PathBuf::from(bundle)
        };
        let cuda_ready = || -> Result<(), String> {
            Backend::cuda_available()?;
            ort_env::environment().map_err(|e| e.to_string())?;
            use ort::ep::ExecutionProvider;
            match ort::ep::CUDA::is_available() {
                Ok(true) => Ok(()),
                _ => Err("this ONNX Runtime build has no CUDA execution provider".into()),
            }
        };
        let device = match inputs.string("device")? {
            "cpu" => Device::Cpu,
            "cuda" => {
                cuda_ready().map_err(|why| {
                    NodeError::input(
                        "device",
                        format!("cuda was asked for but is not available: {why}"),
                    )
                })?;
                Device::Cuda
            }
            _ => match cuda_ready() {
                Ok(()) => Device::Cuda,
                Err(why) => {
                    host.info(&format!("device auto: using cpu ({why})"));
                    Device::Cpu
                }
            },
        };
        host.progress(
            0,
            1,
            &format!("loading {} on {}", dir.display(), device.name()),
        );
        let model = DitModel::load(&dir, device).map_err(|e| model_error("bundle", e))?;
        let m = model.manifest();
        let block = inputs.int("motion_block")?;
        if block >= 0 && block as usize != m.motion_block {
            return Err(NodeError::input(
                "motion_block",
                format!("the bundle's guidance graphs are exported for block {}; re-export them for block {block} (onnx/README.md) or use -1", m.motion_block),
            ));
        }
        let radius = match inputs.int("spatial_radius")? {
            r if r < 0 => m.default_f64("spatial_radius", 3.0) as usize,
            0 => {
                return Err(NodeError::input(
                    "spatial_radius",
                    "must be at least 1 (or -1 for the bundle's default)",
                ))
            }
            r => r as usize,
        };
        let temporal_window = inputs.int("temporal_window")? as usize;
        if temporal_window == 1 {
            return Err(NodeError::input(
                "temporal_window",
                "1 leaves no frame pairs: use 0 (all pairs) or at least 2",
            ));
        }
        let amf = AmfConfig {
            local: inputs.string("amf_mode")? == "local",
            temporal_window,
            spatial_radius: radius,
            coarse_tiles: inputs.string("window_centre")? == "coarse_tiles",
            tau: m.default_f64("amf_temperature", 2.0) as f32,
            precision: match inputs.string("precision")? {
                "fp16" => AmfPrecision::F16,
                "bf16" => AmfPrecision::Bf16,
                _ => AmfPrecision::F32,
            },
            backend: if device == Device::Cuda {
                Backend::Cuda { device: 0 }
            } else {
                Backend::Cpu
            },
        };
        host.info(&format!(
            "loaded {} ({} blocks, motion block {}) on {}; guidance graphs: {}",
            m.name,
            m.blocks,
            m.motion_block,
            device.name(),
            if model.has_guidance() {
                "yes"
            } else {
                "no (only mode 'none' can sample)"
            }
        ));
        host.progress(1, 1, "loaded");
        Ok(vec![Value::Model(opaque(ModelHandle { model, amf }))])
    }
}
