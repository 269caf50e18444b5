//! Node schemas as JSON, for `nodes --json` and editors.

use node_abi::{InputKind, Literal, NodeDescriptor};
use serde_json::{json, Value as Json};

use crate::registry::Registry;

fn literal(l: &Literal) -> Json {
    match l {
        Literal::Int(i) => json!(i),
        Literal::Float(f) => json!(f),
        Literal::String(s) => json!(s.as_str()),
        Literal::Boolean(b) => json!(b),
    }
}

pub fn descriptor_json(d: &NodeDescriptor, plugin_id: &str) -> Json {
    let inputs: Vec<Json> = d
        .inputs
        .iter()
        .map(|i| {
            json!({
                "name": i.name.as_str(),
                "type": i.ty.name(),
                "required": i.required,
                "default": i.default.as_ref().map(literal).into_option(),
                "min": i.min.into_option(),
                "max": i.max.into_option(),
                "step": i.step.into_option(),
                "choices": i.choices.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "tooltip": i.tooltip.as_str(),
                "accepts": match i.accepts { InputKind::Link => "link", InputKind::Constant => "constant", InputKind::Either => "either" },
                "file": i.file.name(),
            })
        })
        .collect();
    let outputs: Vec<Json> = d
        .outputs
        .iter()
        .map(|o| json!({"name": o.name.as_str(), "type": o.ty.name()}))
        .collect();
    json!({
        "class_type": d.class_type.as_str(),
        "version": d.version,
        "display_name": d.display_name.as_str(),
        "category": d.category.as_str(),
        "description": d.description.as_str(),
        "plugin": plugin_id,
        "output_node": d.is_output,
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// Every node class of the registry, keyed by class_type.
pub fn registry_json(registry: &Registry) -> Json {
    let map: serde_json::Map<String, Json> = registry
        .classes()
        .into_iter()
        .map(|c| {
            (
                c.descriptor.class_type.to_string(),
                descriptor_json(&c.descriptor, &c.plugin.info.id),
            )
        })
        .collect();
    Json::Object(map)
}
