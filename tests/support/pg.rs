//! A private PostgreSQL server for the tests: `initdb` and `pg_ctl` from Debian's
//! `postgresql` package (/usr/lib/postgresql/*/bin), run as the `postgres` user in a
//! temporary directory, on a Unix socket there and a private port (optionally TCP on
//! 127.0.0.1 inside a network namespace, with TLS). The test can stop and start it;
//! it is stopped and removed on drop. Missing PostgreSQL fails the test with a clear
//! message: it never passes silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// The superuser and database the tests use.
pub const USER: &str = "honeytrap";
pub const DB: &str = "honeytrap";

/// The directory of initdb, pg_ctl and postgres (the newest installed version).
pub fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install Debian's `postgresql` package (.ci/run does)")
    })
}

/// TLS settings of the server: certificate and key files (PEM).
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running (or stopped) private server.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The network namespace it runs in (TCP on 127.0.0.1 there), if any.
    netns: Option<String>,
    bin: PathBuf,
}

impl Pg {
    /// A new cluster, started. With `netns`, it also listens on 127.0.0.1:port in that
    /// namespace; with `tls`, TCP clients must use TLS.
    pub fn start(netns: Option<&str>, tls: Option<Tls>) -> Pg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("htpg")
            .tempdir()
            .expect("tempdir");
        let port =
            21000 + (std::process::id() % 2000) as u16 * 8 + NEXT.fetch_add(1, Ordering::SeqCst);
        chown_postgres(dir.path());
        let pg = Pg {
            dir,
            port,
            netns: netns.map(str::to_string),
            bin,
        };
        let data = pg.data();
        let out = pg
            .as_postgres("initdb")
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listen = if netns.is_some() { "127.0.0.1" } else { "" };
        let mut conf = format!(
            "port = {port}\nunix_socket_directories = '{}'\nlisten_addresses = '{listen}'\nfsync = off\nmax_connections = 50\n",
            pg.dir.path().display()
        );
        let mut hba = "local all all trust\n".to_string();
        if let Some(t) = tls {
            for (src, name) in [(&t.cert, "server.crt"), (&t.key, "server.key")] {
                let dst = data.join(name);
                std::fs::copy(src, &dst).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
                chown_postgres(&dst);
            }
            conf += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
            // TCP only with TLS: a client that does not use it is refused.
            hba += "hostssl all all 127.0.0.1/32 trust\n";
        } else {
            hba += "host all all 127.0.0.1/32 trust\n";
        }
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        pg.start_again();
        let mut c = pg.client_to("postgres");
        c.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command run as the postgres user (in the namespace, if any).
    fn as_postgres(&self, program: &str) -> Command {
        let prog = self.bin.join(program);
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"]);
                c
            }
            None => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c
            }
        };
        c.arg(prog).stdin(Stdio::null());
        c
    }

    /// Start the server (after `stop`) and wait until it accepts connections.
    pub fn start_again(&self) {
        let out = self
            .as_postgres("pg_ctl")
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stop the server now (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        let out = self
            .as_postgres("pg_ctl")
            .args(["stop", "-w", "-t", "30", "-m", "fast", "-D"])
            .arg(self.data())
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Connection string over the Unix socket (works from any network namespace).
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname={DB}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Connection string over TCP to 127.0.0.1 (inside the namespace).
    pub fn tcp_url(&self) -> String {
        format!("host=127.0.0.1 port={} user={USER} dbname={DB}", self.port)
    }

    /// A client of the tests' database, over the Unix socket.
    pub fn client(&self) -> postgres::Client {
        self.client_to(DB)
    }

    fn client_to(&self, db: &str) -> postgres::Client {
        let url = format!(
            "host={} port={} user={USER} dbname={db} connect_timeout=10",
            self.dir.path().display(),
            self.port
        );
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL: {e}\n{}", self.log()))
    }

    /// `SELECT count(*)` of a query's rows.
    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(&format!("SELECT count(*) FROM ({sql}) AS q"), &[])
            .map(|r| r.get(0))
            .unwrap_or(-1)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .args(["stop", "-w", "-t", "10", "-m", "immediate", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn chown_postgres(p: &Path) {
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("no `postgres` user: install Debian's `postgresql` package (.ci/run does)")
        });
    nix::unistd::chown(p, Some(u.uid), Some(u.gid)).expect("chown to postgres");
}

fn append(p: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A CA (self-signed) and a server certificate it signed, for 127.0.0.1 and
/// localhost, made with openssl in `dir`: (CA certificate, server certificate,
/// server key), PEM files.
pub fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let f = |x: &str| dir.join(format!("{name}-{x}"));
    let (ca, ca_key, cert, key, csr, ext) = (
        f("ca.crt"),
        f("ca.key"),
        f("server.crt"),
        f("server.key"),
        f("server.csr"),
        f("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let p = |x: &PathBuf| x.display().to_string();
    let steps: [Vec<String>; 3] = [
        vec![
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("/CN={name} test CA"),
            "-keyout".into(),
            p(&ca_key),
            "-out".into(),
            p(&ca),
        ])
        .collect(),
        vec![
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ]
        .into_iter()
        .map(String::from)
        .chain([p(&key), "-out".into(), p(&csr)])
        .collect(),
        vec!["x509", "-req", "-days", "2", "-set_serial", "2", "-in"]
            .into_iter()
            .map(String::from)
            .chain([
                p(&csr),
                "-CA".into(),
                p(&ca),
                "-CAkey".into(),
                p(&ca_key),
                "-extfile".into(),
                p(&ext),
                "-out".into(),
                p(&cert),
            ])
            .collect(),
    ];
    for args in steps {
        let mut c = Command::new("openssl");
        c.args(&args);
        let out = super::daemon::run(c, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (ca, cert, key)
}
