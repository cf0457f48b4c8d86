//! End-to-end: the `clamav` analyzer (issue 6, point 4) with Debian's real clamd
//! (package `clamav-daemon`, installed by .ci/run), started by the test in the
//! foreground with a Unix socket in a temporary directory and a signature
//! database the test writes itself (one `.ndb` body signature; no online
//! database). The attacker (nc in its namespace) sends payloads to honeytrap
//! (`kind = "listen"`). Asserted: a payload with the signature's bytes gets a
//! finding of kind `clamav` with the signature name; with clamd stopped the attack
//! is still written, with the failure recorded (and logged); once clamd is back
//! and the backoff is over, scanning works again.
//!
//! The test fails (it does not skip) when clamd is missing.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::clients::{nc_once, payload};
use support::daemon::wait_until;
use support::{base_config, require_root, Daemon, NetPair};

/// The bytes the signature matches (written to the database as hex).
const MARK: &[u8] = b"HONEYTRAP-CLAMAV-E2E-MARK";
const SIGNATURE: &str = "Honeytrap.Test.E2E";

/// clamd run by the test; killed (by its pid) when dropped.
struct Clamd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Clamd {
    /// Start clamd with a config and database in `dir`, wait for its socket.
    fn start(dir: &Path) -> Clamd {
        let clamd = ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("clamd not found: install Debian's clamav-daemon package (.ci/run does)")
            });
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(
            db.join("honeytrap-test.ndb"),
            format!("{SIGNATURE}:0:*:{}\n", hex(MARK)),
        )
        .unwrap();
        let socket = dir.join("clamd.sock");
        let log = dir.join("clamd.log");
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nLocalSocketMode 666\nDatabaseDirectory {}\nLogFile {}\n\
                 TemporaryDirectory {}\nPidFile {}\nForeground true\nUser root\n\
                 SelfCheck 0\nStreamMaxLength 25M\n",
                socket.display(),
                db.display(),
                log.display(),
                dir.display(),
                dir.join("clamd.pid").display()
            ),
        )
        .unwrap();
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(clamd)
            .arg("--foreground")
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting clamd");
        let mut c = Clamd { child, socket, log };
        let up = wait_until(Duration::from_secs(90), || {
            std::os::unix::net::UnixStream::connect(&c.socket).is_ok()
        });
        if !up {
            let status = c.child.try_wait();
            panic!(
                "clamd did not open {} ({status:?}):\n{}",
                c.socket.display(),
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        c
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn config(socket: &Path) -> String {
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n\n\
         [analyzer.clamav]\nenabled = true\nsocket = \"{}\"\ntimeout = \"5s\"\nbackoff = \"1s\"\n",
        base_config(Path::new("@DATA@"), "4444", ""),
        socket.display()
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The real attack whose payload contains `needle`, waited for.
fn real_with(d: &Daemon, needle: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["honeytrap"]["virtual"] == false && contains(&payload(e), needle));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no event with {}:\n{}",
            String::from_utf8_lossy(needle),
            d.log()
        )
    })
}

fn clamav_findings(e: &Value) -> Vec<Value> {
    e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == "clamav")
        .cloned()
        .collect()
}

fn failures(e: &Value) -> Vec<Value> {
    e["honeytrap"]["analysis"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == "clamav")
        .cloned()
        .collect()
}

#[test]
fn clamd_detects_and_a_down_clamd_never_loses_the_attack() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut clamd = Clamd::start(dir.path());
    let net = NetPair::new("clamav");
    let d = Daemon::start(&net, &config(&clamd.socket));

    // Detection through the real clamd.
    let mut attack = b"GET /shell HTTP/1.0\r\n\r\n".to_vec();
    attack.extend_from_slice(MARK);
    attack.extend_from_slice(b" one\n");
    nc_once(&net, &net.hp_v4, 4444, &attack);
    let e = real_with(&d, b" one\n");
    let f = clamav_findings(&e);
    assert_eq!(f.len(), 1, "{e:#}");
    assert_eq!(f[0]["kind"], "clamav");
    assert_eq!(f[0]["source"]["kind"], "payload");
    // clamd marks signatures from a database it does not know as UNOFFICIAL.
    let sig = f[0]["meta"]["signature"].as_str().unwrap();
    assert!(sig.starts_with(SIGNATURE), "{sig}");
    assert!(failures(&e).is_empty(), "{e:#}");
    // A benign payload: no finding, no failure.
    nc_once(&net, &net.hp_v4, 4444, b"just a benign line two\n");
    let e = real_with(&d, b"benign line two");
    assert!(
        clamav_findings(&e).is_empty() && failures(&e).is_empty(),
        "{e:#}"
    );

    // clamd down: the attack is still written, the failure recorded and logged.
    clamd.stop();
    let mut attack = MARK.to_vec();
    attack.extend_from_slice(b" three\n");
    nc_once(&net, &net.hp_v4, 4444, &attack);
    let e = real_with(&d, b" three\n");
    assert!(clamav_findings(&e).is_empty(), "{e:#}");
    let fail = failures(&e);
    assert_eq!(fail.len(), 1, "{e:#}");
    assert_eq!(fail[0]["what"], "error");
    assert!(
        fail[0]["message"].as_str().unwrap().contains("unreachable"),
        "{fail:?}"
    );
    assert_eq!(e["honeytrap"]["analysis"]["done"], true);
    assert!(d.log().contains("analyzer failed"), "{}", d.log());

    // clamd back: after the backoff (1s) it is tried again.
    let _clamd = Clamd::start(dir.path());
    std::thread::sleep(Duration::from_millis(1200));
    let mut attack = MARK.to_vec();
    attack.extend_from_slice(b" four\n");
    nc_once(&net, &net.hp_v4, 4444, &attack);
    let e = real_with(&d, b" four\n");
    assert_eq!(clamav_findings(&e).len(), 1, "{e:#}");
}
