//! The relay engine of mirror and proxy mode: one session between the attacker
//! (a TCP stream, or a UDP peer's datagrams) and a second connection to the target
//! (TCP or UDP, whatever the attacker used), both directions copied and recorded.
//!
//! Each direction is a pump: read a chunk (at most [`CHUNK`] bytes), record it,
//! write it out, and only then read again. So a slow side holds back the other
//! side's reads instead of making honeytrap buffer (backpressure), and memory per
//! relay is two chunk buffers plus the transcript, which `read_limit` bounds in each
//! direction. The two pumps run concurrently in one task, so a full-duplex protocol
//! cannot deadlock. The relay ends when both sides have closed (half-closes are
//! passed on), after `relay.idle_timeout` without data either way, at
//! `limits.session_timeout`, at a limit, or at shutdown.

use super::normal::{DatagramPeer, Intake};
use crate::attack::{Direction, EndReason, Transcript};
use crate::stats::Stats;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Largest chunk read and written at once in each direction; also the largest
/// datagram a stream is cut into when the target protocol is UDP.
pub const CHUNK: usize = 32 * 1024;

/// The second connection.
pub enum Upstream {
    Tcp(TcpStream),
    /// A UDP socket connected to the target.
    Udp(UdpSocket),
}

impl Upstream {
    /// Honeytrap's side of the second connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Upstream::Tcp(s) => s.local_addr(),
            Upstream::Udp(s) => s.local_addr(),
        }
    }
}

/// The attacker's side.
pub enum Downstream<'a, P> {
    Tcp(&'a mut TcpStream),
    /// A UDP peer: its datagrams arrive on `rx`, replies go through `peer`.
    Udp {
        rx: &'a mut mpsc::Receiver<Vec<u8>>,
        peer: &'a P,
    },
}

/// Limits of one relay.
pub struct RelayLimits {
    pub idle_timeout: Duration,
    /// When the hard session limit passes.
    pub deadline: Instant,
    /// Bytes sent back to a UDP peer at most this times what it sent (None: no budget,
    /// the peer is a TCP stream).
    pub udp_reply_ratio: Option<f64>,
}

/// How a relay ended.
pub struct RelayEnd {
    pub reason: EndReason,
    /// The target refused (ICMP port unreachable on a UDP target) before it sent
    /// anything: the caller may fall back to normal mode.
    pub target_refused: bool,
    /// Bytes relayed to the target.
    pub bytes_sent: u64,
    /// Bytes received from the target and kept (within `read_limit`).
    pub bytes_received: u64,
}

/// Why a pump stopped early.
enum Stop {
    End(EndReason),
    /// The UDP target answered with ICMP port unreachable.
    TargetRefused,
}

/// What both pumps share: the record and the counters.
struct Shared<'a> {
    record: Mutex<(&'a mut Transcript, &'a mut Intake)>,
    stats: &'a Stats,
    throttle: &'a crate::stats::Throttle,
    base: Instant,
    /// Milliseconds after `base` of the last data moved.
    last: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    reply_ratio: Option<f64>,
}

impl Shared<'_> {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Relaxed))
    }

    /// Record a chunk read from one side. Returns how many of its bytes to pass on
    /// (what fits under `read_limit`; 0 for a UDP reply over the budget) and why
    /// the relay must end after that, if it must.
    fn record(&self, dir: Direction, data: &[u8]) -> (usize, Option<EndReason>) {
        let mut g = self.record.lock().unwrap();
        let (t, intake) = &mut *g;
        match dir {
            Direction::In => {
                let before = t.bytes_in;
                let r = intake.take(t, data);
                ((t.bytes_in - before) as usize, r.err())
            }
            Direction::Out => {
                if let Some(ratio) = self.reply_ratio {
                    let budget = (t.bytes_in as f64 * ratio) as u64;
                    if t.bytes_out + data.len() as u64 > budget {
                        Stats::inc(&self.stats.udp_replies_suppressed);
                        crate::limit_warn!(
                            self.throttle,
                            "udp_reply_suppressed",
                            "relayed UDP reply withheld: it would exceed the bytes the peer sent (anti-amplification)"
                        );
                        return (0, None);
                    }
                }
                let before = t.bytes_out;
                let r = intake.take_out(t, data);
                let kept = t.bytes_out - before;
                self.received.fetch_add(kept, Relaxed);
                (kept as usize, r.err())
            }
        }
    }
}

/// Where a pump reads from.
enum Source<'a> {
    Stream(ReadHalf<'a>),
    Socket(&'a UdpSocket),
    Queue(&'a mut mpsc::Receiver<Vec<u8>>),
}

impl Source<'_> {
    /// The next chunk into `buf`; None at end of stream.
    async fn next(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Source::Stream(r) => r.read(buf).await.map(|n| (n > 0).then_some(n)),
            Source::Socket(s) => s.recv(buf).await.map(Some),
            Source::Queue(rx) => Ok(rx.recv().await.map(|d| {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                n
            })),
        }
    }
}

/// Where a pump writes to.
enum Sink<'a, P> {
    Stream(WriteHalf<'a>),
    Socket(&'a UdpSocket),
    Peer(&'a P),
}

impl<P: DatagramPeer> Sink<'_, P> {
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stream(w) => w.write_all(data).await,
            Sink::Socket(s) => s.send(data).await.map(|_| ()),
            Sink::Peer(p) => p.send(data).await,
        }
    }

    /// Pass on the end of the stream (TCP half-close); datagrams have none.
    async fn finish(&mut self) {
        if let Sink::Stream(w) = self {
            let _ = timeout(Duration::from_millis(500), w.shutdown()).await;
        }
    }
}

/// Copy one direction until its source ends or something fails; `first` is data
/// already read (a UDP session's first datagram).
async fn pump<P: DatagramPeer>(
    mut from: Source<'_>,
    mut to: Sink<'_, P>,
    dir: Direction,
    sh: &Shared<'_>,
    first: Option<&[u8]>,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; CHUNK];
    let mut first = first.map(|d| &d[..d.len().min(CHUNK)]);
    loop {
        let n = if let Some(d) = first.take() {
            buf[..d.len()].copy_from_slice(d);
            d.len()
        } else {
            match from.next(&mut buf).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    to.finish().await;
                    return Ok(());
                }
                Err(e) => return Err(failure(e, dir, sh)),
            }
        };
        sh.touch();
        let (kept, end) = sh.record(dir, &buf[..n]);
        if kept > 0 {
            if let Err(e) = to.send(&buf[..kept]).await {
                return Err(failure(e, dir.flip(), sh));
            }
            if dir == Direction::In {
                sh.sent.fetch_add(kept as u64, Relaxed);
            }
            sh.touch();
        }
        if let Some(reason) = end {
            return Err(Stop::End(reason));
        }
    }
}

/// A socket error on the side `dir` reads from (In: attacker, Out: target).
fn failure(e: io::Error, dir: Direction, sh: &Shared<'_>) -> Stop {
    let from_target = dir == Direction::Out;
    if from_target && e.kind() == io::ErrorKind::ConnectionRefused && sh.received.load(Relaxed) == 0
    {
        return Stop::TargetRefused;
    }
    Stop::End(match e.kind() {
        // A reset by either side is how many peers close.
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => EndReason::Closed,
        _ => EndReason::Error,
    })
}

/// Relay between `down` and `up` until the relay ends, recording into `t`; `first`
/// is data the attacker already sent, relayed first.
#[allow(clippy::too_many_arguments)]
pub async fn run<P: DatagramPeer>(
    down: Downstream<'_, P>,
    first: Option<&[u8]>,
    up: &mut Upstream,
    t: &mut Transcript,
    intake: &mut Intake,
    spec: &super::normal::SessionSpec,
    limits: RelayLimits,
    hard_stop: &CancellationToken,
) -> RelayEnd {
    let sh = Shared {
        record: Mutex::new((t, intake)),
        stats: &spec.stats,
        throttle: &spec.throttle,
        base: Instant::now(),
        last: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        reply_ratio: limits.udp_reply_ratio,
    };
    let (down_in, down_out) = match down {
        Downstream::Tcp(s) => {
            let (r, w) = s.split();
            (Source::Stream(r), Sink::Stream(w))
        }
        Downstream::Udp { rx, peer } => (Source::Queue(rx), Sink::Peer(peer)),
    };
    let (up_in, up_out) = match up {
        Upstream::Tcp(s) => {
            let (r, w) = s.split();
            (Source::Stream(r), Sink::<P>::Stream(w))
        }
        Upstream::Udp(s) => (Source::Socket(s), Sink::Socket(s)),
    };
    let to_target = pump(down_in, up_out, Direction::In, &sh, first);
    let to_attacker = pump(up_in, down_out, Direction::Out, &sh, None);
    tokio::pin!(to_target, to_attacker);
    let (mut in_done, mut out_done) = (false, false);
    let mut target_refused = false;
    let reason = loop {
        let idle_at = sh.last_activity() + limits.idle_timeout;
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => break EndReason::Shutdown,
            _ = sleep_until(limits.deadline) => {
                Stats::inc(&spec.stats.limit_session_timeout);
                break EndReason::SessionTimeout;
            }
            r = &mut to_target, if !in_done => match r {
                Ok(()) => {
                    in_done = true;
                    if out_done {
                        break EndReason::Closed;
                    }
                }
                Err(Stop::End(reason)) => break reason,
                Err(Stop::TargetRefused) => {
                    target_refused = true;
                    break EndReason::Error;
                }
            },
            r = &mut to_attacker, if !out_done => match r {
                Ok(()) => {
                    out_done = true;
                    if in_done {
                        break EndReason::Closed;
                    }
                }
                Err(Stop::End(reason)) => break reason,
                Err(Stop::TargetRefused) => {
                    target_refused = true;
                    break EndReason::Error;
                }
            },
            _ = sleep_until(idle_at) => {
                if sh.last_activity() + limits.idle_timeout <= Instant::now() {
                    break EndReason::Idle;
                }
            }
        }
    };
    RelayEnd {
        reason,
        target_refused,
        bytes_sent: sh.sent.load(Relaxed),
        bytes_received: sh.received.load(Relaxed),
    }
}
