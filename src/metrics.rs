//! Prometheus metrics: `GET /metrics` on `[metrics] listen`, in the OpenMetrics text
//! format that Prometheus scrapes (encoded by the `prometheus-client` crate).
//!
//! Nothing is counted here: every value is read from [`Stats`] (and the port table)
//! at scrape time, so the capture path pays nothing for metrics. The HTTP server is
//! deliberately tiny and bounded, as it may face an untrusted network: one request
//! per connection, a request head of at most [`MAX_REQUEST`] bytes read within
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed at once), and only `GET`/`HEAD /metrics` answered.

use crate::config::Invalid;
use crate::stats::{Histogram, Labeled, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Longest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8192;
/// Time a client has to send its request head, and then to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address and port of the HTTP endpoint.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
        }
    }
}

/// Checks `[metrics]`.
pub fn validate(c: &MetricsConfig) -> Result<(), Invalid> {
    if c.enabled && c.listen.port() == 0 {
        return Err(Invalid::new("metrics.listen", "needs a port"));
    }
    Ok(())
}

/// Open dynamic servers right now: (pinned, unpinned).
pub type OpenListeners = Arc<dyn Fn() -> (usize, usize) + Send + Sync>;

/// The metrics endpoint, bound (before the privilege drop) but not yet serving.
pub struct Endpoint {
    listener: std::net::TcpListener,
}

impl Endpoint {
    /// Bind `[metrics] listen` when metrics are enabled.
    pub fn bind(c: &MetricsConfig) -> anyhow::Result<Option<Endpoint>> {
        if !c.enabled {
            return Ok(None);
        }
        let listener = std::net::TcpListener::bind(c.listen)
            .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", c.listen))?;
        listener.set_nonblocking(true)?;
        Ok(Some(Endpoint { listener }))
    }

    /// Serve `/metrics` from `stats` (inside the runtime) until the runtime ends.
    pub fn start(self, stats: Arc<Stats>, open: OpenListeners) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(registry(stats, open));
        tracing::info!(%addr, "metrics: serving /metrics");
        tokio::spawn(serve(listener, registry));
        Ok(())
    }
}

/// The registry with the one collector that reads everything at scrape time.
pub fn registry(stats: Arc<Stats>, open: OpenListeners) -> Registry {
    let mut r = Registry::with_prefix("honeytrap");
    r.register_collector(Box::new(StatsCollector { stats, open }));
    r
}

/// The scrape body.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap the connection is dropped (closed) at once.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(2 * REQUEST_TIMEOUT, answer(stream, &registry)).await;
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (`head`: only the headers).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Read one request head and answer it; the connection is closed after.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // too slow: closed without an answer
    };
    let (status, body) = match request {
        Request::Metrics { .. } => ("200 OK", render(registry)),
        Request::NotFound => ("404 Not Found", "only /metrics here\n".into()),
        Request::MethodNotAllowed => ("405 Method Not Allowed", "GET only\n".into()),
        Request::BadRequest => ("400 Bad Request", "bad request\n".into()),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "request too large\n".into(),
        ),
    };
    let content_type = match request {
        Request::Metrics { .. } => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if request != (Request::Metrics { head: true }) {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Read until the blank line that ends the head, at most [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&buf) {
            return Ok(parse_head(&buf[..end]));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Request::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Request::BadRequest);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The end of the head (`\r\n\r\n`, or a bare `\n\n`), when it is within the limit.
fn find_end(buf: &[u8]) -> Option<usize> {
    let within = &buf[..buf.len().min(MAX_REQUEST)];
    let crlf = memchr::memmem::find(within, b"\r\n\r\n");
    let lf = memchr::memmem::find(within, b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// Parse a request head: the request line decides; headers are only checked to be
/// text.
pub fn parse_head(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::BadRequest;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Request::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics { head: false },
        ("HEAD", "/metrics") => Request::Metrics { head: true },
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    }
}

/// Reads [`Stats`] and the port table at every scrape.
struct StatsCollector {
    stats: Arc<Stats>,
    open: OpenListeners,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

/// One metric family of plain values: (label values, value).
type Rows = Vec<(Vec<(&'static str, String)>, u64)>;

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let v = |a: &AtomicU64| a.load(Relaxed);
        let one = |n: u64| -> Rows { vec![(vec![], n)] };
        let c = MetricType::Counter;
        let g = MetricType::Gauge;

        family(&mut e, "connections", "Connections accepted and first datagrams of UDP sessions, by the monitor they are attributed to.", c, labeled(&s.connections_by_monitor, &["monitor"]))?;
        family(
            &mut e,
            "attempts",
            "Connection attempts a monitor (sniff, nfqueue) handed to the port table, by monitor.",
            c,
            labeled(&s.triggers, &["monitor"]),
        )?;
        family(
            &mut e,
            "sniff_filtered",
            "Attempts the sniff monitor saw but its filter expression (monitor.sniff.filter) excluded.",
            c,
            one(v(&s.sniff_filtered)),
        )?;
        family(
            &mut e,
            "sessions",
            "Sessions ended, by the mode of their port and protocol.",
            c,
            labeled(&s.sessions, &["mode", "protocol"]),
        )?;
        family(
            &mut e,
            "attacks",
            "Attacks handed to the outputs (decoded copies not included).",
            c,
            one(v(&s.attacks)),
        )?;
        family(
            &mut e,
            "bytes",
            "Bytes received from (in) and sent to (out) attackers.",
            c,
            vec![
                (vec![("direction", "in".into())], v(&s.bytes_in)),
                (vec![("direction", "out".into())], v(&s.bytes_out)),
            ],
        )?;
        let (pinned, dynamic) = (self.open)();
        family(&mut e, "listeners_open", "Servers (ports) listening now: pinned by the listen monitor, or dynamic (started by a monitor's trigger).", g, vec![
            (vec![("kind", "pinned".into())], pinned as u64),
            (vec![("kind", "dynamic".into())], dynamic as u64),
        ])?;
        family(
            &mut e,
            "listeners_started",
            "Dynamic servers started.",
            c,
            one(v(&s.listeners_started)),
        )?;
        family(
            &mut e,
            "listeners_closed",
            "Dynamic servers closed, by reason.",
            c,
            vec![
                (vec![("reason", "idle".into())], v(&s.listeners_idle_closed)),
                (vec![("reason", "evicted".into())], v(&s.listeners_evicted)),
            ],
        )?;
        family(
            &mut e,
            "bind_failures",
            "Ports that could not be bound.",
            c,
            one(v(&s.bind_failures)),
        )?;
        let limits = [
            ("max_sessions", &s.limit_max_sessions),
            ("max_sessions_per_source", &s.limit_per_source),
            ("source_rate", &s.limit_source_rate),
            ("max_listeners", &s.limit_max_listeners),
            ("read_limit", &s.limit_read),
            ("max_buffered", &s.limit_buffered),
            ("session_timeout", &s.limit_session_timeout),
            ("relay_source_rate", &s.limit_relay_rate),
            ("max_relays", &s.limit_max_relays),
        ];
        family(
            &mut e,
            "limits_triggered",
            "Limits that triggered, by limit (the option's name).",
            c,
            limits
                .iter()
                .map(|(n, a)| (vec![("limit", n.to_string())], v(a)))
                .collect(),
        )?;
        family(
            &mut e,
            "udp_datagrams_dropped",
            "UDP datagrams dropped: a session's queue was full.",
            c,
            one(v(&s.udp_datagrams_dropped)),
        )?;
        family(
            &mut e,
            "udp_replies_suppressed",
            "UDP replies withheld: more than the bytes received.",
            c,
            one(v(&s.udp_replies_suppressed)),
        )?;
        family(
            &mut e,
            "relays",
            "Mirror and proxy relays established.",
            c,
            one(v(&s.relays)),
        )?;
        family(
            &mut e,
            "relay_fallbacks",
            "Mirror and proxy sessions served in normal mode instead.",
            c,
            one(v(&s.relay_fallbacks)),
        )?;
        family(
            &mut e,
            "mirror_forbidden",
            "Mirroring to a forbidden address refused.",
            c,
            one(v(&s.mirror_forbidden)),
        )?;
        family(
            &mut e,
            "analyzer_runs",
            "Analyzer runs, by analyzer.",
            c,
            labeled(&s.analyzer_runs_by, &["analyzer"]),
        )?;
        family(
            &mut e,
            "analyzer_failures",
            "Analyzer runs that failed (error or panic), by analyzer.",
            c,
            labeled(&s.analyzer_failures_by, &["analyzer"]),
        )?;
        family(
            &mut e,
            "findings",
            "Findings, by analyzer.",
            c,
            labeled(&s.findings_by, &["analyzer"]),
        )?;
        family(
            &mut e,
            "analyzer_timeouts",
            "Analyzer runs past analysis.analyzer_budget.",
            c,
            one(v(&s.analyzer_timeouts)),
        )?;
        family(
            &mut e,
            "analysis_skipped",
            "Attacks passed on without analysis (queue full, shutting down).",
            c,
            one(v(&s.analysis_skipped)),
        )?;
        family(
            &mut e,
            "analysis_waits",
            "Attacks whose analysis waited while the host's CPUs were saturated (analysis.busy_pause).",
            c,
            one(v(&s.analysis_waits)),
        )?;
        family(
            &mut e,
            "virtual_attacks",
            "Decoded copies made by decoders.",
            c,
            one(v(&s.virtual_attacks)),
        )?;
        family(
            &mut e,
            "downloads",
            "Downloads tried.",
            c,
            one(v(&s.downloads)),
        )?;
        family(
            &mut e,
            "output_queue_depth",
            "Attacks waiting in each output's queue.",
            g,
            labeled(&s.output_queue, &["output"]),
        )?;
        family(
            &mut e,
            "records_dropped",
            "Attacks not queued for an output (queue full).",
            c,
            one(v(&s.records_dropped)),
        )?;
        family(
            &mut e,
            "output_errors",
            "Output write failures.",
            c,
            one(v(&s.output_errors)),
        )?;
        family(
            &mut e,
            "transcripts_removed",
            "Transcript files removed to stay within the quota.",
            c,
            one(v(&s.quota_removed)),
        )?;
        family(
            &mut e,
            "spool_bytes",
            "Undelivered bytes in the spools of network outputs.",
            g,
            one(v(&s.spool_bytes)),
        )?;
        family(
            &mut e,
            "spool_dropped",
            "Events dropped because a spool was full.",
            c,
            one(v(&s.spool_dropped)),
        )?;
        family(
            &mut e,
            "spool_torn",
            "Damaged or torn spool records skipped.",
            c,
            one(v(&s.spool_torn)),
        )?;
        family(
            &mut e,
            "delivered",
            "Events delivered from the spools to their network outputs.",
            c,
            one(v(&s.spool_delivered)),
        )?;
        family(
            &mut e,
            "delivery_failures",
            "Failed deliveries of a spool batch (retried with backoff).",
            c,
            one(v(&s.spool_delivery_failures)),
        )?;
        family(
            &mut e,
            "deliveries_deferred",
            "Spool batches held back while the host's CPUs were saturated (output.spool.busy_defer).",
            c,
            one(v(&s.spool_deferred)),
        )?;
        histograms(
            &mut e,
            "delivery_latency_seconds",
            "Time to deliver one spool batch, by output.",
            &s.delivery_latency,
        )?;
        Ok(())
    }
}

/// The rows of a [`Labeled`] counter with `keys` as label names.
fn labeled(l: &Labeled, keys: &[&'static str]) -> Rows {
    l.entries()
        .into_iter()
        .map(|(values, n)| {
            let labels = keys.iter().copied().zip(values).collect();
            (labels, n.load(Relaxed))
        })
        .collect()
}

/// One metric family: its descriptor and a sample per row.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Rows,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    let value = |s: MetricEncoder, n: u64| match kind {
        MetricType::Gauge => ConstGauge::new(n as i64).encode(s),
        _ => ConstCounter::new(n).encode(s),
    };
    match rows.as_slice() {
        // A single value without labels: `name 0`, not `name{} 0`.
        [(labels, n)] if labels.is_empty() => value(m, *n),
        _ => rows
            .iter()
            .try_for_each(|(labels, n)| value(m.encode_family(labels)?, *n)),
    }
}

/// A histogram family, one per output.
fn histograms(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    l: &Labeled<Histogram>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (values, h) in l.entries() {
        let labels: Vec<(&str, String)> = values.into_iter().map(|v| ("output", v)).collect();
        let (buckets, sum, count) = h.read();
        m.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(stats: Arc<Stats>) -> String {
        render(&registry(stats, Arc::new(|| (2, 3))))
    }

    #[test]
    fn counters_appear_with_their_labels() {
        let stats = Arc::new(Stats::default());
        stats.connections_by_monitor.inc(&["listen"]);
        stats.connections_by_monitor.inc(&["listen"]);
        stats.session_ended("normal", "tcp", 10, 20);
        Stats::inc(&stats.limit_per_source);
        stats.output_queue.add(&["jsonl"], 4);
        stats.delivered("hpfeeds", Duration::from_millis(3));
        let text = scrape(stats);
        for line in [
            "honeytrap_connections_total{monitor=\"listen\"} 2",
            "honeytrap_sessions_total{mode=\"normal\",protocol=\"tcp\"} 1",
            "honeytrap_bytes_total{direction=\"in\"} 10",
            "honeytrap_bytes_total{direction=\"out\"} 20",
            "honeytrap_limits_triggered_total{limit=\"max_sessions_per_source\"} 1",
            "honeytrap_limits_triggered_total{limit=\"read_limit\"} 0",
            "honeytrap_listeners_open{kind=\"dynamic\"} 3",
            "honeytrap_output_queue_depth{output=\"jsonl\"} 4",
            "honeytrap_spool_bytes 0",
            "honeytrap_delivery_latency_seconds_bucket{le=\"0.0025\",output=\"hpfeeds\"} 0",
            "honeytrap_delivery_latency_seconds_bucket{le=\"0.005\",output=\"hpfeeds\"} 1",
            "honeytrap_delivery_latency_seconds_count{output=\"hpfeeds\"} 1",
            "# TYPE honeytrap_analyzer_runs counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn request_heads() {
        let p = |s: &str| parse_head(s.as_bytes());
        assert_eq!(
            p("GET /metrics HTTP/1.1\r\nHost: x"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            p("GET /metrics?x=1 HTTP/1.0"),
            Request::Metrics { head: false }
        );
        assert_eq!(p("HEAD /metrics HTTP/1.1"), Request::Metrics { head: true });
        assert_eq!(p("POST /metrics HTTP/1.1"), Request::MethodNotAllowed);
        assert_eq!(p("GET / HTTP/1.1"), Request::NotFound);
        assert_eq!(p("GET /metrics"), Request::BadRequest);
        assert_eq!(p("GET /metrics HTTP/2.0"), Request::BadRequest);
        assert_eq!(p("get /metrics HTTP/1.1"), Request::BadRequest);
        assert_eq!(p("GET  /metrics HTTP/1.1"), Request::BadRequest);
        assert_eq!(p("GET metrics HTTP/1.1"), Request::BadRequest);
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nX: \xff"),
            Request::BadRequest
        );
        assert_eq!(p(""), Request::BadRequest);
    }

    #[test]
    fn head_end_is_found_within_the_limit_only() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\n"), Some(14));
        let mut big = vec![b'a'; MAX_REQUEST];
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(find_end(&big), None);
    }

    #[tokio::test]
    async fn the_server_answers_and_refuses() {
        let ep = Endpoint::bind(&MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
        })
        .unwrap()
        .unwrap();
        let addr = ep.listener.local_addr().unwrap();
        ep.start(Arc::new(Stats::default()), Arc::new(|| (0, 0)))
            .unwrap();
        let ask = |req: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&req).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("honeytrap_attacks_total 0"), "{ok}");
        let big =
            ask([b"GET /metrics HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 20_000]].concat()).await;
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
        let bad = ask(b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n".to_vec()).await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    }
}
