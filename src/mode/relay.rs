//! The relay engine of mirror and proxy mode: one session between the attacker
//! (a TCP stream, or a UDP peer's datagrams) and a second connection to the target
//! (TCP or UDP, whatever the attacker used), both directions copied and recorded.
//!
//! Each direction is a pump: take what one side sent, record it, pass it on, and
//! only then take more. So a slow side holds back the other side's reads instead of
//! making honeytrap buffer (backpressure), and memory per relay is one buffer per
//! direction plus the transcript, which `read_limit` bounds in each direction.
//! Between two TCP streams the pump is zero-copy ([`pump_stream`]): the bytes are
//! peeked straight into the transcript and spliced through a pipe (the buffer), so
//! honeytrap copies each byte once, into the record. Otherwise (a UDP side, or no
//! pipe to be had) it reads chunks of at most [`CHUNK`] bytes into a buffer, records
//! and writes them. The two pumps run concurrently in one task, so a full-duplex
//! protocol cannot deadlock. The relay ends when both sides have closed
//! (half-closes are passed on), after `relay.idle_timeout` without data either way,
//! at `limits.session_timeout`, at a limit, or at shutdown.

use super::normal::{DatagramPeer, Intake};
use super::splice;
use crate::attack::{Direction, EndReason, Transcript};
use crate::stats::Stats;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Largest chunk read and written at once in each direction; also the largest
/// datagram a stream is cut into when the target protocol is UDP.
pub const CHUNK: usize = 32 * 1024;

/// A stream pump's rounds (see [`pump_stream`]): up to this, copied through a
/// buffer; above it, zero-copy.
const MIN_ROUND: usize = 16 * 1024;
/// The largest round, if the pipe gets that big.
const MAX_ROUND: usize = splice::PIPE_SIZE;

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

impl Shared<'_> {
    /// Record what `fill` writes (at most `max` bytes going `dir`) straight into the
    /// transcript, within the limits. Returns the bytes kept (0: end of stream) and
    /// why the relay must end after passing them on, if it must. TCP only: no UDP
    /// reply budget applies.
    /// With `copy`, the bytes kept are also copied there (at most `max` bytes).
    fn record_from(
        &self,
        dir: Direction,
        max: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> io::Result<usize>,
        copy: Option<&mut [u8]>,
    ) -> io::Result<(usize, Option<EndReason>)> {
        debug_assert!(self.reply_ratio.is_none());
        let mut g = self.record.lock().unwrap();
        let (t, intake) = &mut *g;
        let (n, r) = intake.take_with(t, dir, max, fill)?;
        if let (Some(out), true) = (copy, n > 0) {
            let last = &t.chunks.last().expect("the chunk just kept").data;
            out[..n].copy_from_slice(&last[last.len() - n..]);
        }
        if dir == Direction::Out {
            self.received.fetch_add(n as u64, Relaxed);
        }
        Ok((n, r.err()))
    }

    /// `n` bytes went on to the other side.
    fn moved(&self, dir: Direction, n: usize) {
        if dir == Direction::In {
            self.sent.fetch_add(n as u64, Relaxed);
        }
        self.touch();
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

/// Copy one direction between two TCP streams until `from` ends or something
/// fails. Each round takes at most `round` bytes into the transcript (what fits
/// under the limits) and passes exactly those on before the next round
/// (backpressure). Small rounds (a chatty protocol, a short exchange) are received
/// into the transcript and sent from a small buffer: two system calls. Once rounds
/// come full they grow, and a round above [`MIN_ROUND`] is zero-copy: the bytes are
/// peeked into the transcript and spliced through a pipe (made then, the only
/// buffer), so they are copied once, into the record.
async fn pump_stream(
    from: &TcpStream,
    to: &TcpStream,
    dir: Direction,
    sh: &Shared<'_>,
) -> Result<(), Stop> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let mut pipe: Option<splice::Pipe> = None;
    let mut small = vec![0u8; MIN_ROUND];
    let mut round = MIN_ROUND;
    loop {
        if round > MIN_ROUND && pipe.is_none() {
            // No pipe to be had (descriptors): stay with copying.
            pipe = splice::Pipe::new().ok();
            round = pipe.as_ref().map_or(MIN_ROUND, |p| round.min(p.size));
        }
        let zero_copy = round > MIN_ROUND;
        let record = || {
            if zero_copy {
                sh.record_from(dir, round, |b| splice::peek(src, b), None)
            } else {
                sh.record_from(dir, round, |b| splice::recv(src, b), Some(&mut small))
            }
        };
        let (n, end) = when_ready(from, Interest::READABLE, record)
            .await
            .map_err(|e| failure(e, dir, sh))?;
        if n == 0 && end.is_none() {
            splice::shutdown_write(dst);
            return Ok(());
        }
        sh.touch();
        if let (true, Some(p)) = (zero_copy, &pipe) {
            splice_on(from, to, p, n, dir, sh).await?;
        } else {
            send_on(to, &small[..n], dir, sh).await?;
        }
        let max = pipe.as_ref().map_or(MAX_ROUND, |p| p.size);
        round = if n == round {
            (2 * round).min(max)
        } else if n < round / 4 {
            (round / 2).max(MIN_ROUND)
        } else {
            round
        };
        if let Some(reason) = end {
            return Err(Stop::End(reason));
        }
    }
}

/// Move the `n` bytes at the head of `from` (already recorded) through `pipe` to `to`.
async fn splice_on(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &splice::Pipe,
    n: usize,
    dir: Direction,
    sh: &Shared<'_>,
) -> Result<(), Stop> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let mut left = n;
    while left > 0 {
        let k = when_ready(from, Interest::READABLE, || pipe.fill(src, left))
            .await
            .map_err(|e| failure(e, dir, sh))?;
        if k == 0 {
            // Reset after the peek: the peer is gone.
            return Err(Stop::End(EndReason::Closed));
        }
        let mut out = k;
        while out > 0 {
            let drained = when_ready(to, Interest::WRITABLE, || match pipe.drain(dst, out) {
                Ok(0) => Err(io::ErrorKind::BrokenPipe.into()),
                r => r,
            });
            out -= drained.await.map_err(|e| failure(e, dir.flip(), sh))?;
        }
        left -= k;
        sh.moved(dir, k);
    }
    Ok(())
}

/// Write `data` (already recorded) to `to`.
async fn send_on(to: &TcpStream, data: &[u8], dir: Direction, sh: &Shared<'_>) -> Result<(), Stop> {
    let mut done = 0;
    while done < data.len() {
        let sent = when_ready(to, Interest::WRITABLE, || {
            splice::send(to.as_raw_fd(), &data[done..])
        });
        done += sent.await.map_err(|e| failure(e, dir.flip(), sh))?;
    }
    sh.moved(dir, data.len());
    Ok(())
}

/// Run the non-blocking `op` on `s` once it is ready for `interest`, again after
/// each spurious wake-up.
async fn when_ready<R>(
    s: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
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
    // Stream to stream: zero-copy for bulk (see pump_stream).
    if let (Downstream::Tcp(d), Upstream::Tcp(u), None) = (&down, &*up, first) {
        let (d, u): (&TcpStream, &TcpStream) = (d, u);
        let to_target = pump_stream(d, u, Direction::In, &sh);
        let to_attacker = pump_stream(u, d, Direction::Out, &sh);
        let (reason, target_refused) =
            drive(to_target, to_attacker, &sh, &limits, hard_stop, spec).await;
        return sh.end(reason, target_refused);
    }
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
    let (reason, target_refused) =
        drive(to_target, to_attacker, &sh, &limits, hard_stop, spec).await;
    sh.end(reason, target_refused)
}

impl Shared<'_> {
    fn end(&self, reason: EndReason, target_refused: bool) -> RelayEnd {
        RelayEnd {
            reason,
            target_refused,
            bytes_sent: self.sent.load(Relaxed),
            bytes_received: self.received.load(Relaxed),
        }
    }
}

/// Run both pumps until the relay ends; why, and whether the target refused.
async fn drive(
    to_target: impl std::future::Future<Output = Result<(), Stop>>,
    to_attacker: impl std::future::Future<Output = Result<(), Stop>>,
    sh: &Shared<'_>,
    limits: &RelayLimits,
    hard_stop: &CancellationToken,
    spec: &super::normal::SessionSpec,
) -> (EndReason, bool) {
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
    (reason, target_refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Mode;
    use crate::config::PortHandling;
    use crate::mode::normal::{Resume, SessionSpec};
    use crate::server::limits::BufferBudget;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    fn spec(read_limit: u64) -> SessionSpec {
        SessionSpec {
            handling: PortHandling {
                mode: Mode::Proxy,
                proxy: None,
                response: Default::default(),
                greeting: false,
                max_responses: 0,
            },
            read_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(60),
            read_limit,
            relay: Default::default(),
            per_read: Arc::new(Vec::new()),
            sensor: "t".into(),
            monitor: "t".into(),
            buffers: BufferBudget::new(4 * read_limit),
            stats: Arc::new(Stats::default()),
            throttle: Arc::new(Default::default()),
        }
    }

    /// Two connected TCP streams: (ours, the peer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    /// Bytes that differ from position to position, so a lost or repeated
    /// round shows.
    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Write `data`, half-close, read to end: what the other end sent (so far, when
    /// the relay cut the connection).
    async fn talk(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = s.split();
        let send = async {
            if w.write_all(&data).await.is_ok() {
                let _ = w.shutdown().await;
            }
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let _ = tokio::join!(send, recv);
        got
    }

    /// Relay between an attacker and a target stream, both talking at once.
    async fn relay(
        read_limit: u64,
        up_bytes: usize,
        down_bytes: usize,
    ) -> (RelayEnd, Transcript, Vec<u8>, Vec<u8>) {
        let (mut down, attacker) = pair().await;
        let (up, target) = pair().await;
        let mut up = Upstream::Tcp(up);
        let relayed = async move {
            let sp = spec(read_limit);
            let mut r = Resume::new(&sp);
            let limits = RelayLimits {
                idle_timeout: Duration::from_secs(10),
                deadline: Instant::now() + Duration::from_secs(60),
                udp_reply_ratio: None,
            };
            let stop = CancellationToken::new();
            let end = run::<crate::mode::relayed::NoPeer>(
                Downstream::Tcp(&mut down),
                None,
                &mut up,
                &mut r.transcript,
                &mut r.intake,
                &sp,
                limits,
                &stop,
            )
            .await;
            // Closing both ends lets the peers see the end of their streams.
            drop((up, down));
            (end, r.transcript)
        };
        let a = talk(attacker, pattern(up_bytes, 0x11));
        let t = talk(target, pattern(down_bytes, 0x22));
        let ((end, transcript), at_attacker, at_target) = tokio::join!(relayed, a, t);
        (end, transcript, at_attacker, at_target)
    }

    #[tokio::test]
    async fn both_directions_are_relayed_and_recorded_byte_for_byte() {
        let (up_n, down_n) = (6 << 20, 5 << 20);
        let (end, t, at_attacker, at_target) = relay(64 << 20, up_n, down_n).await;
        assert_eq!(end.reason, EndReason::Closed);
        assert_eq!(at_target, pattern(up_n, 0x11));
        assert_eq!(at_attacker, pattern(down_n, 0x22));
        assert_eq!(t.payload(), at_target);
        assert_eq!(t.outgoing(), at_attacker);
        assert_eq!(
            (end.bytes_sent, end.bytes_received),
            (up_n as u64, down_n as u64)
        );
        assert!(!t.truncated);
    }

    #[tokio::test]
    async fn read_limit_cuts_each_direction_and_ends_the_relay() {
        let limit = 300_000;
        let (end, t, at_attacker, at_target) = relay(limit, 2 << 20, 2 << 20).await;
        assert_eq!(end.reason, EndReason::ReadLimit);
        // Never more than read_limit kept either way; what was kept is exact, and
        // nothing was passed on that was not kept.
        assert!(t.bytes_in <= limit && t.bytes_out <= limit);
        assert!(t.bytes_in == limit || t.bytes_out == limit);
        assert_eq!(t.payload(), pattern(t.bytes_in as usize, 0x11));
        assert_eq!(t.outgoing(), pattern(t.bytes_out as usize, 0x22));
        assert!(at_target.len() as u64 <= t.bytes_in);
        assert!(at_attacker.len() as u64 <= t.bytes_out);
    }
}
