//! The original honeytrap's command line, for drop-in replacement (T-Pot runs
//! `honeytrap -D -C FILE -P PIDFILE -t 5 -u honeytrap -g honeytrap`): its options
//! ([`legacy`]), daemonizing ([`daemon`]), the pid file ([`pidfile`]) and the main
//! log file in the original's layout ([`logfile`]). [`run_legacy`] ties them
//! together in the order the original used: configure, open the log file,
//! daemonize, create the pid file, run. docs/migration.md documents it.

pub mod daemon;
pub mod legacy;
pub mod logfile;
pub mod pidfile;

use honeytrap::config::Loaded;
use legacy::{Action, Args};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _};

/// The original's defaults when neither the command line nor the file says.
const DEFAULT_CONFIG: &str = "/etc/honeytrap/honeytrap.conf";
const DEFAULT_LOGFILE: &str = "/var/log/honeytrap.log";
const DEFAULT_PIDFILE: &str = "/var/run/honeytrap.pid";

/// Run with the original command line (`args` includes the program name).
pub fn run_legacy(args: &[OsString]) -> ExitCode {
    let prog = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "honeytrap".into());
    let rest: Vec<String> = args[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let a = match legacy::parse(&rest) {
        Ok(Action::Help) => {
            print!("{}", legacy::usage(&prog));
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("honeytrap {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Action::Run(a)) => a,
        Err(e) => {
            eprintln!("honeytrap: {e}\nTry `{prog} -h` for the original options, `{prog} --help` for the native command.");
            return ExitCode::from(2);
        }
    };
    // The trailing expression (pcap syntax in the original): checked before anything
    // else, so an unsupported one is refused at once.
    if let Err(e) = honeytrap::monitor::filter::parse(&a.filter.join(" ")) {
        eprintln!(
            "honeytrap: the filter expression `{}` is not supported: {e}",
            a.filter.join(" ")
        );
        return ExitCode::from(2);
    }
    // Absolute: the daemon works in `/` and SIGHUP reads the file again.
    let config_path = absolute(
        a.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
    );
    let mut loaded = match honeytrap::config::load(Some(&config_path)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("honeytrap: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let notes = match apply(&a, &mut loaded) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("honeytrap: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir_note = native_outputs_fit(&mut loaded.config);
    let monitor = honeytrap::monitor::build(&loaded.config).0.name();
    let low_ports =
        honeytrap::privileges::low_port_warning(&loaded.config, &loaded.policy, monitor);
    let extras = loaded.legacy.clone();
    let logfile = absolute(
        a.logfile
            .clone()
            .or_else(|| extras.as_ref().and_then(|x| x.logfile.clone()))
            .unwrap_or_else(|| DEFAULT_LOGFILE.into()),
    );
    let pidfile = absolute(
        a.pidfile
            .clone()
            .or_else(|| extras.as_ref().and_then(|x| x.pidfile.clone()))
            .unwrap_or_else(|| DEFAULT_PIDFILE.into()),
    );
    // Opened before daemonizing, as the original did: a bad path shows on the terminal.
    let file = match logfile::open(&logfile) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "honeytrap: cannot open the log file {}: {e}",
                logfile.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = hand_over(&file, &loaded.config) {
        eprintln!(
            "honeytrap: cannot hand the log file {} to process.user: {e:#}",
            logfile.display()
        );
        return ExitCode::FAILURE;
    }
    let notifier = if a.foreground {
        None
    } else {
        match daemon::daemonize() {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                eprintln!("honeytrap: cannot daemonize: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let fail = |msg: &str| {
        match &notifier {
            Some(n) => n.failed(msg),
            None => eprintln!("honeytrap: {msg}"),
        }
        ExitCode::FAILURE
    };
    let (pid, stale) = match pidfile::Pidfile::create(&pidfile) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = logfile::reopen_on_sighup() {
        return fail(&format!("cannot handle SIGHUP: {e}"));
    }

    let filter = match a.level {
        Some(n) => legacy::level_filter(n),
        None => loaded.config.process.log_level.clone(),
    };
    let (filter_layer, handle) = reload::Layer::new(EnvFilter::new(&filter));
    let log = logfile::LogFile::new(logfile.clone(), file, a.foreground, a.level == Some(6))
        .with_filter(filter_layer);
    let ready = notifier.clone().map(|n| {
        daemon::ReadyLayer(n)
            .with_filter(Targets::new().with_target("honeytrap", tracing::Level::INFO))
    });
    tracing_subscriber::registry().with(log).with(ready).init();

    tracing::info!(
        "honeytrap v{} started with the original command line: configuration {}, log file {}, pid file {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        config_path.display(),
        logfile.display(),
        pidfile.display(),
        std::process::id()
    );
    for n in &notes {
        tracing::info!("{n}");
    }
    if let Some(s) = stale {
        tracing::warn!("{s}");
    }
    for w in extras.iter().flat_map(|x| x.warnings.iter()) {
        tracing::warn!("{w}");
    }
    if let Some(w) = data_dir_note {
        tracing::warn!("{w}");
    }
    if let Some(w) = low_ports {
        tracing::warn!("{w}");
    }
    // -t fixes the level; without it a reload may change process.log_level.
    let control: Option<honeytrap::LogControl> = a.level.is_none().then(|| {
        Box::new(move |f: &str| {
            honeytrap::config::check_log_filter(f)?;
            handle.reload(EnvFilter::new(f)).map_err(|e| e.to_string())
        }) as honeytrap::LogControl
    });
    let result = honeytrap::run(loaded, control);
    let code = match result {
        Ok(()) => {
            tracing::info!("---- honeytrap stopped ----");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            fail(&format!("{e:#}"))
        }
    };
    drop(pid);
    code
}

/// Apply the options to the loaded configuration. Returns the lines to log at
/// start (which monitor and why, ignored options).
fn apply(a: &Args, l: &mut Loaded) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let c = &mut l.config;
    match &a.monitor {
        Some(kind) => {
            c.monitor.kind = toml::Value::String(kind.clone())
                .try_into()
                .map_err(|e| format!("--monitor {kind}: {e}"))?;
            notes.push(format!("monitor: {kind} (chosen with --monitor)"));
        }
        None => {
            c.monitor.kind = honeytrap::config::MonitorKind::Nfqueue;
            c.monitor.nfqueue.queue = a.queue.unwrap_or(0);
            notes.push(format!(
                "monitor: nfqueue on queue {}: the original command line uses NFQUEUE, as the original's NFQ build (T-Pot's) did; --monitor KIND chooses another",
                c.monitor.nfqueue.queue
            ));
        }
    }
    if let Some(q) = a.queue {
        c.monitor.nfqueue.queue = q;
    }
    if let Some(s) = a.conn_timeout {
        c.limits.conn_timeout = Duration::from_secs(s);
    }
    if let Some(s) = a.read_timeout {
        c.limits.read_timeout = Duration::from_secs(s);
        if c.limits.session_timeout < c.limits.read_timeout {
            return Err(format!(
                "-r {s}: longer than limits.session_timeout ({:?})",
                c.limits.session_timeout
            ));
        }
    }
    if let Some(u) = &a.user {
        c.process.user = u.clone();
    }
    if let Some(g) = &a.group {
        c.process.group = g.clone();
    }
    if let Some(i) = &a.interface {
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            return Err(format!("-i `{i}`: not an interface name"));
        }
        c.monitor.sniff.interfaces = if i == "any" { vec![] } else { vec![i.clone()] };
    }
    if let Some(host) = &a.address {
        c.monitor.sniff.addresses = resolve(host)?;
    }
    if a.promisc {
        c.monitor.sniff.promiscuous = true;
    }
    if !a.filter.is_empty() {
        let expr = a.filter.join(" ");
        honeytrap::monitor::filter::parse(&expr)
            .map_err(|e| format!("the filter expression `{expr}` is not supported: {e}"))?;
        c.monitor.sniff.filter = expr;
    }
    let sniff_opts =
        a.interface.is_some() || a.address.is_some() || a.promisc || !a.filter.is_empty();
    if sniff_opts && c.monitor.kind != honeytrap::config::MonitorKind::Sniff {
        notes.push(
            "-i, -a, -p and the filter expression apply to the sniff monitor only (--monitor sniff)"
                .into(),
        );
    }
    if a.mirror_flag {
        notes.push("-m is ignored: mirror mode is set per port (portconf)".into());
    }
    // The daemon works in `/`.
    c.sensor.data_dir = absolute(std::mem::take(&mut c.sensor.data_dir));
    if let Some(n) = same_user(c)? {
        notes.push(n);
    }
    l.overridden = true;
    Ok(notes)
}

/// T-Pot's container is read-only except its volumes (`var/attacks`,
/// `var/downloads`, `var/log`), while the data directory of its configuration is
/// `var` itself. The original wrote only its plugins' files; so when the data
/// directory exists but cannot be written, the native outputs that live there
/// (events.jsonl, transcripts) are turned off with a warning instead of failing
/// the start. Returns the warning.
fn native_outputs_fit(c: &mut honeytrap::config::Config) -> Option<String> {
    let dir = &c.sensor.data_dir;
    let (jsonl, transcripts) = (
        &mut c.output.jsonl.enabled,
        &mut c.output.transcripts.enabled,
    );
    if !(*jsonl || *transcripts) || !dir.is_dir() {
        return None;
    }
    let probe = dir.join(format!(".honeytrap-probe-{}", std::process::id()));
    let err = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            return None;
        }
        Err(e) => e,
    };
    *jsonl = false;
    *transcripts = false;
    Some(format!(
        "the data directory {} cannot be written ({err}): the native outputs there (events.jsonl, transcripts) are off; the original outputs (logJSON, logAttacker, SaveFile) are written as configured. Make it writable (a volume) to have both",
        dir.display()
    ))
}

/// A host name or address for `-a`.
fn resolve(host: &str) -> Result<Vec<std::net::IpAddr>, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(ip) = host.parse() {
        return Ok(vec![ip]);
    }
    let mut ips: Vec<_> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("-a `{host}`: invalid host name or address: {e}"))?
        .map(|s| s.ip())
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// Started unprivileged as the configured user already (T-Pot: `USER honeytrap`
/// and `-u honeytrap`): there is nothing to switch, so the switch is skipped.
/// Started unprivileged as anybody else, the switch cannot work: refused.
fn same_user(c: &mut honeytrap::config::Config) -> Result<Option<String>, String> {
    use nix::unistd::{getgid, getuid, Uid};
    if c.process.user.is_empty() || Uid::effective().is_root() {
        return Ok(None);
    }
    let id = honeytrap::privileges::resolve(&c.process.user, &c.process.group)
        .map_err(|e| format!("{e:#}"))?
        .expect("a user is set");
    if id.uid != getuid() {
        return Err(format!(
            "cannot switch to user {} (uid {}): honeytrap was started as uid {}, not as root",
            c.process.user,
            id.uid,
            getuid()
        ));
    }
    let note = if id.gid == getgid() {
        format!(
            "already running as user {} (uid {}, gid {}): no switch needed",
            c.process.user, id.uid, id.gid
        )
    } else {
        format!(
            "already running as user {} (uid {}); the group stays gid {} (switching to gid {} needs root)",
            c.process.user,
            id.uid,
            getgid(),
            id.gid
        )
    };
    c.process.user.clear();
    c.process.group.clear();
    Ok(Some(note))
}

/// Started as root with a user to switch to: the log file becomes the user's, so
/// the process can still reopen it on SIGHUP after dropping root.
fn hand_over(file: &std::fs::File, c: &honeytrap::config::Config) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    if let Some(id) = honeytrap::privileges::resolve(&c.process.user, &c.process.group)? {
        std::os::unix::fs::fchown(file, Some(id.uid.as_raw()), Some(id.gid.as_raw()))?;
    }
    Ok(())
}

/// `p` made absolute against the current directory (the daemon changes to `/`).
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use honeytrap::config::MonitorKind;

    fn loaded() -> (tempfile::TempDir, Loaded) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("honeytrap.conf");
        std::fs::write(&path, "// original\nportconf_default = \"normal\"\n").unwrap();
        let l = honeytrap::config::load(Some(&path)).unwrap();
        (dir, l)
    }

    fn args(v: &[&str]) -> Args {
        match legacy::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
            Ok(Action::Run(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nfqueue_on_queue_0_by_default() {
        let (_d, mut l) = loaded();
        l.config.monitor.nfqueue.queue = 7;
        let notes = apply(&args(&["-D"]), &mut l).unwrap();
        assert_eq!(l.config.monitor.kind, MonitorKind::Nfqueue);
        assert_eq!(l.config.monitor.nfqueue.queue, 0);
        assert!(l.overridden);
        assert!(
            notes[0].starts_with("monitor: nfqueue on queue 0"),
            "{notes:?}"
        );
        let (_d, mut l) = loaded();
        apply(&args(&["--queue", "3"]), &mut l).unwrap();
        assert_eq!(l.config.monitor.nfqueue.queue, 3);
    }

    #[test]
    fn options_map_onto_the_configuration() {
        let (_d, mut l) = loaded();
        let a = args(&[
            "--monitor",
            "sniff",
            "-i",
            "eth0",
            "-a",
            "192.0.2.1",
            "-p",
            "-l",
            "30",
            "-r",
            "2",
        ]);
        let notes = apply(&a, &mut l).unwrap();
        let c = &l.config;
        assert_eq!(c.monitor.kind, MonitorKind::Sniff);
        assert_eq!(c.monitor.sniff.interfaces, ["eth0"]);
        assert_eq!(
            c.monitor.sniff.addresses,
            ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(c.monitor.sniff.promiscuous);
        assert_eq!(c.limits.conn_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.read_timeout, Duration::from_secs(2));
        assert!(c.sensor.data_dir.is_absolute());
        assert_eq!(notes, ["monitor: sniff (chosen with --monitor)"]);
        // `any` is every interface; sniff options with another monitor are noted.
        let (_d, mut l) = loaded();
        let notes = apply(&args(&["-i", "any", "-m"]), &mut l).unwrap();
        assert!(l.config.monitor.sniff.interfaces.is_empty());
        assert!(notes.iter().any(|n| n.contains("sniff monitor only")));
        assert!(notes.iter().any(|n| n.contains("-m is ignored")));
        let (_d, mut l) = loaded();
        assert!(apply(&args(&["-i", "a/b"]), &mut l).is_err());
    }

    #[test]
    fn the_trailing_expression_is_the_sniff_filter() {
        let (_d, mut l) = loaded();
        let a = args(&[
            "--monitor",
            "sniff",
            "-D",
            "not",
            "port",
            "22",
            "and",
            "tcp",
        ]);
        let notes = apply(&a, &mut l).unwrap();
        assert_eq!(l.config.monitor.sniff.filter, "not port 22 and tcp");
        assert_eq!(notes, ["monitor: sniff (chosen with --monitor)"]);
        // Without --monitor sniff it is kept, with a note.
        let (_d, mut l) = loaded();
        let notes = apply(&args(&["-D", "host 10.0.0.1"]), &mut l).unwrap();
        assert_eq!(l.config.monitor.sniff.filter, "host 10.0.0.1");
        assert!(notes
            .iter()
            .any(|n| n.contains("filter expression apply to the sniff monitor only")));
        let (_d, mut l) = loaded();
        let e = apply(&args(&["-D", "tcp[13]", "&", "4", "!=", "0"]), &mut l).unwrap_err();
        assert!(
            e.contains("`tcp[13] & 4 != 0` is not supported: column 4, `[`"),
            "{e}"
        );
        assert!(l.config.monitor.sniff.filter.is_empty());
    }
}
