//! The stable contract between a node host and its plugins.
//!
//! A plugin is a `cdylib` exporting a [`PluginModRef`] root module (see [`export_plugin!`]).
//! The host loads it with `abi_stable`, which checks the layout of every type reachable from
//! the root module before anything runs; the host then checks [`PluginMod::sdk_version`]
//! against its own [`SDK_VERSION`] and refuses a plugin built for another major version
//! (or a newer minor one), naming both versions.
//!
//! What lives here: the root module, node schemas ([`schema`]), the values that flow along
//! links ([`value`]), the services a host hands to a running node ([`host`]), errors
//! ([`error`]), and helpers for plugin authors ([`plugin`]) that keep panics on the plugin's
//! side of the boundary. What does not: graph files, validation and execution (the
//! `node-host` crate), and any particular node (plugins).

// sabi_trait expands to impls of foreign traits inside the generated modules.
#![allow(non_local_definitions)]

pub mod error;
pub mod host;
pub mod plugin;
pub mod schema;
pub mod value;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString, RVec},
    StableAbi,
};

pub use error::{NodeError, NodeErrorKind};
pub use host::{HostRef, HostServices, HostServices_TO, LogLevel};
pub use schema::{FileRole, InputKind, InputSpec, Literal, NodeDescriptor, OutputSpec, ValueType};
pub use value::{Latent, Opaque, OpaqueObject, Opaque_TO, Tensor, Value, Video};

/// Re-exported so plugins use the exact `abi_stable` the contract was built with.
pub use abi_stable;

/// Version of this contract. Bump `minor` when appending root-module fields (old plugins keep
/// loading); bump `major` for anything else, which makes hosts refuse older plugins.
/// 2.0: `InputSpec::file` ([`FileRole`]) tells hosts which inputs are paths.
pub const SDK_VERSION: SdkVersion = SdkVersion { major: 2, minor: 0 };

/// A contract version, stamped into every plugin at build time by [`export_plugin!`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkVersion {
    pub major: u32,
    pub minor: u32,
}

impl SdkVersion {
    /// Whether a host speaking `self` can load a plugin built against `plugin`.
    pub fn can_load(self, plugin: SdkVersion) -> bool {
        self.major == plugin.major && plugin.minor <= self.minor
    }
}

impl std::fmt::Display for SdkVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Who a plugin is. `id` is reverse-domain (`org.example.myplugin`) and stable across
/// releases; `name` is what users see.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginInfo {
    pub id: RString,
    pub name: RString,
    pub version: RString,
    pub description: RString,
}

/// One line of a plugin's self-check, shown by the host's `doctor`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Diagnostic {
    /// What was checked, e.g. "ONNX Runtime library".
    pub subject: RString,
    pub available: bool,
    /// The version or path found, or why not.
    pub detail: RString,
}

/// A node instance created by a plugin; the host calls `run` once per execution.
pub type NodeInstanceBox = plugin::NodeInstance_TO<'static, abi_stable::std_types::RBox<()>>;

/// The root module a plugin exports. Fields after `last_prefix_field` may be appended by
/// later SDK minor versions; a host reads them only when the plugin has them.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The contract version the plugin was built against.
    pub sdk_version: SdkVersion,
    /// Identity and version of the plugin.
    pub info: extern "C" fn() -> PluginInfo,
    /// Every node the plugin provides.
    pub nodes: extern "C" fn() -> RVec<NodeDescriptor>,
    /// Creates an instance of the node `class_type`.
    pub create_node: extern "C" fn(class_type: RStr<'_>) -> RResult<NodeInstanceBox, NodeError>,
    /// The plugin's view of the machine (libraries, devices), for the host's `doctor`.
    #[sabi(last_prefix_field)]
    pub diagnostics: extern "C" fn() -> RVec<Diagnostic>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "node_plugin";
    const NAME: &'static str = "node plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Exports a plugin's root module. Stamps [`SDK_VERSION`] so hosts can check compatibility.
///
/// ```ignore
/// node_abi::export_plugin!(info, nodes, create_node, diagnostics);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($info:path, $nodes:path, $create:path, $diagnostics:path) => {
        #[$crate::abi_stable::export_root_module]
        pub fn __node_plugin_root_module() -> $crate::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::PluginMod {
                sdk_version: $crate::SDK_VERSION,
                info: $info,
                nodes: $nodes,
                create_node: $create,
                diagnostics: $diagnostics,
            }
            .leak_into_prefix()
        }
    };
}
