//! End-to-end: the Prometheus endpoint of the real binary. Attacks over TCP and UDP
//! (one of them cut at `limits.read_limit`) show up in `/metrics` as scraped by
//! curl; malformed, oversized and idle requests to the metrics port are refused
//! and leave the daemon capturing. With the sniff monitor, attempts and dynamic
//! listeners are counted per monitor.

mod support;

use std::process::Stdio;
use std::time::Duration;
use support::clients::{nc_once, udp_once};
use support::daemon::{run, wait_until};
use support::{base_config, require_root, Daemon, NetPair};

const METRICS: &str = "127.0.0.1:9464";

fn config() -> String {
    let mut c = base_config(std::path::Path::new("@DATA@"), "6100, 6101", "6102");
    c.push_str(&format!(
        "[limits]\nread_limit = \"64KiB\"\n\n[metrics]\nenabled = true\nlisten = \"{METRICS}\"\n"
    ));
    c
}

/// GET /metrics with curl inside the honeypot namespace.
fn scrape(net: &NetPair) -> String {
    let mut c = net.in_honeypot("curl");
    c.args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://{METRICS}/metrics"),
    ]);
    let out = run(c, Duration::from_secs(8));
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 exposition")
}

/// The value of the sample `name` (with its labels, as printed), or None.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("{name} not in the scrape:\n{text}"))
}

/// The sum of every sample of the family `prefix` (any labels).
fn sum_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{prefix}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Send raw bytes to the metrics port from inside the honeypot namespace; returns
/// what came back before the server closed (python3: exact bytes, no HTTP client
/// cleaning them up).
fn raw(net: &NetPair, data: &[u8], half_close: bool) -> String {
    let script = format!(
        "import socket,sys\n\
         s=socket.create_connection(('127.0.0.1',{port}),5)\n\
         s.settimeout(15)\n\
         try:\n  s.sendall(sys.stdin.buffer.read())\n\
         \x20 {close}\n\
         except OSError: pass\n\
         out=b''\n\
         try:\n  while True:\n    b=s.recv(65536)\n    if not b: break\n    out+=b\n\
         except OSError as e: out+=('<%s>' % e).encode()\n\
         sys.stdout.buffer.write(out)\n",
        port = METRICS.rsplit(':').next().unwrap(),
        close = if half_close {
            "s.shutdown(socket.SHUT_WR)"
        } else {
            "pass"
        },
    );
    let mut c = std::process::Command::new("timeout");
    c.args([
        "20",
        "ip",
        "netns",
        "exec",
        &net.honeypot,
        "python3",
        "-c",
        &script,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("python3");
    {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(data);
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn metrics_reflect_what_happened() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("metr");
    let mut d = Daemon::start(&net, &config());
    assert!(d.log().contains("metrics: serving /metrics"), "{}", d.log());

    let before = scrape(&net);
    assert_eq!(value(&before, "honeytrap_attacks_total"), 0.0);
    assert_eq!(
        value(&before, "honeytrap_listeners_open{kind=\"pinned\"}"),
        3.0
    );

    // Two small TCP attacks, one over read_limit (64 KiB), one UDP datagram.
    nc_once(&net, &net.hp_v4, 6100, b"GET / HTTP/1.0\r\n\r\n");
    nc_once(&net, &net.hp_v4, 6100, b"hello");
    let big = vec![b'A'; 100 * 1024];
    nc_once(&net, &net.hp_v4, 6101, &big);
    udp_once(&net, &net.hp_v4, 6102, 40001, b"udp-probe");
    d.wait_events(4, Duration::from_secs(15));

    // The counters are read at scrape time: the last session's bytes are counted
    // when its event is queued, so poll briefly.
    let mut text = String::new();
    let settled = wait_until(Duration::from_secs(10), || {
        text = scrape(&net);
        sample(&text, "honeytrap_attacks_total") == Some(4.0)
            && sample(&text, "honeytrap_output_queue_depth{output=\"jsonl\"}") == Some(0.0)
    });
    assert!(settled, "{text}");
    assert_eq!(
        value(&text, "honeytrap_connections_total{monitor=\"listen\"}"),
        4.0
    );
    assert_eq!(
        value(
            &text,
            "honeytrap_sessions_total{mode=\"normal\",protocol=\"tcp\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "honeytrap_sessions_total{mode=\"normal\",protocol=\"udp\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "honeytrap_limits_triggered_total{limit=\"read_limit\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "honeytrap_limits_triggered_total{limit=\"max_sessions\"}"
        ),
        0.0
    );
    // Received: 18 + 5 + 64 KiB (cut) + 9 bytes.
    assert_eq!(
        value(&text, "honeytrap_bytes_total{direction=\"in\"}"),
        (18 + 5 + 64 * 1024 + 9) as f64
    );
    assert!(value(&text, "honeytrap_bytes_total{direction=\"out\"}") > 0.0);
    assert_eq!(
        value(&text, "honeytrap_listeners_open{kind=\"pinned\"}"),
        3.0
    );
    assert!(
        sum_of(&text, "honeytrap_analyzer_runs_total") >= 4.0,
        "the default analyzers ran on every attack: {text}"
    );
    assert_eq!(value(&text, "honeytrap_records_dropped_total"), 0.0);
    assert_eq!(value(&text, "honeytrap_spool_bytes"), 0.0);
    assert!(text.contains("# TYPE honeytrap_delivery_latency_seconds histogram"));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(d.stop().success());
}

#[test]
fn bad_requests_to_the_metrics_port_are_refused_without_harm() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("metb");
    let mut d = Daemon::start(&net, &config());

    let oversized = [
        b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec(),
        vec![b'a'; 64 * 1024],
    ]
    .concat();
    let r = raw(&net, &oversized, false);
    assert!(r.starts_with("HTTP/1.1 431 "), "oversized head: {r:?}");

    let r = raw(
        &net,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        false,
    );
    assert!(r.starts_with("HTTP/1.1 400 "), "TLS hello: {r:?}");
    let r = raw(&net, b"GET /metrics\r\n\r\n", false);
    assert!(r.starts_with("HTTP/1.1 400 "), "HTTP/0.9 style: {r:?}");
    let r = raw(&net, b"GET /metr", true);
    assert!(r.starts_with("HTTP/1.1 400 "), "cut short: {r:?}");
    let r = raw(
        &net,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        false,
    );
    assert!(r.starts_with("HTTP/1.1 405 "), "{r:?}");
    let r = raw(&net, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", false);
    assert!(r.starts_with("HTTP/1.1 404 "), "{r:?}");
    assert!(!r.contains("root:"), "{r:?}");

    // A client that sends nothing is cut after the 5 s request timeout.
    let started = std::time::Instant::now();
    let r = raw(&net, b"", false);
    let took = started.elapsed();
    assert!(r.is_empty(), "no answer to silence: {r:?}");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(12)).contains(&took),
        "closed after the request timeout: {took:?}"
    );

    // More idle connections than the server takes at once: it stays bounded and
    // serves again once they are cut.
    let hold = net.background_honeypot(
        "python3",
        &[
            "-c",
            &format!(
                "import socket,time\nss=[socket.create_connection(('127.0.0.1',{}),5) for _ in range(40)]\ntime.sleep(8)",
                METRICS.rsplit(':').next().unwrap()
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut ok = false;
    wait_until(Duration::from_secs(15), || {
        let mut c = net.in_honeypot("curl");
        c.args([
            "-sS",
            "--max-time",
            "2",
            &format!("http://{METRICS}/metrics"),
        ]);
        ok = run(c, Duration::from_secs(4)).status.success();
        ok
    });
    drop(hold);
    assert!(ok, "scrapes work again after the idle connections are cut");

    // The daemon is unharmed: alive and capturing.
    nc_once(&net, &net.hp_v4, 6100, b"after");
    let events = d.wait_events(1, Duration::from_secs(10));
    assert_eq!(events.len(), 1);
    let text = scrape(&net);
    assert_eq!(value(&text, "honeytrap_attacks_total"), 1.0);
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn sniff_attempts_and_dynamic_listeners_are_counted_per_monitor() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("mets");
    let base = base_config(std::path::Path::new("@DATA@"), "", "");
    let config = format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[metrics]\nenabled = true\nlisten = \"{METRICS}\"\n",
        base.replace("kind = \"listen\"", "kind = \"sniff\"")
    );
    let mut d = Daemon::start(&net, &config);
    let probe = || {
        net.attack("nc", &["-z", "-w", "1", &net.hp_v4, "7300"], b"", 4)
            .status
            .success()
    };
    // Refused (the RST is the sniffer's trigger), then accepted by the new server.
    assert!(!probe(), "nothing listens on 7300 before the first attempt");
    let caught = wait_until(Duration::from_secs(5), probe);
    assert!(caught, "{}", d.log());
    d.wait_events(1, Duration::from_secs(10));
    let mut text = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        text = scrape(&net);
        sample(&text, "honeytrap_attacks_total") >= Some(1.0)
    });
    assert!(counted, "{text}");
    assert!(value(&text, "honeytrap_attempts_total{monitor=\"sniff\"}") >= 1.0);
    assert!(value(&text, "honeytrap_connections_total{monitor=\"sniff\"}") >= 1.0);
    // No filter expression: nothing excluded, and the family is exported.
    assert_eq!(value(&text, "honeytrap_sniff_filtered_total"), 0.0);
    assert_eq!(
        value(&text, "honeytrap_listeners_open{kind=\"dynamic\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "honeytrap_listeners_open{kind=\"pinned\"}"),
        0.0
    );
    assert!(value(&text, "honeytrap_listeners_started_total") >= 1.0);
    assert!(d.stop().success(), "{}", d.log());
}
