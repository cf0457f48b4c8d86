//! The port table: the one place that knows what is bound. Monitors ask it to make
//! sure a server runs for (protocol, port); it applies the port policy, binds on
//! demand, closes idle servers after `conn_timeout`, and evicts the least recently
//! used server when `max_listeners` is reached.

use super::{bind, tcp, udp};
use crate::attack::Mode;
use crate::context::Context;
use crate::limit_warn;
use crate::proto::Protocol;
use crate::stats::Stats;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A connection attempt a monitor saw.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub protocol: Protocol,
    /// Where the attempt was going (our side).
    pub local: SocketAddr,
    /// Where it came from.
    pub remote: SocketAddr,
    /// Name of the monitor that saw it.
    pub monitor: &'static str,
}

/// What [`PortTable::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// A server already ran.
    Running,
    /// A new server was bound.
    Started,
    /// The port is in ignore mode: nothing is bound.
    Ignored,
    /// The port could not be bound (owned by another program, no permission).
    Unavailable,
    /// `max_listeners` is reached and no server could be evicted.
    Full,
}

/// One running dynamic server.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    /// Cancelled to close the server's sockets.
    pub cancel: CancellationToken,
    /// Milliseconds since the table's epoch of the last connection or datagram.
    pub last_active: Arc<AtomicU64>,
    /// Monitor whose trigger started it; sessions are attributed to it.
    pub monitor: Arc<str>,
    /// Table's epoch, to turn `last_active` into an `Instant`.
    epoch: Instant,
}

impl ServerHandle {
    /// Record activity now.
    pub fn touch(&self) {
        self.last_active
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_active.load(Relaxed)))
    }
}

struct Entry {
    id: u64,
    handle: ServerHandle,
    /// Pinned servers (the listen monitor's) never idle out and are never evicted.
    pinned: bool,
}

/// Every dynamic server, keyed by (protocol, port).
pub struct PortTable {
    ctx: Arc<Context>,
    servers: Mutex<HashMap<(Protocol, u16), Entry>>,
    /// Ports reported as unbindable, so each is reported once.
    reported: Mutex<HashSet<(Protocol, u16)>>,
    /// Bind addresses that failed for a reason of their own (IPv6 disabled, not an
    /// address of this host), so each is reported once rather than once per port.
    reported_addrs: Mutex<HashSet<std::net::IpAddr>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl PortTable {
    pub fn new(ctx: Arc<Context>) -> Arc<PortTable> {
        Arc::new(PortTable {
            ctx,
            servers: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            reported_addrs: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Handle a monitor's trigger: make sure a server runs for its port.
    pub fn trigger(self: &Arc<Self>, t: &Trigger) -> Ensured {
        self.ensure(t.protocol, t.local.port(), t.monitor, false)
    }

    /// Make sure a server listens on (proto, port) unless the policy ignores it.
    /// `pinned` servers stay until [`PortTable::unpin`].
    pub fn ensure(
        self: &Arc<Self>,
        proto: Protocol,
        port: u16,
        monitor: &str,
        pinned: bool,
    ) -> Ensured {
        let cfg = self.ctx.config();
        let mut servers = self.servers.lock().unwrap();
        if let Some(e) = servers.get_mut(&(proto, port)) {
            e.handle.touch();
            e.pinned |= pinned;
            return Ensured::Running;
        }
        if cfg.policy.mode(proto, port) == Mode::Ignore {
            return Ensured::Ignored;
        }
        if servers.len() >= cfg.config.limits.max_listeners && !self.evict_lru(&mut servers) {
            Stats::inc(&self.ctx.stats.limit_max_listeners);
            limit_warn!(self.ctx.throttle, "max_listeners", %proto, port, max = cfg.config.limits.max_listeners, "listener cap reached and every server is pinned: not binding");
            return Ensured::Full;
        }
        let handle = ServerHandle {
            cancel: self.ctx.stop_accepting.child_token(),
            last_active: Arc::new(AtomicU64::new(0)),
            monitor: Arc::from(monitor),
            epoch: self.epoch,
        };
        handle.touch();
        let net = &cfg.config.network;
        let mut bound = 0;
        let mut errors = Vec::new();
        let mut owned = false;
        for ip in &net.bind_addresses {
            let result = match proto {
                Protocol::Tcp => bind::tcp_listener(*ip, port, net.backlog)
                    .map(|l| tcp::spawn(Arc::clone(self), l, handle.clone())),
                Protocol::Udp => bind::udp_socket(*ip, port)
                    .and_then(|s| udp::spawn(Arc::clone(self), s, handle.clone())),
            };
            match result {
                Ok(()) => bound += 1,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    owned = true;
                    errors.push(format!("{ip}: {e}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    errors.push(format!("{ip}: {e}"));
                }
                Err(e) => {
                    if self.reported_addrs.lock().unwrap().insert(*ip) {
                        tracing::warn!(address = %ip, error = %e, "cannot bind on this address (IPv6 disabled, or not an address of this host?); it is skipped for every port");
                    }
                    errors.push(format!("{ip}: {e}"));
                }
            }
        }
        // In use on any address means another program owns the port: leave all of it
        // to that program (an IPv4-only service must not get an IPv6 honeypot beside
        // it). Other errors (IPv6 disabled, an address not on this host) only cost
        // that address.
        if bound == 0 || owned {
            handle.cancel.cancel();
            Stats::inc(&self.ctx.stats.bind_failures);
            if self.reported.lock().unwrap().insert((proto, port)) {
                tracing::warn!(%proto, port, errors = errors.join("; "), "cannot bind port (owned by another program?); skipped");
            }
            return Ensured::Unavailable;
        }
        if !errors.is_empty() {
            tracing::debug!(%proto, port, errors = errors.join("; "), "port bound on some addresses only");
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        Stats::inc(&self.ctx.stats.listeners_started);
        tracing::debug!(%proto, port, monitor, pinned, "server started");
        if !pinned {
            tokio::spawn(Arc::clone(self).watch_idle(proto, port, id, handle.clone()));
        }
        servers.insert((proto, port), Entry { id, handle, pinned });
        Ensured::Started
    }

    /// Let a pinned server idle out like a dynamic one.
    pub fn unpin(self: &Arc<Self>, proto: Protocol, port: u16) {
        let mut servers = self.servers.lock().unwrap();
        if let Some(e) = servers.get_mut(&(proto, port)) {
            if e.pinned {
                e.pinned = false;
                tokio::spawn(Arc::clone(self).watch_idle(proto, port, e.id, e.handle.clone()));
            }
        }
    }

    /// Close the server on (proto, port), if any.
    pub fn close(&self, proto: Protocol, port: u16) {
        if let Some(e) = self.servers.lock().unwrap().remove(&(proto, port)) {
            e.handle.cancel.cancel();
        }
    }

    /// Close servers whose port the current policy ignores (after a reload).
    pub fn apply_policy(&self) {
        let cfg = self.ctx.config();
        let mut servers = self.servers.lock().unwrap();
        servers.retain(|(proto, port), e| {
            let keep = cfg.policy.mode(*proto, *port) != Mode::Ignore;
            if !keep {
                tracing::info!(%proto, port, "port now ignored: server closed");
                e.handle.cancel.cancel();
            }
            keep
        });
        // A port that failed before may be bindable under the new config.
        self.reported.lock().unwrap().clear();
    }

    /// Running servers, as (protocol, port, pinned), sorted.
    pub fn list(&self) -> Vec<(Protocol, u16, bool)> {
        let mut v: Vec<_> = self
            .servers
            .lock()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.0, k.1, e.pinned))
            .collect();
        v.sort();
        v
    }

    /// Close the least recently active unpinned server. False if there is none.
    fn evict_lru(&self, servers: &mut HashMap<(Protocol, u16), Entry>) -> bool {
        let victim = servers
            .iter()
            .filter(|(_, e)| !e.pinned)
            .min_by_key(|(_, e)| e.handle.last_active.load(Relaxed))
            .map(|(k, _)| *k);
        let Some(key) = victim else { return false };
        let e = servers.remove(&key).expect("victim exists");
        e.handle.cancel.cancel();
        Stats::inc(&self.ctx.stats.listeners_evicted);
        limit_warn!(self.ctx.throttle, "listener_evicted", proto = %key.0, port = key.1, "listener cap reached: closed the least recently used server");
        true
    }

    /// Close the server once it has seen nothing for `conn_timeout`.
    async fn watch_idle(
        self: Arc<Self>,
        proto: Protocol,
        port: u16,
        id: u64,
        handle: ServerHandle,
    ) {
        loop {
            let timeout = self.ctx.config().config.limits.conn_timeout;
            let idle = handle.idle_for();
            if idle < timeout {
                tokio::select! {
                    _ = tokio::time::sleep(timeout - idle) => continue,
                    _ = handle.cancel.cancelled() => return,
                }
            }
            let mut servers = self.servers.lock().unwrap();
            match servers.get(&(proto, port)) {
                Some(e) if e.id == id && !e.pinned => {
                    servers.remove(&(proto, port));
                    handle.cancel.cancel();
                    Stats::inc(&self.ctx.stats.listeners_idle_closed);
                    tracing::debug!(%proto, port, "server idle for conn_timeout: closed");
                }
                _ => {}
            }
            return;
        }
    }
}
