//! The temporary-then-publish protocol that keeps partial output away from
//! final names.
//!
//! A writer fills a hidden temporary (`.prefix.<pid>-<n>.tmp`) in the target
//! folder. Publishing takes the next free `prefix_NNNNN` number and places the
//! temporary there without ever replacing an existing entry: a file is
//! hard-linked (which fails if the name exists) and the temporary unlinked; a
//! folder's final name is first reserved with `create_dir` (which fails if it
//! exists) and the temporary renamed onto that empty reservation. If the
//! name was taken meanwhile, the next number is tried. The temporary is
//! removed on drop unless it was moved into place.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::VideoError;

/// How many taken names `publish` steps over before giving up.
const MAX_ATTEMPTS: u64 = 10_000;

/// A hidden temporary file or folder, removed on drop unless published.
pub(crate) struct TempOutput {
    path: PathBuf,
    is_dir: bool,
    armed: bool,
}

impl TempOutput {
    pub(crate) fn new_file(dir: &Path, prefix: &str) -> Result<TempOutput, VideoError> {
        Self::create(dir, prefix, false)
    }

    pub(crate) fn new_dir(dir: &Path, prefix: &str) -> Result<TempOutput, VideoError> {
        Self::create(dir, prefix, true)
    }

    fn create(dir: &Path, prefix: &str, is_dir: bool) -> Result<TempOutput, VideoError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{prefix}.{}-{n}.tmp", std::process::id()));
            let made = if is_dir {
                fs::create_dir(&path)
            } else {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map(drop)
            };
            match made {
                Ok(()) => {
                    return Ok(TempOutput {
                        path,
                        is_dir,
                        armed: true,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(VideoError::io(&path, "cannot create temporary output")(e)),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the temporary and moves it to `dir/prefix_NNNNN{ext}` with the
    /// next free number; returns the final path.
    pub(crate) fn publish(
        mut self,
        dir: &Path,
        prefix: &str,
        ext: &str,
    ) -> Result<PathBuf, VideoError> {
        sync(&self.path).map_err(VideoError::io(&self.path, "cannot sync temporary output"))?;
        let mut number = next_number(dir, prefix)?;
        for _ in 0..MAX_ATTEMPTS {
            let target = dir.join(format!("{prefix}_{number:05}{ext}"));
            match self.place(&target) {
                Ok(()) => {
                    // Best effort: make the new directory entry durable.
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                    return Ok(target);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    number = next_number(dir, prefix)?.max(number + 1);
                }
                Err(e) => return Err(VideoError::io(&target, "cannot move output into place")(e)),
            }
        }
        Err(VideoError::Io {
            path: dir.join(format!("{prefix}_{number:05}{ext}")),
            action: "no free output name",
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    /// Moves the temporary to `target`, failing with `AlreadyExists` if taken.
    fn place(&mut self, target: &Path) -> io::Result<()> {
        if self.is_dir {
            fs::create_dir(target)?;
            if let Err(e) = fs::rename(&self.path, target) {
                let _ = fs::remove_dir(target);
                return Err(e);
            }
            self.armed = false;
            return Ok(());
        }
        match fs::hard_link(&self.path, target) {
            // The temporary itself is unlinked on drop.
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => {
                // No hard links here (some network or FAT file systems):
                // reserve the name, then rename over the reservation.
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(target)?;
                if let Err(e) = fs::rename(&self.path, target) {
                    let _ = fs::remove_file(target);
                    return Err(e);
                }
                self.armed = false;
                Ok(())
            }
        }
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if self.armed {
            let _ = if self.is_dir {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
        }
    }
}

/// fsyncs a file, or a folder's files and the folder itself.
fn sync(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        // Directories cannot be fsynced everywhere; best effort.
        let _ = File::open(path).and_then(|d| d.sync_all());
        Ok(())
    } else {
        OpenOptions::new().write(true).open(path)?.sync_all()
    }
}

/// One more than the highest `NNNNN` among visible entries named
/// `prefix_NNNNN…` (at least five digits, not followed by another digit).
fn next_number(dir: &Path, prefix: &str) -> Result<u64, VideoError> {
    let head = format!("{prefix}_");
    let mut highest = 0u64;
    for entry in fs::read_dir(dir).map_err(VideoError::io(dir, "cannot list output folder"))? {
        let entry = entry.map_err(VideoError::io(dir, "cannot list output folder"))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&head)) else {
            continue;
        };
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits >= 5 {
            if let Ok(n) = rest[..digits].parse::<u64>() {
                highest = highest.max(n.min(u64::MAX - MAX_ATTEMPTS - 1));
            }
        }
    }
    Ok(highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_number_follows_the_highest_numbered_entry() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_number(dir.path(), "clip").unwrap(), 1);
        for name in [
            "clip_00003.gif",
            "clip_00007",
            "clip_12.gif",
            "clipx_00050.gif",
            "clip_2024notes",
            ".clip_00090.gif",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(next_number(dir.path(), "clip").unwrap(), 8);
    }

    #[test]
    fn publish_never_overwrites_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("v_00001.gif"), b"old").unwrap();
        let temp = TempOutput::new_file(dir.path(), "v").unwrap();
        fs::write(temp.path(), b"new").unwrap();
        let out = temp.publish(dir.path(), "v", ".gif").unwrap();
        assert_eq!(out, dir.path().join("v_00002.gif"));
        assert_eq!(fs::read(dir.path().join("v_00001.gif")).unwrap(), b"old");
        assert_eq!(fs::read(&out).unwrap(), b"new");

        let temp = TempOutput::new_dir(dir.path(), "v").unwrap();
        let kept = temp.path().to_path_buf();
        drop(temp);
        assert!(!kept.exists());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["v_00001.gif", "v_00002.gif"]);
    }
}
