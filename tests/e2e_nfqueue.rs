//! End-to-end: the `nfqueue` monitor. The honeypot namespace gets the documented
//! NFQUEUE rules (iptables and ip6tables, `--queue-bypass`); honeytrap runs there with
//! nothing bound. A client's very first attempt on a port is caught: the monitor binds
//! the port before it accepts the queued SYN or datagram.

mod support;

use support::clients::{event_with, nc_once, real_service};

use std::process::Output;
use std::time::{Duration, Instant};
use support::firewall::{nfqueue_rules, require_iptables};
use support::{base_config, require_root, Daemon, NetPair};

/// The harness's base config with `kind = "nfqueue"`, no listen ports and a short
/// read timeout; `extra` is appended (sections not in the base).
fn config(extra: &str) -> String {
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    assert!(base.contains("kind = \"listen\""));
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n{extra}",
        base.replace("kind = \"listen\"", "kind = \"nfqueue\"")
    )
}

/// Namespaces with the NFQUEUE rules on queue 0 (checked before anything else).
fn setup(tag: &str) -> Option<NetPair> {
    if !require_root() {
        return None;
    }
    require_iptables();
    let net = NetPair::new(tag);
    nfqueue_rules(&net, 0);
    Some(net)
}

/// The first attempt succeeds and its data is recorded by the nfqueue monitor.
fn tcp_first_try_caught(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    let word = format!("hello nfqueue {port}\n");
    let out = nc_once(net, host, port, word.as_bytes());
    assert!(
        out.status.success(),
        "first attempt on {host} {port} must succeed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let e = event_with(d, port, word.as_bytes());
    assert_eq!(e["honeytrap"]["monitor"], "nfqueue");
    assert_eq!(e["network"]["transport"], "tcp");
    assert_eq!(e["destination"]["ip"], host);
}

#[test]
fn tcp_first_attempt_is_caught_over_ipv4_and_ipv6() {
    let Some(net) = setup("nfqtcp") else { return };
    let mut d = Daemon::start(&net, &config(""));
    assert!(d.log().contains("reading new TCP SYNs"), "{}", d.log());
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 22001);
    tcp_first_try_caught(&d, &net, &net.hp_v6.clone(), 22002);
    let v6 = d
        .events()
        .into_iter()
        .find(|e| e["destination"]["port"] == 22002)
        .unwrap();
    assert_eq!(v6["network"]["type"], "ipv6");
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("nfqueue monitor stopped"), "{log}");
    assert!(log.contains("servers_started=2"), "{log}");
    assert!(log.contains("overflows=0"), "{log}");
    assert!(!log.contains("was not found"), "{log}");
}

#[test]
fn udp_first_datagram_is_caught_over_ipv4_and_ipv6() {
    let Some(net) = setup("nfqudp") else { return };
    let mut d = Daemon::start(&net, &config(""));
    for (target, port) in [
        (net.hp_v4.clone(), 22003u16),
        (format!("[{}]", net.hp_v6), 22004),
    ] {
        let _ = net.attack(
            "socat",
            &["-T", "0.5", "-", &format!("UDP:{target}:{port}")],
            b"first",
            4,
        );
    }
    for port in [22003u16, 22004] {
        let e = event_with(&d, port, b"first");
        assert_eq!(e["honeytrap"]["monitor"], "nfqueue");
        assert_eq!(e["network"]["transport"], "udp");
    }
    assert!(d.stop().success());
    assert!(d.log().contains("udp_datagrams=2"), "{}", d.log());
}

#[test]
fn an_ignored_port_is_refused_as_without_honeytrap() {
    let Some(net) = setup("nfqign") else { return };
    let rule = "[[ports.rule]]\nprotocol = \"tcp\"\nports = [22005]\nmode = \"ignore\"\n";
    let mut d = Daemon::start(&net, &config(rule));
    for _ in 0..2 {
        let start = Instant::now();
        let out = nc_once(&net, &net.hp_v4, 22005, b"x");
        assert!(!out.status.success(), "ignored port must stay closed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused"), "refused (RST), not dropped: {err}");
        assert!(start.elapsed() < Duration::from_secs(2), "refused at once");
    }
    assert!(d.events().is_empty());
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("ignored_ports=2"), "{log}");
    assert!(log.contains("servers_started=0"), "{log}");
}

#[test]
fn a_real_service_keeps_its_port() {
    let Some(net) = setup("nfqreal") else { return };
    let _svc = real_service(&net, 22006);
    let mut d = Daemon::start(&net, &config(""));
    for _ in 0..2 {
        let out = nc_once(&net, &net.hp_v4, 22006, b"");
        assert!(out.status.success(), "{}", d.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    }
    // The honeypot still catches another port meanwhile.
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 22007);
    assert!(d.events().iter().all(|e| e["destination"]["port"] != 22006));
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("unavailable=2"), "{log}");
}

#[test]
fn simultaneous_syns_to_a_new_port_all_succeed() {
    let Some(net) = setup("nfqpar") else { return };
    let mut d = Daemon::start(&net, &config(""));
    let host = net.hp_v4.clone();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (net, host) = (&net, &host);
                s.spawn(move || nc_once(net, host, 22008, format!("parallel {i}\n").as_bytes()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}\n{}",
        failed.len(),
        d.log()
    );
    let events = d.wait_events(20, Duration::from_secs(10));
    assert!(events
        .iter()
        .all(|e| e["destination"]["port"] == 22008 && e["honeytrap"]["monitor"] == "nfqueue"));
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("servers_started=1"), "{log}");
    assert!(log.contains("tcp_syns=20"), "{log}");
}

#[test]
fn killed_honeytrap_fails_open() {
    let Some(net) = setup("nfqkill") else { return };
    let _svc = real_service(&net, 22009);
    let mut d = Daemon::start(&net, &config(""));
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 22010);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    // Nobody reads the queue now: --queue-bypass lets packets through.
    let out = nc_once(&net, &net.hp_v4, 22009, b"");
    assert!(
        out.status.success(),
        "real service unreachable after kill -9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    // And a closed port is refused, as without honeytrap.
    let out = nc_once(&net, &net.hp_v4, 22011, b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

#[test]
fn after_dropping_root_it_keeps_net_admin_and_works() {
    let Some(net) = setup("nfqpriv") else { return };
    let cfg = config("").replace("[process]\n", "[process]\nuser = \"nobody\"\n");
    let mut d = Daemon::start(&net, &cfg);
    let status = support::daemon::proc_status(d.pid());
    let cap = |field: &str| support::daemon::capability_set(&status, field);
    // CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12), nothing else.
    assert_eq!(cap("CapEff:"), (1 << 10) | (1 << 12), "{status}");
    assert_eq!(cap("CapPrm:"), (1 << 10) | (1 << 12), "{status}");
    // Port 21 needs CAP_NET_BIND_SERVICE for the server the monitor starts.
    tcp_first_try_caught(&d, &net, &net.hp_v4.clone(), 21);
    assert!(d.stop().success());
    let log = d.log();
    assert!(!log.contains("was not found"), "{log}");
    assert!(
        !log.contains("cannot set the socket receive buffer"),
        "{log}"
    );
}
