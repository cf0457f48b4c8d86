//! Daemonizing for the original command line (no `-D`): fork, setsid, fork again,
//! `/` as working directory, standard input and outputs on `/dev/null`. Done
//! before any thread or the runtime exists.
//!
//! Unlike the original, the command does not return at once: the first process
//! waits on a pipe until the daemon reports that it is ready (exit 0, the daemon's
//! pid on standard output) or why it failed (the error on standard error, exit 1),
//! so a broken start-up is visible to whoever ran the command.

use nix::unistd::{fork, ForkResult};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The daemon's end of the start-up pipe.
pub struct Notifier(Mutex<Option<File>>);

impl Notifier {
    /// Start-up succeeded (only the first report counts).
    pub fn ready(&self) {
        self.send(b"R");
    }

    /// Start-up failed with `msg`.
    pub fn failed(&self, msg: &str) {
        self.send(format!("E{msg}").as_bytes());
    }

    fn send(&self, what: &[u8]) {
        if let Some(mut f) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = f.write_all(what);
        }
    }
}

/// Detach. Returns in the daemon only; the calling process waits for the
/// daemon's report and exits with the result.
pub fn daemonize() -> std::io::Result<Notifier> {
    let (read, write) = nix::unistd::pipe()?;
    // SAFETY: no other thread exists yet (main calls this before starting any).
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write);
            let _ = nix::sys::wait::waitpid(child, None);
            std::process::exit(wait_for_report(read));
        }
        ForkResult::Child => {}
    }
    drop(read);
    nix::unistd::setsid()?;
    // Fork again: the daemon is no session leader and never gets a terminal.
    // SAFETY: still single-threaded.
    if let ForkResult::Parent { .. } = unsafe { fork() }? {
        // SAFETY: leave without running destructors or flushing the parent's buffers.
        unsafe { libc::_exit(0) };
    }
    std::env::set_current_dir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..=2 {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    Ok(Notifier(Mutex::new(Some(File::from(write)))))
}

/// In the first process: read the daemon's report; returns the exit code.
fn wait_for_report(read: OwnedFd) -> i32 {
    let mut buf = Vec::new();
    let _ = File::from(read).read_to_end(&mut buf);
    match buf.split_first() {
        Some((b'R', _)) => 0,
        Some((b'E', msg)) => {
            eprintln!("honeytrap: {}", String::from_utf8_lossy(msg));
            1
        }
        _ => {
            eprintln!("honeytrap: the daemon exited during start-up (see its log file)");
            1
        }
    }
}

/// Reports ready when honeytrap logs its `ready` line (after the monitor started).
pub struct ReadyLayer(pub std::sync::Arc<Notifier>);

struct IsReady(bool);

impl Visit for IsReady {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && value == "ready" {
            self.0 = true;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == "ready" {
            self.0 = true;
        }
    }
}

impl<S: Subscriber> Layer<S> for ReadyLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("honeytrap") {
            return;
        }
        let mut r = IsReady(false);
        event.record(&mut r);
        if r.0 {
            self.0.ready();
        }
    }
}
