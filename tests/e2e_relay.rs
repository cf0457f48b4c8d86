//! End-to-end: mirror and proxy modes (issue 4). The real binary in a honeypot
//! namespace; the attacker's own services run in the attacker namespace (mirror), the
//! proxy targets in a third "target" namespace that only the honeypot can reach.
//! Real clients (nc, socat, curl) and real servers (socat); asserts on what the
//! clients and the servers saw, on the JSON events (`honeytrap.relay`) and on the
//! transcripts. Covered: mirror and proxy over TCP and UDP (IPv4 and IPv6), target
//! protocol across TCP/UDP, several maps, fallbacks with their reasons, idle timeout
//! and shutdown of an open relay, config errors; abuse guards: forbidden mirror
//! targets (private, loopback, own), per-source rate, relay cap, UDP mirroring off
//! by default and the UDP reply budgets, read_limit both ways.

mod support;

use base64::Engine as _;
use md5::Digest as _;
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::clients::{host_port, nc_once, socat_service, udp_once};
use support::daemon::{run, transcript_of, wait_until, BIN};
use support::{base_config, require_root, Daemon, NetPair};

/// What normal mode answers in a fallback (the rules' and maps' `response` file).
const CANNED: &[u8] = b"CANNED-FALLBACK\n";

/// Per-test scratch directory: server scripts, their logs, the canned response.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("canned"), CANNED).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// The canned response file, for `response = "..."`.
    fn canned(&self) -> String {
        self.path("canned").display().to_string()
    }

    /// A server script `NAME.sh` that first logs its peer to `NAME-peers`; `body`
    /// may say `@DATA@` for the file `NAME-data`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let peers = self.path(&format!("{name}-peers"));
        let data = self.path(&format!("{name}-data"));
        let text = format!(
            "echo $SOCAT_PEERADDR $SOCAT_PEERPORT >> {}\n{}\n",
            peers.display(),
            body.replace("@DATA@", &data.display().to_string())
        );
        let path = self.path(&format!("{name}.sh"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The peers (address, port) the server `name` saw, in order.
    fn peers(&self, name: &str) -> Vec<(IpAddr, u16)> {
        std::fs::read_to_string(self.path(&format!("{name}-peers")))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut parts = l.split_whitespace();
                let ip = parts.next().unwrap().trim_matches(['[', ']']);
                let port = parts.next().unwrap().parse().unwrap();
                (ip.parse().unwrap_or_else(|_| panic!("peer {l:?}")), port)
            })
            .collect()
    }

    /// What the server `name` wrote to `@DATA@`.
    fn data(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}-data"))).unwrap_or_default()
    }
}

fn ipa(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("not an IP: {s:?}"))
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// The config of these tests: short timeouts, one fallback response per session.
/// `relay` is extra lines for `[relay]` (its timeouts may be overridden there),
/// `rest` more sections (rules, maps).
fn config(tcp: &str, udp: &str, relay: &str, rest: &str) -> String {
    let mut c = base_config(Path::new("@DATA@"), tcp, udp);
    c.push_str("\n[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n\n[relay]\n");
    if !relay.contains("connect_timeout") {
        c.push_str("connect_timeout = \"1s\"\n");
    }
    if !relay.contains("idle_timeout") {
        c.push_str("idle_timeout = \"2s\"\n");
    }
    c.push_str(relay);
    c.push_str("\n\n");
    c.push_str(rest);
    c
}

/// A `[[ports.rule]]` putting `ports` of `protocol` in mirror mode, with the canned
/// fallback response.
fn mirror_rule(s: &Scratch, protocol: &str, ports: &str) -> String {
    format!(
        "[[ports.rule]]\nprotocol = \"{protocol}\"\nports = [{ports}]\nmode = \"mirror\"\nresponse = \"{}\"\n\n",
        s.canned()
    )
}

/// A `[proxy.NAME]` map; `more` is extra lines (target_port, target_protocol).
fn proxy_map(
    s: &Scratch,
    name: &str,
    protocol: &str,
    ports: &str,
    host: &str,
    more: &str,
) -> String {
    format!(
        "[proxy.{name}]\nprotocol = \"{protocol}\"\nports = [{ports}]\ntarget_host = \"{host}\"\n{more}\nresponse = \"{}\"\n\n",
        s.canned()
    )
}

/// The event of `port` and `transport` with this payload.
fn event_for(d: &Daemon, port: u16, transport: &str, data: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(12), || {
        found = d.events().into_iter().find(|e| {
            e["destination"]["port"] == port
                && e["network"]["transport"] == transport
                && b64(e["honeytrap"]["payload"]["data"].as_str().unwrap_or("")) == data
        });
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no {transport} event for {port} with {:?}:\n{}",
            String::from_utf8_lossy(data),
            d.log()
        )
    })
}

/// The transcript's bytes from the attacker ("in") and to the attacker ("out").
fn transcript_sides(e: &Value) -> (Vec<u8>, Vec<u8>) {
    let doc = transcript_of(e);
    let side = |dir: &str| -> Vec<u8> {
        doc["chunks"]
            .as_array()
            .expect("chunks")
            .iter()
            .filter(|c| c["direction"] == dir)
            .flat_map(|c| b64(c["data"].as_str().unwrap()))
            .collect()
    };
    (side("in"), side("out"))
}

/// What a relay that worked must record.
struct Relayed<'a> {
    kind: &'a str,
    map: Option<&'a str>,
    host: Option<&'a str>,
    ip: &'a str,
    port: u16,
    transport: &'a str,
    sent: &'a [u8],
    received: &'a [u8],
}

fn assert_relayed(e: &Value, want: &Relayed) {
    let r = &e["honeytrap"]["relay"];
    let ctx = serde_json::to_string_pretty(e).unwrap();
    assert_eq!(e["honeytrap"]["mode"], want.kind, "{ctx}");
    assert_eq!(r["kind"], want.kind, "{ctx}");
    match want.map {
        Some(m) => assert_eq!(r["map"], m, "{ctx}"),
        None => assert!(r["map"].is_null(), "{ctx}"),
    }
    if let Some(h) = want.host {
        assert_eq!(r["target"]["host"], h, "{ctx}");
    }
    assert_eq!(
        ipa(r["target"]["ip"].as_str().expect("target.ip")),
        ipa(want.ip),
        "{ctx}"
    );
    assert_eq!(r["target"]["port"], want.port, "{ctx}");
    assert_eq!(r["target"]["transport"], want.transport, "{ctx}");
    assert_eq!(r["connected"], true, "{ctx}");
    assert_eq!(r["fallback"], false, "{ctx}");
    assert!(r["fallback_reason"].is_null(), "{ctx}");
    assert_eq!(r["bytes_sent"], want.sent.len(), "{ctx}");
    assert_eq!(r["bytes_received"], want.received.len(), "{ctx}");
    assert_eq!(r["received"]["sha256"], sha256(want.received), "{ctx}");
    assert_eq!(
        r["received"]["md5"],
        hex::encode(md5::Md5::digest(want.received)),
        "{ctx}"
    );
    assert_eq!(
        r["received"]["sha512"],
        hex::encode(sha2::Sha512::digest(want.received)),
        "{ctx}"
    );
    assert_eq!(e["source"]["bytes"], want.sent.len(), "{ctx}");
    assert_eq!(e["destination"]["bytes"], want.received.len(), "{ctx}");
    let (inc, out) = transcript_sides(e);
    assert_eq!(inc, want.sent, "transcript in = what the attacker sent");
    assert_eq!(
        out, want.received,
        "transcript out = what the target sent back"
    );
}

/// A connection that fell back to normal mode: recorded as `kind`, with `reason`,
/// answered with the canned response.
fn assert_fallback(e: &Value, kind: &str, reason: &str) {
    let r = &e["honeytrap"]["relay"];
    let ctx = serde_json::to_string_pretty(e).unwrap();
    assert_eq!(e["honeytrap"]["mode"], kind, "{ctx}");
    assert_eq!(r["kind"], kind, "{ctx}");
    assert_eq!(r["fallback"], true, "{ctx}");
    assert_eq!(r["fallback_reason"], reason, "{ctx}");
    assert_eq!(r["connected"], false, "{ctx}");
    assert_eq!(r["bytes_sent"], 0, "{ctx}");
    assert_eq!(r["bytes_received"], 0, "{ctx}");
    let (_, out) = transcript_sides(e);
    assert_eq!(
        out, CANNED,
        "the fallback's canned response is the out side"
    );
}

/// A proxy session whose UDP target refused (ICMP port unreachable): normal mode
/// took over. What was sent before the refusal may count as sent.
fn assert_udp_refused(e: &Value) {
    let r = &e["honeytrap"]["relay"];
    let ctx = serde_json::to_string_pretty(e).unwrap();
    assert_eq!(e["honeytrap"]["mode"], "proxy", "{ctx}");
    assert_eq!(r["target"]["transport"], "udp", "{ctx}");
    assert_eq!(r["fallback"], true, "{ctx}");
    assert_eq!(r["fallback_reason"], "refused", "{ctx}");
    assert_eq!(r["bytes_received"], 0, "{ctx}");
    let (_, out) = transcript_sides(e);
    assert_eq!(
        out, CANNED,
        "the fallback's canned response is the out side"
    );
}

/// A TCP client (nc) run inside the honeypot namespace itself.
fn nc_from_honeypot(net: &NetPair, host: &str, port: u16, data: &[u8]) -> Output {
    let mut c = Command::new("timeout");
    c.args([
        "8",
        "ip",
        "netns",
        "exec",
        &net.honeypot,
        "nc",
        "-N",
        "-w",
        "3",
    ])
    .args([host, &port.to_string()])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("nc");
    {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(data);
    }
    child.wait_with_output().expect("nc output")
}

/// `check-config` on `text`.
fn check_config(dir: &Path, name: &str, text: &str) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let mut c = Command::new(BIN);
    c.args(["check-config", "-c"]).arg(&path).current_dir(dir);
    run(c, Duration::from_secs(10))
}

/// The attacker's own TCP service for mirror mode: a banner, then it stores what it
/// gets, on IPv4 and IPv6.
fn own_tcp_service(net: &NetPair, s: &Scratch, port: u16) -> support::netns::Background {
    let script = s.script("own", "echo OWN-BANNER\ncat >> @DATA@");
    socat_service(&net.attacker, "tcp", port, &script)
}

#[test]
fn mirror_tcp_shows_the_attacker_its_own_service_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mirror");
    let s = Scratch::new();
    let _own = own_tcp_service(&net, &s, 7101);
    let rest = mirror_rule(&s, "tcp", "7101");
    let mut d = Daemon::start(&net, &config("7101", "", "mirror_private = true", &rest));

    for (i, (hp, at)) in [(&net.hp_v4, &net.at_v4), (&net.hp_v6, &net.at_v6)]
        .into_iter()
        .enumerate()
    {
        let request = format!("mirror-request-{i}\n");
        let out = nc_once(&net, hp, 7101, request.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "OWN-BANNER\n",
            "the attacker sees its own service: {out:?}"
        );
        let e = event_for(&d, 7101, "tcp", request.as_bytes());
        assert_relayed(
            &e,
            &Relayed {
                kind: "mirror",
                map: None,
                host: None,
                ip: at,
                port: 7101,
                transport: "tcp",
                sent: request.as_bytes(),
                received: b"OWN-BANNER\n",
            },
        );
        // The second connection came from the honeypot, and the record names its end.
        let peers = s.peers("own");
        assert_eq!(peers.len(), i + 1, "{peers:?}");
        let (peer_ip, peer_port) = peers[i];
        assert_eq!(peer_ip, ipa(hp));
        let local = &e["honeytrap"]["relay"]["local"];
        assert_eq!(ipa(local["ip"].as_str().expect("relay.local.ip")), peer_ip);
        assert_eq!(local["port"], peer_port);
    }
    // The requests reached the attacker's own service.
    assert_eq!(s.data("own"), b"mirror-request-0\nmirror-request-1\n");
    assert!(d.stop().success());
}

#[test]
fn default_mode_mirror_covers_every_port_no_rule_names() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mirrordefault");
    let s = Scratch::new();
    let _own = own_tcp_service(&net, &s, 7110);
    let _own2 = socat_service(&net.attacker, "tcp", 7111, &s.script("own2", "echo OWN-2"));
    let rest = "[[ports.rule]]\nprotocol = \"tcp\"\nports = [7111]\nmode = \"normal\"\n";
    let text = config("7110, 7111", "", "mirror_private = true", rest)
        .replace("[ports]\n", "[ports]\ndefault_mode = \"mirror\"\n");
    let mut d = Daemon::start(&net, &text);
    let out = nc_once(&net, &net.hp_v4, 7110, b"by-default\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OWN-BANNER\n",
        "{out:?}"
    );
    let e = event_for(&d, 7110, "tcp", b"by-default\n");
    assert_eq!(e["honeytrap"]["mode"], "mirror");
    assert_eq!(e["honeytrap"]["relay"]["connected"], true);
    // A rule still wins: 7111 is served in normal mode and never mirrored.
    let out = nc_once(&net, &net.hp_v4, 7111, b"by-rule\n");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("OWN-2"),
        "{out:?}"
    );
    let e = event_for(&d, 7111, "tcp", b"by-rule\n");
    assert_eq!(e["honeytrap"]["mode"], "normal");
    assert!(
        e["honeytrap"].get("relay").is_none_or(|r| r.is_null()),
        "{e:#}"
    );
    assert!(s.peers("own2").is_empty());
    assert!(d.stop().success());
}

#[test]
fn shutdown_ends_an_open_relay_and_records_it() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("relaystop");
    let s = Scratch::new();
    let script = s.script("tgt", "echo TARGET-BANNER\ncat");
    let _t = socat_service(&net.target, "tcp", 9090, &script);
    let rest = proxy_map(&s, "stop", "tcp", "7120", &net.tg_v4, "target_port = 9090");
    let mut d = Daemon::start(&net, &config("7120", "", "idle_timeout = \"30s\"", &rest));
    let _hold = net.background_attacker(&format!(
        "(printf held; sleep 15) | socat -t 1 - TCP:{}",
        host_port(&net.hp_v4, 7120)
    ));
    assert!(
        wait_until(Duration::from_secs(5), || s.peers("tgt").len() == 1),
        "the relay reached the target"
    );
    std::thread::sleep(Duration::from_millis(200));
    let start = std::time::Instant::now();
    assert!(d.stop().success(), "{}", d.log());
    // shutdown_grace is 3 s in these tests.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    let e = event_for(&d, 7120, "tcp", b"held");
    assert_eq!(e["honeytrap"]["end_reason"], "shutdown", "{e:#}");
    // The banner and the echo of "held".
    assert_eq!(e["honeytrap"]["relay"]["bytes_received"], 18, "{e:#}");
}

#[test]
fn mirror_falls_back_to_normal_mode_when_the_attackers_port_is_closed() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mirrorclosed");
    let s = Scratch::new();
    let rest = mirror_rule(&s, "tcp", "7102");
    let mut d = Daemon::start(&net, &config("7102", "", "mirror_private = true", &rest));
    for (i, hp) in [&net.hp_v4, &net.hp_v6].into_iter().enumerate() {
        let request = format!("nobody-home-{i}\n");
        let out = nc_once(&net, hp, 7102, request.as_bytes());
        assert_eq!(out.stdout, CANNED, "normal mode answers: {out:?}");
        let e = event_for(&d, 7102, "tcp", request.as_bytes());
        assert_fallback(&e, "mirror", "refused");
        let (inc, _) = transcript_sides(&e);
        assert_eq!(inc, request.as_bytes());
    }
    assert!(d.stop().success());
}

#[test]
fn mirror_never_connects_to_private_ranges_by_default() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mirrorpriv");
    let s = Scratch::new();
    let _own = own_tcp_service(&net, &s, 7103);
    // No mirror_private: the test networks (10/8, fd00::/8) are private.
    let rest = mirror_rule(&s, "tcp", "7103");
    let mut d = Daemon::start(&net, &config("7103", "", "", &rest));
    for (i, hp) in [&net.hp_v4, &net.hp_v6].into_iter().enumerate() {
        let request = format!("private-{i}\n");
        let out = nc_once(&net, hp, 7103, request.as_bytes());
        assert_eq!(out.stdout, CANNED, "{out:?}");
        let e = event_for(&d, 7103, "tcp", request.as_bytes());
        assert_fallback(&e, "mirror", "forbidden_address");
    }
    assert!(
        s.peers("own").is_empty(),
        "nothing may reach the attacker's service: {:?}",
        s.peers("own")
    );
    assert!(d.stop().success());
}

#[test]
fn mirror_never_connects_to_loopback_or_the_sensors_own_addresses() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mirrorself");
    let s = Scratch::new();
    let rest = mirror_rule(&s, "tcp", "7104");
    // Even with private ranges allowed: a connection from the sensor itself would
    // make honeytrap connect to itself.
    let mut d = Daemon::start(&net, &config("7104", "", "mirror_private = true", &rest));
    let hosts = ["127.0.0.1", "::1", &net.hp_v4, &net.hp_v6];
    for (i, host) in hosts.into_iter().enumerate() {
        let request = format!("self-{i}\n");
        let out = nc_from_honeypot(&net, host, 7104, request.as_bytes());
        assert_eq!(out.stdout, CANNED, "{host}: {out:?}");
        let e = event_for(&d, 7104, "tcp", request.as_bytes());
        assert_eq!(ipa(e["source"]["ip"].as_str().unwrap()), ipa(host));
        assert_fallback(&e, "mirror", "forbidden_address");
    }
    assert!(d.stop().success());
}

#[test]
fn proxy_tcp_reaches_a_target_in_a_third_namespace_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("proxytcp");
    let s = Scratch::new();
    let script = s.script("tgt", "echo TARGET-BANNER\ncat");
    let _target = socat_service(&net.target, "tcp", 9090, &script);
    // The target is out of the attacker's reach: only the relay gets there.
    for tg in [&net.tg_v4, &net.tg_v6] {
        let out = net.attack("nc", &["-z", "-w", "1", tg, "9090"], b"", 4);
        assert!(!out.status.success(), "attacker reached {tg} directly");
    }
    let rest = proxy_map(&s, "tgv4", "tcp", "7201", &net.tg_v4, "target_port = 9090")
        + &proxy_map(&s, "tgv6", "tcp", "7202", &net.tg_v6, "target_port = 9090");
    let mut d = Daemon::start(&net, &config("7201, 7202", "", "", &rest));

    let cases = [
        (&net.hp_v4, 7201, "tgv4", &net.tg_v4, &net.hp_tg_v4),
        (&net.hp_v6, 7202, "tgv6", &net.tg_v6, &net.hp_tg_v6),
    ];
    for (i, (hp, port, map, tg, hp_tg)) in cases.into_iter().enumerate() {
        let request = format!("proxy-request-{map}\n");
        let expected = format!("TARGET-BANNER\n{request}");
        let out = nc_once(&net, hp, port, request.as_bytes());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{out:?}");
        let e = event_for(&d, port, "tcp", request.as_bytes());
        assert_relayed(
            &e,
            &Relayed {
                kind: "proxy",
                map: Some(map),
                host: Some(tg),
                ip: tg,
                port: 9090,
                transport: "tcp",
                sent: request.as_bytes(),
                received: expected.as_bytes(),
            },
        );
        let peers = s.peers("tgt");
        assert_eq!(peers.len(), i + 1, "{peers:?}");
        assert_eq!(peers[i].0, ipa(hp_tg), "the target saw the honeypot");
        let local = &e["honeytrap"]["relay"]["local"];
        assert_eq!(
            ipa(local["ip"].as_str().expect("relay.local.ip")),
            peers[i].0
        );
        assert_eq!(local["port"], peers[i].1);
    }
    // A silent attacker: the relay ends after relay.idle_timeout (2 s) of no data
    // either way, although both sides are still open.
    let silent = format!("sleep 4 | socat -T 8 - TCP:{}", host_port(&net.hp_v4, 7201));
    let out = net.attack("sh", &["-c", &silent], b"", 10);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "TARGET-BANNER\n");
    let e = event_for(&d, 7201, "tcp", b"");
    assert_eq!(e["honeytrap"]["end_reason"], "idle", "{e:#}");
    let secs = e["event"]["duration"].as_u64().unwrap() as f64 / 1e9;
    assert!((1.8..4.5).contains(&secs), "ended after {secs} s");
    assert!(d.stop().success());
}

#[test]
fn proxy_udp_reaches_a_udp_target_and_replies_come_back() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("proxyudp");
    let s = Scratch::new();
    let echo = s.script("uecho", "cat");
    let _target = socat_service(&net.target, "udp", 9053, &echo);
    let big = s.script("big", "echo A-REPLY-MUCH-LARGER-THAN-THE-QUERY-0123456789");
    let _big = socat_service(&net.target, "udp", 9054, &big);
    let rest = proxy_map(&s, "dns4", "udp", "7301", &net.tg_v4, "target_port = 9053")
        + &proxy_map(&s, "dns6", "udp", "7302", &net.tg_v6, "target_port = 9053")
        + &proxy_map(&s, "amp", "udp", "7303", &net.tg_v4, "target_port = 9054");
    let mut d = Daemon::start(&net, &config("", "7301, 7302, 7303", "", &rest));

    let cases = [
        (&net.hp_v4, 7301, 41301, "dns4", &net.tg_v4, &net.hp_tg_v4),
        (&net.hp_v6, 7302, 41302, "dns6", &net.tg_v6, &net.hp_tg_v6),
    ];
    for (hp, port, sport, map, tg, hp_tg) in cases {
        let query = format!("udp-proxy-query-{map}");
        // socat's UDP socket is connected: only a reply from hp:port gets through.
        let out = udp_once(&net, hp, port, sport, query.as_bytes());
        assert_eq!(String::from_utf8_lossy(&out.stdout), query, "{out:?}");
        assert!(
            s.peers("uecho").iter().any(|p| p.0 == ipa(hp_tg)),
            "the target saw the honeypot: {:?}",
            s.peers("uecho")
        );
        let e = event_for(&d, port, "udp", query.as_bytes());
        assert_eq!(e["source"]["port"], sport);
        assert_relayed(
            &e,
            &Relayed {
                kind: "proxy",
                map: Some(map),
                host: Some(tg),
                ip: tg,
                port: 9053,
                transport: "udp",
                sent: query.as_bytes(),
                received: query.as_bytes(),
            },
        );
    }
    // Anti-reflection (udp_reply_ratio 1.0): a 1-byte query cannot fetch the
    // target's 47-byte answer, although the target did answer.
    let out = udp_once(&net, &net.hp_v4, 7303, 41303, b"q");
    assert!(out.stdout.is_empty(), "amplified: {:?}", out.stdout);
    assert_eq!(s.peers("big").len(), 1, "the query reached the target");
    let e = event_for(&d, 7303, "udp", b"q");
    assert_eq!(e["destination"]["bytes"], 0, "{e:#}");
    let (_, out) = transcript_sides(&e);
    assert!(out.is_empty(), "nothing went back: {out:?}");
    assert!(d.stop().success());
}

#[test]
fn proxy_honours_the_target_protocol_across_tcp_and_udp() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("proxycross");
    let s = Scratch::new();
    // A UDP-only echo on 9053 and a TCP-only echo on 9091.
    let _udp = socat_service(&net.target, "udp", 9053, &s.script("uecho", "cat"));
    let _tcp = socat_service(&net.target, "tcp", 9091, &s.script("techo", "cat"));
    let rest = proxy_map(
        &s,
        "t2u",
        "tcp",
        "7401",
        &net.tg_v4,
        "target_port = 9053\ntarget_protocol = \"udp\"",
    ) + &proxy_map(
        &s,
        "u2t",
        "udp",
        "7402",
        &net.tg_v6,
        "target_port = 9091\ntarget_protocol = \"tcp\"",
    );
    let mut d = Daemon::start(&net, &config("7401", "7402", "", &rest));

    // TCP in, UDP out. The client keeps its side open for a second so the reply
    // datagram has time to come back before the attacker's half-close.
    let out = net.attack(
        "sh",
        &[
            "-c",
            &format!(
                "(printf tcp-to-udp; sleep 1) | socat -t 2 - TCP:{}",
                host_port(&net.hp_v4, 7401)
            ),
        ],
        b"",
        8,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tcp-to-udp",
        "{out:?}"
    );
    assert_eq!(s.peers("uecho").len(), 1, "the UDP target got the datagram");
    assert!(s.peers("techo").is_empty());
    let e = event_for(&d, 7401, "tcp", b"tcp-to-udp");
    assert_relayed(
        &e,
        &Relayed {
            kind: "proxy",
            map: Some("t2u"),
            host: Some(&net.tg_v4),
            ip: &net.tg_v4,
            port: 9053,
            transport: "udp",
            sent: b"tcp-to-udp",
            received: b"tcp-to-udp",
        },
    );
    // A client that half-closes at once (nc -N) still gets the reply: a UDP target
    // cannot close, so the relay waits for it until idle_timeout.
    let out = nc_once(&net, &net.hp_v4, 7401, b"half-closed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "half-closed",
        "{out:?}"
    );
    let e = event_for(&d, 7401, "tcp", b"half-closed");
    assert_eq!(e["honeytrap"]["relay"]["bytes_received"], 11, "{e:#}");

    // UDP in, TCP out.
    let out = udp_once(&net, &net.hp_v6, 7402, 41402, b"udp-to-tcp");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "udp-to-tcp",
        "{out:?}"
    );
    assert_eq!(s.peers("techo").len(), 1, "the TCP target got a connection");
    let e = event_for(&d, 7402, "udp", b"udp-to-tcp");
    assert_relayed(
        &e,
        &Relayed {
            kind: "proxy",
            map: Some("u2t"),
            host: Some(&net.tg_v6),
            ip: &net.tg_v6,
            port: 9091,
            transport: "tcp",
            sent: b"udp-to-tcp",
            received: b"udp-to-tcp",
        },
    );
    assert!(d.stop().success());
}

#[test]
fn proxy_falls_back_to_normal_mode_when_the_target_cannot_be_reached() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("proxydown");
    let s = Scratch::new();
    // Nothing listens on the target's 9999; 10.78.N.3 does not exist (no ARP
    // answer, so the connect times out); the .invalid name never resolves.
    let absent = format!("10.78.{}.3", net.net);
    let rest = proxy_map(&s, "down", "tcp", "7501", &net.tg_v4, "target_port = 9999")
        + &proxy_map(&s, "void", "tcp", "7502", &absent, "target_port = 9999")
        + &proxy_map(
            &s,
            "nxname",
            "tcp",
            "7503",
            "no-such-host.invalid",
            "target_port = 9999",
        )
        // UDP targets: nothing listens, the target host answers ICMP port
        // unreachable after the first datagram.
        + &proxy_map(&s, "udpdown", "udp", "7504", &net.tg_v6, "target_port = 9999")
        + &proxy_map(
            &s,
            "t2udown",
            "tcp",
            "7505",
            &net.tg_v4,
            "target_port = 9999\ntarget_protocol = \"udp\"",
        );
    let mut d = Daemon::start(&net, &config("7501, 7502, 7503, 7505", "7504", "", &rest));
    let cases: [(u16, &[&str]); 3] = [
        (7501, &["refused"]),
        (7502, &["timeout", "unreachable"]),
        (7503, &["resolve_failed"]),
    ];
    for (port, reasons) in cases {
        let request = format!("target-down-{port}\n");
        let out = nc_once(&net, &net.hp_v4, port, request.as_bytes());
        assert_eq!(out.stdout, CANNED, "{port}: {out:?}");
        let e = event_for(&d, port, "tcp", request.as_bytes());
        let reason = e["honeytrap"]["relay"]["fallback_reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            reasons.contains(&reason.as_str()),
            "{port}: {reason:?} not in {reasons:?}"
        );
        assert_fallback(&e, "proxy", &reason);
    }
    // A refused UDP target is known only after the datagram went out: the session
    // goes on in normal mode, recorded as refused.
    let udp_probe = b"udp-to-a-dead-target-0123456789";
    let out = udp_once(&net, &net.hp_v6, 7504, 41504, udp_probe);
    assert_eq!(out.stdout, CANNED, "{out:?}");
    let e = event_for(&d, 7504, "udp", udp_probe);
    assert_udp_refused(&e);
    let out = nc_once(&net, &net.hp_v4, 7505, b"tcp-to-a-dead-udp-target\n");
    assert_eq!(out.stdout, CANNED, "{out:?}");
    let e = event_for(&d, 7505, "tcp", b"tcp-to-a-dead-udp-target\n");
    assert_udp_refused(&e);
    assert!(d.stop().success());
}

#[test]
fn several_maps_each_relay_to_their_own_target() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("proxymaps");
    let s = Scratch::new();
    let web = s.script(
        "web",
        // Reads the request head first, as a real server does.
        "while read -r l; do [ -z \"$l\" ] && break; [ \"$l\" = \"$(printf '\\r')\" ] && break; done\nprintf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 11\\r\\n\\r\\nweb-target\\n'",
    );
    let _web = socat_service(&net.target, "tcp", 9080, &web);
    let _ssh = socat_service(
        &net.target,
        "tcp",
        9022,
        &s.script("ssh", "echo SSH-2.0-TargetSSH\ncat"),
    );
    let _same = socat_service(
        &net.target,
        "tcp",
        7603,
        &s.script("same", "echo SAME-PORT\ncat"),
    );
    let rest = proxy_map(&s, "web", "tcp", "7601, \"8000-8002\"", &net.tg_v4, "target_port = 9080")
        + &proxy_map(&s, "ssh", "tcp", "7602", &net.tg_v6, "target_port = 9022")
        // No target_port: the port the attacker connected to.
        + &proxy_map(&s, "same", "tcp", "7603", &net.tg_v4, "");
    let listen = "7601, 8000, 8001, 8002, 7602, 7603";
    let mut d = Daemon::start(&net, &config(listen, "", "", &rest));

    for (host, port) in [(&net.hp_v4, 7601), (&net.hp_v6, 8001)] {
        let url = format!("http://{}/from-curl", host_port(host, port));
        let out = net.attack("curl", &["-s", "-g", "-m", "5", &url], b"", 8);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "web-target\n",
            "{url}: {out:?}"
        );
    }
    let out = nc_once(&net, &net.hp_v4, 7602, b"SSH-2.0-Client\r\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SSH-2.0-TargetSSH\nSSH-2.0-Client\r\n",
        "{out:?}"
    );
    let out = nc_once(&net, &net.hp_v6, 7603, b"same\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SAME-PORT\nsame\n",
        "{out:?}"
    );
    assert_eq!(s.peers("web").len(), 2);
    assert_eq!(s.peers("ssh").len(), 1);
    assert_eq!(s.peers("same").len(), 1);

    let events = d.wait_events(4, Duration::from_secs(10));
    let expect = [
        (7601, "web", 9080),
        (8001, "web", 9080),
        (7602, "ssh", 9022),
        (7603, "same", 7603),
    ];
    for (port, map, target_port) in expect {
        let e = events
            .iter()
            .find(|e| e["destination"]["port"] == port)
            .unwrap_or_else(|| panic!("no event for {port}: {events:#?}"));
        let r = &e["honeytrap"]["relay"];
        assert_eq!(e["honeytrap"]["mode"], "proxy");
        assert_eq!(r["map"], map, "{port}");
        assert_eq!(r["target"]["port"], target_port, "{port}");
        assert_eq!(r["connected"], true, "{port}");
        assert_eq!(r["fallback"], false, "{port}");
    }
    assert!(d.stop().success());
}

#[test]
fn the_per_source_relay_rate_limit_engages() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("relayrate");
    let s = Scratch::new();
    let _t = socat_service(
        &net.target,
        "tcp",
        9090,
        &s.script("tgt", "echo TARGET-BANNER\ncat"),
    );
    let rest = proxy_map(&s, "rl", "tcp", "7701", &net.tg_v4, "target_port = 9090");
    let relay = "source_rate = 0.01\nsource_burst = 1";
    let mut d = Daemon::start(&net, &config("7701", "", relay, &rest));
    let out = nc_once(&net, &net.hp_v4, 7701, b"first\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TARGET-BANNER\nfirst\n"
    );
    let out = nc_once(&net, &net.hp_v4, 7701, b"second\n");
    assert_eq!(out.stdout, CANNED, "the burst is spent: {out:?}");
    assert_eq!(
        s.peers("tgt").len(),
        1,
        "the second never reached the target"
    );
    let e = event_for(&d, 7701, "tcp", b"second\n");
    assert_fallback(&e, "proxy", "rate_limited");
    assert!(d.stop().success());
}

#[test]
fn the_global_relay_cap_engages_and_frees_its_slot() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("relaycap");
    let s = Scratch::new();
    let _t = socat_service(
        &net.target,
        "tcp",
        9090,
        &s.script("tgt", "echo TARGET-BANNER\ncat"),
    );
    let rest = proxy_map(&s, "cap", "tcp", "7702", &net.tg_v4, "target_port = 9090");
    let relay = "max_relays = 1\nidle_timeout = \"6s\"";
    let mut d = Daemon::start(&net, &config("7702", "", relay, &rest));
    // One relay held open for 3 s.
    let mut hold = net.background_attacker(&format!(
        "(printf hold; sleep 3) | socat -t 1 - TCP:{}",
        host_port(&net.hp_v4, 7702)
    ));
    assert!(
        wait_until(Duration::from_secs(5), || s.peers("tgt").len() == 1),
        "the first relay reached the target"
    );
    let out = nc_once(&net, &net.hp_v6, 7702, b"over-the-cap\n");
    assert_eq!(out.stdout, CANNED, "{out:?}");
    let e = event_for(&d, 7702, "tcp", b"over-the-cap\n");
    assert_fallback(&e, "proxy", "relay_cap");
    hold.wait();
    let held = event_for(&d, 7702, "tcp", b"hold");
    assert_eq!(held["honeytrap"]["relay"]["connected"], true);
    // The slot is released as the session task ends, just after its record.
    std::thread::sleep(Duration::from_millis(300));
    let out = nc_once(&net, &net.hp_v4, 7702, b"after\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TARGET-BANNER\nafter\n"
    );
    assert_eq!(s.peers("tgt").len(), 2);
    assert!(d.stop().success());
}

#[test]
fn udp_mirror_is_off_by_default() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("udpmirroroff");
    let s = Scratch::new();
    let _own = socat_service(
        &net.attacker,
        "udp",
        7801,
        &s.script("own", "echo OWNUDP\ncat >> @DATA@"),
    );
    let rest = mirror_rule(&s, "udp", "7801");
    // Private targets allowed, so only mirror_udp keeps it from mirroring.
    let mut d = Daemon::start(&net, &config("", "7801", "mirror_private = true", &rest));
    let probe = b"udp-mirror-probe-0123456789abcdef";
    let out = udp_once(&net, &net.hp_v4, 7801, 41801, probe);
    assert_eq!(out.stdout, CANNED, "served in normal mode: {out:?}");
    let e = event_for(&d, 7801, "udp", probe);
    assert_fallback(&e, "mirror", "mirror_udp_disabled");
    assert!(s.peers("own").is_empty(), "{:?}", s.peers("own"));
    assert!(d.stop().success());
}

#[test]
fn udp_mirror_when_enabled_reaches_the_attackers_own_service_within_the_reply_budget() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("udpmirror");
    let s = Scratch::new();
    let _own = socat_service(
        &net.attacker,
        "udp",
        7802,
        &s.script("own", "echo OWNUDP\ncat >> @DATA@"),
    );
    let rest = mirror_rule(&s, "udp", "7802");
    let relay = "mirror_private = true\nmirror_udp = true";
    let mut d = Daemon::start(&net, &config("", "7802", relay, &rest));
    for (hp, at, sport) in [
        (&net.hp_v4, &net.at_v4, 41802),
        (&net.hp_v6, &net.at_v6, 41803),
    ] {
        let probe = format!("udp-mirror-{sport}");
        let out = udp_once(&net, hp, 7802, sport, probe.as_bytes());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OWNUDP\n", "{out:?}");
        let e = event_for(&d, 7802, "udp", probe.as_bytes());
        assert_relayed(
            &e,
            &Relayed {
                kind: "mirror",
                map: None,
                host: None,
                ip: at,
                port: 7802,
                transport: "udp",
                sent: probe.as_bytes(),
                received: b"OWNUDP\n",
            },
        );
        assert!(
            s.peers("own").iter().any(|p| p.0 == ipa(hp)),
            "{:?}",
            s.peers("own")
        );
    }
    assert_eq!(s.data("own"), b"udp-mirror-41802udp-mirror-41803");
    // One byte in earns at most one byte back: the 7-byte reply is withheld.
    let out = udp_once(&net, &net.hp_v4, 7802, 41804, b"x");
    assert!(out.stdout.is_empty(), "no reflection: {:?}", out.stdout);
    let e = event_for(&d, 7802, "udp", b"x");
    assert_eq!(e["destination"]["bytes"], 0, "{e:#}");
    assert!(d.stop().success());
}

#[test]
fn relayed_bytes_count_against_read_limit_in_both_directions() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("relaylimit");
    let s = Scratch::new();
    let _flood = socat_service(
        &net.target,
        "tcp",
        9100,
        &s.script("flood", "head -c 200000 /dev/zero"),
    );
    let _sink = socat_service(&net.target, "tcp", 9101, &s.script("sink", "cat >> @DATA@"));
    let rest = proxy_map(&s, "flood", "tcp", "7901", &net.tg_v4, "target_port = 9100")
        + &proxy_map(&s, "sink", "tcp", "7902", &net.tg_v4, "target_port = 9101");
    let mut text = config("7901, 7902", "", "", &rest);
    text = text.replace(
        "read_timeout = \"300ms\"",
        "read_timeout = \"300ms\"\nread_limit = 1000",
    );
    let mut d = Daemon::start(&net, &text);

    // The target floods: the attacker gets at most read_limit of it.
    let out = net.attack(
        "socat",
        &[
            "-t",
            "2",
            "-",
            &format!("TCP:{}", host_port(&net.hp_v4, 7901)),
        ],
        b"",
        8,
    );
    assert!(
        out.stdout.len() <= 1000,
        "{} bytes relayed",
        out.stdout.len()
    );
    let e = event_for(&d, 7901, "tcp", b"");
    assert_eq!(e["honeytrap"]["end_reason"], "read_limit", "{e:#}");
    let got = e["honeytrap"]["relay"]["bytes_received"].as_u64().unwrap();
    assert!(got > 0 && got <= 1000, "{got}");

    // The attacker floods: the target gets at most read_limit of it.
    let big = vec![b'A'; 5000];
    let _ = net.attack(
        "socat",
        &[
            "-t",
            "2",
            "-",
            &format!("TCP:{}", host_port(&net.hp_v4, 7902)),
        ],
        &big,
        8,
    );
    assert!(
        wait_until(Duration::from_secs(10), || d
            .events()
            .iter()
            .any(|e| e["destination"]["port"] == 7902)),
        "{}",
        d.log()
    );
    let e = d
        .events()
        .into_iter()
        .find(|e| e["destination"]["port"] == 7902)
        .unwrap();
    assert_eq!(e["honeytrap"]["end_reason"], "read_limit", "{e:#}");
    let sent = e["honeytrap"]["relay"]["bytes_sent"].as_u64().unwrap();
    assert!(sent > 0 && sent <= 1000, "{sent}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.data("sink").len() <= 1000,
        "{} bytes reached the target",
        s.data("sink").len()
    );
    assert!(d.stop().success());
}

#[test]
fn relay_config_is_accepted_and_mistakes_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[relay]\nconnect_timeout = \"2s\"\nidle_timeout = \"30s\"\nmax_relays = 7\nsource_rate = 2.0\nsource_burst = 3\nmirror_udp = false\nmirror_private = true\nudp_reply_ratio = 1.0\n\n[[ports.rule]]\nprotocol = [\"tcp\", \"udp\"]\nports = [7, \"9000-9100\"]\nmode = \"mirror\"\n\n[proxy.web]\nprotocol = \"tcp\"\nports = [80, \"8000-8100\"]\ntarget_host = \"10.0.0.5\"\ntarget_port = 8080\n\n[proxy.dns]\nprotocol = [\"tcp\", \"udp\"]\nports = [53]\ntarget_host = \"dns.example\"\ntarget_protocol = \"udp\"\n";
    let out = check_config(dir.path(), "good.toml", good);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a full relay config is accepted: {err}"
    );
    let v: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("TOML");
    assert_eq!(v["relay"]["max_relays"].as_integer(), Some(7), "{v}");
    assert_eq!(v["relay"]["mirror_private"].as_bool(), Some(true));
    assert_eq!(v["proxy"]["web"]["target_port"].as_integer(), Some(8080));
    assert_eq!(v["proxy"]["dns"]["target_protocol"].as_str(), Some("udp"));

    let map = "[proxy.web]\nprotocol = \"tcp\"\nports = [8080]\ntarget_host = \"10.0.0.5\"\n";
    let cases: [(&str, String, &[&str]); 7] = [
        (
            "proxy in a rule",
            "[[ports.rule]]\nprotocol = \"tcp\"\nports = [80]\nmode = \"proxy\"\n".into(),
            &["ports.rule[0].mode"],
        ),
        ("proxy as the default", "[ports]\ndefault_mode = \"proxy\"\n".into(), &["ports.default_mode"]),
        (
            "a map over a rule",
            format!("[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"8000-8100\"]\nmode = \"mirror\"\n\n{map}"),
            &["proxy.web", "ports.rule[0]"],
        ),
        (
            "a map over a map",
            format!("{map}\n[proxy.other]\nprotocol = [\"udp\", \"tcp\"]\nports = [\"8000-8090\"]\ntarget_host = \"10.0.0.6\"\n"),
            &["proxy.web", "proxy.other"],
        ),
        ("an unknown relay key", "[relay]\nmax_relay = 5\n".into(), &["max_relay"]),
        (
            "a bad target protocol",
            format!("{map}target_protocol = \"sctp\"\n"),
            &["proxy.web.target_protocol"],
        ),
        (
            "a map without a target",
            "[proxy.web]\nprotocol = \"tcp\"\nports = [8080]\n".into(),
            &["proxy.web", "target_host"],
        ),
    ];
    for (i, (what, text, keys)) in cases.iter().enumerate() {
        let out = check_config(dir.path(), &format!("bad{i}.toml"), text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit 2: {err}");
        for key in keys.iter() {
            assert!(err.contains(key), "{what}: the error names `{key}`: {err}");
        }
    }
}
