//! The main log file of the original command line (`-L`, or the configuration's
//! `logfile`), written by a tracing layer in the original's line layout:
//!
//! ```text
//! [2026-11-27 18:04:05]  message key=value ...
//! [2026-11-27 18:04:05]  12345  message key=value ...      (at -t 6 only)
//! ```
//!
//! local time as `%F %T` in brackets, two spaces, at level 6 (the original's
//! LOG_DEBUG) the pid right-aligned in five columns and two spaces, then the text.
//! Errors and warnings start with `Error - ` / `Warning - ` as the original's own
//! messages did. Lines are capped at the original's 4068 bytes but always end in
//! a newline. In the foreground (`-D`) every line also goes to standard output,
//! as in the original. SIGHUP reopens the file (log rotation).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The original's LOGLINE_SIZE less its terminating NUL.
const MAX_LINE: usize = 4068;

/// Set by the SIGHUP handler; the next line reopens the file.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Open the log file for appending (created 0644 as the original did).
pub fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

/// Reopen the file on the next line after each SIGHUP. Call once, before the
/// runtime installs its own SIGHUP handling (both run).
pub fn reopen_on_sighup() -> std::io::Result<()> {
    // SAFETY: the action only stores to an atomic, which is async-signal-safe.
    unsafe { signal_hook_registry::register(libc::SIGHUP, || REOPEN.store(true, Ordering::SeqCst)) }
        .map(|_| ())
}

/// The layer that writes the log file.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Copy every line to standard output (foreground).
    stdout: bool,
    /// The pid column of the original's LOG_DEBUG.
    pid_column: bool,
}

impl LogFile {
    pub fn new(path: PathBuf, file: File, stdout: bool, pid_column: bool) -> LogFile {
        LogFile {
            path,
            file: Mutex::new(file),
            stdout,
            pid_column,
        }
    }

    fn write_line(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if REOPEN.swap(false, Ordering::SeqCst) {
            match open(&self.path) {
                Ok(f) => *file = f,
                Err(e) => {
                    let msg = format!(
                        "[{}]  Warning - cannot reopen the log file {}: {e}\n",
                        timestamp(),
                        self.path.display()
                    );
                    let _ = file.write_all(msg.as_bytes());
                }
            }
        }
        // One write per line: whole lines even with other writers appending.
        let _ = file.write_all(line.as_bytes());
        if self.stdout {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

/// Local time as the original's `%F %T`.
fn timestamp() -> String {
    chrono::Local::now().format("%F %T").to_string()
}

/// Format one line (everything after the timestamp is `text`).
pub fn line(time: &str, pid: Option<u32>, text: &str) -> String {
    let mut s = format!("[{time}]  ");
    if let Some(pid) = pid {
        let _ = write!(s, "{pid:>5}  ");
    }
    s.push_str(text);
    if s.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    // A message never spans lines: a pipeline reads one entry per line.
    let mut s = s.replace('\n', " ");
    s.push('\n');
    s
}

/// Collects an event's message and fields as `message key=value ...`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.is_empty() || value.contains(char::is_whitespace) {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogFile {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut t = Text::default();
        event.record(&mut t);
        let prefix = match *event.metadata().level() {
            Level::ERROR => "Error - ",
            Level::WARN => "Warning - ",
            _ => "",
        };
        let text = format!("{prefix}{}{}", t.message, t.fields);
        let pid = self.pid_column.then(std::process::id);
        self.write_line(&line(&timestamp(), pid, &text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn the_original_layout() {
        assert_eq!(
            line("2026-11-27 18:04:05", None, "ready"),
            "[2026-11-27 18:04:05]  ready\n"
        );
        assert_eq!(
            line("2026-11-27 18:04:05", Some(42), "x"),
            "[2026-11-27 18:04:05]     42  x\n"
        );
        assert_eq!(line("t", Some(123456), "x"), "[t]  123456  x\n");
        let long = line("t", None, &"é".repeat(5000));
        assert!(long.len() <= MAX_LINE + 1 && long.ends_with("é\n"));
        assert_eq!(line("t", None, "a\nb"), "[t]  a b\n");
    }

    #[test]
    fn events_become_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("honeytrap.log");
        let layer = LogFile::new(path.clone(), open(&path).unwrap(), false, false);
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(port = 80, proto = "tcp", peer = %"10.0.0.1:4242", "ready");
            tracing::warn!(reason = "two words", "careful");
            tracing::error!("broken");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let re_time = |l: &str| {
            let b = l.as_bytes();
            b[0] == b'['
                && b[20] == b']'
                && &l[21..23] == "  "
                && l[1..20].chars().nth(4) == Some('-')
        };
        assert!(lines.iter().all(|l| re_time(l)), "{text}");
        assert_eq!(
            &lines[0][23..],
            "ready port=80 proto=tcp peer=10.0.0.1:4242"
        );
        assert_eq!(&lines[1][23..], "Warning - careful reason=\"two words\"");
        assert_eq!(&lines[2][23..], "Error - broken");
    }
}
