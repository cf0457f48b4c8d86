//! One JSON attack event as rows of the schema (`migrations/0001_init.sql`), and the
//! statements that insert them.

use super::InsertOptions;
use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use postgres::{Statement, Transaction};
use serde_json::Value;
use std::net::IpAddr;
use uuid::Uuid;

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
    pub event: Value,
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
    pub meta: Option<Value>,
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
        event: strip_nul(e),
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
        meta: v.0.get("meta").map(strip_nul),
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
            .entry(&r.sensor)
            .or_insert((r.start, r.start, &r.sensor_version));
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
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let (id, sensor, start, end, duration) = (
        col!(id),
        col!(sensor),
        col!(start),
        col!(end),
        col!(duration_ns),
    );
    let (sip, sport, dip, dport, proto) = (
        col!(source_ip),
        col!(source_port),
        col!(destination_ip),
        col!(destination_port),
        col!(protocol),
    );
    let (monitor, mode, reason, responses, bin, bout) = (
        col!(monitor),
        col!(mode),
        col!(end_reason),
        col!(responses_sent),
        col!(bytes_in),
        col!(bytes_out),
    );
    let (md5, sha256, sha512, prefix, truncated, limit) = (
        col!(md5),
        col!(sha256),
        col!(sha512),
        col!(payload_prefix),
        col!(truncated),
        col!(read_limit_reached),
    );
    let (tpath, toff, tlen, virt, parent, decoder, done, event) = (
        col!(transcript_path),
        col!(transcript_offset),
        col!(transcript_length),
        col!(is_virtual),
        col!(parent_id),
        col!(decoder),
        col!(analysis_done),
        col!(event),
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
    let analyzer = col!(|x| x.2.analyzer.as_str());
    let kind = col!(|x| x.2.kind.as_str());
    let detail = col!(|x| x.2.detail.as_str());
    let offset = col!(|x| x.2.offset);
    let length = col!(|x| x.2.length);
    let skind = col!(|x| x.2.source.kind.as_str());
    let sid = col!(|x| x.2.source.id);
    let ssha = col!(|x| x.2.source.sha256.as_deref());
    let meta = col!(|x| x.2.meta.clone());
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
        let h = |i: usize| x.received.as_ref().map(|h| h[i].as_str());
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
        let sha256 = d.hashes.as_ref().map(|h| h[1].as_str());
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
mod tests {
    use super::*;
    use crate::attack::{Captured, EndReason, Mode, Transcript};
    use crate::config::PayloadEncoding;

    fn event() -> Value {
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
        a.analysis.findings.push(crate::analysis::Finding::new(
            "protocol", "http", "GET \0 /",
        ));
        crate::event::attack_event(&a, 4096, PayloadEncoding::Hex)
    }

    #[test]
    fn an_event_parses_into_its_row() {
        let e = event();
        let r = parse_event(&e).unwrap();
        assert_eq!(r.id.to_string(), e["event"]["id"].as_str().unwrap());
        assert_eq!(r.sensor, "s1");
        assert_eq!(r.source_ip.to_string(), "192.0.2.7");
        assert_eq!(r.destination_ip.to_string(), "10.0.0.1");
        assert_eq!((r.source_port, r.destination_port), (40000, 8080));
        assert_eq!(r.payload_prefix, b"GET / HTTP/1.0\r\n\0\r\n");
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].detail, "GET \u{FFFD} /");
        assert!(!r.event.to_string().contains("\\u0000"));
        assert!(r.relay.is_none() && r.downloads.is_empty());
    }

    #[test]
    fn a_broken_event_is_an_error_naming_the_field() {
        let mut e = event();
        e["source"]["ip"] = Value::from("not an address");
        let err = parse_event(&e).unwrap_err().to_string();
        assert!(err.contains("/source/ip"), "{err}");
        e["source"].as_object_mut().unwrap().remove("ip");
        assert!(parse_event(&e)
            .unwrap_err()
            .to_string()
            .contains("/source/ip missing"));
    }
}
