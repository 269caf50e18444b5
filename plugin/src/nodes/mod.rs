//! Every node of the plugin, declared once.

pub mod encode_prompt;
pub mod gradient_cached_sampler;
pub mod load_reference;
pub mod local_attention_dit;
pub mod save_video;

pub use node_abi::plugin::NodeClass;

/// The plugin's nodes, in palette order.
pub const ALL: &[NodeClass] = &[
    load_reference::CLASS,
    local_attention_dit::CLASS,
    encode_prompt::CLASS,
    gradient_cached_sampler::CLASS,
    save_video::CLASS,
];

/// Maps a video-io error to a node error naming the input it concerns.
pub fn video_error(input: &str, e: fastvmt_video_io::VideoError) -> node_abi::NodeError {
    use fastvmt_video_io::VideoError as E;
    use node_abi::{NodeError, NodeErrorKind};
    match e {
        E::Cancelled => NodeError::cancelled(),
        E::Io { .. } | E::FfmpegMissing { .. } | E::Ffmpeg { .. } => {
            NodeError::new(NodeErrorKind::Io, e.to_string()).with_input(input)
        }
        other => NodeError::input(input, other.to_string()),
    }
}
