//! End-to-end: mirror and proxy mode work with every monitor, not only `listen`
//! (which `e2e_relay` uses). Under `nfqueue` and `tproxy` the attacker's first try
//! is relayed; under `sniff` the retry is. Honeytrap's own second connections must
//! not be caught by the monitor's firewall rules: the replies of a proxy target
//! (TCP and UDP) have to reach honeytrap's sockets, not the catch-all.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::clients::{host_port, socat_service, udp_once};
use support::daemon::wait_until;
use support::firewall::{nfqueue_rules, require_iptables, tproxy_rules};
use support::netns::NetTriple;
use support::{base_config, require_root, Daemon, NetPair};

/// The port the tproxy monitor listens on in these tests (its default).
const TPROXY_PORT: u16 = 65499;

/// A server script in `dir` that prints `banner`, then echoes its input.
fn banner_script(dir: &Path, name: &str, banner: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("printf '{banner}\\n'\ncat\n")).unwrap();
    p
}

/// A UDP server script that answers each datagram with `reply` and the datagram.
fn udp_script(dir: &Path, name: &str, reply: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("printf '{reply} '\nhead -c 512\n")).unwrap();
    p
}

/// Config for `kind`: TCP 7401 proxied to the target's 9401, UDP 7402 to its 9402,
/// TCP 7403 mirrored.
fn config(kind: &str, net: &NetTriple) -> String {
    let base = base_config(Path::new("@DATA@"), "", "");
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[relay]\nconnect_timeout = \"1s\"\nidle_timeout = \"2s\"\nmirror_private = true\n\n\
         [proxy.tcpmap]\nprotocol = \"tcp\"\nports = [7401]\ntarget_host = \"{tg}\"\ntarget_port = 9401\n\n\
         [proxy.udpmap]\nprotocol = \"udp\"\nports = [7402]\ntarget_host = \"{tg}\"\ntarget_port = 9402\n\n\
         [[ports.rule]]\nprotocol = \"tcp\"\nports = [7403]\nmode = \"mirror\"\n",
        base.replace("kind = \"listen\"", &format!("kind = \"{kind}\"")),
        tg = net.tg_v4,
    )
}

/// The event on `port` whose payload contains `word`.
fn event(d: &Daemon, port: u16, word: &str) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(12), || {
        found = d.events().into_iter().find(|e| {
            e["destination"]["port"] == port
                && support::clients::payload(e)
                    .windows(word.len())
                    .any(|w| w == word.as_bytes())
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no event on {port} with {word:?}:\n{}", d.log()))
}

/// One TCP exchange with a client that never retries a refused connection (socat
/// makes one attempt): sends `data`, returns what came back.
fn tcp_once(net: &NetPair, host: &str, port: u16, data: &[u8]) -> Vec<u8> {
    net.attack(
        "socat",
        &[
            "-t",
            "1",
            "-",
            &format!("TCP:{},retry=0", host_port(host, port)),
        ],
        data,
        8,
    )
    .stdout
}

/// The servers: the proxy targets in the target namespace, the attacker's own
/// service for the mirror.
struct Servers {
    _dir: tempfile::TempDir,
    _bg: Vec<support::netns::Background>,
}

fn servers(net: &NetTriple) -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let tcp = banner_script(dir.path(), "tcp.sh", "TARGET-TCP");
    let udp = udp_script(dir.path(), "udp.sh", "TARGET-UDP");
    let own = banner_script(dir.path(), "own.sh", "ATTACKERS-OWN");
    let bg = vec![
        socat_service(&net.target, "tcp", 9401, &tcp),
        socat_service(&net.target, "udp", 9402, &udp),
        socat_service(&net.attacker, "tcp", 7403, &own),
    ];
    Servers { _dir: dir, _bg: bg }
}

/// Every relay, each on the attacker's first try; events attributed to `monitor`.
fn relays_on_first_try(d: &Daemon, net: &NetTriple, monitor: &str) {
    let got = tcp_once(net, &net.hp_v4, 7401, b"proxy-tcp-hello\n");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("TARGET-TCP"),
        "proxied TCP: {text:?}\n{}",
        d.log()
    );
    assert!(
        text.contains("proxy-tcp-hello"),
        "echo through the relay: {text:?}"
    );
    let e = event(d, 7401, "proxy-tcp-hello");
    assert_eq!(e["honeytrap"]["monitor"], monitor);
    assert_eq!(e["honeytrap"]["relay"]["connected"], true, "{e:#}");

    let got = udp_once(
        net,
        &net.hp_v4,
        7402,
        41402,
        b"proxy-udp-hello-padding-padding",
    );
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(
        text.contains("TARGET-UDP"),
        "the UDP target's reply must come back through honeytrap: {text:?}\n{}",
        d.log()
    );
    let e = event(d, 7402, "proxy-udp-hello");
    assert_eq!(e["honeytrap"]["monitor"], monitor);
    assert_eq!(e["honeytrap"]["relay"]["connected"], true, "{e:#}");
    assert!(
        e["honeytrap"]["relay"]["bytes_received"].as_u64().unwrap() > 0,
        "{e:#}"
    );

    let got = tcp_once(net, &net.hp_v4, 7403, b"mirror-hello\n");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("ATTACKERS-OWN"),
        "mirrored: {text:?}\n{}",
        d.log()
    );
    let e = event(d, 7403, "mirror-hello");
    assert_eq!(e["honeytrap"]["monitor"], monitor);
    assert_eq!(e["honeytrap"]["relay"]["kind"], "mirror");
    assert_eq!(e["honeytrap"]["relay"]["connected"], true, "{e:#}");
}

#[test]
fn relays_under_nfqueue_on_the_first_try() {
    if !require_root() {
        return;
    }
    require_iptables();
    let net = NetPair::with_target("relaynfq");
    nfqueue_rules(&net, 0);
    let _s = servers(&net);
    let mut d = Daemon::start(&net, &config("nfqueue", &net));
    relays_on_first_try(&d, &net, "nfqueue");
    assert!(d.stop().success());
}

#[test]
fn relays_under_tproxy_on_the_first_try() {
    if !require_root() {
        return;
    }
    require_iptables();
    let net = NetPair::with_target("relaytp");
    tproxy_rules(&net, TPROXY_PORT);
    let _s = servers(&net);
    let mut d = Daemon::start(&net, &config("tproxy", &net));
    relays_on_first_try(&d, &net, "tproxy");
    assert!(d.stop().success());
}

#[test]
fn relays_under_sniff_on_the_retry() {
    if !require_root() {
        return;
    }
    let net = NetPair::with_target("relaysn");
    let _s = servers(&net);
    let mut d = Daemon::start(&net, &config("sniff", &net));
    // The first try is refused by the kernel; the sniffer sees the RST and starts
    // the server, so the retry is relayed.
    let first = tcp_once(&net, &net.hp_v4, 7401, b"first\n");
    assert!(
        !String::from_utf8_lossy(&first).contains("TARGET-TCP"),
        "the sniffer catches the retry, not the first try"
    );
    let mut text = String::new();
    wait_until(Duration::from_secs(5), || {
        text = String::from_utf8_lossy(&tcp_once(&net, &net.hp_v4, 7401, b"retry-hello\n"))
            .into_owned();
        text.contains("TARGET-TCP")
    });
    assert!(
        text.contains("TARGET-TCP"),
        "retry proxied: {text:?}\n{}",
        d.log()
    );
    let e = event(&d, 7401, "retry-hello");
    assert_eq!(e["honeytrap"]["monitor"], "sniff");
    assert_eq!(e["honeytrap"]["relay"]["connected"], true, "{e:#}");
    assert!(d.stop().success());
}
