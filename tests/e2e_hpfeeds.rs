//! End-to-end: the hpfeeds output against the hpfeeds broker from PyPI
//! (`hpfeeds-broker`, installed by `.ci/run`), run in the honeypot namespace on its
//! loopback. A subscriber made with the same package's client receives the events
//! of real attacks; the broker killed and started again → the events of attacks made
//! while it was down arrive after it returns, each once. Without the broker the test
//! fails (it never skips).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::clients::{nc_once, udp_once};
use support::daemon::{run, wait_until};
use support::netns::Background;
use support::{base_config, require_root, Daemon, NetPair};

const PORT: u16 = 20077;
const CHANNEL: &str = "honeytrap.events";
const SENSOR_IDENT: &str = "e2e-sensor";
const SENSOR_SECRET: &str = "sensor-secret";
const METRICS: &str = "127.0.0.1:9465";

/// Debian's python, into which `.ci/run` installs the `hpfeeds` package (not
/// whatever `python3` comes first on PATH, e.g. a pyenv shim without it).
const PY: &str = "/usr/bin/python3";
/// Where pip (as root, Debian's python) puts the broker's script.
const BROKER: &str = "/usr/local/bin/hpfeeds-broker";

/// The broker must be installed: a missing broker is a failure, not a skip.
fn broker_program() -> String {
    let ok = std::process::Command::new(PY)
        .args(["-c", "import hpfeeds.scripts.broker"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok && Path::new(BROKER).exists(),
        "hpfeeds-broker is not installed for {PY}: `{PY} -m pip install --break-system-packages 'hpfeeds[broker]==3.1.0'` (.ci/run does it)"
    );
    BROKER.to_string()
}

/// Run a statement on the broker's sqlite auth database in `dir` (created with
/// the broker's schema, `hpfeeds/broker/auth/sqlite.py`, if missing).
fn sql(dir: &Path, statement: &str) {
    let script = format!(
        "import sqlite3\n\
         db=sqlite3.connect('{}/sqlite.db')\n\
         db.execute('create table if not exists authkeys (id integer primary key autoincrement, owner TEXT, ident TEXT, secret TEXT, pubchans TEXT, subchans TEXT)')\n\
         db.execute('create table if not exists logs (id integer primary key autoincrement, data TEXT)')\n\
         db.execute('create table if not exists stats (id integer primary key autoincrement, ak TEXT, uid TEXT, data TEXT)')\n\
         db.execute(\"{statement}\")\n\
         db.commit()\n",
        dir.display()
    );
    let out = run(
        {
            let mut c = std::process::Command::new(PY);
            c.args(["-c", &script]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "sqlite: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn allow(dir: &Path, ident: &str, secret: &str) {
    sql(
        dir,
        &format!(
            "insert into authkeys (owner, ident, secret, pubchans, subchans) values ('e2e', '{ident}', '{secret}', '[\\\"{CHANNEL}\\\"]', '[\\\"{CHANNEL}\\\"]')"
        ),
    );
}

fn deny(dir: &Path, ident: &str) {
    sql(
        dir,
        &format!("delete from authkeys where ident = '{ident}'"),
    );
}

/// The broker on the honeypot namespace's loopback, its auth database (`sqlite`,
/// read at every login) and log in `dir`; killed (SIGKILL) when dropped.
fn start_broker(net: &NetPair, dir: &Path) -> Background {
    let program = broker_program();
    let bg = support::clients::background_in(
        &net.honeypot,
        &format!(
            "cd {} && exec {program} --bind 127.0.0.1:{PORT} --auth sqlite >>broker.log 2>&1",
            dir.display()
        ),
    );
    let up = wait_until(Duration::from_secs(20), || {
        let mut c = net.in_honeypot("ss");
        c.args(["-ltnH", &format!("sport = :{PORT}")]);
        !run(c, Duration::from_secs(3)).stdout.is_empty()
    });
    assert!(
        up,
        "hpfeeds-broker did not listen on {PORT}:\n{}",
        std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
    );
    bg
}

/// The subscriber (`tests/support/hpfeeds_subscriber.py`, on the `hpfeeds`
/// package's protocol helpers), writing every payload it receives as one line to
/// `out`. Returns once its marker came back, so it is known to be subscribed.
fn start_subscriber(net: &NetPair, dir: &Path, out: &Path) -> Background {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/hpfeeds_subscriber.py"
    );
    let bg = support::clients::background_in(
        &net.honeypot,
        &format!(
            "exec {PY} {script} {PORT} {CHANNEL} {} subscriber subscriber-secret >>{}/subscriber.log 2>&1",
            out.display(),
            dir.display()
        ),
    );
    let ready = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .matches("\"marker\":\"subscribed\"")
            .count()
            > 0
    });
    assert!(
        ready,
        "subscriber not subscribed:\n{}",
        std::fs::read_to_string(dir.join("subscriber.log")).unwrap_or_default()
    );
    bg
}

/// Events received so far (markers left out).
fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("\"marker\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn id(e: &Value) -> String {
    e["event"]["id"].as_str().expect("event.id").to_string()
}

fn config() -> String {
    let mut c = base_config(Path::new("@DATA@"), "6200", "6201");
    c.push_str(&format!(
        r#"
[output.spool]
retry_initial = "200ms"
retry_max = "1s"

[output.hpfeeds]
enabled = true
host = "127.0.0.1"
port = {PORT}
ident = "{SENSOR_IDENT}"
secret = "{SENSOR_SECRET}"
channel = "{CHANNEL}"
timeout = "3s"

[metrics]
enabled = true
listen = "{METRICS}"
"#
    ));
    c
}

fn scrape(net: &NetPair) -> String {
    let mut c = net.in_honeypot("curl");
    c.args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://{METRICS}/metrics"),
    ]);
    String::from_utf8_lossy(&run(c, Duration::from_secs(8)).stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

#[test]
fn events_reach_hpfeeds_subscribers_across_a_broker_restart() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("hpf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received.jsonl");
    allow(dir.path(), "subscriber", "subscriber-secret");
    allow(dir.path(), SENSOR_IDENT, SENSOR_SECRET);
    let broker = start_broker(&net, dir.path());
    let subscriber = start_subscriber(&net, dir.path(), &out);
    let mut d = Daemon::start(&net, &config());

    // Live: a TCP and a UDP attack arrive at the subscriber as their JSON events.
    nc_once(&net, &net.hp_v4, 6200, b"hpfeeds-tcp");
    udp_once(&net, &net.hp_v4, 6201, 40002, b"hpfeeds-udp");
    let local = d.wait_events(2, Duration::from_secs(15));
    let mut got = Vec::new();
    let arrived = wait_until(Duration::from_secs(20), || {
        got = received(&out);
        got.len() >= 2
    });
    assert!(arrived, "subscriber got {got:?}\nlog:\n{}", d.log());
    let mut want: Vec<String> = local.iter().map(id).collect();
    let mut have: Vec<String> = got.iter().map(id).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "the same events as events.jsonl, once each");
    for e in &got {
        assert_eq!(e["observer"]["name"], "e2e-sensor", "{e}");
        support::schema::validate_event(e).expect("an hpfeeds event matches the schema");
    }
    assert!(d.log().contains("hpfeeds: connected"), "{}", d.log());
    // The output's threads yield the CPU to capture (output.spool.nice = 10 steps
    // below process.nice = 10: nice 19).
    for thread in ["sink-hpfeeds", "deliver-hpfeeds"] {
        assert_eq!(
            support::daemon::thread_nice(d.pid(), thread),
            Some(19),
            "{thread}"
        );
    }

    // The broker dies; attacks go on and wait in the spool.
    drop(subscriber);
    drop(broker);
    for i in 0..3 {
        nc_once(
            &net,
            &net.hp_v4,
            6200,
            format!("during-outage-{i}").as_bytes(),
        );
    }
    let local = d.wait_events(5, Duration::from_secs(15));
    let outage: Vec<String> = local[2..].iter().map(id).collect();
    assert!(
        d.wait_log("spool: delivery failed", Duration::from_secs(15)),
        "the outage was noticed:\n{}",
        d.log()
    );
    let text = scrape(&net);
    assert!(metric(&text, "honeytrap_spool_bytes") > 0.0, "{text}");
    assert!(
        metric(&text, "honeytrap_delivery_failures_total") >= 1.0,
        "{text}"
    );

    // Back: the sensor may log in again only once the new subscriber listens, so
    // nothing is published into an empty channel.
    deny(dir.path(), SENSOR_IDENT);
    std::fs::write(&out, "").unwrap();
    let _broker = start_broker(&net, dir.path());
    let _subscriber = start_subscriber(&net, dir.path(), &out);
    allow(dir.path(), SENSOR_IDENT, SENSOR_SECRET);
    let arrived = wait_until(Duration::from_secs(30), || {
        got = received(&out);
        got.len() >= 3
    });
    assert!(
        arrived,
        "after the restart the subscriber got {got:?}\nlog:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut have: Vec<String> = received(&out).iter().map(id).collect();
    let mut want = outage.clone();
    have.sort();
    want.sort();
    assert_eq!(have, want, "every event of the outage, once");

    let text = scrape(&net);
    assert_eq!(metric(&text, "honeytrap_delivered_total"), 5.0, "{text}");
    assert_eq!(metric(&text, "honeytrap_spool_bytes"), 0.0, "{text}");
    assert!(
        metric(
            &text,
            "honeytrap_delivery_latency_seconds_count{output=\"hpfeeds\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(d.stop().success(), "{}", d.log());
}
