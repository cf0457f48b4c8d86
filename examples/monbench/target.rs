//! The server under test, a child process in the honeypot namespace: the bare
//! server (this example re-executed) or `honeytrap run -c <generated config>`. Its
//! standard error is collected; start waits for its ready line; a sampler thread
//! polls its memory and descriptors every 50 ms while a scenario runs.

use super::netns::NetPair;
use anyhow::{bail, Context as _, Result};
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The monitor a honeytrap target runs (None: the bare server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Baseline,
    Nfqueue,
    Sniff,
    Tproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Nfqueue => "nfqueue",
            Kind::Sniff => "sniff",
            Kind::Tproxy => "tproxy",
        }
    }
}

/// Settings of the generated honeytrap config.
pub struct HtConfig<'a> {
    pub kind: Kind,
    pub bind: &'a str,
    pub queue: u16,
    pub tproxy_port: u16,
    pub max_listeners: u32,
    pub max_sessions: u32,
}

impl HtConfig<'_> {
    /// The config: `[monitor] kind`, IPv4 bind address only, the listener cap, and
    /// source limits far above the load so the benchmark measures the monitors, not
    /// the rate limiter. `@DATA@` is replaced by the data directory.
    pub fn toml(&self) -> String {
        format!(
            r#"[sensor]
name = "monbench"
data_dir = "@DATA@"

[process]
log_level = "info"
shutdown_grace = "3s"

[network]
bind_addresses = ["{bind}"]
backlog = 4096

[monitor]
kind = "{kind}"

[monitor.listen]
tcp = []
udp = []

[monitor.nfqueue]
queue = {queue}

[monitor.tproxy]
port = {tproxy}

[limits]
read_timeout = "1s"
max_listeners = {listeners}
max_sessions = {sessions}
max_sessions_per_source = {sessions}
source_rate = 10000000.0
source_burst = 10000000

[output]
queue_size = 65536

[output.transcripts]
quota_files = 100000000
"#,
            bind = self.bind,
            kind = self.kind.name(),
            queue = self.queue,
            tproxy = self.tproxy_port,
            listeners = self.max_listeners,
            sessions = self.max_sessions,
        )
    }
}

/// A running target.
pub struct Target {
    pub name: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// honeytrap's config and data (removed on drop).
    dir: Option<tempfile::TempDir>,
}

impl Target {
    /// The bare server on `ports` (a port spec) at the honeypot's address.
    pub fn bare(net: &NetPair, ports: &str) -> Result<Target> {
        let exe = std::env::current_exe()?;
        let mut cmd = NetPair::exec_in(&net.honeypot, exe.as_os_str());
        cmd.args(["--bare-server", &net.hp_v4, "--ports", ports]);
        Target::start("baseline", cmd, None, Duration::from_secs(60))
    }

    /// `honeytrap run -c FILE` in the honeypot namespace with `config`.
    pub fn honeytrap(net: &NetPair, bin: &Path, config: &str) -> Result<Target> {
        let dir = tempfile::Builder::new().prefix("monbench-").tempdir()?;
        super::netns::remember_dir(dir.path());
        let data = dir.path().join("data");
        let cfg_path = dir.path().join("honeytrap.toml");
        std::fs::File::create(&cfg_path)?.write_all(
            config
                .replace("@DATA@", &data.display().to_string())
                .as_bytes(),
        )?;
        let bin = bin
            .canonicalize()
            .with_context(|| format!("{}", bin.display()))?;
        let mut cmd = NetPair::exec_in(&net.honeypot, bin.as_os_str());
        cmd.arg("run").arg("-c").arg(&cfg_path);
        Target::start("honeytrap", cmd, Some(dir), Duration::from_secs(20))
    }

    /// Start `cmd` (stderr collected) and wait up to `limit` for its ready line.
    fn start(
        name: &'static str,
        mut cmd: std::process::Command,
        dir: Option<tempfile::TempDir>,
        limit: Duration,
    ) -> Result<Target> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        // It dies with the harness, whatever way the harness ends. `ip netns exec`
        // execs the program, so the pid is the server's own.
        super::netns::child_setup(&mut cmd);
        super::netns::pin(&mut cmd, super::netns::Side::Target);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let (log, rx) = read_lines(child.stderr.take().expect("piped"));
        let deadline = Instant::now() + limit;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains("ERROR") || l.starts_with("Error") => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{name} failed to start: {l}");
                }
                Ok(l) if l.contains(" ready") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "{name} did not become ready within {limit:?}; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Ok(Target {
            name,
            child,
            log,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to 20 s (SIGKILL after that); returns the whole log.
    pub fn stop(&mut self) -> Vec<String> {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t0.elapsed() > Duration::from_secs(20) => {
                    eprintln!("{}: no exit 20 s after SIGTERM: SIGKILL", self.name);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(d) = &self.dir {
            super::netns::forget_dir(d.path());
        }
    }
}

/// A thread that collects the lines of `r` (colour codes removed) and passes each on.
fn read_lines(
    r: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let l2 = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                    let _ = tx.send(line.clone());
                    l2.lock().unwrap().push(line);
                }
            }
        }
    });
    (log, rx)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Sampling

/// What the sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Peak {
    /// Largest VmRSS seen (summed over the process and its children).
    pub max_rss_kib: u64,
    /// VmHWM at the last sample: the peak RSS over the process's whole life.
    pub hwm_kib: u64,
    pub max_fds: u64,
    pub samples: u64,
    /// CPU and run-queue wait of the target's threads between the first and the
    /// last sample (`/proc/PID/task/*/schedstat`), in ms: the `nfqueue` queue
    /// thread(s) and all the other threads.
    pub cpu: ThreadTimes,
}

/// CPU and run-queue wait (ms) of the queue thread(s) and of the other threads.
#[derive(Debug, Default, Clone)]
pub struct ThreadTimes {
    pub queue_cpu_ms: f64,
    pub queue_wait_ms: f64,
    pub other_cpu_ms: f64,
    pub other_wait_ms: f64,
    /// CPU (ms) by thread name (all threads of one name summed), largest first.
    pub by_name: Vec<(String, f64)>,
}

/// Per-thread (cpu ns, wait ns, name) of `pid` now, by thread id.
fn thread_times(pid: u32) -> std::collections::HashMap<u32, (u64, u64, String)> {
    let mut out = std::collections::HashMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let mut f = stat
            .split_whitespace()
            .filter_map(|v| v.parse::<u64>().ok());
        if let (Some(cpu), Some(wait)) = (f.next(), f.next()) {
            out.insert(tid, (cpu, wait, comm.trim().to_string()));
        }
    }
    out
}

/// What the threads of `last` used since `first` (threads born meanwhile count
/// from zero).
fn times_between(
    first: &std::collections::HashMap<u32, (u64, u64, String)>,
    last: &std::collections::HashMap<u32, (u64, u64, String)>,
) -> ThreadTimes {
    let mut t = ThreadTimes::default();
    let mut by_name = std::collections::BTreeMap::<&str, f64>::new();
    for (tid, (cpu, wait, name)) in last {
        let (c0, w0) = first.get(tid).map_or((0, 0), |f| (f.0, f.1));
        let (dc, dw) = (
            cpu.saturating_sub(c0) as f64 / 1e6,
            wait.saturating_sub(w0) as f64 / 1e6,
        );
        *by_name.entry(name).or_default() += dc;
        if name == "nfqueue" {
            t.queue_cpu_ms += dc;
            t.queue_wait_ms += dw;
        } else {
            t.other_cpu_ms += dc;
            t.other_wait_ms += dw;
        }
    }
    t.by_name = by_name
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    t.by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    t
}

/// Polls `/proc/PID` every 50 ms until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Peak>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut p = Peak::default();
            let first = thread_times(pid);
            // Bounded: one sample per 50 ms, at most one hour.
            for _ in 0..72_000 {
                sample(pid, &mut p);
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            p.cpu = times_between(&first, &thread_times(pid));
            p
        });
        Sampler { stop, handle }
    }

    pub fn finish(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// The process and its direct children (the bare server may be split over several
/// processes by the open file limit): their sums.
fn sample(pid: u32, p: &mut Peak) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let pids =
        std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok()));
    let mut now = Peak::default();
    for pid in pids {
        sample_one(pid, &mut now);
    }
    p.max_rss_kib = p.max_rss_kib.max(now.max_rss_kib);
    p.hwm_kib = p.hwm_kib.max(now.hwm_kib);
    p.max_fds = p.max_fds.max(now.max_fds);
    p.samples += 1;
}

/// Add one process's VmRSS, VmHWM and descriptor count to `p`.
fn sample_one(pid: u32, p: &mut Peak) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return;
    };
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    p.max_rss_kib += field("VmRSS:").unwrap_or(0);
    p.hwm_kib += field("VmHWM:").unwrap_or(0);
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        p.max_fds += rd.count() as u64;
    }
}
