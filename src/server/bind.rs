//! Socket creation for dynamic servers: SO_REUSEADDR, IPV6_V6ONLY for `::` so IPv4
//! and IPv6 can be bound side by side, and the configured backlog. Only the
//! kernel-visible part: the sockets are registered with the runtime later, by the
//! server's task (see the port table), and the kernel already accepts connections
//! and queues datagrams for them meanwhile.

use crate::proto::Protocol;
use nix::sys::socket::{self as nsock, sockopt};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};

/// Bind a listening TCP socket (non-blocking).
pub fn tcp_listener(ip: IpAddr, port: u16, backlog: u32) -> io::Result<std::net::TcpListener> {
    let sock = socket(ip, port, Protocol::Tcp)?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock.into())
}

/// Bind a UDP socket (non-blocking) that reports each datagram's destination
/// address (IP_PKTINFO / IPV6_RECVPKTINFO), asked for before the first datagram
/// can arrive, so replies leave from the address the peer wrote to.
pub fn udp_socket(ip: IpAddr, port: u16) -> io::Result<std::net::UdpSocket> {
    let sock = socket(ip, port, Protocol::Udp)?;
    if ip.is_ipv4() {
        nsock::setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)?;
    } else {
        nsock::setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    Ok(sock.into())
}

fn socket(ip: IpAddr, port: u16, proto: Protocol) -> io::Result<Socket> {
    let addr = SocketAddr::new(ip, port);
    let (ty, p) = match proto {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
    };
    // Non-blocking and close-on-exec from socket(2) itself: fewer system calls on
    // the nfqueue monitor's verdict path.
    let sock = Socket::new(Domain::for_address(addr), ty.nonblocking(), Some(p))?;
    sock.set_reuse_address(true)?;
    if ip.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Grow the process's descriptor table now to hold `n` descriptors (at most the
/// soft RLIMIT_NOFILE), so it does not grow while the servers' sockets are being
/// created. Linux doubles the table when a descriptor beyond it is needed and, in
/// a process with several threads, waits for an RCU grace period each time
/// (`expand_fdtable` in fs/file.c: milliseconds on a busy host), meanwhile every
/// thread that allocates a descriptor waits too. On the nfqueue monitor's verdict
/// path that stalls every queued attempt, several times in a fresh process's first
/// burst. The table never shrinks, so this is paid once, at start. Returns the
/// size reserved.
pub fn reserve_descriptors(n: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let n = n.min(usize::try_from(soft).unwrap_or(usize::MAX));
    if n < 2 {
        return 0;
    }
    // F_DUPFD takes the lowest free descriptor >= n - 1: the table is grown to
    // cover it. The copy is closed at once. Any open standard stream will do.
    let min = libc::c_int::try_from(n - 1).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl duplicates a descriptor (and fails harmlessly if it is closed);
    // the copy is ours and closed right away.
    let Some(fd) = (0..3)
        .map(|std| unsafe { libc::fcntl(std, libc::F_DUPFD_CLOEXEC, min) })
        .find(|&fd| fd >= 0)
    else {
        return 0;
    };
    // SAFETY: `fd` was just created by us.
    unsafe { libc::close(fd) };
    n
}
