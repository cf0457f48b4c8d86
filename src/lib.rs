//! honeytrap: a catch-all low-interaction honeypot.
//!
//! The data flows one way (see `docs/architecture.md`):
//!
//! ```text
//! monitor ──Trigger──▶ port table ──▶ dynamic server ──conn──▶ mode handler
//!                                                                  │ Captured
//!                              sinks ◀── recorder (hash, transcript file) ◀┘
//! ```
//!
//! This file wires the stages together: [`run`] prepares the process, starts the
//! recorder, the port table and the monitor, then handles signals until shutdown.

pub mod analysis;
pub mod attack;
pub mod collect;
pub mod config;
pub mod context;
pub mod db;
pub mod event;
pub mod firewall;
pub mod linger;
pub mod metrics;
pub mod mode;
pub mod monitor;
pub mod privileges;
pub mod proto;
pub mod saturation;
pub mod server;
pub mod sink;
pub mod stats;

use anyhow::Context as _;
use config::Loaded;
use context::Context;
use server::PortTable;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Changes the log filter of the running process (on SIGHUP).
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Run the daemon in the foreground until SIGTERM or SIGINT. `log` applies a
/// reloaded `process.log_level`; None when the command line fixed the level.
pub fn run(loaded: Loaded, log: Option<LogControl>) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    // Before any thread exists: each lowers itself to it.
    privileges::set_process_nice(cfg.process.nice);
    let nofile = privileges::raise_nofile();
    let who = privileges::resolve(&cfg.process.user, &cfg.process.group)?;
    privileges::prepare_data_dir(&cfg.sensor.data_dir, who.as_ref())?;
    let (monitor, why) = monitor::build(cfg);
    let why = if loaded.overridden {
        format!("{why} (set on the command line)")
    } else {
        why.to_string()
    };
    // Before anything is bound (ports in use are excluded) and while still root.
    let firewall = firewall::setup(cfg, monitor.name())?;
    let metrics = metrics::Endpoint::bind(&cfg.metrics)?;
    let already = |w: &privileges::Identity| {
        !nix::unistd::Uid::effective().is_root() && nix::unistd::getuid() == w.uid
    };
    if let Some(who) = who.as_ref().filter(|w| already(w)) {
        // Started unprivileged as that user already (file capabilities, as T-Pot
        // does): there is nothing to switch.
        tracing::info!(user = %who.name, uid = %who.uid, "already running as process.user: no switch needed");
    } else if let Some(who) = &who {
        let mut keep = monitor.capabilities();
        // Rules honeytrap added are removed at exit by running iptables (and `ip`
        // for the tproxy policy routing), after the drop: they need CAP_NET_ADMIN
        // (and CAP_NET_RAW for the legacy backend).
        let for_iptables: &[caps::Capability] = if firewall.is_some() {
            &[
                caps::Capability::CAP_NET_ADMIN,
                caps::Capability::CAP_NET_RAW,
            ]
        } else {
            &[]
        };
        keep.extend_from_slice(for_iptables);
        keep.sort_by_key(|c| c.index());
        keep.dedup();
        privileges::drop_to(who, &keep, for_iptables)?;
        tracing::info!(user = %who.name, uid = %who.uid, gid = %who.gid, capabilities = ?keep, "dropped privileges");
    } else if nix::unistd::Uid::effective().is_root() {
        tracing::warn!("running as root: set process.user to drop privileges after setup");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("honeytrap")
        .on_thread_start(|| privileges::lower_thread_priority(0, "runtime"))
        .build()
        .context("starting the runtime")?;
    tracing::info!(
        monitor = monitor.name(),
        reason = %why,
        open_files = nofile,
        nice = cfg.process.nice,
        "monitor chosen"
    );
    let result = runtime.block_on(daemon(loaded, monitor, log, metrics));
    // Explicit removal once the daemon returned (the guard also removes the rules
    // on an early error return above, by being dropped).
    if let Some(guard) = firewall {
        guard.finish();
    }
    result
}

async fn daemon(
    loaded: Loaded,
    mut monitor: Box<dyn monitor::Monitor>,
    log: Option<LogControl>,
    metrics: Option<metrics::Endpoint>,
) -> anyhow::Result<()> {
    let ctx = Context::start(loaded)?;
    let table = PortTable::new(Arc::clone(&ctx));
    if let Some(m) = metrics {
        let t = Arc::clone(&table);
        m.start(Arc::clone(&ctx.stats), Arc::new(move || t.open_servers()))?;
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    monitor.start(&table)?;
    {
        let cfg = ctx.config();
        tracing::info!(
            sensor = %cfg.sensor,
            data_dir = %cfg.config.sensor.data_dir.display(),
            config = %cfg.source.as_ref().map(|p| p.display().to_string()).unwrap_or("<embedded default>".into()),
            "ready"
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    let mut last_counters = ctx.stats.snapshot();
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload(&ctx, &table, monitor.as_mut(), log.as_ref()),
            _ = tick.tick() => {
                ctx.limiter.sweep(&ctx.config().config.limits);
                // Only when something happened: an idle sensor keeps a quiet log.
                let now = ctx.stats.snapshot();
                if now != last_counters {
                    ctx.stats.log_summary("counters");
                    last_counters = now;
                }
            }
        }
    };
    let grace = ctx.config().config.process.shutdown_grace;
    tracing::info!(signal = signal_name, open_sessions = ctx.limiter.active(), grace = ?grace, "shutting down: no new connections");
    ctx.stop_accepting.cancel();
    ctx.sessions.close();
    // A second SIGTERM/SIGINT cuts the grace period short.
    let finished = tokio::select! {
        r = tokio::time::timeout(grace, ctx.sessions.wait()) => r.is_ok(),
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
    };
    if !finished {
        tracing::info!(
            open_sessions = ctx.limiter.active(),
            "grace period over (or a second signal): ending open sessions"
        );
        ctx.hard_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), ctx.sessions.wait())
            .await
            .is_err()
        {
            tracing::error!("sessions did not end after the grace period");
        }
    }
    let ctx2 = Arc::clone(&ctx);
    tokio::task::spawn_blocking(move || ctx2.recorder.close()).await?;
    ctx.stats.log_summary("final counters");
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: load the config again; a bad one is refused and the old one stays.
fn reload(
    ctx: &Arc<Context>,
    table: &Arc<PortTable>,
    monitor: &mut dyn monitor::Monitor,
    log: Option<&LogControl>,
) {
    let old = ctx.config();
    // Log rotation: reopen output files whatever the config says.
    ctx.recorder.reopen();
    let Some(path) = old.source.clone() else {
        tracing::info!("SIGHUP: running on the embedded default, nothing to reload");
        return;
    };
    match config::load(Some(&path)) {
        Err(e) => tracing::error!("SIGHUP: new configuration refused, keeping the old one: {e}"),
        Ok(new) => {
            let c = &new.config;
            let o = &old.config;
            if c.network != o.network
                || c.sensor.data_dir != o.sensor.data_dir
                || c.output != o.output
                || c.process.user != o.process.user
                || c.process.group != o.process.group
                || c.monitor.kind != o.monitor.kind
                || c.firewall != o.firewall
                || c.metrics != o.metrics
            {
                tracing::warn!("SIGHUP: changes to [network], [output], [firewall], [metrics], sensor.data_dir, process.user, process.group and monitor.kind need a restart; they are kept as they were");
            }
            if c.process.log_level != o.process.log_level {
                match log {
                    Some(set) => match set(&c.process.log_level) {
                        Ok(()) => {
                            tracing::info!(level = %c.process.log_level, "SIGHUP: log level changed")
                        }
                        Err(e) => tracing::error!("SIGHUP: log level not changed: {e}"),
                    },
                    None => tracing::info!("SIGHUP: log level fixed by --log-level, not changed"),
                }
            }
            let mut merged = new;
            merged.config.network = o.network.clone();
            merged.config.output = o.output.clone();
            merged.config.sensor.data_dir = o.sensor.data_dir.clone();
            merged.config.process.user = o.process.user.clone();
            merged.config.process.group = o.process.group.clone();
            merged.config.monitor.kind = o.monitor.kind;
            merged.config.firewall = o.firewall.clone();
            merged.config.metrics = o.metrics.clone();
            if old.overridden {
                // The command line wins until restart.
                merged.config.monitor.nfqueue.queue = o.monitor.nfqueue.queue;
                merged.overridden = true;
            }
            if let Err(e) = ctx.reload_analysis(&merged.config) {
                tracing::error!("SIGHUP: analyzers not reloaded, the old ones keep running: {e:#}");
            }
            ctx.buffers.set_max(merged.config.limits.max_buffered);
            ctx.current.store(Arc::new(merged));
            table.apply_policy();
            monitor.reload(table);
            tracing::info!(config = %path.display(), "SIGHUP: configuration reloaded");
        }
    }
}
