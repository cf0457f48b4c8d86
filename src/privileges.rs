//! Process set-up before the runtime starts: the descriptor limit, the data
//! directory, and dropping root to the configured user with only the capabilities
//! the monitor needs. Done before any thread exists, because capabilities are
//! per thread and threads inherit them from their creator.

use anyhow::{bail, Context as _};
use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Group, Uid, User};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

/// Raise RLIMIT_NOFILE's soft limit to its hard limit. Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Put the calling thread under the `SCHED_IDLE` policy (Linux policies are per
/// thread): it runs only when no other thread wants the CPU, and a waking thread
/// of any other policy preempts it at once. Failure only costs priority: logged at
/// debug level with `what`.
pub fn idle_thread_priority(what: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; `0` is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(what, error = %std::io::Error::last_os_error(), "cannot set SCHED_IDLE");
    }
}

/// The user and group to switch to, resolved.
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub name: String,
}

/// The calling thread's nice value (Linux nice values are per thread).
pub fn thread_nice() -> i32 {
    // SAFETY: getpriority takes no pointers; -1 is a valid result, so errno is
    // cleared first and checked after.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if n == -1 && *libc::__errno_location() != 0 {
            return 0;
        }
        n
    }
}

/// `process.nice`: the least nice value of every thread that does honeytrap's
/// work (see [`set_process_nice`]).
static PROCESS_NICE: AtomicI32 = AtomicI32::new(0);

/// Record `process.nice`, before any thread is started. A honeypot shares its host
/// (a T-Pot host runs a score of them beside their databases): under a flood of
/// attack traffic it must not take the CPU from the host's own work. Every thread
/// that does honeytrap's work lowers itself to at least this value when it starts
/// ([`lower_thread_priority`]); the main thread (it only waits for signals) and the
/// nfqueue monitor's queue thread (started from it; every new connection to the
/// host waits for it) keep the priority honeytrap was started with, so no
/// privilege is needed to run the verdict path above the rest.
pub fn set_process_nice(nice: i32) {
    PROCESS_NICE.store(nice, Relaxed);
}

/// Lower the calling thread's priority to `below` nice steps under `process.nice`
/// (at most nice 19), never raising it (a thread already below stays there): all of
/// honeytrap's work yields the CPU to the host's (`below` 0), and background work
/// (analysis, outputs) to capture. Steps rather than absolute values keep that
/// order, and the share of the CPU one gets beside the other, whatever
/// `process.nice` is. Failure only costs priority: logged at debug level with
/// `what`.
pub fn lower_thread_priority(below: i32, what: &str) {
    let nice = PROCESS_NICE
        .load(Relaxed)
        .saturating_add(below.max(0))
        .min(19);
    if nice <= thread_nice() {
        return;
    }
    // SAFETY: setpriority only reads its arguments; `0` is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!(nice, what, "cannot set the thread's nice value");
    }
}

/// Resolve `process.user` / `process.group` (None when no user is configured).
pub fn resolve(user: &str, group: &str) -> anyhow::Result<Option<Identity>> {
    if user.is_empty() {
        return Ok(None);
    }
    let u =
        User::from_name(user)?.with_context(|| format!("process.user: no such user `{user}`"))?;
    let gid = if group.is_empty() {
        u.gid
    } else {
        Group::from_name(group)?
            .with_context(|| format!("process.group: no such group `{group}`"))?
            .gid
    };
    Ok(Some(Identity {
        uid: u.uid,
        gid,
        name: u.name,
    }))
}

/// Create the data directory and hand it to the user honeytrap will run as.
pub fn prepare_data_dir(dir: &Path, who: Option<&Identity>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    if let Some(id) = who {
        nix::unistd::chown(dir, Some(id.uid), Some(id.gid))
            .with_context(|| format!("handing {} to {}", dir.display(), id.name))?;
    }
    Ok(())
}

/// Switch to `who`, keeping only `keep` as permitted and effective capabilities.
/// `for_children` (a subset of `keep`) is also made ambient, so programs honeytrap
/// runs itself (only `iptables`, to remove its rules at exit) get them too.
pub fn drop_to(
    who: &Identity,
    keep: &[Capability],
    for_children: &[Capability],
) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        bail!("process.user is set but honeytrap was not started as root");
    }
    caps::securebits::set_keepcaps(true).context("PR_SET_KEEPCAPS")?;
    nix::unistd::setgroups(&[who.gid]).context("setgroups")?;
    nix::unistd::setresgid(who.gid, who.gid, who.gid).context("setresgid")?;
    nix::unistd::setresuid(who.uid, who.uid, who.uid).context("setresuid")?;
    let set: CapsHashSet = keep.iter().copied().collect();
    let inherit: CapsHashSet = for_children
        .iter()
        .copied()
        .filter(|c| set.contains(c))
        .collect();
    caps::set(None, CapSet::Permitted, &set).context("setting permitted capabilities")?;
    caps::set(None, CapSet::Effective, &set).context("setting effective capabilities")?;
    caps::set(None, CapSet::Inheritable, &inherit).context("setting inheritable capabilities")?;
    for c in &inherit {
        caps::raise(None, CapSet::Ambient, *c).with_context(|| format!("raising ambient {c}"))?;
    }
    caps::securebits::set_keepcaps(false).context("PR_SET_KEEPCAPS")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could regain root after dropping privileges");
    }
    Ok(())
}

/// Ports below `net.ipv4.ip_unprivileged_port_start` that `monitor` may bind, as
/// (protocol, first, last) ranges: binding them needs CAP_NET_BIND_SERVICE. The
/// original honeytrap failed on them silently when it lacked the capability.
pub fn privileged_ports(
    config: &crate::config::Config,
    policy: &crate::config::PortPolicy,
    monitor: &str,
    start: u16,
) -> Vec<(crate::proto::Protocol, u16, u16)> {
    use crate::attack::Mode;
    use crate::proto::Protocol;
    let low = |r: &crate::config::PortRange| r.range().filter(move |p| *p < start);
    let mut out = Vec::new();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let ports: Vec<u16> = match monitor {
            "listen" => {
                let l = &config.monitor.listen;
                let list = if proto == Protocol::Tcp {
                    &l.tcp
                } else {
                    &l.udp
                };
                let mut v: Vec<u16> = list.iter().flat_map(low).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            "tproxy" => Some(config.monitor.tproxy.port)
                .filter(|p| *p < start && *p > 0)
                .into_iter()
                .collect(),
            // nfqueue and sniff start a server for any port the policy handles.
            _ => (1..start).collect(),
        };
        let ports = ports
            .into_iter()
            .filter(|p| monitor == "tproxy" || policy.mode(proto, *p) != Mode::Ignore);
        for p in ports {
            match out.last_mut() {
                Some((pr, _, last)) if *pr == proto && *last + 1 == p => *last = p,
                _ => out.push((proto, p, p)),
            }
        }
    }
    out
}

/// `net.ipv4.ip_unprivileged_port_start` of this network namespace (1024 when it
/// cannot be read).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Whether this process will bind without CAP_NET_BIND_SERVICE: not root and the
/// capability is not in the effective set (root keeps it for every monitor, also
/// after dropping to `process.user`).
pub fn lacks_bind_capability() -> bool {
    !Uid::effective().is_root()
        && !caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_BIND_SERVICE)
            .unwrap_or(false)
}

/// The start-up warning when ports below 1024 cannot be bound: names the ports
/// and the fix. None when every port can be bound.
pub fn low_port_warning(
    config: &crate::config::Config,
    policy: &crate::config::PortPolicy,
    monitor: &str,
) -> Option<String> {
    if !lacks_bind_capability() {
        return None;
    }
    let start = unprivileged_port_start();
    let ranges = privileged_ports(config, policy, monitor, start);
    if ranges.is_empty() {
        return None;
    }
    let list: Vec<String> = ranges
        .iter()
        .map(|(proto, a, b)| {
            if a == b {
                format!("{a}/{}", proto.as_str())
            } else {
                format!("{a}-{b}/{}", proto.as_str())
            }
        })
        .collect();
    Some(format!(
        "not root and without CAP_NET_BIND_SERVICE: the {monitor} monitor cannot bind ports below {start} ({}); connections to them are not caught. Fix: setcap cap_net_bind_service,cap_net_admin,cap_net_raw=+ep on the honeytrap binary (or AmbientCapabilities=CAP_NET_BIND_SERVICE in its systemd unit)",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Protocol;

    fn loaded(toml: &str) -> (crate::config::Config, crate::config::PortPolicy) {
        let c = crate::config::parse(Path::new("t.toml"), toml).expect("valid config");
        let p = crate::config::PortPolicy::build(&c).expect("valid policy");
        (c, p)
    }

    #[test]
    fn privileged_ports_follow_the_monitor_and_the_policy() {
        let l = loaded(
            "[monitor.listen]\ntcp = [80, 443, 8080]\nudp = [53]\n\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"20-22\"]\nmode = \"ignore\"\n",
        );
        let (c, pol) = &l;
        let p = |m| privileged_ports(c, pol, m, 1024);
        assert_eq!(
            p("listen"),
            vec![
                (Protocol::Tcp, 80, 80),
                (Protocol::Tcp, 443, 443),
                (Protocol::Udp, 53, 53)
            ]
        );
        assert_eq!(
            p("nfqueue"),
            vec![
                (Protocol::Tcp, 1, 19),
                (Protocol::Tcp, 23, 1023),
                (Protocol::Udp, 1, 1023)
            ]
        );
        assert_eq!(
            privileged_ports(c, pol, "sniff", 80),
            vec![
                (Protocol::Tcp, 1, 19),
                (Protocol::Tcp, 23, 79),
                (Protocol::Udp, 1, 79)
            ]
        );
        // The tproxy monitor binds its own port only (65499 by default).
        assert!(p("tproxy").is_empty());
        assert!(privileged_ports(c, pol, "nfqueue", 0).is_empty());
    }
}
