//! The pid file of the original command line (`-P`, or the configuration's
//! `pidfile`): created exclusively (O_EXCL), locked (flock) for as long as the
//! process runs, holding the pid and a newline, and removed at exit.
//!
//! A file left behind by a process that died (nobody holds its lock, and its pid
//! is not a running honeytrap) is stale: it is reported and replaced, where the
//! original refused to start until someone deleted it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// A pid file this process created and holds locked; removed when dropped.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    file: File,
}

/// Why the pid file could not be taken.
#[derive(Debug)]
pub enum PidError {
    /// Another running process holds it.
    Running { path: PathBuf, pid: Option<u32> },
    Io {
        path: PathBuf,
        what: &'static str,
        err: std::io::Error,
    },
}

impl std::fmt::Display for PidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidError::Running {
                path,
                pid: Some(pid),
            } => write!(
                f,
                "pid file {} is held by a running honeytrap (pid {pid}); stop it first",
                path.display()
            ),
            PidError::Running { path, pid: None } => write!(
                f,
                "pid file {} is locked by a running process; stop it first",
                path.display()
            ),
            PidError::Io { path, what, err } => {
                write!(f, "pid file {}: {what}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for PidError {}

/// Try to take an exclusive, non-blocking flock on `file`.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The pid written in a pid file, if it is one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Whether `pid` is a running process other than us whose name says honeytrap
/// (an original honeytrap locks with lockf, which flock does not see).
fn honeytrap_running(pid: u32) -> bool {
    if pid == std::process::id() || pid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().contains("honeytrap"))
        .unwrap_or(false)
}

impl Pidfile {
    /// Create `path` for this process. Returns the pid file and, when a stale one
    /// was replaced, a sentence saying so (for the log, which may not exist yet).
    pub fn create(path: &Path) -> Result<(Pidfile, Option<String>), PidError> {
        let io = |what, err| PidError::Io {
            path: path.to_path_buf(),
            what,
            err,
        };
        let mut note = None;
        // A few rounds: another process may be replacing the same stale file.
        for _ in 0..4 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
            {
                Ok(file) => {
                    if !try_lock(&file).map_err(|e| io("locking", e))? {
                        return Err(PidError::Running {
                            path: path.to_path_buf(),
                            pid: None,
                        });
                    }
                    let mut p = Pidfile {
                        path: path.to_path_buf(),
                        file,
                    };
                    if !p.still_ours() {
                        // Replaced under us by a concurrent start: do not remove it.
                        p.path = PathBuf::new();
                        continue;
                    }
                    writeln!(p.file, "{}", std::process::id()).map_err(|e| io("writing", e))?;
                    return Ok((p, note));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some(n) = Self::clear_stale(path)? {
                        note = Some(n);
                    }
                }
                Err(e) => return Err(io("creating", e)),
            }
        }
        Err(io(
            "creating",
            std::io::Error::other("replaced by another process again and again"),
        ))
    }

    /// An existing pid file: refuse if it is alive, remove it if it is stale.
    /// Returns the note about the stale file (None if it vanished meanwhile).
    fn clear_stale(path: &Path) -> Result<Option<String>, PidError> {
        let mut old = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(PidError::Io {
                    path: path.to_path_buf(),
                    what: "exists and cannot be opened",
                    err: e,
                })
            }
        };
        let pid = read_pid(&mut old);
        let locked = !try_lock(&old).map_err(|e| PidError::Io {
            path: path.to_path_buf(),
            what: "locking the existing file",
            err: e,
        })?;
        if locked || pid.is_some_and(honeytrap_running) {
            return Err(PidError::Running {
                path: path.to_path_buf(),
                pid,
            });
        }
        // Holding the old file's lock: a concurrent start sees it as alive.
        std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| PidError::Io {
                path: path.to_path_buf(),
                what: "removing the stale file",
                err: e,
            })?;
        Ok(Some(match pid {
            Some(pid) => format!(
                "replaced the stale pid file {} (pid {pid} is not running)",
                path.display()
            ),
            None => format!(
                "replaced the stale pid file {} (no pid in it, not locked)",
                path.display()
            ),
        }))
    }

    /// Whether the path still names the file we hold.
    fn still_ours(&self) -> bool {
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() || !self.still_ours() {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            // After dropping root the directory may not be ours to change.
            tracing::warn!("cannot remove the pid file {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_locked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("honeytrap.pid");
        let (p, note) = Pidfile::create(&path).unwrap();
        assert!(note.is_none());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Another open file description cannot lock it: a second start is refused.
        let other = File::open(&path).unwrap();
        assert!(!try_lock(&other).unwrap());
        let e = Pidfile::create(&path).unwrap_err();
        assert!(matches!(e, PidError::Running { pid: Some(_), .. }), "{e}");
        assert!(e.to_string().contains("stop it first"));
        drop(p);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("honeytrap.pid");
        // A pid that cannot be running (above the kernel's pid_max limit).
        std::fs::write(&path, "4194305\n").unwrap();
        let (p, note) = Pidfile::create(&path).unwrap();
        let note = note.expect("stale note");
        assert!(note.contains("stale") && note.contains("4194305"), "{note}");
        assert_eq!(
            std::fs::read_to_string(p.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Garbage, or our own pid (a container restarted with the same pid), too.
        drop(p);
        std::fs::write(&path, "garbage").unwrap();
        assert!(Pidfile::create(&path).unwrap().1.is_some());
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert!(Pidfile::create(&path).unwrap().1.is_some());
    }

    #[test]
    fn an_unwritable_place_is_an_error() {
        let e = Pidfile::create(Path::new("/nonexistent-dir/honeytrap.pid")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent-dir/honeytrap.pid"),
            "{e}"
        );
    }
}
