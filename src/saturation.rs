//! Is the host's CPU saturated? Background work asks before each unit of work.
//!
//! Analysis workers and output deliveries run behind capture. Low thread
//! priorities (nice, `SCHED_IDLE`) keep them from taking CPU time capture wants,
//! but on a host whose CPUs are all busy (a connection flood) their work still
//! slows capture down: the caches and memory they use are capture's too, and a
//! delivery makes a database server on the same host work at normal priority. So
//! while the CPUs are saturated they wait, for a bounded time, and catch up when the
//! flood is over (attacks that find the analysis queue full skip analysis; the
//! spool holds undelivered events).
//!
//! Saturation is read from `/proc/stat` over windows of [`WINDOW`]: busy time of
//! all CPUs, minus the CPU time the waiting threads themselves used
//! ([`Saturation::charge`]), so that their own work does not make them wait. Where
//! `/proc/stat` cannot be read the host is never called saturated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Share of all CPUs' time busy (not counting the charged work) from which the
/// host counts as saturated.
pub const THRESHOLD: f64 = 0.90;

/// How long one measurement spans.
pub const WINDOW: Duration = Duration::from_millis(200);

/// How often a waiting thread looks again.
const POLL: Duration = Duration::from_millis(20);

/// Cumulative CPU ticks: (busy, total).
type Ticks = (u64, u64);

/// The saturation detector; one per process ([`Saturation::global`]).
#[derive(Debug)]
pub struct Saturation {
    /// The sample at the start of the current window, and the charged CPU time then.
    window: Mutex<Option<(Instant, Ticks, u64)>>,
    /// The verdict of the last complete window.
    saturated: AtomicBool,
    /// CPU time (ns) charged by the threads that ask.
    charged_ns: AtomicU64,
    /// Reads the cumulative ticks (`/proc/stat`; tests put their own).
    read: fn() -> Option<Ticks>,
    /// Clock ticks per second of `read`'s values.
    hz: u64,
}

impl Saturation {
    /// The detector of this process.
    pub fn global() -> &'static Saturation {
        static GLOBAL: OnceLock<Saturation> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            // SAFETY: sysconf only reads its argument.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            Saturation::new(cpu_ticks, if hz > 0 { hz as u64 } else { 100 })
        })
    }

    /// A detector reading cumulative (busy, total) ticks at `hz` from `read`.
    pub(crate) fn new(read: fn() -> Option<Ticks>, hz: u64) -> Saturation {
        Saturation {
            window: Mutex::new(None),
            saturated: AtomicBool::new(false),
            charged_ns: AtomicU64::new(0),
            read,
            hz,
        }
    }

    /// Whether the last complete window was saturated. Cheap: at most one caller
    /// at a time reads `/proc/stat`, once per [`WINDOW`].
    pub fn saturated(&self) -> bool {
        if let Ok(mut w) = self.window.try_lock() {
            let now = Instant::now();
            match *w {
                Some((at, _, _)) if now.duration_since(at) < WINDOW => {}
                prev => match (self.read)() {
                    Some(ticks) => {
                        let charged = self.charged_ns.load(Relaxed);
                        if let Some((_, before, charged_before)) = prev {
                            let own = (charged - charged_before) as u128 * self.hz as u128
                                / 1_000_000_000;
                            let busy =
                                (ticks.0.saturating_sub(before.0) as u128).saturating_sub(own);
                            let total = ticks.1.saturating_sub(before.1) as u128;
                            if total > 0 {
                                let share = busy as f64 / total as f64;
                                self.saturated.store(share >= THRESHOLD, Relaxed);
                            }
                        }
                        *w = Some((now, ticks, charged));
                    }
                    None => self.saturated.store(false, Relaxed),
                },
            }
        }
        self.saturated.load(Relaxed)
    }

    /// Count `cpu` of the caller's own work as not busy (see the module docs).
    pub fn charge(&self, cpu: Duration) {
        self.charged_ns
            .fetch_add(cpu.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Wait while the host is saturated, at most `max` (and not at all once `stop`
    /// says so). Returns how long it waited.
    pub fn wait(&self, max: Duration, stop: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while !max.is_zero() && self.saturated() && !stop() {
            let waited = started.elapsed();
            if waited >= max {
                break;
            }
            std::thread::sleep(POLL.min(max - waited));
        }
        started.elapsed()
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// All CPUs' cumulative (busy, total) clock ticks (`_SC_CLK_TCK` per second) from
/// the first line of `/proc/stat`.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

/// `cpu  user nice system idle iowait irq softirq steal ...`: idle and iowait are
/// not busy; guest time is already part of user time.
fn parse_cpu_line(line: &str) -> Option<Ticks> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn the_cpu_line_of_proc_stat() {
        assert_eq!(
            parse_cpu_line("cpu  100 5 50 800 20 1 4 0 0 0"),
            Some((160, 980))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_cpu_line("cpu  1 2 x 4 5"), None);
        assert_eq!(parse_cpu_line("cpu  1 2"), None);
        // This machine's own line parses.
        assert!(cpu_ticks().is_some());
    }

    /// Ticks advanced by the test: 100 per call, of which BUSY are busy.
    static BUSY: AtomicU64 = AtomicU64::new(0);
    static BUSY_SUM: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn fake() -> Option<Ticks> {
        let n = CALLS.fetch_add(1, Relaxed) + 1;
        let busy = BUSY_SUM.fetch_add(BUSY.load(Relaxed), Relaxed) + BUSY.load(Relaxed);
        Some((busy, n * 100))
    }

    fn next_window(s: &Saturation) -> bool {
        std::thread::sleep(WINDOW + Duration::from_millis(5));
        s.saturated()
    }

    #[test]
    fn busy_windows_saturate_and_charged_work_does_not_count() {
        let s = Saturation::new(fake, 100);
        BUSY.store(95, Relaxed);
        assert!(!s.saturated(), "no verdict before a whole window");
        assert!(next_window(&s), "95 % busy");
        BUSY.store(50, Relaxed);
        assert!(!next_window(&s), "50 % busy");
        // 95 % busy, but 10 of those ticks (0.1 s at 100 Hz) were the caller's own.
        BUSY.store(95, Relaxed);
        s.charge(Duration::from_millis(100));
        assert!(!next_window(&s), "85 % once the caller's work is taken out");
        assert!(next_window(&s), "95 % again");
    }

    #[test]
    fn waiting_is_bounded_and_stops() {
        fn always() -> Option<Ticks> {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Relaxed) + 1;
            Some((n * 100, n * 100))
        }
        let s = Saturation::new(always, 100);
        s.saturated();
        assert!(next_window(&s));
        let waited = s.wait(Duration::from_millis(300), || false);
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        let waited = s.wait(Duration::from_secs(5), || true);
        assert!(
            waited < Duration::from_millis(100),
            "stop ends it: {waited:?}"
        );
        assert!(s.wait(Duration::ZERO, || false) < Duration::from_millis(5));
        let idle = Saturation::new(|| Some((0, 100)), 100);
        assert!(idle.wait(Duration::from_secs(5), || false) < Duration::from_millis(100));
    }

    #[test]
    fn thread_cpu_grows_with_work() {
        let before = thread_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > before);
    }
}
