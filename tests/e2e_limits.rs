//! End-to-end: every limit triggers, is logged, and bounds what is recorded.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::{base_config, require_root, Daemon, NetPair};

/// Hold `n` TCP connections open from the attacker namespace for `secs` seconds.
fn hold_connections(net: &NetPair, port: u16, n: usize, secs: u32) -> support::netns::Background {
    let script = (0..n)
        .map(|i| {
            format!(
                "(printf 'conn{i}'; sleep {secs}) | socat - TCP:{}:{port} & ",
                net.hp_v4
            )
        })
        .collect::<String>()
        + "wait";
    net.background_attacker(&script)
}

#[test]
fn session_caps_and_source_rate_refuse_and_log() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("caps");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6000, 6001", "");
    config.push_str("[limits]\nread_timeout = \"10s\"\nmax_sessions = 3\nmax_sessions_per_source = 2\nsource_rate = 0.1\nsource_burst = 3\n[ports]\nresponses = 1\n");
    let mut d = Daemon::start(&net, &config);

    // Per-source cap: 2 of 3 concurrent sessions are admitted.
    let mut holders = hold_connections(&net, 6000, 3, 3);
    assert!(
        d.wait_log(
            "limits.max_sessions_per_source reached",
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    holders.wait();
    let events = d.wait_events(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.events().len(),
        2,
        "the refused session is not recorded: {events:#?}"
    );

    // Rate: the bucket held 3 tokens and 2 are spent; of 3 quick sessions only 1
    // passes (0.1/s refills less than one token in this time).
    for _ in 0..3 {
        let _ = net.attack(
            "socat",
            &["-t", "0.2", "-", &format!("TCP:{}:6001", net.hp_v4)],
            b"x",
            4,
        );
    }
    assert!(
        d.wait_log("limits.source_rate exceeded", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let events = d.wait_events(3, Duration::from_secs(5));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["destination"]["port"] == 6001)
            .count(),
        1
    );
    assert!(d.stop().success());
    let log = d.log();
    assert!(
        log.contains("limit_per_source=1"),
        "counted in the final counters: {log}"
    );
    assert!(log.contains("limit_source_rate=2"), "{log}");
}

#[test]
fn global_session_cap() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("global");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6100", "");
    config.push_str(
        "[limits]\nread_timeout = \"10s\"\nmax_sessions = 1\nmax_sessions_per_source = 1\n",
    );
    let mut d = Daemon::start(&net, &config);
    let mut holders = hold_connections(&net, 6100, 2, 2);
    assert!(
        d.wait_log("limits.max_sessions reached", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    holders.wait();
    d.wait_events(1, Duration::from_secs(10));
    assert!(d.stop().success());
    assert_eq!(d.events().len(), 1);
    assert!(d.log().contains("limit_max_sessions=1"), "{}", d.log());
}

#[test]
fn read_limit_and_session_timeout_end_sessions() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("rlimit");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6200", "6201");
    config
        .push_str("[limits]\nread_timeout = \"1s\"\nsession_timeout = \"2s\"\nread_limit = 1000\n");
    let mut d = Daemon::start(&net, &config);

    // 5000 bytes at once: only 1000 are kept and the session ends there.
    let big = vec![b'A'; 5000];
    let _ = net.attack(
        "socat",
        &["-t", "2", "-", &format!("TCP:{}:6200", net.hp_v4)],
        &big,
        6,
    );
    // UDP too: 3 datagrams of 400 bytes.
    let _ = net.attack(
        "sh",
        &["-c", &format!("for i in 1 2 3; do head -c 400 /dev/zero; sleep 0.1; done | socat -u - UDP:{}:6201", net.hp_v4)],
        b"",
        6,
    );
    // A client that trickles data forever is cut at session_timeout.
    let _ = net.attack(
        "sh",
        &[
            "-c",
            &format!(
                "for i in $(seq 1 30); do printf x; sleep 0.2; done | socat -t 1 - TCP:{}:6200",
                net.hp_v4
            ),
        ],
        b"",
        10,
    );
    let events = d.wait_events(3, Duration::from_secs(10));
    let limited: Vec<_> = events
        .iter()
        .filter(|e| e["honeytrap"]["end_reason"] == "read_limit")
        .collect();
    assert_eq!(limited.len(), 2, "{events:#?}");
    for e in &limited {
        assert_eq!(e["honeytrap"]["payload"]["length"], 1000);
        assert_eq!(e["honeytrap"]["payload"]["read_limit_reached"], true);
    }
    let cut = events
        .iter()
        .find(|e| e["honeytrap"]["end_reason"] == "session_timeout")
        .expect("session_timeout event");
    let len = cut["honeytrap"]["payload"]["length"].as_u64().unwrap();
    assert!((5..=14).contains(&len), "about 2 s of trickle: {len}");
    assert!(d.stop().success());
    assert!(d.log().contains("limit_read=2"), "{}", d.log());
    assert!(d.log().contains("limit_session_timeout=1"), "{}", d.log());
    assert!(d.log().contains("limits.read_limit reached"), "{}", d.log());
    assert!(
        d.log().contains("limits.session_timeout reached"),
        "{}",
        d.log()
    );
}

#[test]
fn transcript_quota_removes_the_oldest_per_attack_files() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("quota");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6300", "");
    config.push_str("[limits]\nread_timeout = \"100ms\"\n[ports]\nresponses = 0\n[output.transcripts]\nlayout = \"per_attack\"\nquota_files = 3\n");
    let mut d = Daemon::start(&net, &config);
    for i in 0..6 {
        let _ = net.attack(
            "socat",
            &["-t", "0.3", "-", &format!("TCP:{}:6300", net.hp_v4)],
            format!("attack {i}").as_bytes(),
            4,
        );
    }
    let events = d.wait_events(6, Duration::from_secs(10));
    assert!(d.stop().success());
    let mut files = Vec::new();
    for day in std::fs::read_dir(d.data().join("transcripts")).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    assert_eq!(files.len(), 3, "{files:?}");
    // The newest three remain: those of the last three events.
    for e in &events[3..] {
        let p = e["honeytrap"]["transcript"]["path"].as_str().unwrap();
        assert!(std::path::Path::new(p).exists(), "{p} kept");
    }
    for e in &events[..3] {
        let p = e["honeytrap"]["transcript"]["path"].as_str().unwrap();
        assert!(!std::path::Path::new(p).exists(), "{p} removed");
    }
    assert!(d.log().contains("transcript quota reached"), "{}", d.log());
    assert!(d.log().contains("quota_removed=3"), "{}", d.log());
}

#[test]
fn a_slow_reader_cannot_stall_capture() {
    // Sanity for the write timeout path: a peer that never reads a large response
    // does not block other sessions on the same port.
    if !require_root() {
        return;
    }
    let net = NetPair::new("slow");
    let responses = tempfile::tempdir().unwrap();
    std::fs::write(responses.path().join("6400_tcp"), vec![b'R'; 60_000]).unwrap();
    let mut config = base_config(std::path::Path::new("@DATA@"), "6400", "");
    config.push_str(&format!(
        "[limits]\nread_timeout = \"100ms\"\n[ports]\nresponses = 50\nresponse_dir = \"{}\"\n",
        responses.path().display()
    ));
    let mut d = Daemon::start(&net, &config);
    // A client that connects and never reads.
    let mut stuck =
        net.background_attacker(&format!("sleep 4 | socat -u - TCP:{}:6400", net.hp_v4));
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile a normal client is served.
    let mut s = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.attacker,
            "socat",
            "-t",
            "2",
            "-",
            &format!("TCP:{}:6400", net.hp_v4),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    s.stdin.take().unwrap().write_all(b"hi").unwrap();
    let mut got = Vec::new();
    s.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    let _ = s.wait();
    assert!(
        got.len() >= 60_000,
        "served while another peer is stuck: {}",
        got.len()
    );
    stuck.wait();
    assert!(d.stop().success());
}

#[test]
fn max_buffered_bounds_all_sessions_together() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("buffered");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6500", "");
    config.push_str("[limits]\nread_timeout = \"5s\"\nread_limit = 1000\nmax_buffered = 1000\n");
    let mut d = Daemon::start(&net, &config);
    // Session A holds 800 bytes and stays open.
    let mut a = net.background_attacker(&format!(
        "(head -c 800 /dev/zero; sleep 3) | socat - TCP:{}:6500",
        net.hp_v4
    ));
    std::thread::sleep(Duration::from_millis(500));
    // Session B's 500 bytes would take the sessions past 1000 bytes together.
    let _ = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{}:6500", net.hp_v4)],
        &[b'B'; 500],
        5,
    );
    let events = d.wait_events(1, Duration::from_secs(5));
    assert_eq!(
        events[0]["honeytrap"]["end_reason"], "buffer_limit",
        "{events:#?}"
    );
    assert_eq!(events[0]["honeytrap"]["payload"]["length"], 0);
    a.wait();
    let events = d.wait_events(2, Duration::from_secs(10));
    assert_eq!(events[1]["honeytrap"]["payload"]["length"], 800);
    assert!(d.stop().success());
    assert!(
        d.log().contains("limits.max_buffered reached"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("limit_buffered=1"), "{}", d.log());
}

#[test]
fn segments_roll_over_and_the_quota_removes_whole_segments() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("segments");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6600", "");
    // Each transcript is about 3 KiB (2 KiB payload in base64): one segment of 4 KiB
    // holds one of them.
    config.push_str("[limits]\nread_timeout = \"100ms\"\nread_limit = 4096\n[ports]\nresponses = 0\n[output.transcripts]\nsegment_bytes = \"4KiB\"\nquota_bytes = \"1MiB\"\nquota_files = 2\n");
    let mut d = Daemon::start(&net, &config);
    for i in 0..5u8 {
        let _ = net.attack(
            "socat",
            &["-t", "0.3", "-", &format!("TCP:{}:6600", net.hp_v4)],
            &[b'a' + i; 2048],
            4,
        );
    }
    let events = d.wait_events(5, Duration::from_secs(10));
    assert!(d.stop().success());
    let paths: Vec<&str> = events
        .iter()
        .map(|e| e["honeytrap"]["transcript"]["path"].as_str().unwrap())
        .collect();
    let mut distinct = paths.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        5,
        "every transcript started a new segment: {paths:?}"
    );
    assert!(paths.iter().all(|p| p.ends_with(".jsonl")));
    // Only the newest two segments remain, and they hold the last two transcripts.
    for e in &events[..3] {
        assert!(
            !std::path::Path::new(e["honeytrap"]["transcript"]["path"].as_str().unwrap()).exists()
        );
    }
    for (i, e) in events[3..].iter().enumerate() {
        let doc = support::daemon::transcript_of(e);
        let data = &doc["chunks"][0]["data"];
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            data.as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(bytes, vec![b'a' + 3 + i as u8; 2048]);
    }
    assert!(d.log().contains("quota_removed=3"), "{}", d.log());
}

#[test]
fn one_segment_holds_many_transcripts() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("segmany");
    let mut config = base_config(std::path::Path::new("@DATA@"), "6700", "6701");
    config.push_str("[limits]\nread_timeout = \"100ms\"\n[ports]\nresponses = 1\n");
    let mut d = Daemon::start(&net, &config);
    for i in 0..4 {
        let _ = net.attack(
            "socat",
            &["-t", "0.3", "-", &format!("TCP:{}:6700", net.hp_v4)],
            format!("tcp attack {i}").as_bytes(),
            4,
        );
        let _ = net.attack(
            "socat",
            &["-t", "0.3", "-", &format!("UDP:{}:6701", net.hp_v4)],
            format!("udp attack {i}").as_bytes(),
            4,
        );
    }
    let events = d.wait_events(8, Duration::from_secs(10));
    assert!(d.stop().success());
    let path = events[0]["honeytrap"]["transcript"]["path"]
        .as_str()
        .unwrap();
    assert!(events
        .iter()
        .all(|e| e["honeytrap"]["transcript"]["path"] == path));
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.lines().count(), 8);
    let mut offsets: Vec<u64> = events
        .iter()
        .map(|e| e["honeytrap"]["transcript"]["offset"].as_u64().unwrap())
        .collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 8);
    for e in &events {
        let doc = support::daemon::transcript_of(e);
        let first = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            doc["chunks"][0]["data"].as_str().unwrap(),
        )
        .unwrap();
        let proto = e["network"]["transport"].as_str().unwrap();
        assert!(
            String::from_utf8(first)
                .unwrap()
                .starts_with(&format!("{proto} attack ")),
            "each document belongs to its own event"
        );
    }
}
