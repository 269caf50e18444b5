//! An in-process plugin with a small set of nodes covering every input kind, and helpers to
//! build graphs from JSON.

use std::path::Path;

use node_abi::{
    abi_stable::{
        prefix_type::PrefixTypeTrait,
        std_types::{RResult, RStr, RVec},
    },
    Diagnostic, InputKind, InputSpec, Literal, NodeDescriptor, NodeError, NodeErrorKind,
    NodeInstanceBox, PluginInfo, PluginMod, PluginModRef, SdkVersion, ValueType, SDK_VERSION,
};
use node_host::{Graph, LoadedPlugin, Registry};
use serde_json::Value as Json;

pub const PLUGIN_ID: &str = "org.fastvmt.in-process-test";

fn node(
    class_type: &str,
    inputs: Vec<InputSpec>,
    outputs: &[(&str, ValueType)],
    is_output: bool,
) -> NodeDescriptor {
    let d = NodeDescriptor::new(class_type, "test", &format!("{class_type} test node"))
        .inputs(inputs)
        .outputs(outputs);
    if is_output {
        d.output_node()
    } else {
        d
    }
}

/// `Num` (INT widget → INT), `Text` (STRING → STRING), `Clip` (→ VIDEO), `Pass` (INT link →
/// INT) and the output node `Sink`, whose inputs cover links, ranges, choices, booleans and
/// constant-only widgets.
pub fn descriptors() -> Vec<NodeDescriptor> {
    vec![
        node(
            "Num",
            vec![InputSpec::new("value", ValueType::Int)
                .default(Literal::Int(0))
                .range(-100.0, 100.0, 1.0)
                .build()],
            &[("n", ValueType::Int)],
            false,
        ),
        node(
            "Text",
            vec![InputSpec::new("text", ValueType::String)
                .default(Literal::String("".into()))
                .build()],
            &[("s", ValueType::String)],
            false,
        ),
        node(
            "Clip",
            vec![InputSpec::new("frames", ValueType::Int)
                .default(Literal::Int(8))
                .range(1.0, 1000.0, 1.0)
                .build()],
            &[("video", ValueType::Video)],
            false,
        ),
        node(
            "Pass",
            vec![InputSpec::new("x", ValueType::Int)
                .accepts(InputKind::Link)
                .build()],
            &[("n", ValueType::Int)],
            false,
        ),
        node(
            "Sink",
            vec![
                InputSpec::new("video", ValueType::Video).build(),
                InputSpec::new("count", ValueType::Int)
                    .range(1.0, 10.0, 1.0)
                    .build(),
                InputSpec::new("gain", ValueType::Float)
                    .default(Literal::Float(1.0))
                    .range(0.0, 2.0, 0.01)
                    .build(),
                InputSpec::new("mode", ValueType::Choice)
                    .choices(&["fast", "slow"])
                    .default(Literal::String("fast".into()))
                    .build(),
                InputSpec::new("loop", ValueType::Boolean)
                    .default(Literal::Boolean(false))
                    .build(),
                InputSpec::new("label", ValueType::String)
                    .optional()
                    .default(Literal::String("".into()))
                    .accepts(InputKind::Constant)
                    .build(),
                InputSpec::new("offset", ValueType::Int)
                    .optional()
                    .default(Literal::Int(0))
                    .build(),
            ],
            &[],
            true,
        ),
    ]
}

extern "C" fn info() -> PluginInfo {
    PluginInfo {
        id: PLUGIN_ID.into(),
        name: "in-process test plugin".into(),
        version: "0.0.1".into(),
        description: "validation fixture".into(),
    }
}

extern "C" fn nodes() -> RVec<NodeDescriptor> {
    descriptors().into()
}

extern "C" fn create_node(class_type: RStr<'_>) -> RResult<NodeInstanceBox, NodeError> {
    RResult::RErr(NodeError::new(
        NodeErrorKind::Internal,
        format!("{class_type}: the validation fixture runs nothing"),
    ))
}

extern "C" fn diagnostics() -> RVec<Diagnostic> {
    RVec::from(vec![Diagnostic {
        subject: "fixture".into(),
        available: true,
        detail: "in-process".into(),
    }])
}

/// A root module claiming `sdk`.
pub fn module(sdk: SdkVersion) -> PluginModRef {
    PluginMod {
        sdk_version: sdk,
        info,
        nodes,
        create_node,
        diagnostics,
    }
    .leak_into_prefix()
}

pub fn registry() -> Registry {
    let plugin = LoadedPlugin::from_module(module(SDK_VERSION), None)
        .expect("the current SDK version loads");
    Registry::new(vec![plugin])
}

pub fn graph(json: Json) -> Graph {
    Graph::from_json(json, Path::new("test.json")).expect("test graphs are well-formed")
}
