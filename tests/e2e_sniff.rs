//! End-to-end: the `sniff` monitor. honeytrap runs with nothing bound in the honeypot
//! namespace; a first attempt on a closed port is refused by the kernel (TCP RST, or
//! ICMP port unreachable for UDP), the sniffer sees that answer and binds the port,
//! and the attacker's retry is caught and recorded.

mod support;

use support::clients::payload;

use std::os::unix::process::CommandExt as _;
use std::time::Duration;
use support::{base_config, require_root, Daemon, NetPair};

/// The harness's base config with the given monitor kind, no listen ports and a
/// short read timeout; `extra` is appended (sections not in the base).
fn config(kind: &str, extra: &str) -> String {
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    assert!(base.contains("kind = \"listen\""));
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n{extra}",
        base.replace("kind = \"listen\"", &format!("kind = \"{kind}\""))
    )
}

/// nc -z: true when the connection was accepted.
fn probe(net: &NetPair, host: &str, port: u16) -> bool {
    net.attack("nc", &["-z", "-w", "1", host, &port.to_string()], b"", 4)
        .status
        .success()
}

/// First try refused, retry accepted, then a session with data is recorded by the
/// sniff monitor.
fn tcp_refused_then_caught(d: &Daemon, net: &NetPair, host: &str, target: &str, port: u16) {
    assert!(
        !probe(net, host, port),
        "first attempt on {port} must be refused"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        probe(net, host, port),
        "retry on {port} must be accepted:\n{}",
        d.log()
    );
    let word = format!("hello sniff {port}\n");
    let _ = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{target}:{port}")],
        word.as_bytes(),
        5,
    );
    let mut found = None;
    support::daemon::wait_until(Duration::from_secs(10), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["destination"]["port"] == port && payload(e) == word.as_bytes());
        found.is_some()
    });
    let e = found.unwrap_or_else(|| panic!("no event for {port}:\n{}", d.log()));
    assert_eq!(e["honeytrap"]["monitor"], "sniff");
    assert_eq!(e["network"]["transport"], "tcp");
    assert_eq!(e["destination"]["ip"], host);
}

#[test]
fn tcp_retry_after_rst_is_caught_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffv4");
    let mut d = Daemon::start(&net, &config("sniff", ""));
    assert!(d.log().contains("sniffing for outgoing"), "{}", d.log());
    tcp_refused_then_caught(&d, &net, &net.hp_v4.clone(), &net.hp_v4, 21001);
    let v6 = net.hp_v6.clone();
    tcp_refused_then_caught(&d, &net, &v6, &format!("[{v6}]"), 21002);
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("sniff monitor stopped"), "{log}");
    assert!(log.contains("servers_started=2"), "{log}");
}

#[test]
fn udp_retry_after_port_unreachable_is_caught_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffudp");
    let mut d = Daemon::start(&net, &config("sniff", ""));
    for (target, port) in [
        (net.hp_v4.clone(), 21003u16),
        (format!("[{}]", net.hp_v6), 21004),
    ] {
        let send = |word: &str| {
            let _ = net.attack(
                "socat",
                &["-T", "0.5", "-", &format!("UDP:{target}:{port}")],
                word.as_bytes(),
                4,
            );
        };
        send("first");
        std::thread::sleep(Duration::from_millis(300));
        send("second");
    }
    let events = d.wait_events(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let events = if d.events().len() > events.len() {
        d.events()
    } else {
        events
    };
    for port in [21003u16, 21004] {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["destination"]["port"] == port)
            .collect();
        assert_eq!(mine.len(), 1, "{port}: {events:#?}\n{}", d.log());
        assert_eq!(payload(mine[0]), b"second", "the first datagram is lost");
        assert_eq!(mine[0]["honeytrap"]["monitor"], "sniff");
        assert_eq!(mine[0]["network"]["transport"], "udp");
    }
    let v6 = events
        .iter()
        .find(|e| e["destination"]["port"] == 21004)
        .unwrap();
    assert_eq!(v6["network"]["type"], "ipv6");
    assert!(d.stop().success());
    assert!(d.log().contains("port_unreachables=2"), "{}", d.log());
}

#[test]
fn an_ignored_port_is_never_bound_by_the_sniffer() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffign");
    let rule = "[[ports.rule]]\nprotocol = \"tcp\"\nports = [21005]\nmode = \"ignore\"\n";
    let mut d = Daemon::start(&net, &config("sniff", rule));
    for _ in 0..3 {
        assert!(
            !probe(&net, &net.hp_v4, 21005),
            "ignored port must stay closed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(d.events().is_empty());
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("ignored_ports=3"), "{log}");
    assert!(log.contains("servers_started=0"), "{log}");
}

#[test]
fn auto_chooses_sniff_when_root() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffauto");
    let mut d = Daemon::start(&net, &config("auto", ""));
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("monitor chosen"))
        .unwrap_or_else(|| panic!("no `monitor chosen` line:\n{log}"));
    assert!(
        line.contains("monitor=\"sniff\"") || line.contains("monitor=sniff"),
        "{line}"
    );
    assert!(
        line.contains("auto") && line.contains("CAP_NET_RAW"),
        "{line}"
    );
    // And it works: refused, then caught.
    assert!(!probe(&net, &net.hp_v4, 21006));
    std::thread::sleep(Duration::from_millis(200));
    assert!(probe(&net, &net.hp_v4, 21006), "{}", d.log());
    assert!(d.stop().success());
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffif");
    let mut d = Daemon::spawn(
        &net,
        &config("sniff", "[monitor.sniff]\ninterfaces = [\"nosuch0\"]\n"),
    );
    let status = d.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("no such interface `nosuch0`"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn an_interface_list_and_promiscuous_mode_work() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffpromisc");
    // Only the loopback interface is watched: attempts over the veth are not seen,
    // attempts on 127.0.0.1 from inside the honeypot namespace are.
    let mut d = Daemon::start(
        &net,
        &config(
            "sniff",
            "[monitor.sniff]\ninterfaces = [\"lo\"]\npromiscuous = true\n",
        ),
    );
    assert!(!probe(&net, &net.hp_v4, 21007));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!probe(&net, &net.hp_v4, 21007), "veth is not watched");
    let local = |port: &str| {
        support::daemon::run(
            {
                let mut c = net.in_honeypot("nc");
                c.args(["-z", "-w", "1", "127.0.0.1", port]);
                c
            },
            Duration::from_secs(4),
        )
        .status
        .success()
    };
    assert!(!local("21008"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(local("21008"), "{}", d.log());
    assert!(d.stop().success());
}

#[test]
fn after_dropping_root_the_sniffer_keeps_net_raw_and_works() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffpriv");
    let cfg = config("sniff", "").replace("[process]\n", "[process]\nuser = \"nobody\"\n");
    let mut d = Daemon::start(&net, &cfg);
    let status = support::daemon::proc_status(d.pid());
    let cap = |field: &str| support::daemon::capability_set(&status, field);
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12, for SO_RCVBUFFORCE) and
    // CAP_NET_RAW (13), nothing else.
    let want = (1 << 10) | (1 << 12) | (1 << 13);
    assert_eq!(cap("CapEff:"), want, "{status}");
    assert_eq!(cap("CapPrm:"), want, "{status}");
    // Port 21 needs CAP_NET_BIND_SERVICE for the server the sniffer starts.
    assert!(!probe(&net, &net.hp_v4, 21));
    std::thread::sleep(Duration::from_millis(200));
    assert!(probe(&net, &net.hp_v4, 21), "{}", d.log());
    assert!(d.stop().success());
}

/// Dynamic servers started by the sniffer close after `conn_timeout` without a new
/// connection, and the least recently used one is closed at `max_listeners`.
#[test]
fn dynamic_servers_idle_out_and_are_evicted_lru() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffidle");
    let mut d = Daemon::start(
        &net,
        &config("sniff", "conn_timeout = \"2s\"\nmax_listeners = 2\n"),
    );
    let host = net.hp_v4.clone();
    for port in [23001u16, 23002] {
        assert!(!probe(&net, &host, port));
        std::thread::sleep(Duration::from_millis(200));
        assert!(probe(&net, &host, port), "{port} bound on demand");
    }
    // A third port: the cap of 2 closes the least recently used server (23001).
    assert!(!probe(&net, &host, 23003));
    std::thread::sleep(Duration::from_millis(200));
    assert!(probe(&net, &host, 23003));
    assert!(
        d.wait_log(
            "closed the least recently used server",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    // 23002 is still served; then after 2 s without connections everything closes.
    assert!(probe(&net, &host, 23002));
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!probe(&net, &host, 23002), "closed after conn_timeout");
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("listeners_evicted=1"), "{log}");
    assert!(log.contains("listeners_idle_closed="), "{log}");
}

/// `--monitor` on the command line overrides monitor.kind without editing the file.
#[test]
fn the_command_line_chooses_the_monitor() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffcli");
    // The file says listen (with no ports); the command line says sniff.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.toml");
    std::fs::write(
        &path,
        config("listen", "").replace("@DATA@", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    let log = dir.path().join("log");
    let _daemon = support::netns::Background(
        net.in_honeypot(support::daemon::BIN)
            .args(["run", "--monitor", "sniff", "-c"])
            .arg(&path)
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        support::daemon::wait_until(Duration::from_secs(10), || read().contains("ready")),
        "{}",
        read()
    );
    assert!(
        read().contains("monitor chosen monitor=\"sniff\""),
        "{}",
        read()
    );
    assert!(read().contains("set on the command line"), "{}", read());
    // It really sniffs: the retry on an unbound port is caught.
    assert!(!probe(&net, &net.hp_v4, 24001));
    std::thread::sleep(Duration::from_millis(200));
    assert!(probe(&net, &net.hp_v4, 24001), "{}", read());
    drop(_daemon);

    let out = std::process::Command::new(support::daemon::BIN)
        .args(["check-config", "--monitor", "nfqueue", "--queue", "7", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(v["monitor"]["kind"].as_str(), Some("nfqueue"));
    assert_eq!(v["monitor"]["nfqueue"]["queue"].as_integer(), Some(7));
}

/// `n` blocking connects, one per port from `first`, from a thread that joined the
/// attacker namespace; returns how many were refused. Bounded: 1 s per connect and
/// 30 s in all.
fn refused_burst(net: &NetPair, host: &str, first: u16, n: u16) -> usize {
    use std::os::fd::AsRawFd as _;
    let ns = std::fs::File::open(format!("/run/netns/{}", net.attacker)).expect("netns file");
    let host: std::net::IpAddr = host.parse().unwrap();
    std::thread::spawn(move || {
        // SAFETY: a valid namespace descriptor; setns only moves this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let start = std::time::Instant::now();
        let mut refused = 0;
        for port in first..first + n {
            assert!(start.elapsed() < Duration::from_secs(30), "burst too slow");
            let to = std::net::SocketAddr::new(host, port);
            match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                _ => {}
            }
        }
        refused
    })
    .join()
    .expect("burst thread")
}

/// `key=N` of the summary line (`sniff monitor stopped`).
fn summary(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("sniff monitor stopped"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    field(line, key).unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Distinct TCP ports in `range` the honeypot namespace listens on.
fn listening(net: &NetPair, range: std::ops::Range<u16>) -> usize {
    let mut c = net.in_honeypot("ss");
    c.args(["-Htln"]).stdout(std::process::Stdio::piped());
    let out = support::daemon::run(c, Duration::from_secs(5));
    let ports: std::collections::HashSet<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .filter(|p| range.contains(p))
        .collect();
    ports.len()
}

/// With the smallest `rcvbuf` and the daemon stopped (SIGSTOP) during a burst of
/// 1,000 refused connects, the kernel drops most RSTs: they are counted (exactly:
/// seen + dropped = sent), warned about, and the monitor goes on working.
#[test]
fn kernel_drops_are_counted_and_warned_and_the_monitor_still_works() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffdrop");
    let mut d = Daemon::start(
        &net,
        &config("sniff", "[monitor.sniff]\nrcvbuf = \"64KiB\"\n"),
    );
    assert!(d.log().contains("rcvbuf=65536"), "{}", d.log());
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let refused = refused_burst(&net, &net.hp_v4, 30000, 1000);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(refused, 1000, "every first try is refused");
    assert!(
        d.wait_log(
            "packets dropped by the kernel: raise monitor.sniff.rcvbuf",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    // The monitor still works: a new port is caught on the retry.
    assert!(!probe(&net, &net.hp_v4, 31500));
    std::thread::sleep(Duration::from_millis(200));
    assert!(probe(&net, &net.hp_v4, 31500), "{}", d.log());
    assert!(d.stop().success());
    let log = d.log();
    let (seen, dropped) = (summary(&log, "tcp_resets"), summary(&log, "dropped"));
    assert!(dropped > 0, "{log}");
    assert!(seen > 1, "{log}");
    // The burst and the one refused probe: nothing is lost uncounted.
    assert_eq!(
        seen + dropped + summary(&log, "unread_at_stop"),
        1001,
        "{log}"
    );
    // The warnings name every drop.
    let warned: u64 = log
        .lines()
        .filter(|l| l.contains("packets dropped by the kernel"))
        .filter_map(|l| field(l, "dropped"))
        .sum();
    assert_eq!(warned, dropped, "{log}");
}

/// With the default `rcvbuf`, a burst of 1,000 refused first tries queued while the
/// daemon does not read at all (SIGSTOP) fits: 1,000 servers, nothing dropped. (The
/// kernel's default buffer, 212,992 bytes, holds about 250 of these RSTs.)
#[test]
fn the_default_rcvbuf_holds_a_burst_of_1000_refused_first_tries() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffburst");
    let mut d = Daemon::start(&net, &config("sniff", ""));
    assert!(d.log().contains("rcvbuf=8388608"), "{}", d.log());
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let refused = refused_burst(&net, &net.hp_v4, 32000, 1000);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(refused, 1000, "every first try is refused");
    assert!(
        support::daemon::wait_until(Duration::from_secs(20), || listening(&net, 32000..33000)
            == 1000),
        "{} ports bound:\n{}",
        listening(&net, 32000..33000),
        d.log()
    );
    assert!(d.stop().success());
    let log = d.log();
    assert_eq!(summary(&log, "tcp_resets"), 1000, "{log}");
    assert_eq!(summary(&log, "servers_started"), 1000, "{log}");
    assert_eq!(summary(&log, "dropped"), 0, "{log}");
    assert!(!log.contains("packets dropped by the kernel"), "{log}");
}

/// A stop while RSTs are still queued: they are counted (`unread_at_stop`), so what
/// was seen, dropped and left unread adds up to what was sent.
#[test]
fn rsts_still_queued_at_stop_are_counted() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("sniffunread");
    let mut d = Daemon::start(&net, &config("sniff", ""));
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let refused = refused_burst(&net, &net.hp_v4, 34000, 2000);
    assert_eq!(refused, 2000, "every first try is refused");
    // SIGTERM is taken when the process continues, with the burst still queued.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    let log = d.log();
    let (seen, dropped, unread) = (
        summary(&log, "tcp_resets"),
        summary(&log, "dropped"),
        summary(&log, "unread_at_stop"),
    );
    eprintln!("seen {seen}, unread at stop {unread}");
    assert_eq!(dropped, 0, "{log}");
    assert_eq!(seen + unread, 2000, "{log}");
}
