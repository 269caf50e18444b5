//! Running the `ffmpeg` and `ffprobe` programs: lookup (overridable with the
//! `FASTVMT_FFMPEG` / `FASTVMT_FFPROBE` environment variables), spawning
//! without a shell, stderr capture, and error mapping.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command};
use std::thread::JoinHandle;

use crate::VideoError;

/// Which of the two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tool {
    Ffmpeg,
    Ffprobe,
}

impl Tool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "ffmpeg",
            Tool::Ffprobe => "ffprobe",
        }
    }

    /// The program to run: the environment override, else the name looked up on PATH.
    pub(crate) fn program(self) -> OsString {
        let var = match self {
            Tool::Ffmpeg => "FASTVMT_FFMPEG",
            Tool::Ffprobe => "FASTVMT_FFPROBE",
        };
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.name().into())
    }

    /// A command for this tool with the flags every call wants.
    pub(crate) fn command(self) -> Command {
        let mut cmd = Command::new(self.program());
        cmd.args(["-hide_banner", "-loglevel", "error"]);
        if self == Tool::Ffmpeg {
            cmd.arg("-nostdin");
        }
        cmd
    }
}

/// Whether `ffmpeg` can be started (for callers that want to offer MP4 only when it works).
pub fn ffmpeg_available() -> bool {
    Tool::Ffmpeg
        .command()
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Spawns `cmd`; a missing program becomes [`VideoError::FfmpegMissing`] naming `path`.
pub(crate) fn spawn(cmd: &mut Command, tool: Tool, path: &Path) -> Result<Child, VideoError> {
    cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => VideoError::FfmpegMissing {
            path: path.to_path_buf(),
            tool: tool.name(),
        },
        _ => VideoError::Io {
            path: path.to_path_buf(),
            action: "cannot start ffmpeg",
            source: e,
        },
    })
}

/// `path` as an ffmpeg URL that can only mean a local file: absolute and
/// behind the `file:` protocol, so names like `-x.mp4` or `http:a.mp4` are
/// never read as options or other protocols.
pub(crate) fn file_url(path: &Path) -> Result<OsString, VideoError> {
    let abs: PathBuf =
        std::path::absolute(path).map_err(VideoError::io(path, "cannot resolve path"))?;
    let mut url = OsString::from("file:");
    url.push(abs.as_os_str());
    Ok(url)
}

/// Reads a child's stderr on a thread (so the pipe never fills), keeping the last 16 KiB.
pub(crate) struct StderrTail(JoinHandle<Vec<u8>>);

impl StderrTail {
    pub(crate) fn start(stderr: ChildStderr) -> StderrTail {
        StderrTail(std::thread::spawn(move || {
            const KEEP: usize = 16 * 1024;
            let mut stderr = stderr;
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * KEEP {
                    tail.drain(..tail.len() - KEEP);
                }
            }
            tail
        }))
    }

    /// The last non-empty line written, or `fallback`.
    pub(crate) fn last_line(self, fallback: &str) -> String {
        let bytes = self.0.join().unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map_or_else(|| fallback.to_string(), str::to_string)
    }
}

/// The failure of `tool` on `path`, from its exit status and stderr.
pub(crate) fn failure(
    tool: Tool,
    path: &Path,
    status: std::process::ExitStatus,
    stderr: StderrTail,
) -> VideoError {
    VideoError::Ffmpeg {
        path: path.to_path_buf(),
        tool: tool.name(),
        message: stderr.last_line(&format!("exited with {status} and no message")),
    }
}

/// A running child that is killed and reaped if dropped before [`ChildGuard::wait`].
pub(crate) struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub(crate) fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited")
    }

    /// Waits for a normal exit.
    pub(crate) fn wait(mut self) -> io::Result<std::process::ExitStatus> {
        self.0.take().expect("child present until waited").wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_ffmpeg_and_how_to_install() {
        let mut cmd = Command::new("/nonexistent/fastvmt-no-such-ffmpeg");
        let err = spawn(&mut cmd, Tool::Ffmpeg, Path::new("clip.mp4")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VideoError::FfmpegMissing { .. }), "{err:?}");
        assert!(
            msg.contains("clip.mp4")
                && msg.contains("ffmpeg")
                && msg.contains("apt-get install ffmpeg"),
            "{msg}"
        );
    }

    #[test]
    fn file_url_is_absolute_and_protocol_pinned() {
        let url = file_url(Path::new("-weird name.mp4")).unwrap();
        let url = url.to_string_lossy();
        assert!(url.starts_with("file:/"), "{url}");
        assert!(url.ends_with("/-weird name.mp4"), "{url}");
    }
}
