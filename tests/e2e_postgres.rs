//! The PostgreSQL output end to end: a private PostgreSQL server (tests/support/pg.rs)
//! and the real binary in network namespaces. Attacks land field by field; an outage
//! of the server during a burst, and SIGKILL of honeytrap while its spool holds
//! events, lose nothing and duplicate nothing; a full spool is counted and logged;
//! TLS works (and a wrong CA or no TLS is refused); `honeytrap db migrate`.

mod support;

use honeytrap::db::{insert_events, InsertOptions};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::daemon::{run, wait_until, BIN};
use support::pg::{certificates, Pg, Tls};
use support::{base_config, clients, require_root, Daemon, NetPair};

/// Honeytrap with the postgres output to `url` (plus `extra` TOML).
fn config(url: &str, extra: &str) -> String {
    format!(
        r#"{}
[output.postgres]
enabled = true
url = "{url}"
{extra}

[output.spool]
retry_initial = "100ms"
retry_max = "500ms"
batch_max = 50
"#,
        base_config(Path::new("@DATA@"), "8080", "")
    )
}

/// Attack ids in the database.
fn db_ids(pg: &Pg) -> BTreeSet<String> {
    match pg.client().query("SELECT id::text FROM attacks", &[]) {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// Wait until the database holds exactly the attacks of `want`.
fn wait_db(pg: &Pg, want: &BTreeSet<String>, limit: Duration, d: &Daemon) {
    let mut got = BTreeSet::new();
    wait_until(limit, || {
        got = db_ids(pg);
        got.len() >= want.len()
    });
    assert_eq!(
        &got,
        want,
        "database and events.jsonl differ ({} vs {})\nlog:\n{}",
        got.len(),
        want.len(),
        d.log()
    );
}

/// `count` TCP attacks from the attacker, one connection each, in the background.
fn burst(net: &NetPair, count: u32, tag: &str) -> support::netns::Background {
    net.background_attacker(&format!(
        "for i in $(seq 1 {count}); do printf '{tag} %d' $i | timeout 5 nc -N -w 1 {} 8080 >/dev/null 2>&1; done",
        net.hp_v4
    ))
}

/// A counter from the final summary of the log (`name=N`), 0 when absent.
fn final_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("final counters"))
        .unwrap_or_else(|| panic!("no final counters in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .map_or(0, |v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap()
        })
}

/// Records in the postgres spool of a data directory (walking the record headers).
fn spooled(data: &Path) -> usize {
    let dir = data.join("spool/postgres");
    let ack: Vec<u64> = std::fs::read_to_string(dir.join("ack"))
        .unwrap_or_else(|_| "0 0".into())
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().into_string().unwrap();
        let Some(seq) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if seq < ack[0] {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let mut at = if seq == ack[0] { ack[1] as usize } else { 0 };
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if at + 8 + len > bytes.len() {
                break;
            }
            at += 8 + len;
            n += 1;
        }
    }
    n
}

fn migrate_cmd(cmd: Command) -> (bool, String) {
    let out = run(cmd, Duration::from_secs(60));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn attacks_land_in_postgresql_field_by_field() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    // `honeytrap db migrate` creates the schema, and a second run finds it current.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("db.toml");
    std::fs::write(
        &conf,
        format!("[output.postgres]\nurl = \"{}\"\n", pg.url()),
    )
    .unwrap();
    let migrate = || {
        let mut c = Command::new(BIN);
        c.args(["db", "migrate", "-c"]).arg(&conf);
        migrate_cmd(c)
    };
    let (ok, out) = migrate();
    assert!(
        ok && out.contains("schema migrations applied: [1]"),
        "{out}"
    );
    let (ok, out) = migrate();
    assert!(ok && out.contains("up to date"), "{out}");
    assert_eq!(
        pg.count("SELECT * FROM honeytrap_schema WHERE version = 1"),
        1
    );

    let net = NetPair::new("pgfields");
    let d = Daemon::start(&net, &config(&pg.url(), ""));
    let request = b"GET /login.php HTTP/1.1\r\nHost: sensor\r\nUser-Agent: pgtest\r\n\r\n";
    clients::nc_once(&net, &net.hp_v4, 8080, request);
    let e = clients::event_with(&d, 8080, request);
    let id = e["event"]["id"].as_str().unwrap().to_string();
    wait_db(
        &pg,
        &BTreeSet::from([id.clone()]),
        Duration::from_secs(20),
        &d,
    );

    let mut c = pg.client();
    let r = c
        .query_one(
            "SELECT a.*, host(source_ip) AS src, host(destination_ip) AS dst
             FROM attacks a WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    let ts = |p: &str| {
        chrono::DateTime::parse_from_rfc3339(e.pointer(p).unwrap().as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let s = |p: &str| e.pointer(p).unwrap().as_str().unwrap().to_string();
    let n = |p: &str| e.pointer(p).unwrap().as_i64().unwrap();
    let b = |p: &str| e.pointer(p).unwrap().as_bool().unwrap();
    assert_eq!(r.get::<_, String>("sensor"), "e2e-sensor");
    assert_eq!(
        r.get::<_, chrono::DateTime<chrono::Utc>>("start_time"),
        ts("/event/start")
    );
    assert_eq!(
        r.get::<_, chrono::DateTime<chrono::Utc>>("end_time"),
        ts("/event/end")
    );
    assert_eq!(r.get::<_, i64>("duration_ns"), n("/event/duration"));
    assert_eq!(r.get::<_, String>("src"), net.at_v4);
    assert_eq!(r.get::<_, String>("dst"), net.hp_v4);
    assert_eq!(r.get::<_, i32>("source_port") as i64, n("/source/port"));
    assert_eq!(r.get::<_, i32>("destination_port"), 8080);
    assert_eq!(r.get::<_, String>("protocol"), "tcp");
    assert_eq!(r.get::<_, String>("monitor"), "listen");
    assert_eq!(r.get::<_, String>("mode"), "normal");
    assert_eq!(r.get::<_, String>("end_reason"), s("/honeytrap/end_reason"));
    assert_eq!(
        r.get::<_, i32>("responses_sent") as i64,
        n("/honeytrap/responses_sent")
    );
    assert_eq!(r.get::<_, i64>("bytes_in"), request.len() as i64);
    assert_eq!(r.get::<_, i64>("bytes_out"), n("/destination/bytes"));
    assert_eq!(
        r.get::<_, String>("payload_md5"),
        s("/honeytrap/payload/md5")
    );
    assert_eq!(
        r.get::<_, String>("payload_sha256"),
        s("/honeytrap/payload/sha256")
    );
    assert_eq!(
        r.get::<_, String>("payload_sha512"),
        s("/honeytrap/payload/sha512")
    );
    assert_eq!(r.get::<_, Vec<u8>>("payload_prefix"), request);
    assert!(!r.get::<_, bool>("payload_truncated"));
    assert!(!r.get::<_, bool>("read_limit_reached"));
    assert_eq!(
        r.get::<_, Option<String>>("transcript_path"),
        Some(s("/honeytrap/transcript/path"))
    );
    assert_eq!(
        r.get::<_, Option<i64>>("transcript_offset"),
        Some(n("/honeytrap/transcript/offset"))
    );
    assert_eq!(
        r.get::<_, Option<i64>>("transcript_length"),
        Some(n("/honeytrap/transcript/length"))
    );
    assert!(!r.get::<_, bool>("is_virtual"));
    assert_eq!(r.get::<_, Option<uuid::Uuid>>("parent_id"), None);
    assert_eq!(
        r.get::<_, bool>("analysis_done"),
        b("/honeytrap/analysis/done")
    );
    // The whole event is the one events.jsonl has (same payload settings).
    assert_eq!(r.get::<_, Value>("event"), e);
    // The protocol analyzer's finding.
    let f = c
        .query_one(
            "SELECT analyzer, kind, detail, source_kind, meta FROM findings
             WHERE attack_id = $1::text::uuid AND analyzer = 'protocol'",
            &[&id],
        )
        .unwrap();
    let want = e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["analyzer"] == "protocol")
        .expect("a protocol finding in the event");
    assert_eq!(f.get::<_, String>("kind"), want["kind"].as_str().unwrap());
    assert_eq!(
        f.get::<_, String>("detail"),
        want["detail"].as_str().unwrap()
    );
    assert_eq!(f.get::<_, String>("source_kind"), "payload");
    let meta: Value = f.get("meta");
    assert_eq!(meta["protocol"], "http");
    assert_eq!(meta["user_agent"], "pgtest");
    assert_eq!(
        pg.count(&format!("SELECT * FROM findings WHERE attack_id = '{id}'")),
        e["honeytrap"]["findings"].as_array().unwrap().len() as i64
    );
    let sensor = c
        .query_one(
            "SELECT version, first_seen FROM sensors WHERE name = 'e2e-sensor'",
            &[],
        )
        .unwrap();
    assert_eq!(sensor.get::<_, String>(0), s("/observer/version"));
}

#[test]
fn postgres_stopped_during_a_burst_loses_and_duplicates_nothing() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    let net = NetPair::new("pgoutage");
    let d = Daemon::start(&net, &config(&pg.url(), ""));
    const N: usize = 150;
    let mut b = burst(&net, N as u32, "outage");
    assert!(wait_until(Duration::from_secs(60), || d.events().len() >= N / 4));
    pg.stop();
    let at_stop = d.events().len();
    assert!(wait_until(Duration::from_secs(60), || d.events().len() >= 3 * N / 4));
    // PostgreSQL stays down until a delivery has failed, so the outage really hit
    // the output (on a loaded machine the burst may outrun the first attempt).
    assert!(
        wait_until(Duration::from_secs(60), || d
            .log()
            .contains("spool: delivery failed")),
        "no delivery failed while PostgreSQL was down:\n{}",
        d.log()
    );
    let at_start = d.events().len();
    pg.start_again();
    b.wait();
    let events = d.wait_events(N, Duration::from_secs(30));
    assert_eq!(events.len(), N);
    assert!(
        at_start > at_stop,
        "no attack was captured while PostgreSQL was down"
    );
    wait_db(&pg, &ids(&events), Duration::from_secs(60), &d);
    let mut d = d;
    d.stop();
    assert!(
        final_counter(&d.log(), "spool_delivery_failures") > 0,
        "{}",
        d.log()
    );
    assert_eq!(pg.count("SELECT * FROM attacks"), N as i64);
}

#[test]
fn sigkill_while_the_spool_holds_events_loses_and_duplicates_nothing() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    pg.stop();
    let net = NetPair::new("pgkill");
    let conf = config(&pg.url(), "");
    let mut d1 = Daemon::start(&net, &conf);
    const N: usize = 40;
    burst(&net, N as u32, "kill").wait();
    let events = d1.wait_events(N, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(20), || spooled(&d1.data()) == N),
        "the spool holds {} of {N} events\n{}",
        spooled(&d1.data()),
        d1.log()
    );
    d1.signal(nix::sys::signal::Signal::SIGKILL);
    d1.wait_exit(Duration::from_secs(10));
    pg.start_again();
    // The same data directory, so the same spool.
    let d2 = Daemon::start(
        &net,
        &conf.replace("@DATA@", &d1.data().display().to_string()),
    );
    assert!(
        d2.log().contains("undelivered events from an earlier run"),
        "{}",
        d2.log()
    );
    wait_db(&pg, &ids(&events), Duration::from_secs(30), &d2);
    // Restarted once more: nothing is delivered again.
    let mut d2 = d2;
    d2.stop();
    let mut d3 = Daemon::start(
        &net,
        &conf.replace("@DATA@", &d1.data().display().to_string()),
    );
    std::thread::sleep(Duration::from_secs(1));
    d3.stop();
    assert_eq!(
        final_counter(&d3.log(), "spool_delivered"),
        0,
        "{}",
        d3.log()
    );
    assert_eq!(pg.count("SELECT * FROM attacks"), N as i64);
    assert_eq!(final_counter(&d2.log(), "spool_torn"), 0);
}

#[test]
fn a_full_spool_drops_the_newest_counted_and_logged() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    pg.stop();
    let net = NetPair::new("pgfull");
    let conf = config(&pg.url(), "").replace(
        "[output.spool]\n",
        "[output.spool]\nmax_bytes = \"4KiB\"\nsegment_bytes = \"4KiB\"\n",
    );
    let mut d1 = Daemon::start(&net, &conf);
    const N: usize = 8;
    burst(&net, N as u32, "full").wait();
    let events = d1.wait_events(N, Duration::from_secs(30));
    assert!(
        d1.wait_log("spool full: event dropped", Duration::from_secs(10)),
        "{}",
        d1.log()
    );
    d1.stop();
    let dropped = final_counter(&d1.log(), "spool_dropped") as usize;
    assert!(
        (N / 2..N).contains(&dropped),
        "dropped {dropped}\n{}",
        d1.log()
    );
    // What fit is delivered once the server is back: the oldest events.
    pg.start_again();
    let d2 = Daemon::start(
        &net,
        &conf.replace("@DATA@", &d1.data().display().to_string()),
    );
    let kept: BTreeSet<String> = ids(&events[..N - dropped]);
    wait_db(&pg, &kept, Duration::from_secs(30), &d2);
}

#[test]
fn tls_connection_with_a_verified_certificate() {
    if !require_root() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path(), "good");
    let (other, _, _) = certificates(certs.path(), "other");
    let net = NetPair::new("pgtls");
    let pg = Pg::start(Some(&net.honeypot), Some(Tls { cert, key }));
    let conf = |tls: bool, ca: &Path| {
        let p = certs.path().join("db.toml");
        std::fs::write(
            &p,
            format!(
                "[output.postgres]\nurl = \"{}\"\ntls = {tls}\nca_file = \"{}\"\nconnect_timeout = \"5s\"\n",
                pg.tcp_url(),
                ca.display()
            ),
        )
        .unwrap();
        let mut c = net.in_honeypot(BIN);
        c.args(["db", "migrate", "-c"]).arg(&p);
        migrate_cmd(c)
    };
    // Without TLS the server refuses; with a CA that did not sign its certificate
    // honeytrap refuses; with the right one it works.
    let (ok, out) = conf(false, &ca);
    assert!(!ok, "plain TCP was accepted: {out}");
    let (ok, out) = conf(true, &other);
    assert!(
        !ok && out.contains("certificate"),
        "wrong CA accepted: {out}"
    );
    let (ok, out) = conf(true, &ca);
    assert!(ok && out.contains("applied: [1]"), "{out}");

    let extra = format!("tls = true\nca_file = \"{}\"", ca.display());
    let d = Daemon::start(&net, &config(&pg.tcp_url(), &extra));
    let request = b"over tls\n";
    clients::nc_once(&net, &net.hp_v4, 8080, request);
    let e = clients::event_with(&d, 8080, request);
    wait_db(&pg, &ids(&[e]), Duration::from_secs(20), &d);
    // The output's pooled connection is a TLS one.
    assert!(
        pg.count(
            "SELECT 1 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'honeytrap' AND s.ssl"
        ) >= 1
    );
}

/// An event as honeytrap writes it, with a relay and two downloads (one failed).
fn rich_event(id: &str, download_sha: &str) -> Value {
    let hashes = json!({"md5": "m".repeat(32), "sha256": download_sha, "sha512": "s".repeat(128)});
    json!({
        "@timestamp": "2026-11-27T12:59:26.959747Z",
        "ecs": {"version": "8.11.0"},
        "event": {"action": "attack", "category": ["network", "intrusion_detection"],
                  "dataset": "honeytrap.attack", "duration": 1000858714,
                  "end": "2026-11-27T12:59:27.960605Z", "id": id, "kind": "event",
                  "module": "honeytrap", "start": "2026-11-27T12:59:26.959747Z", "type": ["connection"]},
        "source": {"ip": "2001:db8::7", "port": 40000, "bytes": 4},
        "destination": {"ip": "2001:db8::1", "port": 80, "bytes": 9},
        "network": {"transport": "tcp", "type": "ipv6", "direction": "inbound", "bytes": 13},
        "observer": {"name": "unit", "type": "honeypot", "vendor": "honeytrap", "product": "honeytrap", "version": "0.1.0"},
        "honeytrap": {
            "schema_version": 1, "attack_id": id, "virtual": false, "monitor": "listen",
            "mode": "proxy", "end_reason": "closed", "responses_sent": 0,
            "payload": {"length": 4, "md5": "a", "sha256": "b", "sha512": "c", "encoding": "base64",
                        "data": "AAEC/w==", "shown": 4, "truncated": false, "read_limit_reached": false},
            "transcript": {"path": null, "offset": null, "length": null, "chunks": 2, "chunks_in": 1, "chunks_out": 1},
            "relay": {"kind": "proxy", "map": "web", "target": {"host": "backend", "ip": "10.0.0.5", "port": 8080, "transport": "tcp"},
                      "connected": true, "local": {"ip": "10.0.0.1", "port": 51000}, "bytes_sent": 4,
                      "bytes_received": 9, "received": hashes.clone(), "fallback": false, "fallback_reason": null},
            "parent_id": null, "decoder": null,
            "findings": [{"analyzer": "yara", "kind": "rule", "detail": "Mirai", "offset": 0, "length": 4,
                          "source": {"kind": "download", "sha256": download_sha}, "meta": {"tags": ["bot"]}}],
            "downloads": [
                {"analyzer": "http", "url": "http://198.51.100.1/x", "host": "198.51.100.1", "port": 80,
                 "user": null, "password": null, "size": 5, "truncated": false, "hashes": hashes,
                 "stored": "downloads/x.bin", "cached": false, "error": null, "source": {"kind": "payload"}},
                {"analyzer": "ftp", "url": "ftp://198.51.100.1:21/y", "host": "198.51.100.1", "port": 21,
                 "user": "anonymous", "password": "a@b", "size": 0, "truncated": false, "hashes": null,
                 "stored": null, "cached": false, "error": "refused", "source": {"kind": "payload"}}
            ],
            "analysis": {"done": true, "runs": 3, "failures": [], "virtual_attacks": []}
        }
    })
}

#[test]
fn insert_events_maps_relays_and_downloads_and_is_idempotent() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    let mut c = pg.client();
    honeytrap::db::migrate(&mut c).unwrap();
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("downloads")).unwrap();
    std::fs::write(store.path().join("downloads/x.bin"), b"\x7fELF!").unwrap();
    let opts = InsertOptions {
        store_from: Some(store.path().to_path_buf()),
        download_max: 1024,
    };
    let sha = "d".repeat(64);
    let a = rich_event("01a21d16-db6f-76b8-8253-cbba587e8c71", &sha);
    let b = rich_event("01a21d16-db6f-76b8-8253-cbba587e8c72", &sha);
    let mut bad = rich_event("01a21d16-db6f-76b8-8253-cbba587e8c73", &sha);
    bad["source"]["ip"] = json!("nowhere");
    let r = insert_events(&mut c, &[a.clone(), bad], &opts).unwrap();
    assert_eq!((r.inserted, r.duplicates, r.rejected), (1, 0, 1));
    // A retried batch: the first attack is skipped whole, the second is new.
    let r = insert_events(&mut c, &[a, b], &opts).unwrap();
    assert_eq!((r.inserted, r.duplicates, r.rejected), (1, 1, 0));
    assert_eq!(pg.count("SELECT * FROM attacks"), 2);
    assert_eq!(pg.count("SELECT * FROM relays WHERE kind = 'proxy' AND map = 'web' AND target_ip = '10.0.0.5' AND local_port = 51000 AND connected"), 2);
    assert_eq!(
        pg.count(
            "SELECT * FROM findings WHERE source_kind = 'download' AND meta->'tags'->>0 = 'bot'"
        ),
        2
    );
    assert_eq!(pg.count("SELECT * FROM attack_downloads"), 4);
    assert_eq!(pg.count("SELECT * FROM attack_downloads WHERE sha256 IS NULL AND error = 'refused' AND user_name = 'anonymous'"), 2);
    // The file once, with its content.
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM downloads), (SELECT content FROM downloads LIMIT 1)",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        row.get::<_, Option<Vec<u8>>>(1).as_deref(),
        Some(&b"\x7fELF!"[..])
    );
    let p = c
        .query_one(
            "SELECT payload_prefix, host(source_ip) FROM attacks LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(p.get::<_, Vec<u8>>(0), vec![0, 1, 2, 255]);
    assert_eq!(p.get::<_, String>(1), "2001:db8::7");
    let started = Instant::now();
    // Migrating again is a no-op.
    assert!(honeytrap::db::migrate(&mut c).unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
}
