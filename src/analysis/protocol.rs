//! `protocol` (per-read): names the protocol the attacker speaks from the first
//! chunk he sends, with the details an analyst filters on: TLS ClientHello (version,
//! server name, JA3 fingerprint), HTTP request line (method, path, Host,
//! User-Agent), SSH client banner, RDP connection request (the `mstshash` user),
//! SMB negotiate (SMB1/SMB2), SIP request and Redis command. One finding, kind
//! `protocol`, `meta.protocol` naming it.
//!
//! It looks at the first chunk only, when the recorder seals the session (the
//! per-read stage's `on_seal`: nothing is allocated on capture's threads), reads at
//! most that chunk and keeps every string it reports short and printable.

use super::registry::{self, Registration};
use super::{Analyzer, Finding, Input, Output, Stage};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "protocol";

/// Most bytes of the first chunk looked at (consecutive reads within a millisecond
/// are one chunk).
const FIRST_MAX: usize = 64 << 10;

/// Longest string reported in a field.
const MAX_FIELD: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    pub enabled: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { enabled: true }
    }
}

impl registry::Options for Options {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::PerRead,
        about: "names the protocol of the first chunk (TLS SNI and JA3, HTTP, SSH, RDP, SMB, SIP, Redis)",
        options: registry::options::<Options>,
        build: |t, _| registry::build_with(t, |_: Options| Ok(Protocol)),
    }
}

pub struct Protocol;

impl Analyzer for Protocol {
    fn name(&self) -> &'static str {
        NAME
    }

    fn stage(&self) -> Stage {
        Stage::PerRead
    }

    fn run(&self, _: &Input, _: &mut Output) -> anyhow::Result<()> {
        Ok(())
    }

    fn on_seal(&self, t: &crate::attack::Transcript, findings: &mut Vec<Finding>) {
        // The first chunk the attacker sent (the session keeps it as it arrived).
        let first = t
            .chunks
            .iter()
            .find(|c| c.direction == crate::attack::Direction::In && !c.data.is_empty());
        if let Some(f) = first.and_then(|c| identify(&c.data[..c.data.len().min(FIRST_MAX)])) {
            findings.push(f);
        }
    }
}

/// A short, printable copy of `b`.
fn text(b: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&b[..b.len().min(MAX_FIELD)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    s
}

fn finding(protocol: &str, detail: String) -> Finding {
    let mut f = Finding::new(NAME, "protocol", detail);
    f.meta("protocol", protocol);
    f
}

/// The protocol of a first chunk, if it is one we know.
pub fn identify(d: &[u8]) -> Option<Finding> {
    tls(d)
        .or_else(|| http(d))
        .or_else(|| ssh(d))
        .or_else(|| rdp(d))
        .or_else(|| smb(d))
        .or_else(|| sip(d))
        .or_else(|| redis(d))
}

/// The lines of a text protocol's head (up to the first empty line).
fn head_lines(d: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = memchr::memmem::find(d, b"\r\n\r\n").unwrap_or(d.len().min(8192));
    d[..end]
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// The values of the headers `names` (in that order; the first of each), in one
/// pass over the head.
fn headers<'a, const N: usize>(d: &'a [u8], names: [&str; N]) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    for l in head_lines(d).skip(1) {
        let Some(colon) = memchr::memchr(b':', l) else {
            continue;
        };
        let name = &l[..colon];
        for (slot, want) in found.iter_mut().zip(names) {
            if slot.is_none() && name.eq_ignore_ascii_case(want.as_bytes()) {
                *slot = Some(l[colon + 1..].trim_ascii());
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

fn http(d: &[u8]) -> Option<Finding> {
    const METHODS: [&str; 9] = [
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE",
    ];
    // Most chunks are not HTTP: decide on the method before looking for lines.
    let space = memchr::memchr(b' ', &d[..d.len().min(8)])?;
    let method = std::str::from_utf8(&d[..space]).ok()?;
    if !METHODS.contains(&method) {
        return None;
    }
    let line = head_lines(d).next()?;
    let mut parts = line.split(|&c| c == b' ');
    parts.next()?;
    let path = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/") {
        return None;
    }
    let mut f = finding("http", format!("HTTP {method} {}", text(path)));
    f.meta("method", method).meta("path", text(path));
    let [host, ua] = headers(d, ["host", "user-agent"]);
    if let Some(h) = host {
        f.meta("host", text(h));
    }
    if let Some(ua) = ua {
        f.meta("user_agent", text(ua));
    }
    Some(f)
}

fn ssh(d: &[u8]) -> Option<Finding> {
    if !d.starts_with(b"SSH-") {
        return None;
    }
    let line = head_lines(d).next()?;
    let mut f = finding("ssh", format!("SSH client {}", text(line)));
    f.meta("banner", text(line));
    Some(f)
}

fn rdp(d: &[u8]) -> Option<Finding> {
    // TPKT version 3, then an X.224 connection request (code 0xE0).
    if d.len() < 11 || d[0] != 3 || d[1] != 0 || d[5] & 0xf0 != 0xe0 {
        return None;
    }
    let mut f = finding("rdp", "RDP connection request".into());
    let cookie = b"Cookie: mstshash=";
    if let Some(i) = d.windows(cookie.len()).position(|w| w == cookie) {
        let rest = &d[i + cookie.len()..];
        let end = rest.iter().position(|&c| c == b'\r').unwrap_or(rest.len());
        f.meta("user", text(&rest[..end]));
        f.detail = format!("RDP connection request (mstshash={})", text(&rest[..end]));
    }
    Some(f)
}

fn smb(d: &[u8]) -> Option<Finding> {
    // NetBIOS session message, then the SMB1 or SMB2 magic.
    if d.len() < 8 || d[0] != 0 {
        return None;
    }
    let version = match &d[4..8] {
        b"\xffSMB" => "smb1",
        b"\xfeSMB" => "smb2",
        _ => return None,
    };
    Some(finding(
        "smb",
        format!("SMB negotiate ({})", version.to_uppercase()),
    ))
    .map(|mut f| {
        f.meta("version", version);
        f
    })
}

fn sip(d: &[u8]) -> Option<Finding> {
    let line = head_lines(d).next()?;
    let s = std::str::from_utf8(line).ok()?;
    let (method, rest) = s.split_once(' ')?;
    if !rest.starts_with("sip:") && !rest.starts_with("sips:") || !s.ends_with("SIP/2.0") {
        return None;
    }
    let mut f = finding("sip", format!("SIP {}", text(line)));
    f.meta("method", text(method.as_bytes()));
    if let [Some(ua)] = headers(d, ["user-agent"]) {
        f.meta("user_agent", text(ua));
    }
    Some(f)
}

fn redis(d: &[u8]) -> Option<Finding> {
    // A RESP array of bulk strings: *N\r\n$L\r\nCOMMAND\r\n...
    if !d.starts_with(b"*") {
        return None;
    }
    let mut lines = d
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines
        .next()?
        .get(1..)?
        .iter()
        .all(u8::is_ascii_digit)
        .then_some(())?;
    lines.next()?.starts_with(b"$").then_some(())?;
    let command = lines.next()?;
    let mut f = finding("redis", format!("Redis {}", text(command).to_uppercase()));
    f.meta("command", text(command).to_uppercase());
    Some(f)
}

/// A TLS ClientHello: version, SNI, ALPN and the JA3 fingerprint.
fn tls(d: &[u8]) -> Option<Finding> {
    // Record: type 22 (handshake), version 3.x; handshake type 1 (ClientHello).
    if d.len() < 43 || d[0] != 0x16 || d[1] != 3 || d[5] != 1 {
        return None;
    }
    let mut r = Reader(&d[9..]);
    let version = r.u16()?;
    r.skip(32)?; // random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let ciphers: Vec<u16> = {
        let n = r.u16()? as usize;
        let mut c = Reader(r.take(n)?);
        std::iter::from_fn(|| c.u16()).collect()
    };
    let comp = r.u8()? as usize;
    r.skip(comp)?;
    let mut extensions = Vec::new();
    let (mut curves, mut formats) = (Vec::new(), Vec::new());
    let (mut sni, mut alpn) = (None, None);
    if let Some(n) = r.u16() {
        let mut e = Reader(r.take(n as usize).unwrap_or(&[]));
        while let (Some(kind), Some(len)) = (e.u16(), e.u16()) {
            let Some(body) = e.take(len as usize) else {
                break;
            };
            extensions.push(kind);
            let mut b = Reader(body);
            match kind {
                0 => {
                    // server_name list: u16 len, type 0, u16 len, name
                    b.u16();
                    b.u8();
                    let l = b.u16().unwrap_or(0) as usize;
                    sni = b.take(l).map(text);
                }
                10 => {
                    let l = b.u16().unwrap_or(0) as usize;
                    let mut c = Reader(b.take(l).unwrap_or(&[]));
                    curves = std::iter::from_fn(|| c.u16()).collect();
                }
                11 => {
                    let l = b.u8().unwrap_or(0) as usize;
                    formats = b.take(l).unwrap_or(&[]).to_vec();
                }
                16 => {
                    b.u16();
                    let l = b.u8().unwrap_or(0) as usize;
                    alpn = b.take(l).map(text);
                }
                _ => {}
            }
        }
    }
    // JA3 leaves out GREASE values (0x?a?a).
    let grease = |v: &u16| v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff;
    let list = |v: &[u16]| {
        v.iter()
            .filter(|x| !grease(x))
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("-")
    };
    let ja3 = format!(
        "{},{},{},{},{}",
        version,
        list(&ciphers),
        list(&extensions),
        list(&curves),
        formats
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("-")
    );
    let ja3_hash = hex::encode(Md5::digest(ja3.as_bytes()));
    let name = match version {
        0x0300 => "SSL 3.0",
        0x0301 => "TLS 1.0",
        0x0302 => "TLS 1.1",
        _ => "TLS 1.2+",
    };
    let mut f = finding(
        "tls",
        format!(
            "TLS ClientHello ({name}{})",
            sni.as_ref()
                .map(|s| format!(", SNI {s}"))
                .unwrap_or_default()
        ),
    );
    f.meta("version", name)
        .meta("ja3", ja3)
        .meta("ja3_hash", ja3_hash);
    if let Some(s) = sni {
        f.meta("sni", s);
    }
    if let Some(a) = alpn {
        f.meta("alpn", a);
    }
    Some(f)
}

/// Bounds-checked reading of big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(f: &Finding, k: &str) -> String {
        f.meta[k].as_str().unwrap().to_string()
    }

    #[test]
    fn http_request() {
        let f = identify(
            b"GET /.env HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: Mozilla/5.0 zgrab\r\n\r\n",
        )
        .unwrap();
        assert_eq!(meta(&f, "protocol"), "http");
        assert_eq!(meta(&f, "method"), "GET");
        assert_eq!(meta(&f, "path"), "/.env");
        assert_eq!(meta(&f, "host"), "10.0.0.1:8080");
        assert_eq!(meta(&f, "user_agent"), "Mozilla/5.0 zgrab");
        assert!(identify(b"GETX / HTTP/1.1\r\n").is_none());
        // Headers in any order and case, the first of each; a request line longer
        // than 8 KiB (an overflow attempt) is still HTTP.
        let long = format!(
            "POST /{} HTTP/1.0\r\nuser-AGENT: one\r\nX: y\r\nHOST: h\r\nHost: later\r\nUser-Agent: two\r\n\r\nbody",
            "A".repeat(10_000)
        );
        let f = identify(long.as_bytes()).unwrap();
        assert_eq!(meta(&f, "method"), "POST");
        assert_eq!(meta(&f, "path").len(), MAX_FIELD);
        assert_eq!(meta(&f, "host"), "h");
        assert_eq!(meta(&f, "user_agent"), "one");
        assert!(!f.meta.contains_key("referer"));
        let f = identify(b"GET / HTTP/1.1\r\n\r\nHost: in the body\r\n").unwrap();
        assert!(!f.meta.contains_key("host"), "only the head is searched");
    }

    #[test]
    fn on_seal_names_the_first_chunk_the_attacker_sent() {
        use crate::attack::Transcript;
        let mut t = Transcript::default();
        let mut found = Vec::new();
        Protocol.on_seal(&t, &mut found);
        assert!(found.is_empty(), "nothing received");
        t.push_out(b"220 ftp ready\r\n");
        t.push_in(b"SSH-2.0-Go\r\n", 1 << 20);
        t.push_out(b"more");
        t.push_in(b"GET / HTTP/1.0\r\n\r\n", 1 << 20);
        Protocol.on_seal(&t, &mut found);
        assert_eq!(found.len(), 1);
        assert_eq!(
            meta(&found[0], "protocol"),
            "ssh",
            "the first incoming chunk"
        );
        // Not in the session: nothing there.
        let mut in_session = Vec::new();
        Protocol.on_chunk(0, b"SSH-2.0-Go\r\n", &mut in_session);
        assert!(in_session.is_empty());
    }

    #[test]
    fn tls_client_hello_with_sni_and_ja3() {
        // A minimal ClientHello: TLS 1.2, two ciphers (one GREASE), SNI example.org,
        // supported groups and point formats.
        let name = b"example.org";
        let mut ext = Vec::new();
        let sni_body = [
            &((name.len() + 3) as u16).to_be_bytes()[..],
            &[0],
            &(name.len() as u16).to_be_bytes(),
            name,
        ]
        .concat();
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(sni_body.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni_body);
        ext.extend_from_slice(&[0, 10, 0, 6, 0, 4, 0, 0x1d, 0, 0x17]);
        ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[0u8; 32]);
        hello.push(0);
        hello.extend_from_slice(&[0, 4, 0x0a, 0x0a, 0xc0, 0x2f]);
        hello.extend_from_slice(&[1, 0]);
        hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        hello.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        hs.extend_from_slice(&hello);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        let f = identify(&rec).unwrap();
        assert_eq!(meta(&f, "protocol"), "tls");
        assert_eq!(meta(&f, "sni"), "example.org");
        assert_eq!(meta(&f, "ja3"), "771,49199,0-10-11,29-23,0");
        assert_eq!(
            meta(&f, "ja3_hash"),
            hex::encode(Md5::digest(b"771,49199,0-10-11,29-23,0"))
        );
        // Cut anywhere, it never panics.
        for n in 0..rec.len() {
            let _ = identify(&rec[..n]);
        }
    }

    #[test]
    fn banners_and_binary_protocols() {
        let f = identify(b"SSH-2.0-libssh_0.9.6\r\n").unwrap();
        assert_eq!(meta(&f, "banner"), "SSH-2.0-libssh_0.9.6");
        let mut rdp = vec![3, 0, 0, 0x2b, 0x26, 0xe0, 0, 0, 0, 0, 0];
        rdp.extend_from_slice(b"Cookie: mstshash=administr\r\n");
        assert_eq!(meta(&identify(&rdp).unwrap(), "user"), "administr");
        let smb = b"\x00\x00\x00\x54\xffSMBr\x00\x00\x00\x00";
        assert_eq!(meta(&identify(smb).unwrap(), "version"), "smb1");
        let sip = b"OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n";
        let f = identify(sip).unwrap();
        assert_eq!(meta(&f, "method"), "OPTIONS");
        assert_eq!(meta(&f, "user_agent"), "friendly-scanner");
        let r = identify(b"*1\r\n$4\r\ninfo\r\n").unwrap();
        assert_eq!(meta(&r, "command"), "INFO");
        assert!(identify(b"\x00\x01\x02 random").is_none());
        assert!(identify(b"").is_none());
    }
}
