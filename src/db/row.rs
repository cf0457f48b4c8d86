//! One JSON attack event as rows of the schema (`migrations/0001_init.sql`), and the
//! statements that insert them.
//!
//! The event is deserialised straight into typed structs that borrow its strings
//! (no JSON tree is built), and its text goes into the `event` column as it is,
//! without being serialised again ([`Jsonb`]).
//!
//! PostgreSQL text and jsonb cannot hold NUL: in every string the event gives a
//! column, and in the stored JSON (`\u0000` in strings and keys), it becomes U+FFFD.

use super::InsertOptions;
use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Statement, Transaction};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::net::IpAddr;
use uuid::Uuid;

/// A string of the event, borrowed from its text when it has no escapes.
type Str<'a> = Cow<'a, str>;

/// An attack event, parsed; strings borrow from the event's text where they can.
#[derive(Debug, Clone)]
pub struct AttackRow<'a> {
    pub id: Uuid,
    pub sensor: Str<'a>,
    pub sensor_version: Str<'a>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub duration_ns: i64,
    pub source_ip: IpAddr,
    pub source_port: i32,
    pub destination_ip: IpAddr,
    pub destination_port: i32,
    pub protocol: Str<'a>,
    pub monitor: Str<'a>,
    pub mode: Str<'a>,
    pub end_reason: Str<'a>,
    pub responses_sent: i32,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub md5: Str<'a>,
    pub sha256: Str<'a>,
    pub sha512: Str<'a>,
    pub payload_prefix: Vec<u8>,
    pub truncated: bool,
    pub read_limit_reached: bool,
    pub transcript_path: Option<Str<'a>>,
    pub transcript_offset: Option<i64>,
    pub transcript_length: Option<i64>,
    pub is_virtual: bool,
    pub parent_id: Option<Uuid>,
    pub decoder: Option<Str<'a>>,
    pub analysis_done: bool,
    /// The whole event as it came (NUL characters replaced: PostgreSQL text cannot
    /// hold them).
    pub event: Jsonb<'a>,
    pub relay: Option<RelayRow<'a>>,
    pub findings: Vec<FindingRow<'a>>,
    pub downloads: Vec<DownloadRow<'a>>,
}

#[derive(Debug, Clone)]
pub struct RelayRow<'a> {
    pub kind: Str<'a>,
    pub map: Option<Str<'a>>,
    pub target_host: Str<'a>,
    pub target_ip: Option<IpAddr>,
    pub target_port: i32,
    pub target_transport: Str<'a>,
    pub connected: bool,
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<i32>,
    pub bytes_sent: i64,
    pub bytes_received: i64,
    pub received: Option<[Str<'a>; 3]>,
    pub fallback: bool,
    pub fallback_reason: Option<Str<'a>>,
}

/// Where a finding or download came from: kind, virtual attack id, download sha256.
#[derive(Debug, Clone)]
pub struct SourceRow<'a> {
    pub kind: Str<'a>,
    pub id: Option<Uuid>,
    pub sha256: Option<Str<'a>>,
}

#[derive(Debug, Clone)]
pub struct FindingRow<'a> {
    pub analyzer: Str<'a>,
    pub kind: Str<'a>,
    pub detail: Str<'a>,
    pub offset: Option<i64>,
    pub length: Option<i64>,
    pub source: SourceRow<'a>,
    pub meta: Option<Jsonb<'a>>,
}

#[derive(Debug, Clone)]
pub struct DownloadRow<'a> {
    pub analyzer: Str<'a>,
    pub url: Str<'a>,
    pub host: Str<'a>,
    pub port: i32,
    pub user: Option<Str<'a>>,
    pub password: Option<Str<'a>>,
    pub size: i64,
    pub truncated: bool,
    /// md5, sha256, sha512 of the content.
    pub hashes: Option<[Str<'a>; 3]>,
    pub stored: Option<Str<'a>>,
    pub cached: bool,
    pub error: Option<Str<'a>>,
    pub source: SourceRow<'a>,
}

/// JSON text for a `json` or `jsonb` parameter, sent as it is (no parsing, no
/// serialising).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jsonb<'a>(pub Str<'a>);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The version of jsonb's binary format: text follows.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }

    postgres::types::to_sql_checked!();
}

/// A string of the event: borrowed from its text when it has no escapes (serde's
/// own borrowing of `Cow` does not reach into `Option`).
struct Text<'a>(Str<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Text)
    }
}

// The event as deserialised: only what goes into columns (docs/events.md).

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow)]
    event: EventDoc<'a>,
    #[serde(borrow)]
    observer: ObserverDoc<'a>,
    #[serde(borrow)]
    source: EndpointDoc<'a>,
    #[serde(borrow)]
    destination: EndpointDoc<'a>,
    #[serde(borrow)]
    network: NetworkDoc<'a>,
    #[serde(borrow)]
    honeytrap: HoneytrapDoc<'a>,
}

#[derive(Deserialize)]
struct EventDoc<'a> {
    #[serde(borrow)]
    action: Text<'a>,
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    start: Text<'a>,
    #[serde(borrow)]
    end: Text<'a>,
    duration: u64,
}

#[derive(Deserialize)]
struct ObserverDoc<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    version: Text<'a>,
}

#[derive(Deserialize)]
struct EndpointDoc<'a> {
    #[serde(borrow)]
    ip: Text<'a>,
    port: u64,
    bytes: u64,
}

#[derive(Deserialize)]
struct NetworkDoc<'a> {
    #[serde(borrow)]
    transport: Text<'a>,
}

#[derive(Deserialize)]
struct HoneytrapDoc<'a> {
    #[serde(borrow)]
    monitor: Text<'a>,
    #[serde(borrow)]
    mode: Text<'a>,
    #[serde(borrow)]
    end_reason: Text<'a>,
    responses_sent: u64,
    #[serde(borrow)]
    payload: PayloadDoc<'a>,
    #[serde(borrow)]
    transcript: Option<TranscriptDoc<'a>>,
    #[serde(rename = "virtual")]
    is_virtual: bool,
    #[serde(borrow)]
    parent_id: Option<Text<'a>>,
    #[serde(borrow)]
    decoder: Option<Text<'a>>,
    analysis: AnalysisDoc,
    #[serde(borrow)]
    relay: Option<RelayDoc<'a>>,
    #[serde(borrow)]
    findings: Vec<FindingDoc<'a>>,
    #[serde(borrow)]
    downloads: Vec<DownloadDoc<'a>>,
}

#[derive(Deserialize)]
struct PayloadDoc<'a> {
    #[serde(borrow)]
    data: Text<'a>,
    #[serde(borrow)]
    encoding: Text<'a>,
    #[serde(borrow)]
    md5: Text<'a>,
    #[serde(borrow)]
    sha256: Text<'a>,
    #[serde(borrow)]
    sha512: Text<'a>,
    truncated: bool,
    read_limit_reached: bool,
}

#[derive(Deserialize)]
struct TranscriptDoc<'a> {
    #[serde(borrow)]
    path: Option<Text<'a>>,
    offset: Option<u64>,
    length: Option<u64>,
}

#[derive(Deserialize)]
struct AnalysisDoc {
    done: bool,
}

#[derive(Deserialize)]
struct HashesDoc<'a> {
    #[serde(borrow)]
    md5: Text<'a>,
    #[serde(borrow)]
    sha256: Text<'a>,
    #[serde(borrow)]
    sha512: Text<'a>,
}

#[derive(Deserialize)]
struct RelayDoc<'a> {
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    map: Option<Text<'a>>,
    #[serde(borrow)]
    target: TargetDoc<'a>,
    connected: bool,
    #[serde(borrow)]
    local: Option<LocalDoc<'a>>,
    bytes_sent: u64,
    bytes_received: u64,
    #[serde(borrow)]
    received: Option<HashesDoc<'a>>,
    fallback: bool,
    #[serde(borrow)]
    fallback_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct TargetDoc<'a> {
    #[serde(borrow)]
    host: Text<'a>,
    #[serde(borrow)]
    ip: Option<Text<'a>>,
    port: u64,
    #[serde(borrow)]
    transport: Text<'a>,
}

#[derive(Deserialize)]
struct LocalDoc<'a> {
    #[serde(borrow)]
    ip: Option<Text<'a>>,
    port: Option<u64>,
}

#[derive(Deserialize)]
struct SourceDoc<'a> {
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    sha256: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct FindingDoc<'a> {
    #[serde(borrow)]
    analyzer: Text<'a>,
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    detail: Text<'a>,
    offset: Option<u64>,
    length: Option<u64>,
    #[serde(borrow)]
    source: SourceDoc<'a>,
    /// Present (even `null`): stored; absent: NULL.
    #[serde(default, borrow, deserialize_with = "present")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DownloadDoc<'a> {
    #[serde(borrow)]
    analyzer: Text<'a>,
    #[serde(borrow)]
    url: Text<'a>,
    #[serde(borrow)]
    host: Text<'a>,
    port: u64,
    #[serde(borrow)]
    user: Option<Text<'a>>,
    #[serde(borrow)]
    password: Option<Text<'a>>,
    size: u64,
    truncated: bool,
    #[serde(borrow)]
    hashes: Option<HashesDoc<'a>>,
    #[serde(borrow)]
    stored: Option<Text<'a>>,
    cached: bool,
    #[serde(borrow)]
    error: Option<Text<'a>>,
    #[serde(borrow)]
    source: SourceDoc<'a>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Just `event.action`, for the error of an event that is not an attack.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: Option<HeadEvent<'a>>,
}

#[derive(Deserialize)]
struct HeadEvent<'a> {
    #[serde(borrow)]
    action: Option<Text<'a>>,
}

/// NUL becomes U+FFFD (PostgreSQL text cannot hold it). An unescaped JSON string
/// cannot hold NUL, so only strings that were copied out are looked at.
fn no_nul(s: Text<'_>) -> Str<'_> {
    match s.0 {
        Cow::Owned(s) if s.contains('\0') => Cow::Owned(s.replace('\0', "\u{FFFD}")),
        s => s,
    }
}

fn opt(s: Option<Text<'_>>) -> Option<Str<'_>> {
    s.map(no_nul)
}

/// The JSON text with every `\u0000` escape (NUL, in strings and keys) replaced by
/// U+FFFD. `\\u0000` (an escaped backslash, then `u0000`) is left alone.
fn strip_nul_json(text: &str) -> Str<'_> {
    if !text.contains("\\u0000") {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::new();
    let (mut copied, mut i) = (0, 0);
    while let Some(off) = memchr::memchr(b'\\', &b[i..]) {
        let at = i + off;
        if b[at + 1..].starts_with(b"u0000") {
            out.reserve(text.len());
            out.push_str(&text[copied..at]);
            out.push('\u{FFFD}');
            copied = at + 6;
            i = copied;
        } else {
            // An escape: skip the character escaped (a backslash, too).
            i = (at + 2).min(b.len());
        }
    }
    if copied == 0 {
        // Only escaped backslashes before `u0000`.
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A count that must fit a bigint.
fn count(p: &str, n: u64) -> anyhow::Result<i64> {
    i64::try_from(n).map_err(|_| anyhow!("{p} is not a count"))
}

fn opt_count(p: &str, n: Option<u64>) -> anyhow::Result<Option<i64>> {
    n.map(|n| count(p, n)).transpose()
}

fn port(p: &str, n: u64) -> anyhow::Result<i32> {
    anyhow::ensure!(n <= 65535, "{p}: {n} is not a port");
    Ok(n as i32)
}

fn parsed<T: std::str::FromStr>(p: &str, s: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse().with_context(|| format!("{p}: {s}"))
}

fn opt_parsed<T: std::str::FromStr>(p: &str, s: Option<&Text<'_>>) -> anyhow::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.map(|s| parsed(p, &no_nul(Text(s.0.clone())))).transpose()
}

fn time(p: &str, s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{p}: {s}"))?
        .with_timezone(&Utc))
}

fn hashes(h: Option<HashesDoc<'_>>) -> Option<[Str<'_>; 3]> {
    h.map(|h| [no_nul(h.md5), no_nul(h.sha256), no_nul(h.sha512)])
}

/// Why an event does not deserialise, naming the field as a JSON pointer
/// (`/source/ip missing`, `/source/port: invalid type ...`).
fn explain(text: &str, e: serde_json::Error) -> anyhow::Error {
    if !e.is_data() {
        return anyhow!("not JSON: {e}");
    }
    if let Ok(Head {
        event: Some(HeadEvent {
            action: Some(action),
        }),
    }) = serde_json::from_str(text)
    {
        if action.0 != "attack" {
            return anyhow!("event.action is not \"attack\"");
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let Err(e) = serde_path_to_error::deserialize::<_, Doc>(&mut de) else {
        return anyhow!("{e}");
    };
    let mut pointer = String::new();
    for s in e.path().iter() {
        use serde_path_to_error::Segment;
        match s {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{key}")),
            Segment::Enum { variant } => pointer.push_str(&format!("/{variant}")),
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    let msg = e.inner().to_string();
    match msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split_once('`'))
    {
        Some((field, _)) => anyhow!("{pointer}/{field} missing"),
        None => anyhow!("{pointer}: {msg}"),
    }
}

/// The attack id of an event, if it has one (for logs).
pub fn event_id(text: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        event: IdEvent<'a>,
    }
    #[derive(Deserialize)]
    struct IdEvent<'a> {
        #[serde(borrow)]
        id: Text<'a>,
    }
    serde_json::from_slice::<IdOnly>(text)
        .ok()
        .map(|e| e.event.id.0.into_owned())
}

/// Parse an attack event (`docs/events.md`) from its JSON text.
pub fn parse_event(text: &[u8]) -> anyhow::Result<AttackRow<'_>> {
    let text = std::str::from_utf8(text).map_err(|e| anyhow!("not JSON: {e}"))?;
    let d: Doc = serde_json::from_str(text).map_err(|e| explain(text, e))?;
    anyhow::ensure!(
        d.event.action.0 == "attack",
        "event.action is not \"attack\""
    );
    let h = d.honeytrap;
    let p = h.payload;
    let data = no_nul(p.data);
    let payload_prefix = match &*no_nul(p.encoding) {
        "hex" => hex::decode(&*data).context("payload.data is not hex")?,
        _ => base64::engine::general_purpose::STANDARD
            .decode(&*data)
            .context("payload.data is not base64")?,
    };
    let t = match h.transcript {
        Some(t) => (t.path, t.offset, t.length),
        None => (None, None, None),
    };
    Ok(AttackRow {
        id: parsed("/event/id", &no_nul(d.event.id))?,
        sensor: no_nul(d.observer.name),
        sensor_version: no_nul(d.observer.version),
        start: time("/event/start", &no_nul(d.event.start))?,
        end: time("/event/end", &no_nul(d.event.end))?,
        duration_ns: count("/event/duration", d.event.duration)?,
        source_ip: parsed("/source/ip", &no_nul(d.source.ip))?,
        source_port: port("/source/port", d.source.port)?,
        destination_ip: parsed("/destination/ip", &no_nul(d.destination.ip))?,
        destination_port: port("/destination/port", d.destination.port)?,
        protocol: no_nul(d.network.transport),
        monitor: no_nul(h.monitor),
        mode: no_nul(h.mode),
        end_reason: no_nul(h.end_reason),
        responses_sent: h.responses_sent.min(i32::MAX as u64) as i32,
        bytes_in: count("/source/bytes", d.source.bytes)?,
        bytes_out: count("/destination/bytes", d.destination.bytes)?,
        md5: no_nul(p.md5),
        sha256: no_nul(p.sha256),
        sha512: no_nul(p.sha512),
        payload_prefix,
        truncated: p.truncated,
        read_limit_reached: p.read_limit_reached,
        transcript_path: opt(t.0),
        transcript_offset: opt_count("/honeytrap/transcript/offset", t.1)?,
        transcript_length: opt_count("/honeytrap/transcript/length", t.2)?,
        is_virtual: h.is_virtual,
        parent_id: opt_parsed("/honeytrap/parent_id", h.parent_id.as_ref())?,
        decoder: opt(h.decoder),
        analysis_done: h.analysis.done,
        relay: h.relay.map(relay).transpose()?,
        findings: h
            .findings
            .into_iter()
            .enumerate()
            .map(|(i, f)| finding(i, f))
            .collect::<anyhow::Result<_>>()?,
        downloads: h
            .downloads
            .into_iter()
            .enumerate()
            .map(|(i, d)| download(i, d))
            .collect::<anyhow::Result<_>>()?,
        event: Jsonb(strip_nul_json(text)),
    })
}

fn relay(r: RelayDoc<'_>) -> anyhow::Result<RelayRow<'_>> {
    let local = r.local.unwrap_or(LocalDoc {
        ip: None,
        port: None,
    });
    Ok(RelayRow {
        kind: no_nul(r.kind),
        map: opt(r.map),
        target_host: no_nul(r.target.host),
        target_ip: opt_parsed("/honeytrap/relay/target/ip", r.target.ip.as_ref())?,
        target_port: port("/honeytrap/relay/target/port", r.target.port)?,
        target_transport: no_nul(r.target.transport),
        connected: r.connected,
        local_ip: opt_parsed("/honeytrap/relay/local/ip", local.ip.as_ref())?,
        local_port: opt_count("/honeytrap/relay/local/port", local.port)?
            .map(|p| p.min(65535) as i32),
        bytes_sent: count("/honeytrap/relay/bytes_sent", r.bytes_sent)?,
        bytes_received: count("/honeytrap/relay/bytes_received", r.bytes_received)?,
        received: hashes(r.received),
        fallback: r.fallback,
        fallback_reason: opt(r.fallback_reason),
    })
}

fn source<'a>(p: &str, s: SourceDoc<'a>) -> anyhow::Result<SourceRow<'a>> {
    Ok(SourceRow {
        kind: no_nul(s.kind),
        id: opt_parsed(&format!("{p}/source/id"), s.id.as_ref())?,
        sha256: opt(s.sha256),
    })
}

fn finding(i: usize, f: FindingDoc<'_>) -> anyhow::Result<FindingRow<'_>> {
    let p = format!("/honeytrap/findings/{i}");
    Ok(FindingRow {
        analyzer: no_nul(f.analyzer),
        kind: no_nul(f.kind),
        detail: no_nul(f.detail),
        offset: opt_count(&format!("{p}/offset"), f.offset)?,
        length: opt_count(&format!("{p}/length"), f.length)?,
        source: source(&p, f.source)?,
        meta: f.meta.map(|m| Jsonb(strip_nul_json(m.get()))),
    })
}

fn download(i: usize, d: DownloadDoc<'_>) -> anyhow::Result<DownloadRow<'_>> {
    let p = format!("/honeytrap/downloads/{i}");
    Ok(DownloadRow {
        analyzer: no_nul(d.analyzer),
        url: no_nul(d.url),
        host: no_nul(d.host),
        port: port(&format!("{p}/port"), d.port)?,
        user: opt(d.user),
        password: opt(d.password),
        size: count(&format!("{p}/size"), d.size)?,
        truncated: d.truncated,
        hashes: hashes(d.hashes),
        stored: opt(d.stored),
        cached: d.cached,
        error: opt(d.error),
        source: source(&p, d.source)?,
    })
}

/// The statements of one batch, prepared once per transaction.
pub struct Statements {
    sensor: Statement,
    relay: Statement,
    download: Statement,
    attack_download: Statement,
}

impl Statements {
    pub fn prepare(tx: &mut Transaction) -> anyhow::Result<Statements> {
        Ok(Statements {
            sensor: tx.prepare(
                "INSERT INTO sensors (name, first_seen, last_seen, version) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET
                   first_seen = LEAST(sensors.first_seen, EXCLUDED.first_seen),
                   last_seen = GREATEST(sensors.last_seen, EXCLUDED.last_seen),
                   version = EXCLUDED.version",
            )?,
            relay: tx.prepare(
                "INSERT INTO relays (attack_id, kind, map, target_host, target_ip,
                   target_port, target_transport, connected, local_ip, local_port,
                   bytes_sent, bytes_received, received_md5, received_sha256,
                   received_sha512, fallback, fallback_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )?,
            download: tx.prepare(
                "INSERT INTO downloads (sha256, md5, sha512, size, truncated, first_seen, content)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (sha256) DO UPDATE SET content = EXCLUDED.content
                 WHERE downloads.content IS NULL AND EXCLUDED.content IS NOT NULL",
            )?,
            attack_download: tx.prepare(
                "INSERT INTO attack_downloads (attack_id, ordinal, sha256, analyzer, url,
                   host, port, user_name, password, size, truncated, stored, cached, error,
                   source_kind, source_id, source_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )?,
        })
    }
}

/// One row per sensor of the batch (first and last attack seen).
pub fn upsert_sensors(
    tx: &mut Transaction,
    st: &Statements,
    rows: &[AttackRow],
) -> anyhow::Result<()> {
    let mut seen: std::collections::BTreeMap<&str, (DateTime<Utc>, DateTime<Utc>, &str)> =
        Default::default();
    for r in rows {
        let e = seen
            .entry(&*r.sensor)
            .or_insert((r.start, r.start, &*r.sensor_version));
        e.0 = e.0.min(r.start);
        e.1 = e.1.max(r.start);
    }
    // Sorted by name: concurrent writers lock sensor rows in the same order.
    for (name, (first, last, version)) in seen {
        tx.execute(&st.sensor, &[&name, &first, &last, &version])?;
    }
    Ok(())
}

/// Insert the attacks of a batch with one statement (arrays unnested); returns the
/// ids that were new (an attack already there is skipped).
pub fn insert_attacks(
    tx: &mut Transaction,
    rows: &[AttackRow],
) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    // Columns of values (copied) and of strings and bytes (borrowed).
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f).collect::<Vec<_>>()
        };
    }
    macro_rules! text {
        ($f:ident) => {
            rows.iter().map(|r| &*r.$f).collect::<Vec<&str>>()
        };
    }
    macro_rules! opt_text {
        ($f:ident) => {
            rows.iter()
                .map(|r| r.$f.as_deref())
                .collect::<Vec<Option<&str>>>()
        };
    }
    let (id, sensor, start, end, duration) = (
        col!(id),
        text!(sensor),
        col!(start),
        col!(end),
        col!(duration_ns),
    );
    let (sip, sport, dip, dport, proto) = (
        col!(source_ip),
        col!(source_port),
        col!(destination_ip),
        col!(destination_port),
        text!(protocol),
    );
    let (monitor, mode, reason, responses, bin, bout) = (
        text!(monitor),
        text!(mode),
        text!(end_reason),
        col!(responses_sent),
        col!(bytes_in),
        col!(bytes_out),
    );
    let (md5, sha256, sha512, prefix, truncated, limit) = (
        text!(md5),
        text!(sha256),
        text!(sha512),
        rows.iter()
            .map(|r| r.payload_prefix.as_slice())
            .collect::<Vec<&[u8]>>(),
        col!(truncated),
        col!(read_limit_reached),
    );
    let (tpath, toff, tlen, virt, parent, decoder, done, event) = (
        opt_text!(transcript_path),
        col!(transcript_offset),
        col!(transcript_length),
        col!(is_virtual),
        col!(parent_id),
        opt_text!(decoder),
        col!(analysis_done),
        rows.iter().map(|r| &r.event).collect::<Vec<&Jsonb>>(),
    );
    let new = tx.query(
        "INSERT INTO attacks (id, sensor, start_time, end_time, duration_ns,
           source_ip, source_port, destination_ip, destination_port, protocol,
           monitor, mode, end_reason, responses_sent, bytes_in, bytes_out,
           payload_md5, payload_sha256, payload_sha512, payload_prefix,
           payload_truncated, read_limit_reached, transcript_path,
           transcript_offset, transcript_length, is_virtual, parent_id, decoder,
           analysis_done, event)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[],
           $5::bigint[], $6::inet[], $7::integer[], $8::inet[], $9::integer[], $10::text[],
           $11::text[], $12::text[], $13::text[], $14::integer[], $15::bigint[], $16::bigint[],
           $17::text[], $18::text[], $19::text[], $20::bytea[], $21::boolean[], $22::boolean[],
           $23::text[], $24::bigint[], $25::bigint[], $26::boolean[], $27::uuid[], $28::text[],
           $29::boolean[], $30::jsonb[])
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
        &[
            &id, &sensor, &start, &end, &duration, &sip, &sport, &dip, &dport, &proto, &monitor,
            &mode, &reason, &responses, &bin, &bout, &md5, &sha256, &sha512, &prefix, &truncated,
            &limit, &tpath, &toff, &tlen, &virt, &parent, &decoder, &done, &event,
        ],
    )?;
    Ok(new.iter().map(|r| r.get(0)).collect())
}

/// Insert the findings of (new) attacks with one statement.
pub fn insert_findings(tx: &mut Transaction, rows: &[&AttackRow]) -> anyhow::Result<()> {
    let all: Vec<(Uuid, i32, &FindingRow)> = rows
        .iter()
        .flat_map(|r| {
            r.findings
                .iter()
                .enumerate()
                .map(|(i, f)| (r.id, i as i32, f))
        })
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($e:expr) => {
            all.iter().map($e).collect::<Vec<_>>()
        };
    }
    let id = col!(|x| x.0);
    let ord = col!(|x| x.1);
    let analyzer = col!(|x| &*x.2.analyzer);
    let kind = col!(|x| &*x.2.kind);
    let detail = col!(|x| &*x.2.detail);
    let offset = col!(|x| x.2.offset);
    let length = col!(|x| x.2.length);
    let skind = col!(|x| &*x.2.source.kind);
    let sid = col!(|x| x.2.source.id);
    let ssha = col!(|x| x.2.source.sha256.as_deref());
    let meta = col!(|x| x.2.meta.as_ref());
    tx.execute(
        "INSERT INTO findings (attack_id, ordinal, analyzer, kind, detail, \"offset\",
           length, source_kind, source_id, source_sha256, meta)
         SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[],
           $6::bigint[], $7::bigint[], $8::text[], $9::uuid[], $10::text[], $11::jsonb[])",
        &[
            &id, &ord, &analyzer, &kind, &detail, &offset, &length, &skind, &sid, &ssha, &meta,
        ],
    )?;
    Ok(())
}

/// Insert the relay and downloads of a new attack (rarer: one statement each).
pub fn insert_children(
    tx: &mut Transaction,
    st: &Statements,
    r: &AttackRow,
    opts: &InsertOptions,
) -> anyhow::Result<()> {
    if let Some(x) = &r.relay {
        let h = |i: usize| x.received.as_ref().map(|h| &*h[i]);
        tx.execute(
            &st.relay,
            &[
                &r.id,
                &x.kind,
                &x.map,
                &x.target_host,
                &x.target_ip,
                &x.target_port,
                &x.target_transport,
                &x.connected,
                &x.local_ip,
                &x.local_port,
                &x.bytes_sent,
                &x.bytes_received,
                &h(0),
                &h(1),
                &h(2),
                &x.fallback,
                &x.fallback_reason,
            ],
        )?;
    }
    for (i, d) in r.downloads.iter().enumerate() {
        let sha256 = d.hashes.as_ref().map(|h| &*h[1]);
        if let Some(h) = &d.hashes {
            let content = super::stored_content(opts, d.stored.as_deref(), d.size as u64);
            tx.execute(
                &st.download,
                &[
                    &h[1],
                    &h[0],
                    &h[2],
                    &d.size,
                    &d.truncated,
                    &r.start,
                    &content,
                ],
            )?;
        }
        tx.execute(
            &st.attack_download,
            &[
                &r.id,
                &(i as i32),
                &sha256,
                &d.analyzer,
                &d.url,
                &d.host,
                &d.port,
                &d.user,
                &d.password,
                &d.size,
                &d.truncated,
                &d.stored,
                &d.cached,
                &d.error,
                &d.source.kind,
                &d.source.id,
                &d.source.sha256,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "row_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::{Captured, EndReason, Mode, Transcript};
    use crate::config::PayloadEncoding;
    use serde_json::{json, Value};

    fn attack() -> crate::attack::Attack {
        let mut t = Transcript::default();
        t.push_in(b"GET / HTTP/1.0\r\n\0\r\n", 100);
        let c = Captured {
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            sensor: "s1".into(),
            monitor: "listen".into(),
            mode: Mode::Normal,
            protocol: crate::proto::Protocol::Tcp,
            local: "[::ffff:10.0.0.1]:8080".parse().unwrap(),
            remote: "192.0.2.7:40000".parse().unwrap(),
            transcript: t,
            responses_sent: 1,
            relay: None,
            end_reason: EndReason::Closed,
        };
        let mut a = c.seal();
        let mut f = crate::analysis::Finding::new("protocol", "http", "GET \0 /");
        f.meta
            .insert("k\0".into(), json!(["v\0", "C:\\u0000", 1.5, null]));
        a.analysis.findings.push(f);
        a
    }

    /// The event as the sinks write it (struct order).
    fn event_text() -> Vec<u8> {
        static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| {
            serde_json::to_vec(&crate::event::Event::of(
                &attack(),
                4096,
                PayloadEncoding::Hex,
            ))
            .unwrap()
        })
        .clone()
    }

    fn event() -> Value {
        serde_json::from_slice(&event_text()).unwrap()
    }

    /// An event with a relay, findings and downloads (as in tests/e2e_postgres.rs),
    /// with NULs and an escaped backslash before `u0000` in a few strings.
    fn rich_event() -> Value {
        let id = "01a21d16-db6f-76b8-8253-cbba587e8c71";
        let sha = "d".repeat(64);
        let hashes = json!({"md5": "m".repeat(32), "sha256": sha, "sha512": "s".repeat(128)});
        json!({
            "@timestamp": "2026-11-27T12:59:26.959747Z",
            "ecs": {"version": "8.11.0"},
            "event": {"action": "attack", "category": ["network", "intrusion_detection"],
                      "dataset": "honeytrap.attack", "duration": 1000858714,
                      "end": "2026-11-27T12:59:27.960605Z", "id": id, "kind": "event",
                      "module": "honeytrap", "start": "2026-11-27T12:59:26.959747Z", "type": ["connection"]},
            "source": {"ip": "2001:db8::7", "port": 40000, "bytes": 4},
            "destination": {"ip": "2001:db8::1", "port": 80, "bytes": 9},
            "network": {"transport": "tcp", "type": "ipv6", "direction": "inbound", "bytes": 13},
            "observer": {"name": "unit\u{0}", "type": "honeypot", "vendor": "honeytrap", "product": "honeytrap", "version": "0.1.0"},
            "honeytrap": {
                "schema_version": 1, "attack_id": id, "virtual": false, "monitor": "listen",
                "mode": "proxy", "end_reason": "closed", "responses_sent": 0,
                "payload": {"length": 4, "md5": "a", "sha256": "b", "sha512": "c", "encoding": "base64",
                            "data": "AAEC/w==", "shown": 4, "truncated": false, "read_limit_reached": false},
                "transcript": {"path": "t/x\u{0}", "offset": 7, "length": 9, "chunks": 2, "chunks_in": 1, "chunks_out": 1},
                "relay": {"kind": "proxy", "map": "web", "target": {"host": "back\\u0000end", "ip": "10.0.0.5", "port": 8080, "transport": "tcp"},
                          "connected": true, "local": {"ip": "10.0.0.1", "port": 51000}, "bytes_sent": 4,
                          "bytes_received": 9, "received": hashes.clone(), "fallback": false, "fallback_reason": null},
                "parent_id": "01a21d16-db6f-76b8-8253-cbba587e8c70", "decoder": "base64",
                "findings": [
                    {"analyzer": "yara", "kind": "rule", "detail": "Mirai\u{0}", "offset": 0, "length": 4,
                     "source": {"kind": "download", "sha256": sha}, "meta": {"tags": ["bot"], "\u{0}": "\\\u{0}"}},
                    {"analyzer": "x", "kind": "y", "detail": "z", "offset": null,
                     "source": {"kind": "virtual", "id": "01a21d16-db6f-76b8-8253-cbba587e8c74"}, "meta": null}
                ],
                "downloads": [
                    {"analyzer": "http", "url": "http://198.51.100.1/x", "host": "198.51.100.1", "port": 80,
                     "user": null, "password": null, "size": 5, "truncated": false, "hashes": hashes,
                     "stored": "downloads/x.bin", "cached": false, "error": null, "source": {"kind": "payload"}},
                    {"analyzer": "ftp", "url": "ftp://198.51.100.1:21/y", "host": "198.51.100.1", "port": 21,
                     "user": "anonymous\u{0}", "password": "a@b", "size": 0, "truncated": false, "hashes": null,
                     "stored": null, "cached": false, "error": "refused", "source": {"kind": "payload"}}
                ],
                "analysis": {"done": true, "runs": 3, "failures": [], "virtual_attacks": []}
            }
        })
    }

    /// Whether a string or key anywhere in `v` holds NUL.
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }

    /// JSON text as a value (jsonb keeps no key order).
    fn value(j: &Jsonb) -> Value {
        serde_json::from_str(&j.0).unwrap()
    }

    /// The rows of the new parser (on `text`) and of the old one (on `v`) are the
    /// same: every column, and the same JSON in the jsonb columns.
    fn same_rows(text: &[u8], v: &Value) {
        let mut new = parse_event(text).unwrap();
        let mut old = reference::parse_event(v).unwrap();
        assert_eq!(value(&new.event), value(&old.event));
        new.event = Jsonb(Cow::Borrowed(""));
        old.event = Jsonb(Cow::Borrowed(""));
        assert_eq!(new.findings.len(), old.findings.len());
        for (n, o) in new.findings.iter_mut().zip(old.findings.iter_mut()) {
            assert_eq!(n.meta.as_ref().map(value), o.meta.as_ref().map(value));
            n.meta = None;
            o.meta = None;
        }
        assert_eq!(format!("{new:?}"), format!("{old:?}"));
    }

    #[test]
    fn an_event_parses_into_its_row() {
        let text = event_text();
        let e = event();
        let r = parse_event(&text).unwrap();
        assert_eq!(r.id.to_string(), e["event"]["id"].as_str().unwrap());
        assert_eq!(r.sensor, "s1");
        assert!(
            matches!(r.sensor, Cow::Borrowed(_)),
            "borrowed from the text"
        );
        assert_eq!(r.source_ip.to_string(), "192.0.2.7");
        assert_eq!(r.destination_ip.to_string(), "10.0.0.1");
        assert_eq!((r.source_port, r.destination_port), (40000, 8080));
        assert_eq!(r.payload_prefix, b"GET / HTTP/1.0\r\n\0\r\n");
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].detail, "GET \u{FFFD} /");
        assert!(!has_nul(&value(&r.event)), "{}", r.event.0);
        assert!(r.relay.is_none() && r.downloads.is_empty());
        // The stored event is the text itself, NUL replaced.
        let stored: Value = serde_json::from_str(&r.event.0).unwrap();
        assert_eq!(
            stored["honeytrap"]["findings"][0]["detail"],
            "GET \u{FFFD} /"
        );
        assert_eq!(
            stored["honeytrap"]["findings"][0]["meta"]["k\u{FFFD}"],
            json!(["v\u{FFFD}", "C:\\u0000", 1.5, null])
        );
    }

    #[test]
    fn the_rows_are_those_of_the_tree_walking_parser() {
        // A rendered event (NUL in the payload, a finding, its meta key and value),
        // as the sinks write it and as the tree writes it; one with a relay,
        // findings and downloads.
        same_rows(&event_text(), &event());
        same_rows(event().to_string().as_bytes(), &event());
        let rich = rich_event();
        let text = rich.to_string();
        same_rows(text.as_bytes(), &rich);
        let r = parse_event(text.as_bytes()).unwrap();
        let relay = r.relay.as_ref().unwrap();
        assert_eq!(
            relay.target_host, "back\\u0000end",
            "an escaped backslash is kept"
        );
        assert_eq!(relay.local_port, Some(51000));
        assert_eq!(r.sensor, "unit\u{FFFD}");
        assert_eq!(r.downloads[1].user.as_deref(), Some("anonymous\u{FFFD}"));
        assert_eq!(r.findings[1].meta, Some(Jsonb(Cow::Borrowed("null"))));
        assert_eq!(
            value(r.findings[0].meta.as_ref().unwrap()),
            json!({"tags": ["bot"], "\u{FFFD}": "\\\u{FFFD}"})
        );
        assert!(r.event.0.contains(r#"back\\u0000end"#));
        assert!(!r.event.0.contains(r#"\u0000""#));
    }

    #[test]
    fn nul_escapes_become_the_replacement_character_and_nothing_else_changes() {
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"b"}"#),
            (
                r#"{"a\u0000":"x\u0000y"}"#,
                "{\"a\u{FFFD}\":\"x\u{FFFD}y\"}",
            ),
            // An escaped backslash, then `u0000`: no NUL.
            (r#"{"a":"C:\\u0000"}"#, r#"{"a":"C:\\u0000"}"#),
            // An escaped backslash, then a NUL.
            (r#"{"a":"\\\u0000"}"#, "{\"a\":\"\\\\\u{FFFD}\"}"),
            (r#"{"a":"\"\u0000\n"}"#, "{\"a\":\"\\\"\u{FFFD}\\n\"}"),
            (r#"["\u00000"]"#, "[\"\u{FFFD}0\"]"),
        ];
        for (input, want) in cases {
            let got = strip_nul_json(input);
            assert_eq!(got, want, "{input}");
            let (a, b): (Value, Value) = (
                serde_json::from_str(&got).unwrap(),
                super::reference::strip_nul_value(&serde_json::from_str(input).unwrap()),
            );
            assert_eq!(a, b, "{input}");
        }
        assert!(matches!(
            strip_nul_json(r#"{"a":"\\u0000"}"#),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_broken_event_is_an_error_naming_the_field() {
        let parse = |v: &Value| parse_event(v.to_string().as_bytes()).map(|_| ());
        let mut e = event();
        e["source"]["ip"] = Value::from("not an address");
        let err = parse(&e).unwrap_err().to_string();
        assert!(err.contains("/source/ip"), "{err}");
        e["source"].as_object_mut().unwrap().remove("ip");
        let err = parse(&e).unwrap_err().to_string();
        assert!(err.contains("/source/ip missing"), "{err}");
        let mut e = event();
        e["honeytrap"]["findings"][0]["kind"] = Value::from(7);
        let err = parse(&e).unwrap_err().to_string();
        assert!(err.contains("/honeytrap/findings/0/kind"), "{err}");
        let mut e = event();
        e["event"]["action"] = Value::from("login");
        e["honeytrap"] = Value::Null;
        let err = parse(&e).unwrap_err().to_string();
        assert_eq!(err, "event.action is not \"attack\"");
        let err = parse_event(b"{\"event\":").unwrap_err().to_string();
        assert!(err.starts_with("not JSON"), "{err}");
        let mut e = event();
        e["destination"]["port"] = Value::from(70000);
        let err = parse(&e).unwrap_err().to_string();
        assert!(
            err.contains("/destination/port: 70000 is not a port"),
            "{err}"
        );
        assert_eq!(event_id(&event_text()).unwrap(), event()["event"]["id"]);
    }
}
