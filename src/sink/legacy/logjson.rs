//! T-Pot's `logJSON` event: one JSON object per line, with the keys, key order and
//! layout of the fork's json-c output (`@timestamp`, `start_time`, `end_time`,
//! `is_virtual`, `operation_mode`, `attack_connection`, `proxy_connection`,
//! `download_count`, `download_tries`, `downloads` with `<key>_<n>` flattened
//! keys), so T-Pot's Logstash pipeline ingests it unchanged. Written after
//! analysis, so the downloads are filled in (the fork wrote it before).

use super::{proto_name, Jc};
use crate::analysis::Download;
use crate::attack::{Attack, Hashes, Mode, RelayRecord};
use crate::config::Config;
use crate::event::Rendered;
use crate::sink::open_append;
use crate::sink::Sink;
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The original's `op_mode` numbers (`PORTCONF_*`).
pub fn operation_mode(mode: Mode) -> i64 {
    match mode {
        Mode::Normal => 1,
        Mode::Ignore => 2,
        Mode::Mirror => 4,
        Mode::Proxy => 8,
    }
}

pub struct LogJsonSink {
    out: BufWriter<File>,
    path: PathBuf,
    data_dir: PathBuf,
    virtual_attacks: bool,
}

impl LogJsonSink {
    /// Open (append to) `output.logjson.path`.
    pub fn open(config: &Config) -> anyhow::Result<LogJsonSink> {
        let c = &config.output.logjson;
        let path = config.data_path(&c.path);
        Ok(LogJsonSink {
            out: BufWriter::with_capacity(64 * 1024, open_append(&path)?),
            path,
            data_dir: config.sensor.data_dir.clone(),
            virtual_attacks: c.virtual_attacks,
        })
    }
}

impl Sink for LogJsonSink {
    fn name(&self) -> &'static str {
        "logjson"
    }

    fn write(&mut self, attack: &Attack, _: &Rendered) -> anyhow::Result<()> {
        if attack.analysis.is_virtual && !self.virtual_attacks {
            return Ok(());
        }
        let line = line(attack, &self.data_dir);
        // Never let a reader tailing the file see half a line.
        if line.len() > self.out.capacity() - self.out.buffer().len() {
            self.out.flush()?;
        }
        self.out.write_all(&line)?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        self.out = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        Ok(())
    }
}

/// The event of `a` as one line (with its `\n`). Stored downloads are read from
/// under `data_dir` for their `data_hex`.
pub fn line(a: &Attack, data_dir: &Path) -> Vec<u8> {
    let payload = a.transcript.payload();
    let relay = a.relay.as_deref().filter(|r| r.connected());
    // The mode the attack was served in: a relay that fell back is normal mode.
    let mode = match relay {
        Some(r) => r.kind,
        None => Mode::Normal,
    };
    let attack_connection = connection(
        proto_name(a.protocol),
        a.remote.ip(),
        a.remote.port(),
        a.local.ip(),
        a.local.port(),
        payload_obj(&a.payload_hashes, Cow::Borrowed(&payload), payload.len()),
    );
    let proxy_connection = match relay {
        Some(r) => proxy(a, r),
        None => no_connection(),
    };
    let got: Vec<&Download> = a
        .analysis
        .downloads
        .iter()
        .filter(|d| d.size > 0 && d.hashes.is_some())
        .collect();
    let mut downloads = Vec::new();
    for (i, d) in got.iter().enumerate() {
        for (k, v) in download(a, d, data_dir) {
            downloads.push((Cow::Owned(format!("{k}_{i}")), v));
        }
    }
    let time = |t: DateTime<Utc>| Jc::str(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let event = Jc::Obj(vec![
        ("is_virtual".into(), Jc::Bool(a.analysis.is_virtual)),
        ("@timestamp".into(), time(a.start)),
        ("start_time".into(), time(a.start)),
        ("end_time".into(), time(a.end)),
        ("attack_connection".into(), attack_connection),
        ("proxy_connection".into(), proxy_connection),
        ("operation_mode".into(), Jc::Int(operation_mode(mode))),
        ("download_count".into(), Jc::Int(got.len() as i64)),
        (
            "download_tries".into(),
            Jc::Int(a.analysis.downloads.len() as i64),
        ),
        ("downloads".into(), Jc::Obj(downloads)),
    ]);
    let mut out = Vec::with_capacity(1024 + payload.len() * 2);
    event.write(&mut out);
    out.push(b'\n');
    out
}

fn connection<'a>(
    protocol: &'a str,
    remote_ip: IpAddr,
    remote_port: u16,
    local_ip: IpAddr,
    local_port: u16,
    payload: Jc<'a>,
) -> Jc<'a> {
    Jc::Obj(vec![
        ("protocol".into(), Jc::str(protocol)),
        ("remote_ip".into(), Jc::str(remote_ip.to_string())),
        ("remote_port".into(), Jc::Int(remote_port.into())),
        ("local_ip".into(), Jc::str(local_ip.to_string())),
        ("local_port".into(), Jc::Int(local_port.into())),
        ("payload".into(), payload),
    ])
}

fn payload_obj<'a>(h: &Hashes, data: Cow<'a, [u8]>, length: usize) -> Jc<'a> {
    Jc::Obj(vec![
        ("md5_hash".into(), Jc::str(h.md5.clone())),
        ("sha512_hash".into(), Jc::str(h.sha512.clone())),
        ("length".into(), Jc::Int(length as i64)),
        ("data_hex".into(), Jc::Hex(data)),
    ])
}

/// The mirror or proxy connection: the target is the remote side, what it sent
/// (relayed to the attacker) the payload.
fn proxy<'a>(a: &Attack, r: &RelayRecord) -> Jc<'a> {
    let sent = a.transcript.outgoing();
    let hashes = r.received.clone().unwrap_or_else(|| Hashes::of(&sent));
    let len = sent.len();
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let local = r.local.expect("connected");
    connection(
        proto_name(r.target_protocol),
        r.target_ip.unwrap_or(unspecified),
        r.target_port,
        local.ip(),
        local.port(),
        payload_obj(&hashes, Cow::Owned(sent), len),
    )
}

/// No second connection: the fork's empty record (zero addresses, the hashes of
/// nothing), but protocol `""` where the fork wrote `"ip"`.
fn no_connection<'a>() -> Jc<'a> {
    let zero = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    connection(
        "",
        zero,
        0,
        zero,
        0,
        payload_obj(&Hashes::of(b""), Cow::Borrowed(b""), 0),
    )
}

/// One download's fields, in the fork's order, before the `_<n>` suffix.
fn download<'a>(a: &Attack, d: &Download, data_dir: &Path) -> Vec<(&'static str, Jc<'a>)> {
    let h = d.hashes.clone().expect("filtered on hashes");
    // The content was dropped after analysis; the stored copy has it.
    let data = d
        .stored
        .as_ref()
        .and_then(|s| std::fs::read(data_dir.join(s)).ok())
        .filter(|data| data.len() as u64 == d.size)
        .unwrap_or_default();
    let protocol = if d.analyzer == "tftp" { "udp" } else { "tcp" };
    let text = |s: &Option<String>| Jc::str(s.clone().unwrap_or_default());
    vec![
        ("protocol", Jc::str(protocol)),
        ("remote_ip", Jc::str(d.host.clone())),
        ("remote_port", Jc::Int(d.port.into())),
        ("local_ip", Jc::str(a.local.ip().to_string())),
        ("local_port", Jc::Int(a.local.port().into())),
        ("type", Jc::str(d.analyzer)),
        ("username", text(&d.user)),
        ("password", text(&d.password)),
        ("uri", Jc::str(d.url.clone())),
        ("filename", Jc::str(super::url_filename(&d.url).to_string())),
        (
            "payload",
            payload_obj(&h, Cow::Owned(data), d.size as usize),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use serde_json::Value;

    #[test]
    fn normal_attack_line_layout() {
        let a = attack(b"GET /x\r\n", Mode::Normal);
        let text = String::from_utf8(line(&a, Path::new("/nonexistent"))).unwrap();
        let e = Hashes::of(b"");
        let p = Hashes::of(b"GET /x\r\n");
        let expected = format!(
            "{{ \"is_virtual\": false, \"@timestamp\": \"2026-11-27T10:20:30Z\", \
\"start_time\": \"2026-11-27T10:20:30Z\", \"end_time\": \"2026-11-27T10:20:32Z\", \
\"attack_connection\": {{ \"protocol\": \"tcp\", \"remote_ip\": \"192.0.2.7\", \"remote_port\": 40000, \
\"local_ip\": \"198.51.100.1\", \"local_port\": 8080, \"payload\": {{ \"md5_hash\": \"{}\", \
\"sha512_hash\": \"{}\", \"length\": 8, \"data_hex\": \"474554202f780d0a\" }} }}, \
\"proxy_connection\": {{ \"protocol\": \"\", \"remote_ip\": \"0.0.0.0\", \"remote_port\": 0, \
\"local_ip\": \"0.0.0.0\", \"local_port\": 0, \"payload\": {{ \"md5_hash\": \"{}\", \
\"sha512_hash\": \"{}\", \"length\": 0, \"data_hex\": \"\" }} }}, \"operation_mode\": 1, \
\"download_count\": 0, \"download_tries\": 0, \"downloads\": {{ }} }}\n",
            p.md5, p.sha512, e.md5, e.sha512
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn mirror_connection_and_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = attack(b"x", Mode::Mirror);
        mirrored(&mut a, b"pong");
        add_download(
            &mut a,
            dir.path(),
            "http",
            "http://203.0.113.9:8000/a/bin.exe?x=1",
            b"MZfile",
        );
        // A failed try: counted in download_tries only.
        let mut failed = a.analysis.downloads[0].clone();
        failed.size = 0;
        failed.hashes = None;
        failed.stored = None;
        failed.error = Some("timeout".into());
        a.analysis.downloads.push(failed);
        let v: Value = serde_json::from_slice(&line(&a, dir.path())).unwrap();
        assert_eq!(v["operation_mode"], 4);
        let p = &v["proxy_connection"];
        assert_eq!(p["protocol"], "tcp");
        assert_eq!(p["remote_ip"], "192.0.2.7");
        assert_eq!(p["remote_port"], 8080);
        assert_eq!(p["local_ip"], "198.51.100.1");
        assert_eq!(p["local_port"], 51000);
        assert_eq!(p["payload"]["length"], 4);
        assert_eq!(p["payload"]["data_hex"], "706f6e67");
        assert_eq!(p["payload"]["md5_hash"], Hashes::of(b"pong").md5);
        assert_eq!(v["download_count"], 1);
        assert_eq!(v["download_tries"], 2);
        let d = v["downloads"].as_object().unwrap();
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "protocol_0",
                "remote_ip_0",
                "remote_port_0",
                "local_ip_0",
                "local_port_0",
                "type_0",
                "username_0",
                "password_0",
                "uri_0",
                "filename_0",
                "payload_0"
            ]
        );
        assert_eq!(d["remote_ip_0"], "203.0.113.9");
        assert_eq!(d["remote_port_0"], 8000);
        assert_eq!(d["local_port_0"], 8080);
        assert_eq!(d["type_0"], "http");
        assert_eq!(d["filename_0"], "bin.exe");
        assert_eq!(d["uri_0"], "http://203.0.113.9:8000/a/bin.exe?x=1");
        assert_eq!(d["payload_0"]["length"], 6);
        assert_eq!(d["payload_0"]["data_hex"], hex::encode(b"MZfile"));
        assert_eq!(d["payload_0"]["md5_hash"], Hashes::of(b"MZfile").md5);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        let mut sink = LogJsonSink::open(&config).unwrap();
        sink.write(&attack(b"one", Mode::Normal), &Rendered::default())
            .unwrap();
        sink.flush().unwrap();
        let file = dir.path().join("attackers.json");
        std::fs::rename(&file, dir.path().join("attackers.json.1")).unwrap();
        sink.reopen().unwrap();
        sink.write(&attack(b"two", Mode::Normal), &Rendered::default())
            .unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains(&hex::encode(b"two")));
    }

    #[test]
    fn virtual_attacks_are_skipped_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        let mut sink = LogJsonSink::open(&config).unwrap();
        let mut v = attack(b"decoded", Mode::Normal);
        v.analysis.is_virtual = true;
        sink.write(&v, &Rendered::default()).unwrap();
        sink.write(&attack(b"real", Mode::Normal), &Rendered::default())
            .unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("attackers.json")).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"is_virtual\": false"));
        config.output.logjson.virtual_attacks = true;
        let mut sink = LogJsonSink::open(&config).unwrap();
        sink.write(&v, &Rendered::default()).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("attackers.json")).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .contains("\"is_virtual\": true"));
    }
}
