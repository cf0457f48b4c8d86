//! Mirror and proxy sessions: decide the target, pass the guards, open the second
//! connection and relay; whenever that is not possible, serve the session in normal
//! mode instead. Either way the record names the mode, the second connection and
//! the fallback, if any.

use super::guard::RelayPermit;
use super::normal::{self, DatagramPeer, Resume, SessionSpec};
use super::relay::{self, Downstream, RelayLimits, Upstream};
use crate::attack::{Captured, Fallback, Mode, RelayRecord};
use crate::context::Context;
use crate::limit_warn;
use crate::proto::Protocol;
use crate::stats::Stats;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A relay ready to run.
struct Ready {
    up: Upstream,
    _permit: RelayPermit,
}

/// The record of the second connection before it is tried.
fn blank_record(spec: &SessionSpec, proto: Protocol, local: SocketAddr) -> RelayRecord {
    let h = &spec.handling;
    let proxy = h.proxy.as_deref().filter(|_| h.mode == Mode::Proxy);
    RelayRecord {
        kind: h.mode,
        map: proxy.map(|p| p.name.clone()),
        target_host: proxy.map(|p| p.host.clone()).unwrap_or_default(),
        target_ip: None,
        target_port: proxy.and_then(|p| p.port).unwrap_or(local.port()),
        target_protocol: proxy.and_then(|p| p.protocol).unwrap_or(proto),
        local: None,
        bytes_sent: 0,
        bytes_received: 0,
        received: None,
        fallback: None,
    }
}

/// Target, guards and the second connection, filling `record` as far as it gets.
async fn prepare(
    ctx: &Context,
    spec: &SessionSpec,
    proto: Protocol,
    local: SocketAddr,
    remote: SocketAddr,
    record: &mut RelayRecord,
) -> Result<Ready, Fallback> {
    let cfg = &spec.relay;
    let addr = match spec.handling.proxy.as_deref() {
        Some(map) if record.kind == Mode::Proxy => {
            super::proxy::target(map, local, cfg.connect_timeout).await?
        }
        _ => {
            let a = super::mirror::target(&ctx.relays, cfg, proto, local, remote);
            if let Ok(a) = a {
                record.target_host = a.ip().to_string();
            } else {
                record.target_host = super::guard::canonical(remote.ip()).to_string();
            }
            a?
        }
    };
    record.target_ip = Some(addr.ip());
    record.target_port = addr.port();
    let permit = ctx.relays.admit(remote.ip(), cfg)?;
    let up = connect(addr, record.target_protocol, cfg.connect_timeout).await?;
    record.local = up.local_addr().ok();
    Ok(Ready {
        up,
        _permit: permit,
    })
}

/// Open the second connection: TCP within `wait`, or a UDP socket connected to
/// `addr` (no handshake: a closed UDP port shows later, as a refusal).
async fn connect(addr: SocketAddr, proto: Protocol, wait: Duration) -> Result<Upstream, Fallback> {
    match proto {
        Protocol::Tcp => match timeout(wait, TcpStream::connect(addr)).await {
            Err(_) => Err(Fallback::Timeout),
            Ok(Err(e)) => Err(connect_error(&e)),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(Upstream::Tcp(s))
            }
        },
        Protocol::Udp => {
            let any: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(any).await.map_err(|e| connect_error(&e))?;
            s.connect(addr).await.map_err(|e| connect_error(&e))?;
            Ok(Upstream::Udp(s))
        }
    }
}

fn connect_error(e: &io::Error) -> Fallback {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::ConnectionRefused, _) => Fallback::Refused,
        (io::ErrorKind::TimedOut, _) => Fallback::Timeout,
        (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EADDRNOTAVAIL)) => {
            Fallback::Unreachable
        }
        _ => Fallback::Error,
    }
}

/// Count and log a fallback.
fn note_fallback(ctx: &Context, spec: &SessionSpec, remote: SocketAddr, why: Fallback) {
    let s = &ctx.stats;
    Stats::inc(&s.relay_fallbacks);
    match why {
        Fallback::RateLimited => {
            Stats::inc(&s.limit_relay_rate);
            limit_warn!(ctx.throttle, "relay_rate", %remote, rate = spec.relay.source_rate, "relay refused, normal mode instead: relay.source_rate exceeded");
        }
        Fallback::RelayCap => {
            Stats::inc(&s.limit_max_relays);
            limit_warn!(ctx.throttle, "max_relays", %remote, max = spec.relay.max_relays, "relay refused, normal mode instead: relay.max_relays reached");
        }
        Fallback::ForbiddenAddress => {
            Stats::inc(&s.mirror_forbidden);
            limit_warn!(ctx.throttle, "mirror_forbidden", %remote, "not mirrored, normal mode instead: the address is one mirror mode never connects to (see relay.mirror_private)");
        }
        other => {
            tracing::debug!(%remote, fallback = ?other, "relay not possible, normal mode instead")
        }
    }
}

fn limits(
    spec: &SessionSpec,
    start: chrono::DateTime<chrono::Utc>,
    udp_ratio: Option<f64>,
) -> RelayLimits {
    RelayLimits {
        idle_timeout: spec.relay.idle_timeout,
        deadline: normal::session_deadline(spec, start),
        udp_reply_ratio: udp_ratio,
    }
}

/// Put a finished relay into the record. True when the target refused before it
/// sent anything: the session then falls back to normal mode (counted, recorded).
fn ended(
    ctx: &Context,
    spec: &SessionSpec,
    remote: SocketAddr,
    record: &mut RelayRecord,
    end: &relay::RelayEnd,
) -> bool {
    record.bytes_sent = end.bytes_sent;
    record.bytes_received = end.bytes_received;
    if end.target_refused {
        note_fallback(ctx, spec, remote, Fallback::Refused);
        record.fallback = Some(Fallback::Refused);
        record.local = None;
    }
    end.target_refused
}

/// A mirror or proxy TCP connection.
pub async fn tcp(
    ctx: Arc<Context>,
    mut stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
) -> Captured {
    let mode = spec.handling.mode;
    let stop = ctx.hard_stop.clone();
    let mut record = blank_record(&spec, Protocol::Tcp, local);
    let ready = prepare(&ctx, &spec, Protocol::Tcp, local, remote, &mut record).await;
    let mut captured = match ready {
        Err(why) => {
            note_fallback(&ctx, &spec, remote, why);
            record.fallback = Some(why);
            normal::tcp(stream, local, remote, spec, stop).await
        }
        Ok(Ready { mut up, _permit }) => {
            Stats::inc(&ctx.stats.relays);
            let mut r = Resume::new(&spec);
            let l = limits(&spec, r.start, None);
            let end = relay::run::<NoPeer>(
                Downstream::Tcp(&mut stream),
                None,
                &mut up,
                &mut r.transcript,
                &mut r.intake,
                &spec,
                l,
                &stop,
            )
            .await;
            drop(up);
            drop(_permit);
            if ended(&ctx, &spec, remote, &mut record, &end) {
                normal::tcp_resume(stream, local, remote, spec, stop, r).await
            } else {
                let _ = timeout(Duration::from_millis(200), stream.shutdown()).await;
                spec.captured(
                    Protocol::Tcp,
                    local,
                    remote,
                    r.start,
                    r.transcript,
                    0,
                    end.reason,
                )
            }
        }
    };
    captured.mode = mode;
    captured.relay = Some(Box::new(record));
    captured
}

/// A mirror or proxy UDP session.
pub async fn udp<P: DatagramPeer>(
    ctx: Arc<Context>,
    first: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    peer: P,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
) -> Captured {
    let mode = spec.handling.mode;
    let stop = ctx.hard_stop.clone();
    let mut record = blank_record(&spec, Protocol::Udp, local);
    let ready = prepare(&ctx, &spec, Protocol::Udp, local, remote, &mut record).await;
    let mut captured = match ready {
        Err(why) => {
            note_fallback(&ctx, &spec, remote, why);
            record.fallback = Some(why);
            normal::udp(first, rx, peer, local, remote, spec, stop).await
        }
        Ok(Ready { mut up, _permit }) => {
            Stats::inc(&ctx.stats.relays);
            // Mirror replies go to the address that sent the datagrams, which may be
            // spoofed: never more than it sent. Proxy: as configured.
            let ratio = if mode == Mode::Mirror {
                1.0
            } else {
                spec.relay.udp_reply_ratio
            };
            let mut r = Resume::new(&spec);
            let l = limits(&spec, r.start, Some(ratio));
            let end = relay::run(
                Downstream::Udp {
                    rx: &mut rx,
                    peer: &peer,
                },
                Some(&first),
                &mut up,
                &mut r.transcript,
                &mut r.intake,
                &spec,
                l,
                &stop,
            )
            .await;
            drop(up);
            drop(_permit);
            if ended(&ctx, &spec, remote, &mut record, &end) {
                normal::udp_resume(None, rx, peer, local, remote, spec, stop, r).await
            } else {
                peer.close();
                // Anything that arrived while the relay was ending belongs to it.
                while let Ok(d) = rx.try_recv() {
                    if r.intake.take(&mut r.transcript, &d).is_err() {
                        break;
                    }
                }
                spec.captured(
                    Protocol::Udp,
                    local,
                    remote,
                    r.start,
                    r.transcript,
                    0,
                    end.reason,
                )
            }
        }
    };
    captured.mode = mode;
    captured.relay = Some(Box::new(record));
    captured
}

/// The UDP peer type of a TCP relay, which has none.
pub(super) struct NoPeer;

impl DatagramPeer for NoPeer {
    async fn send(&self, _: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn close(&self) {}
}
