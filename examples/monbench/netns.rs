//! The two network namespaces of one measurement (honeypot and attacker, joined by a
//! veth pair, IPv4 addresses only, no default route), the documented NFQUEUE and
//! TPROXY rules inside the honeypot namespace, and the clean-up: a Drop guard for
//! normal and error exits, and a signal thread that removes every namespace still
//! registered on Ctrl-C / SIGTERM / SIGHUP before the process exits.

use anyhow::{bail, Context as _, Result};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Namespaces that exist right now (removed by the guard or by the signal thread).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Temporary directories (honeytrap's config and data) to remove on a signal; on
/// other exits their `TempDir` guard removes them.
static DIRS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Remove `dir` too if the harness is ended by a signal (`forget_dir` when done).
pub fn remember_dir(dir: &std::path::Path) {
    DIRS.lock().unwrap().push(dir.to_path_buf());
}

pub fn forget_dir(dir: &std::path::Path) {
    DIRS.lock().unwrap().retain(|d| d != dir);
}

/// Block SIGINT, SIGTERM and SIGHUP in this (the main) thread, so every thread started
/// later inherits the mask, and let one thread wait for them: it removes the live
/// namespaces and exits. Children unblock them again and die with the harness
/// (`child_setup`).
pub fn install_signal_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("blocking signals")?;
    std::thread::Builder::new()
        .name("monbench-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("\nmonbench: {sig:?}: removing the namespaces and exiting");
                remove_all();
                std::process::exit(130);
            }
        })?;
    Ok(())
}

/// Make `cmd`'s process die with the harness (parent-death signal SIGKILL; `ip
/// netns exec` execs the program, so it is the program that gets it) and start it
/// with no signal blocked (the harness blocks SIGINT/SIGTERM in its threads).
pub fn child_setup(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Which side of the measurement a process is on, for [`pin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client or nmap (attacker namespace).
    Attacker,
    /// honeytrap or the bare server (honeypot namespace).
    Target,
}

/// `--pin`: the attacker side runs on CPU 0 only, the target on every other CPU,
/// as if the attacker were another machine (set once, before any process starts).
pub static PIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Under `--pin`, restrict what `cmd` runs (and every thread it starts) to its
/// side's CPUs.
pub fn pin(cmd: &mut Command, side: Side) {
    use std::os::unix::process::CommandExt as _;
    if !PIN.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    match side {
        Side::Attacker => unsafe { libc::CPU_SET(0, &mut set) },
        Side::Target => (1..cpus).for_each(|c| unsafe { libc::CPU_SET(c, &mut set) }),
    }
    // SAFETY: sched_setaffinity is async-signal-safe; `set` is a valid cpu_set_t.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Remove every registered namespace and directory (the processes in them die with the harness,
/// through their parent-death signal; iptables rules and routes go with the namespace).
fn remove_all() {
    let names: Vec<String> = LIVE
        .lock()
        .map(|mut v| v.drain(..).collect())
        .unwrap_or_default();
    for ns in names {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    let dirs: Vec<_> = DIRS
        .lock()
        .map(|mut v| v.drain(..).collect())
        .unwrap_or_default();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Run a command; fail with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A honeypot and an attacker namespace joined by a veth pair; removed on drop.
pub struct NetPair {
    pub honeypot: String,
    pub attacker: String,
    pub hp_v4: String,
    pub at_v4: String,
}

impl NetPair {
    /// Create the pair (`tag`: a few letters, for `ip netns` listings).
    pub fn new(tag: &str) -> Result<NetPair> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let net = (pid.wrapping_mul(13) + n) % 250 + 1;
        let id = format!("{}{}", pid % 100_000, n);
        let pair = NetPair {
            honeypot: format!("mb-{tag}-{id}-hp"),
            attacker: format!("mb-{tag}-{id}-at"),
            hp_v4: format!("10.78.{net}.1"),
            at_v4: format!("10.78.{net}.2"),
        };
        // Registered before creation: a failure half-way is cleaned up too.
        for ns in [&pair.honeypot, &pair.attacker] {
            LIVE.lock().unwrap().push(ns.clone());
        }
        pair.create(&format!("mbh{id}"), &format!("mba{id}"))?;
        Ok(pair)
    }

    fn create(&self, va: &str, vb: &str) -> Result<()> {
        run("ip", &["netns", "add", &self.honeypot])?;
        run("ip", &["netns", "add", &self.attacker])?;
        run(
            "ip",
            &[
                "-n",
                &self.honeypot,
                "link",
                "add",
                va,
                "type",
                "veth",
                "peer",
                "name",
                vb,
                "netns",
                &self.attacker,
            ],
        )?;
        for (ns, dev, v4) in [
            (&self.honeypot, va, &self.hp_v4),
            (&self.attacker, vb, &self.at_v4),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev],
            )?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// `iptables RULE` inside the honeypot namespace.
    fn iptables(&self, rule: &str) -> Result<()> {
        let mut args = vec!["netns", "exec", &self.honeypot, "iptables", "-w"];
        args.extend(rule.split_whitespace());
        run("ip", &args)
    }

    /// The NFQUEUE rules of docs/configuration.md (IPv4): loopback and SSH are never
    /// queued; new TCP SYNs and new UDP datagrams go to `queue`, bypassed while
    /// nobody reads it.
    pub fn nfqueue_rules(&self, queue: u16) -> Result<()> {
        for rule in [
            "-A INPUT -i lo -j ACCEPT".to_string(),
            "-A INPUT -p tcp --dport 22 -j ACCEPT".to_string(),
            format!("-A INPUT -p tcp --syn -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"),
            format!("-A INPUT -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue} --queue-bypass"),
        ] {
            self.iptables(&rule)?;
        }
        Ok(())
    }

    /// The TPROXY rules and policy routing of docs/configuration.md (IPv4).
    pub fn tproxy_rules(&self, port: u16) -> Result<()> {
        for rule in [
            "-t mangle -A PREROUTING -i lo -j RETURN".to_string(),
            "-t mangle -A PREROUTING -p tcp --dport 22 -j RETURN".to_string(),
            format!("-t mangle -A PREROUTING -p tcp --dport {port} -j RETURN"),
            format!("-t mangle -A PREROUTING -p udp --dport {port} -j RETURN"),
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
            self.iptables(&rule)?;
        }
        let ns = &self.honeypot;
        run(
            "ip",
            &["-n", ns, "rule", "add", "fwmark", "0x1", "lookup", "100"],
        )?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "add",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "100",
            ],
        )
    }

    /// A command run inside `ns` (`ip netns exec NS PROGRAM`).
    pub fn exec_in(ns: &str, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// A counter from the honeypot namespace's /proc/net/netstat or /proc/net/snmp
    /// (e.g. `TcpExt` `ListenOverflows`).
    pub fn honeypot_counter(&self, group: &str, name: &str) -> Option<u64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.honeypot,
                "cat",
                "/proc/net/netstat",
                "/proc/net/snmp",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        net_counter(&String::from_utf8_lossy(&out.stdout), group, name)
    }
}

impl NetPair {
    /// Packets the kernel dropped at the honeypot namespace's packet sockets (the
    /// sniffer's; `d` of `ss -0 -m`), and their receive buffer size: honeytrap does not
    /// count these itself.
    pub fn packet_socket_drops(&self) -> Option<(u64, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.honeypot, "ss", "-0", "-a", "-m"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (mut drops, mut rb, mut found) = (0, 0, false);
        for mem in text.split("skmem:(").skip(1) {
            let mem = mem.split(')').next().unwrap_or("");
            for f in mem.split(',') {
                if let Some(d) = f.strip_prefix('d').and_then(|v| v.parse::<u64>().ok()) {
                    drops += d;
                    found = true;
                } else if let Some(b) = f.strip_prefix("rb").and_then(|v| v.parse::<u64>().ok()) {
                    rb = rb.max(b);
                }
            }
        }
        found.then_some((drops, rb))
    }
}

/// `name` of `group` in the text of /proc/net/netstat or /proc/net/snmp (a header
/// line `Group: names...` followed by a value line `Group: values...`).
pub fn net_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (header, values) = (lines.next()?, lines.next()?);
    let i = header.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.honeypot, &self.attacker] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            LIVE.lock().unwrap().retain(|n| n != ns);
        }
    }
}
