//! End-to-end: the `exe` and `fuzzy` classifiers (issue 6, points 1 and 2).
//! nc in the attacker namespace sends payloads to honeytrap (`kind = "listen"`);
//! each test asserts the analysed event (validated against docs/event.schema.json
//! by the harness):
//! - a Windows PE built here, after a 100-byte exploit prefix: the `executable`
//!   finding (format, arch, type, offset, length), the extracted download
//!   (`extracted:payload@100`, port 0) whose SHA-256 is exactly the PE's, the
//!   stored file under the data directory, and the PE analysed again as a download;
//! - a 10 KiB payload: its `fuzzy_hash` finding with the ssdeep and TLSH the
//!   reference tools give, and a signature file (exact SHA-256, ssdeep of a copy
//!   with five bytes changed) naming it;
//! - a broken signature file stops the start with the file and line.

mod support;

use serde_json::Value;
use sha2::Digest as _;
use std::path::Path;
use std::time::Duration;
use support::clients::nc_once;
use support::daemon::wait_until;
use support::{base_config, require_root, Daemon, NetPair};

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Pseudo-random bytes (the LCG the reference vectors were computed from).
fn lcg(n: usize) -> Vec<u8> {
    let mut s = 1u64;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 33) as u8
        })
        .collect()
}

/// A PE32 (x86 console exe): DOS header, PE header, one `.text` section of
/// `code` at 0x200.
fn pe32(code: &[u8]) -> Vec<u8> {
    let raw = code.len().div_ceil(0x200) * 0x200;
    let mut f = vec![0u8; 0x200 + raw];
    let put = |f: &mut Vec<u8>, at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
    put(&mut f, 0, b"MZ");
    put(&mut f, 0x3c, &0x80u32.to_le_bytes());
    put(&mut f, 0x80, b"PE\0\0");
    let c = 0x84;
    put(&mut f, c, &0x14cu16.to_le_bytes());
    put(&mut f, c + 2, &1u16.to_le_bytes());
    put(&mut f, c + 16, &224u16.to_le_bytes());
    put(&mut f, c + 18, &0x0102u16.to_le_bytes());
    let o = c + 20;
    put(&mut f, o, &0x10bu16.to_le_bytes());
    put(&mut f, o + 60, &0x200u32.to_le_bytes());
    put(&mut f, o + 68, &3u16.to_le_bytes());
    put(&mut f, o + 92, &16u32.to_le_bytes());
    let s = o + 224;
    put(&mut f, s, b".text");
    put(&mut f, s + 16, &(raw as u32).to_le_bytes());
    put(&mut f, s + 20, &0x200u32.to_le_bytes());
    put(&mut f, 0x200, code);
    f
}

fn config(extra: &str) -> String {
    format!(
        "{}[limits]\nread_timeout = \"500ms\"\n\n{extra}",
        base_config(Path::new("@DATA@"), "4445, 4446", "")
    )
}

/// The analysed real attack on `port`, waited for.
fn analysed(d: &Daemon, port: u16) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(30), || {
        found = d.events().into_iter().find(|e| {
            e["destination"]["port"] == port
                && e["honeytrap"]["virtual"] != true
                && e["honeytrap"]["analysis"]["done"] == true
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no analysed event on {port}:\n{}", d.log()))
}

fn findings(e: &Value, analyzer: &str, kind: &str) -> Vec<Value> {
    e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == analyzer && f["kind"] == kind)
        .cloned()
        .collect()
}

/// A world-readable directory (the daemon may drop privileges before a reload).
fn readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn pe_after_a_prefix_is_found_extracted_and_stored() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("clsexe");
    let mut d = Daemon::start(&net, &config(""));
    let pe = pe32(&lcg(700));
    let mut data = b"POST /cgi-bin/x HTTP/1.0\r\n\r\n".to_vec();
    data.resize(100, 0x90);
    data.extend_from_slice(&pe);
    data.extend_from_slice(b"\r\nexit\r\n");
    nc_once(&net, &net.hp_v4, 4445, &data);
    let e = analysed(&d, 4445);

    let on_payload: Vec<_> = findings(&e, "exe", "executable")
        .into_iter()
        .filter(|f| f["source"]["kind"] == "payload")
        .collect();
    assert_eq!(on_payload.len(), 1, "{e:#}");
    let f = &on_payload[0];
    assert_eq!(f["offset"], 100);
    assert_eq!(f["length"], pe.len());
    assert_eq!(f["meta"]["format"], "pe");
    assert_eq!(f["meta"]["arch"], "x86");
    assert_eq!(f["meta"]["type"], "exe");
    assert_eq!(f["meta"]["bits"], 32);
    assert_eq!(f["meta"]["subsystem"], "windows_cui");

    let dl: Vec<_> = e["honeytrap"]["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["analyzer"] == "exe")
        .cloned()
        .collect();
    assert_eq!(dl.len(), 1, "{e:#}");
    let dl = &dl[0];
    let sha = sha256(&pe);
    assert_eq!(dl["url"], "extracted:payload@100");
    assert_eq!(dl["port"], 0);
    assert_eq!(dl["host"], "");
    assert_eq!(dl["size"], pe.len());
    assert_eq!(dl["hashes"]["sha256"], sha.as_str());
    assert_eq!(dl["source"]["kind"], "payload");
    let stored = dl["stored"].as_str().expect("stored");
    assert_eq!(stored, format!("downloads/{}/{sha}", &sha[..2]));
    assert_eq!(std::fs::read(d.data().join(stored)).unwrap(), pe);
    // The extracted file went through analyze again: the PE at its offset 0.
    let again: Vec<_> = findings(&e, "exe", "executable")
        .into_iter()
        .filter(|f| f["source"]["sha256"] == sha.as_str())
        .collect();
    assert_eq!(again.len(), 1, "{e:#}");
    assert_eq!(again[0]["offset"], 0);
    assert!(d.stop().success());
}

const RAND_SSDEEP: &str =
    "192:u86vK/Gl4keF4wIIfeBCjxMh/ubP6/0dzXh8vGqFktPjICRfzrCXQNs0UmclQ:u7vKOE6sjxmCzvqaLICoX0s0PwQ";
const RAND_TLSH: &str = "T18D22AE7BEC07BC7E90AB7AD1513C00D47FCB9FA4AF3951289A84E4D34EF1851E89A064";
/// ssdeep of the same bytes with five of them changed (similarity 93).
const RAND2_SSDEEP: &str =
    "192:986vK/Gl4keFZwIIfeBCjxMh/ubu6/0dzXh8vGqFktOjICRfzrCXrNs0UmclQ:97vKOEPsjxmCuvqagICoXhs0PwQ";

#[test]
fn fuzzy_hashes_and_signatures() {
    if !require_root() {
        return;
    }
    let data = lcg(10240);
    let dir = readable_dir();
    let sigs = dir.path().join("sigs.tsv");
    std::fs::write(
        &sigs,
        format!(
            "# name\talgorithm\tvalue\nsample-exact\tsha256\t{}\nsample-family\tssdeep\t{RAND2_SSDEEP}\nunrelated\tsha256\t{}\n",
            sha256(&data),
            sha256(b"something else")
        ),
    )
    .unwrap();
    let net = NetPair::new("clsfuz");
    let extra = format!("[analyzer.fuzzy]\nsignatures = \"{}\"\n", sigs.display());
    let mut d = Daemon::start(&net, &config(&extra));
    nc_once(&net, &net.hp_v4, 4446, &data);
    let e = analysed(&d, 4446);
    assert_eq!(e["honeytrap"]["payload"]["length"], data.len(), "{e:#}");
    let h = findings(&e, "fuzzy", "fuzzy_hash");
    assert_eq!(h.len(), 1, "{e:#}");
    assert_eq!(h[0]["meta"]["ssdeep"], RAND_SSDEEP);
    assert_eq!(h[0]["meta"]["tlsh"], RAND_TLSH);
    assert_eq!(h[0]["source"]["kind"], "payload");
    let mut s: Vec<(String, String, u64)> = findings(&e, "fuzzy", "signature")
        .iter()
        .map(|f| {
            (
                f["meta"]["name"].as_str().unwrap().to_string(),
                f["meta"]["algorithm"].as_str().unwrap().to_string(),
                f["meta"]["score"].as_u64().unwrap(),
            )
        })
        .collect();
    s.sort();
    assert_eq!(
        s,
        vec![
            ("sample-exact".into(), "sha256".into(), 100),
            ("sample-family".into(), "ssdeep".into(), 93)
        ],
        "{e:#}"
    );

    // The list is read again on SIGHUP: a renamed signature matches the next attack.
    std::fs::write(&sigs, format!("renamed\tssdeep\t{RAND2_SSDEEP}\n")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        d.wait_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    nc_once(&net, &net.hp_v4, 4445, &data);
    let e = analysed(&d, 4445);
    let names: Vec<_> = findings(&e, "fuzzy", "signature")
        .iter()
        .map(|f| f["meta"]["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("renamed")], "{e:#}");
    assert!(d.stop().success());
}

#[test]
fn a_broken_signature_file_stops_the_start() {
    if !require_root() {
        return;
    }
    let dir = readable_dir();
    let sigs = dir.path().join("bad.tsv");
    std::fs::write(&sigs, "# ok so far\nx\tcrc32\tabcd\n").unwrap();
    let net = NetPair::new("clsbad");
    let extra = format!("[analyzer.fuzzy]\nsignatures = \"{}\"\n", sigs.display());
    let mut d = Daemon::spawn(&net, &config(&extra));
    let st = d.wait_exit(Duration::from_secs(15));
    assert!(!st.success());
    let log = d.log();
    assert!(
        log.contains(&format!("{}:2: unknown algorithm `crc32`", sigs.display())),
        "{log}"
    );
}
