//! Network namespaces for end-to-end tests: a honeypot namespace and an attacker
//! namespace joined by a veth pair, with IPv4 (10.77.N.0/24) and IPv6 (fd77:N::/64)
//! addresses and no default route, so no traffic can leave them. `NetTriple` adds a
//! third, "target" namespace (for proxy mode) joined to the honeypot only, on
//! 10.78.N.0/24 and fd78:N::/64. Everything is removed on drop, also when the test
//! fails.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fail loudly unless we can create namespaces; an explicit opt-out skips instead.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("HONEYTRAP_SKIP_ROOT_TESTS").is_some() {
        eprintln!("SKIPPED: needs root for network namespaces (HONEYTRAP_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!("end-to-end tests need root (network namespaces); run as root, or set HONEYTRAP_SKIP_ROOT_TESTS=1 to skip them explicitly");
}

/// Two namespaces joined by a veth pair.
pub struct NetPair {
    /// Namespace honeytrap runs in.
    pub honeypot: String,
    /// Namespace the clients run in.
    pub attacker: String,
    /// Honeypot's addresses.
    pub hp_v4: String,
    pub hp_v6: String,
    /// Attacker's addresses.
    pub at_v4: String,
    pub at_v6: String,
    /// The subnet byte N of this pair's networks.
    pub net: u32,
    /// The id that makes this pair's namespace and interface names unique.
    id: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// Create the pair. `tag` only makes names readable in `ip netns` output.
    pub fn new(tag: &str) -> NetPair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Subnet byte unique within this process, spread by pid across processes.
        let net = (pid.wrapping_mul(7) + n) % 250 + 1;
        let id = format!("{}{}", pid % 100_000, n);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let honeypot = format!("ht-{tag}-{id}-hp");
        let attacker = format!("ht-{tag}-{id}-at");
        let (va, vb) = (format!("hth{id}"), format!("hta{id}"));
        let pair = NetPair {
            honeypot: honeypot.clone(),
            attacker: attacker.clone(),
            hp_v4: format!("10.77.{net}.1"),
            hp_v6: format!("fd77:{net:x}::1"),
            at_v4: format!("10.77.{net}.2"),
            at_v6: format!("fd77:{net:x}::2"),
            net,
            id: id.clone(),
        };
        ip(&["netns", "add", &honeypot]);
        ip(&["netns", "add", &attacker]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &honeypot]);
        ip(&["link", "set", &vb, "netns", &attacker]);
        for (ns, dev, v4, v6) in [
            (&honeypot, &va, &pair.hp_v4, &pair.hp_v6),
            (&attacker, &vb, &pair.at_v4, &pair.at_v6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// A command that runs inside the honeypot namespace. Its standard streams are
    /// null unless the caller sets them, so a process left behind by a failing test
    /// cannot hold the test runner's output open.
    pub fn in_honeypot(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.honeypot, program]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// A command that runs inside the attacker namespace (streams as above).
    pub fn in_attacker(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.attacker, program]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Start a background process in the attacker namespace, killed on drop.
    pub fn background_attacker(&self, shell: &str) -> Background {
        Background(
            self.in_attacker("sh")
                .args(["-c", shell])
                .process_group(0)
                .spawn()
                .expect("spawn"),
        )
    }

    /// Start a background process in the honeypot namespace, killed on drop.
    pub fn background_honeypot(&self, program: &str, args: &[&str]) -> Background {
        Background(
            self.in_honeypot(program)
                .args(args)
                .process_group(0)
                .spawn()
                .expect("spawn"),
        )
    }

    /// Run a client in the attacker namespace with `input` on stdin, with a time
    /// limit; returns its output.
    pub fn attack(&self, program: &str, args: &[&str], input: &[u8], limit_secs: u32) -> Output {
        let mut c = Command::new("timeout");
        c.args([
            &limit_secs.to_string(),
            "ip",
            "netns",
            "exec",
            &self.attacker,
            program,
        ]);
        c.args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting client");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input);
        }
        child.wait_with_output().expect("client output")
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.honeypot, &self.attacker] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A honeypot/attacker pair plus a "target" namespace behind the honeypot: a second
/// veth joins honeypot and target only, so the attacker cannot reach the target
/// except through honeytrap (the honeypot namespace does not forward). Derefs to the
/// pair.
pub struct NetTriple {
    pub pair: NetPair,
    /// Namespace the proxy targets run in.
    pub target: String,
    /// Honeypot's addresses on the target link.
    pub hp_tg_v4: String,
    pub hp_tg_v6: String,
    /// Target's addresses.
    pub tg_v4: String,
    pub tg_v6: String,
}

impl NetPair {
    /// A pair plus a target namespace (see `NetTriple`).
    pub fn with_target(tag: &str) -> NetTriple {
        let pair = NetPair::new(tag);
        let (net, id) = (pair.net, pair.id.clone());
        let target = pair.honeypot.replace("-hp", "-tg");
        let (vh, vt) = (format!("htx{id}"), format!("htt{id}"));
        let triple = NetTriple {
            target: target.clone(),
            hp_tg_v4: format!("10.78.{net}.1"),
            hp_tg_v6: format!("fd78:{net:x}::1"),
            tg_v4: format!("10.78.{net}.2"),
            tg_v6: format!("fd78:{net:x}::2"),
            pair,
        };
        ip(&["netns", "add", &target]);
        ip(&["link", "add", &vh, "type", "veth", "peer", "name", &vt]);
        ip(&["link", "set", &vh, "netns", &triple.pair.honeypot]);
        ip(&["link", "set", &vt, "netns", &target]);
        for (ns, dev, v4, v6) in [
            (
                &triple.pair.honeypot,
                &vh,
                &triple.hp_tg_v4,
                &triple.hp_tg_v6,
            ),
            (&target, &vt, &triple.tg_v4, &triple.tg_v6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &target, "link", "set", "lo", "up"]);
        triple
    }
}

impl NetTriple {
    /// A command that runs inside the target namespace (streams null, as above).
    pub fn in_target(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.target, program]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Start a background shell command in the target namespace, killed on drop.
    pub fn background_target(&self, shell: &str) -> Background {
        Background(
            self.in_target("sh")
                .args(["-c", shell])
                .process_group(0)
                .spawn()
                .expect("spawn"),
        )
    }
}

impl std::ops::Deref for NetTriple {
    type Target = NetPair;
    fn deref(&self) -> &NetPair {
        &self.pair
    }
}

impl Drop for NetTriple {
    fn drop(&mut self) {
        // The pair's namespaces go when `pair` is dropped right after this.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.target])
            .status();
    }
}

/// A background process (and its process group), killed when dropped, also when the
/// test fails.
pub struct Background(pub Child);

impl Background {
    /// Wait for it to end on its own.
    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}
