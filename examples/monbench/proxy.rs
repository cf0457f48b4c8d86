//! `--scenario proxy` (issue 4, point 6): proxy-mode throughput and connection rate
//! against a direct connection to the same target, in the same run.
//!
//! Three namespaces: attacker, honeypot, target. The honeypot namespace forwards IPv4
//! (`net.ipv4.ip_forward=1` inside it only) and the attacker and target namespaces
//! route each other's subnet through it, so **direct** (attacker → target address,
//! forwarded by the kernel) and **proxy** (attacker → honeytrap's `[proxy.bench]` map
//! → target) cross the same two veth pairs. The target namespace is the attacker half
//! of a second `NetPair` whose honeypot-side veth end is moved into the first honeypot
//! namespace, so every namespace is registered for monbench's clean-up.
//!
//! The target server (this example re-executed with `--proxy-child target`) has three
//! ports: a sink (reads to end of stream, answers the byte count), a source (writes
//! the number of bytes asked for) and a short request/answer port. Clients, also
//! re-executed, print one JSON line each. Direct and proxy runs alternate (the order
//! flips every repeat) so load drift hits both.

use super::netns::{self, run, NetPair};
use super::target::Target;
use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The target's ports; the proxy map relays the same ports on the honeypot address.
const SINK: u16 = 5001;
const SOURCE: u16 = 5002;
const ECHO: u16 = 5003;
/// The short request and answer of the rate test (16 bytes each).
const REQUEST: &[u8; 16] = b"monbench-request";
const ANSWER: &[u8; 16] = b"monbench-answer\n";
/// Client and target I/O buffer.
const BUF: usize = 256 * 1024;
const MIB: u64 = 1 << 20;
/// Most exchanges one rate client makes in a run.
const MAX_EXCHANGES: u64 = 1_000_000;

/// Options of the proxy scenario (flattened into monbench's arguments).
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Proxy scenario: bytes per bulk transfer, in MiB.
    #[arg(long, default_value_t = 512)]
    pub bulk_mib: u64,
    /// Proxy scenario: bulk transfers per direction, path and recording setting.
    #[arg(long, default_value_t = 3)]
    pub bulk_repeats: u32,
    /// Proxy scenario: concurrent clients of the connection-rate test.
    #[arg(long, default_value_t = 32)]
    pub rate_clients: u32,
    /// Proxy scenario: seconds of one connection-rate run.
    #[arg(long, default_value_t = 5)]
    pub rate_secs: u64,
    /// Proxy scenario: connection-rate runs per path and recording setting.
    #[arg(long, default_value_t = 3)]
    pub rate_repeats: u32,
    /// Proxy scenario: honeytrap's transcripts: on, off or both (two honeytrap runs).
    #[arg(long, default_value = "both")]
    pub transcripts: String,
    /// Proxy scenario: also measure `socat -b 32768` as the relay (bulk only), a plain
    /// copying relay that records nothing, for reference.
    #[arg(long)]
    pub socat: bool,
    /// Proxy scenario: socat's buffer (`-b`), bytes (32768: the chunk of honeytrap's
    /// copying relay, which it uses for UDP; TCP to TCP it splices).
    #[arg(long, default_value_t = 32768)]
    pub socat_buffer: usize,
    /// Proxy scenario: shape the attacker's link (both directions, the veth pair
    /// between the attacker and honeypot namespaces) to this many Mbit/s with a
    /// token bucket (`tc qdisc ... tbf`), as a sensor's uplink is; direct and proxied
    /// runs cross the same shaped link. 0: unshaped (then all three parties share
    /// this machine's CPUs and the test measures CPU, not the relay).
    #[arg(long, default_value_t = 0)]
    pub link_mbit: u64,
    /// Internal: a child role of the proxy scenario (`target ADDR`, `upload ADDR PORT
    /// BYTES`, `download ADDR PORT BYTES`, `rate ADDR PORT CLIENTS SECS`).
    #[arg(long, hide = true)]
    pub proxy_child: Option<String>,
}

// ---------------------------------------------------------------------------
// Children

/// Run the child role `spec`.
pub fn child(spec: &str) -> Result<()> {
    let w: Vec<&str> = spec.split_whitespace().collect();
    let addr = |i: usize| -> Result<Ipv4Addr> { Ok(w.get(i).context("address")?.parse()?) };
    let num = |i: usize| -> Result<u64> { Ok(w.get(i).context("number")?.parse()?) };
    let dst = || -> Result<SocketAddr> { Ok(SocketAddrV4::new(addr(1)?, num(2)? as u16).into()) };
    let out = match w.first().copied() {
        Some("target") => return target_server(addr(1)?),
        Some("upload") => bulk_json(upload(dst()?, num(3)?), num(3)?),
        Some("download") => bulk_json(download(dst()?, num(3)?), num(3)?),
        Some("rate") => rate_client(dst()?, num(3)? as usize, Duration::from_secs(num(4)?))?,
        _ => bail!("unknown proxy child role {spec:?}"),
    };
    println!("{out}");
    Ok(())
}

/// The JSON line of a bulk client.
fn bulk_json(r: Result<f64>, bytes: u64) -> serde_json::Value {
    match r {
        Ok(secs) => serde_json::json!({"bytes": bytes, "secs": secs}),
        Err(e) => serde_json::json!({"bytes": bytes, "error": format!("{e:#}")}),
    }
}

fn connect(dst: SocketAddr) -> Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// Send `n` bytes, half-close, wait for the sink's byte count; seconds from connect.
fn upload(dst: SocketAddr, n: u64) -> Result<f64> {
    let buf = vec![0x5a_u8; BUF];
    let t0 = Instant::now();
    let mut s = connect(dst)?;
    let mut left = n;
    while left > 0 {
        let k = left.min(BUF as u64) as usize;
        s.write_all(&buf[..k])?;
        left -= k as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).context("reading the byte count")?;
    let secs = t0.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(ack);
    if got != n {
        bail!("the target received {got} bytes of {n}");
    }
    Ok(secs)
}

/// Ask the source for `n` bytes and read to end of stream; seconds from connect.
fn download(dst: SocketAddr, n: u64) -> Result<f64> {
    let mut buf = vec![0u8; BUF];
    let t0 = Instant::now();
    let mut s = connect(dst)?;
    s.write_all(&n.to_be_bytes())?;
    let mut got = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            k => got += k as u64,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if got != n {
        bail!("received {got} bytes of {n}");
    }
    Ok(secs)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The target: sink, source and short answer on `addr`; says `ready` on stderr.
fn target_server(addr: Ipv4Addr) -> Result<()> {
    use tokio::net::TcpListener;
    runtime()?.block_on(async move {
        let listen = |port| async move {
            TcpListener::bind((addr, port))
                .await
                .with_context(|| format!("binding {addr}:{port}"))
        };
        let (sink, source, echo) = (
            listen(SINK).await?,
            listen(SOURCE).await?,
            listen(ECHO).await?,
        );
        eprintln!("proxy target ready on {addr}: sink {SINK}, source {SOURCE}, answer {ECHO}");
        loop {
            let (s, port) = tokio::select! {
                r = sink.accept() => (r?.0, SINK),
                r = source.accept() => (r?.0, SOURCE),
                r = echo.accept() => (r?.0, ECHO),
            };
            tokio::spawn(async move {
                let _ = serve(s, port).await;
            });
        }
    })
}

/// One connection to the target.
async fn serve(mut s: tokio::net::TcpStream, port: u16) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match port {
        SINK => {
            let mut buf = vec![0u8; BUF];
            let mut n = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => break,
                    k => n += k as u64,
                }
            }
            s.write_all(&n.to_be_bytes()).await?;
        }
        SOURCE => {
            let mut want = [0u8; 8];
            s.read_exact(&mut want).await?;
            let buf = vec![0xa5_u8; BUF];
            let mut left = u64::from_be_bytes(want);
            while left > 0 {
                let k = left.min(BUF as u64) as usize;
                s.write_all(&buf[..k]).await?;
                left -= k as u64;
            }
        }
        _ => {
            let mut req = [0u8; REQUEST.len()];
            s.read_exact(&mut req).await?;
            s.write_all(ANSWER).await?;
        }
    }
    s.shutdown().await
}

/// `clients` loops of connect, request, answer, until `secs` have passed.
fn rate_client(dst: SocketAddr, clients: usize, secs: Duration) -> Result<serde_json::Value> {
    runtime()?.block_on(async move {
        let t0 = Instant::now();
        let end = tokio::time::Instant::now() + secs;
        let mut tasks = Vec::new();
        for _ in 0..clients {
            tasks.push(tokio::spawn(rate_loop(dst, end)));
        }
        let (mut ok, mut errors, mut lat, mut first) = (0u64, 0u64, Vec::new(), None);
        for t in tasks {
            let r = t.await?;
            ok += r.ok;
            errors += r.errors;
            lat.extend(r.lat_us);
            first = first.or(r.first_error);
        }
        let wall = t0.elapsed().as_secs_f64();
        lat.sort_unstable();
        let q = |q: f64| {
            lat.get(((q * lat.len() as f64).ceil() as usize).max(1) - 1)
                .copied()
        };
        Ok(serde_json::json!({
            "ok": ok, "errors": errors, "secs": wall, "first_error": first,
            "p50_us": q(0.5), "p99_us": q(0.99),
        }))
    })
}

#[derive(Default)]
struct RateTally {
    ok: u64,
    errors: u64,
    lat_us: Vec<u64>,
    first_error: Option<String>,
}

async fn rate_loop(dst: SocketAddr, end: tokio::time::Instant) -> RateTally {
    let mut t = RateTally::default();
    // Bounded in time and, as a backstop, in count.
    while tokio::time::Instant::now() < end && t.ok + t.errors < MAX_EXCHANGES {
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), exchange(dst)).await {
            Ok(Ok(())) => {
                t.ok += 1;
                t.lat_us.push(t0.elapsed().as_micros() as u64);
            }
            Ok(Err(e)) => {
                t.errors += 1;
                t.first_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                t.errors += 1;
                t.first_error.get_or_insert("timed out after 5 s".into());
            }
        }
    }
    t
}

/// One short connection: connect, request, read the answer to end of stream.
async fn exchange(dst: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(dst).await?;
    s.write_all(REQUEST).await?;
    let mut answer = Vec::with_capacity(32);
    s.read_to_end(&mut answer).await?;
    if answer != ANSWER {
        return Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Namespaces

/// Attacker, honeypot and target namespaces; the honeypot forwards between the others.
struct Net3 {
    /// Honeypot and attacker.
    front: NetPair,
    /// Its attacker namespace is the target; its honeypot namespace is left empty.
    back: NetPair,
}

/// `a.b.c.d` → `a.b.c.0/24`.
fn subnet(v4: &str) -> String {
    let (net, _) = v4.rsplit_once('.').unwrap_or((v4, ""));
    format!("{net}.0/24")
}

impl Net3 {
    /// `link_mbit` > 0: shape the attacker's link to that rate each way.
    fn new(link_mbit: u64) -> Result<Net3> {
        let front = NetPair::new("px")?;
        let back = NetPair::new("pt")?;
        let net = Net3 { front, back };
        let (hp, at, tg) = (net.honeypot(), net.attacker(), net.target_ns());
        if link_mbit > 0 {
            // Both ends of the attacker's veth pair, before the honeypot namespace
            // gets its second veth.
            shape(at, &veth_in(at)?, link_mbit)?;
            shape(hp, &veth_in(hp)?, link_mbit)?;
        }
        // Move the back pair's honeypot-side veth end into the front honeypot namespace
        // (it loses its address on the way).
        let dev = veth_in(&net.back.honeypot)?;
        run(
            "ip",
            &["-n", &net.back.honeypot, "link", "set", &dev, "netns", hp],
        )?;
        let hp_tg = format!("{}/24", net.back.hp_v4);
        run("ip", &["-n", hp, "addr", "add", &hp_tg, "dev", &dev])?;
        run("ip", &["-n", hp, "link", "set", &dev, "up"])?;
        let to_tg = subnet(&net.back.at_v4);
        let to_at = subnet(&net.front.at_v4);
        run(
            "ip",
            &["-n", at, "route", "add", &to_tg, "via", &net.front.hp_v4],
        )?;
        run(
            "ip",
            &["-n", tg, "route", "add", &to_at, "via", &net.back.hp_v4],
        )?;
        sysctl(hp, "net.ipv4.ip_forward=1")?;
        // Many short connections: wide ephemeral ranges, clear of the bench ports.
        for ns in [hp, at] {
            sysctl(ns, "net.ipv4.ip_local_port_range=10000 65000")?;
        }
        Ok(net)
    }

    fn honeypot(&self) -> &str {
        &self.front.honeypot
    }
    fn attacker(&self) -> &str {
        &self.front.attacker
    }
    fn target_ns(&self) -> &str {
        &self.back.attacker
    }
    /// honeytrap's address (attacker side).
    fn hp_v4(&self) -> &str {
        &self.front.hp_v4
    }
    fn target_v4(&self) -> &str {
        &self.back.at_v4
    }
}

/// A token bucket of `mbit` Mbit/s on `dev`'s egress in `ns`. The bucket holds
/// 10 ms of traffic (at least 256 KiB: veth passes 64 KiB GSO packets), and up to
/// 50 ms may queue, as on a switch port.
fn shape(ns: &str, dev: &str, mbit: u64) -> Result<()> {
    let burst = (mbit * 1_000_000 / 8 / 100).max(256 * 1024);
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            &burst.to_string(),
            "latency",
            "50ms",
        ],
    )
}

/// `sysctl -w SETTING` inside `ns` only.
fn sysctl(ns: &str, setting: &str) -> Result<()> {
    run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", setting])
}

/// The one veth device of `ns`.
fn veth_in(ns: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "type", "veth"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .lines()
        .next()
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|n| n.split('@').next())
        .with_context(|| format!("no veth device in namespace {ns}"))?;
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------
// Running the scenario

#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    Upload,
    Download,
    Rate,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Upload => "upload",
            Test::Download => "download",
            Test::Rate => "conn rate",
        }
    }
}

/// Figures of one test for one recording setting.
#[derive(Default)]
struct Series {
    /// MiB/s (bulk) or connections/s (rate), in run order.
    direct: Vec<f64>,
    proxy: Vec<f64>,
    notes: Vec<String>,
}

/// The proxy scenario, start to end; prints the table.
pub fn run_scenario(pa: &ProxyArgs, honeytrap: &Path) -> Result<()> {
    let mut relays = match pa.transcripts.as_str() {
        "both" => vec![Relay::Honeytrap(true), Relay::Honeytrap(false)],
        "on" => vec![Relay::Honeytrap(true)],
        "off" => vec![Relay::Honeytrap(false)],
        t => bail!("--transcripts {t:?}: use on, off or both"),
    };
    if pa.socat {
        let ok = Command::new("socat")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("--socat needs `socat`: apt-get install -y socat");
        }
        relays.push(Relay::Socat(pa.socat_buffer));
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("monbench needs root (it creates network namespaces)");
    }
    if !honeytrap.is_file() {
        bail!(
            "honeytrap binary {} not found: cargo build --release --bin honeytrap",
            honeytrap.display()
        );
    }
    if pa.bulk_mib == 0 || pa.bulk_repeats == 0 || pa.rate_clients == 0 || pa.rate_repeats == 0 {
        bail!("--bulk-mib, --bulk-repeats, --rate-clients and --rate-repeats must be > 0");
    }
    if !(1..=60).contains(&pa.rate_secs) {
        bail!("--rate-secs must be in 1..=60");
    }
    netns::install_signal_cleanup()?;
    if pa.link_mbit > 100_000 {
        bail!("--link-mbit must be at most 100000 (0: unshaped)");
    }
    println!(
        "# monbench proxy: {}; {}; bulk {} MiB x {}, rate {} clients x {} s x {}; attacker link {}",
        super::machine_line(),
        load(),
        pa.bulk_mib,
        pa.bulk_repeats,
        pa.rate_clients,
        pa.rate_secs,
        pa.rate_repeats,
        if pa.link_mbit == 0 {
            "unshaped".to_string()
        } else {
            format!("{} Mbit/s each way (tc tbf)", pa.link_mbit)
        }
    );
    let net = Net3::new(pa.link_mbit)?;
    let _target = start_target(&net)?;
    let mut rows = Vec::new();
    for relay in relays {
        rows.extend(one_setting(pa, honeytrap, &net, relay)?);
    }
    println!("# after: {}", load());
    print_table(&rows);
    Ok(())
}

/// The machine's load averages.
fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let l: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average {}", l.join(" "))
}

/// The target server in the target namespace; killed on drop.
fn start_target(net: &Net3) -> Result<ChildGuard> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe()?;
    let mut cmd = NetPair::exec_in(net.target_ns(), exe.as_os_str());
    cmd.args(["--proxy-child", &format!("target {}", net.target_v4())])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    netns::child_setup(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().context("starting the target")?);
    let stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(l) if l.contains(" ready") => Ok(child),
        other => bail!("the target did not start: {other:?}"),
    }
}

/// A child process killed (and reaped) on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// honeytrap with one recording setting: every test, direct and proxy alternating.
/// What relays the proxied runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// honeytrap, transcripts on or off.
    Honeytrap(bool),
    /// `socat -b BUFFER` (a plain copying relay, nothing recorded): the reference.
    Socat(usize),
}

impl Relay {
    fn label(self) -> String {
        match self {
            Relay::Honeytrap(true) => "transcripts on".into(),
            Relay::Honeytrap(false) => "transcripts off".into(),
            Relay::Socat(b) => format!("socat -b {b}"),
        }
    }

    /// Added to a target port to get the relay's port on the honeypot address.
    fn port_offset(self) -> u16 {
        match self {
            Relay::Honeytrap(_) => 0,
            Relay::Socat(_) => 1000,
        }
    }
}

/// The relay under test, running in the honeypot namespace.
enum Running {
    Honeytrap {
        ht: Target,
        dir: tempfile::TempDir,
        records: u64,
    },
    /// Killed on drop.
    Socat { _procs: Vec<ChildGuard> },
}

/// Start `relay`.
fn start_relay(pa: &ProxyArgs, bin: &Path, net: &Net3, relay: Relay) -> Result<Running> {
    match relay {
        Relay::Socat(buffer) => start_socat(net, buffer, relay.port_offset()),
        Relay::Honeytrap(transcripts) => {
            let dir = tempfile::Builder::new()
                .prefix("monbench-proxy-")
                .tempdir()?;
            netns::remember_dir(dir.path());
            let bulk = pa.bulk_mib * MIB;
            let config = ht_config(net, dir.path(), bulk, pa.bulk_repeats, transcripts);
            if transcripts {
                check_disk(dir.path(), 3 * bulk * pa.bulk_repeats as u64)?;
            }
            let ht = Target::honeytrap(&net.front, bin, &config)?;
            Ok(Running::Honeytrap {
                ht,
                dir,
                records: 0,
            })
        }
    }
}

/// One socat per bulk port, `offset` above it (socat forks per connection, so it is
/// not used for the connection rate).
fn start_socat(net: &Net3, buffer: usize, offset: u16) -> Result<Running> {
    let mut procs = Vec::new();
    for port in [SINK, SOURCE] {
        let mut cmd = NetPair::exec_in(net.honeypot(), "socat".as_ref());
        cmd.args([
            "-b",
            &buffer.to_string(),
            &format!(
                "TCP4-LISTEN:{},bind={},fork,reuseaddr",
                port + offset,
                net.hp_v4()
            ),
            &format!("TCP4:{}:{port}", net.target_v4()),
        ])
        .stdin(std::process::Stdio::null());
        netns::child_setup(&mut cmd);
        procs.push(ChildGuard(cmd.spawn().context("starting socat")?));
    }
    // socat has no ready line; it listens within milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Running::Socat { _procs: procs })
}

impl Running {
    fn cpu(&self) -> f64 {
        match self {
            Running::Honeytrap { ht, .. } => cpu_secs(ht.pid()),
            Running::Socat { .. } => 0.0,
        }
    }

    /// After a proxied run that made `sessions` sessions: wait until honeytrap's
    /// recorder has written them all, so it is idle before the next run.
    fn settle(&mut self, sessions: u64) -> Option<String> {
        let Running::Honeytrap { ht, dir, records } = self else {
            return None;
        };
        *records += sessions;
        wait_records(&dir.path().join("events.jsonl"), *records, ht.pid())
    }

    /// Stop it; notes for the table.
    fn stop(self) -> Vec<String> {
        let Running::Honeytrap { mut ht, dir, .. } = self else {
            return Vec::new();
        };
        let peak = format!(
            "honeytrap VmHWM {:.0} MiB",
            vm_hwm_kib(ht.pid()) as f64 / 1024.0
        );
        let log = ht.stop();
        netns::forget_dir(dir.path());
        vec![peak, super::server_notes(&log, None, None)]
    }
}

/// One relay: every test, direct and proxied runs alternating.
fn one_setting(pa: &ProxyArgs, bin: &Path, net: &Net3, relay: Relay) -> Result<Vec<Row>> {
    let label = relay.label();
    eprintln!("[proxy] {label}: starting the relay");
    let mut running = start_relay(pa, bin, net, relay)?;
    let mut rows = Vec::new();
    for test in [Test::Upload, Test::Download, Test::Rate] {
        let repeats = match test {
            Test::Rate if matches!(relay, Relay::Socat(_)) => continue,
            Test::Rate => pa.rate_repeats,
            _ => pa.bulk_repeats,
        };
        let mut s = Series::default();
        for r in 0..repeats {
            // Flip the order every repeat.
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for proxied in order {
                let cpu0 = running.cpu();
                let offset = if proxied {
                    Some(relay.port_offset())
                } else {
                    None
                };
                let m = measure(pa, net, test, offset)?;
                let cpu = running.cpu() - cpu0;
                let cpu_note = matches!(relay, Relay::Honeytrap(_)) && proxied;
                eprintln!(
                    "[proxy] {label} {} {} #{}: {}{}",
                    test.name(),
                    if proxied { "proxy " } else { "direct" },
                    r + 1,
                    m.line,
                    if cpu_note {
                        format!("; honeytrap CPU {cpu:.2} s")
                    } else {
                        String::new()
                    }
                );
                if proxied {
                    s.proxy.push(m.value);
                    if let Some(note) = running.settle(m.sessions) {
                        s.notes.push(note);
                    }
                    if cpu_note {
                        s.notes.push(format!("#{} honeytrap CPU {cpu:.2} s", r + 1));
                    }
                } else {
                    s.direct.push(m.value);
                }
                if let Some(n) = m.note {
                    s.notes.push(format!(
                        "{} #{}: {n}",
                        if proxied { "proxy" } else { "direct" },
                        r + 1
                    ));
                }
            }
        }
        rows.push(row(test, label.clone(), s));
    }
    let notes = running.stop();
    if let Some(last) = rows.last_mut() {
        last.notes.extend(notes);
    }
    Ok(rows)
}

/// The honeytrap configuration: listen monitor on the bench ports, all relayed to the
/// target by `[proxy.bench]`; limits above one bulk transfer in each direction, so
/// nothing is cut; relay and admission rate limits out of the way.
fn ht_config(net: &Net3, dir: &Path, bulk: u64, repeats: u32, transcripts: bool) -> String {
    let read_limit = bulk + 64 * MIB;
    // All transcripts of the run fit (base64 plus JSON: about 4/3 of the bytes).
    let quota = 2 * read_limit + 3 * bulk * repeats as u64 + 1024 * MIB;
    format!(
        r#"[sensor]
name = "monbench-proxy"
data_dir = "@DATA@"

[process]
log_level = "info"
shutdown_grace = "3s"

[network]
bind_addresses = ["{hp}"]
backlog = 4096

[monitor]
kind = "listen"

[monitor.listen]
tcp = [{SINK}, {SOURCE}, {ECHO}]
udp = []

[limits]
read_limit = {read_limit}
max_buffered = {buffered}
max_sessions = 10000
max_sessions_per_source = 10000
source_rate = 10000000.0
source_burst = 10000000

[relay]
max_relays = 10000
source_rate = 10000000.0
source_burst = 10000000

[proxy.bench]
protocol = "tcp"
ports = [{SINK}, {SOURCE}, {ECHO}]
target_host = "{tg}"

[output]
queue_size = 65536
queue_bytes = {queue}

[output.jsonl]
path = "{events}"

[output.transcripts]
enabled = {transcripts}
dir = "{tdir}"
quota_bytes = {quota}
quota_files = 100000000
"#,
        hp = net.hp_v4(),
        tg = net.target_v4(),
        buffered = 2 * read_limit,
        queue = 2 * read_limit,
        events = dir.join("events.jsonl").display(),
        tdir = dir.join("transcripts").display(),
    )
}

/// Refuse to start when the transcripts of the run would not fit on the disk.
fn check_disk(dir: &Path, need: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free < need + 1024 * MIB {
        bail!(
            "{} has {} MiB free; the transcripts need about {} MiB (or --transcripts off)",
            dir.display(),
            free / MIB,
            need / MIB
        );
    }
    Ok(())
}

/// One client run's result.
struct Measured {
    /// MiB/s or connections/s.
    value: f64,
    /// honeytrap sessions it made (proxy runs).
    sessions: u64,
    line: String,
    note: Option<String>,
}

/// One client run against the target (direct) or honeytrap (proxied).
/// `relay_offset`: None for direct, else the relay's port offset on the honeypot address.
fn measure(pa: &ProxyArgs, net: &Net3, test: Test, relay_offset: Option<u16>) -> Result<Measured> {
    let (host, off) = match relay_offset {
        Some(off) => (net.hp_v4(), off),
        None => (net.target_v4(), 0),
    };
    let bulk = pa.bulk_mib * MIB;
    let (spec, limit) = match test {
        Test::Upload => (format!("upload {host} {} {bulk}", SINK + off), 300),
        Test::Download => (format!("download {host} {} {bulk}", SOURCE + off), 300),
        Test::Rate => (
            format!(
                "rate {host} {} {} {}",
                ECHO + off,
                pa.rate_clients,
                pa.rate_secs
            ),
            pa.rate_secs + 60,
        ),
    };
    let exe = std::env::current_exe()?;
    let mut cmd = NetPair::exec_in(net.attacker(), exe.as_os_str());
    cmd.args(["--proxy-child", &spec]);
    let out = super::run_bounded(cmd, Duration::from_secs(limit))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "client {spec:?}: output {text:?}, status {}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("client {spec:?} failed: {e}");
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(match test {
        Test::Rate => {
            let (ok, errors) = (f("ok"), f("errors"));
            let rate = ok / f("secs").max(1e-9);
            Measured {
                value: rate,
                sessions: ok as u64 + errors as u64,
                line: format!(
                    "{rate:.0} conn/s ({ok} ok, {errors} errors in {:.2} s; p50 {} µs, p99 {} µs)",
                    f("secs"),
                    f("p50_us"),
                    f("p99_us")
                ),
                note: (errors > 0.0).then(|| {
                    format!(
                        "{errors} errors, first: {}",
                        v["first_error"].as_str().unwrap_or("?")
                    )
                }),
            }
        }
        _ => {
            let mibs = bulk as f64 / MIB as f64 / f("secs").max(1e-9);
            Measured {
                value: mibs,
                sessions: 1,
                line: format!(
                    "{mibs:.0} MiB/s ({} MiB in {:.3} s)",
                    pa.bulk_mib,
                    f("secs")
                ),
                note: None,
            }
        }
    })
}

/// Wait (at most 300 s) until honeytrap's event file has `n` lines, so the recorder
/// is idle before the next run (hashing and writing a large record takes seconds);
/// gives up early when honeytrap has used no CPU for 3 s. A note if it never got there.
fn wait_records(events: &Path, n: u64, pid: u32) -> Option<String> {
    let t0 = Instant::now();
    let (mut cpu, mut since) = (cpu_secs(pid), Instant::now());
    let mut lines = 0;
    while t0.elapsed() < Duration::from_secs(300) {
        lines = std::fs::read(events)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .unwrap_or(0);
        if lines >= n {
            return None;
        }
        let now = cpu_secs(pid);
        if now - cpu > 0.05 {
            (cpu, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(3) {
            return Some(format!("{lines} of {n} records written (honeytrap idle)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(format!("{lines} of {n} records written after 300 s"))
}

/// User plus system CPU seconds of `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Table

struct Row {
    test: Test,
    setting: String,
    direct: String,
    proxy: String,
    ratio: String,
    goal: String,
    notes: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `median (min–max)` of `v` with `unit`.
fn spread(v: &[f64], unit: &str) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{:.0} {unit} ({min:.0}-{max:.0})", median(v))
}

fn row(test: Test, setting: String, s: Series) -> Row {
    let unit = if test == Test::Rate {
        "conn/s"
    } else {
        "MiB/s"
    };
    let ratio = median(&s.proxy) / median(&s.direct).max(1e-9);
    // Run-by-run ratios (repeat i of proxy against repeat i of direct).
    let pairs: Vec<f64> = s
        .direct
        .iter()
        .zip(&s.proxy)
        .map(|(d, p)| p / d.max(1e-9))
        .collect();
    let lo = pairs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pairs.iter().copied().fold(0.0, f64::max);
    let goal = match test {
        Test::Rate => "none set".to_string(),
        _ => format!(">=0.80x: {}", super::verdict(ratio >= 0.80)),
    };
    Row {
        test,
        setting,
        direct: spread(&s.direct, unit),
        proxy: spread(&s.proxy, unit),
        ratio: format!("{ratio:.2}x ({lo:.2}-{hi:.2})"),
        goal,
        notes: s.notes,
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<10} {:<16} {:<26} {:<26} {:<18} {:<16} notes",
        "test",
        "recording",
        "direct median (range)",
        "proxy median (range)",
        "ratio (runs)",
        "target (issue 4)"
    );
    for r in rows {
        println!(
            "{:<10} {:<16} {:<26} {:<26} {:<18} {:<16} {}",
            r.test.name(),
            r.setting,
            r.direct,
            r.proxy,
            r.ratio,
            r.goal,
            r.notes.join("; ")
        );
    }
}
