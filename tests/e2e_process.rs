//! End-to-end: process behaviour. Graceful shutdown keeps in-flight attacks, SIGHUP
//! reloads (and refuses a bad config), bad configs stop start-up with exit code 2,
//! `check-config` prints the effective config, and root is dropped.

mod support;

use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;
use support::daemon::{run, BIN};
use support::{base_config, require_root, Daemon, NetPair};

#[test]
fn sigterm_keeps_in_flight_attacks() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("term");
    let mut config = base_config(std::path::Path::new("@DATA@"), "7100", "7101");
    config.push_str("[limits]\nread_timeout = \"30s\"\n");
    let mut d = Daemon::start(&net, &config);
    // A TCP session and a UDP session still open when SIGTERM arrives.
    let _tcp = net.background_attacker(&format!(
        "(printf 'in-flight tcp'; sleep 20) | socat - TCP:{}:7100",
        net.hp_v4
    ));
    let _ = net.attack(
        "socat",
        &["-u", "-", &format!("UDP:{}:7101", net.hp_v4)],
        b"in-flight udp",
        4,
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.events().is_empty(), "sessions still open");
    let started = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{}",
        d.log()
    );
    // shutdown_grace is 3 s in the base config.
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "sessions got their grace period"
    );
    let events = d.events();
    assert_eq!(events.len(), 2, "{events:#?}\n{}", d.log());
    for e in &events {
        assert_eq!(e["honeytrap"]["end_reason"], "shutdown");
    }
    let payloads: Vec<_> = events
        .iter()
        .map(|e| e["honeytrap"]["payload"]["length"].as_u64().unwrap())
        .collect();
    assert!(payloads.contains(&13));
    assert!(d.log().contains("shutting down"));
}

#[test]
fn sighup_reloads_policy_and_refuses_a_bad_config() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("hup");
    let base = base_config(std::path::Path::new("@DATA@"), "7200, 7201", "");
    let mut d = Daemon::start(&net, &format!("{base}[limits]\nread_timeout = \"20s\"\n"));
    let open = |port: u16| {
        net.attack(
            "nc",
            &["-z", "-w", "2", &net.hp_v4, &port.to_string()],
            b"",
            5,
        )
        .status
        .success()
    };
    assert!(open(7200) && open(7201) && !open(7202));

    // A session that stays open across the reload.
    let mut held = net.background_attacker(&format!(
        "(printf 'across reload'; sleep 4) | socat - TCP:{}:7200",
        net.hp_v4
    ));
    std::thread::sleep(Duration::from_millis(300));

    // New config: 7201 ignored, 7202 added, a custom response file for 7202.
    let resp = d.dir.path().join("resp");
    std::fs::write(&resp, b"RELOADED\n").unwrap();
    let data = d.data();
    let new = base_config(&data, "7200, 7201, 7202", "").replace("@DATA@", &data.display().to_string())
        + &format!(
            "[limits]\nread_timeout = \"300ms\"\n[ports]\nresponses = 1\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [7201]\nmode = \"ignore\"\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [7202]\nmode = \"normal\"\nresponse = \"{}\"\n",
            resp.display()
        );
    let new = new.replace("log_level = \"info\"", "log_level = \"debug\"");
    std::fs::write(&d.config_path, new).unwrap();
    // Log rotation: the event file is moved away before SIGHUP.
    d.wait_events(2, Duration::from_secs(5));
    let rotated = d.data().join("events.jsonl.1");
    std::fs::rename(d.data().join("events.jsonl"), &rotated).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("output reopened", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("configuration reloaded", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("log level changed"), "{}", d.log());
    assert!(
        d.log().contains("DEBUG"),
        "debug logging is on after the reload: {}",
        d.log()
    );
    assert!(!open(7201), "7201 is ignored now");
    let out = net.attack(
        "socat",
        &["-t", "2", "-", &format!("TCP:{}:7202", net.hp_v4)],
        b"x",
        5,
    );
    assert_eq!(out.stdout, b"RELOADED\n");

    // A bad config is refused; the running one stays.
    std::fs::write(&d.config_path, "[limits]\nread_timeout = \"never\"\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("new configuration refused", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("limits.read_timeout"),
        "the refusal names the key"
    );
    assert!(open(7202) && !open(7201), "old config still in force");

    held.wait();
    assert!(d.stop().success());
    let events = d.events();
    let across = events
        .iter()
        .find(|e| e["destination"]["port"] == 7200 && e["honeytrap"]["payload"]["length"] == 13)
        .expect("session open across the reload was recorded");
    assert_eq!(across["honeytrap"]["end_reason"], "closed");
    // Events before the rotation stayed in the moved file, later ones in the new file.
    let before = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(before.lines().count(), 2, "the two nc -z probes: {before}");
    assert!(events.iter().any(|e| e["destination"]["port"] == 7202));
}

#[test]
fn bad_configs_are_refused_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nconn_timeout = \"2m\"\nmax_sesions = 5\n", "max_sesions", ":3"),
        ("[sensor]\nname = 5\n", "sensor.name", ":2"),
        ("[limits]\nread_limit = 0\n", "limits.read_limit", ":2"),
        (
            "[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"1-100\"]\nmode = \"ignore\"\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [80]\nmode = \"normal\"\n",
            "ports.rule[1].ports[0]",
            ":7",
        ),
        ("[network]\nbind_addresses = [\"999.1.1.1\"]\n", "network.bind_addresses", ":2"),
        ("[ports]\ndefault_mode = \"sometimes\"\n", "ports.default_mode", ":2"),
        ("not toml at all [", "", ":1"),
    ];
    for (i, (text, key, line)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for cmd in ["check-config", "run"] {
            let data = dir.path().join(format!("data{i}"));
            let mut c = Command::new(BIN);
            c.args([cmd, "-c"]).arg(&path).current_dir(dir.path());
            let out = run(c, Duration::from_secs(10));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {text:?}: {err}");
            assert!(err.contains(key), "{cmd}: error names `{key}`: {err}");
            assert!(
                err.contains(&format!("bad{i}.toml{line}")),
                "{cmd}: error names the line {line}: {err}"
            );
            assert!(
                !data.exists() && !dir.path().join("honeytrap-data").exists(),
                "nothing was started"
            );
        }
    }
}

#[test]
fn check_config_prints_the_effective_config() {
    let out = run(
        {
            let mut c = Command::new(BIN);
            c.arg("check-config");
            c
        },
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Value = toml::from_str(&text).expect("valid TOML");
    assert_eq!(v["limits"]["conn_timeout"].as_str(), Some("2m"));
    assert_eq!(v["limits"]["read_limit"].as_integer(), Some(20 << 20));
    assert_eq!(v["monitor"]["kind"].as_str(), Some("auto"));
    assert!(
        !v["sensor"]["name"].as_str().unwrap().is_empty(),
        "host name filled in"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.toml");
    std::fs::write(&path, "[limits]\nread_timeout = \"250ms\"\n").unwrap();
    let mut c = Command::new(BIN);
    c.args(["check-config", "-c"]).arg(&path);
    let out = run(c, Duration::from_secs(10));
    assert!(out.status.success());
    let v: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(v["limits"]["read_timeout"].as_str(), Some("250ms"));
    assert_eq!(
        v["ports"]["responses"].as_integer(),
        Some(10),
        "defaults filled in"
    );

    for flag in ["--version", "--help"] {
        let mut c = Command::new(BIN);
        c.arg(flag);
        let out = run(c, Duration::from_secs(10));
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("honeytrap"));
    }
}

#[test]
fn drops_root_and_keeps_only_net_bind_service() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("priv");
    let config = "[sensor]\ndata_dir = \"@DATA@\"\n[process]\nuser = \"nobody\"\nshutdown_grace = \"1s\"\n[monitor]\nkind = \"listen\"\n[monitor.listen]\ntcp = [21, 7300]\nudp = []\n";
    let d = Daemon::spawn(&net, config);
    assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    let status = support::daemon::proc_status(d.pid());
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    assert!(field("Uid:").iter().all(|u| *u == "65534"), "{status}");
    let cap_eff = support::daemon::capability_set(&status, "CapEff:");
    let cap_prm = support::daemon::capability_set(&status, "CapPrm:");
    assert_eq!(cap_eff, 1 << 10, "only CAP_NET_BIND_SERVICE: {status}");
    assert_eq!(cap_prm, 1 << 10);
    // Port 21 was bound with the capability, and the session is recorded by the
    // unprivileged process in the data directory it was handed.
    let out = net.attack(
        "socat",
        &["-t", "1", "-", &format!("TCP:{}:21", net.hp_v4)],
        b"USER anonymous\r\n",
        5,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("220"),
        "{out:?}"
    );
    let events = d.wait_events(1, Duration::from_secs(10));
    assert_eq!(events[0]["destination"]["port"], 21);
}

/// `process.nice` reaches every thread but the main one (it only waits for
/// signals); threads with a nice value of their own go lower (analysis: 19) but
/// never above it.
#[test]
fn process_nice_applies_to_every_thread() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("nice");
    let config = base_config(std::path::Path::new("@DATA@"), "7320", "7321").replacen(
        "[process]\n",
        "[process]\nnice = 15\n",
        1,
    );
    let d = Daemon::spawn(&net, &config);
    assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    assert!(d.log().contains("nice=15"), "{}", d.log());
    let threads = support::daemon::threads(d.pid());
    let nice = |name: &str| {
        threads
            .iter()
            .filter(|(n, _, _)| n.starts_with(name))
            .map(|(_, nice, _)| *nice)
            .collect::<Vec<_>>()
    };
    assert!(!nice("honeytrap").is_empty(), "{threads:?}");
    assert!(nice("honeytrap").iter().all(|n| *n == 15), "{threads:?}");
    assert!(nice("recorder") == [15], "{threads:?}");
    assert!(!nice("analysis-").is_empty(), "{threads:?}");
    assert!(nice("analysis-").iter().all(|n| *n == 19), "{threads:?}");
    assert!(threads.iter().all(|(_, n, _)| *n >= 15), "{threads:?}");
}

/// Started unprivileged as `process.user` already (what T-Pot does with file
/// capabilities): nothing to switch, so it starts and captures instead of refusing.
#[test]
fn started_as_process_user_already_runs_without_a_switch() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("same");
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let data = dir.path().join("data");
    let cfg = dir.path().join("honeytrap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sensor]\ndata_dir = \"{}\"\n[process]\nuser = \"nobody\"\nshutdown_grace = \"1s\"\n[monitor]\nkind = \"listen\"\n[monitor.listen]\ntcp = [7310]\nudp = []\n",
            data.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("honeytrap.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = net
        .in_honeypot("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "run",
            "-c",
        ])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("NO_COLOR", "1")
        .spawn()
        .expect("setpriv (util-linux)");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = support::daemon::wait_until(Duration::from_secs(15), || {
        read_log().contains("honeytrap: ready")
    });
    let served = ready && {
        let out = net.attack(
            "socat",
            &["-t", "1", "-", &format!("TCP:{}:7310", net.hp_v4)],
            b"hello as nobody\n",
            5,
        );
        out.status.success()
    };
    let events_path = data.join("events.jsonl");
    let recorded = served
        && support::daemon::wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&events_path)
                .unwrap_or_default()
                .contains("\"port\":7310")
        });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = read_log();
    assert!(
        ready,
        "did not start as nobody with process.user = nobody:\n{text}"
    );
    assert!(text.contains("no switch needed"), "{text}");
    assert!(recorded, "attack not recorded:\n{text}");
}

#[test]
fn a_second_signal_cuts_the_grace_period_short() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("term2");
    let mut config = base_config(std::path::Path::new("@DATA@"), "7500", "");
    config = config.replace("shutdown_grace = \"3s\"", "shutdown_grace = \"30s\"");
    config.push_str("[limits]\nread_timeout = \"60s\"\n");
    let mut d = Daemon::start(&net, &config);
    let _client = net.background_attacker(&format!(
        "(printf 'still here'; sleep 60) | socat - TCP:{}:7500",
        net.hp_v4
    ));
    std::thread::sleep(Duration::from_millis(700));
    let started = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    assert!(d.wait_log("shutting down", Duration::from_secs(5)));
    d.signal(Signal::SIGINT);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", d.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait for the 30 s grace period"
    );
    let events = d.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["honeytrap"]["end_reason"], "shutdown");
    assert_eq!(events[0]["honeytrap"]["payload"]["length"], 10);
}
