//! Normal mode, the poor man's service emulator: record what the peer sends and,
//! after each `read_timeout` of silence, send the port's canned response, up to
//! `max_responses` times; then close the idle session. Services that speak first get
//! the response right after connect (greeting).

use crate::attack::{Captured, Direction, EndReason, Mode, Transcript};
use crate::config::PortHandling;
use crate::limit_warn;
use crate::server::limits::{BufferBudget, BufferLease};
use crate::stats::{Stats, Throttle};
use chrono::Utc;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait for the peer to take a response before the session is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest single read from a TCP peer.
const READ_CHUNK: usize = 16 * 1024;

/// What one normal-mode session needs to know, fixed when it starts.
#[derive(Clone)]
pub struct SessionSpec {
    pub handling: PortHandling,
    pub read_timeout: Duration,
    pub session_timeout: Duration,
    pub read_limit: u64,
    /// `[relay]` (mirror and proxy mode).
    pub relay: crate::config::RelayConfig,
    /// The per-read analyzers.
    pub per_read: crate::analysis::registry::PerRead,
    pub sensor: Arc<str>,
    pub monitor: Arc<str>,
    /// Memory shared by all sessions (`limits.max_buffered`).
    pub buffers: Arc<BufferBudget>,
    pub stats: Arc<Stats>,
    pub throttle: Arc<Throttle>,
}

/// Takes incoming bytes into a transcript within `read_limit` and the shared
/// buffer budget.
pub struct Intake {
    /// Per-read analyzers, run on each chunk.
    per_read: crate::analysis::registry::PerRead,
    lease: BufferLease,
    limit: u64,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
}

impl Intake {
    pub fn new(spec: &SessionSpec) -> Intake {
        Intake {
            per_read: std::sync::Arc::clone(&spec.per_read),
            lease: BufferLease::new(&spec.buffers),
            limit: spec.read_limit,
            stats: Arc::clone(&spec.stats),
            throttle: Arc::clone(&spec.throttle),
        }
    }

    /// Record `data` relayed to the attacker (mirror and proxy mode): it counts
    /// against `read_limit` and the buffer budget like incoming data. What fits
    /// under `read_limit` is recorded; Err says why the session must end.
    pub fn take_out(&mut self, t: &mut Transcript, data: &[u8]) -> Result<(), EndReason> {
        let room = self
            .limit
            .saturating_sub(t.bytes_out)
            .min(data.len() as u64);
        if !self.lease.grow(room) {
            Stats::inc(&self.stats.limit_buffered);
            limit_warn!(self.throttle, "max_buffered", "session ended: limits.max_buffered reached (all sessions together hold too much data)");
            return Err(EndReason::BufferLimit);
        }
        if room > 0 {
            t.push_out(&data[..room as usize]);
        }
        if t.bytes_out >= self.limit {
            return Err(self.read_limit_reached());
        }
        Ok(())
    }

    /// Record what `fill` writes straight into the transcript, at most `max` bytes
    /// going `dir` (mirror and proxy mode, both directions; no intermediate buffer).
    /// Limits as [`take`](Self::take) and [`take_out`](Self::take_out): at most
    /// what fits under `read_limit` is asked for, and the bytes count against the
    /// buffer budget. Returns the bytes kept (0: `fill` found the end of the
    /// stream) and why the session must end, if it must.
    pub fn take_with(
        &mut self,
        t: &mut Transcript,
        dir: Direction,
        max: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> io::Result<usize>,
    ) -> io::Result<(usize, Result<(), EndReason>)> {
        let before = match dir {
            Direction::In => t.bytes_in,
            Direction::Out => t.bytes_out,
        };
        let room = self.limit.saturating_sub(before).min(max as u64) as usize;
        if room == 0 {
            return Ok((0, Err(self.read_limit_reached())));
        }
        let lease = &mut self.lease;
        let Some(n) = t.push_with(dir, room, fill, |d| lease.grow(d.len() as u64))? else {
            Stats::inc(&self.stats.limit_buffered);
            limit_warn!(self.throttle, "max_buffered", "session ended: limits.max_buffered reached (all sessions together hold too much data)");
            return Ok((0, Err(EndReason::BufferLimit)));
        };
        if dir == Direction::In && n > 0 {
            let Transcript {
                chunks, findings, ..
            } = t;
            let last = &chunks.last().expect("the chunk just kept").data;
            for a in self.per_read.iter() {
                a.on_chunk(before, &last[last.len() - n..], findings);
            }
        }
        if before + n as u64 >= self.limit {
            if dir == Direction::In {
                t.truncated = true;
            }
            return Ok((n, Err(self.read_limit_reached())));
        }
        Ok((n, Ok(())))
    }

    fn read_limit_reached(&self) -> EndReason {
        Stats::inc(&self.stats.limit_read);
        limit_warn!(
            self.throttle,
            "read_limit",
            limit = self.limit,
            "session ended: limits.read_limit reached"
        );
        EndReason::ReadLimit
    }

    /// Record `data` from the attacker; Err says why the session must end.
    pub fn take(&mut self, t: &mut Transcript, data: &[u8]) -> Result<(), EndReason> {
        for a in self.per_read.iter() {
            a.on_chunk(t.bytes_in, data, &mut t.findings);
        }
        let room = self.limit.saturating_sub(t.bytes_in).min(data.len() as u64);
        if !self.lease.grow(room) {
            Stats::inc(&self.stats.limit_buffered);
            limit_warn!(self.throttle, "max_buffered", "session ended: limits.max_buffered reached (all sessions together hold too much data)");
            return Err(EndReason::BufferLimit);
        }
        if t.push_in(data, self.limit) {
            Ok(())
        } else {
            Err(self.read_limit_reached())
        }
    }
}

/// A session's state so far, handed to normal mode when a mirror or proxy session
/// falls back after it began.
pub struct Resume {
    pub start: chrono::DateTime<Utc>,
    pub transcript: Transcript,
    pub intake: Intake,
}

impl Resume {
    /// A session that starts now.
    pub fn new(spec: &SessionSpec) -> Resume {
        Resume {
            start: Utc::now(),
            transcript: Transcript::default(),
            intake: Intake::new(spec),
        }
    }
}

impl SessionSpec {
    #[allow(clippy::too_many_arguments)]
    pub fn captured(
        &self,
        proto: crate::proto::Protocol,
        local: SocketAddr,
        remote: SocketAddr,
        start: chrono::DateTime<Utc>,
        transcript: Transcript,
        sent: u32,
        reason: EndReason,
    ) -> Captured {
        Captured {
            start,
            end: Utc::now(),
            sensor: self.sensor.to_string(),
            monitor: self.monitor.to_string(),
            mode: Mode::Normal,
            protocol: proto,
            local,
            remote,
            transcript,
            responses_sent: sent,
            end_reason: reason,
            relay: None,
        }
    }
}

/// When a session that started at `start` must end (`limits.session_timeout`).
pub fn session_deadline(spec: &SessionSpec, start: chrono::DateTime<Utc>) -> Instant {
    let elapsed = (Utc::now() - start).to_std().unwrap_or_default();
    Instant::now() + spec.session_timeout.saturating_sub(elapsed)
}

/// What waiting for the peer produced.
enum Wait<T> {
    /// Something arrived (or the wait itself failed).
    Input(T),
    /// `read_timeout` passed without input.
    Silence,
    /// The session's hard time limit passed.
    Deadline,
    /// Honeytrap is shutting down and the grace period is over.
    Shutdown,
}

/// Wait for `input` up to `read_timeout`, within the session deadline, with one timer.
async fn wait_for<T>(
    input: impl Future<Output = T>,
    spec: &SessionSpec,
    deadline: Instant,
    hard_stop: &CancellationToken,
) -> Wait<T> {
    let silence = Instant::now() + spec.read_timeout;
    let until = silence.min(deadline);
    tokio::select! {
        biased;
        _ = hard_stop.cancelled() => Wait::Shutdown,
        r = timeout_at(until, input) => match r {
            Ok(v) => Wait::Input(v),
            Err(_) if deadline <= silence => Wait::Deadline,
            Err(_) => Wait::Silence,
        },
    }
}

/// Run one TCP session to its end.
pub async fn tcp(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
    hard_stop: CancellationToken,
) -> Captured {
    let resume = Resume::new(&spec);
    tcp_resume(stream, local, remote, spec, hard_stop, resume).await
}

/// Run a TCP session in normal mode from the state `resume` holds.
pub async fn tcp_resume(
    mut stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
    hard_stop: CancellationToken,
    resume: Resume,
) -> Captured {
    let Resume {
        start,
        transcript: mut t,
        mut intake,
    } = resume;
    let deadline = session_deadline(&spec, start);
    let stats = &spec.stats;
    let mut sent = 0u32;
    let h = &spec.handling;
    let reason = 'session: {
        if h.greeting && h.max_responses > 0 {
            if let Err(r) = respond(&mut stream, &mut t, &h.response).await {
                break 'session r;
            }
            sent += 1;
        }
        loop {
            match wait_for(stream.readable(), &spec, deadline, &hard_stop).await {
                Wait::Shutdown => break 'session EndReason::Shutdown,
                Wait::Deadline => {
                    Stats::inc(&stats.limit_session_timeout);
                    limit_warn!(
                        spec.throttle,
                        "session_timeout",
                        "session ended: limits.session_timeout reached"
                    );
                    break 'session EndReason::SessionTimeout;
                }
                Wait::Silence => {
                    if sent >= h.max_responses {
                        break 'session EndReason::Idle;
                    }
                    if let Err(r) = respond(&mut stream, &mut t, &h.response).await {
                        break 'session r;
                    }
                    sent += 1;
                }
                Wait::Input(Err(_)) => break 'session EndReason::Error,
                Wait::Input(Ok(())) => match read_into(&stream, &mut t, &mut intake) {
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(r))) => break 'session r,
                    Ok(None) => {
                        // A peer that half-closes after its request still reads:
                        // answer once, as a real server would.
                        if sent == 0
                            && h.max_responses > 0
                            && respond(&mut stream, &mut t, &h.response).await.is_ok()
                        {
                            sent += 1;
                        }
                        break 'session EndReason::Closed;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break 'session EndReason::Error,
                },
            }
        }
    };
    // Best effort: the peer may already be gone.
    let _ = timeout(Duration::from_millis(200), stream.shutdown()).await;
    spec.captured(
        crate::proto::Protocol::Tcp,
        local,
        remote,
        start,
        t,
        sent,
        reason,
    )
}

/// Read what is available into the transcript, without an await so the buffer
/// never becomes part of the session's future (idle sessions stay small).
/// Ok(None) is EOF; Ok(Some(Err(reason))) means a limit ends the session.
fn read_into(
    stream: &TcpStream,
    t: &mut Transcript,
    intake: &mut Intake,
) -> io::Result<Option<Result<(), EndReason>>> {
    let mut buf = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(intake.take(t, &buf[..n])))
}

async fn respond(
    stream: &mut TcpStream,
    t: &mut Transcript,
    response: &[u8],
) -> Result<(), EndReason> {
    match timeout(WRITE_TIMEOUT, stream.write_all(response)).await {
        Ok(Ok(())) => {
            t.push_out(response);
            Ok(())
        }
        _ => Err(EndReason::Error),
    }
}

/// The way back to a UDP peer, and the session table it is registered in.
pub trait DatagramPeer: Send + Sync {
    /// Send one datagram to the peer (from the address it wrote to).
    fn send(&self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Unregister the session so no further datagram is queued for it.
    fn close(&self);
}

/// Run one UDP session: `first` started it, later datagrams of the same peer arrive
/// on `rx`. Replies are capped so the peer never gets more bytes than it sent, which
/// makes the honeypot useless as a reflector for spoofed sources.
#[allow(clippy::too_many_arguments)]
pub async fn udp<P: DatagramPeer>(
    first: Vec<u8>,
    rx: mpsc::Receiver<Vec<u8>>,
    peer: P,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
    hard_stop: CancellationToken,
) -> Captured {
    let resume = Resume::new(&spec);
    udp_resume(
        Some(first),
        rx,
        peer,
        local,
        remote,
        spec,
        hard_stop,
        resume,
    )
    .await
}

/// Run a UDP session in normal mode from the state `resume` holds; `pending` is a
/// datagram received but not yet recorded.
#[allow(clippy::too_many_arguments)]
pub async fn udp_resume<P: DatagramPeer>(
    pending: Option<Vec<u8>>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    peer: P,
    local: SocketAddr,
    remote: SocketAddr,
    spec: SessionSpec,
    hard_stop: CancellationToken,
    resume: Resume,
) -> Captured {
    let Resume {
        start,
        transcript: mut t,
        mut intake,
    } = resume;
    let deadline = session_deadline(&spec, start);
    let h = &spec.handling;
    let stats = &spec.stats;
    let mut sent = 0u32;
    let mut slots = 0u32;
    let reply = |t: &mut Transcript, sent: &mut u32| {
        if t.bytes_out + h.response.len() as u64 > t.bytes_in {
            Stats::inc(&stats.udp_replies_suppressed);
            limit_warn!(
                spec.throttle,
                "udp_reply_suppressed",
                "UDP reply withheld: it would exceed the bytes the peer sent (anti-amplification)"
            );
            return false;
        }
        t.push_out(&h.response);
        *sent += 1;
        true
    };
    let reason = 'session: {
        if let Some(first) = pending {
            if let Err(r) = intake.take(&mut t, &first) {
                break 'session r;
            }
        }
        if h.greeting && h.max_responses > 0 {
            slots += 1;
            if reply(&mut t, &mut sent) {
                let _ = peer.send(&h.response).await;
            }
        }
        loop {
            match wait_for(rx.recv(), &spec, deadline, &hard_stop).await {
                Wait::Shutdown | Wait::Input(None) => break 'session EndReason::Shutdown,
                Wait::Deadline => {
                    Stats::inc(&stats.limit_session_timeout);
                    limit_warn!(
                        spec.throttle,
                        "session_timeout",
                        "session ended: limits.session_timeout reached"
                    );
                    break 'session EndReason::SessionTimeout;
                }
                Wait::Input(Some(d)) => {
                    if let Err(r) = intake.take(&mut t, &d) {
                        break 'session r;
                    }
                }
                Wait::Silence => {
                    if slots >= h.max_responses {
                        break 'session EndReason::Idle;
                    }
                    slots += 1;
                    if !reply(&mut t, &mut sent) {
                        // The peer has not sent enough to earn a reply and is silent:
                        // holding the session open would only let spoofed floods
                        // tie up session slots.
                        break 'session EndReason::Idle;
                    }
                    if peer.send(&h.response).await.is_err() {
                        break 'session EndReason::Error;
                    }
                }
            }
        }
    };
    // Anything that arrived while the session was ending still belongs to it.
    peer.close();
    if !matches!(reason, EndReason::ReadLimit | EndReason::BufferLimit) {
        while let Ok(d) = rx.try_recv() {
            if intake.take(&mut t, &d).is_err() {
                break;
            }
        }
    }
    spec.captured(
        crate::proto::Protocol::Udp,
        local,
        remote,
        start,
        t,
        sent,
        reason,
    )
}
