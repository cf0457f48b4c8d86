//! The `tproxy` monitor: iptables TPROXY rules (which the administrator adds, or
//! honeytrap itself with `firewall.mode = "auto"`, see `crate::firewall`) divert
//! every new TCP connection and every UDP datagram to one transparent TCP listener
//! and one transparent UDP socket on `monitor.tproxy.port`, bound on `0.0.0.0` and
//! `::`. Nothing is bound per port and the port table starts no server: the kernel
//! hands over the flow itself, so the attacker's first try is caught on any port.
//!
//! The original destination comes from the socket: `local_addr()` of the accepted
//! TCP stream, and for UDP the `IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR` ancillary data
//! of each datagram. TCP connections then take the dynamic servers' path
//! ([`tcp::on_connection`]: policy by the original destination port, admission
//! limits, the port's mode, the record). UDP datagrams are demultiplexed by (peer,
//! original destination) into sessions ([`udp::start_session`]); replies leave from
//! the original destination address and port, through a transparent UDP socket bound
//! to it (IP_TRANSPARENT allows a non-local address), shared by the sessions of that
//! destination and closed with the last of them.
//!
//! A port in ignore mode: the TCP connection is reset at once (SO_LINGER 0) and the
//! UDP datagram dropped, without a record. The handshake has completed by then, so
//! the firewall rules should exclude ignored ports to behave as if honeytrap were
//! absent there.

use super::Monitor;
use crate::attack::Mode;
use crate::context::Context;
use crate::limit_warn;
use crate::mode::normal::DatagramPeer;
use crate::proto::Protocol;
use crate::server::accept::Acceptor;
use crate::server::{tcp, udp, PortTable};
use nix::sys::socket::{self as nsock, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Name of this monitor (in events: `honeytrap.monitor`).
pub const NAME: &str = "tproxy";

/// What the monitor saw, logged at info when it stops.
#[derive(Default)]
struct Counters {
    tcp_connections: AtomicU64,
    udp_datagrams: AtomicU64,
    udp_sessions: AtomicU64,
    ignored: AtomicU64,
    reply_sockets: AtomicU64,
    /// Datagrams without an original destination (sent straight to the port).
    not_diverted: AtomicU64,
    errors: AtomicU64,
}

/// The `tproxy` monitor.
pub struct TproxyMonitor {
    counters: Arc<Counters>,
    /// `[monitor.tproxy]` as started (every option needs a restart).
    started: Option<crate::config::TproxyConfig>,
}

impl Default for TproxyMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl TproxyMonitor {
    pub fn new() -> TproxyMonitor {
        TproxyMonitor {
            counters: Arc::new(Counters::default()),
            started: None,
        }
    }
}

/// Set IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6) on `sock`.
fn set_transparent(sock: &Socket, v6: bool) -> io::Result<()> {
    if !v6 {
        return sock.set_ip_transparent(true);
    }
    let one: libc::c_int = 1;
    // SAFETY: passes a valid int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            std::ptr::addr_of!(one).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A transparent, non-blocking socket bound to `addr` (SO_REUSEADDR; IPV6_V6ONLY
/// for IPv6, so both families can be bound side by side).
fn transparent_socket(addr: SocketAddr, proto: Protocol) -> io::Result<Socket> {
    let (ty, p) = match proto {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
    };
    let sock = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    set_transparent(&sock, addr.is_ipv6())?;
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// The transparent listener and UDP socket for one address family.
fn open(ip: IpAddr, port: u16, backlog: u32) -> io::Result<(Acceptor, UdpSocket)> {
    let addr = SocketAddr::new(ip, port);
    let tcp = transparent_socket(addr, Protocol::Tcp)?;
    tcp.listen(backlog.min(i32::MAX as u32) as i32)?;
    let tcp = Acceptor::new(tcp.into())?;
    let udp = transparent_socket(addr, Protocol::Udp)?;
    if ip.is_ipv4() {
        nsock::setsockopt(&udp.as_fd(), sockopt::Ipv4OrigDstAddr, &true)?;
    } else {
        nsock::setsockopt(&udp.as_fd(), sockopt::Ipv6OrigDstAddr, &true)?;
    }
    let udp = UdpSocket::from_std(udp.into())?;
    Ok((tcp, udp))
}

fn sockaddr_in(sa: &libc::sockaddr_in) -> SocketAddr {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
    .into()
}

fn sockaddr_in6(sa: &libc::sockaddr_in6) -> SocketAddr {
    SocketAddrV6::new(
        Ipv6Addr::from(sa.sin6_addr.s6_addr),
        u16::from_be(sa.sin6_port),
        sa.sin6_flowinfo,
        sa.sin6_scope_id,
    )
    .into()
}

/// recvmsg with the datagram's original destination (None: not diverted by TPROXY).
fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6);
    let msg = nsock::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let peer = crate::server::udp::source_of(msg.address)?;
    let mut dst = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4OrigDstAddr(sa) => dst = Some(sockaddr_in(&sa)),
                ControlMessageOwned::Ipv6OrigDstAddr(sa) => dst = Some(sockaddr_in6(&sa)),
                _ => {}
            }
        }
    }
    Ok((msg.bytes, peer, dst))
}

// ---------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------

async fn tcp_loop(
    ctx: Arc<Context>,
    mut listener: Acceptor,
    monitor: Arc<str>,
    counters: Arc<Counters>,
) {
    let stop = ctx.stop_accepting.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                counters.tcp_connections.fetch_add(1, Relaxed);
                // local_addr of a diverted connection is its original destination.
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                if ctx.config().policy.mode(Protocol::Tcp, local.port()) == Mode::Ignore {
                    counters.ignored.fetch_add(1, Relaxed);
                    // Reset rather than close gracefully: the nearest to "nobody here".
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    tracing::debug!(%local, %remote, "tproxy: ignored port, connection reset");
                    continue;
                }
                tracing::debug!(%local, %remote, "tproxy: new TCP connection");
                tcp::on_connection(&ctx, stream, remote, &monitor);
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                counters.errors.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "tproxy_accept_error", error = %e, "tproxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------

/// Sessions by (peer, original destination).
type Sessions = Arc<Mutex<HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Vec<u8>>>>>;

/// Reply sockets by original destination, shared by that destination's sessions;
/// a socket closes when its last session ends.
type ReplySockets = Arc<Mutex<HashMap<SocketAddr, Weak<UdpSocket>>>>;

/// State shared by the UDP receive loops (IPv4 and IPv6).
struct Udp {
    ctx: Arc<Context>,
    monitor: Arc<str>,
    counters: Arc<Counters>,
    sessions: Sessions,
    replies: ReplySockets,
}

impl Udp {
    /// The transparent socket bound to `dst` that replies leave from: the cached
    /// one, or a new one.
    fn reply_socket(&self, dst: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let mut map = self.replies.lock().unwrap();
        if let Some(s) = map.get(&dst).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let sock = transparent_socket(dst, Protocol::Udp)?;
        let sock = Arc::new(UdpSocket::from_std(sock.into())?);
        self.counters.reply_sockets.fetch_add(1, Relaxed);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(dst, Arc::downgrade(&sock));
        Ok(sock)
    }

    fn on_datagram(&self, data: Vec<u8>, dst: SocketAddr, peer: SocketAddr) {
        let ctx = &self.ctx;
        let key = (peer, dst);
        let mut map = self.sessions.lock().unwrap();
        let data = match map.get(&key) {
            Some(tx) => match tx.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    crate::stats::Stats::inc(&ctx.stats.udp_datagrams_dropped);
                    limit_warn!(ctx.throttle, "udp_session_queue", %peer, "UDP datagram dropped: the session's queue of 64 datagrams is full");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(d)) => d,
            },
            None => data,
        };
        if ctx.config().policy.mode(Protocol::Udp, dst.port()) == Mode::Ignore {
            self.counters.ignored.fetch_add(1, Relaxed);
            return;
        }
        // Made once the session is admitted. A reply socket that cannot be made
        // costs the replies, not the record.
        let out = || {
            ReplyPeer {
            socket: self.reply_socket(dst).map_err(|e| {
                self.counters.errors.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "tproxy_reply_socket", %dst, error = %e, "tproxy: cannot bind a transparent UDP socket to the original destination; the session gets no replies");
                e.kind()
            }),
            sessions: Arc::clone(&self.sessions),
            key,
        }
        };
        if let Some(tx) = udp::start_session(ctx, data, dst, peer, &self.monitor, out) {
            self.counters.udp_sessions.fetch_add(1, Relaxed);
            map.insert(key, tx);
        }
    }
}

/// One UDP session's way back: the reply socket of its original destination.
struct ReplyPeer {
    socket: Result<Arc<UdpSocket>, io::ErrorKind>,
    sessions: Sessions,
    key: (SocketAddr, SocketAddr),
}

impl DatagramPeer for ReplyPeer {
    async fn send(&self, data: &[u8]) -> io::Result<()> {
        match &self.socket {
            Ok(s) => s.send_to(data, self.key.0).await.map(|_| ()),
            Err(kind) => Err(io::Error::from(*kind)),
        }
    }

    fn close(&self) {
        self.sessions.lock().unwrap().remove(&self.key);
    }
}

async fn udp_loop(udp: Arc<Udp>, socket: UdpSocket) {
    let stop = udp.ctx.stop_accepting.clone();
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.async_io(Interest::READABLE, || recv(&socket, &mut buf)) => r,
        };
        match received {
            Ok((n, peer, Some(dst))) => {
                udp.counters.udp_datagrams.fetch_add(1, Relaxed);
                udp.on_datagram(buf[..n].to_vec(), dst, peer);
            }
            Ok((_, peer, None)) => {
                udp.counters.not_diverted.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "tproxy: datagram without original destination (not diverted by TPROXY) dropped");
            }
            Err(e) => tracing::debug!(error = %e, "tproxy: udp receive error"),
        }
    }
}

// ---------------------------------------------------------------------------------
// The monitor
// ---------------------------------------------------------------------------------

impl Monitor for TproxyMonitor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Vec<caps::Capability> {
        // IP_TRANSPARENT needs CAP_NET_ADMIN: the sockets are made after the
        // privilege drop, and the UDP reply sockets all along. The port may be
        // below 1024.
        vec![
            caps::Capability::CAP_NET_ADMIN,
            caps::Capability::CAP_NET_BIND_SERVICE,
        ]
    }

    fn start(&mut self, table: &Arc<PortTable>) -> anyhow::Result<()> {
        let ctx = Arc::clone(table.context());
        let cfg = ctx.config().config.monitor.tproxy.clone();
        let backlog = ctx.config().config.network.backlog;
        let monitor: Arc<str> = Arc::from(NAME);
        let udp = Arc::new(Udp {
            ctx: Arc::clone(&ctx),
            monitor: Arc::clone(&monitor),
            counters: Arc::clone(&self.counters),
            sessions: Arc::default(),
            replies: Arc::default(),
        });
        let mut families = Vec::new();
        for ip in [
            IpAddr::from(Ipv4Addr::UNSPECIFIED),
            Ipv6Addr::UNSPECIFIED.into(),
        ] {
            match open(ip, cfg.port, backlog) {
                Ok((l, s)) => {
                    tokio::spawn(tcp_loop(
                        Arc::clone(&ctx),
                        l,
                        Arc::clone(&monitor),
                        Arc::clone(&self.counters),
                    ));
                    tokio::spawn(udp_loop(Arc::clone(&udp), s));
                    families.push(ip.to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    anyhow::bail!("monitor.tproxy: cannot make a transparent socket on {ip} port {} (IP_TRANSPARENT needs CAP_NET_ADMIN): {e}", cfg.port)
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    anyhow::bail!("monitor.tproxy: port {} is in use on {ip}: {e}", cfg.port)
                }
                Err(e) if ip.is_ipv6() && !families.is_empty() => {
                    tracing::warn!(error = %e, "tproxy: cannot bind on :: (IPv6 disabled?); IPv4 only");
                }
                Err(e) => anyhow::bail!(
                    "monitor.tproxy: cannot bind the transparent sockets on {ip} port {}: {e}",
                    cfg.port
                ),
            }
        }
        tracing::info!(
            port = cfg.port,
            addresses = families.join(", "),
            "taking TCP connections and UDP datagrams diverted by TPROXY rules; nothing is bound per port"
        );
        self.started = Some(cfg);
        Ok(())
    }

    fn reload(&mut self, table: &Arc<PortTable>) {
        let cfg = table.context().config().config.monitor.tproxy.clone();
        if self.started.as_ref().is_some_and(|old| *old != cfg) {
            tracing::warn!(
                "SIGHUP: changes to [monitor.tproxy] need a restart; they are kept as they were"
            );
        }
    }
}

impl Drop for TproxyMonitor {
    fn drop(&mut self) {
        if self.started.is_none() {
            return;
        }
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Relaxed);
        tracing::info!(
            tcp_connections = g(&c.tcp_connections),
            udp_datagrams = g(&c.udp_datagrams),
            udp_sessions = g(&c.udp_sessions),
            ignored = g(&c.ignored),
            reply_sockets = g(&c.reply_sockets),
            not_diverted = g(&c.not_diverted),
            errors = g(&c.errors),
            "tproxy monitor stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_conversions() {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 5060u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([10, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        assert_eq!(sockaddr_in(&sa), "10.0.0.1:5060".parse().unwrap());
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut sa6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa6.sin6_port = 80u16.to_be();
        sa6.sin6_addr.s6_addr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(sockaddr_in6(&sa6), "[fd00::1]:80".parse().unwrap());
    }
}
