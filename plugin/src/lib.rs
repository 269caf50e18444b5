//! The FastVMT node plugin.
//!
//! Nodes: `LoadReference` and `SaveVideo` (video in and out), `LocalAttentionDiT` (loads a
//! model bundle), `EncodePrompt` (text → conditioning) and `GradientCachedSampler` (motion
//! transfer: DiTFlow / FastVMT / adaptive guidance). The node list is declared once in
//! [`nodes::ALL`]; the root module below only exposes it. Every entry point catches panics,
//! so nothing unwinds into the host.

// sabi_trait expands to impls of foreign traits inside the generated modules.
#![allow(non_local_definitions)]

pub mod model;
pub mod nodes;
pub mod runtime;
pub mod sampler;

use node_abi::{
    abi_stable::std_types::{RResult, RStr, RVec},
    plugin, Diagnostic, NodeDescriptor, NodeError, NodeInstanceBox, PluginInfo,
};

/// Reverse-domain id of this plugin.
pub const PLUGIN_ID: &str = "org.fastvmt.nodes";

extern "C" fn info() -> PluginInfo {
    PluginInfo {
        id: PLUGIN_ID.into(),
        name: "FastVMT motion transfer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "Video motion transfer with a DiT: local-window attention motion flow and gradient caching.".into(),
    }
}

extern "C" fn node_list() -> RVec<NodeDescriptor> {
    plugin::describe(nodes::ALL)
}

extern "C" fn create_node(class_type: RStr<'_>) -> RResult<NodeInstanceBox, NodeError> {
    plugin::create(nodes::ALL, class_type)
}

extern "C" fn diagnostics() -> RVec<Diagnostic> {
    match std::panic::catch_unwind(runtime::diagnostics::report) {
        Ok(lines) => lines.into(),
        Err(_) => RVec::from(vec![Diagnostic {
            subject: "self-check".into(),
            available: false,
            detail: "the plugin's self-check panicked".into(),
        }]),
    }
}

node_abi::export_plugin!(info, node_list, create_node, diagnostics);
