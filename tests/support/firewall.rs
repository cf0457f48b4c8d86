//! Firewall rules inside a test's honeypot namespace (never in the host's): the
//! NFQUEUE and TPROXY rules an administrator adds by hand (`firewall.mode =
//! "manual"`), the TPROXY policy routing, and listings to check what honeytrap's
//! `mode = "auto"` installed. They go away with the namespace.

use super::netns::NetPair;
use std::process::Command;

/// Panic with a clear message unless `iptables` and `ip6tables` can be run.
pub fn require_iptables() {
    for bin in ["iptables", "ip6tables"] {
        let ok = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "`{bin}` is needed by the nfqueue and tproxy end-to-end tests and cannot be run: install the `iptables` package (apt-get install -y iptables; .ci/run does it)"
        );
    }
}

/// Run `iptables` (or `ip6tables` when `v6`) with `rule` in the honeypot namespace.
pub fn honeypot_rule(net: &NetPair, v6: bool, rule: &str) {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let out = Command::new("ip")
        .args(["netns", "exec", &net.honeypot, bin])
        .args(rule.split_whitespace())
        .output()
        .expect("running iptables");
    assert!(
        out.status.success(),
        "{bin} {rule} (in {}): {}",
        net.honeypot,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documented rules, IPv4 and IPv6: loopback and SSH are never queued; new TCP
/// SYNs and new UDP datagrams go to `queue`, bypassing it while nobody reads it.
pub fn nfqueue_rules(net: &NetPair, queue: u16) {
    require_iptables();
    for v6 in [false, true] {
        for rule in [
            "-A INPUT -i lo -j ACCEPT".to_string(),
            "-A INPUT -p tcp --dport 22 -j ACCEPT".to_string(),
            format!("-A INPUT -p tcp --syn -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"),
            format!("-A INPUT -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"),
        ] {
            honeypot_rule(net, v6, &rule);
        }
    }
}

/// Run `ip` with `args` in the honeypot namespace (`-6` first when `v6`).
pub fn honeypot_ip(net: &NetPair, v6: bool, args: &str) {
    let mut c = Command::new("ip");
    c.args(["-n", &net.honeypot]);
    if v6 {
        c.arg("-6");
    }
    let out = c
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args} (in {}): {}",
        net.honeypot,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hand-written TPROXY rules (straight in mangle `PREROUTING`, as an administrator
/// may add them with `firewall.mode = "manual"`) and policy routing, IPv4 and IPv6;
/// honeytrap's own set (`mode = "auto"`) is tested in e2e_firewall. Loopback, SSH
/// and the tproxy port itself are never diverted; packets of existing sockets go
/// their way (transparent ones marked); every other TCP and UDP packet is diverted
/// to `port`, and marked packets are delivered locally (table 100).
pub fn tproxy_rules(net: &NetPair, port: u16) {
    require_iptables();
    for v6 in [false, true] {
        for rule in [
            "-t mangle -A PREROUTING -i lo -j RETURN".to_string(),
            "-t mangle -A PREROUTING -p tcp --dport 22 -j RETURN".to_string(),
            format!("-t mangle -A PREROUTING -p tcp --dport {port} -j RETURN"),
            format!("-t mangle -A PREROUTING -p udp --dport {port} -j RETURN"),
            "-t mangle -A PREROUTING -m conntrack --ctdir REPLY -j RETURN".to_string(),
            "-t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 0x1/0x1"
                .to_string(),
            "-t mangle -A PREROUTING -p tcp -m socket -j RETURN".to_string(),
            format!(
                "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port {port} --tproxy-mark 0x1/0x1"
            ),
            format!(
                "-t mangle -A PREROUTING -p udp -j TPROXY --on-port {port} --tproxy-mark 0x1/0x1"
            ),
        ] {
            honeypot_rule(net, v6, &rule);
        }
        let any = if v6 { "::/0" } else { "0.0.0.0/0" };
        honeypot_ip(net, v6, "rule add fwmark 0x1 lookup 100");
        honeypot_ip(net, v6, &format!("route add local {any} dev lo table 100"));
    }
}

/// `iptables -S [chain]` (or ip6tables) in the honeypot namespace; None when it
/// fails (the chain does not exist).
pub fn honeypot_listing(net: &NetPair, v6: bool, chain: Option<&str>) -> Option<String> {
    honeypot_listing_in(net, v6, "filter", chain)
}

/// `iptables -t table -S [chain]` (or ip6tables) in the honeypot namespace; None
/// when it fails (the chain does not exist).
pub fn honeypot_listing_in(
    net: &NetPair,
    v6: bool,
    table: &str,
    chain: Option<&str>,
) -> Option<String> {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let out = Command::new("ip")
        .args(["netns", "exec", &net.honeypot, bin, "-w", "-t", table, "-S"])
        .args(chain)
        .output()
        .expect("running iptables");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The output of `ip -4|-6 args` (a `show` command) in the honeypot namespace.
pub fn honeypot_ip_show(net: &NetPair, v6: bool, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &net.honeypot, if v6 { "-6" } else { "-4" }])
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args} (in {}): {}",
        net.honeypot,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
