//! Socket creation for dynamic servers: SO_REUSEADDR, IPV6_V6ONLY for `::` so IPv4
//! and IPv6 can be bound side by side, and the configured backlog.

use crate::proto::Protocol;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};

/// Bind a listening TCP socket.
pub fn tcp_listener(ip: IpAddr, port: u16, backlog: u32) -> io::Result<tokio::net::TcpListener> {
    let sock = socket(ip, port, Protocol::Tcp)?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// Bind a UDP socket.
pub fn udp_socket(ip: IpAddr, port: u16) -> io::Result<tokio::net::UdpSocket> {
    let sock = socket(ip, port, Protocol::Udp)?;
    tokio::net::UdpSocket::from_std(sock.into())
}

fn socket(ip: IpAddr, port: u16, proto: Protocol) -> io::Result<Socket> {
    let addr = SocketAddr::new(ip, port);
    let (ty, p) = match proto {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
    };
    let sock = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    sock.set_reuse_address(true)?;
    if ip.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}
