//! The state every task shares: the current configuration generation, counters,
//! admission limits, the recorder, and the shutdown signals.

use crate::config::Loaded;
use crate::server::limits::Limiter;
use crate::sink::Recorder;
use crate::stats::{Stats, Throttle};
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared runtime state, one per daemon.
pub struct Context {
    /// The configuration in force; replaced whole on SIGHUP.
    pub current: ArcSwap<Loaded>,
    pub stats: Arc<Stats>,
    /// Rate limit for warnings.
    pub throttle: Arc<Throttle>,
    pub limiter: Arc<Limiter>,
    pub recorder: Recorder,
    /// Cancelled first on shutdown: stop accepting, close listeners.
    pub stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: cut open sessions.
    pub hard_stop: CancellationToken,
    /// Every open session, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Context {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}
