//! The original honeytrap's `honeytrap.conf`, read directly: every key and block
//! maps onto the native configuration, malformed files are refused with
//! file:line:column, `convert-config` prints native TOML that loads to the same
//! configuration, and `honeytrap run -c honeytrap.conf` catches an attack.

#[allow(unused_imports)] // not every helper the harness re-exports is used here
mod support;

use honeytrap::attack::Mode;
use honeytrap::config::{self, Protocols};
use honeytrap::proto::Protocol;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{require_root, Daemon, NetPair};

const BIN: &str = env!("CARGO_BIN_EXE_honeytrap");

/// An original configuration with every top-level key, both comment kinds,
/// escapes, an include (with a second, late `portconf`), lists of ports, a proxy
/// map and plugin blocks, as T-Pot and the original's dist file write them.
const MAIN: &str = r#"/*
 * honeytrap 1.1 configuration file -- with every key
 */

// log to this file
logfile         = "@DIR@/var/log/honeytrap.log"
pidfile         = "@DIR@/var/honeytrap.pid"
response_dir    = "@DIR@/responses"
replace_private_ips = "yes"
bind_address    = "0.0.0.0"
promisc         = "on"
user            = "nobody"
group           = "nogroup"
read_limit      = "1048576"
plugin_dir      = "/opt/honeytrap/lib/honeytrap"

portconf_default = "ignore"

portconf = {
	/* ports to be ignored */
	ignore = {
		protocol	= "tcp"
		port		= "22"
	}
	normal = {
		protocol	= ["tcp", "udp"]
		port		= ["8080", "5060"]
	}
	normal = {
		protocol	= "tcp"
		port		= "2000-2010"
	}
	mirror = {
		protocol	= "tcp"
		port		= "445"
	}
	proxy = {
		// send web traffic to a real server
		proxy_http = {
			protocol	= "tcp"
			port		= "80"
			target_host	= "127.0.0.1"
			target_port	= "8081"
			target_protocol = "tcp"
		}
	}
}

plugin-b64Decode = ""
plugin-deUnicode = ""
plugin-ftpDownload = ""
plugin-httpDownload = {
	http_program	= "/usr/bin/wget"
	http_options	= "-q \"--tries=1\"\t"
}
plugin-SaveFile = {
	attacks_dir	= "@DIR@/var/attacks"
	downloads_dir	= "@DIR@/var/downloads"
}
plugin-logAttacker = {
	logfile = "@DIR@/var/log/attacker.log"
}
plugin-logJSON = {
	logfile = "@DIR@/var/log/honeytrap.json"
}
plugin-submitPostgres = {
	db_host = "localhost"
	db_name = "honeytrap"
}
plugin-submitMWserv = {
	mwserv_url = "https://mwserv.example/"
}
plugin-cspm = ""
plugin-cpuEmu = {
	execute_shellcode = "no"
	createprocess_cmd = "/bin/sh -c \"cd /opt/.wine; wine 'c:\\windows\\cmd.exe'\""
}

// a late include with another portconf (the original ignored it)
include = "conf.d/ports.conf"
"#;

/// The included file: relative to the including one; its portconf comes after
/// the main one (the original silently ignored it).
const PORTS: &str =
    "// included\nportconf = {\n  normal = { protocol = \"udp\"  port = \"69\" }\n}\n";

/// A directory with the configuration, its include and a response directory.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::create_dir_all(d.join("responses")).unwrap();
    std::fs::write(d.join("responses/8080_tcp"), "HTTP/1.0 200 OK\r\n\r\n").unwrap();
    std::fs::write(d.join("conf.d/ports.conf"), PORTS).unwrap();
    let path = d.join("honeytrap.conf");
    std::fs::write(&path, MAIN.replace("@DIR@", &d.display().to_string())).unwrap();
    (dir, path)
}

fn ports(list: &[&str]) -> Vec<config::PortRange> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn every_key_and_block_is_mapped() {
    let (dir, path) = setup();
    let d = dir.path();
    let loaded = config::load(Some(&path)).unwrap();
    let c = &loaded.config;
    assert_eq!(c.ports.response_dir, d.join("responses"));
    assert!(c.downloads.replace_private_ips);
    let any: Vec<std::net::IpAddr> = vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    assert_eq!(c.network.bind_addresses, any);
    assert!(c.monitor.sniff.promiscuous);
    assert_eq!(
        (c.process.user.as_str(), c.process.group.as_str()),
        ("nobody", "nogroup")
    );
    assert_eq!(c.limits.read_limit, 1 << 20);
    assert_eq!(c.ports.default_mode, Mode::Ignore);
    // Rules in file order; the late include's portconf counts too (last).
    let rules: Vec<_> = c
        .ports
        .rules
        .iter()
        .map(|r| (r.protocol.list(), r.ports.clone(), r.mode))
        .collect();
    assert_eq!(
        rules,
        vec![
            (vec![Protocol::Tcp], ports(&["22"]), Mode::Ignore),
            (
                vec![Protocol::Tcp, Protocol::Udp],
                ports(&["8080", "5060"]),
                Mode::Normal
            ),
            (vec![Protocol::Tcp], ports(&["2000-2010"]), Mode::Normal),
            (vec![Protocol::Tcp], ports(&["445"]), Mode::Mirror),
            (vec![Protocol::Udp], ports(&["69"]), Mode::Normal),
        ]
    );
    let p = &c.proxy["proxy_http"];
    assert_eq!(p.protocol, Protocols::One(Protocol::Tcp));
    assert_eq!(p.ports, ports(&["80"]));
    assert_eq!(p.target_host, "127.0.0.1");
    assert_eq!(p.target_port, Some(8081));
    assert_eq!(p.target_protocol, Some(Protocol::Tcp));
    // The data directory is where the original kept its data.
    assert_eq!(c.sensor.data_dir, d.join("var"));
    // Analyzers: on when their plugin is loaded, off otherwise.
    let on = |n: &str| c.analyzer[n]["enabled"].as_bool().unwrap();
    for n in [
        "base64",
        "utf16",
        "ftp",
        "http",
        "store",
        "percent",
        "http_body",
        "protocol",
    ] {
        assert!(on(n), "{n} should be enabled");
    }
    for n in ["tftp", "vnc", "selftest"] {
        assert!(!on(n), "{n} should be disabled");
    }
    // The port policy is the original's.
    let pol = &loaded.policy;
    assert_eq!(pol.mode(Protocol::Tcp, 8080), Mode::Normal);
    assert_eq!(
        &pol.lookup(Protocol::Tcp, 8080).response[..],
        b"HTTP/1.0 200 OK\r\n\r\n"
    );
    assert_eq!(pol.mode(Protocol::Udp, 69), Mode::Normal);
    assert_eq!(pol.mode(Protocol::Tcp, 22), Mode::Ignore);
    assert_eq!(pol.mode(Protocol::Tcp, 445), Mode::Mirror);
    assert_eq!(pol.mode(Protocol::Tcp, 80), Mode::Proxy);
    assert_eq!(pol.mode(Protocol::Tcp, 9999), Mode::Ignore);
    // What has no native key yet is kept for the outputs and the command line.
    let x = loaded
        .legacy
        .as_deref()
        .expect("read as the original syntax");
    assert_eq!(x.logfile, Some(d.join("var/log/honeytrap.log")));
    assert_eq!(x.pidfile, Some(d.join("var/honeytrap.pid")));
    assert_eq!(
        x.plugin_dir,
        Some(PathBuf::from("/opt/honeytrap/lib/honeytrap"))
    );
    let s = x.save_file.as_ref().unwrap();
    assert_eq!(s.attacks_dir, Some(d.join("var/attacks")));
    assert_eq!(s.downloads_dir, Some(d.join("var/downloads")));
    assert_eq!(x.log_attacker, Some(d.join("var/log/attacker.log")));
    assert_eq!(x.log_json, Some(d.join("var/log/honeytrap.json")));
    assert_eq!(x.submit_postgres.as_ref().unwrap()["db_name"], "honeytrap");
    assert_eq!(
        x.plugins["httpDownload"]["http_options"],
        "-q \"--tries=1\"\t"
    );
    // One warning per obsolete plugin, naming what replaces it, with its place.
    let warnings: Vec<String> = x.warnings.iter().map(|w| w.to_string()).collect();
    let one = |needle: &str| {
        let found: Vec<_> = warnings.iter().filter(|w| w.contains(needle)).collect();
        assert_eq!(found.len(), 1, "{needle}: {warnings:#?}");
        found[0].clone()
    };
    let w = one("plugin-submitMWserv");
    assert!(w.contains("obsolete") && w.contains("output.jsonl"), "{w}");
    assert!(w.starts_with(&format!("{}:", path.display())), "{w}");
    let w = one("plugin-cspm");
    assert!(w.contains("`shellcode` analyzer"), "{w}");
    assert!(one("plugin-httpDownload").contains("own HTTP client"));
    assert!(one("plugin-submitPostgres").contains("PostgreSQL"));
    let w = one("plugin-cpuEmu");
    assert!(
        w.contains("obsolete") && w.contains("`shellcode` analyzer"),
        "{w}"
    );
    assert_eq!(
        x.plugins["cpuEmu"]["createprocess_cmd"],
        "/bin/sh -c \"cd /opt/.wine; wine 'c:\\windows\\cmd.exe'\""
    );
}

/// `honeytrap` with arguments: (exit code, stdout, stderr).
fn honeytrap(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_files_are_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = honeytrap(&["check-config", "-c", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {err}");
        err
    };
    let at = |name: &str| dir.path().join(name).display().to_string();
    // Syntax: an unterminated string, a missing `=`, an unclosed block.
    let e = check("a.conf", "// x\nlogfile = \"/tmp/x\"\nuser = \"nobody\n");
    assert!(e.contains(&format!("{}:3:8:", at("a.conf"))), "{e}");
    let e = check("b.conf", "// x\nportconf = {\n  normal {\n");
    assert!(e.contains(&format!("{}:3:10:", at("b.conf"))), "{e}");
    assert!(e.contains("expected `=`"), "{e}");
    let e = check(
        "c.conf",
        "/* x */\nportconf = {\n  normal = { protocol = \"tcp\" port = \"1\" }\n",
    );
    assert!(e.contains(&format!("{}:4:1:", at("c.conf"))), "{e}");
    // Meaning: an unknown key, a bad port, a duplicate port, an unknown plugin.
    let e = check("d.conf", "// x\nlogfile = \"x\"\n  lgofile = \"y\"\n");
    assert!(
        e.contains(&format!("{}:3:3: key `lgofile`: unknown key", at("d.conf"))),
        "{e}"
    );
    let e = check(
        "e.conf",
        "// x\nportconf = {\n  normal = {\n    protocol = \"tcp\"\n    port = [\"80\", \"99999\"]\n  }\n}\n",
    );
    assert!(e.contains(&format!("{}:5:19:", at("e.conf"))), "{e}");
    let e = check(
        "f.conf",
        "// x\nportconf = {\n  normal = { protocol = \"tcp\" port = \"80\" }\n  mirror = { protocol = \"tcp\" port = \"80\" }\n}\n",
    );
    assert!(e.contains(&format!("{}:4:38:", at("f.conf"))), "{e}");
    assert!(
        e.contains(&format!("already configured at {}:3:38", at("f.conf"))),
        "{e}"
    );
    let e = check("g.conf", "plugin-magicFoo = \"\"\n");
    assert!(
        e.contains(&format!("{}:1:1:", at("g.conf"))) && e.contains("unknown plugin"),
        "{e}"
    );
    // An error in an included file names that file; an include cycle is refused.
    std::fs::write(dir.path().join("inc.conf"), "promisc = \"maybe\"\n").unwrap();
    let e = check("h.conf", "// x\ninclude = \"inc.conf\"\n");
    assert!(e.contains(&format!("{}:1:11:", at("inc.conf"))), "{e}");
    let e = check("i.conf", "// x\ninclude = \"i.conf\"\n");
    assert!(e.contains("cycle"), "{e}");
    // A native check refused at the original's line: group without user.
    let e = check("j.conf", "// x\n\ngroup = \"nogroup\"\n");
    assert!(
        e.contains(&format!("{}:3:9: key `group`", at("j.conf"))),
        "{e}"
    );
}

#[test]
fn converted_config_passes_check_config_and_loads_the_same() {
    let (dir, path) = setup();
    let (code, toml, err) = honeytrap(&["convert-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(toml.contains("# from `read_limit`"), "{toml}");
    assert!(toml.contains("plugin-logJSON"), "{toml}");
    assert!(toml.contains("plugin-submitMWserv"), "{toml}");
    assert!(!config::legacy::is_legacy(&toml), "{toml}");
    let native = dir.path().join("honeytrap.toml");
    std::fs::write(&native, &toml).unwrap();
    let (code, _, err) = honeytrap(&["check-config", "-c", native.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{toml}");
    let a = config::load(Some(&path)).unwrap();
    let b = config::load(Some(&native)).unwrap();
    assert!(b.legacy.is_none());
    assert_eq!(a.config, b.config, "{toml}");
    // check-config on the original file prints its warnings and the same config.
    let (code, out, err) = honeytrap(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("plugin-cspm"), "{err}");
    assert_eq!(out, a.config.to_toml());
    // A broken file: convert-config refuses it like check-config.
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "// x\nuser = \n").unwrap();
    let (code, _, err) = honeytrap(&["convert-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(":3:1:"), "{err}");
}

/// `honeytrap run -c honeytrap.conf` (the original syntax): an attack on a port
/// of a portconf `normal` block is recorded, one in an `ignore` block is not
/// accepted at all, and the loaded plugin (deUnicode) still runs after a SIGHUP
/// reload (in the original a reload left every plugin unloaded).
#[test]
fn run_with_the_original_config_catches_an_attack() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("legacy");
    let text = "/* the original syntax */\n\
        portconf_default = \"ignore\"\n\
        portconf = {\n\
          normal = { protocol = \"tcp\" port = \"21101\" }\n\
          ignore = { protocol = \"tcp\" port = \"21102\" }\n\
        }\n\
        plugin-SaveFile = { attacks_dir = \"@DATA@/attacks\" downloads_dir = \"@DATA@/downloads\" }\n\
        plugin-deUnicode = \"\"\n";
    let mut d = Daemon::start(&net, text);
    let host = net.hp_v4.clone();
    // The monitor is `auto` (sniff as root): the first try is refused, a retry caught.
    let probe = |port: u16| {
        net.attack("nc", &["-z", "-w", "1", &host, &port.to_string()], b"", 4)
            .status
            .success()
    };
    let caught = support::daemon::wait_until(Duration::from_secs(10), || probe(21101));
    assert!(caught, "21101 never accepted:\n{}", d.log());
    let word = b"legacy config attack\n";
    let _ = support::clients::nc_once(&net, &host, 21101, word);
    let e = support::clients::event_with(&d, 21101, word);
    assert_eq!(e["honeytrap"]["mode"], "normal");
    assert!(
        !probe(21102),
        "an ignore port must not be handled:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !probe(21102),
        "an ignore port must not be handled:\n{}",
        d.log()
    );
    assert!(d.events().iter().all(|e| e["destination"]["port"] != 21102));
    // deUnicode (our utf16 decoder) makes a virtual attack, before and after SIGHUP.
    let utf16 = |text: &str| -> Vec<u8> { text.bytes().flat_map(|b| [b, 0]).collect() };
    let decoded = |parent: &serde_json::Value| {
        let id = parent["honeytrap"]["attack_id"].clone();
        let mut found = false;
        support::daemon::wait_until(Duration::from_secs(10), || {
            found = d
                .events()
                .iter()
                .any(|e| e["honeytrap"]["parent_id"] == id && e["honeytrap"]["decoder"] == "utf16");
            found
        });
        found
    };
    let before = utf16("cmd.exe /c echo before reload");
    let _ = support::clients::nc_once(&net, &host, 21101, &before);
    let parent = support::clients::event_with(&d, 21101, &before);
    assert!(decoded(&parent), "no utf16 virtual attack:\n{}", d.log());
    d.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        d.wait_log("SIGHUP: configuration reloaded", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let after = utf16("cmd.exe /c echo after reload");
    let _ = support::clients::nc_once(&net, &host, 21101, &after);
    let parent = support::clients::event_with(&d, 21101, &after);
    assert!(
        decoded(&parent),
        "no utf16 virtual attack after the reload:\n{}",
        d.log()
    );
    assert!(d.stop().success());
    assert!(Path::new(&d.data()).join("events.jsonl").exists());
}
