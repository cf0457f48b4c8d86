//! A dynamic UDP server: one socket per port, datagrams demultiplexed by peer into
//! sessions. Each session is one attack, replies leave from the address the peer
//! wrote to (IP_PKTINFO), and a session never sends more bytes than it received.

use super::port_table::{PortTable, ServerHandle};
use crate::attack::Mode;
use crate::context::Context;
use crate::mode::normal::DatagramPeer;
use crate::proto::Protocol;
use crate::stats::Stats;
use nix::sys::socket::{
    self as nsock, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams queued for one session before further ones are dropped (and counted).
pub const SESSION_QUEUE: usize = 64;

type Sessions = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Receive on `socket` until the server is cancelled (run in the server's task).
/// The socket comes from [`super::bind::udp_socket`], which asks for each
/// datagram's destination address (IP_PKTINFO) before any can arrive.
pub async fn serve(
    table: Arc<PortTable>,
    socket: UdpSocket,
    handle: ServerHandle,
) -> io::Result<()> {
    let bound = socket.local_addr()?;
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = handle.cancel.cancelled() => return Ok(()),
            r = socket.async_io(Interest::READABLE, || recv(&socket, &mut buf)) => r,
        };
        match received {
            Ok((n, peer, dst)) => {
                handle.touch();
                let local = SocketAddr::new(dst.unwrap_or(bound.ip()), bound.port());
                on_datagram(
                    &table,
                    &socket,
                    &sessions,
                    &handle,
                    buf[..n].to_vec(),
                    local,
                    peer,
                );
            }
            Err(e) => tracing::debug!(error = %e, port = bound.port(), "udp receive error"),
        }
    }
}

fn on_datagram(
    table: &Arc<PortTable>,
    socket: &Arc<UdpSocket>,
    sessions: &Sessions,
    handle: &ServerHandle,
    data: Vec<u8>,
    local: SocketAddr,
    peer: SocketAddr,
) {
    let ctx = table.context();
    let mut map = sessions.lock().unwrap();
    let data = match map.get(&peer) {
        Some(tx) => match tx.try_send(data) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Stats::inc(&ctx.stats.udp_datagrams_dropped);
                crate::limit_warn!(ctx.throttle, "udp_session_queue", %peer, "UDP datagram dropped: the session's queue of 64 datagrams is full");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(d)) => d,
        },
        None => data,
    };
    let out = || Peer {
        socket: Arc::clone(socket),
        sessions: Arc::clone(sessions),
        peer,
        local: local.ip(),
    };
    // The lock is held until the new session is registered, so a datagram that
    // follows at once joins it and the session cannot unregister itself before.
    if let Some(tx) = start_session(ctx, data, local, peer, &handle.monitor, out) {
        map.insert(peer, tx);
    }
}

/// Start a UDP session for the first datagram `data` that `peer` sent to `local`,
/// attributed to `monitor`: policy lookup by `local`'s port (ignore: nothing),
/// admission limits, then a session in the port's mode that replies through the
/// peer `out` makes. Returns the sender for the peer's later datagrams, or `None`
/// if the port is ignored or the session refused. Shared by the dynamic servers and
/// the `tproxy` monitor.
pub fn start_session<P, F>(
    ctx: &Arc<Context>,
    data: Vec<u8>,
    local: SocketAddr,
    peer: SocketAddr,
    monitor: &Arc<str>,
    out: F,
) -> Option<mpsc::Sender<Vec<u8>>>
where
    P: DatagramPeer + 'static,
    F: FnOnce() -> P,
{
    let cfg = ctx.config();
    if cfg.policy.mode(Protocol::Udp, local.port()) == Mode::Ignore {
        return None;
    }
    Stats::inc(&ctx.stats.connections);
    ctx.stats.connections_by_monitor.inc(&[monitor]);
    let permit = super::admit(ctx, &cfg, Protocol::Udp, local.port(), peer)?;
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let spec = super::session_spec(ctx, &cfg, Protocol::Udp, local.port(), monitor);
    let out = out();
    let ctx2 = Arc::clone(ctx);
    ctx.sessions.spawn(async move {
        let captured = crate::mode::udp(Arc::clone(&ctx2), data, rx, out, local, peer, spec).await;
        drop(permit);
        let t = &captured.transcript;
        (ctx2.stats).session_ended(captured.mode.as_str(), "udp", t.bytes_in, t.bytes_out);
        ctx2.recorder.submit(captured);
    });
    Some(tx)
}

/// One peer of a UDP server.
struct Peer {
    socket: Arc<UdpSocket>,
    sessions: Sessions,
    peer: SocketAddr,
    local: IpAddr,
}

impl DatagramPeer for Peer {
    async fn send(&self, data: &[u8]) -> io::Result<()> {
        self.socket
            .async_io(Interest::WRITABLE, || {
                send(&self.socket, data, self.peer, self.local)
            })
            .await
    }

    fn close(&self) {
        self.sessions.lock().unwrap().remove(&self.peer);
    }
}

/// recvmsg with the datagram's destination address.
fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = nsock::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let peer = source_of(msg.address)?;
    let mut dst = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    dst = Some(IpAddr::from(u32::from_be(i.ipi_addr.s_addr).to_be_bytes()));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    dst = Some(IpAddr::from(i.ipi6_addr.s6_addr))
                }
                _ => {}
            }
        }
    }
    Ok((msg.bytes, peer, dst))
}

/// sendmsg from `local` to `peer`.
fn send(socket: &UdpSocket, data: &[u8], peer: SocketAddr, local: IpAddr) -> io::Result<()> {
    let iov = [IoSlice::new(data)];
    let addr = SockaddrStorage::from(peer);
    let result = match local {
        IpAddr::V4(ip) if !ip.is_unspecified() => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            nsock::sendmsg(
                socket.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&addr),
            )
        }
        IpAddr::V6(ip) if !ip.is_unspecified() => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            nsock::sendmsg(
                socket.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&addr),
            )
        }
        _ => nsock::sendmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::empty(),
            Some(&addr),
        ),
    };
    result.map(|_| ()).map_err(io::Error::from)
}

/// The source address of a received datagram as a std address.
pub fn source_of(addr: Option<SockaddrStorage>) -> io::Result<SocketAddr> {
    addr.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
            })
    })
    .ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without source address",
        )
    })
}
