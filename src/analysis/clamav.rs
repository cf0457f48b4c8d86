//! The `clamav` analyzer: streams payloads, decoded copies and downloads to a
//! running `clamd` (its Unix socket or TCP address) with the INSTREAM command, and
//! turns a detection into a finding of kind `clamav` with the signature name.
//!
//! Protocol: `zINSTREAM\0`, then chunks `<u32 big-endian length><bytes>`, a chunk
//! of length 0 to end, and one NUL-terminated reply: `stream: OK`,
//! `stream: <signature> FOUND` or `<message> ERROR`.
//!
//! clamd being down or too slow is an error of the run (the pipeline records it in
//! `honeytrap.analysis.failures`, counts and logs it; the attack is written as
//! always). Connecting is tried `retries` more times, a short pause apart; when
//! clamd still cannot be reached, the inputs of the next `backoff` fail at once
//! (same error, nothing sent), so a down clamd does not cost the full timeout on
//! every input; the first input after that tries again.

use super::registry::{self, Options, Registration};
use super::{Analyzer, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const NAME: &str = "clamav";

/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 * 1024;
/// Pause between connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// `[analyzer.clamav]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamavOptions {
    pub enabled: bool,
    /// clamd's Unix socket (its `LocalSocket`).
    pub socket: String,
    /// clamd's TCP address `host:port` (its `TCPSocket`/`TCPAddr`).
    pub address: String,
    /// Time limit of one scan (connect, send, reply).
    #[serde(with = "crate::config::units::duration")]
    pub timeout: Duration,
    /// Send at most this many bytes of an input (keep it below clamd's
    /// `StreamMaxLength`, or clamd refuses the stream).
    #[serde(with = "crate::config::units::bytesize")]
    pub max_size: u64,
    /// Connection attempts after the first one failed, for one input.
    pub retries: u32,
    /// After clamd could not be reached, fail at once for this long.
    #[serde(with = "crate::config::units::duration")]
    pub backoff: Duration,
}

impl Default for ClamavOptions {
    fn default() -> Self {
        ClamavOptions {
            enabled: false,
            socket: String::new(),
            address: String::new(),
            timeout: Duration::from_secs(10),
            max_size: 16 << 20,
            retries: 2,
            backoff: Duration::from_secs(10),
        }
    }
}

impl Options for ClamavOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &ClamavOptions) -> Result<(), (String, String)> {
    if o.timeout.is_zero() {
        return Err(("timeout".into(), "must be more than 0".into()));
    }
    if !(1..=1 << 30).contains(&o.max_size) {
        return Err(("max_size".into(), "must be between 1B and 1GiB".into()));
    }
    if o.retries > 10 {
        return Err(("retries".into(), "must be between 0 and 10".into()));
    }
    if !o.socket.is_empty() && !o.address.is_empty() {
        return Err((
            "address".into(),
            "give either socket or address, not both".into(),
        ));
    }
    if !o.address.is_empty() && split_address(&o.address).is_none() {
        return Err((
            "address".into(),
            format!("`{}` is not host:port", o.address),
        ));
    }
    if o.enabled && o.socket.is_empty() && o.address.is_empty() {
        return Err((
            "socket".into(),
            "the clamav analyzer needs clamd's socket (a Unix path) or address (host:port)".into(),
        ));
    }
    Ok(())
}

fn split_address(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let port = port.parse().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then_some((host, port))
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "scans payloads, decoded copies and downloads with a running clamd (INSTREAM)",
        options: |t| super::decoding::checked(t, check),
        build: |t, _| registry::build_with(t, |o: ClamavOptions| Ok(Clamav::new(o))),
    }
}

/// What clamd said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Found(String),
}

/// The analyzer.
pub struct Clamav {
    o: ClamavOptions,
    /// Until when clamd counts as down, and the error that made it so.
    down: Mutex<Option<(Instant, String)>>,
}

impl Clamav {
    pub fn new(o: ClamavOptions) -> Clamav {
        Clamav {
            o,
            down: Mutex::new(None),
        }
    }

    fn target(&self) -> String {
        if self.o.socket.is_empty() {
            self.o.address.clone()
        } else {
            self.o.socket.clone()
        }
    }

    /// Connect to clamd with `retries`, or fail at once within the backoff.
    fn connect(&self, deadline: Instant) -> anyhow::Result<Box<dyn Stream>> {
        if let Some((until, why)) = self.down.lock().unwrap().clone() {
            if Instant::now() < until {
                anyhow::bail!(
                    "clamd at {} unreachable ({why}); not tried again for up to {} s",
                    self.target(),
                    self.o.backoff.as_secs()
                );
            }
        }
        let mut last = String::new();
        for attempt in 0..=self.o.retries {
            if attempt > 0 {
                if Instant::now() + RETRY_PAUSE >= deadline {
                    break;
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            match connect(&self.o, deadline) {
                Ok(s) => {
                    *self.down.lock().unwrap() = None;
                    return Ok(s);
                }
                Err(e) => last = e.to_string(),
            }
        }
        self.mark_down(&last);
        anyhow::bail!("clamd at {} unreachable: {last}", self.target())
    }

    fn mark_down(&self, why: &str) {
        *self.down.lock().unwrap() = Some((Instant::now() + self.o.backoff, why.to_string()));
    }
}

impl Analyzer for Clamav {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Analyze
    }
    fn accepts(&self, kind: InputKind) -> bool {
        matches!(
            kind,
            InputKind::Payload | InputKind::Decoded | InputKind::Download
        )
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        if input.data.is_empty() {
            return Ok(());
        }
        let deadline = input.deadline.min(Instant::now() + self.o.timeout);
        let max = usize::try_from(self.o.max_size).unwrap_or(usize::MAX);
        let data = &input.data[..input.data.len().min(max)];
        let mut stream = self.connect(deadline)?;
        let verdict = match instream(stream.as_mut(), data) {
            Ok(v) => v,
            Err(e) => {
                // A clamd that hangs is as good as down.
                if is_timeout(&e) {
                    self.mark_down("timed out");
                }
                return Err(e.context(format!("clamd at {}", self.target())));
            }
        };
        if let Verdict::Found(signature) = verdict {
            out.finding(NAME, "clamav", format!("ClamAV: {signature} FOUND"))
                .meta("signature", signature)
                .meta("scanned_bytes", data.len() as u64)
                .meta("truncated", data.len() < input.data.len());
        }
        Ok(())
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        })
    })
}

/// A connection to clamd.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Connect to clamd with the time left until `deadline` as the socket timeouts.
fn connect(o: &ClamavOptions, deadline: Instant) -> std::io::Result<Box<dyn Stream>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no time left",
        ));
    }
    if !o.socket.is_empty() {
        let s = std::os::unix::net::UnixStream::connect(&o.socket)?;
        s.set_read_timeout(Some(left))?;
        s.set_write_timeout(Some(left))?;
        return Ok(Box::new(s));
    }
    let (host, port) = split_address(&o.address).expect("checked with the config");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
    let s = std::net::TcpStream::connect_timeout(&addr, left)?;
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))?;
    s.set_nodelay(true)?;
    Ok(Box::new(s))
}

/// Send `data` with INSTREAM and read clamd's verdict.
pub fn instream(s: &mut dyn Stream, data: &[u8]) -> anyhow::Result<Verdict> {
    let sent = send(s, data);
    // clamd may answer (and close) before reading everything, e.g. past its
    // StreamMaxLength: its reply says more than the broken pipe.
    let reply = read_reply(s);
    match (sent, reply) {
        (_, Ok(r)) if !r.is_empty() => parse_reply(&r),
        (Err(e), _) => Err(anyhow::Error::new(e).context("sending the stream")),
        (Ok(()), Err(e)) => Err(anyhow::Error::new(e).context("reading the reply")),
        (Ok(()), Ok(_)) => anyhow::bail!("clamd closed the connection without a reply"),
    }
}

fn send(s: &mut dyn Stream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(b"zINSTREAM\0")?;
    for chunk in data.chunks(CHUNK) {
        s.write_all(&(chunk.len() as u32).to_be_bytes())?;
        s.write_all(chunk)?;
    }
    s.write_all(&0u32.to_be_bytes())?;
    s.flush()
}

/// Read up to the terminating NUL (or the end of the connection).
fn read_reply(s: &mut dyn Stream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while reply.len() < MAX_REPLY {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|&b| b == 0) {
            reply.truncate(end);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_string())
}

/// `stream: OK`, `stream: <name> FOUND`, `... ERROR`.
pub fn parse_reply(reply: &str) -> anyhow::Result<Verdict> {
    let body = reply
        .strip_prefix("stream:")
        .map(str::trim)
        .unwrap_or(reply);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        let name: String = name
            .trim()
            .chars()
            .take(200)
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        return Ok(Verdict::Found(name));
    }
    let shown: String = reply.chars().take(200).collect();
    anyhow::bail!("clamd: {shown}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake clamd on a Unix socket: reads one INSTREAM, records the stream, and
    /// answers FOUND when it contains `EVIL`, else OK.
    fn fake_clamd(dir: &std::path::Path) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let path = dir.join("clamd.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut cmd = [0u8; 10];
            c.read_exact(&mut cmd).unwrap();
            assert_eq!(&cmd, b"zINSTREAM\0");
            let mut got = Vec::new();
            loop {
                let mut len = [0u8; 4];
                c.read_exact(&mut len).unwrap();
                let len = u32::from_be_bytes(len) as usize;
                if len == 0 {
                    break;
                }
                assert!(len <= CHUNK);
                let mut chunk = vec![0u8; len];
                c.read_exact(&mut chunk).unwrap();
                got.extend(chunk);
            }
            let reply: &[u8] = if got.windows(4).any(|w| w == b"EVIL") {
                b"stream: Fake.Evil-1 FOUND\0"
            } else {
                b"stream: OK\0"
            };
            c.write_all(reply).unwrap();
            got
        });
        (path.display().to_string(), h)
    }

    fn analyzer(socket: &str) -> Clamav {
        Clamav::new(ClamavOptions {
            enabled: true,
            socket: socket.into(),
            max_size: 100_000,
            backoff: Duration::from_millis(300),
            ..ClamavOptions::default()
        })
    }

    fn scan(a: &Clamav, data: &[u8]) -> anyhow::Result<Output> {
        let attack = super::super::download::testing::attack("10.0.0.2:4000");
        let input = Input {
            data,
            kind: InputKind::Download,
            attack: &attack,
            depth: 1,
            deadline: Instant::now() + Duration::from_secs(5),
            download: None,
            downloads_left: 0,
        };
        let mut out = Output::default();
        a.run(&input, &mut out)?;
        Ok(out)
    }

    #[test]
    fn instream_against_a_fake_clamd() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than one chunk and than max_size: cut, chunked.
        let mut data = vec![b'a'; 150_000];
        data[70_000..70_004].copy_from_slice(b"EVIL");
        let (sock, h) = fake_clamd(dir.path());
        let out = scan(&analyzer(&sock), &data).unwrap();
        assert_eq!(
            h.join().unwrap(),
            &data[..100_000],
            "the first max_size bytes"
        );
        assert_eq!(out.findings.len(), 1);
        let f = &out.findings[0];
        assert_eq!((f.analyzer, f.kind.as_str()), ("clamav", "clamav"));
        assert_eq!(f.meta["signature"], "Fake.Evil-1");
        assert_eq!(f.meta["truncated"], true);
        std::fs::remove_file(&sock).unwrap();
        let (sock, h) = fake_clamd(dir.path());
        assert!(scan(&analyzer(&sock), b"benign")
            .unwrap()
            .findings
            .is_empty());
        assert_eq!(h.join().unwrap(), b"benign");
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND").unwrap(),
            Verdict::Found("Eicar-Test-Signature".into())
        );
        let e = parse_reply("INSTREAM size limit exceeded. ERROR").unwrap_err();
        assert!(e.to_string().contains("size limit"), "{e}");
    }

    #[test]
    fn a_down_clamd_fails_fast_within_the_backoff_then_retries() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("clamd.sock").display().to_string();
        let a = analyzer(&sock);
        let t = Instant::now();
        let e = scan(&a, b"x").unwrap_err().to_string();
        assert!(e.contains("unreachable"), "{e}");
        assert!(t.elapsed() >= 2 * RETRY_PAUSE, "retried twice");
        let t = Instant::now();
        let e = scan(&a, b"x").unwrap_err().to_string();
        assert!(e.contains("not tried again"), "{e}");
        assert!(t.elapsed() < RETRY_PAUSE, "failed at once");
        // After the backoff, clamd is tried again (and now it is there).
        std::thread::sleep(Duration::from_millis(350));
        let (sock2, h) = fake_clamd(dir.path());
        assert_eq!(sock, sock2);
        assert_eq!(scan(&a, b"EVIL").unwrap().findings.len(), 1);
        h.join().unwrap();
    }

    #[test]
    fn options_checked() {
        let t = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
        let opts = |s: &str| super::super::decoding::checked(&t(s), check);
        assert_eq!(opts("enabled = true").unwrap_err().0, "socket");
        assert!(opts("enabled = true\nsocket = \"/run/clamd.ctl\"").is_ok());
        assert!(opts("enabled = true\naddress = \"127.0.0.1:3310\"").is_ok());
        assert_eq!(opts("address = \"nohost\"").unwrap_err().0, "address");
        assert_eq!(
            opts("socket = \"/s\"\naddress = \"h:1\"").unwrap_err().0,
            "address"
        );
        assert_eq!(opts("timeout = \"0s\"").unwrap_err().0, "timeout");
        assert_eq!(opts("retries = 11").unwrap_err().0, "retries");
        assert_eq!(opts("sockt = \"x\"").unwrap_err().0, "sockt");
        assert_eq!(opts("").unwrap()["enabled"].as_bool(), Some(false));
    }
}
