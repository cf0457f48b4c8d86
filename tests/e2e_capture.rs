//! End-to-end: the real binary in a network namespace, attacked with real clients
//! (curl, nc, socat) over IPv4 and IPv6, TCP and UDP; asserts on the JSON events and
//! the transcript files.

mod support;

use base64::Engine as _;
use md5::Digest as _;
use serde_json::Value;
use std::time::Duration;
use support::{base_config, require_root, Daemon, NetPair};

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn find<'a>(events: &'a [Value], port: u16, proto: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["destination"]["port"] == port && e["network"]["transport"] == proto)
        .collect()
}

/// The transcript file named in the event, its chunks checked against the payload.
fn check_transcript(e: &Value) {
    let doc = support::daemon::transcript_of(e);
    let incoming: Vec<u8> = doc["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["direction"] == "in")
        .flat_map(|c| b64(c["data"].as_str().unwrap()))
        .collect();
    let md5 = hex::encode(md5::Md5::digest(&incoming));
    assert_eq!(
        e["honeytrap"]["payload"]["md5"],
        md5.as_str(),
        "payload md5 equals md5 of the transcript's incoming bytes"
    );
    assert_eq!(e["honeytrap"]["payload"]["length"], incoming.len());
}

#[test]
fn tcp_normal_mode_over_ipv4_and_ipv6_with_real_clients() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("tcp");
    let mut config = base_config(std::path::Path::new("@DATA@"), "8080, 2222, 4444, 4321", "");
    let responses = tempfile::tempdir().unwrap();
    std::fs::write(responses.path().join("4444_tcp"), b"CUSTOM-BANNER\r\n").unwrap();
    config.push_str(&format!(
        "[limits]\nread_timeout = \"400ms\"\n[ports]\nresponses = 2\nresponse_dir = \"{}\"\n",
        responses.path().display()
    ));
    let mut d = Daemon::start(&net, &config);

    // curl over IPv4: the built-in HTTP response arrives after read_timeout of silence.
    let out = net.attack(
        "curl",
        &[
            "-s",
            "-m",
            "8",
            &format!("http://{}:8080/index.html", net.hp_v4),
        ],
        b"",
        10,
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("It works!"),
        "curl got: {body:?} / {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // curl over IPv6.
    let out = net.attack(
        "curl",
        &[
            "-s",
            "-g",
            "-m",
            "8",
            &format!("http://[{}]:8080/v6", net.hp_v6),
        ],
        b"",
        10,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("It works!"));

    // nc gets the SSH banner at once (greeting), before sending anything.
    let out = net.attack("nc", &["-w", "2", &net.hp_v4, "2222"], b"SSH-2.0-Go\r\n", 8);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("SSH-2.0-OpenSSH"),
        "{:?}",
        out
    );

    // A response file from response_dir (original honeytrap naming).
    let out = net.attack(
        "socat",
        &["-t", "2", "-", &format!("TCP:{}:4444", net.hp_v4)],
        b"hello\n",
        8,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CUSTOM-BANNER"),
        "{:?}",
        out
    );

    // No response anywhere: a single newline, repeated `responses` times, then close.
    // (stdin stays open, so socat does not half-close.)
    let silent_client = format!("sleep 5 | socat - 'TCP:[{}]:4321'", net.hp_v6);
    let out = net.attack("sh", &["-c", &silent_client], b"", 8);
    assert_eq!(
        out.stdout, b"\n\n",
        "two idle periods, two newlines, then closed"
    );

    let events = d.wait_events(5, Duration::from_secs(10));
    let http = find(&events, 8080, "tcp");
    assert_eq!(http.len(), 2, "one event per connection");
    let v4 = http
        .iter()
        .find(|e| e["network"]["type"] == "ipv4")
        .expect("ipv4 event");
    assert_eq!(v4["source"]["ip"], net.at_v4.as_str());
    assert_eq!(v4["destination"]["ip"], net.hp_v4.as_str());
    assert_eq!(v4["observer"]["name"], "e2e-sensor");
    assert_eq!(v4["honeytrap"]["mode"], "normal");
    assert_eq!(v4["honeytrap"]["monitor"], "listen");
    let payload = b64(v4["honeytrap"]["payload"]["data"].as_str().unwrap());
    assert!(
        payload.starts_with(b"GET /index.html HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&payload)
    );
    assert!(v4["honeytrap"]["responses_sent"].as_u64().unwrap() >= 1);
    assert!(
        v4["destination"]["bytes"].as_u64().unwrap() > 100,
        "response bytes counted"
    );
    check_transcript(v4);
    let v6 = http
        .iter()
        .find(|e| e["network"]["type"] == "ipv6")
        .expect("ipv6 event");
    assert_eq!(v6["source"]["ip"], net.at_v6.as_str());
    assert_eq!(v6["destination"]["ip"], net.hp_v6.as_str());
    check_transcript(v6);

    let ssh = find(&events, 2222, "tcp");
    assert_eq!(ssh.len(), 1);
    assert_eq!(
        b64(ssh[0]["honeytrap"]["payload"]["data"].as_str().unwrap()),
        b"SSH-2.0-Go\r\n"
    );

    let silent = find(&events, 4321, "tcp");
    assert_eq!(silent[0]["honeytrap"]["end_reason"], "idle");
    assert_eq!(silent[0]["honeytrap"]["responses_sent"], 2);
    assert_eq!(silent[0]["honeytrap"]["payload"]["length"], 0);
    // md5 of nothing.
    assert_eq!(
        silent[0]["honeytrap"]["payload"]["md5"],
        "d41d8cd98f00b204e9800998ecf8427e"
    );

    // Unique ids.
    let mut ids: Vec<_> = events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    assert!(d.stop().success());
}

#[test]
fn ignore_mode_binds_nothing_and_records_nothing() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("ignore");
    let mut config = base_config(std::path::Path::new("@DATA@"), "7000, 7001", "7002");
    config.push_str(
        "[[ports.rule]]\nprotocol = \"tcp\"\nports = [7000]\nmode = \"ignore\"\n\n[[ports.rule]]\nprotocol = \"udp\"\nports = [\"7002-7010\"]\nmode = \"ignore\"\n",
    );
    let mut d = Daemon::start(&net, &config);
    assert!(d.log().contains("ignore mode are not bound"), "{}", d.log());
    // 7000 is ignored: the kernel refuses the connection.
    let out = net.attack("nc", &["-z", "-w", "2", &net.hp_v4, "7000"], b"", 5);
    assert!(!out.status.success(), "port 7000 must not be open");
    let out = net.attack("nc", &["-z", "-w", "2", &net.hp_v4, "7001"], b"", 5);
    assert!(
        out.status.success(),
        "port 7001 is in normal mode and must be open"
    );
    let _ = net.attack(
        "socat",
        &["-T", "1", "-", &format!("UDP:{}:7002", net.hp_v4)],
        b"probe",
        5,
    );
    let events = d.wait_events(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let events_after = d.events();
    assert_eq!(events_after.len(), events.len());
    assert!(
        events_after
            .iter()
            .all(|e| e["destination"]["port"] == 7001),
        "{events_after:#?}"
    );
    assert!(d.stop().success());
}

#[test]
fn udp_sessions_are_demultiplexed_by_peer_and_never_amplify() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("udp");
    let mut config = base_config(std::path::Path::new("@DATA@"), "", "5060, 9999");
    config.push_str("[limits]\nread_timeout = \"500ms\"\n[ports]\nresponses = 3\n");
    let mut d = Daemon::start(&net, &config);

    // A full SIP OPTIONS (more bytes than the built-in reply) gets the reply.
    let options = format!(
        "OPTIONS sip:100@{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {at}:5061;branch=z9hG4bK-524287-1---a1b2c3d4e5f60708\r\nMax-Forwards: 70\r\nTo: <sip:100@{ip}>\r\nFrom: \"sipvicious\" <sip:100@1.1.1.1>;tag=6130396534383264313363340131383032393231303035\r\nCall-ID: 1029384756473829@{at}\r\nCSeq: 1 OPTIONS\r\nContact: <sip:100@{at}:5061>\r\nAccept: application/sdp\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
        ip = net.hp_v4,
        at = net.at_v4
    );
    assert!(options.len() > 400);
    let out = net.attack(
        "socat",
        &[
            "-t",
            "3",
            "-",
            &format!("UDP:{}:5060,sourceport=41000", net.hp_v4),
        ],
        options.as_bytes(),
        8,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("SIP/2.0 200 OK"),
        "{out:?}"
    );

    // A tiny probe gets nothing back: the reply would be larger than the probe.
    let out = net.attack(
        "socat",
        &[
            "-t",
            "2",
            "-",
            &format!("UDP:{}:5060,sourceport=41001", net.hp_v4),
        ],
        b"x",
        6,
    );
    assert!(out.stdout.is_empty(), "no amplification: {:?}", out.stdout);

    // Two peers on IPv6 talking at the same time: two sessions, each with its own data.
    let peers: Vec<_> = [("one", 42001), ("two", 42002)]
        .into_iter()
        .map(|(word, port)| {
            net.background_attacker(&format!(
                "(printf {word}1; sleep 0.2; printf {word}2) | socat -T 1 - 'UDP:[{}]:9999,sourceport={port}'",
                net.hp_v6
            ))
        })
        .collect();
    for mut p in peers {
        p.wait();
    }

    let events = d.wait_events(4, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    let events = if d.events().len() > events.len() {
        d.events()
    } else {
        events
    };
    let sip = find(&events, 5060, "udp");
    assert_eq!(sip.len(), 2, "one session per peer: {sip:#?}");
    let full = sip.iter().find(|e| e["source"]["port"] == 41000).unwrap();
    assert_eq!(full["honeytrap"]["payload"]["length"], options.len());
    assert_eq!(full["honeytrap"]["responses_sent"], 1);
    let tiny = sip.iter().find(|e| e["source"]["port"] == 41001).unwrap();
    assert_eq!(tiny["honeytrap"]["responses_sent"], 0);
    assert_eq!(tiny["destination"]["bytes"], 0);
    // Nothing to say and silent: the session ends at the first silence instead of
    // holding a slot for all `responses` rounds (spoofed floods).
    assert_eq!(tiny["honeytrap"]["end_reason"], "idle");
    let ns = tiny["event"]["duration"].as_u64().unwrap();
    assert!(ns < 1_200_000_000, "ended after one read_timeout: {ns} ns");
    check_transcript(full);

    let v6 = find(&events, 9999, "udp");
    assert_eq!(v6.len(), 2, "{v6:#?}");
    for e in v6 {
        assert_eq!(e["network"]["type"], "ipv6");
        assert_eq!(
            e["destination"]["ip"],
            net.hp_v6.as_str(),
            "destination from IPV6_PKTINFO"
        );
        let payload = b64(e["honeytrap"]["payload"]["data"].as_str().unwrap());
        let expected: &[u8] = if e["source"]["port"] == 42001 {
            b"one1one2"
        } else {
            b"two1two2"
        };
        assert_eq!(payload, expected, "datagrams of one peer form one session");
        // The 1-byte newline reply fits the budget; transcripts hold both ways.
        check_transcript(e);
    }
    assert!(d.stop().success());
}

#[test]
fn a_port_owned_by_another_program_is_reported_once_and_skipped() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("owned");
    // A real service owns 7400 in the honeypot namespace.
    let _service = net.background_honeypot(
        "socat",
        &["TCP-LISTEN:7400,fork,reuseaddr", "SYSTEM:echo REAL-SERVICE"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let config = base_config(std::path::Path::new("@DATA@"), "7400, 7401", "");
    let mut d = Daemon::start(&net, &config);
    let log = d.log();
    assert_eq!(log.matches("cannot bind port").count(), 1, "{log}");
    assert!(log.contains("port=7400"), "{log}");
    // The real service still answers on its port; honeytrap serves the other one.
    let out = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{}:7400", net.hp_v4)],
        b"",
        5,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("REAL-SERVICE"),
        "{out:?}"
    );
    let _ = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{}:7401", net.hp_v4)],
        b"probe",
        5,
    );
    let events = d.wait_events(1, Duration::from_secs(10));
    assert!(events.iter().all(|e| e["destination"]["port"] == 7401));
    assert!(d.stop().success());
    assert!(d.log().contains("bind_failures=1"), "{}", d.log());
}

#[test]
fn an_unusable_bind_address_is_reported_once_and_the_others_serve() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("addr");
    // 192.0.2.1 (documentation range) is not an address of the honeypot: binding
    // fails with EADDRNOTAVAIL; no traffic goes there.
    let mut config = base_config(std::path::Path::new("@DATA@"), "7600, 7601", "7602");
    config.push_str(&format!(
        "[network]\nbind_addresses = [\"{}\", \"192.0.2.1\"]\n",
        net.hp_v4
    ));
    let mut d = Daemon::start(&net, &config);
    let log = d.log();
    assert_eq!(
        log.matches("cannot bind on this address").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("cannot bind port"), "{log}");
    for port in ["7600", "7601"] {
        let out = net.attack("nc", &["-z", "-w", "2", &net.hp_v4, port], b"", 5);
        assert!(out.status.success(), "{port} served on the usable address");
    }
    d.wait_events(2, Duration::from_secs(10));
    assert!(d.stop().success());
}

#[test]
fn payload_in_the_event_is_cut_at_payload_max_and_hex_encoded() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("hex");
    let mut config = base_config(std::path::Path::new("@DATA@"), "7700", "");
    config.push_str("[output.jsonl]\npayload_max = 4\npayload_encoding = \"hex\"\n");
    let mut d = Daemon::start(&net, &config);
    let _ = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{}:7700", net.hp_v4)],
        b"\x00\x01ABCDEF",
        5,
    );
    let events = d.wait_events(1, Duration::from_secs(10));
    let p = &events[0]["honeytrap"]["payload"];
    assert_eq!(p["encoding"], "hex");
    assert_eq!(p["data"], "00014142");
    assert_eq!(p["shown"], 4);
    assert_eq!(p["truncated"], true);
    assert_eq!(p["length"], 8);
    // The transcript keeps all of it.
    let doc = support::daemon::transcript_of(&events[0]);
    assert_eq!(
        b64(doc["chunks"][0]["data"].as_str().unwrap()),
        b"\x00\x01ABCDEF"
    );
    assert!(d.stop().success());
}
