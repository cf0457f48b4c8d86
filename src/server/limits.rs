//! Session admission: the global cap, the per-source cap and the per-source rate of
//! new sessions (a token bucket). A granted session holds a [`SessionPermit`] that
//! gives its slot back when dropped.

use crate::config::LimitsConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    MaxSessions,
    PerSource,
    SourceRate,
}

/// Sources tracked before idle entries are swept.
const SWEEP_ABOVE: usize = 65_536;

#[derive(Debug)]
struct Source {
    active: usize,
    bucket: Bucket,
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: burst as f64,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate)
            .min(burst as f64);
        self.refilled = now;
    }

    /// Refill, then take one token if there is one.
    pub fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// True once the bucket has refilled (the entry can be forgotten).
    pub fn is_full(&self, now: Instant, rate: f64, burst: u32) -> bool {
        self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate >= burst as f64
    }
}

#[derive(Debug, Default)]
struct State {
    active: usize,
    sources: HashMap<IpAddr, Source>,
}

/// Admission control shared by every server.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

/// A granted session slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SessionPermit {
    limiter: Arc<Limiter>,
    source: IpAddr,
}

impl Limiter {
    pub fn new() -> Arc<Limiter> {
        Arc::new(Limiter {
            state: Mutex::new(State::default()),
        })
    }

    /// Admit a new session from `source` under `limits`, or say which limit refused.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        limits: &LimitsConfig,
    ) -> Result<SessionPermit, LimitHit> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        if st.active >= limits.max_sessions {
            return Err(LimitHit::MaxSessions);
        }
        if st.sources.len() >= SWEEP_ABOVE {
            sweep(&mut st.sources, now, limits);
        }
        let src = st.sources.entry(source).or_insert(Source {
            active: 0,
            bucket: Bucket::full(limits.source_burst, now),
        });
        if src.active >= limits.max_sessions_per_source {
            return Err(LimitHit::PerSource);
        }
        if !src
            .bucket
            .take(now, limits.source_rate, limits.source_burst)
        {
            return Err(LimitHit::SourceRate);
        }
        src.active += 1;
        st.active += 1;
        Ok(SessionPermit {
            limiter: Arc::clone(self),
            source,
        })
    }

    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.state.lock().unwrap().active
    }

    /// Forget sources with no open session whose bucket has refilled.
    pub fn sweep(&self, limits: &LimitsConfig) {
        let mut st = self.state.lock().unwrap();
        sweep(&mut st.sources, Instant::now(), limits);
    }
}

fn sweep(sources: &mut HashMap<IpAddr, Source>, now: Instant, limits: &LimitsConfig) {
    sources.retain(|_, s| {
        s.active > 0
            || !s
                .bucket
                .is_full(now, limits.source_rate, limits.source_burst)
    });
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap();
        st.active -= 1;
        if let Some(s) = st.sources.get_mut(&self.source) {
            s.active -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per: usize, rate: f64, burst: u32) -> LimitsConfig {
        LimitsConfig {
            max_sessions: max,
            max_sessions_per_source: per,
            source_rate: rate,
            source_burst: burst,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn global_and_per_source_caps() {
        let l = Limiter::new();
        let cfg = limits(3, 2, 1000.0, 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(a, &cfg).unwrap();
        let _p2 = l.admit(a, &cfg).unwrap();
        assert_eq!(l.admit(a, &cfg).unwrap_err(), LimitHit::PerSource);
        let _p3 = l.admit(b, &cfg).unwrap();
        assert_eq!(l.admit(b, &cfg).unwrap_err(), LimitHit::MaxSessions);
        drop(p1);
        assert_eq!(l.active(), 2);
        l.admit(a, &cfg).unwrap();
    }

    #[test]
    fn rate_limit_refills() {
        let l = Limiter::new();
        let cfg = limits(100, 100, 20.0, 2);
        let a: IpAddr = "::1".parse().unwrap();
        drop(l.admit(a, &cfg).unwrap());
        drop(l.admit(a, &cfg).unwrap());
        assert_eq!(l.admit(a, &cfg).unwrap_err(), LimitHit::SourceRate);
        std::thread::sleep(std::time::Duration::from_millis(80));
        l.admit(a, &cfg).unwrap();
    }

    #[test]
    fn sweep_forgets_idle_sources() {
        let l = Limiter::new();
        let cfg = limits(100, 100, 1000.0, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(l.admit(a, &cfg).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(5));
        l.sweep(&cfg);
        assert!(l.state.lock().unwrap().sources.is_empty());
    }
}

/// The bytes all open sessions may hold in memory together (`limits.max_buffered`).
/// Once a session's data leaves for the outputs, `output.queue_bytes` bounds it.
#[derive(Debug)]
pub struct BufferBudget {
    used: std::sync::atomic::AtomicU64,
    max: std::sync::atomic::AtomicU64,
}

impl BufferBudget {
    pub fn new(max: u64) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            used: 0.into(),
            max: max.into(),
        })
    }

    /// Change the cap (on reload); sessions above it stop growing.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One session's share of the [`BufferBudget`], given back on drop.
#[derive(Debug)]
pub struct BufferLease {
    budget: Arc<BufferBudget>,
    held: u64,
}

impl BufferLease {
    pub fn new(budget: &Arc<BufferBudget>) -> BufferLease {
        BufferLease {
            budget: Arc::clone(budget),
            held: 0,
        }
    }

    /// Take `n` more bytes; false (and nothing taken) if the budget is exhausted.
    pub fn grow(&mut self, n: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.budget.max.load(Relaxed);
        let ok = self
            .budget
            .used
            .fetch_update(Relaxed, Relaxed, |u| u.checked_add(n).filter(|t| *t <= max))
            .is_ok();
        if ok {
            self.held += n;
        }
        ok
    }
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.held, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn leases_share_the_budget_and_give_it_back() {
        let b = BufferBudget::new(100);
        let mut a = BufferLease::new(&b);
        let mut c = BufferLease::new(&b);
        assert!(a.grow(60));
        assert!(!c.grow(41));
        assert!(c.grow(40));
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(c.grow(60));
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
