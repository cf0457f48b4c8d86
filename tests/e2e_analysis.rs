//! End-to-end: the analysis pipeline itself (issue 5, point 1). Real attacks from
//! the attacker namespace; asserts on the events: the per-read `protocol` finding,
//! failing analyzers (the `selftest` analyzer panics, errors and overruns its budget
//! on request) never cost an attack and are recorded and counted, analysis can be
//! switched off, and analyzer options are checked at start.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::clients::nc_once;
use support::daemon::{run, wait_until, BIN};
use support::{base_config, require_root, Daemon, NetPair};

fn config(extra: &str) -> String {
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n\n{extra}",
        base_config(Path::new("@DATA@"), "8080, 9000", "")
    )
}

/// The event of the real attack whose payload contains `word`.
fn event_with(d: &Daemon, word: &str) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = d.events().into_iter().find(|e| {
            e["honeytrap"]["virtual"] == false
                && support::clients::payload(e)
                    .windows(word.len())
                    .any(|w| w == word.as_bytes())
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no event with {word:?}:\n{}", d.log()))
}

fn failures(e: &Value) -> Vec<(String, String)> {
    e["honeytrap"]["analysis"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["analyzer"].as_str().unwrap().to_string(),
                f["what"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_protocol_of_the_first_chunk_is_named() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("anproto");
    let mut d = Daemon::start(&net, &config(""));
    let req = format!(
        "GET /shell?cd+/tmp HTTP/1.1\r\nHost: {}:8080\r\nUser-Agent: Hello, world\r\n\r\n",
        net.hp_v4
    );
    nc_once(&net, &net.hp_v4, 8080, req.as_bytes());
    let e = event_with(&d, "/shell?cd");
    let f = e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["analyzer"] == "protocol")
        .unwrap_or_else(|| panic!("no protocol finding: {e:#}"))
        .clone();
    assert_eq!(f["kind"], "protocol");
    assert_eq!(f["meta"]["protocol"], "http");
    assert_eq!(f["meta"]["method"], "GET");
    assert_eq!(f["meta"]["path"], "/shell?cd+/tmp");
    assert_eq!(f["meta"]["user_agent"], "Hello, world");
    assert_eq!(f["source"]["kind"], "payload");
    assert!(d.stop().success());
}

#[test]
fn failing_analyzers_never_cost_an_attack() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("anfail");
    let cfg = config(
        "[analysis]\nanalyzer_budget = \"300ms\"\nattack_budget = \"2s\"\n\n[analyzer.selftest]\nenabled = true\n",
    );
    let mut d = Daemon::start(&net, &cfg);
    for word in ["PANIC", "ERROR", "SLOW", "FIND"] {
        let data = format!("attack HONEYTRAP-SELFTEST-{word} end\n");
        nc_once(&net, &net.hp_v4, 9000, data.as_bytes());
    }
    let panic = event_with(&d, "SELFTEST-PANIC");
    assert!(
        failures(&panic).contains(&("selftest".into(), "panic".into())),
        "{panic:#}"
    );
    assert_eq!(panic["honeytrap"]["analysis"]["done"], true);
    let error = event_with(&d, "SELFTEST-ERROR");
    assert!(failures(&error).contains(&("selftest".into(), "error".into())));
    let slow = event_with(&d, "SELFTEST-SLOW");
    assert!(
        failures(&slow).contains(&("selftest".into(), "timeout".into())),
        "{slow:#}"
    );
    let find = event_with(&d, "SELFTEST-FIND");
    assert!(failures(&find).is_empty(), "{find:#}");
    assert!(find["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["analyzer"] == "selftest" && f["kind"] == "selftest"));
    // Still working after a crash: a later attack is analysed too.
    nc_once(
        &net,
        &net.hp_v4,
        9000,
        b"after HONEYTRAP-SELFTEST-FIND again\n",
    );
    let after = event_with(&d, "after HONEYTRAP");
    assert_eq!(after["honeytrap"]["analysis"]["done"], true);
    assert!(d.stop().success());
    let log = d.log();
    assert!(log.contains("analyzer crashed"), "{log}");
    assert!(log.contains("analyzer_failures=2"), "{log}");
    // At least the SLOW one (a loaded machine may push another run past 300 ms).
    let timeouts = log
        .split("analyzer_timeouts=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(timeouts >= Some(1), "{log}");
}

#[test]
fn analysis_can_be_switched_off() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("anoff");
    let mut d = Daemon::start(
        &net,
        &config("[analysis]\nenabled = false\n\n[analyzer.selftest]\nenabled = true\n"),
    );
    nc_once(
        &net,
        &net.hp_v4,
        8080,
        b"GET / HTTP/1.0\r\n\r\nHONEYTRAP-SELFTEST-FIND\n",
    );
    let e = event_with(&d, "GET / HTTP/1.0");
    assert_eq!(e["honeytrap"]["analysis"]["done"], false);
    assert_eq!(e["honeytrap"]["analysis"]["runs"], 0);
    assert_eq!(e["honeytrap"]["findings"].as_array().unwrap().len(), 0);
    assert!(d.stop().success());
}

#[test]
fn analyzers_are_listed_and_their_options_checked() {
    let mut c = Command::new(BIN);
    c.arg("analyzers");
    let out = run(c, Duration::from_secs(10));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("protocol ") && l.contains("per_read") && l.contains(" yes ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("selftest ") && l.contains(" no ")),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("[analyzer.nosuch]\nenabled = true\n", "analyzer.nosuch"),
        (
            "[analyzer.protocol]\nenabled = true\ncolour = 1\n",
            "analyzer.protocol",
        ),
        ("[analysis]\nworkers = 0\n", "analysis.workers"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let mut c = Command::new(BIN);
        c.args(["check-config", "-c"]).arg(&path);
        let out = run(c, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{body}: {err}");
    }
    // The effective config shows every analyzer's options.
    let mut c = Command::new(BIN);
    c.arg("check-config");
    let out = run(c, Duration::from_secs(10));
    let v: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(v["analyzer"]["protocol"]["enabled"].as_bool(), Some(true));
    assert_eq!(v["analyzer"]["selftest"]["enabled"].as_bool(), Some(false));
}
