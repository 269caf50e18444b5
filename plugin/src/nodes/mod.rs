//! Every node of the plugin, declared once.

pub mod encode_prompt;
pub mod gradient_cached_sampler;
pub mod load_reference;
pub mod local_attention_dit;
pub mod save_video;

use node_abi::{InputSpec, NodeDescriptor, NodeInstanceBox, OutputSpec, ValueType};

/// A node class: its schema and how to make an instance.
pub struct NodeClass {
    pub descriptor: fn() -> NodeDescriptor,
    pub create: fn() -> NodeInstanceBox,
}

/// The plugin's nodes, in palette order.
pub const ALL: &[NodeClass] = &[
    load_reference::CLASS,
    local_attention_dit::CLASS,
    encode_prompt::CLASS,
    gradient_cached_sampler::CLASS,
    save_video::CLASS,
];

/// Assembles a descriptor from its parts.
#[allow(clippy::too_many_arguments)]
pub fn descriptor(
    class_type: &str,
    version: u32,
    display_name: &str,
    category: &str,
    description: &str,
    inputs: Vec<InputSpec>,
    outputs: &[(&str, ValueType)],
    is_output: bool,
) -> NodeDescriptor {
    NodeDescriptor {
        class_type: class_type.into(),
        version,
        display_name: display_name.into(),
        category: category.into(),
        description: description.into(),
        inputs: inputs.into(),
        outputs: outputs
            .iter()
            .map(|(name, ty)| OutputSpec {
                name: (*name).into(),
                ty: *ty,
            })
            .collect(),
        is_output,
    }
}

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
