//! End-to-end: the firewall manager (`[firewall] mode = "auto"`) with the `nfqueue`
//! monitor. The honeypot namespace gets no hand-written rule: honeytrap adds its
//! `HONEYTRAP` chain and the jump from `INPUT` (iptables and ip6tables) at start and
//! removes them at exit. Every iptables command runs in the test's namespace.

mod support;

use support::clients::{nc_once, payload, real_service};

use std::process::{Output, Stdio};
use std::time::Duration;
use support::daemon::BIN;
use support::firewall::{honeypot_listing, require_iptables};
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
    assert!(text.contains("no HONEYTRAP chain"), "{text}");
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
fn tproxy_auto_is_refused_and_manual_logs_the_rules() {
    let Some(net) = setup("fwtpx") else { return };
    let cfg = config("").replace("kind = \"nfqueue\"", "kind = \"tproxy\"");
    let mut d = Daemon::spawn(&net, &cfg);
    assert!(!d.wait_exit(Duration::from_secs(15)).success());
    assert!(d.log().contains("not yet supported"), "{}", d.log());
    let manual = config("").replace("mode = \"auto\"", "mode = \"manual\"");
    let mut d = Daemon::start(&net, &manual);
    assert!(
        d.log()
            .contains("ip6tables -A HONEYTRAP -p tcp --syn -m conntrack --ctstate NEW -j NFQUEUE"),
        "{}",
        d.log()
    );
    assert!(d.stop().success());
    assert_removed(&net, &d.log());
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
