//! The original honeytrap's outputs, for sites that keep their log pipeline when
//! they swap binaries: T-Pot's `logJSON` event ([`logjson`]), `logAttacker`'s one
//! line per attack ([`attacker_log`]) and `SaveFile`'s attack-string and download
//! files ([`savefile`]). Each is a [`super::Sink`]: it runs after analysis, so
//! downloads are filled in. They are enabled by the original configuration's
//! `plugin-logJSON` / `plugin-logAttacker` / `plugin-SaveFile` blocks or by
//! `[output.logjson]` / `[output.attacker_log]` / `[output.savefile]`.
//! docs/migration.md ("Original outputs") lists each format and where we differ.

pub mod attacker_log;
pub mod logjson;
pub mod savefile;

use crate::config::{units, Invalid, OutputConfig};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// `[output.logjson]`: T-Pot's JSON event, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogJsonConfig {
    pub enabled: bool,
    /// File to append to, relative to `sensor.data_dir`.
    pub path: PathBuf,
    /// Also write virtual attacks (decoded copies, `"is_virtual": true`). T-Pot's
    /// build skipped them; their downloads are on the real attack either way.
    pub virtual_attacks: bool,
}

impl Default for LogJsonConfig {
    fn default() -> Self {
        LogJsonConfig {
            enabled: false,
            path: PathBuf::from("attackers.json"),
            virtual_attacks: false,
        }
    }
}

/// `[output.attacker_log]`: logAttacker's line per attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttackerLogConfig {
    pub enabled: bool,
    /// File to append to, relative to `sensor.data_dir`.
    pub path: PathBuf,
}

impl Default for AttackerLogConfig {
    fn default() -> Self {
        AttackerLogConfig {
            enabled: false,
            path: PathBuf::from("attacker.log"),
        }
    }
}

/// `[output.savefile]`: SaveFile's attack strings and downloads as files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaveFileConfig {
    pub enabled: bool,
    /// Attack strings (`from_port_<port>-<proto>_<n>_<date>`), relative to
    /// `sensor.data_dir`.
    pub attacks_dir: PathBuf,
    /// Downloaded files (`<md5>-<filename>`), relative to `sensor.data_dir`.
    pub downloads_dir: PathBuf,
    /// Most bytes both directories may hold; past it nothing new is written.
    #[serde(with = "units::bytesize")]
    pub quota_bytes: u64,
    /// Most files both directories may hold.
    pub quota_files: u64,
}

impl Default for SaveFileConfig {
    fn default() -> Self {
        SaveFileConfig {
            enabled: false,
            attacks_dir: PathBuf::from("attacks"),
            downloads_dir: PathBuf::from("downloads"),
            quota_bytes: 1 << 30,
            quota_files: 100_000,
        }
    }
}

/// Checks of the three sections (called by `Config::validate`).
pub fn validate(o: &OutputConfig) -> Result<(), Invalid> {
    let empty = |p: &Path| p.as_os_str().is_empty();
    if o.logjson.enabled && empty(&o.logjson.path) {
        return Err(Invalid::new("output.logjson.path", "must not be empty"));
    }
    if o.attacker_log.enabled && empty(&o.attacker_log.path) {
        return Err(Invalid::new(
            "output.attacker_log.path",
            "must not be empty",
        ));
    }
    let s = &o.savefile;
    if s.enabled {
        if empty(&s.attacks_dir) {
            return Err(Invalid::new(
                "output.savefile.attacks_dir",
                "must not be empty",
            ));
        }
        if empty(&s.downloads_dir) {
            return Err(Invalid::new(
                "output.savefile.downloads_dir",
                "must not be empty",
            ));
        }
        if s.quota_bytes == 0 || s.quota_files == 0 {
            return Err(Invalid::new(
                "output.savefile.quota_bytes",
                "quota_bytes and quota_files must be positive",
            ));
        }
    }
    Ok(())
}

/// The file name at the end of a download URL's path (no query or fragment), as
/// the original's downloaders named the file; "" when there is none.
pub(crate) fn url_filename(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.rsplit('/').next().unwrap_or("")
}

/// The name the original printed for a protocol (`getprotobynumber`).
pub(crate) fn proto_name(p: crate::proto::Protocol) -> &'static str {
    match p {
        crate::proto::Protocol::Tcp => "tcp",
        crate::proto::Protocol::Udp => "udp",
    }
}

/// A JSON value written the way json-c's `json_object_to_json_string` writes it
/// (T-Pot's logJSON): `{ "key": value, ... }` with keys in insertion order, `/`
/// escaped as `\/`.
#[derive(Debug, Clone)]
pub(crate) enum Jc<'a> {
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    /// Bytes written as a lower-case hex string.
    Hex(Cow<'a, [u8]>),
    Obj(Vec<(Cow<'a, str>, Jc<'a>)>),
}

impl<'a> Jc<'a> {
    pub fn str(s: impl Into<Cow<'a, str>>) -> Jc<'a> {
        Jc::Str(s.into())
    }

    /// Append the value to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Jc::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Jc::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Jc::Str(s) => escape(s, out),
            Jc::Hex(data) => {
                out.reserve(data.len() * 2 + 2);
                out.push(b'"');
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for b in data.iter() {
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 15) as usize]);
                }
                out.push(b'"');
            }
            Jc::Obj(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b' ');
                    escape(k, out);
                    out.extend_from_slice(b": ");
                    v.write(out);
                }
                out.extend_from_slice(b" }");
            }
        }
    }
}

/// json-c's string escaping (`json_escape_str`).
fn escape(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// Attacks built for the sinks' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::analysis::Download;
    use crate::attack::{Attack, Captured, EndReason, Hashes, Mode, RelayRecord, Transcript};
    use crate::proto::Protocol;
    use chrono::TimeZone;
    use std::path::Path;

    /// A TCP attack 192.0.2.7:40000 -> 198.51.100.1:8080 at 2026-11-27 10:20:30
    /// UTC, two seconds long, with `payload` in one chunk.
    pub fn attack(payload: &[u8], mode: Mode) -> Attack {
        let mut t = Transcript::default();
        t.push_in(payload, u64::MAX);
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 10, 20, 30)
            .unwrap();
        Captured {
            start,
            end: start + chrono::Duration::microseconds(2_000_123),
            sensor: "s".into(),
            monitor: "test".into(),
            mode,
            protocol: Protocol::Tcp,
            local: "198.51.100.1:8080".parse().unwrap(),
            remote: "192.0.2.7:40000".parse().unwrap(),
            transcript: t,
            responses_sent: 0,
            end_reason: EndReason::Closed,
            relay: None,
        }
        .seal()
    }

    /// Make `a` a mirror session whose target sent `sent`.
    pub fn mirrored(a: &mut Attack, sent: &[u8]) {
        a.session.transcript.push_out(sent);
        a.session.relay = Some(Box::new(RelayRecord {
            kind: Mode::Mirror,
            map: None,
            target_host: "192.0.2.7".into(),
            target_ip: Some("192.0.2.7".parse().unwrap()),
            target_port: 8080,
            target_protocol: Protocol::Tcp,
            local: Some("198.51.100.1:51000".parse().unwrap()),
            bytes_sent: a.transcript.bytes_in,
            bytes_received: sent.len() as u64,
            received: Some(Hashes::of(sent)),
            fallback: None,
        }));
    }

    /// Attach a download of `url` with content `data`, stored the way the `store`
    /// analyzer stores it under `data_dir`.
    pub fn add_download(
        a: &mut Attack,
        data_dir: &Path,
        analyzer: &'static str,
        url: &str,
        data: &[u8],
    ) {
        let h = Hashes::of(data);
        let rel = crate::analysis::download::store::relative_path(&h.sha256);
        let path = data_dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let rest = url.split_once("://").unwrap().1;
        let hostport = rest.split('/').next().unwrap();
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "80"));
        let mut d = Download::new(analyzer, url.into(), host.into(), port.parse().unwrap());
        d.size = data.len() as u64;
        d.hashes = Some(h);
        d.stored = Some(rel);
        a.analysis.downloads.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_c_layout_and_escapes() {
        let v = Jc::Obj(vec![
            ("a".into(), Jc::Bool(false)),
            ("@b".into(), Jc::str("x/y\"\\\n\u{1}é")),
            ("c".into(), Jc::Int(-3)),
            ("d".into(), Jc::Hex(Cow::Borrowed(&[0x00, 0xab, 0x10]))),
            ("e".into(), Jc::Obj(vec![])),
        ]);
        let mut out = Vec::new();
        v.write(&mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{ \"a\": false, \"@b\": \"x\\/y\\\"\\\\\\n\\u0001é\", \"c\": -3, \"d\": \"00ab10\", \"e\": { } }"
        );
        // It is JSON.
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["@b"], "x/y\"\\\n\u{1}é");
    }

    #[test]
    fn filename_of_a_url() {
        assert_eq!(url_filename("http://h:1/a/b.exe?q=/x#f"), "b.exe");
        assert_eq!(url_filename("ftp://u@h:21/file"), "file");
        assert_eq!(url_filename("tftp://h/x.bin"), "x.bin");
        assert_eq!(url_filename("http://h"), "");
        assert_eq!(url_filename("http://h/dir/"), "");
    }
}
