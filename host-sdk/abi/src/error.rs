//! The error a node returns across the boundary.

use abi_stable::{
    std_types::{ROption, RString},
    StableAbi,
};

/// What kind of failure a node reports; the host uses it to decide what to tell the user
/// (e.g. a cancellation is not an error worth a stack of messages).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeErrorKind {
    /// An input value is wrong (the message says which and why).
    InvalidInput,
    /// A file could not be read or written.
    Io,
    /// A model could not be loaded or run.
    Model,
    /// The device ran out of memory.
    OutOfMemory,
    /// The host asked the node to stop.
    Cancelled,
    /// The node panicked; the panic was caught on the plugin's side.
    Panic,
    /// Anything else.
    Internal,
}

/// A node failure: its kind, the input it concerns (if any) and a one-line message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct NodeError {
    pub kind: NodeErrorKind,
    pub input: ROption<RString>,
    pub message: RString,
}

impl NodeError {
    pub fn new(kind: NodeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            input: ROption::RNone,
            message: RString::from(message.into()),
        }
    }

    /// An error about one input.
    pub fn input(name: &str, message: impl Into<String>) -> Self {
        Self {
            kind: NodeErrorKind::InvalidInput,
            input: ROption::RSome(name.into()),
            message: RString::from(message.into()),
        }
    }

    pub fn cancelled() -> Self {
        Self::new(NodeErrorKind::Cancelled, "cancelled")
    }

    pub fn with_input(mut self, name: &str) -> Self {
        self.input = ROption::RSome(name.into());
        self
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.input {
            ROption::RSome(input) => write!(f, "input '{input}': {}", self.message),
            ROption::RNone => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for NodeError {}
