//! The `nfqueue` monitor, the original honeytrap's best monitor: iptables rules (which
//! the administrator adds, see docs/configuration.md) queue every new TCP SYN and
//! every new UDP datagram to a netfilter queue; for each queued packet this monitor
//! looks up the port policy and, unless the port is ignored, has the port table bind
//! the port *before* it lets the packet through. The kernel then delivers that very
//! packet to the new listener: the attacker's first try is caught, not the retry.
//!
//! Every packet gets exactly one verdict, and it is always ACCEPT: an ignored port, a
//! port owned by a real service (bind fails), a malformed or unsupported packet and
//! any internal error (even a panic in the handler) all let the packet through, so
//! the host behaves as it would without honeytrap.
//!
//! The `nfq` crate (pure Rust netlink) is blocking, so the queue is read on a
//! dedicated OS thread that enters the tokio runtime (the port table spawns tasks).
//! Every attempt on a new port waits for this thread, so it keeps the priority
//! honeytrap was started with, above the rest of the process (`process.nice`; see
//! `privileges::set_process_nice`). It is not made real-time: `SCHED_RR` (used
//! before `process.nice` existed) woke it for every packet the moment it was
//! queued, batches of one that took twice its CPU time per packet, and preempted
//! every ordinary process of the host (docs/benchmarks.md, "Third 2026-11-28
//! session"); at nice 0 above the rest at nice 10, a burst has queued several
//! packets by the time it runs, judged with one verdict. It also
//! grows its malloc arena at start ([`warm_allocator`]), and the port table grows
//! the descriptor table ([`crate::server::bind::reserve_descriptors`]), so that
//! neither grows on the verdict path in a burst.
//!
//! Bursts. The thread reads what is queued (up to [`BATCH`] packets, without
//! waiting for more), binds the ports they need (only the kernel-visible part:
//! socket, bind, listen), hands the new servers to the runtime in one spawn, then
//! accepts the whole batch with one batch verdict (NFQNL_MSG_VERDICT_BATCH up to
//! the last packet id). So each packet still gets exactly one verdict, after its
//! port listens, and a burst of new ports costs a few system calls per port plus
//! one verdict per batch; registration with the runtime and the serving tasks run
//! on the runtime's threads meanwhile.
//!
//! Overload. The queue is configured fail-open (`NFQA_CFG_F_FAIL_OPEN`): a packet
//! that does not fit is not dropped but accepted by the kernel
//! (`__nfqnl_enqueue_packet` in net/netfilter/nfnetlink_queue.c reinjects it with
//! NF_ACCEPT), exactly as if we had accepted it without binding its port: the host
//! answers as without honeytrap (RST, ICMP port unreachable) and the attacker's next
//! attempt is queued again. Two limits, told apart by the kernel:
//! - the netlink socket is full (`rcvbuf`): the packet has already been given the
//!   next packet id, and the socket reports ENOBUFS (once per overflow, until we
//!   have read it empty; NETLINK_NO_ENOBUFS is cleared for this). Both are counted:
//!   `overflows` (warned, throttled) and `overflow_packets`, the gaps in the ids;
//! - the queue holds `queue_maxlen` packets: the packet gets no id and the kernel
//!   counts nothing (`queue_dropped` only counts without fail-open). Userspace cannot
//!   see it, so `queue_maxlen` must exceed what `rcvbuf` holds (warned at start):
//!   then the socket always overflows first, and every loss is counted.
//!
//! The loop goes on after an overflow: nothing waits for a verdict that will not
//! come (tests/e2e_nfqueue.rs forces one and checks the kernel's counters).
//!
//! Gap in `nfq` 0.2: its `Queue` does not expose its socket. The descriptor is found
//! by looking for the process's one `NETLINK_NETFILTER` socket (see [`find_fd`]); it
//! is needed for `rcvbuf` (SO_RCVBUFFORCE) and for waking the thread at shutdown. If
//! it cannot be found, `rcvbuf` is not applied (logged) and the thread polls.

use super::packet::{be16, ipv4, ipv6, PacketError};
use super::Monitor;
use crate::limit_warn;
use crate::proto::Protocol;
use crate::server::{Ensured, Pending, PortTable, Trigger};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Name of this monitor (in events: `honeytrap.monitor`).
pub const NAME: &str = "nfqueue";

/// Bytes of each packet copied to userspace: enough for the IP header, IPv6
/// extension headers and the TCP/UDP ports.
const COPY_RANGE: u16 = 512;

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

/// A connection attempt: what a queued packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub protocol: Protocol,
    /// Our side (the destination of the packet).
    pub local: SocketAddr,
    /// The attacker (the source).
    pub remote: SocketAddr,
}

/// Why a packet is not an attempt (it is accepted all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its headers say, or impossible header values.
    Malformed,
    /// Well formed, but not a TCP SYN or UDP datagram we can attribute to a port
    /// (another protocol, a later fragment, a TCP segment without SYN, port 0).
    Unsupported,
}

impl From<PacketError> for Reject {
    fn from(e: PacketError) -> Reject {
        match e {
            PacketError::Malformed => Reject::Malformed,
            PacketError::Unsupported => Reject::Unsupported,
        }
    }
}

/// Parse one queued packet (starting at its IP header). Never panics.
pub fn parse(p: &[u8]) -> Result<Attempt, Reject> {
    let (src, dst, proto, rest) = match p.first().map(|b| b >> 4) {
        Some(4) => ipv4(p)?,
        Some(6) => ipv6(p)?,
        Some(_) => return Err(Reject::Malformed),
        None => return Err(Reject::Malformed),
    };
    let protocol = match proto {
        6 => {
            if rest.len() < 20 || usize::from(rest[12] >> 4) * 4 < 20 {
                return Err(Reject::Malformed);
            }
            // SYN without ACK: a new connection. Anything else (a rule that queues
            // more than the documented ones) is let through untouched.
            if rest[13] & 0x12 != 0x02 {
                return Err(Reject::Unsupported);
            }
            Protocol::Tcp
        }
        17 => {
            if rest.len() < 8 {
                return Err(Reject::Malformed);
            }
            Protocol::Udp
        }
        _ => return Err(Reject::Unsupported),
    };
    let (sport, dport) = (be16(rest, 0)?, be16(rest, 2)?);
    if dport == 0 {
        return Err(Reject::Unsupported);
    }
    Ok(Attempt {
        protocol,
        local: SocketAddr::new(dst, dport),
        remote: SocketAddr::new(src, sport),
    })
}

// ---------------------------------------------------------------------------------
// The monitor
// ---------------------------------------------------------------------------------

/// What the monitor saw, logged at info when it stops.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    tcp_syns: AtomicU64,
    udp_datagrams: AtomicU64,
    started: AtomicU64,
    running: AtomicU64,
    ignored: AtomicU64,
    unavailable: AtomicU64,
    malformed: AtomicU64,
    unsupported: AtomicU64,
    overflows: AtomicU64,
    overflow_packets: AtomicU64,
    errors: AtomicU64,
    verdict_errors: AtomicU64,
    /// Batches handled; the wall time per batch from its first packet read to its
    /// verdict sent (`busy_us`), of which reading and binding (`bind_us`) and the
    /// verdict system call (`verdict_us`: the kernel re-injects the packets there,
    /// and on a host where the attacker is local, it runs the whole handshake too).
    batches: AtomicU64,
    /// Batch verdict messages sent (one per batch, with the queue's descriptor).
    verdicts: AtomicU64,
    busy_us: AtomicU64,
    bind_us: AtomicU64,
    verdict_us: AtomicU64,
    /// The longest reading and binding of a batch and the longest verdict call, in
    /// µs.
    max_bind_us: AtomicU64,
    max_verdict_us: AtomicU64,
    /// Attempts that waited for closed servers to release their sockets, and the
    /// time they waited in all (µs).
    close_waits: AtomicU64,
    close_wait_us: AtomicU64,
}

/// The `nfqueue` monitor.
pub struct NfqueueMonitor {
    counters: Arc<Counters>,
    /// `[monitor.nfqueue]` as started (every option needs a restart).
    started: Option<crate::config::NfqueueConfig>,
    worker: Option<Worker>,
}

/// The queue thread and how to stop it.
struct Worker {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<Stop>,
}

/// Stop request: a flag and an eventfd the thread polls beside the queue socket.
struct Stop {
    flag: AtomicBool,
    event: OwnedFd,
}

impl Stop {
    fn new() -> io::Result<Stop> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Stop {
            flag: AtomicBool::new(false),
            // SAFETY: `fd` was just created and is owned by nothing else.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn request(&self) {
        self.flag.store(true, Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.event.as_raw_fd(),
                std::ptr::addr_of!(one).cast::<libc::c_void>(),
                8,
            )
        };
    }

    fn requested(&self) -> bool {
        self.flag.load(Relaxed)
    }
}

impl Default for NfqueueMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl NfqueueMonitor {
    pub fn new() -> NfqueueMonitor {
        NfqueueMonitor {
            counters: Arc::new(Counters::default()),
            started: None,
            worker: None,
        }
    }
}

/// Whether `fd` is a netlink socket of protocol NETLINK_NETFILTER.
fn is_netfilter_socket(fd: RawFd) -> bool {
    let get = |opt: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of an int and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of_mut!(v).cast::<libc::c_void>(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    get(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
        && get(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
}

/// The lowest free descriptor number now (the one the next socket will most likely
/// get).
fn lowest_free_fd() -> Option<RawFd> {
    // SAFETY: duplicates standard error (fails harmlessly if it is closed); the copy
    // is closed at once.
    let probe = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 0) };
    if probe < 0 {
        return None;
    }
    // SAFETY: `probe` was just created by us.
    unsafe { libc::close(probe) };
    Some(probe)
}

/// The descriptor of the `nfq` queue's socket (`nfq` 0.2 does not expose it): the
/// process's only NETLINK_NETFILTER socket. `guess` is the lowest free descriptor
/// before the queue was opened; otherwise /proc/self/fd is searched.
fn find_fd(guess: Option<RawFd>) -> Option<RawFd> {
    if let Some(fd) = guess.filter(|&fd| is_netfilter_socket(fd)) {
        return Some(fd);
    }
    let found: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| is_netfilter_socket(fd))
        .collect();
    match found[..] {
        [fd] => Some(fd),
        _ => None,
    }
}

/// Set the socket's receive buffer (see [`super::sockbuf`]). Returns what the
/// kernel reports.
fn set_rcvbuf(fd: RawFd, bytes: u64) -> io::Result<usize> {
    super::sockbuf::set_rcvbuf(fd, bytes).map(|(size, _)| size)
}

/// Bytes of socket buffer the smallest queued packet takes (measured: a small UDP
/// datagram or TCP SYN, IPv4 or IPv6, costs about 830 bytes on Linux 6.x).
const SMALLEST_MESSAGE: u64 = 800;

/// Warn when `queue_maxlen` may be reached before the socket buffer fills. Past
/// `queue_maxlen` the kernel accepts packets (fail-open) without numbering or
/// counting them anywhere, so they would go through without a trace; a socket
/// overflow is reported (ENOBUFS) and counted. The socket must fill first.
fn warn_if_silent_limit(queue_maxlen: u32, rcvbuf: usize) {
    let fits = rcvbuf as u64 / SMALLEST_MESSAGE;
    if u64::from(queue_maxlen) < fits {
        tracing::warn!(
            queue_maxlen,
            rcvbuf,
            "monitor.nfqueue.queue_maxlen is below what rcvbuf holds (about {fits} packets): a burst past queue_maxlen goes through unseen and uncounted; raise queue_maxlen above {fits} or lower rcvbuf"
        );
    }
}

/// Open, bind and configure the queue. Returns it with its descriptor, if found.
fn open(cfg: &crate::config::NfqueueConfig) -> anyhow::Result<(nfq::Queue, Option<RawFd>)> {
    let n = cfg.queue;
    let guess = lowest_free_fd();
    let mut q = nfq::Queue::open().map_err(|e| {
        anyhow::anyhow!(
            "monitor.nfqueue: cannot open a netfilter queue socket (needs CAP_NET_ADMIN): {e}"
        )
    })?;
    let fd = find_fd(guess);
    q.bind(n).map_err(|e| {
        anyhow::anyhow!("monitor.nfqueue: cannot bind queue {n} (does another program use it? needs CAP_NET_ADMIN): {e}")
    })?;
    let step = |what: &str, r: io::Result<()>| {
        r.map_err(|e| anyhow::anyhow!("monitor.nfqueue: queue {n}: cannot set {what}: {e}"))
    };
    step("the copy range", q.set_copy_range(n, COPY_RANGE))?;
    step("queue_maxlen", q.set_queue_max_len(n, cfg.queue_maxlen))?;
    // Fail open: a packet that does not fit is accepted by the kernel, not dropped.
    step("fail-open", q.set_fail_open(n, true))?;
    // Report socket overflows (ENOBUFS) so they are counted and logged.
    step("ENOBUFS reporting", q.set_recv_enobufs(true))?;
    q.set_nonblocking(true);
    match fd {
        Some(fd) => match set_rcvbuf(fd, cfg.rcvbuf) {
            Ok(got) => {
                tracing::debug!(rcvbuf = got, "nfqueue: socket receive buffer set");
                warn_if_silent_limit(cfg.queue_maxlen, got);
            }
            Err(e) => {
                tracing::warn!(error = %e, "monitor.nfqueue.rcvbuf: cannot set the socket receive buffer; the kernel default is used")
            }
        },
        None => tracing::warn!(
            "nfqueue: the queue's socket was not found; monitor.nfqueue.rcvbuf is not applied and the queue is polled every 5 ms"
        ),
    }
    Ok((q, fd))
}

/// How many packets went by unseen between the packet ids `last` and `id`. The
/// kernel numbers every packet it tries to deliver (1, 2, ... per queue, in order),
/// and a packet that does not fit into the socket keeps its number and is accepted
/// (fail-open): a gap in the numbers is exactly what was lost. ENOBUFS itself only
/// says that some were lost (once per overflow, not per packet). Numbers wrap at
/// 2^32; a backward step (never seen from the kernel) counts nothing.
fn unseen_between(last: u32, id: u32) -> u32 {
    let gap = id.wrapping_sub(last).wrapping_sub(1);
    if gap < 1 << 31 {
        gap
    } else {
        0
    }
}

/// Longest an attempt waits for the runtime to release closed servers' sockets
/// (see [`Loop::wait_for_closes`]): well below the 1 s after which a client
/// retransmits its SYN.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

/// Most packets read before their verdicts are given: a burst is handled in
/// batches, but a verdict never waits for more than this many ports to be bound.
const BATCH: usize = 64;

/// A verdict that accepts every packet of a queue up to and including packet `last`
/// (NFQNL_MSG_VERDICT_BATCH): one netlink message for a whole batch. The kernel
/// applies it to the packets still waiting with an id up to `last` (ids are given
/// in order; packets lost to an overflow were never queued), so each packet of the
/// batch gets exactly one verdict.
fn batch_verdict_message(queue: u16, last: u32) -> [u8; 32] {
    const NFNL_SUBSYS_QUEUE: u16 = 3;
    const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
    const NFQA_VERDICT_HDR: u16 = 2;
    const NF_ACCEPT: u32 = 1;
    let mut m = [0u8; 32];
    // struct nlmsghdr (host byte order): length, type, flags; sequence and port 0.
    m[0..4].copy_from_slice(&32u32.to_ne_bytes());
    m[4..6].copy_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT_BATCH).to_ne_bytes());
    m[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    // struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, the queue number (big endian).
    m[18..20].copy_from_slice(&queue.to_be_bytes());
    // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr, big endian.
    m[20..22].copy_from_slice(&12u16.to_ne_bytes());
    m[22..24].copy_from_slice(&NFQA_VERDICT_HDR.to_ne_bytes());
    m[24..28].copy_from_slice(&NF_ACCEPT.to_be_bytes());
    m[28..32].copy_from_slice(&last.to_be_bytes());
    m
}

/// Send [`batch_verdict_message`] to the kernel on the queue's socket.
fn send_batch_verdict(fd: RawFd, queue: u16, last: u32) -> io::Result<()> {
    let m = batch_verdict_message(queue, last);
    // SAFETY: zeroed sockaddr_nl is valid (the kernel's address: port 0).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `m` and `addr` are valid for reads of the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd,
            m.as_ptr().cast::<libc::c_void>(),
            m.len(),
            0,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send the batch verdict through `last`, retrying a transient failure (EINTR, no
/// memory for the message): the verdict is the only way out of the queue for these
/// packets.
fn send_batch_verdict_retrying(fd: RawFd, queue: u16, last: u32) -> io::Result<()> {
    let mut result = send_batch_verdict(fd, queue, last);
    for _ in 0..3 {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        result = send_batch_verdict(fd, queue, last);
    }
    result
}

/// Bytes the queue thread allocates (and frees) once at start: see
/// [`warm_allocator`].
const ARENA_WARM: usize = 4 << 20;

/// Grow this thread's malloc arena once, at start. glibc grows a thread's arena
/// by exactly what an allocation lacks, one `mprotect` per few pages; a burst of
/// new ports (each keeps a few hundred bytes of state allocated here) made a few
/// hundred of them on the verdict path, and `mprotect` takes the address space
/// lock for writing, so it also waits for the other threads' page faults. A freed
/// arena keeps its protection (the pages are only given back), so this is paid once.
fn warm_allocator() {
    let blocks: Vec<Box<[u8; 4096]>> = (0..ARENA_WARM / 4096)
        .map(|_| Box::new([0u8; 4096]))
        .collect();
    drop(std::hint::black_box(blocks));
}

/// What the thread needs.
struct Loop {
    queue: nfq::Queue,
    fd: Option<RawFd>,
    table: Arc<PortTable>,
    counters: Arc<Counters>,
    stop: Arc<Stop>,
    number: u16,
    /// Packet id of the last message received (the kernel numbers them 1, 2, ...).
    last_id: u32,
    /// Without the socket's descriptor there is no batch verdict: the batch's
    /// messages wait here for one verdict each.
    held: Vec<nfq::Message>,
}

impl Loop {
    /// Decide about one packet: trigger the port table if it is an attempt on a
    /// port that is not ignored. On return a new port listens; its server's task
    /// is in `pending`. The caller gives the verdict (ACCEPT) afterwards.
    fn handle(&self, packet: &[u8], pending: &mut Pending) {
        let c = &self.counters;
        let attempt = match parse(packet) {
            Ok(a) => a,
            Err(Reject::Malformed) => {
                c.malformed.fetch_add(1, Relaxed);
                tracing::debug!(len = packet.len(), "nfqueue: malformed packet accepted");
                return;
            }
            Err(Reject::Unsupported) => {
                c.unsupported.fetch_add(1, Relaxed);
                return;
            }
        };
        match attempt.protocol {
            Protocol::Tcp => c.tcp_syns.fetch_add(1, Relaxed),
            Protocol::Udp => c.udp_datagrams.fetch_add(1, Relaxed),
        };
        self.wait_for_closes();
        // The policy is applied (ignore: nothing bound) and the port bound
        // synchronously, so the listener exists before the verdict.
        let result = self.table.trigger_deferred(
            &Trigger {
                protocol: attempt.protocol,
                local: attempt.local,
                remote: attempt.remote,
                monitor: NAME,
            },
            pending,
        );
        let counter = match result {
            Ensured::Started => &c.started,
            Ensured::Running => &c.running,
            Ensured::Ignored => &c.ignored,
            Ensured::Unavailable | Ensured::Full => &c.unavailable,
        };
        counter.fetch_add(1, Relaxed);
        tracing::debug!(protocol = %attempt.protocol, local = %attempt.local, remote = %attempt.remote, result = ?result, "nfqueue: new attempt");
    }

    /// Handle `first` and whatever else is queued already (up to [`BATCH`]
    /// packets, without waiting): bind the ports they need, hand the new servers to
    /// the runtime, then accept them all (also if the handler panics). Returns
    /// whether the socket was read empty (EAGAIN), so the caller can wait at once.
    fn batch(&mut self, first: nfq::Message) -> bool {
        let t0 = std::time::Instant::now();
        let mut pending = Pending::default();
        let mut last = self.take(first, &mut pending);
        let mut drained = false;
        for _ in 1..BATCH {
            match self.queue.recv() {
                Ok(msg) => last = self.take(msg, &mut pending),
                Err(e) => {
                    drained = e.raw_os_error() == Some(libc::EAGAIN);
                    if !drained {
                        self.recv_error(&e);
                    }
                    break;
                }
            }
        }
        // The runtime registers the new servers on another core while this thread
        // gives the verdicts; the kernel already queues their connections.
        let table = &self.table;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| table.launch(pending))).is_err()
        {
            self.counters.errors.fetch_add(1, Relaxed);
            tracing::error!("nfqueue: starting the new servers panicked; the packets are accepted");
        }
        let t1 = std::time::Instant::now();
        self.accept_through(last);
        let t2 = std::time::Instant::now();
        let c = &self.counters;
        c.batches.fetch_add(1, Relaxed);
        c.bind_us.fetch_add((t1 - t0).as_micros() as u64, Relaxed);
        c.max_bind_us
            .fetch_max((t1 - t0).as_micros() as u64, Relaxed);
        c.busy_us.fetch_add((t2 - t0).as_micros() as u64, Relaxed);
        drained
    }

    /// Wait (at most [`CLOSE_WAIT`]) while servers closed to make room still hold
    /// their sockets beyond what the port table allows (see
    /// `PortTable::closing_backlog`). The runtime closes them, and with one CPU
    /// under a full-range scan this thread, at a higher priority, would leave it
    /// too little time: the listeners piled up to three times the cap. Waiting
    /// here gives the runtime the CPU while the packets wait in the queue; new
    /// ports are refused only if that is not enough.
    fn wait_for_closes(&self) {
        if !self.table.closing_backlog() {
            return;
        }
        let start = std::time::Instant::now();
        self.counters.close_waits.fetch_add(1, Relaxed);
        while start.elapsed() < CLOSE_WAIT && self.table.closing_backlog() {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.counters
            .close_wait_us
            .fetch_add(start.elapsed().as_micros() as u64, Relaxed);
    }

    /// Count and handle one message; its verdict waits for the end of the batch.
    /// Returns its packet id.
    fn take(&mut self, msg: nfq::Message, pending: &mut Pending) -> u32 {
        self.counters.packets.fetch_add(1, Relaxed);
        let id = msg.get_packet_id();
        self.count_unseen(id);
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle(msg.get_payload(), pending)
        }));
        if handled.is_err() {
            self.counters.errors.fetch_add(1, Relaxed);
            tracing::error!("nfqueue: the packet handler panicked; the packet is accepted");
        }
        if self.fd.is_none() {
            self.held.push(msg);
        }
        id
    }

    /// ACCEPT every packet of the batch, the last being packet `last`.
    fn accept_through(&mut self, last: u32) {
        let ctx = Arc::clone(self.table.context());
        if let Some(fd) = self.fd {
            let t = std::time::Instant::now();
            let result = send_batch_verdict_retrying(fd, self.number, last);
            self.counters.verdicts.fetch_add(1, Relaxed);
            let us = t.elapsed().as_micros() as u64;
            self.counters.verdict_us.fetch_add(us, Relaxed);
            self.counters.max_verdict_us.fetch_max(us, Relaxed);
            if let Err(e) = result {
                self.counters.verdict_errors.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "nfqueue_verdict", error = %e, "nfqueue: cannot send a verdict (the kernel accepts the packets when the queue is torn down)");
            }
            return;
        }
        for mut msg in std::mem::take(&mut self.held) {
            msg.set_verdict(nfq::Verdict::Accept);
            if let Err(e) = self.queue.verdict(msg) {
                self.counters.verdict_errors.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "nfqueue_verdict", error = %e, "nfqueue: cannot send a verdict (the kernel accepts the packet when the queue is torn down)");
            }
        }
    }

    /// Count the packets lost to a socket overflow before the one numbered `id`.
    fn count_unseen(&mut self, id: u32) {
        let gap = unseen_between(self.last_id, id);
        self.last_id = id;
        if gap > 0 {
            self.counters
                .overflow_packets
                .fetch_add(u64::from(gap), Relaxed);
        }
    }

    /// Wait until the socket is readable or a stop is requested.
    fn wait(&self) {
        let Some(fd) = self.fd else {
            std::thread::sleep(Duration::from_millis(5));
            return;
        };
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // A timeout as a safety net: the stop flag is checked at least every second.
        // SAFETY: `fds` is a valid array of two pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
    }

    /// Count and report a receive error other than EAGAIN.
    fn recv_error(&self, e: &io::Error) {
        let ctx = Arc::clone(self.table.context());
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS) => {
                // The socket buffer overflowed: the kernel accepted (fail open) what
                // it could not deliver. Go on.
                self.counters.overflows.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "nfqueue_overflow", queue = self.number, "nfqueue: netlink socket overflow (ENOBUFS): packets went through unseen; raise monitor.nfqueue.rcvbuf");
            }
            _ => {
                self.counters.errors.fetch_add(1, Relaxed);
                limit_warn!(ctx.throttle, "nfqueue_error", queue = self.number, error = %e, "nfqueue: receive error");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Receive and judge packets until a stop is requested.
    fn run(&mut self) {
        while !self.stop.requested() {
            match self.queue.recv() {
                Ok(msg) => {
                    if self.batch(msg) {
                        self.wait();
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.wait(),
                Err(e) => self.recv_error(&e),
            }
        }
        // Accept what is still waiting, then leave the queue (with --queue-bypass the
        // kernel lets packets through while nobody is bound).
        while let Ok(msg) = self.queue.recv() {
            self.batch(msg);
        }
        let _ = self.queue.unbind(self.number);
        self.log_summary();
    }

    fn log_summary(&self) {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Relaxed);
        tracing::info!(
            queue = self.number,
            packets = g(&c.packets),
            tcp_syns = g(&c.tcp_syns),
            udp_datagrams = g(&c.udp_datagrams),
            servers_started = g(&c.started),
            already_running = g(&c.running),
            ignored_ports = g(&c.ignored),
            unavailable = g(&c.unavailable),
            malformed = g(&c.malformed),
            unsupported = g(&c.unsupported),
            overflows = g(&c.overflows),
            overflow_packets = g(&c.overflow_packets),
            errors = g(&c.errors),
            verdict_errors = g(&c.verdict_errors),
            batches = g(&c.batches),
            verdicts = g(&c.verdicts),
            busy_us = g(&c.busy_us),
            bind_us = g(&c.bind_us),
            verdict_us = g(&c.verdict_us),
            max_bind_us = g(&c.max_bind_us),
            max_verdict_us = g(&c.max_verdict_us),
            close_waits = g(&c.close_waits),
            close_wait_us = g(&c.close_wait_us),
            "nfqueue monitor stopped"
        );
    }
}

impl Monitor for NfqueueMonitor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Vec<caps::Capability> {
        // The queue is opened after the privilege drop; servers may be started on
        // ports below 1024.
        vec![
            caps::Capability::CAP_NET_ADMIN,
            caps::Capability::CAP_NET_BIND_SERVICE,
        ]
    }

    fn start(&mut self, table: &Arc<PortTable>) -> anyhow::Result<()> {
        let cfg = table.context().config().config.monitor.nfqueue.clone();
        let (queue, fd) = open(&cfg)?;
        let stop = Arc::new(Stop::new()?);
        let runtime = tokio::runtime::Handle::current();
        let mut lp = Loop {
            queue,
            fd,
            table: Arc::clone(table),
            counters: Arc::clone(&self.counters),
            stop: Arc::clone(&stop),
            number: cfg.queue,
            last_id: 0,
            held: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("nfqueue".into())
            .spawn(move || {
                // The port table spawns tokio tasks (the servers).
                let _entered = runtime.enter();
                warm_allocator();
                lp.run();
            })?;
        // Stop with the servers: on shutdown the thread accepts what is queued and
        // unbinds, so packets go through (--queue-bypass) to whatever answers.
        let token = table.context().stop_accepting.clone();
        let s2 = Arc::clone(&stop);
        tokio::spawn(async move {
            token.cancelled().await;
            s2.request();
        });
        tracing::info!(
            queue = cfg.queue,
            queue_maxlen = cfg.queue_maxlen,
            rcvbuf = cfg.rcvbuf,
            "reading new TCP SYNs and UDP datagrams from the netfilter queue; ports are bound before the packet is accepted"
        );
        self.worker = Some(Worker { thread, stop });
        self.started = Some(cfg);
        Ok(())
    }

    fn reload(&mut self, table: &Arc<PortTable>) {
        let cfg = table.context().config().config.monitor.nfqueue.clone();
        if self.started.as_ref().is_some_and(|old| *old != cfg) {
            tracing::warn!(
                "SIGHUP: changes to [monitor.nfqueue] need a restart; they are kept as they were"
            );
        }
    }
}

impl Drop for NfqueueMonitor {
    /// Stop the thread and wait for it, so its summary is logged before exit.
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.request();
            let _ = w.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        let total = (20 + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[203, 0, 113, 9]);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(payload);
        h
    }

    fn v6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(payload);
        h
    }

    fn tcp(flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&40000u16.to_be_bytes());
        t.extend_from_slice(&2222u16.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(data: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&41000u16.to_be_bytes());
        u.extend_from_slice(&5060u16.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    const SYN: u8 = 0x02;

    #[test]
    fn batch_verdict_accepts_up_to_the_last_id_of_the_queue() {
        let m = batch_verdict_message(0x0102, 0xA0B0_C0D0);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        // NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST.
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0303);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 1);
        // nfgenmsg: AF_UNSPEC, version 0, queue number big endian.
        assert_eq!(&m[16..20], &[0, 0, 1, 2]);
        // NFQA_VERDICT_HDR (type 2, 12 bytes): NF_ACCEPT, then the id, big endian.
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 12);
        assert_eq!(u16::from_ne_bytes([m[22], m[23]]), 2);
        assert_eq!(&m[24..32], &[0, 0, 0, 1, 0xA0, 0xB0, 0xC0, 0xD0]);
    }

    #[test]
    fn gaps_in_packet_ids_are_the_packets_lost_to_an_overflow() {
        assert_eq!(unseen_between(0, 1), 0);
        assert_eq!(unseen_between(0, 5), 4);
        assert_eq!(unseen_between(41, 42), 0);
        assert_eq!(unseen_between(42, 142), 99);
        assert_eq!(unseen_between(u32::MAX - 1, 2), 3);
        assert_eq!(unseen_between(100, 100), 0);
        assert_eq!(unseen_between(100, 90), 0);
    }

    #[test]
    fn tcp_syn_over_ipv4_and_ipv6() {
        let a = parse(&v4(6, &tcp(SYN))).unwrap();
        assert_eq!(a.protocol, Protocol::Tcp);
        assert_eq!(a.local, "10.0.0.1:2222".parse().unwrap());
        assert_eq!(a.remote, "203.0.113.9:40000".parse().unwrap());
        let a = parse(&v6(6, &tcp(SYN))).unwrap();
        assert_eq!(a.protocol, Protocol::Tcp);
        assert_eq!(a.local, "[fd00::1]:2222".parse().unwrap());
        assert_eq!(a.remote, "[2001:db8::9]:40000".parse().unwrap());
    }

    #[test]
    fn udp_datagram_over_ipv4_and_ipv6() {
        let a = parse(&v4(17, &udp(b"probe"))).unwrap();
        assert_eq!(a.protocol, Protocol::Udp);
        assert_eq!(a.local, "10.0.0.1:5060".parse().unwrap());
        assert_eq!(a.remote, "203.0.113.9:41000".parse().unwrap());
        let a = parse(&v6(17, &udp(b""))).unwrap();
        assert_eq!(a.local, "[fd00::1]:5060".parse().unwrap());
        assert_eq!(a.remote, "[2001:db8::9]:41000".parse().unwrap());
    }

    #[test]
    fn ipv4_options_and_ipv6_extension_headers_are_skipped() {
        let mut p = v4(6, &[]);
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend(tcp(SYN));
        assert_eq!(parse(&p).unwrap().local.port(), 2222);
        // Hop-by-hop (8 bytes) then a first fragment (offset 0) then UDP.
        let mut ext = vec![44, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 1]);
        ext.extend(udp(b"x"));
        let a = parse(&v6(0, &ext)).unwrap();
        assert_eq!((a.protocol, a.local.port()), (Protocol::Udp, 5060));
        // A later IPv6 fragment: no ports.
        let mut ext = vec![17, 0, 0, 8, 0, 0, 0, 1];
        ext.extend(udp(b"x"));
        assert_eq!(parse(&v6(44, &ext)), Err(Reject::Unsupported));
    }

    #[test]
    fn other_packets_are_unsupported() {
        // SYN-ACK, plain ACK, RST: not a new connection.
        for flags in [0x12, 0x10, 0x04] {
            assert_eq!(parse(&v4(6, &tcp(flags))), Err(Reject::Unsupported));
        }
        // ICMP, SCTP.
        assert_eq!(
            parse(&v4(1, &[8, 0, 0, 0, 0, 0, 0, 0])),
            Err(Reject::Unsupported)
        );
        assert_eq!(parse(&v6(132, &[0; 16])), Err(Reject::Unsupported));
        // A later IPv4 fragment.
        let mut p = v4(17, &udp(b"x"));
        p[7] = 10;
        assert_eq!(parse(&p), Err(Reject::Unsupported));
        // Destination port 0.
        let mut p = v4(17, &udp(b"x"));
        p[22] = 0;
        p[23] = 0;
        assert_eq!(parse(&p), Err(Reject::Unsupported));
    }

    #[test]
    fn truncated_and_garbage_packets_never_panic() {
        for (p, min) in [
            (v4(6, &tcp(SYN)), 40),
            (v6(6, &tcp(SYN)), 60),
            (v4(17, &udp(b"data")), 28),
            (v6(17, &udp(b"data")), 48),
        ] {
            for n in 0..p.len() {
                let r = parse(&p[..n]);
                assert_eq!(r.is_ok(), n >= min, "{n} bytes of {p:?}: {r:?}");
                if n < min {
                    assert_eq!(r, Err(Reject::Malformed), "{n} bytes");
                }
            }
        }
        // IPv4 header length below 20 or beyond the packet; TCP data offset below 5.
        let mut p = v4(6, &tcp(SYN));
        p[0] = 0x44;
        assert_eq!(parse(&p), Err(Reject::Malformed));
        let mut p = v4(6, &tcp(SYN));
        p[0] = 0x4f;
        p.truncate(50);
        assert_eq!(parse(&p), Err(Reject::Malformed));
        let mut p = v4(6, &tcp(SYN));
        p[20 + 12] = 0x40;
        assert_eq!(parse(&p), Err(Reject::Malformed));
        // An IPv6 extension header longer than the packet.
        let mut ext = vec![17, 200, 0, 0, 0, 0, 0, 0];
        ext.extend(udp(b"x"));
        assert_eq!(parse(&v6(60, &ext)), Err(Reject::Malformed));
        // Not IP, or nothing at all.
        assert_eq!(parse(&[0x20, 1, 2]), Err(Reject::Malformed));
        assert_eq!(parse(&[]), Err(Reject::Malformed));
        // Arbitrary bytes.
        let mut x: u32 = 7;
        for len in 0..400 {
            let mut p = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                p.push((x >> 16) as u8);
            }
            if let Some(b) = p.first_mut() {
                *b = if len % 2 == 0 { 0x45 } else { 0x60 };
            }
            let _ = parse(&p);
        }
    }
}
