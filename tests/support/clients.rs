//! Small client-side helpers shared by the end-to-end tests.

use super::daemon::{run, wait_until, Daemon};
use super::netns::{Background, NetPair};
use base64::Engine as _;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

pub fn payload(e: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(e["honeytrap"]["payload"]["data"].as_str().unwrap_or(""))
        .expect("base64")
}

/// One TCP connection attempt (nc makes exactly one): sends `data`, shuts down its
/// sending side, and reads until the server closes.
pub fn nc_once(net: &NetPair, host: &str, port: u16, data: &[u8]) -> Output {
    net.attack(
        "nc",
        &["-v", "-N", "-w", "3", host, &port.to_string()],
        data,
        8,
    )
}

/// The event of `port` whose payload is `data`, waited for.
pub fn event_with(d: &Daemon, port: u16, data: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["destination"]["port"] == port && payload(e) == data);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no event for {port} with {data:?}:\n{}", d.log()))
}

/// A real service in the honeypot namespace that answers `real service`.
pub fn real_service(net: &NetPair, port: u16) -> Background {
    let bg = net.background_honeypot(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            "SYSTEM:echo real service",
        ],
    );
    let ready = wait_until(Duration::from_secs(5), || {
        let out = run(
            {
                let mut c = net.in_honeypot("ss");
                c.args(["-ltnH", &format!("sport = :{port}")]);
                c
            },
            Duration::from_secs(3),
        );
        !out.stdout.is_empty()
    });
    assert!(ready, "socat did not start listening on {port}");
    bg
}

/// `host:port` as socat and curl want it: an IPv6 address in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Start a background shell command in namespace `ns`, killed (with its process
/// group) on drop.
pub fn background_in(ns: &str, shell: &str) -> Background {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", shell])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn");
    Background(child)
}

/// Wait until at least `sockets` sockets of `proto` ("tcp": listening, "udp": bound)
/// exist on `port` in namespace `ns`.
pub fn wait_listening(ns: &str, proto: &str, port: u16, sockets: usize) {
    let flags = if proto == "udp" { "-lunH" } else { "-ltnH" };
    let ready = wait_until(Duration::from_secs(5), || {
        let mut c = std::process::Command::new("ip");
        c.args([
            "netns",
            "exec",
            ns,
            "ss",
            flags,
            &format!("sport = :{port}"),
        ]);
        let out = run(c, Duration::from_secs(3));
        String::from_utf8_lossy(&out.stdout).lines().count() >= sockets
    });
    assert!(ready, "nothing listens on {proto} {port} in {ns}");
}

/// A socat server on `proto` `port` in namespace `ns`, on IPv4 and IPv6 (two
/// sockets), that runs `sh script` for each connection (TCP) or datagram (UDP, one
/// reply datagram) with the peer on stdin/stdout and `SOCAT_PEERADDR` set. Waits
/// until both sockets are up.
pub fn socat_service(ns: &str, proto: &str, port: u16, script: &std::path::Path) -> Background {
    let (v4, v6) = if proto == "udp" {
        ("UDP4-RECVFROM", "UDP6-RECVFROM")
    } else {
        ("TCP4-LISTEN", "TCP6-LISTEN")
    };
    let script = script.display();
    let bg = background_in(
        ns,
        &format!(
            "socat {v4}:{port},reuseaddr,fork SYSTEM:'sh {script}' & \
             socat {v6}:{port},ipv6only=1,reuseaddr,fork SYSTEM:'sh {script}' & wait"
        ),
    );
    wait_listening(ns, proto, port, 2);
    bg
}

/// One UDP exchange from `sourceport`: sends `data` as one datagram (socat) and
/// returns what came back within 4 s of the end of input (a relayed reply passes a
/// forked socat and a shell on the target: seconds on a loaded machine).
pub fn udp_once(net: &NetPair, host: &str, port: u16, sourceport: u16, data: &[u8]) -> Output {
    net.attack(
        "socat",
        &[
            "-t",
            "4",
            "-",
            &format!("UDP:{},sourceport={sourceport}", host_port(host, port)),
        ],
        data,
        8,
    )
}
