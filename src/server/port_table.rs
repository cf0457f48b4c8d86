//! The port table: the one place that knows what is bound. Monitors ask it to make
//! sure a server runs for (protocol, port); it applies the port policy, binds on
//! demand, closes idle servers after `conn_timeout`, and evicts the least recently
//! used server when `max_listeners` is reached.
//!
//! Starting a server has two halves. The kernel-visible half (socket, bind, listen)
//! is done synchronously, so when `ensure` returns the kernel already accepts
//! connections (and queues datagrams) for the port. The runtime half (registration
//! with tokio, the serving task) follows in one task per port, which also watches
//! for idleness. The nfqueue monitor defers that half for a whole batch of packets
//! ([`PortTable::trigger_deferred`], [`PortTable::launch`]) so its verdicts do not
//! wait for it.
//!
//! Eviction is exact LRU in amortised O(1): rather than scanning every server for
//! each new port, the oldest 1/16 of the unpinned servers (by `last_active`) are
//! remembered as candidates, oldest first. A candidate touched since it was chosen
//! (its `last_active` changed), closed or replaced is skipped; any other candidate
//! is older than every server outside the list, so it is still the least recently
//! used one.

use super::{bind, tcp, udp};
use crate::attack::Mode;
use crate::context::Context;
use crate::limit_warn;
use crate::proto::Protocol;
use crate::stats::Stats;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
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

type Key = (Protocol, u16);

/// The servers and the eviction candidates, under one lock.
#[derive(Default)]
struct Servers {
    map: HashMap<Key, Entry>,
    /// Eviction candidates, newest first (popped from the end): key, entry id and
    /// `last_active` when chosen.
    victims: Vec<(Key, u64, u64)>,
}

/// A socket bound for a new server, not yet registered with the runtime.
enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// A server whose sockets listen but whose task has not started.
struct Launch {
    key: Key,
    id: u64,
    handle: ServerHandle,
    sockets: Vec<Bound>,
    pinned: bool,
    /// Counts the server in [`PortTable::open`] until its sockets are gone (it is
    /// kept until the last of the server's tasks ends).
    open: OpenServer,
}

/// One server whose sockets exist, counted in [`PortTable::open`] from its bind
/// until dropped.
struct OpenServer(Arc<AtomicUsize>);

impl OpenServer {
    fn new(count: &Arc<AtomicUsize>) -> OpenServer {
        count.fetch_add(1, Relaxed);
        OpenServer(Arc::clone(count))
    }
}

impl Drop for OpenServer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Servers bound by [`PortTable::trigger_deferred`], waiting for
/// [`PortTable::launch`]. Dropping it unlaunched leaves bound ports nobody serves
/// until they idle out: always launch it.
#[derive(Default)]
pub struct Pending(Vec<Launch>);

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every dynamic server, keyed by (protocol, port).
pub struct PortTable {
    ctx: Arc<Context>,
    servers: Mutex<Servers>,
    /// Ports reported as unbindable, so each is reported once.
    reported: Mutex<HashSet<(Protocol, u16)>>,
    /// Bind addresses that failed for a reason of their own (IPv6 disabled, not an
    /// address of this host), so each is reported once rather than once per port.
    reported_addrs: Mutex<HashSet<std::net::IpAddr>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Servers whose sockets exist: those in the table plus those closed (evicted,
    /// idle, cancelled) whose tasks have not yet dropped their sockets. The
    /// runtime closes them, and a runtime short of CPU (one CPU, a full-range
    /// scan) falls behind: see [`PortTable::closing_backlog`].
    open: Arc<AtomicUsize>,
}

/// How many closed servers may still hold their sockets before new ports are
/// refused: a quarter of the listener cap (at least one), so sockets stay within
/// 1.25 × `max_listeners` even when the runtime cannot keep up with
/// closing them.
fn closing_allowance(max_listeners: usize) -> usize {
    (max_listeners / 4).max(1)
}

impl PortTable {
    pub fn new(ctx: Arc<Context>) -> Arc<PortTable> {
        // Listeners plus sessions, and some for the process itself (see
        // bind::reserve_descriptors: a table growing during a burst stalls it).
        let limits = &ctx.config().config.limits;
        let reserved = bind::reserve_descriptors(
            limits
                .max_listeners
                .saturating_add(limits.max_sessions)
                .saturating_add(64),
        );
        tracing::debug!(reserved, "descriptor table grown");
        Arc::new(PortTable {
            ctx,
            servers: Mutex::new(Servers::default()),
            reported: Mutex::new(HashSet::new()),
            reported_addrs: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Servers whose sockets exist (in the table or closed and not yet released).
    pub fn servers_holding_sockets(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Whether closed servers still holding their sockets have reached
    /// [`closing_allowance`], so that new ports are refused until the runtime has
    /// released some.
    pub fn closing_backlog(&self) -> bool {
        let max = self.ctx.config().config.limits.max_listeners;
        let listed = self.servers.lock().unwrap().map.len();
        self.closing_full(listed, max)
    }

    /// The test behind [`PortTable::closing_backlog`], given the number of servers
    /// in the table (`listed`): the rest of those holding sockets are closed ones.
    fn closing_full(&self, listed: usize, max_listeners: usize) -> bool {
        self.open.load(Relaxed).saturating_sub(listed) >= closing_allowance(max_listeners)
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Servers listening now: (pinned, unpinned).
    pub fn open_servers(&self) -> (usize, usize) {
        let s = self.servers.lock().unwrap();
        let pinned = s.map.values().filter(|e| e.pinned).count();
        (pinned, s.map.len() - pinned)
    }

    /// Handle a monitor's trigger: make sure a server runs for its port.
    pub fn trigger(self: &Arc<Self>, t: &Trigger) -> Ensured {
        self.ctx.stats.triggers.inc(&[t.monitor]);
        self.ensure(t.protocol, t.local.port(), t.monitor, false)
    }

    /// Like [`PortTable::trigger`], but a new server's task is not started: it is
    /// added to `pending` for [`PortTable::launch`]. The port listens on return.
    pub fn trigger_deferred(&self, t: &Trigger, pending: &mut Pending) -> Ensured {
        self.ctx.stats.triggers.inc(&[t.monitor]);
        self.ensure_deferred(t.protocol, t.local.port(), t.monitor, false, pending)
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
        let mut pending = Pending::default();
        let result = self.ensure_deferred(proto, port, monitor, pinned, &mut pending);
        self.launch(pending);
        result
    }

    /// Start the tasks of the servers in `pending`: one spawn for the lot (cheap
    /// from a thread outside the runtime), which spawns one task per server.
    pub fn launch(self: &Arc<Self>, pending: Pending) {
        let mut launches = pending.0;
        match launches.len() {
            0 => {}
            1 => {
                let l = launches.pop().expect("one");
                tokio::spawn(Arc::clone(self).serve(l));
            }
            _ => {
                let table = Arc::clone(self);
                tokio::spawn(async move {
                    for l in launches {
                        tokio::spawn(Arc::clone(&table).serve(l));
                    }
                });
            }
        }
    }

    /// The synchronous half of [`PortTable::ensure`]: policy, eviction, and the
    /// bound sockets of a new server, added to `pending`.
    fn ensure_deferred(
        &self,
        proto: Protocol,
        port: u16,
        monitor: &str,
        pinned: bool,
        pending: &mut Pending,
    ) -> Ensured {
        let cfg = self.ctx.config();
        let mut servers = self.servers.lock().unwrap();
        if let Some(e) = servers.map.get_mut(&(proto, port)) {
            e.handle.touch();
            e.pinned |= pinned;
            return Ensured::Running;
        }
        if cfg.policy.mode(proto, port) == Mode::Ignore {
            return Ensured::Ignored;
        }
        let max = cfg.config.limits.max_listeners;
        // Pinned servers (the listen monitor's configured ports, a few) are exempt:
        // a reload that closes many servers at once must not leave them unbound.
        if !pinned && self.closing_full(servers.map.len(), max) {
            Stats::inc(&self.ctx.stats.limit_max_listeners);
            limit_warn!(self.ctx.throttle, "listeners_closing", %proto, port, max, "listener cap reached and the servers closed to make room have not yet released their sockets (runtime short of CPU): not binding");
            return Ensured::Full;
        }
        if servers.map.len() >= max && !self.evict_lru(&mut servers) {
            Stats::inc(&self.ctx.stats.limit_max_listeners);
            limit_warn!(self.ctx.throttle, "max_listeners", %proto, port, max, "listener cap reached and every server is pinned: not binding");
            return Ensured::Full;
        }
        let net = &cfg.config.network;
        let Some(sockets) = self.bind_all(proto, port, &net.bind_addresses, net.backlog) else {
            return Ensured::Unavailable;
        };
        let handle = ServerHandle {
            cancel: self.ctx.stop_accepting.child_token(),
            last_active: Arc::new(AtomicU64::new(0)),
            monitor: Arc::from(monitor),
            epoch: self.epoch,
        };
        handle.touch();
        let id = self.next_id.fetch_add(1, Relaxed);
        Stats::inc(&self.ctx.stats.listeners_started);
        tracing::debug!(%proto, port, monitor, pinned, "server started");
        servers.map.insert(
            (proto, port),
            Entry {
                id,
                handle: handle.clone(),
                pinned,
            },
        );
        pending.0.push(Launch {
            key: (proto, port),
            id,
            handle,
            sockets,
            pinned,
            open: OpenServer::new(&self.open),
        });
        Ensured::Started
    }

    /// Bind (proto, port) on every address. `None` (counted and reported once per
    /// port) if the port is owned by another program or no address could be bound.
    fn bind_all(
        &self,
        proto: Protocol,
        port: u16,
        addresses: &[IpAddr],
        backlog: u32,
    ) -> Option<Vec<Bound>> {
        let mut sockets = Vec::with_capacity(addresses.len());
        let mut errors = Vec::new();
        let mut owned = false;
        for ip in addresses {
            let result = match proto {
                Protocol::Tcp => bind::tcp_listener(*ip, port, backlog).map(Bound::Tcp),
                Protocol::Udp => bind::udp_socket(*ip, port).map(Bound::Udp),
            };
            match result {
                Ok(s) => sockets.push(s),
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
        // it); the sockets bound so far are closed when dropped. Other errors (IPv6
        // disabled, an address not on this host) only cost that address.
        if sockets.is_empty() || owned {
            Stats::inc(&self.ctx.stats.bind_failures);
            if self.reported.lock().unwrap().insert((proto, port)) {
                tracing::warn!(%proto, port, errors = errors.join("; "), "cannot bind port (owned by another program?); skipped");
            }
            return None;
        }
        if !errors.is_empty() {
            tracing::debug!(%proto, port, errors = errors.join("; "), "port bound on some addresses only");
        }
        Some(sockets)
    }

    /// A server's task: serves its first socket (further addresses get a task
    /// each) and, unless pinned, closes the server once it is idle.
    async fn serve(self: Arc<Self>, l: Launch) {
        let Launch {
            key,
            id,
            handle,
            sockets,
            pinned,
            open,
        } = l;
        // Dropped after every socket of the server: declared first, and a clone
        // in each task serving another address.
        let open = Arc::new(open);
        let mut sockets = sockets.into_iter();
        let Some(first) = sockets.next() else { return };
        for more in sockets {
            let table = Arc::clone(&self);
            let handle = handle.clone();
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let _open = open;
                table.serve_socket(key, id, more, handle).await
            });
        }
        let serve = Arc::clone(&self).serve_socket(key, id, first, handle.clone());
        if pinned {
            serve.await;
        } else {
            let idle = Arc::clone(&self).watch_idle(key.0, key.1, id, handle);
            tokio::select! {
                _ = serve => {}
                _ = idle => {}
            }
        }
    }

    /// Register `socket` with the runtime and serve it until the server is
    /// cancelled. If registration fails, the server is closed.
    async fn serve_socket(self: Arc<Self>, key: Key, id: u64, socket: Bound, handle: ServerHandle) {
        let result = match socket {
            Bound::Tcp(l) => match super::accept::Acceptor::new(l) {
                Ok(l) => {
                    tcp::serve(Arc::clone(&self), l, handle.clone()).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Bound::Udp(s) => match tokio::net::UdpSocket::from_std(s) {
                Ok(s) => udp::serve(Arc::clone(&self), s, handle.clone()).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            limit_warn!(self.ctx.throttle, "server_register", proto = %key.0, port = key.1, error = %e, "cannot register a new server's socket with the runtime: server closed");
            self.close_id(key, id);
            handle.cancel.cancel();
        }
    }

    /// Remove the server on `key` if it is still the one numbered `id`.
    fn close_id(&self, key: Key, id: u64) {
        let mut servers = self.servers.lock().unwrap();
        if servers.map.get(&key).is_some_and(|e| e.id == id) {
            if let Some(e) = servers.map.remove(&key) {
                e.handle.cancel.cancel();
            }
        }
    }

    /// Let a pinned server idle out like a dynamic one.
    pub fn unpin(self: &Arc<Self>, proto: Protocol, port: u16) {
        let mut servers = self.servers.lock().unwrap();
        if let Some(e) = servers.map.get_mut(&(proto, port)) {
            if e.pinned {
                e.pinned = false;
                tokio::spawn(Arc::clone(self).watch_idle(proto, port, e.id, e.handle.clone()));
            }
        }
    }

    /// Close the server on (proto, port), if any.
    pub fn close(&self, proto: Protocol, port: u16) {
        if let Some(e) = self.servers.lock().unwrap().map.remove(&(proto, port)) {
            e.handle.cancel.cancel();
        }
    }

    /// Close servers whose port the current policy ignores (after a reload).
    pub fn apply_policy(&self) {
        let cfg = self.ctx.config();
        let mut servers = self.servers.lock().unwrap();
        servers.map.retain(|(proto, port), e| {
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
            .map
            .iter()
            .map(|(k, e)| (k.0, k.1, e.pinned))
            .collect();
        v.sort();
        v
    }

    /// Close the least recently active unpinned server. False if there is none.
    fn evict_lru(&self, servers: &mut Servers) -> bool {
        let mut fresh = false;
        loop {
            while let Some((key, id, seen)) = servers.victims.pop() {
                let Some(e) = servers.map.get(&key) else {
                    continue;
                };
                // A candidate just chosen is taken even if touched meanwhile (the
                // touch does not take the lock), so the loop always ends.
                let untouched = e.handle.last_active.load(Relaxed) == seen;
                if e.id != id || e.pinned || !(untouched || fresh) {
                    continue;
                }
                let e = servers.map.remove(&key).expect("victim exists");
                e.handle.cancel.cancel();
                Stats::inc(&self.ctx.stats.listeners_evicted);
                limit_warn!(self.ctx.throttle, "listener_evicted", proto = %key.0, port = key.1, "listener cap reached: closed the least recently used server");
                return true;
            }
            if fresh || !Self::choose_victims(servers) {
                return false;
            }
            fresh = true;
        }
    }

    /// Remember the oldest 1/16 of the unpinned servers (at least one) as eviction
    /// candidates, newest first. False if every server is pinned.
    fn choose_victims(servers: &mut Servers) -> bool {
        let mut all: Vec<(u64, u64, Key)> = servers
            .map
            .iter()
            .filter(|(_, e)| !e.pinned)
            .map(|(k, e)| (e.handle.last_active.load(Relaxed), e.id, *k))
            .collect();
        if all.is_empty() {
            return false;
        }
        let n = (all.len() / 16).max(1);
        if n < all.len() {
            all.select_nth_unstable(n - 1);
            all.truncate(n);
        }
        all.sort_unstable_by(|a, b| b.cmp(a));
        servers.victims = all.into_iter().map(|(seen, id, k)| (k, id, seen)).collect();
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
            match servers.map.get(&(proto, port)) {
                Some(e) if e.id == id && !e.pinned => {
                    servers.map.remove(&(proto, port));
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
