//! Model bundles: the manifest and its checks, the prompt tokenizer, RoPE tables, and the
//! ONNX Runtime sessions of a loaded DiT (shared by every node and run of the process).

pub mod bundle;
pub mod device;
pub mod dit;
pub mod rope;
pub mod tokenizer;

pub use bundle::{Bundle, BundleError, Manifest};
pub use dit::{Device, DitModel, ModelError};
