//! The plugin's view of the machine, for the host's `doctor`: ONNX Runtime, CUDA, ffmpeg.

use node_abi::Diagnostic;

use super::ort_env;

fn line(subject: &str, available: bool, detail: impl Into<String>) -> Diagnostic {
    Diagnostic {
        subject: subject.into(),
        available,
        detail: detail.into().as_str().into(),
    }
}

pub fn report() -> Vec<Diagnostic> {
    let mut out = Vec::new();
    match ort_env::locate(false) {
        Ok((path, source)) => match ort_env::environment() {
            Ok((_, lib)) => out.push(line(
                "ONNX Runtime library",
                true,
                format!(
                    "{} ({}, from {})",
                    lib.version,
                    lib.path.display(),
                    lib.source
                ),
            )),
            Err(e) => out.push(line(
                "ONNX Runtime library",
                false,
                format!("found at {} ({source}) but: {e}", path.display()),
            )),
        },
        Err(e) => out.push(line("ONNX Runtime library", false, e.to_string())),
    }
    out.extend(crate::runtime::cuda_report());
    out.push(if fastvmt_video_io::ffmpeg_available() {
        line("ffmpeg (MP4/WebM/MOV in and out)", true, "found on PATH")
    } else {
        line("ffmpeg (MP4/WebM/MOV in and out)", false, "not on PATH: GIF and PNG frames still work; install ffmpeg (e.g. `apt-get install ffmpeg`) for movies")
    });
    out
}
