//! Dynamic servers: the port table that owns every listening socket, and the TCP and
//! UDP servers it starts on demand.

pub mod accept;
pub mod bind;
pub mod limits;
mod port_table;
pub mod tcp;
pub mod udp;

pub use port_table::{Ensured, Pending, PortTable, Trigger};

use crate::config::Loaded;
use crate::mode::normal::SessionSpec;
use crate::proto::Protocol;
use std::sync::Arc;

/// The session parameters for a new session on (proto, port) under `cfg`.
pub fn session_spec(
    ctx: &crate::context::Context,
    cfg: &Loaded,
    proto: Protocol,
    port: u16,
    monitor: &Arc<str>,
) -> SessionSpec {
    let l = &cfg.config.limits;
    SessionSpec {
        handling: cfg.policy.lookup(proto, port),
        read_timeout: l.read_timeout,
        session_timeout: l.session_timeout,
        read_limit: l.read_limit,
        relay: cfg.config.relay.clone(),
        per_read: ctx.recorder.per_read(),
        sensor: Arc::clone(&cfg.sensor),
        monitor: Arc::clone(monitor),
        buffers: Arc::clone(&ctx.buffers),
        stats: Arc::clone(&ctx.stats),
        throttle: Arc::clone(&ctx.throttle),
    }
}

/// Ask the limiter for a session slot for `remote`; a refusal is counted and logged.
pub fn admit(
    ctx: &crate::context::Context,
    cfg: &Loaded,
    proto: Protocol,
    local_port: u16,
    remote: std::net::SocketAddr,
) -> Option<limits::SessionPermit> {
    use crate::limit_warn;
    use crate::stats::Stats;
    use limits::LimitHit;
    let remote = crate::attack::normalize(remote);
    match ctx.limiter.admit(remote.ip(), &cfg.config.limits) {
        Ok(p) => Some(p),
        Err(LimitHit::MaxSessions) => {
            Stats::inc(&ctx.stats.limit_max_sessions);
            limit_warn!(ctx.throttle, "max_sessions", %proto, port = local_port, %remote, max = cfg.config.limits.max_sessions, "session refused: limits.max_sessions reached");
            None
        }
        Err(LimitHit::PerSource) => {
            Stats::inc(&ctx.stats.limit_per_source);
            limit_warn!(ctx.throttle, "max_sessions_per_source", %proto, port = local_port, %remote, max = cfg.config.limits.max_sessions_per_source, "session refused: limits.max_sessions_per_source reached");
            None
        }
        Err(LimitHit::SourceRate) => {
            Stats::inc(&ctx.stats.limit_source_rate);
            limit_warn!(ctx.throttle, "source_rate", %proto, port = local_port, %remote, rate = cfg.config.limits.source_rate, "session refused: limits.source_rate exceeded");
            None
        }
    }
}
