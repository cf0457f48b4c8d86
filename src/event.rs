//! The native JSON event of an attack: Elastic Common Schema fields where ECS has one,
//! `honeytrap.*` for the rest. Documented in `docs/events.md`, checked against
//! `docs/event.schema.json` by the tests.
//!
//! The event is a tree of borrowed structs serialized straight into the output, so
//! writing one costs no intermediate JSON tree.

use crate::attack::{Attack, Direction, EndReason};
use crate::config::PayloadEncoding;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Version of the `honeytrap.*` part of the event; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// ECS version the event follows.
pub const ECS_VERSION: &str = "8.11.0";

/// One attack event, ready to serialize.
#[derive(Serialize)]
pub struct Event<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Ecs,
    event: EventInfo,
    source: Endpoint,
    destination: Endpoint,
    network: Network,
    observer: Observer<'a>,
    honeytrap: Honeytrap<'a>,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct EventInfo {
    id: String,
    kind: &'static str,
    category: [&'static str; 2],
    #[serde(rename = "type")]
    kind_type: [&'static str; 1],
    action: &'static str,
    module: &'static str,
    dataset: &'static str,
    start: String,
    end: String,
    /// Nanoseconds, as ECS wants.
    duration: i64,
}

#[derive(Serialize)]
struct Endpoint {
    ip: String,
    port: u16,
    bytes: u64,
}

#[derive(Serialize)]
struct Network {
    transport: &'static str,
    #[serde(rename = "type")]
    ip_type: &'static str,
    direction: &'static str,
    bytes: u64,
}

#[derive(Serialize)]
struct Observer<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    vendor: &'static str,
    product: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Honeytrap<'a> {
    schema_version: u32,
    attack_id: String,
    #[serde(rename = "virtual")]
    is_virtual: bool,
    monitor: &'a str,
    mode: &'static str,
    end_reason: EndReason,
    responses_sent: u32,
    payload: Payload,
    /// The second connection of mirror and proxy mode (absent in other modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<Relay<'a>>,
    /// For a virtual attack: the real attack it was decoded from, and the decoder.
    parent_id: Option<String>,
    decoder: Option<&'a str>,
    findings: &'a [crate::analysis::Finding],
    downloads: &'a [crate::analysis::Download],
    analysis: AnalysisInfo<'a>,
    /// Last, so that a template rendered without it (see [`Rendered::with_templates`])
    /// is completed by appending it. Always present in a finished event.
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<TranscriptInfo>,
}

#[derive(Serialize)]
struct AnalysisInfo<'a> {
    done: bool,
    runs: u32,
    failures: &'a [crate::analysis::record::Failure],
    virtual_attacks: Vec<String>,
}

#[derive(Serialize)]
struct Relay<'a> {
    kind: &'static str,
    map: Option<&'a str>,
    target: RelayTarget<'a>,
    connected: bool,
    local: Option<Address>,
    bytes_sent: u64,
    bytes_received: u64,
    received: Option<&'a crate::attack::Hashes>,
    fallback: bool,
    fallback_reason: Option<crate::attack::Fallback>,
}

#[derive(Serialize)]
struct RelayTarget<'a> {
    host: &'a str,
    ip: Option<String>,
    port: u16,
    transport: &'static str,
}

#[derive(Serialize)]
struct Address {
    ip: String,
    port: u16,
}

impl<'a> Relay<'a> {
    fn of(r: &'a crate::attack::RelayRecord) -> Relay<'a> {
        Relay {
            kind: r.kind.as_str(),
            map: r.map.as_deref(),
            target: RelayTarget {
                host: &r.target_host,
                ip: r.target_ip.map(|ip| ip.to_string()),
                port: r.target_port,
                transport: r.target_protocol.as_str(),
            },
            connected: r.connected(),
            local: r.local.map(|a| Address {
                ip: a.ip().to_string(),
                port: a.port(),
            }),
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            received: r.received.as_ref(),
            fallback: r.fallback.is_some(),
            fallback_reason: r.fallback,
        }
    }
}

#[derive(Serialize)]
struct Payload {
    length: u64,
    md5: String,
    sha256: String,
    sha512: String,
    encoding: &'static str,
    data: String,
    shown: usize,
    truncated: bool,
    read_limit_reached: bool,
}

#[derive(Serialize)]
struct TranscriptInfo {
    path: Option<String>,
    offset: Option<u64>,
    length: Option<u64>,
    chunks: usize,
    chunks_in: usize,
    chunks_out: usize,
}

impl TranscriptInfo {
    fn of(a: &Attack) -> TranscriptInfo {
        let t = &a.transcript;
        let chunks_in = t
            .chunks
            .iter()
            .filter(|c| c.direction == Direction::In)
            .count();
        let r = a.transcript_ref.as_ref();
        TranscriptInfo {
            path: r.map(|r| r.path.display().to_string()),
            offset: r.map(|r| r.offset),
            length: r.map(|r| r.length),
            chunks: t.chunks.len(),
            chunks_in,
            chunks_out: t.chunks.len() - chunks_in,
        }
    }
}

fn rfc3339(d: chrono::DateTime<chrono::Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl<'a> Event<'a> {
    /// The event of one attack, with at most `payload_max` payload bytes inline.
    pub fn of(a: &'a Attack, payload_max: u64, encoding: PayloadEncoding) -> Event<'a> {
        Event::build(a, payload_max, encoding, true)
    }

    /// The event, with or without its `honeytrap.transcript` part.
    fn build(
        a: &'a Attack,
        payload_max: u64,
        encoding: PayloadEncoding,
        with_transcript: bool,
    ) -> Event<'a> {
        let t = &a.transcript;
        // Only the part shown is copied; the digests were made when the attack was sealed.
        let shown = t.payload_prefix(payload_max.min(t.bytes_in) as usize);
        let shown = &shown[..];
        let (encoding_name, data) = match encoding {
            PayloadEncoding::Hex => ("hex", hex::encode(shown)),
            PayloadEncoding::Base64 => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(shown),
            ),
        };
        let id = a.id.to_string();
        Event {
            timestamp: rfc3339(a.start),
            ecs: Ecs {
                version: ECS_VERSION,
            },
            event: EventInfo {
                id: id.clone(),
                kind: "event",
                category: ["network", "intrusion_detection"],
                kind_type: ["connection"],
                action: "attack",
                module: "honeytrap",
                dataset: "honeytrap.attack",
                start: rfc3339(a.start),
                end: rfc3339(a.end),
                duration: (a.end - a.start)
                    .num_nanoseconds()
                    .unwrap_or(i64::MAX)
                    .max(0),
            },
            source: Endpoint {
                ip: a.remote.ip().to_string(),
                port: a.remote.port(),
                bytes: t.bytes_in,
            },
            destination: Endpoint {
                ip: a.local.ip().to_string(),
                port: a.local.port(),
                bytes: t.bytes_out,
            },
            network: Network {
                transport: a.protocol.as_str(),
                ip_type: if a.remote.is_ipv4() { "ipv4" } else { "ipv6" },
                direction: "inbound",
                bytes: t.bytes_in + t.bytes_out,
            },
            observer: Observer {
                name: &a.sensor,
                kind: "honeypot",
                vendor: "honeytrap",
                product: "honeytrap",
                version: env!("CARGO_PKG_VERSION"),
            },
            honeytrap: Honeytrap {
                schema_version: SCHEMA_VERSION,
                attack_id: id,
                is_virtual: a.analysis.is_virtual,
                monitor: &a.monitor,
                mode: a.mode.as_str(),
                end_reason: a.end_reason,
                responses_sent: a.responses_sent,
                payload: Payload {
                    length: t.bytes_in,
                    md5: a.payload_hashes.md5.clone(),
                    sha256: a.payload_hashes.sha256.clone(),
                    sha512: a.payload_hashes.sha512.clone(),
                    encoding: encoding_name,
                    data,
                    shown: shown.len(),
                    truncated: (shown.len() as u64) < t.bytes_in,
                    read_limit_reached: t.truncated,
                },
                relay: a.relay.as_deref().map(Relay::of),
                parent_id: a.analysis.parent.map(|p| p.to_string()),
                decoder: a.analysis.decoder,
                findings: &a.analysis.findings,
                downloads: &a.analysis.downloads,
                analysis: AnalysisInfo {
                    done: a.analysis.done,
                    runs: a.analysis.runs,
                    failures: &a.analysis.failures,
                    virtual_attacks: a
                        .analysis
                        .virtual_attacks
                        .iter()
                        .map(|u| u.to_string())
                        .collect(),
                },
                transcript: with_transcript.then(|| TranscriptInfo::of(a)),
            },
        }
    }
}

/// The event for one attack as a JSON value.
pub fn attack_event(a: &Attack, payload_max: u64, encoding: PayloadEncoding) -> Value {
    serde_json::to_value(Event::of(a, payload_max, encoding)).expect("event serializes")
}

/// The JSON events of one attack, each rendered once and shared by every sink that
/// asks for the same payload settings (the recorder keeps one per attack in flight).
///
/// The key is `payload_max` (capped at the payload's length: a larger cap shows the
/// same bytes) and the encoding; the JSON has no trailing newline.
///
/// An analysis worker renders the events of an analysed attack and its virtual
/// attacks ahead of time, off the capture path, as templates
/// ([`Rendered::with_templates`]): everything but the transcript part, which
/// depends on where the recorder writes the transcript and is appended when a sink
/// asks.
#[derive(Default)]
pub struct Rendered {
    slots: Mutex<Vec<Slot>>,
    /// Events rendered ahead of time without `honeytrap.transcript`.
    templates: Vec<Template>,
    /// Renderings made (for the tests).
    #[cfg(test)]
    renders: std::sync::atomic::AtomicUsize,
}

/// One rendering: its settings and the JSON (or why it failed), made once.
type Slot = (
    u64,
    PayloadEncoding,
    Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>,
);

/// An event rendered without its transcript part: the JSON ends with the closing
/// braces of `honeytrap` (the last field of the event, the transcript its last).
struct Template {
    shown: u64,
    encoding: PayloadEncoding,
    json: Vec<u8>,
}

impl Rendered {
    /// Render the events of `a` for each of `settings` (payload cap, encoding) now,
    /// all but their transcript parts; [`Rendered::json`] completes them.
    pub fn with_templates(a: &Attack, settings: &[(u64, PayloadEncoding)]) -> Rendered {
        let mut templates: Vec<Template> = Vec::new();
        for &(payload_max, encoding) in settings {
            let shown = payload_max.min(a.transcript.bytes_in);
            if templates
                .iter()
                .any(|t| t.shown == shown && t.encoding == encoding)
            {
                continue;
            }
            // A failed rendering is left to `json`, which reports it.
            if let Ok(json) = serde_json::to_vec(&Event::build(a, shown, encoding, false)) {
                if json.ends_with(b"}}") {
                    templates.push(Template {
                        shown,
                        encoding,
                        json,
                    });
                }
            }
        }
        Rendered {
            templates,
            ..Rendered::default()
        }
    }

    /// The event of `a` with at most `payload_max` payload bytes in `encoding`, as
    /// JSON: rendered by the first caller, shared with the others. `a` must be the
    /// same attack on every call.
    pub fn json(
        &self,
        a: &Attack,
        payload_max: u64,
        encoding: PayloadEncoding,
    ) -> anyhow::Result<Arc<Vec<u8>>> {
        let shown = payload_max.min(a.transcript.bytes_in);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.iter().find(|s| s.0 == shown && s.1 == encoding) {
                Some(s) => Arc::clone(&s.2),
                None => {
                    let s = Arc::new(OnceLock::new());
                    slots.push((shown, encoding, Arc::clone(&s)));
                    s
                }
            }
        };
        // Rendered outside the lock: sinks with other settings do not wait; one with
        // the same settings waits for this rendering instead of making its own.
        let r = slot.get_or_init(|| {
            #[cfg(test)]
            self.renders
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let template = self
                .templates
                .iter()
                .find(|t| t.shown == shown && t.encoding == encoding);
            match template {
                Some(t) => complete(&t.json, a),
                None => serde_json::to_vec(&Event::of(a, shown, encoding)),
            }
            .map(Arc::new)
            .map_err(|e| e.to_string())
        });
        match r {
            Ok(json) => Ok(Arc::clone(json)),
            Err(e) => Err(anyhow::anyhow!("rendering the event: {e}")),
        }
    }

    /// How many events were rendered ahead of time.
    #[cfg(test)]
    pub(crate) fn templates(&self) -> usize {
        self.templates.len()
    }

    /// How many renderings were made.
    #[cfg(test)]
    pub(crate) fn renders(&self) -> usize {
        self.renders.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A template with `a`'s transcript part appended: the same JSON as rendering the
/// whole event.
fn complete(template: &[u8], a: &Attack) -> serde_json::Result<Vec<u8>> {
    let head = &template[..template.len() - 2];
    let mut json = Vec::with_capacity(template.len() + 192);
    json.extend_from_slice(head);
    json.extend_from_slice(b",\"transcript\":");
    serde_json::to_writer(&mut json, &TranscriptInfo::of(a))?;
    json.extend_from_slice(b"}}");
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Captured;

    fn attack(payload: &[u8]) -> Attack {
        Captured::test_session(payload).seal()
    }

    #[test]
    fn an_event_is_rendered_once_per_setting_and_shared() {
        let a = attack(&[b'x'; 100]);
        let r = Rendered::default();
        let one = r.json(&a, 4096, PayloadEncoding::Base64).unwrap();
        let two = r.json(&a, 4096, PayloadEncoding::Base64).unwrap();
        assert!(Arc::ptr_eq(&one, &two), "the same rendering is shared");
        assert_eq!(
            *one,
            serde_json::to_vec(&Event::of(&a, 4096, PayloadEncoding::Base64)).unwrap(),
            "the same JSON as rendering it directly"
        );
        // A cap above the payload's length shows the same bytes: shared too.
        let big = r.json(&a, 1 << 20, PayloadEncoding::Base64).unwrap();
        assert!(Arc::ptr_eq(&one, &big));
        // Other settings: another rendering, the right one.
        let hex = r.json(&a, 4096, PayloadEncoding::Hex).unwrap();
        assert!(!Arc::ptr_eq(&one, &hex));
        assert_eq!(
            *hex,
            serde_json::to_vec(&Event::of(&a, 4096, PayloadEncoding::Hex)).unwrap()
        );
        let short = r.json(&a, 10, PayloadEncoding::Base64).unwrap();
        assert_eq!(
            *short,
            serde_json::to_vec(&Event::of(&a, 10, PayloadEncoding::Base64)).unwrap()
        );
        assert_eq!(r.slots.lock().unwrap().len(), 3);
        assert_eq!(r.renders(), 3);
    }

    #[test]
    fn a_template_completed_later_is_the_event_rendered_whole() {
        let settings = [
            (4096, PayloadEncoding::Base64),
            (10, PayloadEncoding::Hex),
            // The same rendering as the first (the cap is above the payload's length).
            (1 << 20, PayloadEncoding::Base64),
        ];
        let mut a = attack(b"GET /x?\"quoted\" HTTP/1.0\r\n\r\n");
        a.analysis
            .findings
            .push(crate::analysis::Finding::new("test", "kind", "detail"));
        let r = Rendered::with_templates(&a, &settings);
        assert_eq!(r.templates.len(), 2, "one template per distinct setting");
        // The recorder writes the transcript after the templates were made.
        a.transcript_ref = Some(crate::sink::transcripts::TranscriptRef {
            path: "/data/transcripts/2026-11-27/seg-1.jsonl".into(),
            offset: 1234,
            length: 567,
        });
        for (max, enc) in settings {
            let got = r.json(&a, max, enc).unwrap();
            let whole = serde_json::to_vec(&Event::of(&a, max, enc)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&whole)
            );
            let v: Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(v["honeytrap"]["transcript"]["offset"], 1234);
        }
        // Settings without a template are rendered whole.
        let other = r.json(&a, 3, PayloadEncoding::Base64).unwrap();
        assert_eq!(
            *other,
            serde_json::to_vec(&Event::of(&a, 3, PayloadEncoding::Base64)).unwrap()
        );
        // Without a transcript (transcripts off) too.
        let b = attack(b"no transcript");
        let r = Rendered::with_templates(&b, &settings[..1]);
        assert_eq!(
            *r.json(&b, 4096, PayloadEncoding::Base64).unwrap(),
            serde_json::to_vec(&Event::of(&b, 4096, PayloadEncoding::Base64)).unwrap()
        );
    }

    #[test]
    fn threads_asking_at_once_share_one_rendering() {
        let a = attack(b"payload");
        let r = Rendered::default();
        let got: Vec<Arc<Vec<u8>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| r.json(&a, 4096, PayloadEncoding::Base64).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|g| Arc::ptr_eq(g, &got[0])));
        assert_eq!(r.renders(), 1);
    }
}
