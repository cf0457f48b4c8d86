//! Downloaders: follow the attacker's instructions (`wget`, `tftp`, `ftp -s:`
//! scripts, ...) and fetch the file he points at, with honeytrap's own clients and
//! never a shell. This module holds what every downloader shares: the safety checks
//! of `[downloads]` (which addresses may be contacted, the size and time caps, the
//! global concurrency cap, the dedup window) and small I/O helpers.
//!
//! Address safety: names are resolved here, every address is checked (also after
//! redirects and FTP PASV replies), and the client connects to the checked address
//! itself, so a name that resolves differently the second time (DNS rebinding)
//! cannot lead anywhere unchecked.

pub mod command;
pub mod ftp;
pub mod http;
pub mod store;
pub mod tftp;

use super::record::Download;
use super::Input;
use crate::config::{Config, DownloadsConfig, RelayConfig};
use crate::mode::guard::{forbidden, RelayGuard};
use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Most URLs remembered for the dedup window; past it, expired ones are dropped,
/// then the oldest.
const SEEN_MAX: usize = 65_536;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or network (CIDR)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = crate::mode::guard::canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = bits as usize;
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// `[downloads]` in force, with the allow-list parsed and the data directory.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cfg: DownloadsConfig,
    pub allow: Vec<Cidr>,
    pub data_dir: PathBuf,
}

impl Settings {
    pub fn from_config(config: &Config) -> anyhow::Result<Arc<Settings>> {
        let allow = config
            .downloads
            .allow
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| anyhow::anyhow!("downloads.allow: {e}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(Settings {
            cfg: config.downloads.clone(),
            allow,
            data_dir: config.sensor.data_dir.clone(),
        }))
    }

    /// Whether a download may connect to `ip`: an allow-listed network always;
    /// otherwise never loopback, link-local, multicast, private, reserved or the
    /// sensor's own addresses.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        // The mirror guard's checks, with private ranges refused.
        global().guard.mirror_allowed(ip, &strict_relay())
    }

    /// The address to connect to for `ip`, or why none is allowed. With
    /// `replace_private_ips`, a private address becomes the attacker's.
    pub fn check(&self, ip: IpAddr, attacker: IpAddr) -> Result<IpAddr, String> {
        if self.allowed(ip) {
            return Ok(ip);
        }
        let private = forbidden(ip, false) && !forbidden(ip, true);
        if private && self.cfg.replace_private_ips {
            if self.allowed(attacker) {
                return Ok(attacker);
            }
            return Err(format!(
                "refused: {ip} is private and the attacker's address {attacker} is not allowed either"
            ));
        }
        Err(format!(
            "refused: {ip} is a forbidden address (loopback, link-local, multicast, private, reserved or the sensor's own)"
        ))
    }
}

fn strict_relay() -> RelayConfig {
    RelayConfig {
        mirror_private: false,
        ..RelayConfig::default()
    }
}

/// One download in progress: the settings, the attacker, the deadline.
pub struct Job<'a> {
    pub settings: &'a Settings,
    pub attacker: IpAddr,
    pub deadline: Instant,
}

impl Job<'_> {
    /// A job for `input`: the time cap, never past the input's deadline.
    pub fn new<'a>(settings: &'a Settings, input: &Input) -> Job<'a> {
        Job {
            settings,
            attacker: input.attack.remote.ip(),
            deadline: input.deadline.min(Instant::now() + settings.cfg.timeout),
        }
    }

    /// Time left, or an error when it is up.
    pub fn left(&self) -> std::io::Result<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "time cap reached",
            ));
        }
        Ok(self.deadline - now)
    }

    /// Resolve `host` (a name or an address) and pick the first address that may be
    /// contacted (see [`Settings::check`]).
    pub fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ips: Vec<IpAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.lookup(bare, port)?,
        };
        let mut last = format!("{host}: no address");
        for ip in ips {
            match self.settings.check(ip, self.attacker) {
                Ok(ip) => return Ok(SocketAddr::new(ip, port)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Look a name up (getaddrinfo, on a helper thread so the time cap holds).
    fn lookup(&self, name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        if name.is_empty()
            || name.len() > 253
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        {
            return Err(format!("`{name}` is not a host name"));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let query = format!("{name}:{port}");
        std::thread::Builder::new()
            .name("download-dns".into())
            .spawn(move || {
                let r = query
                    .to_socket_addrs()
                    .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>());
                let _ = tx.send(r);
            })
            .map_err(|e| format!("resolving {name}: {e}"))?;
        let left = self.left().map_err(|e| e.to_string())?;
        match rx.recv_timeout(left) {
            Ok(Ok(ips)) if !ips.is_empty() => Ok(ips),
            Ok(Ok(_)) => Err(format!("{name}: no address")),
            Ok(Err(e)) => Err(format!("resolving {name}: {e}")),
            Err(_) => Err(format!("resolving {name}: time cap reached")),
        }
    }

    /// Connect over TCP to a checked address within the time left.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let s = std::net::TcpStream::connect_timeout(&addr, self.left()?)?;
        self.arm(&s)?;
        Ok(s)
    }

    /// Set a socket's timeouts to the time left.
    pub fn arm(&self, s: &std::net::TcpStream) -> std::io::Result<()> {
        let left = self.left()?;
        s.set_read_timeout(Some(left))?;
        s.set_write_timeout(Some(left))
    }

    /// Read `r` to its end, or up to the size cap (then `truncated`).
    pub fn read_capped(&self, r: &mut dyn Read) -> std::io::Result<(Vec<u8>, bool)> {
        let cap = self.settings.cfg.max_size as usize;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.left()?;
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok((data, false)),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let room = cap - data.len();
            if n > room {
                data.extend_from_slice(&buf[..room]);
                return Ok((data, true));
            }
            data.extend_from_slice(&buf[..n]);
            if data.len() == cap {
                // Exactly at the cap: one more byte tells whether it was cut.
                let mut one = [0u8; 1];
                return match r.read(&mut one) {
                    Ok(0) => Ok((data, false)),
                    _ => Ok((data, true)),
                };
            }
        }
    }
}

/// Process-wide state of the downloaders: it outlives a reload (which rebuilds the
/// analyzers).
struct Global {
    guard: Arc<RelayGuard>,
    running: Mutex<usize>,
    freed: Condvar,
    seen: Mutex<HashMap<String, Seen>>,
    seen_changed: Condvar,
}

/// A URL fetched (or being fetched) within the dedup window.
struct Seen {
    at: Instant,
    /// None while the first fetch runs.
    result: Option<Download>,
    /// Attacks that already have a record of it (a URL found twice in one attack,
    /// e.g. in the payload and in a decoded copy, is reported once).
    attacks: Vec<Uuid>,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| Global {
        guard: RelayGuard::new(),
        running: Mutex::new(0),
        freed: Condvar::new(),
        seen: Mutex::new(HashMap::new()),
        seen_changed: Condvar::new(),
    })
}

/// A slot under `downloads.max_concurrent`; freed when dropped.
pub struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        let g = global();
        *g.running.lock().unwrap() -= 1;
        g.freed.notify_one();
    }
}

/// Wait for a slot under the concurrency cap until the job's deadline.
fn slot(job: &Job) -> Result<Slot, String> {
    let g = global();
    let mut running = g.running.lock().unwrap();
    while *running >= job.settings.cfg.max_concurrent {
        let left = job
            .left()
            .map_err(|_| "no download slot free before the time cap (downloads.max_concurrent)")?;
        running = g.freed.wait_timeout(running, left).unwrap().0;
    }
    *running += 1;
    Ok(Slot)
}

/// What the dedup window says about a URL.
enum Dedup {
    /// This attack already has it: nothing to report.
    Skip,
    /// Fetched earlier: a copy of that record, `cached = true`.
    Cached(Box<Download>),
    /// Fetch it now; finish the ticket with the result.
    Fetch(Ticket),
}

/// The right (and duty) to fetch a URL; dropping it unfinished forgets the URL.
struct Ticket {
    key: String,
    done: bool,
}

impl Ticket {
    fn finish(mut self, d: &Download) {
        let g = global();
        let mut seen = g.seen.lock().unwrap();
        if let Some(s) = seen.get_mut(&self.key) {
            let mut copy = d.clone();
            copy.data = None;
            s.result = Some(copy);
        }
        self.done = true;
        g.seen_changed.notify_all();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let g = global();
            g.seen.lock().unwrap().remove(&self.key);
            g.seen_changed.notify_all();
        }
    }
}

fn dedup(key: &str, attack: Uuid, job: &Job) -> Dedup {
    let g = global();
    let window = job.settings.cfg.dedup_window;
    let mut seen = g.seen.lock().unwrap();
    loop {
        let now = Instant::now();
        if seen.len() >= SEEN_MAX {
            prune(&mut seen, window);
        }
        match seen.get_mut(key) {
            Some(s) if now.duration_since(s.at) < window => {
                if s.attacks.contains(&attack) {
                    return Dedup::Skip;
                }
                match &s.result {
                    Some(d) => {
                        if s.attacks.len() < 64 {
                            s.attacks.push(attack);
                        }
                        return Dedup::Cached(Box::new(cached_copy(d, job.settings)));
                    }
                    None => {
                        // Another worker is fetching it: wait for its result.
                        let Ok(left) = job.left() else {
                            return Dedup::Skip;
                        };
                        seen = g.seen_changed.wait_timeout(seen, left).unwrap().0;
                    }
                }
            }
            _ => {
                seen.insert(
                    key.to_string(),
                    Seen {
                        at: now,
                        result: None,
                        attacks: vec![attack],
                    },
                );
                return Dedup::Fetch(Ticket {
                    key: key.to_string(),
                    done: false,
                });
            }
        }
    }
}

/// Drop expired entries, then (still too many) the oldest half.
fn prune(seen: &mut HashMap<String, Seen>, window: Duration) {
    seen.retain(|_, s| s.at.elapsed() < window);
    if seen.len() >= SEEN_MAX {
        let mut ages: Vec<Instant> = seen.values().map(|s| s.at).collect();
        ages.sort();
        let cut = ages[ages.len() / 2];
        seen.retain(|_, s| s.at > cut);
    }
}

/// A record of an earlier download for a later attack: same URL, hashes and
/// outcome, pointing at the stored file if it is there.
fn cached_copy(d: &Download, settings: &Settings) -> Download {
    let mut c = d.clone();
    c.cached = true;
    c.data = None;
    c.stored = d.hashes.as_ref().and_then(|h| {
        let rel = store::relative_path(&h.sha256);
        settings.data_dir.join(&rel).is_file().then_some(rel)
    });
    c
}

/// Forget every URL (tests).
#[cfg(test)]
pub fn forget_all() {
    global().seen.lock().unwrap().clear();
}

/// One thing to fetch, as a downloader parsed it from a command.
pub trait Target {
    /// The URL as honeytrap understands it (also the dedup key).
    fn url(&self) -> String;
    /// A record for it before fetching (analyzer, url, host, port, user, password).
    fn record(&self) -> Download;
}

/// Run a downloader's fetch for each target, at most `input.downloads_left`, with
/// the dedup window, the concurrency cap and the time cap; every attempt (also a
/// failed one) becomes a record in `out`.
pub fn fetch_all<T: Target>(
    settings: &Settings,
    input: &Input,
    targets: Vec<T>,
    out: &mut super::Output,
    fetch: impl Fn(&T, &Job, &mut Download) -> Result<(), String>,
) {
    let mut seen_here = std::collections::HashSet::new();
    for t in targets {
        if out.downloads.len() >= input.downloads_left {
            break;
        }
        let url = t.url();
        if !seen_here.insert(url.clone()) {
            continue;
        }
        let job = Job::new(settings, input);
        let ticket = match dedup(&url, input.attack.id, &job) {
            Dedup::Skip => continue,
            Dedup::Cached(d) => {
                out.downloads.push(*d);
                continue;
            }
            Dedup::Fetch(t) => t,
        };
        let mut d = t.record();
        let result = slot(&job).and_then(|_slot| fetch(&t, &job, &mut d));
        if let Err(e) = result {
            tracing::info!(analyzer = d.analyzer, url = %d.url, error = %e, "download failed");
            d.error = Some(e);
        } else {
            tracing::info!(analyzer = d.analyzer, url = %d.url, size = d.size, truncated = d.truncated, "downloaded");
        }
        ticket.finish(&d);
        out.downloads.push(d);
    }
}

/// Fill a record with received content.
pub fn received(d: &mut Download, data: Vec<u8>, truncated: bool) {
    d.truncated = truncated;
    d.set_data(data);
}

/// Options every downloader has besides its own: just `enabled` (default on).
pub fn default_true() -> bool {
    true
}

/// Helpers for the downloaders' tests.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::attack::{Attack, Captured, EndReason, Mode, Transcript};

    /// An attack from `remote`.
    pub fn attack(remote: &str) -> Attack {
        Captured {
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            sensor: "s".into(),
            monitor: "m".into(),
            mode: Mode::Normal,
            protocol: crate::proto::Protocol::Tcp,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: remote.parse().unwrap(),
            transcript: Transcript::default(),
            responses_sent: 0,
            end_reason: EndReason::Closed,
            relay: None,
        }
        .seal()
    }

    /// Settings that allow loopback, with `max_size`, in `data_dir`.
    pub fn settings(max_size: u64, data_dir: &std::path::Path) -> Arc<Settings> {
        Arc::new(Settings {
            cfg: DownloadsConfig {
                max_size,
                allow: vec!["127.0.0.0/8".into()],
                ..DownloadsConfig::default()
            },
            allow: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Run `a` on `payload` as the payload of `attack`.
    pub fn run(
        a: &dyn crate::analysis::Analyzer,
        attack: &Attack,
        payload: &[u8],
    ) -> Vec<Download> {
        let input = Input {
            data: payload,
            kind: crate::analysis::InputKind::Payload,
            attack,
            depth: 0,
            deadline: Instant::now() + Duration::from_secs(10),
            download: None,
            downloads_left: 5,
        };
        let mut out = crate::analysis::Output::default();
        a.run(&input, &mut out).unwrap();
        out.downloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow: &[&str], replace: bool) -> Settings {
        Settings {
            cfg: DownloadsConfig {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                replace_private_ips: replace,
                ..DownloadsConfig::default()
            },
            allow: allow.iter().map(|s| Cidr::parse(s).unwrap()).collect(),
            data_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn config_checked_with_key_and_line() {
        let parse = |t: &str| crate::config::parse(std::path::Path::new("t.toml"), t);
        let c = parse("[downloads]\nallow = [\"10.77.0.0/16\", \"fd77::1\"]\n").unwrap();
        assert_eq!(Settings::from_config(&c).unwrap().allow.len(), 2);
        for (text, key) in [
            (
                "[downloads]\nallow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
                "downloads.allow[1]",
            ),
            ("[downloads]\nmax_size = 0\n", "downloads.max_size"),
            ("[downloads]\ntimeout = \"0s\"\n", "downloads.timeout"),
            (
                "[downloads]\nmax_concurrent = 0\n",
                "downloads.max_concurrent",
            ),
            (
                "[downloads]\nquota_bytes = \"1MiB\"\n",
                "downloads.quota_bytes",
            ),
            ("[downloads]\nquota_files = 0\n", "downloads.quota_files"),
            ("[downloads]\nmax_sise = 1\n", "max_sise"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[analyzer.http]\nmax_redirect = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_redirect"), "{e}");
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.77.0.0/16").unwrap();
        assert!(c.contains(ip("10.77.3.2")));
        assert!(c.contains(ip("::ffff:10.77.3.2")));
        assert!(!c.contains(ip("10.78.0.1")));
        assert!(Cidr::parse("fd77::/16").unwrap().contains(ip("fd77:5::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(!Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn address_checks() {
        let s = settings(&[], false);
        let at = ip("203.0.113.9");
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            assert!(s.check(ip(bad), at).is_err(), "{bad}");
        }
        assert_eq!(s.check(ip("8.8.8.8"), at), Ok(ip("8.8.8.8")));
        // The allow-list exempts its networks.
        let s = settings(&["10.77.0.0/16"], false);
        assert!(s.check(ip("10.77.1.2"), at).is_ok());
        assert!(s.check(ip("10.78.1.2"), at).is_err());
        // replace_private_ips: a private target becomes the attacker (if allowed).
        let s = settings(&[], true);
        assert_eq!(s.check(ip("192.168.1.1"), ip("8.8.4.4")), Ok(ip("8.8.4.4")));
        assert!(s.check(ip("192.168.1.1"), ip("10.1.1.1")).is_err());
        assert!(
            s.check(ip("127.0.0.1"), ip("8.8.4.4")).is_err(),
            "loopback is not private"
        );
    }

    #[test]
    fn names_are_checked_after_resolution() {
        let s = settings(&[], false);
        let job = Job {
            settings: &s,
            attacker: ip("203.0.113.9"),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        assert!(job
            .resolve("localhost", 80)
            .unwrap_err()
            .contains("refused"));
        assert!(job.resolve("bad name;rm", 80).is_err());
        assert_eq!(
            job.resolve("[2a00:1450::1]", 443).unwrap(),
            "[2a00:1450::1]:443".parse().unwrap()
        );
    }

    fn job(s: &Settings, ms: u64) -> Job<'_> {
        Job {
            settings: s,
            attacker: ip("203.0.113.9"),
            deadline: Instant::now() + Duration::from_millis(ms),
        }
    }

    #[test]
    fn concurrency_cap_waits_then_gives_up() {
        let mut s = settings(&[], false);
        s.cfg.max_concurrent = 1;
        let held = slot(&job(&s, 5000)).unwrap();
        let t = Instant::now();
        let err = slot(&job(&s, 150)).err().unwrap();
        assert!(err.contains("max_concurrent"), "{err}");
        assert!(t.elapsed() >= Duration::from_millis(140));
        // Freed: the next one gets it at once.
        drop(held);
        assert!(slot(&job(&s, 1000)).is_ok());
    }

    #[test]
    fn dedup_window() {
        let s = settings(&[], false);
        let (a1, a2) = (Uuid::now_v7(), Uuid::now_v7());
        let key = format!("http://dedup.test/{}", Uuid::now_v7());
        let Dedup::Fetch(ticket) = dedup(&key, a1, &job(&s, 1000)) else {
            panic!("first time: fetch");
        };
        // The same attack asking again while it runs (a decoded copy): nothing.
        assert!(matches!(dedup(&key, a1, &job(&s, 1000)), Dedup::Skip));
        // Another attack waits for the running fetch, then gets its result.
        let waiter = {
            let s = s.clone();
            let key = key.clone();
            std::thread::spawn(move || match dedup(&key, a2, &job(&s, 5000)) {
                Dedup::Cached(d) => *d,
                _ => panic!("expected the cached record"),
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let mut d = Download::new("http", key.clone(), "h".into(), 80);
        d.set_data(b"abc".to_vec());
        ticket.finish(&d);
        let c = waiter.join().unwrap();
        assert!(c.cached && c.data.is_none());
        assert_eq!(c.hashes, d.hashes);
        assert_eq!(c.stored, None, "no stored file in this data_dir");
        // A ticket dropped unfinished (a panic) forgets the URL.
        let other = format!("{key}/x");
        drop(dedup(&other, a1, &job(&s, 1000)));
        assert!(matches!(dedup(&other, a2, &job(&s, 1000)), Dedup::Fetch(_)));
        // Outside the window it is fetched again.
        let mut s0 = settings(&[], false);
        s0.cfg.dedup_window = Duration::ZERO;
        assert!(matches!(dedup(&key, a2, &job(&s0, 1000)), Dedup::Fetch(_)));
    }

    #[test]
    fn read_capped_cuts_and_marks() {
        let mut s = settings(&[], false);
        s.cfg.max_size = 10;
        let job = Job {
            settings: &s,
            attacker: ip("203.0.113.9"),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let (d, t) = job.read_capped(&mut &b"0123456789abc"[..]).unwrap();
        assert_eq!((d.as_slice(), t), (&b"0123456789"[..], true));
        let (d, t) = job.read_capped(&mut &b"0123456789"[..]).unwrap();
        assert_eq!((d.len(), t), (10, false));
        let (d, t) = job.read_capped(&mut &b"01"[..]).unwrap();
        assert_eq!((d.len(), t), (2, false));
    }
}
