//! The native JSON event of an attack: Elastic Common Schema fields where ECS has one,
//! `honeytrap.*` for the rest. Documented in `docs/events.md`, checked against
//! `docs/event.schema.json` by the tests.

use crate::attack::{Attack, Direction};
use crate::config::PayloadEncoding;
use base64::Engine as _;
use serde_json::{json, Value};

/// Version of the `honeytrap.*` part of the event; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// ECS version the event follows.
pub const ECS_VERSION: &str = "8.11.0";

/// Build the event for one attack.
pub fn attack_event(a: &Attack, payload_max: u64, encoding: PayloadEncoding) -> Value {
    let t = &a.transcript;
    let payload = t.payload();
    let shown = &payload[..payload.len().min(payload_max as usize)];
    let data = match encoding {
        PayloadEncoding::Hex => hex::encode(shown),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(shown),
    };
    let ts =
        |d: chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let duration_ns = (a.end - a.start)
        .num_nanoseconds()
        .unwrap_or(i64::MAX)
        .max(0);
    let net_type = if a.remote.is_ipv4() { "ipv4" } else { "ipv6" };
    let chunks_in = t
        .chunks
        .iter()
        .filter(|c| c.direction == Direction::In)
        .count();
    json!({
        "@timestamp": ts(a.start),
        "ecs": { "version": ECS_VERSION },
        "event": {
            "id": a.id.to_string(),
            "kind": "event",
            "category": ["network", "intrusion_detection"],
            "type": ["connection"],
            "action": "attack",
            "module": "honeytrap",
            "dataset": "honeytrap.attack",
            "start": ts(a.start),
            "end": ts(a.end),
            "duration": duration_ns,
        },
        "source": {
            "ip": a.remote.ip().to_string(),
            "port": a.remote.port(),
            "bytes": t.bytes_in,
        },
        "destination": {
            "ip": a.local.ip().to_string(),
            "port": a.local.port(),
            "bytes": t.bytes_out,
        },
        "network": {
            "transport": a.protocol.as_str(),
            "type": net_type,
            "direction": "inbound",
            "bytes": t.bytes_in + t.bytes_out,
        },
        "observer": {
            "name": a.sensor,
            "type": "honeypot",
            "vendor": "honeytrap",
            "product": "honeytrap",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "honeytrap": {
            "schema_version": SCHEMA_VERSION,
            "attack_id": a.id.to_string(),
            "virtual": false,
            "monitor": a.monitor,
            "mode": a.mode.as_str(),
            "end_reason": a.end_reason,
            "responses_sent": a.responses_sent,
            "payload": {
                "length": t.bytes_in,
                "md5": a.payload_hashes.md5,
                "sha256": a.payload_hashes.sha256,
                "sha512": a.payload_hashes.sha512,
                "encoding": match encoding { PayloadEncoding::Hex => "hex", PayloadEncoding::Base64 => "base64" },
                "data": data,
                "shown": shown.len(),
                "truncated": shown.len() < payload.len(),
                "read_limit_reached": t.truncated,
            },
            "transcript": {
                "path": a.transcript_ref.as_ref().map(|r| r.path.display().to_string()),
                "offset": a.transcript_ref.as_ref().map(|r| r.offset),
                "length": a.transcript_ref.as_ref().map(|r| r.length),
                "chunks": t.chunks.len(),
                "chunks_in": chunks_in,
                "chunks_out": t.chunks.len() - chunks_in,
            },
        },
    })
}
