//! `SaveVideo`: writes a VIDEO as an animated GIF, PNG frames or MP4, atomically and under a
//! new numbered name (never overwriting).

use std::path::Path;

use fastvmt_video_io::{save_video, Frames, VideoFormat};
use node_abi::{
    plugin::{into_instance, Host, Inputs, Node},
    InputSpec, Literal, NodeDescriptor, NodeError, Value, ValueType,
};

use super::{video_error, NodeClass};

pub const CLASS: NodeClass = NodeClass {
    descriptor: schema,
    create: || into_instance(SaveVideo),
};

fn schema() -> NodeDescriptor {
    NodeDescriptor::new("SaveVideo", "FastVMT/video", "Writes a video as an animated GIF, PNG frames or MP4 (needs ffmpeg) under the next free numbered name; an interrupted save leaves no partial file.")
        .display_name("Save Video")
        .version(1)
        .inputs(vec![
            InputSpec::new("video", ValueType::Video).build(),
            InputSpec::new("folder", ValueType::String).default(Literal::String("output".into())).tooltip("output folder (created if missing)").file(node_abi::FileRole::OutputFolder).build(),
            InputSpec::new("prefix", ValueType::String).default(Literal::String("fastvmt".into())).tooltip("file name prefix; files are named prefix_00001.gif, prefix_00002.gif, …").build(),
            InputSpec::new("format", ValueType::Choice).choices(&["gif", "png", "mp4"]).default(Literal::String("gif".into())).build(),
        ])
        .outputs(&[("path", ValueType::String)])
        .output_node()
}

struct SaveVideo;

impl Node for SaveVideo {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let video = inputs.video("video")?;
        let folder = inputs.string("folder")?;
        let prefix = inputs.string("prefix")?;
        let format = match inputs.string("format")? {
            "png" => VideoFormat::PngFrames,
            "mp4" => VideoFormat::Mp4,
            _ => VideoFormat::Gif,
        };
        if video.channels != 3 {
            return Err(NodeError::input(
                "video",
                format!("has {} channels; SaveVideo writes RGB (3)", video.channels),
            ));
        }
        let frames = Frames::new(
            video.data.to_vec(),
            video.frames as usize,
            video.height as usize,
            video.width as usize,
            video.fps,
        )
        .map_err(|e| video_error("video", e))?;
        host.progress(0, 1, "writing");
        let written = save_video(&frames, Path::new(folder), prefix, format, &|| {
            host.is_cancelled()
        })
        .map_err(|e| match e {
            fastvmt_video_io::VideoError::InvalidPrefix { .. } => video_error("prefix", e),
            other => video_error("folder", other),
        })?;
        host.progress(1, 1, "written");
        host.info(&format!("saved {}", written.display()));
        Ok(vec![Value::String(written.display().to_string().into())])
    }
}
