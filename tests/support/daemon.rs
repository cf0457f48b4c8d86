//! The real `honeytrap` binary under test: started in a namespace with a generated
//! config and its own data directory, with helpers to wait for log lines and read
//! the events it wrote (each validated against the published JSON Schema).

use super::netns::NetPair;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_honeytrap");

/// A running honeytrap process.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// The base config every test starts from: fast timeouts, the data directory in a
/// temporary directory. `extra` is appended (later sections win by being the only
/// ones: pass sections that are not in the base).
pub fn base_config(data_dir: &Path, listen_tcp: &str, listen_udp: &str) -> String {
    format!(
        r#"[sensor]
name = "e2e-sensor"
data_dir = "{}"

[process]
log_level = "info"
shutdown_grace = "3s"

[monitor]
kind = "listen"

[monitor.listen]
tcp = [{listen_tcp}]
udp = [{listen_udp}]
"#,
        data_dir.display()
    )
}

impl Daemon {
    /// Start honeytrap in the honeypot namespace with `config` (a full TOML text in
    /// which `@DATA@` is replaced by the data directory) and wait until it is ready.
    pub fn start(net: &NetPair, config: &str) -> Daemon {
        let d = Self::spawn(net, config);
        if !d.wait_log("ready", Duration::from_secs(15)) {
            panic!("honeytrap did not become ready:\n{}", d.log());
        }
        d
    }

    /// Start honeytrap without waiting for it.
    pub fn spawn(net: &NetPair, config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        // Reachable for a daemon that drops root to an unprivileged user.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config_path = dir.path().join("honeytrap.toml");
        let log_path = dir.path().join("honeytrap.log");
        let data = dir.path().join("data");
        std::fs::write(
            &config_path,
            config.replace("@DATA@", &data.display().to_string()),
        )
        .unwrap();
        let log = std::fs::File::create(&log_path).unwrap();
        let child = net
            .in_honeypot(BIN)
            .args(["run", "-c"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("NO_COLOR", "1")
            .spawn()
            .expect("starting honeytrap");
        Daemon {
            child: Some(child),
            dir,
            config_path,
            log_path,
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle))
    }

    /// Events written so far, each checked against docs/event.schema.json.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.data().join("events.jsonl")).unwrap_or_default();
        // Only complete lines: the daemon may be writing the next one right now.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}"));
                if let Err(e) = super::schema::validate_event(&v) {
                    panic!("event does not match docs/event.schema.json: {e}\n{l}");
                }
                v
            })
            .collect()
    }

    /// Wait until at least `n` events were written; returns them.
    pub fn wait_events(&self, n: usize, limit: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        wait_until(limit, || {
            events = self.events();
            events.len() >= n
        });
        assert!(
            events.len() >= n,
            "expected {n} events, got {}: {events:#?}\nlog:\n{}",
            events.len(),
            self.log()
        );
        events
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        // `ip netns exec` execs the program, so the child's pid is honeytrap's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Wait for the process to exit on its own (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("honeytrap did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command to completion (bounded) and return its output.
pub fn run(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            if start.elapsed() > limit {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    out
}

/// The transcript document an event points at (path, offset, length), checked
/// against docs/transcript.schema.json.
pub fn transcript_of(event: &Value) -> Value {
    use std::io::{Read, Seek, SeekFrom};
    let t = &event["honeytrap"]["transcript"];
    let path = t["path"].as_str().expect("transcript path");
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    f.seek(SeekFrom::Start(t["offset"].as_u64().unwrap()))
        .unwrap();
    let mut buf = vec![0u8; t["length"].as_u64().unwrap() as usize];
    f.read_exact(&mut buf).unwrap();
    let doc: Value = serde_json::from_slice(&buf).expect("the slice is one JSON document");
    super::schema::validate_transcript(&doc).expect("transcript matches its schema");
    assert_eq!(doc["attack_id"], event["event"]["id"]);
    doc
}

/// The threads of `pid` but its main thread: (name, nice value, scheduling policy),
/// from `/proc/PID/task/*/stat` (fields 19 and 41).
pub fn threads(pid: u32) -> Vec<(String, i64, i64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|t| t.file_name().to_str() != Some(&pid.to_string()))
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
            let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            Some((
                name,
                rest.get(16)?.parse().ok()?,
                rest.get(38)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The nice value of the thread of `pid` named `name`.
pub fn thread_nice(pid: u32, name: &str) -> Option<i64> {
    threads(pid)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, nice, _)| nice)
}

/// `/proc/PID/status` of a process.
pub fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status")
}

/// A capability set (`CapEff:`, `CapPrm:`, ...) from a `/proc/PID/status` text.
pub fn capability_set(status: &str, field: &str) -> u64 {
    let v = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{field} not in {status}"));
    u64::from_str_radix(v, 16).expect("hex capability set")
}
