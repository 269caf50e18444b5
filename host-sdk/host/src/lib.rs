//! A host for node plugins.
//!
//! - [`loader`]: finds plugin libraries, loads them with `abi_stable`'s layout checks and
//!   refuses those built for another SDK version.
//! - [`registry`]: the node classes of all loaded plugins, by `class_type`.
//! - [`graph`]: saved graphs in the shape of ComfyUI's API prompt; load and save round-trip.
//! - [`validate`]: every problem of a graph against the registry, in one pass.
//! - [`executor`]: runs what the output nodes need, in dependency order, caching node
//!   outputs across runs, with progress events and cancellation.

pub mod executor;
pub mod graph;
pub mod loader;
pub mod registry;
pub mod schema_json;
pub mod validate;

pub use executor::{CancelToken, Event, ExecError, Executor, RunReport};
pub use graph::{json_from_slice_unique, Graph, GraphError, InputValue, NodeEntry};
pub use loader::{LoadError, LoadedPlugin};
pub use registry::Registry;
pub use validate::{Problem, ProblemKind};
