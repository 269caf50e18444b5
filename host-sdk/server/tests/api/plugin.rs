//! An in-process plugin with one node, `CopyFile`, that reads a file input, writes into an
//! output folder, reports progress per step and polls cancellation: enough to exercise file
//! confinement, job events, outputs and cancel through the real ABI.

use std::time::Duration;

use node_abi::{
    abi_stable::{
        prefix_type::PrefixTypeTrait,
        std_types::{RResult, RStr, RVec},
    },
    plugin::{self, into_instance, Host, Inputs, Node, NodeClass},
    Diagnostic, FileRole, InputSpec, Literal, NodeDescriptor, NodeError, NodeInstanceBox,
    PluginInfo, PluginMod, PluginModRef, Value, ValueType, SDK_VERSION,
};
use node_host::{LoadedPlugin, Registry};

const COPY_FILE: NodeClass = NodeClass {
    descriptor: || {
        NodeDescriptor::new(
            "CopyFile",
            "testing/files",
            "Copies `path` to `folder/name`.",
        )
        .inputs(vec![
            InputSpec::new("path", ValueType::String)
                .file(FileRole::InputFile)
                .build(),
            InputSpec::new("folder", ValueType::String)
                .default(Literal::String("out".into()))
                .file(FileRole::OutputFolder)
                .build(),
            InputSpec::new("name", ValueType::String)
                .default(Literal::String("copy.txt".into()))
                .build(),
            InputSpec::new("steps", ValueType::Int)
                .default(Literal::Int(0))
                .range(0.0, 10_000.0, 1.0)
                .build(),
            InputSpec::new("step_ms", ValueType::Int)
                .default(Literal::Int(0))
                .range(0.0, 1000.0, 1.0)
                .build(),
            InputSpec::new("fail", ValueType::Boolean)
                .default(Literal::Boolean(false))
                .build(),
        ])
        .outputs(&[("written", ValueType::String)])
        .output_node()
    },
    create: || into_instance(CopyFile),
};

const CLASSES: &[NodeClass] = &[COPY_FILE];

struct CopyFile;

impl Node for CopyFile {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let steps = inputs.int("steps")? as u64;
        for step in 1..=steps {
            host.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(inputs.int("step_ms")? as u64));
            host.progress(step, steps, &format!("step {step}"));
        }
        if inputs.boolean("fail")? {
            return Err(NodeError::input("fail", "asked to fail"));
        }
        let data = std::fs::read(inputs.string("path")?)
            .map_err(|e| NodeError::input("path", e.to_string()))?;
        let folder = std::path::Path::new(inputs.string("folder")?);
        std::fs::create_dir_all(folder).map_err(|e| NodeError::input("folder", e.to_string()))?;
        let out = folder.join(inputs.string("name")?);
        std::fs::write(&out, data).map_err(|e| NodeError::input("folder", e.to_string()))?;
        Ok(vec![Value::String(out.display().to_string().into())])
    }
}

extern "C" fn info() -> PluginInfo {
    PluginInfo {
        id: "org.fastvmt.server-test".into(),
        name: "server test plugin".into(),
        version: "0.0.1".into(),
        description: "API test fixture".into(),
    }
}

extern "C" fn nodes() -> RVec<NodeDescriptor> {
    plugin::describe(CLASSES)
}

extern "C" fn create_node(class_type: RStr<'_>) -> RResult<NodeInstanceBox, NodeError> {
    plugin::create(CLASSES, class_type)
}

extern "C" fn diagnostics() -> RVec<Diagnostic> {
    RVec::new()
}

pub fn registry() -> Registry {
    let module: PluginModRef = PluginMod {
        sdk_version: SDK_VERSION,
        info,
        nodes,
        create_node,
        diagnostics,
    }
    .leak_into_prefix();
    Registry::new(vec![LoadedPlugin::from_module(module, None).expect("loads")])
}
