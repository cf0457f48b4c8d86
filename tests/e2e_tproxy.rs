//! End-to-end: the `tproxy` monitor. The honeypot namespace gets the documented
//! TPROXY rules and policy routing (iptables and ip6tables, `ip rule` / `ip route`
//! table 100); honeytrap runs there with `kind = "tproxy"` and no listen ports. Every
//! TCP connection and UDP datagram to any port reaches its one transparent listener
//! and UDP socket; the original destination is recorded, and UDP replies leave from
//! it.

mod support;

use support::clients::{event_with, nc_once};

use std::time::{Duration, Instant};
use support::firewall::{require_iptables, tproxy_rules};
use support::{base_config, require_root, Daemon, NetPair};

/// The monitor's port in these tests (the default).
const PORT: u16 = 65499;

/// The harness's base config with `kind = "tproxy"`, no listen ports and a short
/// read timeout; `extra` is appended (sections not in the base).
fn config(extra: &str) -> String {
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    assert!(base.contains("kind = \"listen\""));
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n{extra}",
        base.replace("kind = \"listen\"", "kind = \"tproxy\"")
    )
}

/// Namespaces with the TPROXY rules (iptables checked before anything else).
fn setup(tag: &str) -> Option<NetPair> {
    if !require_root() {
        return None;
    }
    require_iptables();
    let net = NetPair::new(tag);
    tproxy_rules(&net, PORT);
    Some(net)
}

/// Three distinct pseudo-random high ports (never the monitor's own).
fn random_ports() -> Vec<u16> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let mut ports = Vec::new();
    while ports.len() < 3 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let p = 20000 + (x >> 8) as u16 % 40000;
        if p != PORT && !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// The first attempt succeeds and its data is recorded by the tproxy monitor with
/// the original destination.
fn tcp_first_try_caught(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    let word = format!("hello tproxy {host} {port}\n");
    let out = nc_once(net, host, port, word.as_bytes());
    assert!(
        out.status.success(),
        "first attempt on {host} {port} must succeed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let e = event_with(d, port, word.as_bytes());
    assert_eq!(e["honeytrap"]["monitor"], "tproxy");
    assert_eq!(e["network"]["transport"], "tcp");
    assert_eq!(e["destination"]["ip"], host);
    assert_eq!(e["destination"]["port"], port);
}

#[test]
fn tcp_to_any_port_is_caught_over_ipv4_and_ipv6() {
    let Some(net) = setup("tptcp") else { return };
    let mut d = Daemon::start(&net, &config(""));
    assert!(d.log().contains("diverted by TPROXY"), "{}", d.log());
    let mut ports = random_ports();
    ports.push(80);
    for port in &ports {
        tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), *port);
        tcp_first_try_caught(&d, &net, &net.hp_v6.clone(), *port);
    }
    let events = d.events();
    assert_eq!(events.len(), 8, "{events:?}");
    assert!(events
        .iter()
        .any(|e| e["network"]["type"] == "ipv6" && e["destination"]["port"] == 80));
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("tproxy monitor stopped"), "{log}");
    assert!(log.contains("tcp_connections=8"), "{log}");
    // Nothing is bound per port.
    assert!(!log.contains("server started"), "{log}");
}

/// A SIP OPTIONS request (larger than the built-in SIP reply, so it earns it).
fn sip_options(to: &str, from: &str) -> String {
    format!(
        "OPTIONS sip:100@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5061;branch=z9hG4bK-524287-1---a1b2c3d4e5f60708\r\nMax-Forwards: 70\r\nTo: <sip:100@{to}>\r\nFrom: \"sipvicious\" <sip:100@1.1.1.1>;tag=6130396534383264313363340131383032393231303035\r\nCall-ID: 1029384756473829@{from}\r\nCSeq: 1 OPTIONS\r\nContact: <sip:100@{from}:5061>\r\nAccept: application/sdp\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Send a SIP OPTIONS to 5060 on `host` from `sport`; socat's UDP client takes
/// replies only from the address and port it sent to, so a reply proves its source
/// is the original destination.
fn udp_reply_from_original_destination(d: &Daemon, net: &NetPair, host: &str, sport: u16) {
    let (target, from) = if host.contains(':') {
        (format!("[{host}]"), net.at_v6.clone())
    } else {
        (host.to_string(), net.at_v4.clone())
    };
    let options = sip_options(host, &from);
    let out = net.attack(
        "socat",
        &[
            "-t",
            "3",
            "-",
            &format!("UDP:{target}:5060,sourceport={sport}"),
        ],
        options.as_bytes(),
        8,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("SIP/2.0 200 OK"),
        "no reply from {host}:5060: {out:?}\n{}",
        d.log()
    );
    let e = event_with(d, 5060, options.as_bytes());
    assert_eq!(e["honeytrap"]["monitor"], "tproxy");
    assert_eq!(e["network"]["transport"], "udp");
    assert_eq!(e["destination"]["ip"], host);
    assert_eq!(e["source"]["port"], sport);
    assert_eq!(e["source"]["ip"], from.as_str());
}

#[test]
fn udp_is_caught_and_answered_from_the_original_destination() {
    let Some(net) = setup("tpudp") else { return };
    let mut d = Daemon::start(&net, &config(""));
    udp_reply_from_original_destination(&d, &net, &net.hp_v4.clone(), 41000);
    udp_reply_from_original_destination(&d, &net, &net.hp_v6.clone(), 41001);
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("udp_sessions=2"), "{log}");
    assert!(log.contains("reply_sockets=2"), "{log}");
    assert!(log.contains("errors=0"), "{log}");
}

#[test]
fn an_ignored_port_is_closed_without_a_record() {
    let Some(net) = setup("tpign") else { return };
    let rule = "[[ports.rule]]\nprotocol = \"tcp\"\nports = [22005]\nmode = \"ignore\"\n\
                [[ports.rule]]\nprotocol = \"udp\"\nports = [22006]\nmode = \"ignore\"\n";
    let mut d = Daemon::start(&net, &config(rule));
    let start = Instant::now();
    let out = nc_once(&net, &net.hp_v4, 22005, b"ignored\n");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "closed at once");
    let _ = net.attack(
        "socat",
        &["-T", "0.5", "-", &format!("UDP:{}:22006", net.hp_v4)],
        b"ignored",
        4,
    );
    // A port that is not ignored still works beside them.
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 22007);
    assert!(d.events().iter().all(|e| e["destination"]["port"] == 22007));
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("ignored=2"), "{log}");
    assert!(log.contains("tcp_connections=2"), "{log}");
}

#[test]
fn after_dropping_root_it_keeps_net_admin_and_works() {
    let Some(net) = setup("tppriv") else { return };
    let cfg = config("").replace("[process]\n", "[process]\nuser = \"nobody\"\n");
    let mut d = Daemon::start(&net, &cfg);
    let status = support::daemon::proc_status(d.pid());
    let cap = |field: &str| support::daemon::capability_set(&status, field);
    // CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12), nothing else.
    assert_eq!(cap("CapEff:"), (1 << 10) | (1 << 12), "{status}");
    // The UDP reply socket is made after the drop: it needs CAP_NET_ADMIN.
    udp_reply_from_original_destination(&d, &net, &net.hp_v4.clone(), 41002);
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 21);
    assert!(d.stop().success());
    assert!(d.log().contains("errors=0"), "{}", d.log());
}
