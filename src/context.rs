//! The state every task shares: the current configuration generation, counters,
//! admission limits, the recorder, and the shutdown signals.

use crate::analysis::registry::AnalyzerSet;
use crate::config::Loaded;
use crate::server::limits::{BufferBudget, Limiter};
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
    /// Admission of mirror and proxy relays.
    pub relays: Arc<crate::mode::guard::RelayGuard>,
    /// Memory all open sessions may hold together.
    pub buffers: Arc<BufferBudget>,
    pub recorder: Recorder,
    /// Cancelled first on shutdown: stop accepting, close listeners.
    pub stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: cut open sessions.
    pub hard_stop: CancellationToken,
    /// Every open session, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Context {
    /// Build the shared state for `loaded`, starting the recorder and its sinks.
    pub fn start(loaded: Loaded) -> anyhow::Result<Arc<Context>> {
        let buffers = BufferBudget::new(loaded.config.limits.max_buffered);
        let stats = Arc::new(Stats::default());
        let throttle = Arc::new(Throttle::default());
        let sinks = crate::sink::build(&loaded.config, &stats)?;
        let set = AnalyzerSet::build(&loaded.config)?;
        let recorder = Recorder::start(
            &loaded.config,
            sinks,
            set,
            Arc::clone(&stats),
            Arc::clone(&throttle),
        )?;
        Ok(Arc::new(Context {
            current: ArcSwap::from_pointee(loaded),
            stats,
            throttle,
            limiter: Limiter::new(),
            relays: crate::mode::guard::RelayGuard::new(),
            buffers,
            recorder,
            stop_accepting: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
        }))
    }

    /// Use the analyzers of `config` from now on (SIGHUP).
    pub fn reload_analysis(&self, config: &crate::config::Config) -> anyhow::Result<()> {
        self.recorder
            .reload_analysis(config, AnalyzerSet::build(config)?);
        Ok(())
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}
