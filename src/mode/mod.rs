//! Mode handlers: what honeytrap does with one accepted connection or UDP session.
//!
//! [`tcp`] and [`udp`] pick the handler by the port's mode: normal mode
//! ([`normal`]), or mirror and proxy mode ([`relayed`]: the target from [`mirror`] or
//! [`proxy`], the limits of [`guard`], the copying of [`relay`]), which fall back to
//! normal mode when they cannot relay.

pub mod builtin;
pub mod guard;
pub mod mirror;
pub mod normal;
pub mod proxy;
pub mod relay;
pub mod relayed;
pub mod splice;

use crate::attack::{Captured, Mode};
use crate::context::Context;
use normal::{DatagramPeer, SessionSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Run one TCP connection to its end in its port's mode.
pub async fn tcp(
    ctx: Arc<Context>,
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
) -> Captured {
    match spec.handling.mode {
        Mode::Mirror | Mode::Proxy => relayed::tcp(ctx, stream, local, remote, spec).await,
        _ => normal::tcp(stream, local, remote, spec, ctx.hard_stop.clone()).await,
    }
}

/// Run one UDP session to its end in its port's mode: `first` started it, later
/// datagrams arrive on `rx`, replies go through `peer`.
pub async fn udp<P: DatagramPeer>(
    ctx: Arc<Context>,
    first: Vec<u8>,
    rx: mpsc::Receiver<Vec<u8>>,
    peer: P,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
) -> Captured {
    match spec.handling.mode {
        Mode::Mirror | Mode::Proxy => relayed::udp(ctx, first, rx, peer, local, remote, spec).await,
        _ => {
            let stop = ctx.hard_stop.clone();
            normal::udp(first, rx, peer, local, remote, spec, stop).await
        }
    }
}
