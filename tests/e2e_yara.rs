//! End-to-end: the `yara` analyzer (issue 6, point 3). Rules the test writes in a
//! temporary directory; the attacker (nc in its namespace) sends payloads to
//! honeytrap (`kind = "listen"`). Asserted on the events: a finding of kind `yara`
//! with the rule's name, namespace, tags and metadata on the payload; a match on a
//! base64-decoded virtual attack reaching the parent (sourced to the virtual
//! attack) and the virtual attack's own event; a rule file added and picked up on
//! SIGHUP; a broken rule file refused by `check-config` and `run` (exit 2) with the
//! key, the file and the line.

mod support;

use base64::Engine as _;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::clients::{nc_once, payload};
use support::daemon::{run, wait_until, BIN};
use support::{base_config, require_root, Daemon, NetPair};

const RULES: &str = r#"
rule Honeytrap_Dropper : botnet linux {
    meta:
        author = "e2e"
        severity = 8
        confirmed = true
    strings:
        $cmd = "/bin/busybox HTYARA"
    condition:
        $cmd
}
"#;

const LATER: &str = r#"
rule Added_Later : reload {
    strings:
        $x = "added-on-sighup"
    condition:
        $x
}
"#;

fn config(rules: &Path) -> String {
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n\n[analyzer.yara]\nrules_dir = \"{}\"\n",
        base_config(Path::new("@DATA@"), "4444", ""),
        rules.display()
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The first event matching `pred`, waited for.
fn event(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = d.events().into_iter().find(|e| pred(e));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no event: {what}\n{}", d.log()))
}

fn real_with(d: &Daemon, needle: &[u8]) -> Value {
    event(d, &String::from_utf8_lossy(needle), |e| {
        e["honeytrap"]["virtual"] == false && contains(&payload(e), needle)
    })
}

fn yara_findings(e: &Value) -> Vec<Value> {
    e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == "yara")
        .cloned()
        .collect()
}

#[test]
fn yara_rules_match_payloads_decoded_copies_and_reload() {
    if !require_root() {
        return;
    }
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("dropper.yar"), RULES).unwrap();
    let net = NetPair::new("yara");
    let d = Daemon::start(&net, &config(rules.path()));

    // A plain payload: the rule's finding with name, tags, metadata, offset.
    let plain = b"cd /tmp; rm -rf .x; /bin/busybox HTYARA\n";
    nc_once(&net, &net.hp_v4, 4444, plain);
    let e = real_with(&d, b"HTYARA");
    let f = yara_findings(&e);
    assert_eq!(f.len(), 1, "{e:#}");
    let f = &f[0];
    assert_eq!(f["kind"], "yara");
    assert_eq!(f["source"]["kind"], "payload");
    assert_eq!(f["meta"]["rule"], "Honeytrap_Dropper");
    assert_eq!(f["meta"]["namespace"], "dropper");
    assert_eq!(f["meta"]["tags"], serde_json::json!(["botnet", "linux"]));
    assert_eq!(
        f["meta"]["metadata"],
        serde_json::json!({"author": "e2e", "severity": 8, "confirmed": true})
    );
    assert_eq!(f["offset"], 20);
    assert_eq!(f["length"], 19);

    // Base64: only the decoded copy matches; the finding reaches the parent,
    // sourced to the virtual attack, and is in the virtual attack's own event.
    let inner = b"echo start; cd /tmp || cd /var/run; /bin/busybox HTYARA; echo done-with-it\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    let sent = format!("run {b64}\n");
    nc_once(&net, &net.hp_v4, 4444, sent.as_bytes());
    let parent = real_with(&d, b64.as_bytes());
    let f = yara_findings(&parent);
    assert_eq!(f.len(), 1, "{parent:#}");
    assert_eq!(f[0]["source"]["kind"], "virtual", "{parent:#}");
    assert_eq!(f[0]["meta"]["rule"], "Honeytrap_Dropper");
    let vid = f[0]["source"]["id"].clone();
    assert!(parent["honeytrap"]["analysis"]["virtual_attacks"]
        .as_array()
        .unwrap()
        .contains(&vid));
    let v = event(&d, "the virtual attack", |e| {
        e["honeytrap"]["attack_id"] == vid
    });
    assert_eq!(v["honeytrap"]["decoder"], "base64");
    assert_eq!(payload(&v), inner);
    assert_eq!(yara_findings(&v).len(), 1, "{v:#}");

    // A rule file added, then SIGHUP: compiled and used from then on.
    std::fs::write(rules.path().join("later.yara"), LATER).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("SIGHUP: configuration reloaded", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    nc_once(
        &net,
        &net.hp_v4,
        4444,
        b"added-on-sighup /bin/busybox HTYARA",
    );
    let e = real_with(&d, b"added-on-sighup");
    let mut names: Vec<String> = yara_findings(&e)
        .iter()
        .map(|f| f["meta"]["rule"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["Added_Later", "Honeytrap_Dropper"], "{e:#}");
    assert!(e["honeytrap"]["analysis"]["failures"]
        .as_array()
        .unwrap()
        .is_empty());

    // A broken rule file, then SIGHUP: refused with file and line, logged; the
    // rules in force keep running.
    std::fs::write(
        rules.path().join("zz.yar"),
        "rule Bad { condition: nope }\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("new configuration refused", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("zz.yar:1"), "{}", d.log());
    nc_once(&net, &net.hp_v4, 4444, b"still-matching added-on-sighup");
    let e = real_with(&d, b"still-matching");
    assert_eq!(yara_findings(&e).len(), 1, "{e:#}");
    assert_eq!(yara_findings(&e)[0]["meta"]["rule"], "Added_Later");
}

#[test]
fn a_broken_rule_is_refused_at_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("good.yar"), RULES).unwrap();
    std::fs::write(
        rules.join("broken.yar"),
        "rule Broken {\n  strings:\n    $a = \"x\"\n  condition:\n    $a and $undefined\n}\n",
    )
    .unwrap();
    let conf = dir.path().join("h.toml");
    std::fs::write(
        &conf,
        config(&rules).replace("@DATA@", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    for cmd in ["check-config", "run"] {
        let mut c = Command::new(BIN);
        c.args([cmd, "-c"]).arg(&conf);
        let out = run(c, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("analyzer.yara.rules_dir"), "{cmd}: {err}");
        assert!(err.contains("broken.yar:5"), "{cmd}: file and line: {err}");
        assert!(err.contains("$undefined"), "{cmd}: {err}");
    }
}
