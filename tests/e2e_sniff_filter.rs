//! End-to-end: the sniff monitor's extra filter expression (`monitor.sniff.filter`).
//! An attempt whose RST / ICMP port unreachable the expression rejects starts no
//! server (the retry is refused too, and it is counted as `filtered`); one it keeps
//! is caught on the retry as usual. The meanings are pcap's on the outgoing packet:
//! `port` matches the RST's ports but never an ICMP error (it has none), `host`
//! matches the attacker as the destination of either.

mod support;

use std::time::Duration;
use support::{base_config, require_root, Daemon, NetPair};

/// The sniff monitor, nothing bound, a short read timeout, and `filter`.
fn config(filter: &str) -> String {
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    assert!(base.contains("kind = \"listen\""));
    format!(
        "{}[monitor.sniff]\nfilter = \"{filter}\"\n[limits]\nread_timeout = \"300ms\"\n",
        base.replace("kind = \"listen\"", "kind = \"sniff\"")
    )
}

/// nc -z: true when the connection was accepted.
fn probe(net: &NetPair, host: &str, port: u16) -> bool {
    net.attack("nc", &["-z", "-w", "1", host, &port.to_string()], b"", 4)
        .status
        .success()
}

/// Two attempts, both refused: the filter kept the sniffer from binding the port.
fn stays_closed(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    for n in 1..=2 {
        assert!(
            !probe(net, host, port),
            "attempt {n} on {host} {port} must be refused (filtered):\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// First attempt refused, the retry accepted.
fn caught_on_retry(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    assert!(
        !probe(net, host, port),
        "first attempt on {port} is refused"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        probe(net, host, port),
        "retry on {host} {port} must be accepted:\n{}",
        d.log()
    );
}

/// Two datagrams to `port`; returns the events recorded for it.
fn udp_twice(d: &Daemon, net: &NetPair, target: &str, port: u16) -> usize {
    for word in ["first", "second"] {
        let _ = net.attack(
            "socat",
            &["-T", "0.5", "-", &format!("UDP:{target}:{port}")],
            word.as_bytes(),
            4,
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(700));
    d.events()
        .iter()
        .filter(|e| e["destination"]["port"] == port)
        .count()
}

#[test]
fn a_port_filter_excludes_tcp_attempts_and_keeps_the_others() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sflport");
    let mut d = Daemon::start(&net, &config("not port 21011"));
    assert!(
        d.log().contains("filter=not port 21011"),
        "the start-up line names the filter:\n{}",
        d.log()
    );
    let hp = net.hp_v4.clone();
    stays_closed(&d, &net, &hp, 21011);
    caught_on_retry(&d, &net, &hp, 21012);
    // pcap's meaning on an ICMP port unreachable: it has no ports, so `not port
    // 21011` keeps it and UDP 21011 is caught on the second datagram.
    assert_eq!(udp_twice(&d, &net, &hp, 21011), 1, "{}", d.log());
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("sniff monitor stopped"), "{log}");
    assert!(
        log.contains(" filtered=2 "),
        "two RSTs of 21011 filtered: {log}"
    );
    assert!(log.contains("servers_started=2"), "{log}");
    assert!(log.contains("sniff_filtered=2"), "{log}");
}

#[test]
fn a_host_filter_excludes_one_attacker_address() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sflhost");
    let mut d = Daemon::start(&net, &config(&format!("not dst host {}", net.at_v4)));
    // The attacker's IPv4 address is excluded, over TCP (the RST's destination)
    // and UDP (the ICMP error's destination) alike ...
    let hp4 = net.hp_v4.clone();
    stays_closed(&d, &net, &hp4, 21021);
    assert_eq!(udp_twice(&d, &net, &hp4, 21023), 0, "{}", d.log());
    // ... its IPv6 address is not.
    let hp6 = net.hp_v6.clone();
    caught_on_retry(&d, &net, &hp6, 21022);
    assert_eq!(
        udp_twice(&d, &net, &format!("[{hp6}]"), 21024),
        1,
        "{}",
        d.log()
    );
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains(" filtered=4 "), "{log}");
    assert!(log.contains("servers_started=2"), "{log}");
}

#[test]
fn an_unsupported_filter_is_a_located_configuration_error() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sflbad");
    let mut d = Daemon::spawn(&net, &config("tcp port 80 and ether host 1:2:3:4:5:6"));
    let status = d.wait_exit(Duration::from_secs(15));
    assert_ne!(status.code(), Some(0), "{}", d.log());
    let log = d.log();
    assert!(log.contains("monitor.sniff.filter"), "{log}");
    assert!(log.contains("column 17, `ether`"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
