//! End-to-end: the firewall manager (`[firewall] mode = "auto"`) with the `nfqueue`
//! and `tproxy` monitors. The honeypot namespace gets no hand-written rule: honeytrap
//! adds its `HONEYTRAP` chain (nfqueue: `filter`, jumped to from `INPUT`; tproxy:
//! `mangle`, jumped to from `PREROUTING`, plus the `ip rule` / local route of the
//! policy routing), IPv4 and IPv6, at start and removes them at exit. Every iptables
//! and ip command runs in the test's namespace.

mod support;

use support::clients::{event_with, nc_once, payload, real_service};

use std::process::{Output, Stdio};
use std::time::Duration;
use support::daemon::BIN;
use support::firewall::{
    honeypot_ip_show, honeypot_listing, honeypot_listing_in, require_iptables,
};
use support::{base_config, require_root, Daemon, NetPair};

/// nfqueue monitor, firewall auto; `extra` is appended to `[firewall]`.
fn config(firewall: &str) -> String {
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n[firewall]\nmode = \"auto\"\n{firewall}",
        base.replace("kind = \"listen\"", "kind = \"nfqueue\"")
    )
}

fn setup(tag: &str) -> Option<NetPair> {
    if !require_root() {
        return None;
    }
    require_iptables();
    Some(NetPair::new(tag))
}

/// The first attempt on `port` succeeds and is recorded by the nfqueue monitor.
fn first_try_caught(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    let word = format!("hello firewall {port}\n");
    let out = nc_once(net, host, port, word.as_bytes());
    assert!(
        out.status.success(),
        "first attempt on {host} {port} must succeed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
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
    assert_eq!(e["honeytrap"]["monitor"], "nfqueue");
}

/// The jumps to HONEYTRAP in INPUT, and the chain's rules (None: no chain).
fn state(net: &NetPair, v6: bool) -> (usize, Option<String>) {
    let input = honeypot_listing(net, v6, Some("INPUT")).expect("iptables -S INPUT");
    let jumps = input
        .lines()
        .filter(|l| l.contains("HONEYTRAP") || l.contains("honeytrap"))
        .count();
    (jumps, honeypot_listing(net, v6, Some("HONEYTRAP")))
}

/// Exactly one jump and the chain, IPv4 and IPv6; returns the IPv4 chain.
fn assert_installed(net: &NetPair, d: Option<&Daemon>) -> String {
    let mut v4 = String::new();
    for v6 in [false, true] {
        let (jumps, chain) = state(net, v6);
        let log = d.map(Daemon::log).unwrap_or_default();
        assert_eq!(jumps, 1, "v6={v6}: exactly one jump\n{log}");
        let chain = chain.unwrap_or_else(|| panic!("v6={v6}: no HONEYTRAP chain\n{log}"));
        assert!(chain.contains("--queue-bypass"), "{chain}");
        if !v6 {
            v4 = chain;
        }
    }
    v4
}

/// No chain, no jump, IPv4 and IPv6; and nothing else left in INPUT.
fn assert_removed(net: &NetPair, log: &str) {
    for v6 in [false, true] {
        let (jumps, chain) = state(net, v6);
        assert_eq!(jumps, 0, "v6={v6}: jump left behind\n{log}");
        assert!(
            chain.is_none(),
            "v6={v6}: chain left behind: {chain:?}\n{log}"
        );
        let all = honeypot_listing(net, v6, None).unwrap();
        assert!(!all.contains("NFQUEUE"), "{all}");
    }
}

#[test]
fn auto_rules_catch_the_first_attempt_and_go_away_on_sigterm() {
    let Some(net) = setup("fwauto") else { return };
    assert_removed(&net, "before start");
    let mut d = Daemon::start(&net, &config(""));
    assert!(d.log().contains("firewall rules applied"), "{}", d.log());
    assert_installed(&net, Some(&d));
    first_try_caught(&d, &net, &net.hp_v4.clone(), 23001);
    first_try_caught(&d, &net, &net.hp_v6.clone(), 23002);
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("firewall rules removed"), "{log}");
    assert_removed(&net, &log);
}

#[test]
fn after_sigkill_traffic_flows_and_a_restart_replaces_the_stale_set() {
    let Some(net) = setup("fwkill") else { return };
    let _svc = real_service(&net, 23010);
    let mut d = Daemon::start(&net, &config(""));
    first_try_caught(&d, &net, &net.hp_v4.clone(), 23011);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(!d.wait_exit(Duration::from_secs(10)).success());
    // The stale set is still there, and --queue-bypass lets packets through.
    assert_installed(&net, None);
    let out = nc_once(&net, &net.hp_v4, 23010, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    let out = nc_once(&net, &net.hp_v4, 23012, b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    // A restart replaces it: exactly one jump.
    let mut d = Daemon::start(&net, &config(""));
    assert_installed(&net, Some(&d));
    first_try_caught(&d, &net, &net.hp_v4.clone(), 23013);
    assert!(d.stop().success(), "{}", d.log());
    assert_removed(&net, &d.log());
}

#[test]
fn listening_ports_ssh_and_configured_ports_are_excluded() {
    let Some(net) = setup("fwexcl") else { return };
    let _svc = real_service(&net, 23020);
    let mut d = Daemon::start(
        &net,
        &config("ssh_ports = [2222]\nexclude_ports = [23021]\n"),
    );
    let chain = assert_installed(&net, Some(&d));
    for rule in [
        "-A HONEYTRAP -i lo -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 22 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 2222 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 23020 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 23021 -j RETURN",
        "-A HONEYTRAP -p udp -m udp --dport 23021 -j RETURN",
    ] {
        assert!(chain.contains(rule), "missing `{rule}`:\n{chain}");
    }
    let v6 = state(&net, true).1.unwrap();
    assert!(v6.contains("--dport 2222 -j RETURN"), "{v6}");
    // The real service answers; an excluded port with nothing on it is refused.
    for _ in 0..2 {
        let out = nc_once(&net, &net.hp_v4, 23020, b"");
        assert!(out.status.success(), "{}", d.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    }
    let out = nc_once(&net, &net.hp_v4, 23021, b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    assert!(d.events().is_empty(), "{:?}", d.events());
    assert!(d.stop().success());
    assert_removed(&net, &d.log());
}

/// `honeytrap firewall ARGS -c FILE` in the honeypot namespace.
fn firewall_cmd(net: &NetPair, config: &std::path::Path, args: &[&str]) -> Output {
    let out = support::daemon::run(
        {
            let mut c = net.in_honeypot(BIN);
            c.arg("firewall")
                .args(args)
                .arg("-c")
                .arg(config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c
        },
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "firewall {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn firewall_show_apply_remove() {
    let Some(net) = setup("fwcli") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("honeytrap.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        config("ssh_ports = [2200]\n").replace("@DATA@", &data.display().to_string()),
    )
    .unwrap();
    let show = firewall_cmd(&net, &path, &["show"]);
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(text.contains("-N HONEYTRAP"), "{text}");
    assert!(
        text.contains("-A HONEYTRAP -p tcp --dport 2200 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("--queue-num 0 --queue-bypass"), "{text}");
    assert!(
        text.contains("-I INPUT 1 -m comment --comment honeytrap -j HONEYTRAP"),
        "{text}"
    );
    assert!(text.contains("ip6tables"), "{text}");
    assert!(text.contains("-S HONEYTRAP: none"), "{text}");
    firewall_cmd(&net, &path, &["apply"]);
    assert_installed(&net, None);
    // Applying again replaces the set.
    firewall_cmd(&net, &path, &["apply", "--queue", "5"]);
    let chain = assert_installed(&net, None);
    assert!(chain.contains("--queue-num 5"), "{chain}");
    let show = firewall_cmd(&net, &path, &["show"]);
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        text.contains("-A HONEYTRAP -p tcp -m tcp --dport 2200 -j RETURN"),
        "{text}"
    );
    firewall_cmd(&net, &path, &["remove"]);
    assert_removed(&net, "after remove");
    // Removing what is not there is fine.
    firewall_cmd(&net, &path, &["remove"]);
}

#[test]
fn rules_are_removed_at_exit_also_after_dropping_root() {
    let Some(net) = setup("fwdrop") else { return };
    let config = config("").replace("[process]\n", "[process]\nuser = \"nobody\"\n");
    assert!(config.contains("user = \"nobody\""), "{config}");
    let mut d = Daemon::start(&net, &config);
    assert!(d.log().contains("dropped privileges"), "{}", d.log());
    assert_installed(&net, Some(&d));
    first_try_caught(&d, &net, &net.hp_v4.clone(), 23101);
    // The unprivileged process runs iptables itself with the ambient capabilities.
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("firewall rules removed"), "{log}");
    assert_removed(&net, &log);
}

// ---- tproxy ----

/// The tproxy monitor's port (the default).
const TPROXY_PORT: u16 = 65499;

/// tproxy monitor, firewall auto; `extra` is appended to `[firewall]`.
fn tproxy_config(firewall: &str) -> String {
    config(firewall).replace("kind = \"nfqueue\"", "kind = \"tproxy\"")
}

/// Distinct pseudo-random high ports (never the monitor's own).
fn random_ports(n: usize) -> Vec<u16> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let mut ports = Vec::new();
    while ports.len() < n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let p = 20000 + (x >> 8) as u16 % 40000;
        if p != TPROXY_PORT && !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// What honeytrap's tproxy set looks like in one family.
#[derive(Debug, PartialEq)]
struct TpState {
    /// Jumps to HONEYTRAP in mangle PREROUTING.
    jumps: usize,
    /// `-S HONEYTRAP` in mangle (None: no chain).
    chain: Option<String>,
    /// `ip rule` entries at honeytrap's preference.
    rules: usize,
    /// Routes with honeytrap's protocol tag.
    routes: usize,
}

fn tp_state(net: &NetPair, v6: bool) -> TpState {
    let pre = honeypot_listing_in(net, v6, "mangle", Some("PREROUTING")).expect("-S PREROUTING");
    let lines = |t: String| t.lines().filter(|l| !l.trim().is_empty()).count();
    TpState {
        jumps: pre
            .lines()
            .filter(|l| l.contains("HONEYTRAP") || l.contains("honeytrap"))
            .count(),
        chain: honeypot_listing_in(net, v6, "mangle", Some("HONEYTRAP")),
        rules: lines(honeypot_ip_show(net, v6, "rule show pref 31000")),
        routes: lines(honeypot_ip_show(net, v6, "route show table all proto 104")),
    }
}

/// Exactly one jump, the chain, one ip rule and one route, IPv4 and IPv6; returns
/// the chains (v4, v6).
fn assert_tp_installed(net: &NetPair, log: &str) -> (String, String) {
    let mut chains = Vec::new();
    for v6 in [false, true] {
        let st = tp_state(net, v6);
        assert_eq!(st.jumps, 1, "v6={v6}: exactly one jump {st:?}\n{log}");
        assert_eq!(st.rules, 1, "v6={v6}: exactly one ip rule {st:?}\n{log}");
        assert_eq!(st.routes, 1, "v6={v6}: exactly one route {st:?}\n{log}");
        let chain = st
            .chain
            .unwrap_or_else(|| panic!("v6={v6}: no chain\n{log}"));
        assert!(chain.contains("-j TPROXY --on-port 65499"), "{chain}");
        let rule = honeypot_ip_show(net, v6, "rule show pref 31000");
        assert!(rule.contains("fwmark 0x1/0x1 lookup 100"), "{rule}");
        chains.push(chain);
    }
    (chains.remove(0), chains.remove(0))
}

/// Nothing of the tproxy set left, IPv4 and IPv6 (and no TPROXY rule anywhere).
fn assert_tp_removed(net: &NetPair, log: &str) {
    for v6 in [false, true] {
        let st = tp_state(net, v6);
        let none = TpState {
            jumps: 0,
            chain: None,
            rules: 0,
            routes: 0,
        };
        assert_eq!(st, none, "v6={v6}: left behind\n{log}");
        let all = honeypot_listing_in(net, v6, "mangle", None).unwrap();
        assert!(!all.contains("TPROXY"), "{all}");
        let rules = honeypot_ip_show(net, v6, "rule show");
        assert!(!rules.contains("fwmark"), "{rules}");
    }
}

/// The first TCP attempt on `port` is caught by the tproxy monitor with its
/// original destination.
fn tp_first_try_caught(d: &Daemon, net: &NetPair, host: &str, port: u16) {
    let word = format!("hello tproxy auto {host} {port}\n");
    let out = nc_once(net, host, port, word.as_bytes());
    assert!(
        out.status.success(),
        "first attempt on {host} {port} must succeed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let e = event_with(d, port, word.as_bytes());
    assert_eq!(e["honeytrap"]["monitor"], "tproxy");
    assert_eq!(e["destination"]["ip"], host);
}

/// A SIP OPTIONS request (larger than the built-in SIP reply, so it earns it).
fn sip_options(to: &str, from: &str) -> String {
    format!(
        "OPTIONS sip:100@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5061;branch=z9hG4bK-524287-1---a1b2c3d4e5f60708\r\nMax-Forwards: 70\r\nTo: <sip:100@{to}>\r\nFrom: \"sipvicious\" <sip:100@1.1.1.1>;tag=6130396534383264313363340131383032393231303035\r\nCall-ID: 1029384756473829@{from}\r\nCSeq: 1 OPTIONS\r\nContact: <sip:100@{from}:5061>\r\nAccept: application/sdp\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A SIP OPTIONS to 5060 on `host` from `sport` is answered from the original
/// address: socat's UDP client only takes replies from the address and port it
/// wrote to.
fn tp_udp_answered(d: &Daemon, net: &NetPair, host: &str, sport: u16) {
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
}

#[test]
fn tproxy_auto_catches_any_port_and_goes_away_on_sigterm() {
    let Some(net) = setup("tpauto") else { return };
    assert_tp_removed(&net, "before start");
    let mut d = Daemon::start(&net, &tproxy_config(""));
    assert!(d.log().contains("firewall rules applied"), "{}", d.log());
    assert_tp_installed(&net, &d.log());
    let ports = random_ports(2);
    tp_first_try_caught(&d, &net, &net.hp_v4.clone(), ports[0]);
    tp_first_try_caught(&d, &net, &net.hp_v6.clone(), ports[1]);
    tp_udp_answered(&d, &net, &net.hp_v4.clone(), 41100);
    tp_udp_answered(&d, &net, &net.hp_v6.clone(), 41101);
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("firewall rules removed"), "{log}");
    assert_tp_removed(&net, &log);
}

/// A real UDP service in the honeypot namespace that answers `real udp`.
fn real_udp_service(net: &NetPair, port: u16) -> support::netns::Background {
    let bg = net.background_honeypot(
        "socat",
        &[
            &format!("UDP4-RECVFROM:{port},fork"),
            "SYSTEM:echo real udp",
        ],
    );
    let ready = support::daemon::wait_until(Duration::from_secs(5), || {
        let out = support::daemon::run(
            {
                let mut c = net.in_honeypot("ss");
                c.args(["-lunH", &format!("sport = :{port}")]);
                c
            },
            Duration::from_secs(3),
        );
        !out.stdout.is_empty()
    });
    assert!(ready, "socat did not bind UDP {port}");
    bg
}

/// One UDP datagram to `host:port`; what came back.
fn udp_once(net: &NetPair, host: &str, port: u16, data: &[u8]) -> String {
    let out = net.attack(
        "socat",
        &["-t", "2", "-", &format!("UDP:{host}:{port}")],
        data,
        6,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tproxy_real_services_and_ssh_ports_are_excluded() {
    let Some(net) = setup("tpexcl") else { return };
    let _tcp = real_service(&net, 23030);
    let _udp = real_udp_service(&net, 23031);
    let mut d = Daemon::start(&net, &tproxy_config("ssh_ports = [2222]\n"));
    let (v4, v6) = assert_tp_installed(&net, &d.log());
    for rule in [
        "-A HONEYTRAP -i lo -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 22 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 2222 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 23030 -j RETURN",
        "-A HONEYTRAP -p udp -m udp --dport 23031 -j RETURN",
        "-A HONEYTRAP -p tcp -m tcp --dport 65499 -j RETURN",
        "-A HONEYTRAP -p udp -m udp --dport 65499 -j RETURN",
    ] {
        assert!(v4.contains(rule), "missing `{rule}`:\n{v4}");
        assert!(v6.contains(rule), "missing `{rule}` (v6):\n{v6}");
    }
    // The real services answer, twice (not only the first flow).
    for _ in 0..2 {
        let out = nc_once(&net, &net.hp_v4, 23030, b"");
        assert!(out.status.success(), "{out:?}\n{}", d.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
        // UDP: socat's RECVFROM,fork re-arms after each child, and on a loaded
        // machine a datagram can land in that gap; a real client retries too.
        let udp = (0..3)
            .map(|_| udp_once(&net, &net.hp_v4, 23031, b"hi\n"))
            .find(|r| r == "real udp\n");
        assert_eq!(udp.as_deref(), Some("real udp\n"), "{}", d.log());
    }
    // SSH ports with nothing listening are refused, not caught.
    for port in [22, 2222] {
        let out = nc_once(&net, &net.hp_v4, port, b"");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{port}: {out:?}"
        );
    }
    // Beside them, any other port is caught.
    tp_first_try_caught(&d, &net, &net.hp_v4.clone(), 23032);
    assert!(
        d.events().iter().all(|e| e["destination"]["port"] == 23032),
        "{:?}",
        d.events()
    );
    assert!(d.stop().success());
    assert_tp_removed(&net, &d.log());
}

#[test]
fn tproxy_after_sigkill_real_service_works_and_restart_replaces_the_stale_set() {
    let Some(net) = setup("tpkill") else { return };
    let _svc = real_service(&net, 23040);
    let mut d = Daemon::start(&net, &tproxy_config(""));
    let (first_v4, first_v6) = assert_tp_installed(&net, &d.log());
    tp_first_try_caught(&d, &net, &net.hp_v4.clone(), 23041);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(!d.wait_exit(Duration::from_secs(10)).success());
    // The stale set is still there; the real service (excluded) still answers.
    assert_tp_installed(&net, "after SIGKILL");
    let out = nc_once(&net, &net.hp_v4, 23040, b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    // A restart replaces it: one jump, one rule, one route, the same chain.
    let mut d = Daemon::start(&net, &tproxy_config(""));
    let (v4, v6) = assert_tp_installed(&net, &d.log());
    assert_eq!(v4, first_v4);
    assert_eq!(v6, first_v6);
    tp_first_try_caught(&d, &net, &net.hp_v6.clone(), 23042);
    let out = nc_once(&net, &net.hp_v4, 23040, b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real service\n");
    assert!(d.stop().success(), "{}", d.log());
    assert_tp_removed(&net, &d.log());
}

#[test]
fn tproxy_firewall_show_apply_remove_and_manual_mode() {
    let Some(net) = setup("tpcli") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("honeytrap.toml");
    let data = dir.path().join("data");
    let cfg = tproxy_config("ssh_ports = [2200]\ntproxy_mark = 0x4\nroute_table = 4242\n")
        .replace("@DATA@", &data.display().to_string());
    std::fs::write(&path, &cfg).unwrap();
    let show = firewall_cmd(&net, &path, &["show"]);
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    for want in [
        "-t mangle -N HONEYTRAP",
        "-t mangle -A HONEYTRAP -p tcp --dport 2200 -j RETURN",
        "-t mangle -A HONEYTRAP -p tcp -j TPROXY --on-port 65499 --tproxy-mark 0x4/0x4",
        "-t mangle -I PREROUTING 1 -m comment --comment honeytrap -j HONEYTRAP",
        "ip rule add fwmark 0x4/0x4 lookup 4242 pref 31000 protocol 104",
        "ip -6 route add local ::/0 dev lo table 4242 proto 104",
        "-t mangle -S HONEYTRAP: none",
        "ip -4 rule show pref 31000: none",
    ] {
        assert!(text.contains(want), "missing `{want}`:\n{text}");
    }
    // Applying replaces the set of either monitor: nfqueue's goes, tproxy's comes.
    firewall_cmd(&net, &path, &["apply", "--monitor", "nfqueue"]);
    assert_installed(&net, None);
    firewall_cmd(&net, &path, &["apply"]);
    assert_removed(&net, "after applying tproxy over nfqueue");
    for v6 in [false, true] {
        let st = tp_state(&net, v6);
        assert_eq!((st.jumps, st.rules, st.routes), (1, 1, 1), "{st:?}");
        let rule = honeypot_ip_show(&net, v6, "rule show pref 31000");
        assert!(rule.contains("fwmark 0x4/0x4 lookup 4242"), "{rule}");
    }
    let text = String::from_utf8_lossy(&firewall_cmd(&net, &path, &["show"]).stdout).into_owned();
    assert!(text.contains("-j TPROXY --on-port 65499"), "{text}");
    assert!(text.contains("local default dev lo table 4242"), "{text}");
    // An admin's own rule and route in the same table are left alone.
    for v6 in [false, true] {
        support::firewall::honeypot_ip(&net, v6, "rule add fwmark 0x8 lookup 4242 pref 31000");
    }
    support::firewall::honeypot_ip(&net, false, "route add unreachable 10.99.0.0/16 table 4242");
    firewall_cmd(&net, &path, &["remove"]);
    assert_removed(&net, "after remove");
    for v6 in [false, true] {
        let st = tp_state(&net, v6);
        assert_eq!(
            (st.jumps, st.chain.is_none(), st.routes),
            (0, true, 0),
            "{st:?}"
        );
        let rules = honeypot_ip_show(&net, v6, "rule show pref 31000");
        assert!(rules.contains("fwmark 0x8 lookup 4242"), "{rules}");
        assert!(!rules.contains("0x4"), "{rules}");
    }
    let routes = honeypot_ip_show(&net, false, "route show table 4242");
    assert!(routes.contains("unreachable 10.99.0.0/16"), "{routes}");
    firewall_cmd(&net, &path, &["remove"]);
    // Manual mode logs the same rules and installs nothing.
    let manual = tproxy_config("").replace("mode = \"auto\"", "mode = \"manual\"");
    let mut d = Daemon::start(&net, &manual);
    assert!(
        d.log()
            .contains("ip6tables -t mangle -A HONEYTRAP -p udp -j TPROXY --on-port 65499"),
        "{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("ip rule add fwmark 0x1/0x1 lookup 100 pref 31000 protocol 104"),
        "{}",
        d.log()
    );
    let st = tp_state(&net, false);
    assert_eq!((st.jumps, st.chain.is_none()), (0, true), "{st:?}");
    assert!(d.stop().success());
}

#[test]
fn tproxy_rules_are_removed_at_exit_also_after_dropping_root() {
    let Some(net) = setup("tpdrop") else { return };
    let config = tproxy_config("").replace("[process]\n", "[process]\nuser = \"nobody\"\n");
    let mut d = Daemon::start(&net, &config);
    assert!(d.log().contains("dropped privileges"), "{}", d.log());
    assert_tp_installed(&net, &d.log());
    tp_first_try_caught(&d, &net, &net.hp_v4.clone(), 23051);
    // The unprivileged process runs iptables and ip with the ambient capabilities.
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("firewall rules removed"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_tp_removed(&net, &log);
}

/// A directory for PATH holding `iptables` and `ip6tables` wrappers that run the
/// real programs, except that a rule with `fail_on` fails the way iptables does
/// when the kernel lacks the module; and no `ip` at all.
fn fake_path(fail_on: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for bin in ["iptables", "ip6tables"] {
        let script = format!(
            "#!/bin/sh\ncase \"$*\" in *{fail_on}*) echo \"{bin} v1.8.9 (legacy): Couldn't load target \\`{fail_on}':No such file or directory\" >&2; exit 2;; esac\nexec /usr/sbin/{bin} \"$@\"\n"
        );
        let path = dir.path().join(bin);
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// `honeytrap run` with `PATH` set to `path`, expected to fail at start.
fn run_fails(net: &NetPair, config: &str, path: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("honeytrap.toml");
    let data = dir.path().join("data");
    std::fs::write(&file, config.replace("@DATA@", &data.display().to_string())).unwrap();
    let out = support::daemon::run(
        {
            // `env` sets PATH for honeytrap only (`ip netns exec` needs the real one).
            let mut c = net.in_honeypot("env");
            c.arg(format!("PATH={}", path.display()))
                .arg(BIN)
                .arg("run")
                .arg("-c")
                .arg(&file);
            c
        },
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tproxy_missing_ip_or_kernel_module_is_named_and_nothing_is_left() {
    let Some(net) = setup("tpmiss") else { return };
    // No `ip`: the package is named, nothing is installed.
    let fake = fake_path("NOSUCHTARGET");
    let err = run_fails(&net, &tproxy_config(""), fake.path());
    assert!(err.contains("iproute2"), "{err}");
    assert_tp_removed(&net, &err);
    // `ip` present, TPROXY missing in the kernel: the modules are named, and what
    // was added before the failure is removed again.
    let fake = fake_path("TPROXY");
    std::os::unix::fs::symlink("/usr/sbin/ip", fake.path().join("ip")).unwrap();
    let err = run_fails(&net, &tproxy_config(""), fake.path());
    assert!(
        err.contains("xt_TPROXY") && err.contains("nf_tproxy_ipv4"),
        "{err}"
    );
    assert_tp_removed(&net, &err);
    assert_removed(&net, &err);
}

/// Ports in `ignore` mode behave as if honeytrap were absent, also under TPROXY
/// (where a diverted connection would be accepted and then reset): the auto rules
/// return them early, so the kernel refuses the SYN itself.
#[test]
fn tproxy_ignored_ports_are_refused_as_without_honeytrap() {
    let Some(net) = setup("tpign") else { return };
    let rules =
        "\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"23000-23010\"]\nmode = \"ignore\"\n";
    let mut d = Daemon::start(&net, &format!("{}{rules}", tproxy_config("")));
    let (v4, _) = assert_tp_installed(&net, &d.log());
    assert!(v4.contains("--dport 23000:23010 -j RETURN"), "{v4}");
    for host in [net.hp_v4.clone(), net.hp_v6.clone()] {
        // socat reports a refused connect; an accepted-then-reset one would not be.
        let out = net.attack(
            "socat",
            &[
                "-t",
                "1",
                "-",
                &format!("TCP:{},retry=0", support::clients::host_port(&host, 23005)),
            ],
            b"x\n",
            8,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("refused"),
            "{host}: {err}\n{}",
            d.log()
        );
    }
    // A port beside the range is still caught on the first try.
    tp_first_try_caught(&d, &net, &net.hp_v4.clone(), 23011);
    assert!(d.stop().success());
    // Nothing on the ignored range reached honeytrap.
    assert!(d.log().contains("ignored=0"), "{}", d.log());
}
