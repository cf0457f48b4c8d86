//! The `outputs` scenario (issue 8, point 7): the rate load against honeytrap with
//! only the default outputs (events.jsonl, transcripts), then with PostgreSQL, NATS
//! JetStream and hpfeeds on as well (through their spools), `--rounds` pairs in one
//! run. The harness starts its own servers on loopback (a private PostgreSQL cluster,
//! `nats-server -js` with a temporary store, the PyPI hpfeeds broker with a sqlite
//! auth db in the broker's schema) and stops them by PID at the end, also on error (Drop guards). After each
//! "on" run it waits (bounded) for the spools to drain, and reports per output how
//! many events were delivered and when: PostgreSQL rows, JetStream messages (the
//! server's /jsz), hpfeeds = honeytrap's `delivered` metric minus the other two.
//! Records lost: attack ids of events.jsonl missing from PostgreSQL.

use super::*;
use std::collections::HashSet;
use std::io::Read as _;
use std::net::TcpStream;

/// Longest wait for the spools to drain after the load.
const DRAIN_MAX: Duration = Duration::from_secs(180);
const PG_USER: &str = "honeytrap";
const HP_IDENT: &str = "bench";
const HP_SECRET: &str = "bench-secret";
const HP_CHANNEL: &str = "honeytrap.events";
/// The network outputs, in the order of the delivered rows.
const NAMES: [&str; 3] = ["postgres", "nats", "hpfeeds"];

/// A server child process, SIGTERM then SIGKILL by its PID on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "[outputs] {}: no exit 10s after SIGTERM: SIGKILL",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} (is it installed?)"))?;
    Ok(Proc { name, child })
}

/// Wait until something accepts on 127.0.0.1:port.
fn wait_port(name: &str, port: u16, log: &Path) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{name} did not listen on 127.0.0.1:{port}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A private PostgreSQL cluster on 127.0.0.1 (trust auth), as the `postgres` user;
/// `pg_ctl stop` on drop (pg_ctl signals the postmaster by the PID in its pidfile).
struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Pg {
    fn start() -> Result<Pg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (no /usr/lib/postgresql): install Debian's `postgresql`")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .context("no /usr/lib/postgresql/*/bin/initdb: install Debian's `postgresql`")?;
        let dir = tempfile::Builder::new().prefix("connbench-pg").tempdir()?;
        let port = free_port()?;
        let pg = Pg { dir, bin, port };
        chown_postgres(pg.dir.path())?;
        let data = pg.dir.path().join("data");
        let out = pg
            .as_postgres("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                PG_USER,
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        // fsync on: the figures are those of a real server (on this machine's disk).
        writeln!(
            conf,
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 30",
            pg.dir.path().display()
        )?;
        let st = pg
            .as_postgres("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(pg.dir.path().join("pg.log"))
            .arg("-D")
            .arg(&data)
            .arg("start")
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!(
                "pg_ctl start failed: {}",
                std::fs::read_to_string(pg.dir.path().join("pg.log")).unwrap_or_default()
            );
        }
        pg.client("postgres")?
            .batch_execute("CREATE DATABASE honeytrap")?;
        Ok(pg)
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
        c
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={PG_USER} dbname={db}",
            self.port
        )
    }

    fn client(&self, db: &str) -> Result<postgres::Client> {
        Ok(postgres::Client::connect(&self.url(db), postgres::NoTls)?)
    }

    /// Rows in `attacks` (0 before honeytrap created the schema).
    fn count(&self, c: &mut postgres::Client) -> u64 {
        c.query_one("SELECT count(*) FROM attacks", &[])
            .map(|r| r.get::<_, i64>(0) as u64)
            .unwrap_or(0)
    }

    fn ids(&self) -> Result<HashSet<String>> {
        let mut c = self.client("honeytrap")?;
        Ok(c.query("SELECT id::text FROM attacks", &[])?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .status();
    }
}

fn chown_postgres(p: &Path) -> Result<()> {
    let u = nix::unistd::User::from_name("postgres")?
        .context("no `postgres` user: install Debian's `postgresql`")?;
    nix::unistd::chown(p, Some(u.uid), Some(u.gid))?;
    Ok(())
}

/// `nats-server -js` on loopback with its store and monitoring port.
struct Nats {
    _proc: Proc,
    _dir: tempfile::TempDir,
    port: u16,
    http: u16,
}

impl Nats {
    fn start() -> Result<Nats> {
        let dir = tempfile::Builder::new()
            .prefix("connbench-nats")
            .tempdir()?;
        let (port, http) = (free_port()?, free_port()?);
        let log = dir.path().join("nats.log");
        let mut c = Command::new("nats-server");
        c.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &http.to_string(), "-sd"])
            .arg(dir.path().join("js"));
        let p = spawn("nats-server", c, &log)
            .context("nats-server is not installed: install Debian's `nats-server`")?;
        wait_port("nats-server", port, &log)?;
        wait_port("nats-server monitoring", http, &log)?;
        Ok(Nats {
            _proc: p,
            _dir: dir,
            port,
            http,
        })
    }

    /// Messages in all streams.
    fn messages(&self) -> u64 {
        http_get(self.http, "/jsz")
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["messages"].as_u64())
            .unwrap_or(0)
    }
}

/// The PyPI hpfeeds broker on loopback, its sqlite auth db allowing the sensor.
struct Broker {
    _proc: Proc,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Broker {
    fn start() -> Result<Broker> {
        let program = ["/usr/local/bin/hpfeeds-broker"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("hpfeeds-broker is not installed: `python3 -m pip install --break-system-packages 'hpfeeds[broker]==3.1.0'` (.ci/run does)")?;
        let dir = tempfile::Builder::new().prefix("connbench-hpf").tempdir()?;
        let script = format!(
            "import sqlite3\ndb=sqlite3.connect('{}/sqlite.db')\n\
             db.execute('create table logs (id integer primary key autoincrement, data TEXT)')\n\
             db.execute('create table stats (id integer primary key autoincrement, ak TEXT, uid TEXT, data TEXT)')\n\
             db.execute('create table authkeys (id integer primary key autoincrement, owner TEXT, ident TEXT, secret TEXT, pubchans TEXT, subchans TEXT)')\n\
             db.execute(\"insert into authkeys (owner, ident, secret, pubchans, subchans) values ('bench', '{HP_IDENT}', '{HP_SECRET}', '[\\\"{HP_CHANNEL}\\\"]', '[]')\")\n\
             db.commit()\n",
            dir.path().display()
        );
        let out = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .output()?;
        if !out.status.success() {
            bail!("hpfeeds auth db: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let log = dir.path().join("broker.log");
        let mut c = Command::new(program);
        c.args(["--bind", &format!("127.0.0.1:{port}"), "--auth", "sqlite"])
            .current_dir(dir.path());
        let p = spawn("hpfeeds-broker", c, &log)?;
        wait_port("hpfeeds-broker", port, &log)?;
        Ok(Broker {
            _proc: p,
            _dir: dir,
            port,
        })
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:port: the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut b = String::new();
    s.read_to_string(&mut b)?;
    Ok(b.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default())
}

/// honeytrap's `delivered` metric (events delivered by all spools).
fn delivered_metric(port: u16) -> Option<u64> {
    let body = http_get(port, "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with("honeytrap_delivered") && !l.contains('{'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

struct Servers {
    pg: Pg,
    nats: Nats,
    hp: Broker,
}

impl Servers {
    /// The "on" config: metrics and the outputs in `with` (`--with-outputs`).
    fn toml(&self, metrics: u16, with: &[String]) -> String {
        let on = |o: &str| with.iter().any(|w| w == o);
        format!(
            "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics}\"\n\n\
             [output.postgres]\nenabled = {}\nurl = \"{}\"\n\n\
             [output.nats]\nenabled = {}\nurls = [\"nats://127.0.0.1:{}\"]\n\n\
             [output.hpfeeds]\nenabled = {}\nport = {}\nident = \"{HP_IDENT}\"\nsecret = \"{HP_SECRET}\"\nchannel = \"{HP_CHANNEL}\"\n\n",
            on("postgres"),
            self.pg.url("honeytrap"),
            on("nats"),
            self.nats.port,
            on("hpfeeds"),
            self.hp.port
        )
    }
}

/// Per output: events delivered at the end of the load, at the end of the wait, and
/// the time (since the load started) when it had them all.
#[derive(Default, Clone, Copy)]
struct Delivery {
    at_load_end: u64,
    last: u64,
    done: Option<Duration>,
}

/// One rate run (outputs off: metrics only; on: the three servers' outputs too).
fn run_one(
    args: &Args,
    servers: Option<&Servers>,
    label: &'static str,
    rows: &mut Vec<Row>,
) -> Result<RateResult> {
    let metrics = free_port()?;
    let mut a = args.clone();
    a.extra_toml = match servers {
        Some(s) => {
            let mut t = s.toml(metrics, &args.with_outputs);
            if let Some(f) = &args.spool_fsync {
                t.push_str(&format!("[output.spool]\nfsync = \"{f}\"\n\n"));
            }
            t
        }
        None => format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics}\"\n\n"),
    };
    eprintln!("[outputs] honeytrap, {label}: starting");
    let mut t = Target::honeytrap(&a, &rate_config(&a))?;
    let (pg_base, nats_base) = match servers {
        Some(s) => (
            s.pg.count(&mut s.pg.client("honeytrap")?),
            s.nats.messages(),
        ),
        None => (0, 0),
    };
    let t0 = Instant::now();
    let r = run_rate(&a, &t)?;
    let load = t0.elapsed();
    let mut rate = rate_row(label, &r);
    rate.scenario = "outputs";
    rate.notes
        .push_str(&format!("; loadavg {}", load_average()));
    eprintln!("[outputs] honeytrap, {label}: {:.0} conn/s", r.rate);
    let mut drain_note = String::new();
    if let Some(s) = servers {
        let mut c = s.pg.client("honeytrap")?;
        let n = r.completed_total;
        let mut d = [Delivery::default(); 3];
        let mut first = true;
        loop {
            let pg = s.pg.count(&mut c) - pg_base;
            let nats = s.nats.messages().saturating_sub(nats_base);
            let all = delivered_metric(metrics).unwrap_or(0);
            let now = [pg, nats, all.saturating_sub(pg + nats)];
            for (x, v) in d.iter_mut().zip(now) {
                if first {
                    x.at_load_end = v;
                }
                x.last = v;
                if v >= n && x.done.is_none() {
                    x.done = Some(t0.elapsed());
                }
            }
            first = false;
            let waiting = NAMES
                .iter()
                .zip(&d)
                .any(|(o, x)| args.with_outputs.iter().any(|w| w == o) && x.done.is_none());
            if !waiting || t0.elapsed() > load + DRAIN_MAX {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for (name, x) in NAMES.iter().zip(d) {
            if !args.with_outputs.iter().any(|w| w == name) {
                continue;
            }
            let mut o = row("outputs", "delivered", format!("{name}: {}/{n}", x.last));
            o.ratio = match x.done {
                Some(t) => format!("{:.0} ev/s", n as f64 / t.as_secs_f64()),
                None => "not drained".into(),
            };
            o.goal = if x.last >= n {
                "all: met"
            } else {
                "all: NOT met"
            }
            .into();
            o.notes =
                format!(
                "backlog at load end {} events; all delivered {} after load start ({:.1}s load); after the load {}{}",
                n.saturating_sub(x.at_load_end),
                x.done
                    .map_or("never (bounded wait)".into(), |t| format!("{:.1}s", t.as_secs_f64())),
                load.as_secs_f64(),
                match x.done {
                    Some(t) if t > load && n > x.at_load_end => format!(
                        "{:.0} ev/s",
                        (n - x.at_load_end) as f64 / (t - load).as_secs_f64()
                    ),
                    _ => "-".into(),
                },
                if *name == "hpfeeds" {
                    "; hpfeeds = delivered metric - postgres - nats"
                } else {
                    ""
                }
            );
            rows.push(o);
        }
        drain_note = format!("; loadavg after drain {}", load_average());
    }
    let stopped = t.stop(Duration::from_secs(120))?;
    let data = t.data_dir().unwrap();
    let mut rec = records_row("records", &stopped, &data, r.completed_total, a.outputs);
    rec.target = label;
    rec.notes.push_str(&drain_note);
    if let Some(c) = final_counters(&stopped.log) {
        rec.notes.push_str(&format!(
            "; spool_delivered={} spool_bytes={} spool_dropped={} spool_delivery_failures={}",
            c.get("spool_delivered").copied().unwrap_or(0),
            c.get("spool_bytes").copied().unwrap_or(0),
            c.get("spool_dropped").copied().unwrap_or(0),
            c.get("spool_delivery_failures").copied().unwrap_or(0),
        ));
    }
    rows.push(rate);
    rows.push(rec);
    if let Some(s) = servers.filter(|_| args.with_outputs.iter().any(|w| w == "postgres")) {
        rows.push(lost_row(&s.pg, &data.join("events.jsonl"))?);
    }
    drop(t);
    Ok(r)
}

/// Attack ids of events.jsonl (real attacks) missing from PostgreSQL.
fn lost_row(pg: &Pg, events: &Path) -> Result<Row> {
    let in_db = pg.ids()?;
    let r = BufReader::new(std::fs::File::open(events)?);
    let (mut total, mut lost) = (0u64, 0u64);
    for line in r.lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let Some(id) = v["event"]["id"].as_str() else {
            continue;
        };
        total += 1;
        if !in_db.contains(id) {
            lost += 1;
        }
    }
    let mut x = row(
        "outputs",
        "pg vs jsonl",
        format!("{} of {total} ids in PostgreSQL", total - lost),
    );
    x.ratio = format!("{lost} lost");
    x.goal = if lost == 0 {
        "0 lost: met"
    } else {
        "0 lost: NOT met"
    }
    .into();
    Ok(x)
}

pub(super) fn scenario_outputs(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    if let Some(w) = args
        .with_outputs
        .iter()
        .find(|w| !NAMES.contains(&w.as_str()))
    {
        bail!("--with-outputs: unknown output {w:?} (postgres, nats, hpfeeds)");
    }
    eprintln!("[outputs] starting PostgreSQL, nats-server -js, hpfeeds-broker on 127.0.0.1");
    let servers = Servers {
        pg: Pg::start().context("PostgreSQL")?,
        nats: Nats::start()?,
        hp: Broker::start()?,
    };
    println!("# outputs: load average before: {}", load_average());
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        if round > 0 {
            settle_pause();
        }
        let off = run_one(args, None, "ht-off", rows)?;
        settle_pause();
        let on = run_one(args, Some(&servers), "ht-on", rows)?;
        let ratio = on.rate / off.rate.max(1e-9);
        ratios.push(ratio);
        let mut r = row("outputs", "on/off", format!("round {}", round + 1));
        r.ratio = format!("{ratio:.2}x");
        r.goal = format!(
            ">= 0.90x: {}",
            if ratio >= 0.90 { "met" } else { "NOT met" }
        );
        rows.push(r);
    }
    if ratios.len() > 1 {
        rows.push(summary_row("outputs", &ratios));
    }
    Ok(())
}
