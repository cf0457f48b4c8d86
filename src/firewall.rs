//! The firewall manager (`[firewall]`): the iptables rules the `nfqueue` monitor
//! needs. In `manual` mode nothing is changed and the rules are logged for the
//! administrator; in `auto` mode honeytrap owns a chain, `HONEYTRAP`, in the filter
//! table (IPv4 and IPv6) with one jump to it from `INPUT` (comment `honeytrap`),
//! added at start and removed at exit ([`Guard`]).
//!
//! Only validated values reach the command lines: port numbers, the queue number and
//! fixed words. Nothing an attacker sends is ever passed to a program.

use crate::config::{Config, FirewallMode};
use anyhow::{bail, Context as _};
use std::collections::BTreeSet;
use std::process::Command;

/// honeytrap's own chain.
pub const CHAIN: &str = "HONEYTRAP";
/// Comment of the jump from `INPUT`, by which a stale one is found.
pub const COMMENT: &str = "honeytrap";

/// The iptables programs of one backend (nf_tables or legacy), never mixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub v4: String,
    pub v6: String,
    /// "nf_tables", "legacy" or "unknown".
    pub kind: &'static str,
}

impl Backend {
    /// The programs for IPv4 then IPv6.
    pub fn programs(&self) -> [&str; 2] {
        [&self.v4, &self.v6]
    }
}

/// Whether `name` is an executable file in a PATH directory.
fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Detect the backend from `iptables -V` ("nf_tables" or "legacy").
pub fn detect() -> anyhow::Result<Backend> {
    let out = match Command::new("iptables").arg("-V").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "firewall.mode = \"auto\" needs `iptables` and `ip6tables`, which are not installed: install the Debian package `iptables` (apt-get install iptables)"
        ),
        Err(e) => return Err(e).context("running `iptables -V`"),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (kind, suffix) = if text.contains("nf_tables") {
        ("nf_tables", "-nft")
    } else if text.contains("legacy") {
        ("legacy", "-legacy")
    } else {
        ("unknown", "")
    };
    let pick = |base: &str| {
        let named = format!("{base}{suffix}");
        if !suffix.is_empty() && on_path(&named) {
            named
        } else {
            base.to_string()
        }
    };
    let (v4, v6) = (pick("iptables"), pick("ip6tables"));
    // Never mix: both the suffixed programs or both plain.
    let (v4, v6) = if v4.ends_with(suffix) == v6.ends_with(suffix) {
        (v4, v6)
    } else {
        ("iptables".into(), "ip6tables".into())
    };
    if !on_path(&v6) {
        bail!("`{v6}` is not installed: install the Debian package `iptables`");
    }
    Ok(Backend { v4, v6, kind })
}

/// Ports excluded from the rules: 22, `ssh_ports`, `exclude_ports` and every port
/// something listens on now (TCP LISTEN, unconnected bound UDP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclusions {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

impl Exclusions {
    /// The configured exclusions plus the ports in use in this network namespace.
    pub fn detect(config: &Config) -> Exclusions {
        let mut e = Self::configured(config);
        for (file, state, tcp) in [
            ("/proc/net/tcp", "0A", true),
            ("/proc/net/tcp6", "0A", true),
            ("/proc/net/udp", "07", false),
            ("/proc/net/udp6", "07", false),
        ] {
            if let Ok(text) = std::fs::read_to_string(file) {
                let set = if tcp { &mut e.tcp } else { &mut e.udp };
                set.extend(listening(&text, state));
            }
        }
        e
    }

    /// Only what the configuration says (22, ssh_ports, exclude_ports).
    pub fn configured(config: &Config) -> Exclusions {
        let f = &config.firewall;
        let mut e = Exclusions::default();
        e.tcp.insert(22);
        e.tcp.extend(&f.ssh_ports);
        e.tcp.extend(&f.exclude_ports);
        e.udp.extend(&f.exclude_ports);
        e
    }
}

/// Local ports of the sockets in `state` in a /proc/net/{tcp,udp}[6] table.
pub fn listening(table: &str, state: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let st = f.nth(1)?;
            if st != state {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (port != 0).then_some(port)
        })
        .collect()
}

/// The rules of the chain (arguments after the program name), in order.
pub fn chain_rules(queue: u16, ex: &Exclusions) -> Vec<String> {
    let mut r = vec![format!("-A {CHAIN} -i lo -j RETURN")];
    r.extend(
        ex.tcp
            .iter()
            .map(|p| format!("-A {CHAIN} -p tcp --dport {p} -j RETURN")),
    );
    r.extend(
        ex.udp
            .iter()
            .map(|p| format!("-A {CHAIN} -p udp --dport {p} -j RETURN")),
    );
    r.push(format!("-A {CHAIN} -p tcp --syn -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"));
    r.push(format!(
        "-A {CHAIN} -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"
    ));
    r
}

/// The jump from INPUT, inserted first.
pub fn jump_rule() -> String {
    format!("-I INPUT 1 -m comment --comment {COMMENT} -j {CHAIN}")
}

/// The whole command sequence for `programs` (one script line each).
pub fn script(programs: &[&str], queue: u16, ex: &Exclusions) -> Vec<String> {
    let mut lines = Vec::new();
    for p in programs {
        lines.push(format!("{p} -N {CHAIN}"));
        for r in chain_rules(queue, ex) {
            lines.push(format!("{p} {r}"));
        }
        lines.push(format!("{p} {}", jump_rule()));
    }
    lines
}

/// The documented TPROXY rules (manual mode only in this version).
pub fn tproxy_script(port: u16, ex: &Exclusions) -> Vec<String> {
    let mut lines = Vec::new();
    for p in ["iptables", "ip6tables"] {
        let m = format!("{p} -t mangle -A PREROUTING");
        lines.push(format!("{m} -i lo -j RETURN"));
        for t in &ex.tcp {
            lines.push(format!("{m} -p tcp --dport {t} -j RETURN"));
        }
        for u in &ex.udp {
            lines.push(format!("{m} -p udp --dport {u} -j RETURN"));
        }
        lines.push(format!("{m} -p tcp --dport {port} -j RETURN"));
        lines.push(format!("{m} -p udp --dport {port} -j RETURN"));
        lines.push(format!(
            "{m} -p tcp -m socket --transparent -j MARK --set-mark 0x1/0x1"
        ));
        lines.push(format!("{m} -p tcp -m socket -j RETURN"));
        lines.push(format!(
            "{m} -p tcp -j TPROXY --on-port {port} --tproxy-mark 0x1/0x1"
        ));
        lines.push(format!(
            "{m} -p udp -j TPROXY --on-port {port} --tproxy-mark 0x1/0x1"
        ));
    }
    lines.push("ip rule add fwmark 0x1 lookup 100".into());
    lines.push("ip route add local 0.0.0.0/0 dev lo table 100".into());
    lines.push("ip -6 rule add fwmark 0x1 lookup 100".into());
    lines.push("ip -6 route add local ::/0 dev lo table 100".into());
    lines
}

/// The rules `monitor` needs, as script lines (empty: none needed).
pub fn rules_for(
    monitor: &str,
    config: &Config,
    ex: &Exclusions,
    b: Option<&Backend>,
) -> Vec<String> {
    match monitor {
        "nfqueue" => {
            let programs = b.map_or(["iptables", "ip6tables"], |b| b.programs());
            script(&programs, config.monitor.nfqueue.queue, ex)
        }
        "tproxy" => tproxy_script(config.monitor.tproxy.port, ex),
        _ => Vec::new(),
    }
}

/// Run `program args` (split on spaces: only validated words), with `-w`.
fn ipt(program: &str, args: &str) -> anyhow::Result<std::process::Output> {
    Command::new(program)
        .arg("-w")
        .args(args.split_whitespace())
        .output()
        .with_context(|| format!("running `{program}`"))
}

/// Run and require success.
fn ipt_ok(program: &str, args: &str) -> anyhow::Result<()> {
    let out = ipt(program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `iptables -S HONEYTRAP` per program; None where the chain does not exist.
pub fn installed(b: &Backend) -> Vec<(String, Option<String>)> {
    b.programs()
        .iter()
        .map(|p| {
            let listing = ipt(p, &format!("-S {CHAIN}"))
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            (p.to_string(), listing)
        })
        .collect()
}

/// Remove honeytrap's jumps (found by their comment) and chain, if present.
pub fn remove(b: &Backend) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for p in b.programs() {
        if let Err(e) = remove_one(p) {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("removing the firewall rules: {}", errors.join("; "));
    }
    Ok(())
}

fn remove_one(p: &str) -> anyhow::Result<()> {
    let out = ipt(p, "-S INPUT")?;
    if !out.status.success() {
        bail!(
            "`{p} -S INPUT` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let marker = format!("--comment {COMMENT} ");
    for line in listing.lines() {
        let ours = line.starts_with("-A INPUT ")
            && line.contains(&marker)
            && line.ends_with(&format!("-j {CHAIN}"));
        if ours {
            ipt_ok(p, &format!("-D{}", &line[2..]))?;
        }
    }
    if ipt(p, &format!("-S {CHAIN}"))?.status.success() {
        ipt_ok(p, &format!("-F {CHAIN}"))?;
        ipt_ok(p, &format!("-X {CHAIN}"))?;
    }
    Ok(())
}

/// Remove a stale set, then add the chain and the jump (IPv4 and IPv6). On failure
/// whatever was added is removed again.
pub fn apply(b: &Backend, queue: u16, ex: &Exclusions) -> anyhow::Result<()> {
    remove(b).context("removing a stale set of rules")?;
    let r = (|| {
        for p in b.programs() {
            ipt_ok(p, &format!("-N {CHAIN}"))?;
            for rule in chain_rules(queue, ex) {
                ipt_ok(p, &rule)?;
            }
            ipt_ok(p, &jump_rule())?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = remove(b);
    }
    r
}

/// Removes the rules when dropped (every exit path of `honeytrap run`).
pub struct Guard {
    backend: Option<Backend>,
}

impl Guard {
    /// Remove now and log the result.
    pub fn finish(mut self) {
        self.take_down();
    }

    fn take_down(&mut self) {
        if let Some(b) = self.backend.take() {
            match remove(&b) {
                Ok(()) => tracing::info!(chain = CHAIN, "firewall rules removed"),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.take_down();
    }
}

/// At start of `honeytrap run`, before anything is bound: in manual mode log the
/// rules `monitor` needs; in auto mode apply them and return the guard that removes
/// them.
pub fn setup(config: &Config, monitor: &str) -> anyhow::Result<Option<Guard>> {
    match config.firewall.mode {
        FirewallMode::Manual => {
            let lines = rules_for(monitor, config, &Exclusions::configured(config), None);
            if !lines.is_empty() {
                tracing::info!(
                    "firewall.mode = \"manual\": the {monitor} monitor needs these rules (add them yourself, see docs/configuration.md):\n{}",
                    lines.join("\n")
                );
            }
            Ok(None)
        }
        FirewallMode::Auto => match monitor {
            "nfqueue" => {
                let b = detect()?;
                let ex = Exclusions::detect(config);
                let queue = config.monitor.nfqueue.queue;
                apply(&b, queue, &ex).context("applying the firewall rules")?;
                tracing::info!(
                    chain = CHAIN,
                    backend = b.kind,
                    queue,
                    excluded_tcp = ?ex.tcp,
                    excluded_udp = ?ex.udp,
                    "firewall rules applied"
                );
                Ok(Some(Guard { backend: Some(b) }))
            }
            "tproxy" => bail!(
                "firewall.mode = \"auto\" is not yet supported with the tproxy monitor: use firewall.mode = \"manual\" and add the rules of docs/configuration.md"
            ),
            _ => {
                tracing::info!(monitor, "firewall.mode = \"auto\": this monitor needs no firewall rules");
                Ok(None)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_ports() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n   1: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert_eq!(listening(tcp, "0A"), vec![22]);
        let udp6 = "  sl  local_address                         remote_address                        st\n  0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 0\n";
        assert_eq!(listening(udp6, "07"), vec![53]);
    }

    #[test]
    fn chain_has_exclusions_then_queue() {
        let mut ex = Exclusions::default();
        ex.tcp.extend([22, 2222]);
        ex.udp.insert(53);
        let r = chain_rules(3, &ex);
        assert_eq!(r[0], "-A HONEYTRAP -i lo -j RETURN");
        assert_eq!(r[1], "-A HONEYTRAP -p tcp --dport 22 -j RETURN");
        assert_eq!(r[2], "-A HONEYTRAP -p tcp --dport 2222 -j RETURN");
        assert_eq!(r[3], "-A HONEYTRAP -p udp --dport 53 -j RETURN");
        assert!(r[4].contains("--syn") && r[4].ends_with("--queue-num 3 --queue-bypass"));
        assert!(r[5].starts_with("-A HONEYTRAP -p udp -m conntrack"));
        assert_eq!(r.len(), 6);
    }
}
