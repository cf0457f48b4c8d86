//! Counters for everything that is seen, limited or lost, and log lines that are
//! rate-limited so a flood cannot flood the log too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
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
        ]
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
