//! Counters for everything that is seen, limited or lost, and log lines that are
//! rate-limited so a flood cannot flood the log too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Process-wide counters. Every limit that triggers and every record that cannot be
/// written is counted here; a summary is logged periodically and at exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted / first datagrams of UDP sessions.
    pub connections: AtomicU64,
    /// Attacks handed to the outputs.
    pub attacks: AtomicU64,
    /// Dynamic servers started.
    pub listeners_started: AtomicU64,
    /// Dynamic servers closed for inactivity.
    pub listeners_idle_closed: AtomicU64,
    /// Dynamic servers closed to make room (LRU).
    pub listeners_evicted: AtomicU64,
    /// Ports that could not be bound (owned by another program).
    pub bind_failures: AtomicU64,
    /// Sessions refused: global cap.
    pub limit_max_sessions: AtomicU64,
    /// Sessions refused: per-source cap.
    pub limit_per_source: AtomicU64,
    /// Sessions refused: per-source rate.
    pub limit_source_rate: AtomicU64,
    /// Listeners refused: cap reached with nothing evictable.
    pub limit_max_listeners: AtomicU64,
    /// Sessions cut at `read_limit`.
    pub limit_read: AtomicU64,
    /// Sessions cut at `max_buffered`.
    pub limit_buffered: AtomicU64,
    /// Sessions cut at `session_timeout`.
    pub limit_session_timeout: AtomicU64,
    /// UDP datagrams dropped because a session's queue was full.
    pub udp_datagrams_dropped: AtomicU64,
    /// UDP replies withheld because they would exceed the bytes received.
    pub udp_replies_suppressed: AtomicU64,
    /// Mirror and proxy relays established.
    pub relays: AtomicU64,
    /// Mirror and proxy sessions served in normal mode instead (any reason).
    pub relay_fallbacks: AtomicU64,
    /// Of those: the per-source relay rate was exceeded.
    pub limit_relay_rate: AtomicU64,
    /// Of those: `relay.max_relays` relays were open.
    pub limit_max_relays: AtomicU64,
    /// Of those: mirroring to a forbidden address was refused.
    pub mirror_forbidden: AtomicU64,
    /// Attacks passed to the outputs without analysis (queue full, shutting down).
    pub analysis_skipped: AtomicU64,
    /// Attacks whose analysis waited for the CPU (`analysis.busy_pause`).
    pub analysis_waits: AtomicU64,
    /// Analyzer runs.
    pub analyzer_runs: AtomicU64,
    /// Analyzer runs that failed (error or panic).
    pub analyzer_failures: AtomicU64,
    /// Analyzer runs that took longer than `analysis.analyzer_budget`.
    pub analyzer_timeouts: AtomicU64,
    /// Analyzer runs skipped because `analysis.attack_budget` was used up.
    pub analyzer_skipped: AtomicU64,
    /// Findings made.
    pub findings: AtomicU64,
    /// Virtual attacks made by decoders.
    pub virtual_attacks: AtomicU64,
    /// Downloads tried.
    pub downloads: AtomicU64,
    /// Attacks not queued for the outputs (queue full).
    pub records_dropped: AtomicU64,
    /// Output write failures (per attack and output).
    pub output_errors: AtomicU64,
    /// Transcript files removed to stay within the quota.
    pub quota_removed: AtomicU64,
    /// Events dropped because a spool was full (`output.spool.max_bytes`).
    pub spool_dropped: AtomicU64,
    /// Damaged or torn spool records skipped (each ends the reading of its segment).
    pub spool_torn: AtomicU64,
    /// Events delivered from the spools to their network outputs.
    pub spool_delivered: AtomicU64,
    /// Failed delivery attempts (a batch; retried with backoff).
    pub spool_delivery_failures: AtomicU64,
    /// Batches held back while the host's CPUs were saturated
    /// (`output.spool.busy_defer`).
    pub spool_deferred: AtomicU64,
    /// A gauge, not a counter: undelivered bytes in all spools now.
    pub spool_bytes: AtomicU64,
    /// Sniffed RSTs / port unreachables the `monitor.sniff.filter` expression
    /// rejected (not acted on).
    pub sniff_filtered: AtomicU64,
    /// Bytes received from / sent to attackers, counted when a session ends.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Sessions by `[mode, protocol]`, counted when they end.
    pub sessions: Labeled,
    /// Connections and first datagrams by the `[monitor]` they are attributed to.
    pub connections_by_monitor: Labeled,
    /// Connection attempts a monitor handed to the port table, by `[monitor]`.
    pub triggers: Labeled,
    /// Analyzer runs, failures and findings by `[analyzer]`.
    pub analyzer_runs_by: Labeled,
    pub analyzer_failures_by: Labeled,
    pub findings_by: Labeled,
    /// Attacks waiting in each output's queue, by `[output]` (a gauge).
    pub output_queue: Labeled,
    /// Time to deliver one batch from a spool, by `[output]`.
    pub delivery_latency: Labeled<Histogram>,
}

/// Counters (or gauges) per set of label values, for example per monitor. The sets
/// come from the code (monitor, analyzer and output names), never from the network,
/// so there are few: a short list under a lock. A hot path keeps the [`Arc`] handle.
#[derive(Debug)]
pub struct Labeled<T = AtomicU64> {
    sets: Mutex<Vec<(Vec<String>, Arc<T>)>>,
}

impl<T> Default for Labeled<T> {
    fn default() -> Self {
        Labeled {
            sets: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Default> Labeled<T> {
    /// The value for `labels`, created at zero on first use.
    pub fn handle(&self, labels: &[&str]) -> Arc<T> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = sets.iter().find(|(k, _)| k.iter().eq(labels.iter())) {
            return Arc::clone(v);
        }
        let v = Arc::new(T::default());
        sets.push((
            labels.iter().map(|s| s.to_string()).collect(),
            Arc::clone(&v),
        ));
        v
    }

    /// Show `v` under `labels` as well (several outputs sharing one queue).
    pub fn alias(&self, labels: &[&str], v: &Arc<T>) {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if !sets.iter().any(|(k, _)| k.iter().eq(labels.iter())) {
            sets.push((
                labels.iter().map(|s| s.to_string()).collect(),
                Arc::clone(v),
            ));
        }
    }

    /// Every label set and its value, in the order they first appeared.
    pub fn entries(&self) -> Vec<(Vec<String>, Arc<T>)> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Labeled<AtomicU64> {
    /// Add one for `labels`.
    pub fn inc(&self, labels: &[&str]) {
        self.handle(labels).fetch_add(1, Relaxed);
    }

    /// Add `n` for `labels`.
    pub fn add(&self, labels: &[&str], n: u64) {
        self.handle(labels).fetch_add(n, Relaxed);
    }
}

/// Upper bounds (seconds) of the delivery latency buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A lock-free latency histogram over [`LATENCY_BUCKETS`] (plus +Inf).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// (upper bound, observations in that bucket) with +Inf last, the sum in
    /// seconds and the count.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (buckets, sum, count)
    }
}

impl Stats {
    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Name and value of every counter, in a stable order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = |n, a: &AtomicU64| (n, a.load(Relaxed));
        vec![
            c("connections", &self.connections),
            c("attacks", &self.attacks),
            c("listeners_started", &self.listeners_started),
            c("listeners_idle_closed", &self.listeners_idle_closed),
            c("listeners_evicted", &self.listeners_evicted),
            c("bind_failures", &self.bind_failures),
            c("limit_max_sessions", &self.limit_max_sessions),
            c("limit_per_source", &self.limit_per_source),
            c("limit_source_rate", &self.limit_source_rate),
            c("limit_max_listeners", &self.limit_max_listeners),
            c("limit_read", &self.limit_read),
            c("limit_buffered", &self.limit_buffered),
            c("limit_session_timeout", &self.limit_session_timeout),
            c("udp_datagrams_dropped", &self.udp_datagrams_dropped),
            c("udp_replies_suppressed", &self.udp_replies_suppressed),
            c("relays", &self.relays),
            c("relay_fallbacks", &self.relay_fallbacks),
            c("limit_relay_rate", &self.limit_relay_rate),
            c("limit_max_relays", &self.limit_max_relays),
            c("mirror_forbidden", &self.mirror_forbidden),
            c("analysis_skipped", &self.analysis_skipped),
            c("analysis_waits", &self.analysis_waits),
            c("analyzer_runs", &self.analyzer_runs),
            c("analyzer_failures", &self.analyzer_failures),
            c("analyzer_timeouts", &self.analyzer_timeouts),
            c("analyzer_skipped", &self.analyzer_skipped),
            c("findings", &self.findings),
            c("virtual_attacks", &self.virtual_attacks),
            c("downloads", &self.downloads),
            c("records_dropped", &self.records_dropped),
            c("output_errors", &self.output_errors),
            c("quota_removed", &self.quota_removed),
            c("spool_dropped", &self.spool_dropped),
            c("spool_torn", &self.spool_torn),
            c("spool_delivered", &self.spool_delivered),
            c("spool_delivery_failures", &self.spool_delivery_failures),
            c("spool_deferred", &self.spool_deferred),
            c("spool_bytes", &self.spool_bytes),
            c("sniff_filtered", &self.sniff_filtered),
            c("bytes_in", &self.bytes_in),
            c("bytes_out", &self.bytes_out),
        ]
    }

    /// A session ended: count it by mode and protocol, and its bytes.
    pub fn session_ended(&self, mode: &str, protocol: &str, bytes_in: u64, bytes_out: u64) {
        self.sessions.inc(&[mode, protocol]);
        Stats::add(&self.bytes_in, bytes_in);
        Stats::add(&self.bytes_out, bytes_out);
    }

    /// A spool delivered one batch to `output` in `took`.
    pub fn delivered(&self, output: &str, took: Duration) {
        self.delivery_latency.handle(&[output]).observe(took);
    }

    /// One log line with every non-zero counter.
    pub fn log_summary(&self, what: &str) {
        let parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        tracing::info!(
            "{what}: {}",
            if parts.is_empty() {
                "nothing yet".into()
            } else {
                parts.join(" ")
            }
        );
    }
}

/// Logs a warning at most once per interval per key, saying how many were held back.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            interval: Duration::from_secs(10),
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    /// Returns Some(number held back since the last one) if this one may be logged.
    pub fn allow(&self, key: &'static str) -> Option<u64> {
        let mut map = self.last.lock().unwrap();
        let now = Instant::now();
        match map.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.interval => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                map.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Warn about a triggered limit, at most once per 10 s per kind.
#[macro_export]
macro_rules! limit_warn {
    ($throttle:expr, $key:literal, $($arg:tt)+) => {
        if let Some(held) = $throttle.allow($key) {
            tracing::warn!(limit = $key, suppressed = held, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_shows_the_same_value_under_another_label() {
        let l: Labeled = Labeled::default();
        let v = l.handle(&["postgres"]);
        l.alias(&["nats"], &v);
        l.alias(&["nats"], &v);
        v.store(7, Relaxed);
        let e = l.entries();
        assert_eq!(e.len(), 2, "an alias is added once");
        assert_eq!(e[1].0, vec!["nats".to_string()]);
        assert_eq!(e[1].1.load(Relaxed), 7);
        assert_eq!(l.handle(&["nats"]).load(Relaxed), 7);
    }

    #[test]
    fn throttle_counts_held_back() {
        let t = Throttle {
            interval: Duration::from_millis(50),
            last: Default::default(),
        };
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow("a"), Some(2));
    }
}
