//! monbench: measures honeytrap's connection monitors (nfqueue, sniff, tproxy)
//! against a bare server with the ports pre-bound, in network namespaces it creates
//! itself, and prints one table (see the "Monitors" section of docs/benchmarks.md).
//!
//! ```text
//! apt-get install -y nmap iptables            # once
//! cargo build --release --examples --bin honeytrap
//! target/release/examples/monbench [--scenario a|b|nmap|all] [--targets baseline,nfqueue,sniff,tproxy]
//! target/release/examples/monbench --scenario proxy   # proxy mode against direct (monbench/proxy.rs)
//! ```
//!
//! Run as root, by hand (not in CI). Every measurement gets a fresh pair of
//! namespaces (honeypot and attacker, a veth pair, IPv4 addresses inside them only,
//! no default route) and a fresh server process, and uses ports no earlier
//! measurement touched. The NFQUEUE and TPROXY rules of docs/configuration.md are
//! added inside the honeypot namespace only. Namespaces are removed on every exit:
//! a Drop guard on normal and error paths, a signal thread on Ctrl-C / SIGTERM.
//!
//! * (a) `--seq-count` sequential connects to distinct ports, one attempt each;
//! * (b) `--burst-count` distinct ports, `--burst-concurrency` attempts in flight;
//! * (nmap) `nmap -sT -p1-65535 --max-retries 0 -n -Pn` from the attacker namespace,
//!   with the target's peak RSS and descriptor count sampled every 50 ms.
//!
//! The client (this example re-executed with `--client` in the attacker namespace)
//! makes exactly one non-blocking connect per port and gives up after `--timeout-ms`
//! (700 ms, below the kernel's 1 s initial SYN retransmission timeout), so no port
//! ever sees a second SYN; it reports the namespace's TCP retransmissions to prove it.
//! The baseline is this example re-executed with `--bare-server` in the honeypot
//! namespace.
//!
//! `--pin` runs the attacker side (client, nmap) on CPU 0 and the target on the
//! other CPUs, as if the attacker were another machine; without it the two share
//! every CPU (the figures before 2026-11-28). The client waits with epoll
//! (`--client-wait ppoll` for the earlier ppoll client) and reports its own CPU time
//! and wake-ups; the notes give the target's CPU time by thread name.

#[path = "monbench/child.rs"]
mod child;
#[path = "monbench/netns.rs"]
mod netns;
#[path = "monbench/proxy.rs"]
mod proxy;
#[path = "monbench/target.rs"]
mod target;

use anyhow::{bail, Context as _, Result};
use child::{format_ports, parse_ports};
use clap::{Parser, ValueEnum};
use netns::NetPair;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use target::{HtConfig, Kind, Peak, Sampler, Target};

/// The NFQUEUE queue number (queues are per network namespace).
const QUEUE: u16 = 0;
/// The four targets in the order they run (and in which their port ranges are laid out).
const ALL: [Kind; 4] = [Kind::Baseline, Kind::Nfqueue, Kind::Sniff, Kind::Tproxy];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    A,
    B,
    Nmap,
    All,
    /// Proxy-mode throughput and connection rate against direct (not part of `all`).
    Proxy,
}

#[derive(Debug, Parser)]
#[command(
    about = "Connection-monitor benchmark: first-try success, latency and an nmap scan, \
                   honeytrap's nfqueue, sniff and tproxy monitors beside a bare server"
)]
struct Args {
    /// Which scenario(s) to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Targets, comma-separated: baseline, nfqueue, sniff, tproxy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,nfqueue,sniff,tproxy"
    )]
    targets: Vec<String>,
    /// The honeytrap binary.
    #[arg(long, default_value = "target/release/honeytrap")]
    honeytrap: PathBuf,
    /// Scenario (a): sequential connects (distinct ports) per target.
    #[arg(long, default_value_t = 1000)]
    seq_count: u16,
    /// Scenario (b): distinct ports per target.
    #[arg(long, default_value_t = 2000)]
    burst_count: u16,
    /// Scenario (b): attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    burst_concurrency: usize,
    /// Give an attempt up after this many ms (must stay below the 1 s SYN
    /// retransmission timeout, so no second SYN is sent).
    #[arg(long, default_value_t = 700)]
    timeout_ms: u64,
    /// First port of the ranges of (a) and (b); each target and scenario gets its own.
    #[arg(long, default_value_t = 10_000)]
    first_port: u16,
    /// honeytrap's `limits.max_listeners` (the listener cap).
    #[arg(long, default_value_t = 4096)]
    max_listeners: u32,
    /// honeytrap's `limits.max_sessions` (and `max_sessions_per_source`).
    #[arg(long, default_value_t = 10_000)]
    max_sessions: u32,
    /// honeytrap's `monitor.tproxy.port` (excluded from every scan, like 22).
    #[arg(long, default_value_t = 65499)]
    tproxy_port: u16,
    /// Extra TOML for honeytrap's configuration, appended after the harness's
    /// (repeatable; may open new tables), e.g. `--honeytrap-set '[analysis]
    /// enabled = false'`: for diagnostics, the verdict runs keep the defaults.
    #[arg(long)]
    honeytrap_set: Vec<String>,
    /// Run the attacker side (client, nmap) on CPU 0 only and the target on the
    /// other CPUs, as if the attacker were another machine (needs 2 CPUs or more).
    #[arg(long)]
    pin: bool,
    /// Longest an nmap scan may take, in seconds (it is killed after that).
    #[arg(long, default_value_t = 900)]
    nmap_timeout: u64,
    /// Internal: run as the bare server on this address (with --ports).
    #[arg(long, hide = true)]
    bare_server: Option<Ipv4Addr>,
    /// Internal: run as the client against this address (with --ports, --concurrency).
    #[arg(long, hide = true)]
    client: Option<Ipv4Addr>,
    /// Internal: the port list of --bare-server / --client (`A-B,C`).
    #[arg(long, hide = true)]
    ports: Option<String>,
    /// Internal: attempts in flight of --client.
    #[arg(long, hide = true, default_value_t = 1)]
    concurrency: usize,
    /// How the client waits for its attempts: epoll, or ppoll over all of them
    /// (the client of the figures before the second 2026-11-28 session).
    #[arg(long, value_enum, default_value = "epoll")]
    client_wait: child::Wait,
    #[command(flatten)]
    proxy: proxy::ProxyArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.bare_server {
        return child::bare_server(addr, &parse_ports(args.ports.as_deref().unwrap_or(""))?);
    }
    if let Some(host) = args.client {
        let ports = parse_ports(args.ports.as_deref().unwrap_or(""))?;
        let timeout = Duration::from_millis(args.timeout_ms);
        return child::client(host, &ports, args.concurrency, timeout, args.client_wait);
    }
    if let Some(spec) = &args.proxy.proxy_child {
        return proxy::child(spec);
    }
    if args.scenario == Scenario::Proxy {
        return proxy::run_scenario(&args.proxy, &args.honeytrap);
    }
    let targets = check(&args)?;
    netns::install_signal_cleanup()?;
    // Children (the bare server above all) inherit it.
    let nofile = child::raise_nofile(70_000);
    println!(
        "# monbench: {}; open files {nofile}; attempt timeout {} ms; listener cap {}; max_sessions {}; client waits with {:?}; {}",
        machine_line(),
        args.timeout_ms,
        args.max_listeners,
        args.max_sessions,
        args.client_wait,
        if args.pin {
            "pinned: attacker on CPU 0, target on the others"
        } else {
            "attacker and target share every CPU"
        }
    );
    let mut rows = Vec::new();
    if matches!(args.scenario, Scenario::A | Scenario::All) {
        connect_scenario(&args, &targets, Phase::Seq, &mut rows)?;
    }
    if matches!(args.scenario, Scenario::B | Scenario::All) {
        connect_scenario(&args, &targets, Phase::Burst, &mut rows)?;
    }
    if matches!(args.scenario, Scenario::Nmap | Scenario::All) {
        nmap_scenario(&args, &targets, &mut rows)?;
    }
    print_table(&rows);
    Ok(())
}

/// Check the arguments and the tools; returns the targets.
fn check(args: &Args) -> Result<Vec<Kind>> {
    let mut targets = Vec::new();
    for t in &args.targets {
        match ALL.iter().find(|k| k.name() == t.trim()) {
            Some(k) if !targets.contains(k) => targets.push(*k),
            Some(_) => {}
            None => bail!("unknown target {t:?}: use baseline, nfqueue, sniff, tproxy"),
        }
    }
    // Keep the documented order whatever order was given.
    targets.sort_by_key(|k| ALL.iter().position(|a| a == k));
    if !nix::unistd::Uid::effective().is_root() {
        bail!("monbench needs root (it creates network namespaces)");
    }
    if !(100..=900).contains(&args.timeout_ms) {
        bail!("--timeout-ms must be in 100..=900 (below the 1 s SYN retransmission timeout)");
    }
    if !(1..=2000).contains(&args.burst_concurrency) || args.seq_count == 0 || args.burst_count == 0
    {
        bail!("--seq-count and --burst-count must be > 0, --burst-concurrency in 1..=2000");
    }
    if args.pin {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            bail!("--pin needs two CPUs or more (the attacker on CPU 0, the target on the rest)");
        }
        netns::PIN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let end = range_end(args);
    if args.first_port <= 22 || end >= args.tproxy_port as u32 {
        bail!(
            "the port ranges {}..{end} must lie above 22 and below the tproxy port {}",
            args.first_port,
            args.tproxy_port
        );
    }
    let tool = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if targets
        .iter()
        .any(|k| matches!(k, Kind::Nfqueue | Kind::Tproxy))
        && !tool("iptables", "--version")
    {
        bail!(
            "`iptables` is needed for the nfqueue and tproxy targets: apt-get install -y iptables"
        );
    }
    if matches!(args.scenario, Scenario::Nmap | Scenario::All) && !tool("nmap", "--version") {
        bail!(
            "`nmap` is needed for the nmap scenario: apt-get install -y nmap (or --scenario a / b)"
        );
    }
    if targets.iter().any(|k| *k != Kind::Baseline) && !args.honeytrap.is_file() {
        bail!(
            "honeytrap binary {} not found: cargo build --release --bin honeytrap",
            args.honeytrap.display()
        );
    }
    Ok(targets)
}

/// One past the last port of the (a) and (b) ranges.
fn range_end(args: &Args) -> u32 {
    args.first_port as u32 + 4 * (args.seq_count as u32 + args.burst_count as u32)
}

fn machine_line() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "nproc={} kernel={} commit={commit}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease")
    )
}

// ---------------------------------------------------------------------------
// One measurement: namespaces, rules, target

/// A target up and running in fresh namespaces.
struct Setup {
    net: NetPair,
    target: Target,
}

/// Fresh namespaces with the target's rules, and the target started in them.
/// `bare_ports`: the ports the baseline pre-binds.
fn set_up(args: &Args, kind: Kind, tag: &str, bare_ports: &[u16]) -> Result<Setup> {
    let net = NetPair::new(tag)?;
    match kind {
        Kind::Nfqueue => net.nfqueue_rules(QUEUE)?,
        Kind::Tproxy => net.tproxy_rules(args.tproxy_port)?,
        _ => {}
    }
    let target = match kind {
        Kind::Baseline => Target::bare(&net, &format_ports(bare_ports))?,
        _ => {
            let cfg = HtConfig {
                kind,
                bind: &net.hp_v4,
                queue: QUEUE,
                tproxy_port: args.tproxy_port,
                max_listeners: args.max_listeners,
                max_sessions: args.max_sessions,
            };
            Target::honeytrap(
                &net,
                &args.honeytrap,
                &(cfg.toml() + &args.honeytrap_set.join("\n") + "\n"),
            )?
        }
    };
    Ok(Setup { net, target })
}

/// Run `cmd` (in a namespace) to completion, killed after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    netns::child_setup(&mut cmd);
    netns::pin(&mut cmd, netns::Side::Attacker);
    let mut child = cmd.spawn().context("spawn")?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// What honeytrap (or the kernel) noticed: the monitor's summary counters that are not
/// zero, limit/drop counters, the honeypot namespace's listen queue overflows and
/// (sniff) the drops at the packet socket (`sniff_drops`, read before the stop).
fn server_notes(
    log: &[String],
    listen_overflows: Option<u64>,
    sniff_drops: Option<(u64, u64)>,
) -> String {
    let mut notes = Vec::new();
    if let Some(l) = log.iter().rev().find(|l| l.contains("monitor stopped")) {
        let keep = [
            "servers_started",
            "unavailable",
            "overflows",
            "errors",
            "verdict_errors",
            "tcp_connections",
            "tcp_resets",
            "malformed",
            "batches",
            "busy_us",
            "bind_us",
            "verdict_us",
            "verdicts",
            "max_bind_us",
            "max_verdict_us",
            "close_waits",
            "close_wait_us",
            "limit_max_listeners",
        ];
        let kv: Vec<&str> = l
            .split_whitespace()
            .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| keep.contains(&k)))
            .collect();
        notes.push(kv.join(" "));
    }
    if let Some(l) = log.iter().rev().find(|l| l.contains("final counters:")) {
        let limits: Vec<&str> = l
            .split_whitespace()
            .filter(|kv| {
                kv.split_once('=').is_some_and(|(k, v)| {
                    (k.starts_with("limit_") || k == "records_dropped") && v != "0"
                })
            })
            .collect();
        notes.push(if limits.is_empty() {
            "limits hit: none".into()
        } else {
            format!("limits hit: {}", limits.join(" "))
        });
    }
    let warns = log
        .iter()
        .filter(|l| l.contains("WARN") && !l.contains("running as root"))
        .count();
    if warns > 0 {
        notes.push(format!("{warns} warnings (first: {})", first_warning(log)));
    }
    if let Some(n) = listen_overflows.filter(|n| *n > 0) {
        notes.push(format!("kernel ListenOverflows={n}"));
    }
    if let Some((d, rb)) = sniff_drops {
        notes.push(format!("packet socket drops={d} (rcvbuf {rb})"));
    }
    notes.join("; ")
}

fn first_warning(log: &[String]) -> String {
    log.iter()
        .find(|l| l.contains("WARN") && !l.contains("running as root"))
        .map(|l| l.chars().take(160).collect())
        .unwrap_or_default()
}

fn peak_note(p: &Peak, kind: Kind) -> String {
    let what = if kind == Kind::Baseline {
        "bare server"
    } else {
        "honeytrap"
    };
    let c = &p.cpu;
    let queue = if c.queue_cpu_ms > 0.0 {
        format!(
            "queue thread cpu {:.1} ms (run-queue wait {:.1} ms), ",
            c.queue_cpu_ms, c.queue_wait_ms
        )
    } else {
        String::new()
    };
    let top: Vec<String> = c
        .by_name
        .iter()
        .take(6)
        .map(|(n, ms)| format!("{n} {ms:.1}"))
        .collect();
    format!(
        "{what} peak RSS {:.1} MiB (VmHWM {:.1}), max fds {} ({} samples); {queue}other threads cpu {:.1} ms (wait {:.1} ms); cpu ms by thread: {}",
        p.max_rss_kib as f64 / 1024.0,
        p.hwm_kib as f64 / 1024.0,
        p.max_fds,
        p.samples,
        c.other_cpu_ms,
        c.other_wait_ms,
        top.join(", ")
    )
}

// ---------------------------------------------------------------------------
// Scenarios (a) and (b)

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Seq,
    Burst,
}

/// The client's JSON line.
#[derive(serde::Deserialize)]
struct ClientResult {
    attempts: u64,
    ok: u64,
    refused: u64,
    timeout: u64,
    error: u64,
    first_error: Option<String>,
    retrans_segs: Option<u64>,
    wall_ms: u64,
    lat_ns: Vec<u64>,
    /// The client's own CPU time and wake-ups (ppoll / epoll_wait returns).
    #[serde(default)]
    cpu_ms: f64,
    #[serde(default)]
    wakeups: u64,
}

impl ClientResult {
    fn success(&self) -> f64 {
        100.0 * self.ok as f64 / self.attempts.max(1) as f64
    }

    /// The `q` quantile (nearest rank) of the successful attempts' latency, in ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut v = self.lat_ns.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i] as f64 / 1e6)
    }
}

/// The ports of one target in one scenario: no two measurements share a port.
fn ports_for(args: &Args, phase: Phase, kind: Kind) -> Vec<u16> {
    let i = ALL.iter().position(|k| *k == kind).unwrap() as u32;
    let (start, n) = match phase {
        Phase::Seq => (
            args.first_port as u32 + i * args.seq_count as u32,
            args.seq_count,
        ),
        Phase::Burst => (
            args.first_port as u32 + 4 * args.seq_count as u32 + i * args.burst_count as u32,
            args.burst_count,
        ),
    };
    (start..start + n as u32).map(|p| p as u16).collect()
}

fn connect_scenario(
    args: &Args,
    targets: &[Kind],
    phase: Phase,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (label, concurrency) = match phase {
        Phase::Seq => ("a", 1),
        Phase::Burst => ("b", args.burst_concurrency),
    };
    let mut base_p99 = None;
    for &kind in targets {
        let ports = ports_for(args, phase, kind);
        eprintln!(
            "[{label}] {}: ports {}, {concurrency} in flight",
            kind.name(),
            format_ports(&ports)
        );
        let mut s = set_up(args, kind, &format!("{label}{}", &kind.name()[..2]), &ports)?;
        let sampler = Sampler::start(s.target.pid());
        let exe = std::env::current_exe()?;
        let mut cmd = NetPair::exec_in(&s.net.attacker, exe.as_os_str());
        cmd.args(["--client", &s.net.hp_v4, "--ports", &format_ports(&ports)])
            .args(["--concurrency", &concurrency.to_string()])
            .args([
                "--client-wait",
                args.client_wait
                    .to_possible_value()
                    .expect("a value")
                    .get_name(),
            ])
            .args(["--timeout-ms", &args.timeout_ms.to_string()]);
        let limit = Duration::from_millis(args.timeout_ms) * (ports.len() / concurrency + 2) as u32
            + Duration::from_secs(90);
        let out = run_bounded(cmd, limit)?;
        let peak = sampler.finish();
        let overflows = s.net.honeypot_counter("TcpExt", "ListenOverflows");
        let drops = (kind == Kind::Sniff)
            .then(|| s.net.packet_socket_drops())
            .flatten();
        let log = s.target.stop();
        let line = String::from_utf8_lossy(&out.stdout);
        let r: ClientResult = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "client output {line:?} (status {}, stderr {})",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        eprintln!(
            "[{label}] {}: {:.2} % first-try success ({} ok, {} refused, {} timed out, {} errors) in {} ms",
            kind.name(),
            r.success(),
            r.ok,
            r.refused,
            r.timeout,
            r.error,
            r.wall_ms
        );
        let row = connect_row(
            label,
            phase,
            kind,
            &r,
            base_p99,
            &peak,
            server_notes(&log, overflows, drops),
        );
        if kind == Kind::Baseline {
            base_p99 = r.quantile_ms(0.99);
        }
        rows.push(row);
        drop(s);
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3} ms"))
}

#[allow(clippy::too_many_arguments)]
fn connect_row(
    label: &'static str,
    phase: Phase,
    kind: Kind,
    r: &ClientResult,
    base_p99: Option<f64>,
    peak: &Peak,
    server: String,
) -> Row {
    let p99 = r.quantile_ms(0.99);
    let ratio = match (p99, base_p99) {
        (Some(a), Some(b)) if kind != Kind::Baseline && b > 0.0 => Some(a / b),
        _ => None,
    };
    let goal = match (kind, phase) {
        (Kind::Baseline, _) => String::new(),
        (Kind::Sniff, _) => "none (catches the retry)".into(),
        (_, Phase::Seq) => {
            let met = r.success() >= 99.9 && p99.is_some_and(|p| p <= 1.0);
            format!(">=99.9%, p99<=1ms: {}", verdict(met))
        }
        (_, Phase::Burst) => {
            let met = r.success() >= 99.9 && ratio.is_some_and(|x| x <= 1.5);
            let known = if base_p99.is_some() {
                ""
            } else {
                " (no baseline)"
            };
            format!(">=99.9%, p99<=1.5x base: {}{known}", verdict(met))
        }
    };
    let mut notes = format!(
        "ok {} refused {} timeout {} error {}; client TCP retransmissions {}, cpu {:.1} ms, {} wake-ups; {}",
        r.ok,
        r.refused,
        r.timeout,
        r.error,
        r.retrans_segs.map_or("?".into(), |n| n.to_string()),
        r.cpu_ms,
        r.wakeups,
        peak_note(peak, kind)
    );
    if let Some(e) = &r.first_error {
        notes.push_str(&format!("; first error: {e}"));
    }
    if !server.is_empty() {
        notes.push_str(&format!("; {server}"));
    }
    Row {
        scenario: label,
        target: kind.name(),
        success: format!("{:.2}%", r.success()),
        median: ms(r.quantile_ms(0.5)),
        p99: ms(p99),
        wall: format!("{} ms", r.wall_ms),
        ratio: ratio.map_or(String::new(), |x| format!("{x:.2}x")),
        goal,
        notes,
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

// ---------------------------------------------------------------------------
// Scenario (nmap)

/// Open ports in nmap's grepable output (`-oG -`).
fn nmap_open_ports(text: &str) -> Vec<u16> {
    let mut open = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("Host:")) {
        let Some((_, ports)) = line.split_once("Ports: ") else {
            continue;
        };
        // Entries "PORT/STATE/PROTO/OWNER/SERVICE/RPC/VERSION/", comma-separated; the
        // port list ends at a tab (before "Ignored State:").
        let ports = ports.split('\t').next().unwrap_or("");
        for e in ports.split(", ") {
            let f: Vec<&str> = e.trim().split('/').collect();
            if f.get(1) == Some(&"open") {
                if let Ok(p) = f[0].parse() {
                    open.push(p);
                }
            }
        }
    }
    open
}

fn nmap_scenario(args: &Args, targets: &[Kind], rows: &mut Vec<Row>) -> Result<()> {
    let excluded = [22, args.tproxy_port];
    let scannable: Vec<u16> = (1..=65535u16).filter(|p| !excluded.contains(p)).collect();
    let mut base_wall = None;
    for &kind in targets {
        eprintln!("[nmap] {}: setting up", kind.name());
        let mut s = set_up(args, kind, &format!("n{}", &kind.name()[..2]), &scannable)?;
        let sampler = Sampler::start(s.target.pid());
        let mut cmd = NetPair::exec_in(&s.net.attacker, "nmap".as_ref());
        cmd.args([
            "-sT",
            "-p1-65535",
            "--max-retries",
            "0",
            "-n",
            "-Pn",
            "-oG",
            "-",
        ])
        .arg(&s.net.hp_v4);
        eprintln!("[nmap] {}: scanning", kind.name());
        let t0 = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(args.nmap_timeout))?;
        let wall = t0.elapsed().as_secs_f64();
        let peak = sampler.finish();
        let overflows = s.net.honeypot_counter("TcpExt", "ListenOverflows");
        let drops = (kind == Kind::Sniff)
            .then(|| s.net.packet_socket_drops())
            .flatten();
        let log = s.target.stop();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("# Nmap done") {
            bail!(
                "nmap failed or timed out after {wall:.0} s ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let open = nmap_open_ports(&text)
            .into_iter()
            .filter(|p| !excluded.contains(p))
            .count();
        let pct = 100.0 * open as f64 / scannable.len() as f64;
        eprintln!(
            "[nmap] {}: {open} open ({pct:.2} %), {wall:.1} s",
            kind.name()
        );
        rows.push(nmap_row(
            args,
            kind,
            open,
            pct,
            wall,
            base_wall,
            &peak,
            server_notes(&log, overflows, drops),
        ));
        if kind == Kind::Baseline {
            base_wall = Some(wall);
        }
        drop(s);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn nmap_row(
    args: &Args,
    kind: Kind,
    open: usize,
    pct: f64,
    wall: f64,
    base_wall: Option<f64>,
    peak: &Peak,
    server: String,
) -> Row {
    let ratio = base_wall
        .filter(|_| kind != Kind::Baseline)
        .map(|b| wall / b);
    // Listeners are capped by max_listeners (one bind address), sessions by
    // max_sessions; a few dozen more for the runtime, logs and outputs.
    let fd_bound = args.max_listeners as u64 + args.max_sessions as u64 + 64;
    let rss_ok = peak.hwm_kib.max(peak.max_rss_kib) < 256 * 1024;
    let fds_ok = peak.max_fds <= fd_bound;
    let goal = match kind {
        Kind::Baseline => String::new(),
        Kind::Sniff => format!(
            "none (retry); RSS<256MiB: {}, fds<={fd_bound}: {}",
            verdict(rss_ok),
            verdict(fds_ok)
        ),
        _ => {
            let met = pct >= 99.0 && ratio.is_some_and(|x| x <= 1.2);
            format!(
                ">=99%, wall<=1.2x: {}; RSS<256MiB: {}, fds<={fd_bound}: {}",
                verdict(met),
                verdict(rss_ok),
                verdict(fds_ok)
            )
        }
    };
    Row {
        scenario: "nmap",
        target: kind.name(),
        success: format!("{pct:.2}%"),
        median: String::new(),
        p99: String::new(),
        wall: format!("{wall:.1} s"),
        ratio: ratio.map_or(String::new(), |x| format!("{x:.2}x")),
        goal,
        notes: format!(
            "{open} of {} ports open; {}; {server}",
            65535 - 2,
            peak_note(peak, kind)
        ),
    }
}

// ---------------------------------------------------------------------------
// Output

struct Row {
    scenario: &'static str,
    target: &'static str,
    success: String,
    median: String,
    p99: String,
    wall: String,
    ratio: String,
    goal: String,
    notes: String,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<5} {:<9} {:<8} {:<9} {:<9} {:<8} {:<6} {:<40} notes",
        "scen.", "target", "success", "median", "p99", "wall", "ratio", "target (issue 3)"
    );
    for r in rows {
        println!(
            "{:<5} {:<9} {:<8} {:<9} {:<9} {:<8} {:<6} {:<40} {}",
            r.scenario, r.target, r.success, r.median, r.p99, r.wall, r.ratio, r.goal, r.notes
        );
    }
}
