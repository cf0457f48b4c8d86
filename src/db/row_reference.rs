//! The parser of attack events before typed deserialisation (a `serde_json::Value`
//! tree walked with JSON pointers, NUL stripped from a copy of the tree), kept for
//! the tests: the typed parser must give the same rows.

#![allow(dead_code)]

use super::Jsonb;
use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::net::IpAddr;
use uuid::Uuid;

/// What the old code sent as the jsonb column: the stripped tree, serialised.
fn jsonb(v: &Value) -> Jsonb<'static> {
    Jsonb(std::borrow::Cow::Owned(v.to_string()))
}

/// An attack event, parsed.
#[derive(Debug, Clone)]
pub struct AttackRow {
    pub id: Uuid,
    pub sensor: String,
    pub sensor_version: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub duration_ns: i64,
    pub source_ip: IpAddr,
    pub source_port: i32,
    pub destination_ip: IpAddr,
    pub destination_port: i32,
    pub protocol: String,
    pub monitor: String,
    pub mode: String,
    pub end_reason: String,
    pub responses_sent: i32,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
    pub payload_prefix: Vec<u8>,
    pub truncated: bool,
    pub read_limit_reached: bool,
    pub transcript_path: Option<String>,
    pub transcript_offset: Option<i64>,
    pub transcript_length: Option<i64>,
    pub is_virtual: bool,
    pub parent_id: Option<Uuid>,
    pub decoder: Option<String>,
    pub analysis_done: bool,
    /// The whole event (NUL characters replaced: PostgreSQL text cannot hold them).
    pub event: Jsonb<'static>,
    pub relay: Option<RelayRow>,
    pub findings: Vec<FindingRow>,
    pub downloads: Vec<DownloadRow>,
}

#[derive(Debug, Clone)]
pub struct RelayRow {
    pub kind: String,
    pub map: Option<String>,
    pub target_host: String,
    pub target_ip: Option<IpAddr>,
    pub target_port: i32,
    pub target_transport: String,
    pub connected: bool,
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<i32>,
    pub bytes_sent: i64,
    pub bytes_received: i64,
    pub received: Option<[String; 3]>,
    pub fallback: bool,
    pub fallback_reason: Option<String>,
}

/// Where a finding or download came from: kind, virtual attack id, download sha256.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub kind: String,
    pub id: Option<Uuid>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FindingRow {
    pub analyzer: String,
    pub kind: String,
    pub detail: String,
    pub offset: Option<i64>,
    pub length: Option<i64>,
    pub source: SourceRow,
    pub meta: Option<Jsonb<'static>>,
}

#[derive(Debug, Clone)]
pub struct DownloadRow {
    pub analyzer: String,
    pub url: String,
    pub host: String,
    pub port: i32,
    pub user: Option<String>,
    pub password: Option<String>,
    pub size: i64,
    pub truncated: bool,
    /// md5, sha256, sha512 of the content.
    pub hashes: Option<[String; 3]>,
    pub stored: Option<String>,
    pub cached: bool,
    pub error: Option<String>,
    pub source: SourceRow,
}

/// Field access with the JSON pointer in the error.
struct Ev<'a>(&'a Value);

impl<'a> Ev<'a> {
    fn get(&self, p: &str) -> anyhow::Result<&'a Value> {
        self.0.pointer(p).ok_or_else(|| anyhow!("{p} missing"))
    }
    fn str(&self, p: &str) -> anyhow::Result<String> {
        self.get(p)?
            .as_str()
            .map(no_nul)
            .ok_or_else(|| anyhow!("{p} is not a string"))
    }
    fn opt_str(&self, p: &str) -> anyhow::Result<Option<String>> {
        match self.0.pointer(p) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(p).map(Some),
        }
    }
    fn int(&self, p: &str) -> anyhow::Result<i64> {
        self.get(p)?
            .as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| anyhow!("{p} is not a count"))
    }
    fn opt_int(&self, p: &str) -> anyhow::Result<Option<i64>> {
        match self.0.pointer(p) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.int(p).map(Some),
        }
    }
    fn bool(&self, p: &str) -> anyhow::Result<bool> {
        self.get(p)?
            .as_bool()
            .ok_or_else(|| anyhow!("{p} is not a boolean"))
    }
    fn time(&self, p: &str) -> anyhow::Result<DateTime<Utc>> {
        let s = self.str(p)?;
        Ok(DateTime::parse_from_rfc3339(&s)
            .with_context(|| format!("{p}: {s}"))?
            .with_timezone(&Utc))
    }
    fn ip(&self, p: &str) -> anyhow::Result<IpAddr> {
        let s = self.str(p)?;
        s.parse().with_context(|| format!("{p}: {s}"))
    }
    fn opt_ip(&self, p: &str) -> anyhow::Result<Option<IpAddr>> {
        self.opt_str(p)?
            .map(|s| s.parse().with_context(|| format!("{p}: {s}")))
            .transpose()
    }
    fn uuid(&self, p: &str) -> anyhow::Result<Uuid> {
        let s = self.str(p)?;
        s.parse().with_context(|| format!("{p}: {s}"))
    }
    fn opt_uuid(&self, p: &str) -> anyhow::Result<Option<Uuid>> {
        self.opt_str(p)?
            .map(|s| s.parse().with_context(|| format!("{p}: {s}")))
            .transpose()
    }
    fn port(&self, p: &str) -> anyhow::Result<i32> {
        let n = self.int(p)?;
        anyhow::ensure!(n <= 65535, "{p}: {n} is not a port");
        Ok(n as i32)
    }
    fn array(&self, p: &str) -> anyhow::Result<&'a Vec<Value>> {
        self.get(p)?
            .as_array()
            .ok_or_else(|| anyhow!("{p} is not an array"))
    }
    fn hashes(&self, p: &str) -> anyhow::Result<Option<[String; 3]>> {
        match self.0.pointer(p) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => Ok(Some([
                self.str(&format!("{p}/md5"))?,
                self.str(&format!("{p}/sha256"))?,
                self.str(&format!("{p}/sha512"))?,
            ])),
        }
    }
}

/// PostgreSQL text and jsonb cannot hold NUL: it becomes U+FFFD.
fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// The same value with NUL removed from every string and key.
fn strip_nul(v: &Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(no_nul(s)),
        Value::Array(a) => Value::Array(a.iter().map(strip_nul).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (no_nul(k), strip_nul(v))).collect())
        }
        other => other.clone(),
    }
}

/// Parse an attack event (`docs/events.md`).
pub fn parse_event(e: &Value) -> anyhow::Result<AttackRow> {
    let v = Ev(e);
    anyhow::ensure!(
        v.str("/event/action")? == "attack",
        "event.action is not \"attack\""
    );
    let payload = v.str("/honeytrap/payload/data")?;
    let payload_prefix = match v.str("/honeytrap/payload/encoding")?.as_str() {
        "hex" => hex::decode(&payload).context("payload.data is not hex")?,
        _ => base64::engine::general_purpose::STANDARD
            .decode(&payload)
            .context("payload.data is not base64")?,
    };
    let transcript = |k: &str| format!("/honeytrap/transcript/{k}");
    Ok(AttackRow {
        id: v.uuid("/event/id")?,
        sensor: v.str("/observer/name")?,
        sensor_version: v.str("/observer/version")?,
        start: v.time("/event/start")?,
        end: v.time("/event/end")?,
        duration_ns: v.int("/event/duration")?,
        source_ip: v.ip("/source/ip")?,
        source_port: v.port("/source/port")?,
        destination_ip: v.ip("/destination/ip")?,
        destination_port: v.port("/destination/port")?,
        protocol: v.str("/network/transport")?,
        monitor: v.str("/honeytrap/monitor")?,
        mode: v.str("/honeytrap/mode")?,
        end_reason: v.str("/honeytrap/end_reason")?,
        responses_sent: v.int("/honeytrap/responses_sent")?.min(i32::MAX as i64) as i32,
        bytes_in: v.int("/source/bytes")?,
        bytes_out: v.int("/destination/bytes")?,
        md5: v.str("/honeytrap/payload/md5")?,
        sha256: v.str("/honeytrap/payload/sha256")?,
        sha512: v.str("/honeytrap/payload/sha512")?,
        payload_prefix,
        truncated: v.bool("/honeytrap/payload/truncated")?,
        read_limit_reached: v.bool("/honeytrap/payload/read_limit_reached")?,
        transcript_path: v.opt_str(&transcript("path"))?,
        transcript_offset: v.opt_int(&transcript("offset"))?,
        transcript_length: v.opt_int(&transcript("length"))?,
        is_virtual: v.bool("/honeytrap/virtual")?,
        parent_id: v.opt_uuid("/honeytrap/parent_id")?,
        decoder: v.opt_str("/honeytrap/decoder")?,
        analysis_done: v.bool("/honeytrap/analysis/done")?,
        relay: parse_relay(&v)?,
        findings: v
            .array("/honeytrap/findings")?
            .iter()
            .map(|f| parse_finding(&Ev(f)))
            .collect::<anyhow::Result<_>>()?,
        downloads: v
            .array("/honeytrap/downloads")?
            .iter()
            .map(|d| parse_download(&Ev(d)))
            .collect::<anyhow::Result<_>>()?,
        event: jsonb(&strip_nul(e)),
    })
}

fn parse_relay(v: &Ev) -> anyhow::Result<Option<RelayRow>> {
    if v.0.pointer("/honeytrap/relay").is_none() {
        return Ok(None);
    }
    let r = |k: &str| format!("/honeytrap/relay/{k}");
    Ok(Some(RelayRow {
        kind: v.str(&r("kind"))?,
        map: v.opt_str(&r("map"))?,
        target_host: v.str(&r("target/host"))?,
        target_ip: v.opt_ip(&r("target/ip"))?,
        target_port: v.port(&r("target/port"))?,
        target_transport: v.str(&r("target/transport"))?,
        connected: v.bool(&r("connected"))?,
        local_ip: v.opt_ip(&r("local/ip"))?,
        local_port: v.opt_int(&r("local/port"))?.map(|p| p.min(65535) as i32),
        bytes_sent: v.int(&r("bytes_sent"))?,
        bytes_received: v.int(&r("bytes_received"))?,
        received: v.hashes(&r("received"))?,
        fallback: v.bool(&r("fallback"))?,
        fallback_reason: v.opt_str(&r("fallback_reason"))?,
    }))
}

fn parse_source(v: &Ev) -> anyhow::Result<SourceRow> {
    Ok(SourceRow {
        kind: v.str("/source/kind")?,
        id: v.opt_uuid("/source/id")?,
        sha256: v.opt_str("/source/sha256")?,
    })
}

fn parse_finding(v: &Ev) -> anyhow::Result<FindingRow> {
    Ok(FindingRow {
        analyzer: v.str("/analyzer")?,
        kind: v.str("/kind")?,
        detail: v.str("/detail")?,
        offset: v.opt_int("/offset")?,
        length: v.opt_int("/length")?,
        source: parse_source(v)?,
        meta: v.0.get("meta").map(|m| jsonb(&strip_nul(m))),
    })
}

fn parse_download(v: &Ev) -> anyhow::Result<DownloadRow> {
    Ok(DownloadRow {
        analyzer: v.str("/analyzer")?,
        url: v.str("/url")?,
        host: v.str("/host")?,
        port: v.port("/port")?,
        user: v.opt_str("/user")?,
        password: v.opt_str("/password")?,
        size: v.int("/size")?,
        truncated: v.bool("/truncated")?,
        hashes: v.hashes("/hashes")?,
        stored: v.opt_str("/stored")?,
        cached: v.bool("/cached")?,
        error: v.opt_str("/error")?,
        source: parse_source(v)?,
    })
}

/// The old NUL stripping of a tree.
pub fn strip_nul_value(v: &Value) -> Value {
    strip_nul(v)
}
