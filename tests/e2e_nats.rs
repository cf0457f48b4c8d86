//! The NATS JetStream output and `honeytrap collect` end to end, with Debian's
//! `nats-server` (started by the test, JetStream on, a temporary store, inside a
//! network namespace the test created) and the real binary. Attacks land in the
//! stream under `honeytrap.<sensor>.attack` with the attack id as `Nats-Msg-Id`; an
//! outage of NATS during a burst, and SIGKILL of honeytrap while its spool holds
//! events, lose and duplicate nothing; TLS with a verified certificate; collectors
//! hold a batch unacknowledged while PostgreSQL is down and ride out a restart of
//! NATS; and a fleet of three sensors in three network namespaces reaches one
//! PostgreSQL through one NATS (in a fourth, "hub" namespace) and two collectors.
//! The test reads the stream itself from a thread that joined the namespace.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::daemon::{wait_until, BIN};
use support::pg::Pg;
use support::{base_config, clients, require_root, Daemon, NetPair};

const PORT: u16 = 4222;

/// A `nats-server -js` in a namespace, with its store in a temporary directory;
/// stopped (by its PID) on drop.
struct NatsServer {
    ns: String,
    listen: String,
    store: tempfile::TempDir,
    /// More command-line options (TLS).
    extra: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    fn start(ns: &str, listen: &str) -> NatsServer {
        Self::start_with(ns, listen, &[])
    }

    fn start_with(ns: &str, listen: &str, extra: &[String]) -> NatsServer {
        match Command::new("nats-server").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("nats-server --version failed: {o:?}"),
            Err(e) => panic!("nats-server is not installed ({e}): install Debian's `nats-server` package (.ci/run does)"),
        }
        let mut s = NatsServer {
            ns: ns.into(),
            listen: listen.into(),
            store: tempfile::tempdir().unwrap(),
            extra: extra.to_vec(),
            child: None,
        };
        s.start_again();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("nats.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start (again, with the same store) and wait until it is ready.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let before = self.log().matches("Server is ready").count();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nats-server", "-js", "-a"])
            .arg(&self.listen)
            .args(["-p", &PORT.to_string(), "-sd"])
            .arg(self.store.path().join("js"))
            .arg("-l")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(15), || self
                .log()
                .matches("Server is ready")
                .count()
                > before),
            "nats-server did not become ready:\n{}",
            self.log()
        );
    }

    /// SIGTERM by PID (`ip netns exec` execs, so the child is nats-server) and wait.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !wait_until(Duration::from_secs(10), || {
            matches!(c.try_wait(), Ok(Some(_)))
        }) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `f` on a thread inside network namespace `ns` (sockets it opens live there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only; the fd is valid for the call.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test's own client; `tls://HOST:PORT#ca=FILE` connects with TLS, trusting FILE.
async fn test_client(url: &str) -> async_nats::Client {
    let mut o = async_nats::ConnectOptions::new();
    let url = match url.split_once("#ca=") {
        Some((u, ca)) => {
            o = o.require_tls(true).add_root_certificates(ca.into());
            u
        }
        None => url,
    };
    o.connect(url).await.expect("test client")
}

/// One message of the stream.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    msg_id: String,
    event: Value,
}

/// Every message of stream `name` (read by sequence, from inside `ns`).
fn stream_messages(ns: &str, url: &str, name: &str) -> Vec<Stored> {
    let (url, name) = (url.to_string(), name.to_string());
    in_netns(ns, move || {
        runtime().block_on(async move {
            let client = test_client(&url).await;
            let js = async_nats::jetstream::new(client);
            let Ok(mut stream) = js.get_stream(&name).await else {
                return Vec::new();
            };
            let state = stream.info().await.unwrap().state.clone();
            let mut out = Vec::new();
            if state.messages == 0 {
                return out;
            }
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = stream.get_raw_message(seq).await else {
                    continue;
                };
                out.push(Stored {
                    subject: m.subject.to_string(),
                    msg_id: m
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default(),
                    event: serde_json::from_slice(&m.payload).expect("JSON event"),
                });
            }
            out
        })
    })
}

/// Publish `payload` with `msg_id` from inside `ns`; returns the ack's `duplicate`.
fn publish_again(ns: &str, url: &str, subject: &str, msg_id: &str, payload: Vec<u8>) -> bool {
    let (url, subject, msg_id) = (url.to_string(), subject.to_string(), msg_id.to_string());
    in_netns(ns, move || {
        runtime().block_on(async move {
            let client = test_client(&url).await;
            let js = async_nats::jetstream::new(client);
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(&msg_id);
            js.send_publish(subject, msg)
                .await
                .unwrap()
                .await
                .unwrap()
                .duplicate
        })
    })
}

/// A JetStream API answer (stream or consumer info), as JSON, from inside `ns`.
fn consumer_info(ns: &str, url: &str, stream: &str, durable: &str) -> Value {
    let (url, subject) = (
        url.to_string(),
        format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
    );
    in_netns(ns, move || {
        runtime().block_on(async move {
            let client = test_client(&url).await;
            let r = client
                .request(subject, "".into())
                .await
                .expect("consumer info");
            serde_json::from_slice(&r.payload).unwrap()
        })
    })
}

/// A sensor's configuration with the NATS output to `url`.
fn sensor_config(name: &str, url: &str) -> String {
    base_config(Path::new("@DATA@"), "8080", "")
        .replace("name = \"e2e-sensor\"", &format!("name = \"{name}\""))
        + &format!(
            r#"
[output.nats]
enabled = true
urls = ["{url}"]
connect_timeout = "1s"
ack_timeout = "2s"

[output.spool]
retry_initial = "100ms"
retry_max = "500ms"
batch_max = 20
"#
        )
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// `count` TCP attacks from the attacker, one connection each, in the background.
fn burst(net: &NetPair, count: u32, tag: &str) -> support::netns::Background {
    net.background_attacker(&format!(
        "for i in $(seq 1 {count}); do printf '{tag} %d' $i | timeout 5 nc -N -w 1 {} 8080 >/dev/null 2>&1; done",
        net.hp_v4
    ))
}

/// Wait until the stream holds `n` messages (or the time is up); returns them.
fn wait_stream(ns: &str, url: &str, n: usize, limit: Duration) -> Vec<Stored> {
    let mut got = Vec::new();
    wait_until(limit, || {
        got = stream_messages(ns, url, "HONEYTRAP");
        got.len() >= n
    });
    got
}

#[test]
fn attacks_land_in_the_stream_under_the_sensor_subject_with_their_id() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("natsland");
    let nats = NatsServer::start(&net.honeypot, "127.0.0.1");
    let url = format!("nats://127.0.0.1:{PORT}");
    // A sensor name that is no valid subject token as it is.
    let d = Daemon::start(&net, &sensor_config("dmz.web *1", &url));
    for i in 0..5 {
        clients::nc_once(
            &net,
            &net.hp_v4,
            8080,
            format!("GET /{i} HTTP/1.0\r\n\r\n").as_bytes(),
        );
    }
    let events = d.wait_events(5, Duration::from_secs(20));
    let got = wait_stream(&net.honeypot, &url, 5, Duration::from_secs(20));
    assert_eq!(got.len(), 5, "stream: {got:#?}\nlog:\n{}", d.log());
    for m in &got {
        assert_eq!(m.subject, "honeytrap.dmz_web__1.attack");
        assert_eq!(m.msg_id, m.event["event"]["id"].as_str().unwrap());
        assert_eq!(m.event["observer"]["name"], "dmz.web *1");
        assert_eq!(m.event["event"]["action"], "attack");
    }
    let stored: BTreeSet<String> = got.iter().map(|m| m.msg_id.clone()).collect();
    assert_eq!(stored, ids(&events));
    // The event in the stream is the event of events.jsonl.
    let first = events
        .iter()
        .find(|e| e["event"]["id"] == got[0].msg_id.as_str())
        .unwrap();
    assert_eq!(
        first["honeytrap"]["payload"],
        got[0].event["honeytrap"]["payload"]
    );

    // The server drops a message whose id it has seen: what makes retries safe.
    let m = &got[0];
    let dup = publish_again(
        &net.honeypot,
        &url,
        &m.subject,
        &m.msg_id,
        serde_json::to_vec(&m.event).unwrap(),
    );
    assert!(dup, "a repeated Nats-Msg-Id is reported as a duplicate");
    assert_eq!(stream_messages(&net.honeypot, &url, "HONEYTRAP").len(), 5);
    drop(d);
    drop(nats);
}

#[test]
fn a_nats_outage_during_a_burst_loses_and_duplicates_nothing() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("natsout");
    let mut nats = NatsServer::start(&net.honeypot, "127.0.0.1");
    let url = format!("nats://127.0.0.1:{PORT}");
    let mut d = Daemon::start(&net, &sensor_config("outage", &url));
    const N: u32 = 60;
    let mut b = burst(&net, N, "outage");
    assert!(
        wait_until(Duration::from_secs(30), || d.events().len() >= 10),
        "burst did not start:\n{}",
        d.log()
    );
    nats.stop();
    let during = d.events().len();
    // Attacks keep coming while NATS is down; the spool holds them.
    assert!(
        wait_until(Duration::from_secs(30), || d.events().len() >= during + 10),
        "no attacks during the outage:\n{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("spool: delivery failed")),
        "the outage was noticed:\n{}",
        d.log()
    );
    nats.start_again();
    b.wait();
    let events = d.wait_events(N as usize, Duration::from_secs(30));
    let want = ids(&events);
    assert_eq!(want.len(), N as usize);
    let got = wait_stream(&net.honeypot, &url, N as usize, Duration::from_secs(60));
    let stored: Vec<String> = got.iter().map(|m| m.msg_id.clone()).collect();
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        unique.len(),
        "an attack is in the stream twice\nlog:\n{}",
        d.log()
    );
    assert_eq!(
        unique,
        want,
        "stream and events.jsonl differ\nlog:\n{}\nnats:\n{}",
        d.log(),
        nats.log()
    );
    d.stop();
}

/// A namespace "hub" holding NATS (and the collectors), joined by one veth to each
/// sensor's honeypot namespace on 10.79.<net>.0/24 (hub .1, sensor .2). Removed on
/// drop (the veths go with it).
struct Hub {
    ns: String,
}

impl Hub {
    fn new(sensors: &[&NetPair]) -> Hub {
        let id = std::process::id() % 100_000;
        let ns = format!("ht-hub-{id}");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        let hub = Hub { ns: ns.clone() };
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        for (i, p) in sensors.iter().enumerate() {
            let (a, b) = (format!("hbh{id}{i}"), format!("hbs{id}{i}"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &p.honeypot]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.79.{}.1/24", p.net),
                "dev",
                &a,
            ]);
            ip(&[
                "-n",
                &p.honeypot,
                "addr",
                "add",
                &format!("10.79.{}.2/24", p.net),
                "dev",
                &b,
            ]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
            ip(&["-n", &p.honeypot, "link", "set", &b, "up"]);
        }
        hub
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A `honeytrap collect` process in a namespace; killed on drop.
struct Collector {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start(ns: &str, nats_url: &str, pg_url: &str, durable: &str) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("collect.toml");
        std::fs::write(
            &conf,
            format!(
                r#"[sensor]
data_dir = "{data}"

[collect]
durable = "{durable}"
batch = 5
fetch_wait = "200ms"
ack_wait = "10s"
retry_initial = "100ms"
retry_max = "500ms"

[collect.nats]
urls = ["{nats_url}"]
connect_timeout = "1s"
ack_timeout = "2s"

[collect.postgres]
url = "{pg_url}"
connect_timeout = "2s"
"#,
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("collect.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "collect", "--log-level"])
            .arg("info,honeytrap::collect=debug")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env("NO_COLOR", "1")
            .spawn()
            .expect("starting honeytrap collect");
        let c = Collector {
            child: Some(child),
            log,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(20), || c
                .log()
                .contains("collect: ready")),
            "the collector did not become ready:\n{}",
            c.log()
        );
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; waits for a clean exit and returns the `inserted` total it logged.
    fn stop(&mut self) -> u64 {
        self.stop_totals().0
    }

    /// Stop it; its final totals: (inserted, messages, duplicates).
    fn stop_totals(&mut self) -> (u64, u64, u64) {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || matches!(
                c.try_wait(),
                Ok(Some(_))
            )),
            "the collector did not stop on SIGTERM:\n{}",
            self.log()
        );
        let st = c.wait().unwrap();
        let log = self.log();
        assert!(st.success(), "collector exit {st:?}:\n{log}");
        let line = log
            .lines()
            .rfind(|l| l.contains("collect: stopped"))
            .unwrap_or_else(|| panic!("no final totals:\n{log}"));
        (
            field(line, "inserted"),
            field(line, "messages"),
            field(line, "duplicates"),
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `name=N` from a log line.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

/// A counter from the final summary of a daemon's log (counters that stayed 0 are
/// not listed).
fn final_counter(log: &str, name: &str) -> u64 {
    let last = log
        .lines()
        .rfind(|l| l.contains("final counters"))
        .unwrap_or_else(|| panic!("no final counters:\n{log}"));
    if last.contains(&format!(" {name}=")) {
        field(last, name)
    } else {
        0
    }
}

/// Attack id → sensor, in PostgreSQL.
fn db_attacks(pg: &Pg) -> BTreeMap<String, String> {
    match pg
        .client()
        .query("SELECT id::text, sensor FROM attacks", &[])
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// The attacks of `events` as the database should hold them: id and sensor.
fn by_sensor(events: &[Value], sensor: &str) -> BTreeMap<String, String> {
    ids(events)
        .into_iter()
        .map(|id| (id, sensor.to_string()))
        .collect()
}

/// Wait until the database holds as many attacks as `want` (or `limit` is up);
/// returns what it holds.
fn wait_db_attacks(
    pg: &Pg,
    want: &BTreeMap<String, String>,
    limit: Duration,
) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    wait_until(limit, || {
        got = db_attacks(pg);
        got.len() >= want.len()
    });
    got
}

#[test]
fn the_collector_acknowledges_nothing_before_postgresql_has_stored_it_and_rides_out_outages() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    let net = NetPair::new("natscoll");
    let mut nats = NatsServer::start(&net.honeypot, "127.0.0.1");
    let url = format!("nats://127.0.0.1:{PORT}");
    let d = Daemon::start(&net, &sensor_config("coll", &url));
    let mut c = Collector::start(&net.honeypot, &url, &pg.url(), "pgdown");
    // PostgreSQL goes down; attacks reach the stream but cannot be stored.
    pg.stop();
    for i in 0..8 {
        clients::nc_once(&net, &net.hp_v4, 8080, format!("pgdown {i}").as_bytes());
    }
    let events = d.wait_events(8, Duration::from_secs(20));
    assert_eq!(
        wait_stream(&net.honeypot, &url, 8, Duration::from_secs(20)).len(),
        8
    );
    assert!(
        wait_until(Duration::from_secs(20), || c
            .log()
            .contains("writing to PostgreSQL failed")),
        "{}",
        c.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let info = consumer_info(&net.honeypot, &url, "HONEYTRAP", "pgdown");
    assert_eq!(
        info["ack_floor"]["stream_seq"], 0,
        "nothing acknowledged while PostgreSQL is down: {info:#}"
    );
    assert!(info["num_ack_pending"].as_u64().unwrap() > 0, "{info:#}");
    // Back: every attack stored once, and only then acknowledged.
    pg.start_again();
    let want = by_sensor(&events, "coll");
    let got = wait_db_attacks(&pg, &want, Duration::from_secs(30));
    assert_eq!(got, want, "collector log:\n{}", c.log());
    assert!(
        wait_until(Duration::from_secs(10), || {
            let i = consumer_info(&net.honeypot, &url, "HONEYTRAP", "pgdown");
            i["ack_floor"]["stream_seq"] == 8 && i["num_ack_pending"] == 0
        }),
        "{:#}",
        consumer_info(&net.honeypot, &url, "HONEYTRAP", "pgdown")
    );
    // NATS restarted: the sensor's spool and the collector both carry on.
    nats.stop();
    for i in 0..4 {
        clients::nc_once(&net, &net.hp_v4, 8080, format!("natsdown {i}").as_bytes());
    }
    let events = d.wait_events(12, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    nats.start_again();
    let want = by_sensor(&events, "coll");
    let got = wait_db_attacks(&pg, &want, Duration::from_secs(30));
    assert_eq!(
        got,
        want,
        "collector log:\n{}\nsensor log:\n{}",
        c.log(),
        d.log()
    );
    assert_eq!(c.stop(), 12, "each attack inserted once");
}

#[test]
fn a_three_sensor_fleet_reaches_postgresql_through_nats_and_two_collectors() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    let nets: Vec<NetPair> = (0..3).map(|i| NetPair::new(&format!("fleet{i}"))).collect();
    let hub = Hub::new(&nets.iter().collect::<Vec<_>>());
    let _nats = NatsServer::start(&hub.ns, "0.0.0.0");
    let local = format!("nats://127.0.0.1:{PORT}");
    let mut collectors: Vec<Collector> = (0..2)
        .map(|_| Collector::start(&hub.ns, &local, &pg.url(), "fleet"))
        .collect();
    let sensors: Vec<Daemon> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let url = format!("nats://10.79.{}.1:{PORT}", n.net);
            Daemon::start(n, &sensor_config(&format!("fleet-{i}"), &url))
        })
        .collect();
    const PER_SENSOR: u32 = 20;
    let mut bursts: Vec<_> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| burst(n, PER_SENSOR, &format!("fleet{i}")))
        .collect();
    for b in &mut bursts {
        b.wait();
    }
    let mut want = BTreeMap::new();
    for (i, d) in sensors.iter().enumerate() {
        let events = d.wait_events(PER_SENSOR as usize, Duration::from_secs(30));
        for e in &events {
            assert_eq!(e["observer"]["name"], format!("fleet-{i}"));
            want.insert(
                e["event"]["id"].as_str().unwrap().to_string(),
                format!("fleet-{i}"),
            );
        }
    }
    assert_eq!(want.len(), 3 * PER_SENSOR as usize);
    let got = wait_db_attacks(&pg, &want, Duration::from_secs(60));
    let logs = || {
        collectors
            .iter()
            .map(|c| c.log())
            .chain(sensors.iter().map(|d| d.log()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(
        got,
        want,
        "every attack of every sensor once, with its sensor\n{}",
        logs()
    );
    let sensors_table: BTreeSet<String> = pg
        .client()
        .query("SELECT name FROM sensors", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        sensors_table,
        BTreeSet::from(["fleet-0".into(), "fleet-1".into(), "fleet-2".into()])
    );
    // Scale-out: the two collectors share one durable consumer, so each message
    // went to one of them only (with a consumer each, every message would have
    // reached both: 2 x 60 messages, 60 of them duplicates). Which collector took
    // how many is up to the server (one may take all in a short burst).
    let totals: Vec<(u64, u64, u64)> = collectors.iter_mut().map(|c| c.stop_totals()).collect();
    let sum = |f: fn(&(u64, u64, u64)) -> u64| totals.iter().map(f).sum::<u64>();
    assert_eq!(sum(|t| t.0), want.len() as u64, "inserted: {totals:?}");
    assert_eq!(sum(|t| t.1), want.len() as u64, "messages: {totals:?}");
    assert_eq!(sum(|t| t.2), 0, "duplicates: {totals:?}");
}

#[test]
fn tls_with_a_verified_certificate_and_a_wrong_ca_refused() {
    if !require_root() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::pg::certificates(certs.path(), "nats");
    let (other, _, _) = support::pg::certificates(certs.path(), "other");
    let net = NetPair::new("natstls");
    let tls: Vec<String> = vec![
        "--tls".into(),
        "--tlscert".into(),
        cert.display().to_string(),
        "--tlskey".into(),
        key.display().to_string(),
    ];
    let _nats = NatsServer::start_with(&net.honeypot, "127.0.0.1", &tls);
    let url = format!("tls://127.0.0.1:{PORT}");
    let conf = |ca: &Path| {
        sensor_config("tls", &url).replace(
            "[output.nats]\n",
            &format!(
                "[output.nats]\ntls = true\nca_file = \"{}\"\n",
                ca.display()
            ),
        )
    };
    let reader = format!("{url}#ca={}", ca.display());
    // A CA that did not sign the server's certificate: nothing is delivered, the
    // event stays in the spool.
    let mut d1 = Daemon::start(&net, &conf(&other));
    clients::nc_once(&net, &net.hp_v4, 8080, b"over tls");
    let events = d1.wait_events(1, Duration::from_secs(20));
    assert!(
        d1.wait_log("spool: delivery failed", Duration::from_secs(20)),
        "{}",
        d1.log()
    );
    d1.stop();
    assert!(stream_messages(&net.honeypot, &reader, "HONEYTRAP").is_empty());
    // The right CA, same data directory: the spooled event goes out over TLS.
    let d2 = Daemon::start(
        &net,
        &conf(&ca).replace("@DATA@", &d1.data().display().to_string()),
    );
    let got = wait_stream(&net.honeypot, &reader, 1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "{}", d2.log());
    assert_eq!(got[0].msg_id, events[0]["event"]["id"].as_str().unwrap());
    assert_eq!(got[0].subject, "honeytrap.tls.attack");
}

#[test]
fn sigkill_while_the_spool_holds_events_and_nats_is_down_loses_and_duplicates_nothing() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("natskill");
    let mut nats = NatsServer::start(&net.honeypot, "127.0.0.1");
    let url = format!("nats://127.0.0.1:{PORT}");
    nats.stop();
    let conf = sensor_config("killed", &url);
    let mut d1 = Daemon::start(&net, &conf);
    for i in 0..10 {
        clients::nc_once(&net, &net.hp_v4, 8080, format!("kill {i}").as_bytes());
    }
    let events = d1.wait_events(10, Duration::from_secs(20));
    assert!(
        d1.wait_log("spool: delivery failed", Duration::from_secs(20)),
        "{}",
        d1.log()
    );
    d1.signal(nix::sys::signal::Signal::SIGKILL);
    d1.wait_exit(Duration::from_secs(10));
    nats.start_again();
    // The same data directory, so the same spool.
    let same = conf.replace("@DATA@", &d1.data().display().to_string());
    let mut d2 = Daemon::start(&net, &same);
    let got = wait_stream(&net.honeypot, &url, 10, Duration::from_secs(30));
    let stored: Vec<String> = got.iter().map(|m| m.msg_id.clone()).collect();
    assert_eq!(
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        ids(&events),
        "{}",
        d2.log()
    );
    assert_eq!(stored.len(), 10, "nothing twice");
    d2.stop();
    assert_eq!(
        final_counter(&d2.log(), "spool_delivered"),
        10,
        "{}",
        d2.log()
    );
    // Started once more: nothing is published again.
    let mut d3 = Daemon::start(&net, &same);
    std::thread::sleep(Duration::from_secs(2));
    d3.stop();
    assert_eq!(
        final_counter(&d3.log(), "spool_delivered"),
        0,
        "{}",
        d3.log()
    );
    assert_eq!(stream_messages(&net.honeypot, &url, "HONEYTRAP").len(), 10);
}

/// The inode and link count of each spool segment in `dir`.
fn segments(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.nlink()),
            )
        })
        .collect()
}

#[test]
fn postgresql_and_nats_on_one_sensor_share_one_spool_and_one_outage_holds_back_neither() {
    if !require_root() {
        return;
    }
    let pg = Pg::start(None, None);
    let net = NetPair::new("natsshare");
    let mut nats = NatsServer::start(&net.honeypot, "127.0.0.1");
    let url = format!("nats://127.0.0.1:{PORT}");
    nats.stop();
    let conf = sensor_config("shared", &url).replace(
        "[output.spool]",
        &format!(
            "[output.postgres]\nenabled = true\nurl = \"{}\"\n\n[output.spool]",
            pg.url()
        ),
    );
    let mut d = Daemon::start(&net, &conf);
    for i in 0..10 {
        clients::nc_once(&net, &net.hp_v4, 8080, format!("shared {i}").as_bytes());
    }
    let events = d.wait_events(10, Duration::from_secs(20));
    let want = by_sensor(&events, "shared");
    // NATS is down: PostgreSQL gets every attack all the same.
    let got = wait_db_attacks(&pg, &want, Duration::from_secs(30));
    assert_eq!(got, want, "{}", d.log());
    assert!(
        d.wait_log("spool: delivery failed", Duration::from_secs(20)),
        "{}",
        d.log()
    );
    // One spool: the segment being written is one file, linked into both outputs'
    // directories; nothing was written twice.
    let spool = d.data().join("spool");
    let (in_pg, in_nats) = (
        segments(&spool.join("postgres")),
        segments(&spool.join("nats")),
    );
    let (name, (ino, links)) = in_pg
        .iter()
        .next_back()
        .map(|(n, &v)| (n.clone(), v))
        .expect("a segment");
    assert_eq!(
        in_nats.get(&name),
        Some(&(ino, links)),
        "{in_pg:?} {in_nats:?}"
    );
    assert_eq!(links, 2);
    assert!(d.log().contains("postgres+nats"), "{}", d.log());
    // NATS back: it gets every attack once.
    nats.start_again();
    let stream = wait_stream(&net.honeypot, &url, 10, Duration::from_secs(30));
    let stored: Vec<String> = stream.iter().map(|m| m.msg_id.clone()).collect();
    assert_eq!(stored.len(), 10, "nothing twice: {stored:?}");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), ids(&events));
    d.stop();
    assert_eq!(
        final_counter(&d.log(), "spool_delivered"),
        20,
        "{}",
        d.log()
    );
    assert_eq!(pg.count("SELECT * FROM attacks"), 10);
}
