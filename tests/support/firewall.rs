//! Firewall rules inside a test's honeypot namespace (never in the host's): the
//! NFQUEUE rules docs/configuration.md tells the administrator to add. They go away
//! with the namespace.

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
            "`{bin}` is needed by the nfqueue end-to-end tests and cannot be run: install the `iptables` package (apt-get install -y iptables; .ci/run does it)"
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
