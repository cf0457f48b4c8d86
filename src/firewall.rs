//! The firewall manager (`[firewall]`): the iptables rules (and, for TPROXY, the
//! policy routing) the `nfqueue` and `tproxy` monitors need. In `manual` mode nothing
//! is changed and the rules are logged for the administrator; in `auto` mode
//! honeytrap owns a chain, `HONEYTRAP` (IPv4 and IPv6), with one jump to it marked
//! with the comment `honeytrap`, added at start and removed at exit ([`Guard`]):
//!
//! - `nfqueue`: the chain is in the `filter` table, jumped to from `INPUT`;
//! - `tproxy`: the chain is in the `mangle` table, jumped to from `PREROUTING`, plus
//!   one `ip rule` (preference [`RULE_PREF`]) and one local route per family, both
//!   tagged with the routing protocol number [`RT_PROTO`].
//!
//! The chain name, the comment, the rule preference and the protocol tag are how a
//! stale set is found: removal (at start, at exit, `honeytrap firewall remove`)
//! deletes everything either monitor could have installed and nothing else; no
//! chain but ours is flushed, no routing table is flushed.
//!
//! Only validated values reach the command lines: port numbers, the queue number,
//! the mark, the table and fixed words. Nothing an attacker sends is ever passed to
//! a program.

use crate::config::{Config, FirewallMode};
use anyhow::{bail, Context as _};
use std::collections::BTreeSet;
use std::fmt;
use std::process::{Command, Output};

/// honeytrap's own chain (in `filter` for nfqueue, in `mangle` for tproxy).
pub const CHAIN: &str = "HONEYTRAP";
/// Comment of the jump to [`CHAIN`], by which a stale one is found.
pub const COMMENT: &str = "honeytrap";
/// Preference of honeytrap's `ip rule`: before `main` (32766), away from 32765 and
/// below, which `ip rule add` picks when no preference is given.
pub const RULE_PREF: u32 = 31000;
/// Routing protocol number tagging honeytrap's `ip rule` and routes (`proto 104`):
/// none of iproute2's reserved numbers. Removal deletes only entries carrying it.
pub const RT_PROTO: u8 = 104;
/// Most `ip rule` entries of ours removed in one go (a bound, not an expectation).
const MAX_RULES: usize = 64;

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
    /// Port ranges in `ignore` mode (`[[ports.rule]]`), so that they behave as if
    /// honeytrap were absent: never queued or diverted.
    pub ignored_tcp: Vec<(u16, u16)>,
    pub ignored_udp: Vec<(u16, u16)>,
}

impl Exclusions {
    /// The RETURN lines for every excluded port and ignored range (`a` is the
    /// append prefix, e.g. `-A HONEYTRAP`).
    fn return_lines(&self, a: &str, tcp: &BTreeSet<u16>, udp: &BTreeSet<u16>) -> Vec<String> {
        let mut r = Vec::new();
        for (proto, ports, ranges) in [
            ("tcp", tcp, &self.ignored_tcp),
            ("udp", udp, &self.ignored_udp),
        ] {
            r.extend(
                ports
                    .iter()
                    .map(|p| format!("{a} -p {proto} --dport {p} -j RETURN")),
            );
            r.extend(ranges.iter().map(|(first, last)| {
                if first == last {
                    format!("{a} -p {proto} --dport {first} -j RETURN")
                } else {
                    format!("{a} -p {proto} --dport {first}:{last} -j RETURN")
                }
            }));
        }
        r
    }
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
        for r in &config.ports.rules {
            if r.mode != crate::attack::Mode::Ignore {
                continue;
            }
            for proto in r.protocol.list() {
                let list = match proto {
                    crate::proto::Protocol::Tcp => &mut e.ignored_tcp,
                    crate::proto::Protocol::Udp => &mut e.ignored_udp,
                };
                list.extend(r.ports.iter().map(|p| (p.first, p.last)));
            }
        }
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

/// The table honeytrap's chain lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// nfqueue: jumped to from `INPUT`.
    Filter,
    /// tproxy: jumped to from `PREROUTING`.
    Mangle,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Filter, Table::Mangle];

    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
        }
    }

    /// The built-in chain holding the jump to ours.
    pub fn hook(self) -> &'static str {
        match self {
            Table::Filter => "INPUT",
            Table::Mangle => "PREROUTING",
        }
    }

    /// The `-t` option, empty for `filter` (the default table).
    fn opt(self) -> &'static str {
        match self {
            Table::Filter => "",
            Table::Mangle => "-t mangle ",
        }
    }
}

/// The TPROXY settings the rules and the policy routing use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tproxy {
    /// `--on-port`: the monitor's transparent listener.
    pub port: u16,
    /// Mark bit(s), set and matched as `M/M`.
    pub mark: u32,
    /// Routing table of the local route.
    pub table: u32,
}

/// What a monitor needs from the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Nfqueue { queue: u16 },
    Tproxy(Tproxy),
}

impl Plan {
    /// The plan of `monitor` (None: it needs no rules).
    pub fn for_monitor(monitor: &str, config: &Config) -> Option<Plan> {
        match monitor {
            "nfqueue" => Some(Plan::Nfqueue {
                queue: config.monitor.nfqueue.queue,
            }),
            "tproxy" => Some(Plan::Tproxy(Tproxy {
                port: config.monitor.tproxy.port,
                mark: config.firewall.tproxy_mark,
                table: config.firewall.route_table,
            })),
            _ => None,
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Plan::Nfqueue { .. } => Table::Filter,
            Plan::Tproxy(_) => Table::Mangle,
        }
    }

    /// The rules of the chain (arguments after the program name), in order.
    pub fn chain_rules(&self, ex: &Exclusions) -> Vec<String> {
        match self {
            Plan::Nfqueue { queue } => chain_rules(*queue, ex),
            Plan::Tproxy(t) => tproxy_chain_rules(t, ex),
        }
    }

    /// The `ip` commands (arguments after `ip`); none for nfqueue.
    pub fn routing(&self) -> Vec<String> {
        match self {
            Plan::Nfqueue { .. } => Vec::new(),
            Plan::Tproxy(t) => routing_rules(t),
        }
    }
}

/// The nfqueue chain (filter table): exclusions, then new TCP SYNs and new UDP
/// datagrams to `queue`, bypassed while nobody reads it.
pub fn chain_rules(queue: u16, ex: &Exclusions) -> Vec<String> {
    let mut r = vec![format!("-A {CHAIN} -i lo -j RETURN")];
    r.extend(ex.return_lines(&format!("-A {CHAIN}"), &ex.tcp, &ex.udp));
    r.push(format!("-A {CHAIN} -p tcp --syn -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"));
    r.push(format!(
        "-A {CHAIN} -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"
    ));
    r
}

/// The tproxy chain (mangle table): exclusions (and the tproxy port itself);
/// replies to connections opened from this host go their way, as do packets of
/// existing TCP sockets (transparent ones marked, so they
/// are routed locally); every other TCP and UDP packet goes to the listener, marked.
/// No `-m socket` line for UDP: it would match honeytrap's reply sockets too.
pub fn tproxy_chain_rules(t: &Tproxy, ex: &Exclusions) -> Vec<String> {
    let a = format!("-t mangle -A {CHAIN}");
    let m = format!("{:#x}/{:#x}", t.mark, t.mark);
    let mut tcp = ex.tcp.clone();
    let mut udp = ex.udp.clone();
    tcp.insert(t.port);
    udp.insert(t.port);
    let mut r = vec![format!("{a} -i lo -j RETURN")];
    r.extend(ex.return_lines(&a, &tcp, &udp));
    // Replies to connections honeytrap (or the host) opened, such as a proxy
    // target's UDP datagrams, go to the socket that opened them.
    r.push(format!("{a} -m conntrack --ctdir REPLY -j RETURN"));
    r.push(format!(
        "{a} -p tcp -m socket --transparent -j MARK --set-mark {m}"
    ));
    r.push(format!("{a} -p tcp -m socket -j RETURN"));
    for proto in ["tcp", "udp"] {
        r.push(format!(
            "{a} -p {proto} -j TPROXY --on-port {} --tproxy-mark {m}",
            t.port
        ));
    }
    r
}

/// The policy routing: marked packets are delivered locally (IPv4 and IPv6), each
/// entry tagged with [`RULE_PREF`] / [`RT_PROTO`].
pub fn routing_rules(t: &Tproxy) -> Vec<String> {
    let mut r = Vec::new();
    for (fam, any) in [("", "0.0.0.0/0"), ("-6 ", "::/0")] {
        r.push(format!(
            "{fam}rule add fwmark {m:#x}/{m:#x} lookup {table} pref {RULE_PREF} protocol {RT_PROTO}",
            m = t.mark,
            table = t.table
        ));
        r.push(format!(
            "{fam}route add local {any} dev lo table {} proto {RT_PROTO}",
            t.table
        ));
    }
    r
}

/// The jump to our chain, inserted first in the table's hook chain.
pub fn jump_rule(table: Table) -> String {
    format!(
        "{}-I {} 1 -m comment --comment {COMMENT} -j {CHAIN}",
        table.opt(),
        table.hook()
    )
}

/// One command: a program and its (validated, space-separated) arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: String,
    pub args: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.program, self.args)
    }
}

/// Everything [`apply`] runs, in order: the chains, the policy routing, then the
/// jumps (so nothing is diverted before the rest is in place).
pub fn steps(programs: &[&str], plan: &Plan, ex: &Exclusions) -> Vec<Step> {
    let step = |program: &str, args: String| Step {
        program: program.to_string(),
        args,
    };
    let t = plan.table();
    let mut s = Vec::new();
    for p in programs {
        s.push(step(p, format!("{}-N {CHAIN}", t.opt())));
        s.extend(plan.chain_rules(ex).into_iter().map(|r| step(p, r)));
    }
    s.extend(plan.routing().into_iter().map(|r| step("ip", r)));
    s.extend(programs.iter().map(|p| step(p, jump_rule(t))));
    s
}

/// The rules `monitor` needs, as script lines (empty: none needed).
pub fn rules_for(
    monitor: &str,
    config: &Config,
    ex: &Exclusions,
    b: Option<&Backend>,
) -> Vec<String> {
    let Some(plan) = Plan::for_monitor(monitor, config) else {
        return Vec::new();
    };
    let programs = b.map_or(["iptables", "ip6tables"], |b| b.programs());
    steps(&programs, &plan, ex)
        .iter()
        .map(Step::to_string)
        .collect()
}

/// Kernel support behind an iptables extension, for error hints.
const MODULES: &[(&str, &str)] = &[
    ("TPROXY", "xt_TPROXY, nf_tproxy_ipv4 and nf_tproxy_ipv6"),
    ("socket", "xt_socket"),
    ("NFQUEUE", "xt_NFQUEUE and nfnetlink_queue"),
    ("conntrack", "xt_conntrack and nf_conntrack"),
    ("comment", "xt_comment"),
    ("MARK", "xt_mark"),
];

/// A hint naming the kernel module(s) to load when iptables' `stderr` says an
/// extension of the rule `args` is missing; None when it says something else.
pub fn module_hint(args: &str, stderr: &str) -> Option<String> {
    let missing = [
        "kernel module",
        "Couldn't load",
        "not supported",
        "No such file or directory",
        "No chain/target/match",
        "insmod",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    if !missing {
        return None;
    }
    if stderr.contains("Table does not exist") {
        let t = if args.contains("-t mangle") {
            "mangle"
        } else {
            "filter"
        };
        return Some(format!(
            "the kernel lacks the {t} table: load iptable_{t} and ip6table_{t} (or nf_tables for the nf_tables backend)"
        ));
    }
    let named: Vec<_> = MODULES
        .iter()
        .filter(|(ext, _)| {
            stderr.contains(&format!("`{ext}'")) || stderr.contains(&format!("Extension {ext} "))
        })
        .collect();
    let used: Vec<_> = MODULES
        .iter()
        .filter(|(ext, _)| {
            args.contains(&format!("-j {ext} ")) || args.contains(&format!("-m {ext} "))
        })
        .collect();
    let found = if named.is_empty() { used } else { named };
    if found.is_empty() {
        return None;
    }
    let what: Vec<String> = found
        .iter()
        .map(|(ext, modules)| format!("{ext} needs the kernel module(s) {modules}"))
        .collect();
    Some(format!(
        "missing kernel support? {} (modprobe them, or use a kernel that has them)",
        what.join("; ")
    ))
}

/// Run `program args` (split on spaces: only validated words), with `-w`.
fn ipt(program: &str, args: &str) -> anyhow::Result<Output> {
    Command::new(program)
        .arg("-w")
        .args(args.split_whitespace())
        .output()
        .with_context(|| format!("running `{program}`"))
}

/// Run and require success; a missing kernel module is named.
fn ipt_ok(program: &str, args: &str) -> anyhow::Result<()> {
    let out = ipt(program, args)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = module_hint(args, &err).map(|h| format!(" ({h})"));
        bail!(
            "`{program} {args}` failed: {}{}",
            err.trim(),
            hint.unwrap_or_default()
        );
    }
    Ok(())
}

const NO_IP: &str = "the policy routing of the tproxy monitor needs the `ip` command, which is not installed: install the Debian package `iproute2` (apt-get install iproute2)";

/// Run `ip args` (split on spaces: only validated words). None: `ip` is missing.
fn ip(args: &str) -> anyhow::Result<Option<Output>> {
    match Command::new("ip").args(args.split_whitespace()).output() {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("running `ip {args}`")),
    }
}

/// Run `ip args` and require success.
fn ip_ok(args: &str) -> anyhow::Result<()> {
    let Some(out) = ip(args)? else { bail!(NO_IP) };
    if !out.status.success() {
        bail!(
            "`ip {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fail with the package to install unless `ip` can be run.
pub fn require_ip() -> anyhow::Result<()> {
    ip("-V")?.map(|_| ()).context(NO_IP)
}

/// Run one step.
fn run(s: &Step) -> anyhow::Result<()> {
    if s.program == "ip" {
        ip_ok(&s.args)
    } else {
        ipt_ok(&s.program, &s.args)
    }
}

/// What `honeytrap firewall show` reports as installed: a command an admin can run
/// again, and its output (None: nothing of honeytrap's).
pub struct Installed {
    pub what: String,
    pub listing: Option<String>,
}

/// honeytrap's chains (both tables, both programs) and policy routing, as installed.
pub fn installed(b: &Backend) -> Vec<Installed> {
    let mut r = Vec::new();
    for t in Table::ALL {
        for p in b.programs() {
            let args = format!("{}-S {CHAIN}", t.opt());
            let listing = ipt(p, &args)
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            r.push(Installed {
                what: format!("{p} {args}"),
                listing,
            });
        }
    }
    // `-4` explicitly: `ip route show table all` would list both families.
    for fam in ["-4 ", "-6 "] {
        for args in [
            format!("{fam}rule show pref {RULE_PREF}"),
            format!("{fam}route show table all proto {RT_PROTO}"),
        ] {
            let listing = ip(&args)
                .ok()
                .flatten()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .filter(|l| !l.trim().is_empty());
            r.push(Installed {
                what: format!("ip {args}"),
                listing,
            });
        }
    }
    r
}

/// Remove everything either monitor could have installed: the jumps (found by their
/// comment) and chains in both tables, and the tagged policy routing.
pub fn remove(b: &Backend) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for t in Table::ALL {
        for p in b.programs() {
            if let Err(e) = remove_chain(p, t) {
                errors.push(format!("{e:#}"));
            }
        }
    }
    for v6 in [false, true] {
        if let Err(e) = remove_routing(v6) {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("removing the firewall rules: {}", errors.join("; "));
    }
    Ok(())
}

fn remove_chain(p: &str, t: Table) -> anyhow::Result<()> {
    let (opt, hook) = (t.opt(), t.hook());
    let out = ipt(p, &format!("{opt}-S {hook}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Table does not exist") {
            // No such table in this kernel: nothing of ours can be in it.
            return Ok(());
        }
        bail!("`{p} {opt}-S {hook}` failed: {}", err.trim());
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let marker = format!("--comment {COMMENT} ");
    for line in listing.lines() {
        let ours = line.starts_with(&format!("-A {hook} "))
            && line.contains(&marker)
            && line.ends_with(&format!("-j {CHAIN}"));
        if ours {
            ipt_ok(p, &format!("{opt}-D{}", &line[2..]))?;
        }
    }
    if ipt(p, &format!("{opt}-S {CHAIN}"))?.status.success() {
        ipt_ok(p, &format!("{opt}-F {CHAIN}"))?;
        ipt_ok(p, &format!("{opt}-X {CHAIN}"))?;
    }
    Ok(())
}

/// Whether `ip` failed because there was nothing to delete.
fn nothing_there(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("No such file or directory")
}

/// Delete our `ip rule` entries (preference and tag both ours: the kernel matches
/// the tag, so an admin's rule at the same preference stays) and our local routes.
/// Without `ip` nothing of ours can be there.
fn remove_routing(v6: bool) -> anyhow::Result<()> {
    // `-4` explicitly: `ip route show table all` would list both families.
    let fam = if v6 { "-6 " } else { "-4 " };
    let del = format!("{fam}rule del pref {RULE_PREF} protocol {RT_PROTO}");
    for _ in 0..MAX_RULES {
        let Some(out) = ip(&del)? else { return Ok(()) };
        if !out.status.success() {
            if nothing_there(&out) {
                break;
            }
            bail!(
                "`ip {del}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let show = format!("{fam}route show table all proto {RT_PROTO}");
    let Some(out) = ip(&show)? else { return Ok(()) };
    if !out.status.success() {
        bail!(
            "`ip {show}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for table in our_routes(&String::from_utf8_lossy(&out.stdout)) {
        ip_ok(&format!(
            "{fam}route del local default dev lo table {table} proto {RT_PROTO}"
        ))?;
    }
    Ok(())
}

/// The tables of the routes honeytrap adds (`local default dev lo table T`) in
/// `ip route show table all proto RT_PROTO` output; any other route is left alone.
pub fn our_routes(listing: &str) -> Vec<u32> {
    listing
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let default = matches!(w.get(1), Some(&"default" | &"0.0.0.0/0" | &"::/0"));
            let lo = w.windows(2).any(|p| p == ["dev", "lo"]);
            if w.first() != Some(&"local") || !default || !lo {
                return None;
            }
            let i = w.iter().position(|x| *x == "table")?;
            w.get(i + 1)?.parse().ok()
        })
        .collect()
}

/// Remove any set (stale or not), then run every step of `plan`. On failure
/// whatever was added is removed again.
pub fn apply(b: &Backend, plan: &Plan, ex: &Exclusions) -> anyhow::Result<()> {
    if !plan.routing().is_empty() {
        require_ip()?;
    }
    remove(b).context("removing a stale set of rules")?;
    let r = steps(&b.programs(), plan, ex).iter().try_for_each(run);
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
    let Some(plan) = Plan::for_monitor(monitor, config) else {
        if config.firewall.mode == FirewallMode::Auto {
            tracing::info!(
                monitor,
                "firewall.mode = \"auto\": this monitor needs no firewall rules"
            );
        }
        return Ok(None);
    };
    match config.firewall.mode {
        FirewallMode::Manual => {
            let lines = rules_for(monitor, config, &Exclusions::configured(config), None);
            tracing::info!(
                "firewall.mode = \"manual\": the {monitor} monitor needs these rules (add them yourself, see docs/configuration.md):\n{}",
                lines.join("\n")
            );
            Ok(None)
        }
        FirewallMode::Auto => {
            let b = detect()?;
            let ex = Exclusions::detect(config);
            apply(&b, &plan, &ex).context("applying the firewall rules")?;
            tracing::info!(
                chain = CHAIN,
                table = plan.table().name(),
                backend = b.kind,
                plan = ?plan,
                excluded_tcp = ?ex.tcp,
                excluded_udp = ?ex.udp,
                ignored_tcp = ?ex.ignored_tcp,
                ignored_udp = ?ex.ignored_udp,
                "firewall rules applied"
            );
            Ok(Some(Guard { backend: Some(b) }))
        }
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

    fn tp() -> Tproxy {
        Tproxy {
            port: 65499,
            mark: 0x1,
            table: 100,
        }
    }

    #[test]
    fn tproxy_chain_excludes_then_marks_then_diverts() {
        let mut ex = Exclusions::default();
        ex.tcp.extend([22, 8080]);
        ex.udp.insert(53);
        let r = tproxy_chain_rules(&tp(), &ex);
        let want = [
            "-t mangle -A HONEYTRAP -i lo -j RETURN",
            "-t mangle -A HONEYTRAP -p tcp --dport 22 -j RETURN",
            "-t mangle -A HONEYTRAP -p tcp --dport 8080 -j RETURN",
            "-t mangle -A HONEYTRAP -p tcp --dport 65499 -j RETURN",
            "-t mangle -A HONEYTRAP -p udp --dport 53 -j RETURN",
            "-t mangle -A HONEYTRAP -p udp --dport 65499 -j RETURN",
            "-t mangle -A HONEYTRAP -m conntrack --ctdir REPLY -j RETURN",
            "-t mangle -A HONEYTRAP -p tcp -m socket --transparent -j MARK --set-mark 0x1/0x1",
            "-t mangle -A HONEYTRAP -p tcp -m socket -j RETURN",
            "-t mangle -A HONEYTRAP -p tcp -j TPROXY --on-port 65499 --tproxy-mark 0x1/0x1",
            "-t mangle -A HONEYTRAP -p udp -j TPROXY --on-port 65499 --tproxy-mark 0x1/0x1",
        ];
        assert_eq!(r, want);
        // The port already excluded is not listed twice.
        ex.tcp.insert(65499);
        assert_eq!(tproxy_chain_rules(&tp(), &ex).len(), want.len());
    }

    #[test]
    fn mark_and_table_come_from_the_config_and_are_checked() {
        let parse = |t: &str| crate::config::parse(std::path::Path::new("x"), t);
        let c = parse(
            "[monitor.tproxy]\nport = 7000\n[firewall]\ntproxy_mark = 0x10\nroute_table = 200\n",
        )
        .unwrap();
        let want = Plan::Tproxy(Tproxy {
            port: 7000,
            mark: 0x10,
            table: 200,
        });
        assert_eq!(Plan::for_monitor("tproxy", &c), Some(want));
        let d = parse("").unwrap();
        assert_eq!(Plan::for_monitor("tproxy", &d), Some(Plan::Tproxy(tp())));
        assert_eq!(Plan::for_monitor("sniff", &d), None);
        for bad in [
            "tproxy_mark = 0",
            "route_table = 0",
            "route_table = 254",
            "route_table = 255",
        ] {
            let e = parse(&format!("[firewall]\n{bad}\n")).unwrap_err();
            let key = bad.split(' ').next().unwrap();
            assert_eq!(e.key, format!("firewall.{key}"), "{e}");
        }
    }

    #[test]
    fn tproxy_routing_is_tagged_and_configurable() {
        let t = Tproxy {
            port: 1000,
            mark: 0x40,
            table: 4242,
        };
        assert_eq!(
            routing_rules(&t),
            [
                "rule add fwmark 0x40/0x40 lookup 4242 pref 31000 protocol 104",
                "route add local 0.0.0.0/0 dev lo table 4242 proto 104",
                "-6 rule add fwmark 0x40/0x40 lookup 4242 pref 31000 protocol 104",
                "-6 route add local ::/0 dev lo table 4242 proto 104",
            ]
        );
        let r = tproxy_chain_rules(&t, &Exclusions::default());
        assert!(r.iter().any(|l| l.ends_with("--set-mark 0x40/0x40")));
        assert!(r
            .iter()
            .any(|l| l.ends_with("--on-port 1000 --tproxy-mark 0x40/0x40")));
    }

    #[test]
    fn steps_add_chains_then_routing_then_jumps() {
        let plan = Plan::Tproxy(tp());
        let s: Vec<String> = steps(&["iptables", "ip6tables"], &plan, &Exclusions::default())
            .iter()
            .map(Step::to_string)
            .collect();
        assert_eq!(s[0], "iptables -t mangle -N HONEYTRAP");
        let v6 = s
            .iter()
            .position(|l| l == "ip6tables -t mangle -N HONEYTRAP");
        let first_ip = s.iter().position(|l| l.starts_with("ip ")).unwrap();
        assert!(v6.unwrap() < first_ip);
        assert_eq!(
            &s[s.len() - 2..],
            [
                "iptables -t mangle -I PREROUTING 1 -m comment --comment honeytrap -j HONEYTRAP",
                "ip6tables -t mangle -I PREROUTING 1 -m comment --comment honeytrap -j HONEYTRAP",
            ]
        );
        assert_eq!(s.iter().filter(|l| l.starts_with("ip ")).count(), 4);
        // nfqueue: filter table, jump from INPUT, no routing.
        let s = steps(
            &["iptables"],
            &Plan::Nfqueue { queue: 2 },
            &Exclusions::default(),
        );
        assert_eq!(s[0].to_string(), "iptables -N HONEYTRAP");
        assert!(s.iter().all(|x| x.program == "iptables"));
        assert_eq!(
            s.last().unwrap().args,
            "-I INPUT 1 -m comment --comment honeytrap -j HONEYTRAP"
        );
    }

    #[test]
    fn missing_kernel_modules_are_named() {
        let tproxy = "-t mangle -A HONEYTRAP -p tcp -j TPROXY --on-port 1 --tproxy-mark 0x1/0x1";
        let h = module_hint(
            tproxy,
            "iptables v1.8.9 (legacy): Couldn't load target `TPROXY':No such file or directory",
        )
        .unwrap();
        assert!(
            h.contains("xt_TPROXY") && h.contains("nf_tproxy_ipv6"),
            "{h}"
        );
        let socket = "-t mangle -A HONEYTRAP -p tcp -m socket -j RETURN";
        let h = module_hint(
            socket,
            "Extension socket revision 0 not supported, missing kernel module?",
        )
        .unwrap();
        assert!(h.contains("xt_socket") && !h.contains("TPROXY"), "{h}");
        // nf_tables: the message names no extension; the rule tells which.
        let h = module_hint(
            socket,
            "iptables v1.8.9 (nf_tables): RULE_APPEND failed (No such file or directory): rule in chain HONEYTRAP",
        )
        .unwrap();
        assert!(h.contains("xt_socket"), "{h}");
        let queue = "-A HONEYTRAP -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 0 --queue-bypass";
        let h = module_hint(
            queue,
            "Couldn't load target `NFQUEUE':No such file or directory",
        )
        .unwrap();
        assert!(h.contains("nfnetlink_queue"), "{h}");
        assert!(module_hint(queue, "Permission denied (you must be root)").is_none());
        assert!(module_hint("-t mangle -N HONEYTRAP", "iptables: can't initialize iptables table `mangle': Table does not exist (do you need to insmod?)").unwrap().contains("iptable_mangle"));
    }

    #[test]
    fn only_our_exact_routes_are_removed() {
        let listing = "local default dev lo table 100 scope host \n\
                       local default dev lo table 4242 metric 1024 pref medium\n\
                       unicast 10.0.0.0/8 dev eth0 table 100 scope link \n\
                       local 10.1.2.3 dev lo table 100 scope host \n";
        assert_eq!(our_routes(listing), vec![100, 4242]);
    }

    #[test]
    fn ignored_ranges_are_never_queued_or_diverted() {
        let c = crate::config::parse(
            std::path::Path::new("x"),
            "[[ports.rule]]\nprotocol = [\"tcp\", \"udp\"]\nports = [445, \"6000-6100\"]\nmode = \"ignore\"\n[[ports.rule]]\nprotocol = \"udp\"\nports = [53]\nmode = \"normal\"\n",
        )
        .unwrap();
        let ex = Exclusions::configured(&c);
        assert_eq!(ex.ignored_tcp, vec![(445, 445), (6000, 6100)]);
        assert_eq!(ex.ignored_udp, vec![(445, 445), (6000, 6100)]);
        let q = chain_rules(0, &ex);
        assert!(q.contains(&"-A HONEYTRAP -p tcp --dport 6000:6100 -j RETURN".to_string()));
        assert!(q.contains(&"-A HONEYTRAP -p udp --dport 445 -j RETURN".to_string()));
        assert!(!q.iter().any(|l| l.contains("--dport 53 ")));
        let queue_at = q.iter().position(|l| l.contains("NFQUEUE")).unwrap();
        let ignore_at = q.iter().position(|l| l.contains("6000:6100")).unwrap();
        assert!(ignore_at < queue_at, "RETURN lines come first");
        let t = tproxy_chain_rules(&tp(), &ex);
        assert!(
            t.contains(&"-t mangle -A HONEYTRAP -p udp --dport 6000:6100 -j RETURN".to_string())
        );
    }
}
