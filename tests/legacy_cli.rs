//! End-to-end: the original honeytrap's command line with the real binary. Option
//! handling (`-h`, `-v`, refused values), `-D` in the foreground with the pid file
//! (created, locked, a stale one replaced, a live one refused, removed at exit)
//! and the main log file (`-L`, the original's layout, `-t` levels), `-l` / `-r`,
//! daemonizing without `-D`, and T-Pot's exact launch command run as an
//! unprivileged user (nobody/nogroup) holding only the documented file
//! capabilities, in a namespace with T-Pot's NFQUEUE rules, catching an attack
//! into the logJSON file.
//!
//! Every daemon runs in a network namespace the test creates (the default monitor
//! of the original command line is NFQUEUE, so the namespaces get NFQUEUE rules).

// The harness re-exports helpers this file does not use.
#[allow(unused_imports)]
mod support;

use serde_json::Value;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::clients::nc_once;
use support::daemon::{run, wait_until, BIN};
use support::firewall::{honeypot_rule, nfqueue_rules, require_iptables};
use support::{require_root, NetPair};

/// Run the binary (no namespace: options that exit before doing anything).
fn quick(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args);
    run(c, Duration::from_secs(10))
}

#[test]
fn help_version_and_refused_options() {
    let h = quick(&["-h"]);
    assert!(h.status.success());
    let out = String::from_utf8_lossy(&h.stdout);
    assert!(out.starts_with("Usage: "), "{out}");
    for needle in [
        "\t-t:\tlog level (0-6)",
        "\t-D:\tdon't daemonize",
        "\t-P:\tpid file",
    ] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
    let v = quick(&["-v"]);
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout),
        format!("honeytrap {}\n", env!("CARGO_PKG_VERSION"))
    );
    // The native command line is still there.
    let native = quick(&["--help"]);
    assert!(String::from_utf8_lossy(&native.stdout).contains("check-config"));
    for (args, needle) in [
        (&["-D", "-t", "7"][..], "between 0 and 6"),
        (&["-D", "-l", "0"][..], "between 1 and 255"),
        (&["-D", "-x"][..], "unknown option -x"),
        (&["-D", "--monitor", "pcap"][..], "must be one of"),
        (
            &["-D", "tcp[13]", "&", "4", "!=", "0"][..],
            "the filter expression `tcp[13] & 4 != 0` is not supported: column 4, `[`",
        ),
        (
            &["-D", "ether", "host", "x"][..],
            "supported: [src|dst] host",
        ),
    ] {
        let o = quick(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A missing configuration file is a configuration error naming it.
    let o = quick(&["-D", "-C", "/nonexistent/honeytrap.conf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/honeytrap.conf"));
    // A supported trailing expression is accepted: the configuration is read next.
    let o = quick(&[
        "-D",
        "-C",
        "/nonexistent/honeytrap.conf",
        "tcp",
        "port",
        "80",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/honeytrap.conf"), "{err}");
    assert!(!err.contains("filter expression"), "{err}");
}

/// A directory for one run: an original-syntax honeytrap.conf whose log file is
/// `log/honeytrap.log` (so the data directory is `log/`).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let conf = format!(
            "// original syntax\nlogfile = \"{}\"\nportconf_default = \"normal\"\nportconf = {{\n  ignore = {{ protocol = \"tcp\" port = \"22\" }}\n}}\n",
            dir.path().join("log/honeytrap.log").display()
        );
        std::fs::write(dir.path().join("honeytrap.conf"), conf).unwrap();
        Site { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn conf(&self) -> String {
        self.path("honeytrap.conf").display().to_string()
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_default()
    }

    /// Events the native JSONL output wrote (data directory = the log's).
    fn events(&self) -> Vec<Value> {
        self.read("log/events.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A foreground honeytrap started with `args` in the honeypot namespace; its
/// standard output and error go to files in the site.
struct Fg {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Fg {
    fn start(net: &NetPair, site: &Site, tag: &str, args: &[&str]) -> Fg {
        let out = site.path(&format!("{tag}.stdout"));
        let err = site.path(&format!("{tag}.stderr"));
        let child = net
            .in_honeypot(BIN)
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("starting honeytrap");
        Fg {
            child: Some(child),
            out,
            err,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Wait for an exit (bounded); returns the exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("honeytrap did not exit within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> Option<i32> {
        kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for Fg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether another open file description can take the pid file's flock.
fn lockable(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The original's line layout: `[YYYY-MM-DD HH:MM:SS]  ` then, with `pid`, the pid
/// right-aligned in five columns and two spaces. Returns the text after it.
fn original_line(line: &str, pid: Option<u32>) -> &str {
    let b = line.as_bytes();
    assert!(b.len() > 23, "short line {line:?}");
    assert_eq!(b[0], b'[', "{line:?}");
    let ts = &line[1..20];
    assert!(
        chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").is_ok(),
        "timestamp in {line:?}"
    );
    assert_eq!(&line[20..23], "]  ", "{line:?}");
    match pid {
        None => &line[23..],
        Some(pid) => {
            let col = format!("{pid:>5}  ");
            assert!(
                line[23..].starts_with(&col),
                "pid column {col:?} in {line:?}"
            );
            &line[23 + col.len()..]
        }
    }
}

/// Namespaces with NFQUEUE rules on queue 0 (the original command line's monitor).
fn setup(tag: &str) -> Option<NetPair> {
    if !require_root() {
        return None;
    }
    require_iptables();
    let net = NetPair::new(tag);
    nfqueue_rules(&net, 0);
    Some(net)
}

#[test]
fn foreground_pidfile_and_log_file() {
    let Some(net) = setup("lcfg") else { return };
    let site = Site::new();
    let pidfile = site.path("honeytrap.pid");
    let logfile = site.path("main.log");
    // A stale pid file: a pid that cannot exist (above the kernel's pid limit).
    std::fs::write(&pidfile, "4194305\n").unwrap();
    let args = [
        "-D",
        "-C",
        &site.conf(),
        "-P",
        pidfile.to_str().unwrap(),
        "-L",
        logfile.to_str().unwrap(),
        "-t",
        "6",
    ];
    let mut d = Fg::start(&net, &site, "first", &args);
    let pid = d.pid();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            &logfile
        )
        .unwrap_or_default()
        .contains("  ready ")),
        "not ready: {}\n{}",
        std::fs::read_to_string(&logfile).unwrap_or_default(),
        d.stderr()
    );
    // The pid file: replaced, ours, locked.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );
    assert!(!lockable(&pidfile), "the pid file must be locked");
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(log.contains("replaced the stale pid file"), "{log}");
    assert!(log.contains("pid 4194305 is not running"), "{log}");
    // -L wins over the configuration's logfile; every line in the original layout
    // with the pid column of level 6.
    assert!(!site.path("log/honeytrap.log").exists());
    for l in log.lines() {
        original_line(l, Some(pid));
    }
    assert!(log.contains("monitor: nfqueue on queue 0"), "{log}");
    assert!(
        log.contains("Warning - "),
        "warnings are marked as the original's: {log}"
    );
    // -D: the same lines on standard output.
    let first = log.lines().next().unwrap();
    assert!(d.stdout().contains(first), "stdout: {}", d.stdout());

    // It serves: NFQUEUE catches the first attempt.
    let o = nc_once(&net, &net.hp_v4.clone(), 4711, b"legacy cli\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(Duration::from_secs(10), || site
        .events()
        .iter()
        .any(|e| e["destination"]["port"] == 4711)));

    // A second start with the same pid file is refused, clearly.
    let mut second = Fg::start(&net, &site, "second", &args);
    assert_eq!(second.wait(Duration::from_secs(20)), Some(1));
    let err = second.stderr();
    assert!(err.contains("is held by a running honeytrap"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );

    // SIGHUP reopens the log file (rotation).
    std::fs::rename(&logfile, site.path("main.log.1")).unwrap();
    kill(pid, nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &logfile
        )
        .unwrap_or_default()
        .contains("configuration reloaded")),
        "no new log file after SIGHUP"
    );

    assert_eq!(d.stop(), Some(0));
    assert!(!pidfile.exists(), "the pid file is removed at exit");
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        log.trim_end().ends_with("---- honeytrap stopped ----"),
        "{log}"
    );
}

/// nc -z from the attacker: true when the connection was accepted.
fn accepted(net: &NetPair, port: u16) -> bool {
    net.attack(
        "nc",
        &["-z", "-w", "1", &net.hp_v4, &port.to_string()],
        b"",
        4,
    )
    .status
    .success()
}

#[test]
fn trailing_expression_filters_the_sniffer() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("lcflt");
    let site = Site::new();
    let pid_s = site.path("h.pid").display().to_string();
    let conf = site.conf();
    let mut d = Fg::start(
        &net,
        &site,
        "flt",
        &[
            "-D",
            "-C",
            &conf,
            "-P",
            &pid_s,
            "-t",
            "4",
            "--monitor",
            "sniff",
            "not",
            "port",
            "21101",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || site
            .read("log/honeytrap.log")
            .contains("  ready ")),
        "not ready: {}\n{}",
        site.read("log/honeytrap.log"),
        d.stderr()
    );
    // Excluded by the expression: the sniffer never binds 21101.
    for _ in 0..2 {
        assert!(!accepted(&net, 21101), "{}", site.read("log/honeytrap.log"));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Any other port: refused once, caught on the retry.
    assert!(!accepted(&net, 21102));
    std::thread::sleep(Duration::from_millis(300));
    assert!(accepted(&net, 21102), "{}", site.read("log/honeytrap.log"));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn levels_and_timeouts() {
    let Some(net) = setup("lclvl") else { return };
    let site = Site::new();
    let pidfile = site.path("h.pid");
    let pid_s = pidfile.to_str().unwrap().to_string();
    let conf = site.conf();

    // -t 0: nothing at all in the log file.
    let mut d = Fg::start(
        &net,
        &site,
        "t0",
        &["-D", "-C", &conf, "-P", &pid_s, "-t", "0"],
    );
    assert!(wait_until(Duration::from_secs(20), || pidfile.exists()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.stop(), Some(0));
    assert_eq!(site.read("log/honeytrap.log"), "", "level 0 logs nothing");

    // -t 3 (the default, NOTICE): start-up lines, no pid column, no debug lines;
    // -r 3 and -l 2 take effect.
    let mut d = Fg::start(
        &net,
        &site,
        "t3",
        &[
            "-D", "-C", &conf, "-P", &pid_s, "-t", "3", "-r", "3", "-l", "2",
        ],
    );
    assert!(wait_until(Duration::from_secs(20), || site
        .read("log/honeytrap.log")
        .contains("  ready ")));
    let pid = d.pid();
    // Normal mode answers after read_timeout of silence: 3 s, not the default 1 s.
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',4712),timeout=10)\nt=time.time()\ns.recv(100)\nprint(time.time()-t)\n",
        net.hp_v4
    );
    let o = net.attack("python3", &["-c", &script], b"", 15);
    let waited: f64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("client: {}", String::from_utf8_lossy(&o.stderr)));
    assert!(
        (2.7..8.0).contains(&waited),
        "first response after {waited} s (-r 3)"
    );
    // The server on 4712 idles out after conn_timeout (2 s; default 120 s).
    let listening = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.honeypot,
                "ss",
                "-Hltn",
                "sport = :4712",
            ])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(
        wait_until(Duration::from_secs(15), || !listening()),
        "the server on 4712 must close after -l 2"
    );
    assert_eq!(d.stop(), Some(0));
    let log = site.read("log/honeytrap.log");
    assert!(
        log.contains("started with the original command line"),
        "{log}"
    );
    // A server was started, but that is a debug line (-t 5 and up).
    assert!(!log.contains("server started"), "{log}");
    for l in log.lines() {
        let text = original_line(l, None);
        assert!(!text.starts_with(&format!("{pid:>5}  ")), "{l}");
    }
}

#[test]
fn daemonizes_without_d() {
    let Some(net) = setup("lcdmn") else { return };
    let site = Site::new();
    let pidfile = site.path("run/honeytrap.pid");
    std::fs::create_dir_all(site.path("run")).unwrap();
    // Started as root, switching to nobody: the pid file's directory is the
    // user's, so the pid file can be removed after the switch.
    nix::unistd::chown(
        &site.path("run"),
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let conf = site.conf();
    let args = [
        "-C",
        conf.as_str(),
        "-P",
        pidfile.to_str().unwrap(),
        "-u",
        "nobody",
        "-g",
        "nogroup",
    ];
    let mut c = net.in_honeypot(BIN);
    c.args(args);
    let started = Instant::now();
    let o = run(c, Duration::from_secs(60));
    assert_eq!(
        o.status.code(),
        Some(0),
        "the command returns once the daemon is ready: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the daemon wrote its pid file before reporting ready")
        .trim()
        .parse()
        .unwrap();
    // Whatever happens below, the daemon is stopped by its pid.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            kill(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _reap = Reap(pid);
    assert!(started.elapsed() < Duration::from_secs(60));
    let status = support::daemon::proc_status(pid);
    assert!(status.contains("honeytrap"), "{status}");
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    // The log file was opened as root and handed to the user.
    let meta = std::fs::metadata(site.path("log/honeytrap.log")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    // Detached: its own session (not the leader: it forked twice), no terminal.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_ne!(sid.as_raw(), pid as i32);
    assert_ne!(sid, nix::unistd::getsid(None).unwrap());
    let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(fd0, Path::new("/dev/null"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    assert!(!lockable(&pidfile));

    // It serves.
    let o = nc_once(&net, &net.hp_v4.clone(), 4713, b"daemon\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(Duration::from_secs(10), || site
        .events()
        .iter()
        .any(|e| e["destination"]["port"] == 4713)));

    // Starting it again: the command reports the live pid file and fails.
    let mut c = net.in_honeypot(BIN);
    c.args(args);
    let o = run(c, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is held by a running honeytrap"), "{err}");

    kill(pid, nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(20), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()
            || support::daemon::proc_status(pid).contains("State:\tZ")),
        "the daemon did not stop"
    );
    assert!(wait_until(Duration::from_secs(5), || !pidfile.exists()));
    let log = site.read("log/honeytrap.log");
    for l in log.lines() {
        original_line(l, None);
    }
    assert!(log.contains("---- honeytrap stopped ----"), "{log}");
}

/// `setcap` from libcap2-bin, or a clear failure.
fn require_setcap() {
    let ok = Command::new("setcap")
        .arg("-h")
        .output()
        .map(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
        .unwrap_or(false);
    assert!(
        ok,
        "`setcap` is needed by the T-Pot test: install libcap2-bin (apt-get install -y libcap2-bin; .ci/run does it)"
    );
}

/// T-Pot's firewall script (IPv4, TCP only): loopback and the ports of real
/// services accepted, every other new TCP SYN to queue 0, without bypass.
fn tpot_rules(net: &NetPair) {
    require_iptables();
    for rule in [
        "-w -A INPUT -s 127.0.0.1 -j ACCEPT",
        "-w -A INPUT -d 127.0.0.1 -j ACCEPT",
        "-w -A INPUT -p tcp --dport 22 -j ACCEPT",
        "-w -A INPUT -p tcp --syn -m state --state NEW -j NFQUEUE",
    ] {
        honeypot_rule(net, false, rule);
    }
}

/// T-Pot's layout under `root`: the configuration (tests/fixtures/tpot-honeytrap.conf
/// with /opt/honeytrap moved under `root`), the directories honeytrap writes
/// owned by nobody, and the binary copied with `caps` set on it.
fn tpot_site(root: &Path, caps: &str) -> (PathBuf, PathBuf) {
    let opt = root.join("opt/honeytrap");
    for d in [
        "etc/honeytrap/responses",
        "var/log",
        "var/attacks",
        "var/downloads",
    ] {
        std::fs::create_dir_all(opt.join(d)).unwrap();
    }
    std::fs::create_dir_all(root.join("tmp/honeytrap")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tpot-honeytrap.conf"),
    )
    .unwrap()
    .replace("/opt/honeytrap", opt.to_str().unwrap());
    let conf_path = opt.join("etc/honeytrap/honeytrap.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // As T-Pot's compose file: only the volumes (and the tmpfs) are the user's;
    // `var` itself belongs to the read-only image.
    let status = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(opt.join("var/attacks"))
        .arg(opt.join("var/downloads"))
        .arg(opt.join("var/log"))
        .arg(root.join("tmp/honeytrap"))
        .status()
        .unwrap();
    assert!(status.success());
    for d in [root.to_path_buf(), root.join("bin")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = root.join("bin/honeytrap");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setcap").arg(caps).arg(&bin).output().unwrap();
    assert!(
        out.status.success(),
        "setcap {caps}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (conf_path, bin)
}

/// T-Pot's command, exactly, with `-u nobody -g nogroup` for its honeytrap user,
/// started as nobody (setpriv) in the honeypot namespace.
fn tpot_start(net: &NetPair, root: &Path, conf: &Path, bin: &Path) -> Child {
    let pidfile = root.join("tmp/honeytrap/honeytrap.pid");
    Command::new("ip")
        .args(["netns", "exec", &net.honeypot])
        .args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(bin)
        .args(["-D", "-C"])
        .arg(conf)
        .arg("-P")
        .arg(&pidfile)
        .args(["-t", "5", "-u", "nobody", "-g", "nogroup"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(root.join("stdout")).unwrap())
        .stderr(std::fs::File::create(root.join("stderr")).unwrap())
        .spawn()
        .expect("starting honeytrap")
}

/// The capability bits of CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13).
const TPOT_CAPS: u64 = (1 << 10) | (1 << 12) | (1 << 13);

#[test]
fn tpot_command_unprivileged_with_nfqueue_rules() {
    if !require_root() {
        return;
    }
    require_setcap();
    let net = NetPair::new("lctpot");
    tpot_rules(&net);
    let root = tempfile::tempdir().unwrap();
    let (conf, bin) = tpot_site(
        root.path(),
        "cap_net_bind_service,cap_net_admin,cap_net_raw=+ep",
    );
    let opt = root.path().join("opt/honeytrap");
    let log_path = opt.join("var/log/honeytrap.log");
    let pidfile = root.path().join("tmp/honeytrap/honeytrap.pid");
    let mut child = tpot_start(&net, root.path(), &conf, &bin);
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let guard = Reap(&mut child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let stderr = || std::fs::read_to_string(root.path().join("stderr")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || log().contains("  ready ")),
        "not ready:\n{}\nstderr: {}",
        log(),
        stderr()
    );
    // An unprivileged process with exactly the file capabilities.
    let status = support::daemon::proc_status(pid);
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert_eq!(
        support::daemon::capability_set(&status, "CapEff:"),
        TPOT_CAPS
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );
    let l = log();
    assert!(l.contains("monitor: nfqueue on queue 0"), "{l}");
    assert!(l.contains("already running as user nobody"), "{l}");
    assert!(!l.contains("cannot bind ports below"), "{l}");
    assert!(
        l.contains("the native outputs there (events.jsonl, transcripts) are off"),
        "{l}"
    );
    for line in l.lines() {
        original_line(line, None);
    }

    // Attacks on a high port and on one below 1024: the first try is caught.
    let mut sent = Vec::new();
    for port in [4444u16, 445] {
        let data = format!("tpot attack on {port}\r\n");
        let o = nc_once(&net, &net.hp_v4.clone(), port, data.as_bytes());
        assert!(
            o.status.success(),
            "port {port}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            log()
        );
        sent.push((port, data));
    }
    // Captured into T-Pot's logJSON file, written as nobody.
    let json_path = opt.join("var/log/attackers.json");
    let mut records: Vec<Value> = Vec::new();
    let all_there = wait_until(Duration::from_secs(20), || {
        records = std::fs::read_to_string(&json_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        sent.iter().all(|(port, _)| {
            records
                .iter()
                .any(|r| r["attack_connection"]["local_port"] == *port)
        })
    });
    assert!(all_there, "logJSON records: {records:#?}\nlog:\n{}", log());
    for (port, data) in &sent {
        let r = records
            .iter()
            .find(|r| r["attack_connection"]["local_port"] == *port)
            .unwrap();
        let a = &r["attack_connection"];
        assert_eq!(a["protocol"], "tcp");
        assert_eq!(a["remote_ip"], net.at_v4.as_str());
        assert_eq!(a["local_ip"], net.hp_v4.as_str());
        assert_eq!(a["payload"]["data_hex"], hex::encode(data.as_bytes()));
        assert_eq!(a["payload"]["length"], data.len());
    }
    // -t 5 (the original's LOG_NOISY): our debug lines, such as each new server.
    let l = log();
    assert!(l.contains("  server started proto=tcp port=445 "), "{l}");
    // SaveFile's attack files, in T-Pot's attacks volume.
    let attacks = opt.join("var/attacks");
    let saved = || -> Vec<String> {
        std::fs::read_dir(&attacks)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || saved()
            .iter()
            .any(|n| n.starts_with("from_port_445-tcp_"))),
        "{:?}",
        saved()
    );
    let meta = std::fs::metadata(&json_path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);

    kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(st) = guard.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guard);
    assert_eq!(code, Some(0), "{}", stderr());
    assert!(!pidfile.exists(), "pid file removed at exit");

    // With T-Pot's own setcap (cap_net_admin only) the ports below 1024 are
    // reported at start, where the original failed on them silently.
    let root2 = tempfile::tempdir().unwrap();
    let (conf2, bin2) = tpot_site(root2.path(), "cap_net_admin=+ep");
    let log2 = root2.path().join("opt/honeytrap/var/log/honeytrap.log");
    let mut c2 = tpot_start(&net, root2.path(), &conf2, &bin2);
    let ok = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log2)
            .unwrap_or_default()
            .contains("  ready ")
    });
    kill(c2.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = c2.wait();
    let l2 = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(ok, "{l2}");
    assert!(
        l2.contains("Warning - not root and without CAP_NET_BIND_SERVICE: the nfqueue monitor cannot bind ports below 1024 (1-1023/tcp, 1-1023/udp)"),
        "{l2}"
    );
    assert!(
        l2.contains("setcap cap_net_bind_service,cap_net_admin,cap_net_raw=+ep"),
        "{l2}"
    );
}
