//! Services the host hands to a running node: progress, cancellation, logging.

use abi_stable::{sabi_trait, std_types::RStr, StableAbi};

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Implemented by the host for each node run. Nodes poll [`HostServices::is_cancelled`]
/// between units of work and return `NodeError::cancelled()` promptly when it is true.
#[sabi_trait]
pub trait HostServices: Sync {
    /// Progress of the running node: `step` of `total`, with a short message.
    fn progress(&self, step: u64, total: u64, message: RStr<'_>);
    /// Whether the user asked to stop.
    fn is_cancelled(&self) -> bool;
    /// A log line attributed to the running node.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// A borrowed host-services object as passed to a node.
pub type HostRef<'a> = HostServices_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>;
