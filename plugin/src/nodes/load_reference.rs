//! `LoadReference`: a reference video from a GIF, a movie (through ffmpeg) or a folder of
//! PNG/JPEG frames.

use std::path::Path;

use fastvmt_video_io::{load_video, Fit, LoadOptions};
use node_abi::{
    abi_stable::std_types::{RArc, RVec},
    plugin::{into_instance, Host, Inputs, Node},
    InputSpec, Literal, NodeDescriptor, NodeError, Value, ValueType, Video,
};

use super::{video_error, NodeClass};

pub const CLASS: NodeClass = NodeClass {
    descriptor: schema,
    create: || into_instance(LoadReference),
};

fn schema() -> NodeDescriptor {
    NodeDescriptor::new("LoadReference", "FastVMT/video", "Loads the video whose motion is transferred: an animated GIF, an MP4/WebM/MOV (needs ffmpeg) or a folder of PNG/JPEG frames.")
        .display_name("Load Reference Video")
        .version(1)
        .inputs(vec![
            InputSpec::new("path", ValueType::String)
                .tooltip("GIF, MP4/WebM/MOV/MKV, a still image, or a folder of PNG/JPEG frames (relative paths are from the working folder)")
                .file(node_abi::FileRole::InputFile)
                .build(),
            InputSpec::new("start_frame", ValueType::Int).default(Literal::Int(0)).range(0.0, 1.0e6, 1.0).tooltip("first frame kept (0-based)").build(),
            InputSpec::new("frame_count", ValueType::Int).default(Literal::Int(0)).range(0.0, 10000.0, 1.0).tooltip("frames kept after start and stride; 0 keeps all").build(),
            InputSpec::new("stride", ValueType::Int).default(Literal::Int(1)).range(1.0, 1000.0, 1.0).tooltip("keep every n-th frame").build(),
            InputSpec::new("width", ValueType::Int).default(Literal::Int(0)).range(0.0, 16384.0, 1.0).tooltip("resize to this width; 0 keeps the source size (set both width and height)").build(),
            InputSpec::new("height", ValueType::Int).default(Literal::Int(0)).range(0.0, 16384.0, 1.0).tooltip("resize to this height; 0 keeps the source size").build(),
            InputSpec::new("fit", ValueType::Choice).choices(&["stretch", "crop"]).default(Literal::String("crop".into())).tooltip("when resizing to another aspect ratio: stretch, or crop the centre").build(),
            InputSpec::new("fps", ValueType::Float).default(Literal::Float(0.0)).range(0.0, 240.0, 0.5).tooltip("frame rate of the result; 0 takes the source's (divided by stride)").build(),
        ])
        .outputs(&[("video", ValueType::Video)])
}

struct LoadReference;

impl Node for LoadReference {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let path = inputs.string("path")?;
        if path.trim().is_empty() {
            return Err(NodeError::input(
                "path",
                "is empty: give a GIF, movie or frame folder",
            ));
        }
        let (width, height) = (inputs.int("width")?, inputs.int("height")?);
        let size = match (width, height) {
            (0, 0) => None,
            (w, h) if w > 0 && h > 0 => Some((w as usize, h as usize)),
            _ => {
                return Err(NodeError::input(
                    "width",
                    format!("set both width and height, or neither (got {width}x{height})"),
                ))
            }
        };
        let count = inputs.int("frame_count")?;
        let fps = inputs.float("fps")?;
        let opts = LoadOptions {
            start: inputs.int("start_frame")? as usize,
            max_frames: (count > 0).then_some(count as usize),
            stride: inputs.int("stride")?.max(1) as usize,
            size,
            fit: if inputs.string("fit")? == "stretch" {
                Fit::Stretch
            } else {
                Fit::Crop
            },
            fps: (fps > 0.0).then_some(fps as f32),
        };
        host.progress(0, 1, "reading");
        let frames = load_video(Path::new(path), &opts).map_err(|e| video_error("path", e))?;
        host.progress(1, 1, "read");
        host.info(&format!(
            "{path}: {} frames of {}x{} at {} fps",
            frames.frames, frames.width, frames.height, frames.fps
        ));
        let video = Video {
            frames: frames.frames as u32,
            height: frames.height as u32,
            width: frames.width as u32,
            channels: 3,
            fps: frames.fps,
            data: RVec::from(frames.data),
        };
        Ok(vec![Value::Video(RArc::new(video))])
    }
}
