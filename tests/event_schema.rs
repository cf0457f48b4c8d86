//! The attack event and the transcript document against their published schemas
//! (`docs/event.schema.json`, `docs/transcript.schema.json`), for every shape of
//! attack the code can produce, plus the values that matter and proof that the
//! schemas are strict.

#[path = "support/schema.rs"]
mod schema;

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use honeytrap::attack::{Attack, Captured, EndReason, Fallback, Mode, RelayRecord, Transcript};
use honeytrap::config::{Config, PayloadEncoding, TranscriptLayout};
use honeytrap::event::{attack_event, ECS_VERSION, SCHEMA_VERSION};
use honeytrap::proto::Protocol;
use honeytrap::sink::transcripts::{
    read_transcript, transcript_json, TranscriptRef, TranscriptStore,
};
use honeytrap::sink::Sink as _;
use schema::{validate_event, validate_transcript};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The HTTP request of the TCP example; its digests are computed independently.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n";
const REQUEST_MD5: &str = "97d309cea5f4f1b4aa7f30cc7abd2f2a";
const REQUEST_SHA256: &str = "1c7092562da442e6ba736f7ba19aa8adb849000bda69810547552b0d91f77e0f";
const REQUEST_SHA512: &str = "a55ee0234b727de5eadea5225724d545ebd3baf72e8784c95d601bd8947c9a64\
                              1ca73375a695a4152c9332e835e1bd350a8f20f09f1c4dd561142f2ec8972725";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn start() -> DateTime<Utc> {
    Utc::now() - Duration::seconds(5)
}

fn captured(protocol: Protocol, local: &str, remote: &str, transcript: Transcript) -> Captured {
    let start = start();
    Captured {
        start,
        end: start + Duration::milliseconds(1500),
        sensor: "sensor-1".into(),
        monitor: "listen".into(),
        mode: Mode::Normal,
        protocol,
        local: addr(local),
        remote: addr(remote),
        transcript,
        responses_sent: 0,
        end_reason: EndReason::Closed,
        relay: None,
    }
}

/// TCP over IPv4 (the attacker seen through a dual-stack socket as an IPv4-mapped
/// IPv6 address): the request in two reads with the canned response in between.
fn tcp_http() -> Attack {
    let mut t = Transcript::default();
    let split = REQUEST.len() - 20;
    assert!(t.push_in(&REQUEST[..split], 1 << 20));
    t.push_out(RESPONSE);
    assert!(t.push_in(&REQUEST[split..], 1 << 20));
    let mut c = captured(
        Protocol::Tcp,
        "[::ffff:192.0.2.10]:8080",
        "[::ffff:203.0.113.7]:51234",
        t,
    );
    c.responses_sent = 1;
    c.seal()
}

/// UDP over IPv6: one SIP datagram, one reply, then silence.
fn udp_sip() -> Attack {
    let mut t = Transcript::default();
    assert!(t.push_in(b"OPTIONS sip:100@192.0.2.10 SIP/2.0\r\n\r\n", 1 << 20));
    t.push_out(b"SIP/2.0 200 OK\r\n\r\n");
    let mut c = captured(
        Protocol::Udp,
        "[2001:db8::1]:5060",
        "[2001:db8::beef]:5070",
        t,
    );
    c.responses_sent = 1;
    c.end_reason = EndReason::Idle;
    c.seal()
}

/// A connection that never said anything and got no answer.
fn tcp_silent() -> Attack {
    let mut c = captured(
        Protocol::Tcp,
        "192.0.2.10:23",
        "198.51.100.2:40000",
        Transcript::default(),
    );
    c.end_reason = EndReason::Idle;
    c.seal()
}

/// `len` bytes counting 0, 1, ... 255, 0, ...
fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

fn event(a: &Attack, payload_max: u64, encoding: PayloadEncoding) -> Value {
    let v = attack_event(a, payload_max, encoding);
    if let Err(e) = validate_event(&v) {
        panic!("event does not match docs/event.schema.json:\n{e}\n{v:#}");
    }
    check_event_invariants(a, &v);
    v
}

fn transcript(a: &Attack) -> Value {
    let v = transcript_json(a);
    if let Err(e) = validate_transcript(&v) {
        panic!("transcript does not match docs/transcript.schema.json:\n{e}\n{v:#}");
    }
    check_transcript_invariants(a, &v);
    v
}

fn decode(encoding: &str, data: &str) -> Vec<u8> {
    match encoding {
        "hex" => hex::decode(data).unwrap(),
        "base64" => B64.decode(data).unwrap(),
        other => panic!("unknown encoding {other}"),
    }
}

fn parse_ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// What the schema cannot express: fields that must agree with each other and with
/// the attack.
fn check_event_invariants(a: &Attack, v: &Value) {
    let h = &v["honeytrap"];
    let p = &h["payload"];
    let payload = a.transcript.payload();
    assert_eq!(v["event"]["id"], a.id.to_string());
    assert_eq!(h["attack_id"], v["event"]["id"]);
    assert_eq!(v["@timestamp"], v["event"]["start"]);
    assert_eq!(parse_ts(&v["event"]["start"]), trunc_us(a.start));
    assert_eq!(parse_ts(&v["event"]["end"]), trunc_us(a.end));
    let ns = (a.end - a.start).num_nanoseconds().unwrap();
    assert_eq!(u(&v["event"]["duration"]), ns as u64);
    assert_eq!(v["ecs"]["version"], ECS_VERSION);
    assert_eq!(u(&h["schema_version"]), u64::from(SCHEMA_VERSION));
    assert_eq!(v["observer"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["observer"]["name"], a.sensor);
    assert_eq!(h["monitor"], a.monitor);
    assert_eq!(h["mode"], a.mode.as_str());
    assert_eq!(h["end_reason"], serde_json::to_value(a.end_reason).unwrap());
    assert_eq!(u(&h["responses_sent"]), u64::from(a.responses_sent));
    assert_eq!(v["network"]["transport"], a.protocol.as_str());
    assert_eq!(v["source"]["ip"], a.remote.ip().to_string());
    assert_eq!(u(&v["source"]["port"]), u64::from(a.remote.port()));
    assert_eq!(v["destination"]["ip"], a.local.ip().to_string());
    assert_eq!(u(&v["destination"]["port"]), u64::from(a.local.port()));
    let net_type = if a.remote.is_ipv4() { "ipv4" } else { "ipv6" };
    assert_eq!(v["network"]["type"], net_type);
    // Bytes.
    let (src, dst) = (u(&v["source"]["bytes"]), u(&v["destination"]["bytes"]));
    assert_eq!(src, payload.len() as u64);
    assert_eq!(dst, a.transcript.bytes_out);
    assert_eq!(u(&v["network"]["bytes"]), src + dst);
    assert_eq!(u(&p["length"]), src);
    // Payload: data is the first `shown` bytes, digests are of all of it.
    assert_eq!(p["md5"], a.payload_hashes.md5);
    assert_eq!(p["sha256"], a.payload_hashes.sha256);
    assert_eq!(p["sha512"], a.payload_hashes.sha512);
    let shown = u(&p["shown"]) as usize;
    assert!(shown <= payload.len());
    let data = decode(p["encoding"].as_str().unwrap(), p["data"].as_str().unwrap());
    assert_eq!(data, payload[..shown]);
    assert_eq!(p["truncated"], shown < payload.len());
    assert_eq!(p["read_limit_reached"], a.transcript.truncated);
    // Transcript summary.
    let tr = &h["transcript"];
    assert_eq!(u(&tr["chunks"]), a.transcript.chunks.len() as u64);
    assert_eq!(u(&tr["chunks_in"]) + u(&tr["chunks_out"]), u(&tr["chunks"]));
    match &a.transcript_ref {
        None => {
            assert!(tr["path"].is_null() && tr["offset"].is_null() && tr["length"].is_null())
        }
        Some(r) => {
            assert_eq!(tr["path"], r.path.display().to_string());
            assert_eq!(tr["offset"], r.offset);
            assert_eq!(tr["length"], r.length);
        }
    }
}

fn check_transcript_invariants(a: &Attack, v: &Value) {
    assert_eq!(v["attack_id"], a.id.to_string());
    assert_eq!(v["sensor"], a.sensor);
    assert_eq!(v["protocol"], a.protocol.as_str());
    assert_eq!(v["source"], a.remote.to_string());
    assert_eq!(v["destination"], a.local.to_string());
    assert_eq!(parse_ts(&v["start"]), trunc_us(a.start));
    assert_eq!(parse_ts(&v["end"]), trunc_us(a.end));
    assert_eq!(v["read_limit_reached"], a.transcript.truncated);
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), a.transcript.chunks.len());
    let (mut bytes_in, mut bytes_out, mut payload) = (0u64, 0u64, Vec::new());
    let mut last = None;
    for (c, orig) in chunks.iter().zip(&a.transcript.chunks) {
        let data = B64.decode(c["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, orig.data);
        assert_eq!(u(&c["length"]), data.len() as u64);
        let at = parse_ts(&c["time"]);
        if let Some(l) = last {
            assert!(l <= at, "chunks out of order");
        }
        last = Some(at);
        match c["direction"].as_str().unwrap() {
            "in" => {
                bytes_in += data.len() as u64;
                payload.extend_from_slice(&data);
            }
            "out" => bytes_out += data.len() as u64,
            d => panic!("direction {d}"),
        }
    }
    assert_eq!(bytes_in, a.transcript.bytes_in);
    assert_eq!(bytes_out, a.transcript.bytes_out);
    assert_eq!(payload, a.transcript.payload());
}

/// The precision of the timestamps in the documents.
fn trunc_us(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_micros();
    DateTime::from_timestamp_micros(us).unwrap()
}

#[test]
fn schemas_are_valid_draft7() {
    for name in ["event.schema.json", "transcript.schema.json"] {
        let s = schema::load_schema(name);
        assert_eq!(
            s["$schema"], "http://json-schema.org/draft-07/schema#",
            "{name}"
        );
        schema::compile(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn tcp_ipv4_with_payload_and_response() {
    let a = tcp_http();
    for encoding in [PayloadEncoding::Base64, PayloadEncoding::Hex] {
        let v = event(&a, 4096, encoding);
        let p = &v["honeytrap"]["payload"];
        // An IPv4-mapped IPv6 address is shown as plain IPv4, on both sides.
        assert_eq!(v["source"]["ip"], "203.0.113.7");
        assert_eq!(v["source"]["port"], 51234);
        assert_eq!(v["destination"]["ip"], "192.0.2.10");
        assert_eq!(v["destination"]["port"], 8080);
        assert_eq!(v["network"]["type"], "ipv4");
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["source"]["bytes"], REQUEST.len());
        assert_eq!(v["destination"]["bytes"], RESPONSE.len());
        assert_eq!(p["md5"], REQUEST_MD5);
        assert_eq!(p["sha256"], REQUEST_SHA256);
        assert_eq!(p["sha512"], REQUEST_SHA512);
        assert_eq!(p["length"], REQUEST.len());
        assert_eq!(p["shown"], REQUEST.len());
        assert_eq!(p["truncated"], false);
        assert_eq!(p["read_limit_reached"], false);
        assert_eq!(
            decode(p["encoding"].as_str().unwrap(), p["data"].as_str().unwrap()),
            REQUEST
        );
        assert_eq!(v["event"]["duration"], 1_500_000_000u64);
        assert_eq!(v["honeytrap"]["responses_sent"], 1);
        assert_eq!(v["honeytrap"]["end_reason"], "closed");
        assert_eq!(v["honeytrap"]["mode"], "normal");
        let tr = &v["honeytrap"]["transcript"];
        assert_eq!(tr["chunks"], 3);
        assert_eq!(tr["chunks_in"], 2);
        assert_eq!(tr["chunks_out"], 1);
        assert!(tr["path"].is_null());
    }
    assert_eq!(
        event(&a, 4096, PayloadEncoding::Hex)["honeytrap"]["payload"]["encoding"],
        "hex"
    );
    assert_eq!(
        event(&a, 4096, PayloadEncoding::Base64)["honeytrap"]["payload"]["data"],
        B64.encode(REQUEST)
    );
    let t = transcript(&a);
    assert_eq!(t["source"], "203.0.113.7:51234");
    assert_eq!(t["destination"], "192.0.2.10:8080");
    let dirs: Vec<_> = t["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["direction"].clone())
        .collect();
    assert_eq!(dirs, [json!("in"), json!("out"), json!("in")]);
}

#[test]
fn udp_ipv6() {
    let a = udp_sip();
    let v = event(&a, 4096, PayloadEncoding::Base64);
    assert_eq!(v["network"]["transport"], "udp");
    assert_eq!(v["network"]["type"], "ipv6");
    assert_eq!(v["source"]["ip"], "2001:db8::beef");
    assert_eq!(v["source"]["port"], 5070);
    assert_eq!(v["destination"]["ip"], "2001:db8::1");
    assert_eq!(v["honeytrap"]["end_reason"], "idle");
    let t = transcript(&a);
    assert_eq!(t["source"], "[2001:db8::beef]:5070");
    assert_eq!(t["destination"], "[2001:db8::1]:5060");
    assert_eq!(t["protocol"], "udp");
}

#[test]
fn empty_payload() {
    let a = tcp_silent();
    for encoding in [PayloadEncoding::Hex, PayloadEncoding::Base64] {
        let v = event(&a, 4096, encoding);
        let p = &v["honeytrap"]["payload"];
        assert_eq!(p["data"], "");
        assert_eq!(
            (p["length"].clone(), p["shown"].clone()),
            (json!(0), json!(0))
        );
        assert_eq!(p["truncated"], false);
        assert_eq!(p["md5"], EMPTY_MD5);
        assert_eq!(p["sha256"], EMPTY_SHA256);
        assert_eq!(v["network"]["bytes"], 0);
        assert_eq!(v["honeytrap"]["transcript"]["chunks"], 0);
    }
    let t = transcript(&a);
    assert_eq!(t["chunks"], json!([]));

    // An empty UDP datagram is an empty incoming chunk.
    let mut tr = Transcript::default();
    assert!(tr.push_in(b"", 100));
    let a = captured(Protocol::Udp, "192.0.2.10:53", "198.51.100.9:53", tr).seal();
    let v = event(&a, 4096, PayloadEncoding::Base64);
    assert_eq!(v["honeytrap"]["transcript"]["chunks_in"], 1);
    assert_eq!(v["honeytrap"]["payload"]["length"], 0);
    let t = transcript(&a);
    assert_eq!(t["chunks"][0]["length"], 0);
    assert_eq!(t["chunks"][0]["data"], "");
}

#[test]
fn payload_longer_than_payload_max() {
    let payload = counting(1000);
    let mut t = Transcript::default();
    assert!(t.push_in(&payload, 1 << 20));
    let a = captured(Protocol::Tcp, "192.0.2.10:445", "198.51.100.3:1025", t).seal();
    for (encoding, name) in [
        (PayloadEncoding::Hex, "hex"),
        (PayloadEncoding::Base64, "base64"),
    ] {
        for max in [0u64, 1, 2, 3, 100, 999] {
            let v = event(&a, max, encoding);
            let p = &v["honeytrap"]["payload"];
            assert_eq!(p["encoding"], name);
            assert_eq!(p["length"], 1000);
            assert_eq!(p["shown"], max);
            assert_eq!(p["truncated"], true);
            assert_eq!(p["read_limit_reached"], false);
            assert_eq!(
                decode(name, p["data"].as_str().unwrap()),
                payload[..max as usize]
            );
        }
        for max in [1000u64, 1001, 1 << 20] {
            let p = event(&a, max, encoding)["honeytrap"]["payload"].clone();
            assert_eq!(p["shown"], 1000);
            assert_eq!(p["truncated"], false);
            assert_eq!(decode(name, p["data"].as_str().unwrap()), payload);
        }
    }
    let hex = event(&a, 4, PayloadEncoding::Hex);
    assert_eq!(hex["honeytrap"]["payload"]["data"], "00010203");
    let b64 = event(&a, 4, PayloadEncoding::Base64);
    assert_eq!(b64["honeytrap"]["payload"]["data"], "AAECAw==");
    // The transcript keeps everything.
    let t = transcript(&a);
    assert_eq!(
        B64.decode(t["chunks"][0]["data"].as_str().unwrap())
            .unwrap(),
        payload
    );
}

#[test]
fn read_limit_reached() {
    let mut t = Transcript::default();
    assert!(t.push_in(b"0123456", 10));
    t.push_out(b"220 ready\r\n");
    assert!(!t.push_in(b"789abcdef", 10));
    let mut c = captured(Protocol::Tcp, "192.0.2.10:21", "198.51.100.4:33333", t);
    c.end_reason = EndReason::ReadLimit;
    c.responses_sent = 1;
    let a = c.seal();
    let v = event(&a, 4096, PayloadEncoding::Hex);
    let p = &v["honeytrap"]["payload"];
    assert_eq!(v["honeytrap"]["end_reason"], "read_limit");
    assert_eq!(p["read_limit_reached"], true);
    assert_eq!(p["truncated"], false);
    assert_eq!(p["length"], 10);
    assert_eq!(v["source"]["bytes"], 10);
    assert_eq!(decode("hex", p["data"].as_str().unwrap()), b"0123456789");
    let t = transcript(&a);
    assert_eq!(t["read_limit_reached"], true);
    assert_eq!(t["chunks"][2]["length"], 3);
}

#[test]
fn every_mode_and_end_reason() {
    let modes = [Mode::Normal, Mode::Ignore, Mode::Mirror, Mode::Proxy];
    let reasons = [
        EndReason::Closed,
        EndReason::Idle,
        EndReason::ReadLimit,
        EndReason::SessionTimeout,
        EndReason::Shutdown,
        EndReason::Error,
    ];
    for mode in modes {
        for end_reason in reasons {
            let mut c = tcp_http_captured();
            c.mode = mode;
            c.end_reason = end_reason;
            let a = c.seal();
            let v = event(&a, 16, PayloadEncoding::Base64);
            assert_eq!(v["honeytrap"]["mode"], mode.as_str());
            transcript(&a);
        }
    }
}

fn tcp_http_captured() -> Captured {
    let mut t = Transcript::default();
    t.push_in(REQUEST, 1 << 20);
    captured(Protocol::Tcp, "0.0.0.0:1", "[fe80::1%2]:65535", t)
}

#[test]
fn edge_addresses_and_times() {
    // Source port 0 is possible for UDP; zero duration; link-local IPv6 with a scope.
    let mut c = tcp_http_captured();
    c.protocol = Protocol::Udp;
    c.remote = addr("[fe80::1%2]:0");
    c.local = addr("[::]:65535");
    c.end = c.start;
    let a = c.seal();
    let v = event(&a, 4096, PayloadEncoding::Hex);
    assert_eq!(v["source"]["ip"], "fe80::1");
    assert_eq!(v["source"]["port"], 0);
    assert_eq!(v["event"]["duration"], 0);
    let t = transcript(&a);
    assert_eq!(t["source"], "[fe80::1%2]:0");
    // A UDP socket bound to the wildcard that got no destination address from the
    // kernel reports the wildcard itself.
    for wildcard in ["0.0.0.0:5060", "[::]:5060"] {
        let mut c = tcp_http_captured();
        c.protocol = Protocol::Udp;
        c.local = addr(wildcard);
        let a = c.seal();
        let v = event(&a, 4096, PayloadEncoding::Base64);
        assert_eq!(v["destination"]["ip"], a.local.ip().to_string());
        transcript(&a);
    }
}

#[test]
fn transcript_ref_none_and_some() {
    let mut a = udp_sip();
    let v = event(&a, 4096, PayloadEncoding::Base64);
    assert_eq!(v["honeytrap"]["transcript"]["path"], Value::Null);
    let path = PathBuf::from(
        "honeytrap-data/transcripts/2025-01-31/0190b7a3-0000-7000-8000-000000000000.jsonl",
    );
    a.transcript_ref = Some(TranscriptRef {
        path: path.clone(),
        offset: 4096,
        length: 777,
    });
    let v = event(&a, 4096, PayloadEncoding::Base64);
    let t = &v["honeytrap"]["transcript"];
    assert_eq!(t["path"], path.display().to_string());
    assert_eq!(
        (t["offset"].as_u64(), t["length"].as_u64()),
        (Some(4096), Some(777))
    );
}

/// Through the real sinks, in both layouts: the files land where docs/events.md
/// says, the event's path/offset/length find the document, and what is in them
/// matches the schemas.
#[test]
fn files_written_by_the_sinks() {
    for layout in [TranscriptLayout::Segments, TranscriptLayout::PerAttack] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        config.output.transcripts.layout = layout;
        let stats = Arc::new(honeytrap::stats::Stats::default());
        let throttle = Arc::new(honeytrap::stats::Throttle::default());
        let mut store = TranscriptStore::open(&config, Arc::clone(&stats), throttle).unwrap();
        let mut jsonl = honeytrap::sink::jsonl::JsonlSink::open(&config).unwrap();
        let mut attacks = vec![tcp_http(), udp_sip(), tcp_silent()];
        let mut segment = None;
        for a in &mut attacks {
            let r = store.write(a).unwrap();
            let day = a.end.format("%Y-%m-%d").to_string();
            assert_eq!(
                r.path.parent().unwrap(),
                dir.path().join("transcripts").join(&day)
            );
            match layout {
                TranscriptLayout::PerAttack => {
                    assert_eq!(
                        r.path.file_name().unwrap().to_str().unwrap(),
                        format!("{}.json", a.id)
                    );
                    assert_eq!(r.offset, 0);
                    assert_eq!(r.length, std::fs::metadata(&r.path).unwrap().len());
                }
                TranscriptLayout::Segments => {
                    // One segment holds them all, one document per line.
                    assert!(r.path.extension().unwrap() == "jsonl");
                    if let Some((p, _)) = &segment {
                        if *p == r.path.clone() {
                            let (_, end): &(PathBuf, u64) = segment.as_ref().unwrap();
                            assert_eq!(r.offset, *end, "appended right after the previous line");
                        }
                    }
                    segment = Some((r.path.clone(), r.offset + r.length + 1));
                }
            }
            let doc = read_transcript(&r).unwrap();
            validate_transcript(&doc).unwrap();
            assert_eq!(doc, transcript_json(a));
            a.transcript_ref = Some(r);
            jsonl
                .write(a, &honeytrap::event::Rendered::default())
                .unwrap();
        }
        if layout == TranscriptLayout::Segments {
            let (path, _) = segment.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), attacks.len());
            for line in text.lines() {
                validate_transcript(&serde_json::from_str(line).unwrap()).unwrap();
            }
        }
        jsonl.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let events = schema::validate_events_jsonl(&text).unwrap();
        assert_eq!(events.len(), attacks.len());
        for (v, a) in events.iter().zip(&attacks) {
            check_event_invariants(a, v);
            // The defaults: base64, 4096 bytes.
            assert_eq!(v["honeytrap"]["payload"]["encoding"], "base64");
            assert_eq!(*v, attack_event(a, 4096, PayloadEncoding::Base64));
        }
    }
}

/// Apply `f` to a valid event and expect the schema to refuse the result.
fn refused(what: &str, f: impl FnOnce(&mut Value)) {
    let mut v = attack_event(&tcp_http(), 4096, PayloadEncoding::Base64);
    validate_event(&v).unwrap();
    f(&mut v);
    match validate_event(&v) {
        Ok(()) => panic!("schema accepted an event with {what}:\n{v:#}"),
        Err(e) => assert!(!e.is_empty()),
    }
}

#[test]
fn event_schema_is_strict() {
    refused("an unknown top-level field", |v| v["extra"] = json!(1));
    refused("an unknown ECS field", |v| {
        v["source"]["domain"] = json!("example.com")
    });
    refused("an unknown honeytrap field", |v| {
        v["honeytrap"]["payload"]["entropy"] = json!(1.5)
    });
    refused("an unknown transcript field", |v| {
        v["honeytrap"]["transcript"]["size"] = json!(1)
    });
    refused("a missing field", |v| {
        v["honeytrap"]["payload"]
            .as_object_mut()
            .unwrap()
            .remove("md5");
    });
    refused("a missing top-level object", |v| {
        v.as_object_mut().unwrap().remove("observer");
    });
    refused("a port as a string", |v| {
        v["source"]["port"] = json!("51234")
    });
    refused("a source port above 65535", |v| {
        v["source"]["port"] = json!(65536)
    });
    refused("destination port 0", |v| {
        v["destination"]["port"] = json!(0)
    });
    refused("a negative byte count", |v| {
        v["source"]["bytes"] = json!(-1)
    });
    refused("a fractional duration", |v| {
        v["event"]["duration"] = json!(1.5)
    });
    refused("an unknown transport", |v| {
        v["network"]["transport"] = json!("sctp")
    });
    refused("an unknown network type", |v| {
        v["network"]["type"] = json!("ipv5")
    });
    refused("an unknown mode", |v| {
        v["honeytrap"]["mode"] = json!("proxy2")
    });
    refused("an unknown end reason", |v| {
        v["honeytrap"]["end_reason"] = json!("timeout")
    });
    refused("an unknown encoding", |v| {
        v["honeytrap"]["payload"]["encoding"] = json!("raw")
    });
    refused("another schema version", |v| {
        v["honeytrap"]["schema_version"] = json!(2)
    });
    refused("a short md5", |v| {
        v["honeytrap"]["payload"]["md5"] = json!("abc")
    });
    refused("an upper-case sha256", |v| {
        let s = v["honeytrap"]["payload"]["sha256"]
            .as_str()
            .unwrap()
            .to_uppercase();
        v["honeytrap"]["payload"]["sha256"] = json!(s);
    });
    refused("a sha512 of sha256 length", |v| {
        v["honeytrap"]["payload"]["sha512"] = json!(REQUEST_SHA256)
    });
    refused("a timestamp with an offset", |v| {
        v["@timestamp"] = json!("2025-01-31T12:00:00.000000+00:00")
    });
    refused("a timestamp without fraction", |v| {
        v["event"]["end"] = json!("2025-01-31T12:00:00Z")
    });
    refused("an impossible date", |v| {
        v["event"]["start"] = json!("2025-02-30T12:00:00.000000Z")
    });
    refused("a non-UUID id", |v| v["event"]["id"] = json!("not-a-uuid"));
    refused("a UUIDv4 id", |v| {
        v["honeytrap"]["attack_id"] = json!("0b7e4a3c-1f2d-4c5e-8a9b-0c1d2e3f4a5b")
    });
    refused("a bad IPv4 address", |v| {
        v["source"]["ip"] = json!("203.0.113.256")
    });
    refused("an IP address with a port", |v| {
        v["source"]["ip"] = json!("203.0.113.7:51234")
    });
    refused("an IPv4 address with leading zeros", |v| {
        v["source"]["ip"] = json!("203.000.113.7")
    });
    refused("an IPv4-mapped IPv6 address", |v| {
        v["source"]["ip"] = json!("::ffff:203.0.113.7")
    });
    refused("a host name as address", |v| {
        v["destination"]["ip"] = json!("example.com")
    });
    refused("a boolean as string", |v| {
        v["honeytrap"]["payload"]["truncated"] = json!("false")
    });
    refused("base64 data that is not base64", |v| {
        v["honeytrap"]["payload"]["data"] = json!("R0VU*")
    });
    refused("odd-length hex data", |v| {
        v["honeytrap"]["payload"]["encoding"] = json!("hex");
        v["honeytrap"]["payload"]["data"] = json!("abc");
    });
    refused("base64 data labelled hex", |v| {
        v["honeytrap"]["payload"]["encoding"] = json!("hex")
    });
    refused("a transcript path as a number", |v| {
        v["honeytrap"]["transcript"]["path"] = json!(1)
    });
    refused("an empty sensor name", |v| {
        v["observer"]["name"] = json!("")
    });
    refused("a single category", |v| {
        v["event"]["category"] = json!(["network"])
    });
    refused("another ECS version", |v| {
        v["ecs"]["version"] = json!("1.12.0")
    });
    refused("an event that is an array", |v| *v = json!([]));
}

#[test]
fn transcript_schema_is_strict() {
    let refused = |what: &str, f: &dyn Fn(&mut Value)| {
        let mut v = transcript_json(&tcp_http());
        validate_transcript(&v).unwrap();
        f(&mut v);
        assert!(
            validate_transcript(&v).is_err(),
            "schema accepted a transcript with {what}:\n{v:#}"
        );
    };
    refused("an unknown field", &|v| v["extra"] = json!(true));
    refused("an unknown chunk field", &|v| {
        v["chunks"][0]["port"] = json!(1)
    });
    refused("a missing chunk field", &|v| {
        v["chunks"][1].as_object_mut().unwrap().remove("time");
    });
    refused("a missing field", &|v| {
        v.as_object_mut().unwrap().remove("read_limit_reached");
    });
    refused("an unknown direction", &|v| {
        v["chunks"][0]["direction"] = json!("both")
    });
    refused("chunk data that is not base64", &|v| {
        v["chunks"][0]["data"] = json!("??")
    });
    refused("a negative length", &|v| {
        v["chunks"][0]["length"] = json!(-1)
    });
    refused("another encoding", &|v| v["encoding"] = json!("hex"));
    refused("a source without port", &|v| {
        v["source"] = json!("203.0.113.7")
    });
    refused("a mapped source", &|v| {
        v["source"] = json!("[::ffff:203.0.113.7]:1")
    });
    refused("an unknown protocol", &|v| v["protocol"] = json!("icmp"));
    refused("a bad timestamp", &|v| {
        v["chunks"][0]["time"] = json!("yesterday")
    });
    refused("a non-UUID id", &|v| v["attack_id"] = json!(42));
    refused("chunks as an object", &|v| v["chunks"] = json!({}));
}

/// Every leaf field of both schemas has a row in the matching table of
/// docs/events.md, so extending a schema without documenting the field fails here.
#[test]
fn every_field_is_documented() {
    fn leaves(prefix: &str, s: &Value, out: &mut Vec<String>) {
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, sub, out);
            }
        } else if let Some(items) = s.get("items").filter(|i| i.get("properties").is_some()) {
            leaves(&format!("{prefix}[]"), items, out);
        } else {
            out.push(prefix.to_string());
        }
    }
    let md = std::fs::read_to_string(schema::docs_path("events.md")).unwrap();
    let section = |from: &str, to: &str| -> String {
        let a = md
            .find(from)
            .unwrap_or_else(|| panic!("no `{from}` in docs/events.md"));
        let b = a + md[a..]
            .find(to)
            .unwrap_or_else(|| panic!("no `{to}` after `{from}`"));
        md[a..b].to_string()
    };
    for (name, from, to) in [
        ("event.schema.json", "## Event fields", "## Payload data"),
        (
            "transcript.schema.json",
            "### Transcript fields",
            "### Reading a transcript",
        ),
    ] {
        let table = section(from, to);
        let mut paths = Vec::new();
        leaves("", &schema::load_schema(name), &mut paths);
        assert!(paths.len() > 10, "{name}: {paths:?}");
        let rows = table.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, paths.len(), "{from}: table rows vs. fields of {name}");
        for p in paths {
            let row = format!("| `{p}` |");
            assert!(
                table.contains(&row),
                "docs/events.md `{from}` has no row {row}"
            );
        }
    }
}

/// The examples in docs/events.md are valid: the first ```json block after
/// "## Example event" and after "## Example transcript".
#[test]
fn documented_examples_are_valid() {
    let md = std::fs::read_to_string(schema::docs_path("events.md")).unwrap();
    let block = |heading: &str| -> Value {
        let at = md
            .find(heading)
            .unwrap_or_else(|| panic!("no `{heading}` in docs/events.md"));
        let rest = &md[at..];
        let open = rest.find("```json\n").expect("json block") + "```json\n".len();
        let close = rest[open..].find("\n```").expect("end of block");
        serde_json::from_str(&rest[open..open + close])
            .unwrap_or_else(|e| panic!("example under {heading}: {e}"))
    };
    let ev = block("## Example event");
    validate_event(&ev).unwrap_or_else(|e| panic!("docs example event:\n{e}"));
    let tr = block("## Example transcript");
    validate_transcript(&tr).unwrap_or_else(|e| panic!("docs example transcript:\n{e}"));
    assert_eq!(tr["attack_id"], ev["event"]["id"]);
}

/// A proxy session that relayed (IPv6 target, UDP target of a TCP session) and a
/// mirror session that fell back: both match the schema, with the values the
/// record holds.
#[test]
fn relay_connected_and_fallback() {
    let mut t = Transcript::default();
    assert!(t.push_in(REQUEST, 1 << 20));
    t.push_out(RESPONSE);
    let mut c = captured(Protocol::Tcp, "192.0.2.10:80", "198.51.100.2:40000", t);
    c.mode = Mode::Proxy;
    c.relay = Some(Box::new(RelayRecord {
        kind: Mode::Proxy,
        map: Some("web".into()),
        target_host: "web.example".into(),
        target_ip: Some("2001:db8::80".parse().unwrap()),
        target_port: 8080,
        target_protocol: Protocol::Udp,
        local: Some(addr("[2001:db8::1]:41000")),
        bytes_sent: REQUEST.len() as u64,
        bytes_received: RESPONSE.len() as u64,
        received: None,
        fallback: None,
    }));
    let a = c.seal();
    let v = event(&a, 4096, PayloadEncoding::Base64);
    let r = &v["honeytrap"]["relay"];
    assert_eq!(v["honeytrap"]["mode"], "proxy");
    assert_eq!(r["kind"], "proxy");
    assert_eq!(r["map"], "web");
    assert_eq!(
        r["target"],
        json!({"host": "web.example", "ip": "2001:db8::80", "port": 8080, "transport": "udp"})
    );
    assert_eq!(r["connected"], true);
    assert_eq!(r["local"], json!({"ip": "2001:db8::1", "port": 41000}));
    assert_eq!(r["bytes_sent"], REQUEST.len());
    assert_eq!(r["bytes_received"], RESPONSE.len());
    // Sealing hashes what the target sent (the outgoing side of the transcript).
    let sha = r["received"]["sha256"].as_str().unwrap();
    assert_eq!(sha, honeytrap::attack::Hashes::of(RESPONSE).sha256);
    assert_eq!(r["fallback"], false);
    assert_eq!(r["fallback_reason"], Value::Null);

    let mut m = captured(
        Protocol::Tcp,
        "192.0.2.10:445",
        "10.1.2.3:40000",
        Transcript::default(),
    );
    m.mode = Mode::Mirror;
    m.responses_sent = 1;
    m.relay = Some(Box::new(RelayRecord {
        kind: Mode::Mirror,
        map: None,
        target_host: "10.1.2.3".into(),
        target_ip: None,
        target_port: 445,
        target_protocol: Protocol::Tcp,
        local: None,
        bytes_sent: 0,
        bytes_received: 0,
        received: None,
        fallback: Some(Fallback::ForbiddenAddress),
    }));
    let v = event(&m.seal(), 4096, PayloadEncoding::Base64);
    let r = &v["honeytrap"]["relay"];
    assert_eq!(v["honeytrap"]["mode"], "mirror");
    assert_eq!(r["map"], Value::Null);
    assert_eq!(r["connected"], false);
    assert_eq!(r["local"], Value::Null);
    assert_eq!(r["received"], Value::Null);
    assert_eq!(r["fallback"], true);
    assert_eq!(r["fallback_reason"], "forbidden_address");
    // A normal-mode event has no relay object.
    assert!(
        event(&tcp_http(), 4096, PayloadEncoding::Base64)["honeytrap"]
            .get("relay")
            .is_none()
    );
    // The schema refuses an unknown fallback reason.
    let mut bad = v.clone();
    bad["honeytrap"]["relay"]["fallback_reason"] = json!("because");
    assert!(validate_event(&bad).is_err());
}
