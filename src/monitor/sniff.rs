//! The `sniff` monitor, the portable monitor of the original honeytrap (its "pcap"
//! monitor), without libpcap: it watches what the kernel *sends* when a port is
//! closed, and starts a server on that port so that the attacker's next try is
//! caught.
//!
//! - A TCP SYN to a closed port is answered with a RST whose sequence number is 0.
//! - A UDP datagram to a closed port is answered with an ICMP port unreachable (IPv4:
//!   type 3 code 3; IPv6: type 1 code 4) that quotes the datagram's IP and UDP
//!   headers: the port is the quoted destination port.
//!
//! One `AF_PACKET` socket (`SOCK_DGRAM`, cooked: data starts at the network header)
//! per watched interface, or one for all of them, with a classic BPF program (below,
//! written by hand) so that only these packets reach userspace. Each hit becomes a
//! [`Trigger`] for the port table; a port already served answers `Running` there, so
//! bursts cost one map lookup each. Nothing is bound at start-up.
//!
//! Overflow is counted, not silent: each socket's receive buffer is `rcvbuf`
//! (SO_RCVBUFFORCE; SO_RCVBUF, capped at twice `net.core.rmem_max`, without
//! CAP_NET_ADMIN), and what the kernel drops when it is full is read from
//! `PACKET_STATISTICS` every second and at stop, warned about (rate-limited) and
//! logged in the summary (`dropped`; packets still queued at stop: `unread_at_stop`).
//! The reader drains the socket until it is empty on each wake-up, into one reused
//! buffer.
//!
//! An extra expression (`monitor.sniff.filter`, a pcap-syntax subset: see
//! [`super::filter`]) is evaluated in user space on each hit, on the packet itself
//! (the RST or ICMP error, as the original's libpcap filter was): a hit it rejects
//! is counted (`filtered`, and `sniff_filtered` in the stats) and not acted on.
//! It is set at start; a change needs a restart (like the interfaces).
//!
//! Limits: IPv6 packets with extension headers between the IPv6 header and TCP /
//! ICMPv6 are not recognised (the kernel does not add any to a RST or an ICMPv6
//! error); IPv4 fragments other than the first are ignored.

use super::filter::Filter;
use super::packet::{be16, be32, ipv4, ipv6, IpHeader, PacketError};
use super::Monitor;
use crate::proto::Protocol;
use crate::server::{Ensured, PortTable, Trigger};
use arc_swap::ArcSwap;
use nix::sys::socket::MsgFlags;
use socket2::{Domain, Socket, Type};
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Name of this monitor (in events: `honeytrap.monitor`).
pub const NAME: &str = "sniff";

/// Receive buffer: larger than anything the filter lets through (it keeps at most
/// 65535 bytes of a packet).
const BUF: usize = 64 * 1024;

/// What the filter keeps of an accepted packet.
const SNAP: u32 = 65_535;

/// How often the kernel's drop counter is read (and a warning possibly logged).
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Packets read per wake-up before the reader yields to other tasks.
const BATCH: usize = 256;

/// `sll_pkttype` of a packet this host sends (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

/// `PACKET_ADD_MEMBERSHIP` / `PACKET_MR_PROMISC` (linux/if_packet.h).
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;

/// `struct packet_mreq` (linux/if_packet.h).
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [libc::c_uchar; 8],
}

// ---------------------------------------------------------------------------------
// The BPF program
// ---------------------------------------------------------------------------------

/// Jump targets of the program: `Next` is the following instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Next,
    V4,
    V6,
    Tcp4,
    Icmp4,
    Tcp6,
    Icmp6,
    Accept,
    Drop,
}

/// One instruction with symbolic jump targets.
struct Line {
    label: Option<To>,
    code: u32,
    k: u32,
    jt: To,
    jf: To,
}

fn stmt(code: u32, k: u32) -> Line {
    Line {
        label: None,
        code,
        k,
        jt: To::Next,
        jf: To::Next,
    }
}

fn jump(code: u32, k: u32, jt: To, jf: To) -> Line {
    Line {
        label: None,
        code,
        k,
        jt,
        jf,
    }
}

impl Line {
    fn at(mut self, label: To) -> Line {
        self.label = Some(label);
        self
    }
}

/// `SKF_AD_OFF + x`: an ancillary load (metadata of the packet, not its bytes).
fn ancillary(x: libc::c_int) -> u32 {
    (libc::SKF_AD_OFF + x) as u32
}

/// The program, with symbolic labels. Offsets are from the network header (the
/// socket is cooked). A load beyond the end of the packet drops it.
fn listing() -> Vec<Line> {
    use libc::{
        BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX,
        BPF_MSH, BPF_RET, BPF_W,
    };
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let jset = BPF_JMP | BPF_JSET | BPF_K;
    vec![
        // ldb [pkttype]: how the packet was seen (ancillary SKF_AD_PKTTYPE).
        stmt(BPF_LD | BPF_B | BPF_ABS, ancillary(libc::SKF_AD_PKTTYPE)),
        // Only what this host sends.
        jump(jeq, PACKET_OUTGOING as u32, To::Next, To::Drop),
        // ldh [protocol]: the EtherType, in host order (ancillary SKF_AD_PROTOCOL).
        stmt(BPF_LD | BPF_H | BPF_ABS, ancillary(libc::SKF_AD_PROTOCOL)),
        // IPv4 ...
        jump(jeq, 0x0800, To::V4, To::Next),
        // ... or IPv6; anything else is dropped.
        jump(jeq, 0x86dd, To::V6, To::Drop),
        // v4: ldh [6]: flags and fragment offset.
        stmt(BPF_LD | BPF_H | BPF_ABS, 6).at(To::V4),
        // A fragment other than the first carries no TCP/ICMP header: drop.
        jump(jset, 0x1fff, To::Drop, To::Next),
        // ldb [9]: the IPv4 protocol.
        stmt(BPF_LD | BPF_B | BPF_ABS, 9),
        // TCP ...
        jump(jeq, 6, To::Tcp4, To::Next),
        // ... or ICMP; anything else is dropped.
        jump(jeq, 1, To::Icmp4, To::Drop),
        // tcp4: ldxb 4*([0]&0xf): X = the IPv4 header length.
        stmt(BPF_LDX | BPF_B | BPF_MSH, 0).at(To::Tcp4),
        // ldb [x+13]: the TCP flags.
        stmt(BPF_LD | BPF_B | BPF_IND, 13),
        // RST set, else drop.
        jump(jset, 0x04, To::Next, To::Drop),
        // ld [x+4]: the sequence number.
        stmt(BPF_LD | BPF_W | BPF_IND, 4),
        // 0 (the answer to a SYN on a closed port): accept.
        jump(jeq, 0, To::Accept, To::Drop),
        // icmp4: ldxb 4*([0]&0xf): X = the IPv4 header length.
        stmt(BPF_LDX | BPF_B | BPF_MSH, 0).at(To::Icmp4),
        // ldh [x+0]: ICMP type << 8 | code.
        stmt(BPF_LD | BPF_H | BPF_IND, 0),
        // Destination unreachable (3), port unreachable (3): accept.
        jump(jeq, 0x0303, To::Accept, To::Drop),
        // v6: ldb [6]: the next header (no extension headers are followed).
        stmt(BPF_LD | BPF_B | BPF_ABS, 6).at(To::V6),
        // TCP ...
        jump(jeq, 6, To::Tcp6, To::Next),
        // ... or ICMPv6; anything else is dropped.
        jump(jeq, 58, To::Icmp6, To::Drop),
        // tcp6: ldb [53]: the TCP flags (40-byte IPv6 header + 13).
        stmt(BPF_LD | BPF_B | BPF_ABS, 40 + 13).at(To::Tcp6),
        // RST set, else drop.
        jump(jset, 0x04, To::Next, To::Drop),
        // ld [44]: the sequence number.
        stmt(BPF_LD | BPF_W | BPF_ABS, 40 + 4),
        // 0: accept.
        jump(jeq, 0, To::Accept, To::Drop),
        // icmp6: ldh [40]: ICMPv6 type << 8 | code.
        stmt(BPF_LD | BPF_H | BPF_ABS, 40).at(To::Icmp6),
        // Destination unreachable (1), port unreachable (4): accept.
        jump(jeq, 0x0104, To::Accept, To::Drop),
        // accept: ret #65535: keep the packet (all of it).
        stmt(BPF_RET | BPF_K, SNAP).at(To::Accept),
        // drop: ret #0.
        stmt(BPF_RET | BPF_K, 0).at(To::Drop),
    ]
}

/// The program as `sock_filter`s, labels resolved to forward offsets.
pub fn program() -> io::Result<Vec<libc::sock_filter>> {
    let lines = listing();
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let target = |i: usize, to: To| -> io::Result<u8> {
        if to == To::Next {
            return Ok(0);
        }
        let at = lines
            .iter()
            .position(|l| l.label == Some(to))
            .ok_or_else(|| bad(format!("BPF label {to:?} is not defined")))?;
        if at <= i {
            return Err(bad(format!("BPF jump {i} -> {to:?} goes backwards")));
        }
        u8::try_from(at - i - 1).map_err(|_| bad(format!("BPF jump {i} -> {to:?} too far")))
    };
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(libc::sock_filter {
                code: l.code as u16,
                jt: target(i, l.jt)?,
                jf: target(i, l.jf)?,
                k: l.k,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

/// A closed port the kernel just answered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub protocol: Protocol,
    /// Our side: the closed port (for ICMP: the quoted destination).
    pub local: SocketAddr,
    /// The attacker.
    pub remote: SocketAddr,
    /// Source address of the RST or ICMP error (one of ours, normally).
    pub sender: IpAddr,
}

/// Why a packet is not a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its headers say, or impossible header values.
    Malformed,
    /// A well-formed packet that is not a RST with sequence 0 nor a port unreachable.
    Other,
}

impl From<PacketError> for Reject {
    fn from(e: PacketError) -> Reject {
        match e {
            PacketError::Malformed => Reject::Malformed,
            PacketError::Unsupported => Reject::Other,
        }
    }
}

/// TCP segment from `src` to `dst`: a hit if it is a RST with sequence number 0.
fn tcp(src: IpAddr, dst: IpAddr, seg: &[u8]) -> Result<Hit, Reject> {
    if seg.len() < 20 {
        return Err(Reject::Malformed);
    }
    let (sport, dport) = (be16(seg, 0)?, be16(seg, 2)?);
    if seg[13] & 0x04 == 0 || be32(seg, 4)? != 0 || sport == 0 {
        return Err(Reject::Other);
    }
    Ok(Hit {
        protocol: Protocol::Tcp,
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        sender: src,
    })
}

/// The datagram quoted in a port unreachable: (attacker, our side).
fn quoted_udp(quoted: IpHeader<'_>) -> Result<(SocketAddr, SocketAddr), Reject> {
    let (src, dst, proto, udp) = quoted;
    if proto != 17 {
        return Err(Reject::Other);
    }
    let (sport, dport) = (be16(udp, 0)?, be16(udp, 2)?);
    if dport == 0 {
        return Err(Reject::Other);
    }
    Ok((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

/// Parse one packet (starting at its IP header). Never panics.
pub fn parse(p: &[u8]) -> Result<Hit, Reject> {
    let (src, dst, proto, rest) = match p.first().map(|b| b >> 4) {
        Some(4) => ipv4(p)?,
        Some(6) => ipv6(p)?,
        Some(_) => return Err(Reject::Other),
        None => return Err(Reject::Malformed),
    };
    match (src, proto) {
        (_, 6) => tcp(src, dst, rest),
        (IpAddr::V4(_), 1) => {
            if rest.len() < 8 {
                return Err(Reject::Malformed);
            }
            if (rest[0], rest[1]) != (3, 3) {
                return Err(Reject::Other);
            }
            let (remote, local) = quoted_udp(ipv4(&rest[8..])?)?;
            Ok(Hit {
                protocol: Protocol::Udp,
                local,
                remote,
                sender: src,
            })
        }
        (IpAddr::V6(_), 58) => {
            if rest.len() < 8 {
                return Err(Reject::Malformed);
            }
            if (rest[0], rest[1]) != (1, 4) {
                return Err(Reject::Other);
            }
            let (remote, local) = quoted_udp(ipv6(&rest[8..])?)?;
            Ok(Hit {
                protocol: Protocol::Udp,
                local,
                remote,
                sender: src,
            })
        }
        _ => Err(Reject::Other),
    }
}

// ---------------------------------------------------------------------------------
// The monitor
// ---------------------------------------------------------------------------------

/// What the monitor saw, logged at info when it stops.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    tcp_resets: AtomicU64,
    port_unreachables: AtomicU64,
    not_ours: AtomicU64,
    /// Rejected by `monitor.sniff.filter`.
    filtered: AtomicU64,
    malformed: AtomicU64,
    other: AtomicU64,
    started: AtomicU64,
    running: AtomicU64,
    ignored: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
    /// Dropped by the kernel because a receive buffer was full (PACKET_STATISTICS).
    dropped: AtomicU64,
    /// Part of `dropped` no warning has named yet.
    unwarned: AtomicU64,
    /// Still queued at stop, read and discarded.
    unread: AtomicU64,
}

/// State shared by the reading tasks.
struct Shared {
    /// Our addresses: a RST or ICMP error from any other source is not ours.
    addresses: ArcSwap<HashSet<IpAddr>>,
    /// `monitor.sniff.filter`, parsed (None: no filter).
    filter: ArcSwap<Option<Filter>>,
    counters: Counters,
    /// Reading tasks still running (the last one logs the summary).
    readers: AtomicUsize,
}

/// The `sniff` monitor.
pub struct SniffMonitor {
    shared: Arc<Shared>,
    /// `[monitor.sniff]` as started (interfaces and promiscuous need a restart).
    started: Option<crate::config::SniffConfig>,
}

impl Default for SniffMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl SniffMonitor {
    pub fn new() -> SniffMonitor {
        SniffMonitor {
            shared: Arc::new(Shared {
                addresses: ArcSwap::from_pointee(HashSet::new()),
                filter: ArcSwap::from_pointee(None),
                counters: Counters::default(),
                readers: AtomicUsize::new(0),
            }),
            started: None,
        }
    }

    /// Set the address list from the config, or read it from the interfaces.
    fn refresh_addresses(&self, cfg: &crate::config::SniffConfig) -> usize {
        let set: HashSet<IpAddr> = if cfg.addresses.is_empty() {
            host_addresses()
        } else {
            cfg.addresses.iter().copied().collect()
        };
        let n = set.len();
        if n == 0 {
            tracing::warn!("monitor.sniff: no addresses of this host are known; every packet will be ignored (set monitor.sniff.addresses)");
        }
        self.shared.addresses.store(Arc::new(set));
        n
    }

    /// Set the filter from the config (validated when the config was loaded).
    fn refresh_filter(&self, cfg: &crate::config::SniffConfig) -> anyhow::Result<()> {
        let f = super::filter::parse(&cfg.filter)
            .map_err(|e| anyhow::anyhow!("monitor.sniff.filter: {e}"))?;
        self.shared.filter.store(Arc::new(f));
        Ok(())
    }
}

/// Every address of every interface (getifaddrs).
fn host_addresses() -> HashSet<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "monitor.sniff: cannot list the addresses of this host");
            HashSet::new()
        }
    }
}

/// Open a packet socket with the filter attached and a receive buffer of `rcvbuf`
/// bytes, bound to `ifindex` (0: every interface), promiscuous on each of `promisc`.
/// Returns it with the receive buffer in force.
fn open(ifindex: u32, promisc: &[u32], rcvbuf: u64, what: &str) -> io::Result<(Socket, usize)> {
    // Protocol 0: the socket receives nothing until it is bound below, so no packet
    // arrives before the filter and the buffer size are in place.
    let s = Socket::new(Domain::PACKET, Type::DGRAM, None)?;
    s.attach_filter(&program()?)?;
    let rcvbuf = set_rcvbuf(s.as_raw_fd(), rcvbuf, what)?;
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
        sll_ifindex: ifindex as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: `sll` is a valid, initialised sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            std::ptr::addr_of!(sll).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    for &index in promisc {
        let mreq = PacketMreq {
            mr_ifindex: index as libc::c_int,
            mr_type: PACKET_MR_PROMISC,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: `mreq` is a valid packet_mreq and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                std::ptr::addr_of!(mreq).cast::<libc::c_void>(),
                std::mem::size_of::<PacketMreq>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    s.set_nonblocking(true)?;
    Ok((s, rcvbuf))
}

/// Set the socket's receive buffer to `bytes`: SO_RCVBUFFORCE (CAP_NET_ADMIN, beyond
/// net.core.rmem_max), else SO_RCVBUF (at most twice net.core.rmem_max) with a
/// warning when the kernel caps it.
/// Returns the size in force.
fn set_rcvbuf(fd: libc::c_int, bytes: u64, what: &str) -> io::Result<usize> {
    // The size in force is compared with the truesize of the queued packets (832
    // bytes per RST or port unreachable, measured on Linux 6.18).
    let (got, forced) = super::sockbuf::set_rcvbuf(fd, bytes)?;
    let Some(forced) = forced else {
        return Ok(got);
    };
    if (got as u64) < bytes {
        tracing::warn!(
            interface = %what,
            rcvbuf = got,
            wanted = bytes,
            error = %forced,
            "monitor.sniff.rcvbuf: SO_RCVBUFFORCE refused (needs CAP_NET_ADMIN, which is not kept after the privilege drop); the kernel capped the buffer at twice net.core.rmem_max: raise that sysctl to half of rcvbuf, or expect drops (counted) under bursts"
        );
    }
    Ok(got)
}

/// Packets the kernel dropped at this socket since the last call (the counter
/// resets on read).
fn take_drops(fd: libc::c_int) -> io::Result<u64> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writes and `len` is the size of `st`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            std::ptr::addr_of_mut!(st).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.tp_drops.into())
}

impl Shared {
    /// One packet the filter let through.
    fn handle(&self, packet: &[u8], pkttype: Option<u8>, table: &Arc<PortTable>) {
        let c = &self.counters;
        c.packets.fetch_add(1, Relaxed);
        if pkttype.is_some_and(|t| t != PACKET_OUTGOING) {
            c.other.fetch_add(1, Relaxed);
            return;
        }
        let hit = match parse(packet) {
            Ok(hit) => hit,
            Err(Reject::Malformed) => {
                c.malformed.fetch_add(1, Relaxed);
                tracing::debug!(len = packet.len(), "sniff: malformed packet ignored");
                return;
            }
            Err(Reject::Other) => {
                c.other.fetch_add(1, Relaxed);
                return;
            }
        };
        if !self.addresses.load().contains(&hit.sender) {
            c.not_ours.fetch_add(1, Relaxed);
            tracing::debug!(sender = %hit.sender, local = %hit.local, "sniff: not from an address of this host; ignored");
            return;
        }
        if let Some(f) = self.filter.load().as_ref() {
            if !f.matches(packet) {
                c.filtered.fetch_add(1, Relaxed);
                crate::stats::Stats::inc(&table.context().stats.sniff_filtered);
                tracing::debug!(protocol = %hit.protocol, local = %hit.local, remote = %hit.remote, "sniff: rejected by monitor.sniff.filter; ignored");
                return;
            }
        }
        match hit.protocol {
            Protocol::Tcp => c.tcp_resets.fetch_add(1, Relaxed),
            Protocol::Udp => c.port_unreachables.fetch_add(1, Relaxed),
        };
        let result = table.trigger(&Trigger {
            protocol: hit.protocol,
            local: hit.local,
            remote: hit.remote,
            monitor: NAME,
        });
        let counter = match result {
            Ensured::Started => &c.started,
            Ensured::Running => &c.running,
            Ensured::Ignored => &c.ignored,
            Ensured::Unavailable | Ensured::Full => &c.unavailable,
        };
        counter.fetch_add(1, Relaxed);
        tracing::debug!(protocol = %hit.protocol, local = %hit.local, remote = %hit.remote, result = ?result, "sniff: closed port hit");
    }

    /// Add the drops the kernel counted at `fd` since the last look; warn about them
    /// (once per throttle interval, or whatever is left at `stop`).
    fn account_drops(
        &self,
        fd: libc::c_int,
        what: &str,
        rcvbuf: usize,
        table: &PortTable,
        stop: bool,
    ) {
        let c = &self.counters;
        match take_drops(fd) {
            Ok(0) => {}
            Ok(n) => {
                c.dropped.fetch_add(n, Relaxed);
                c.unwarned.fetch_add(n, Relaxed);
            }
            Err(e) => {
                c.errors.fetch_add(1, Relaxed);
                tracing::debug!(interface = %what, error = %e, "sniff: cannot read PACKET_STATISTICS");
            }
        }
        if c.unwarned.load(Relaxed) == 0 {
            return;
        }
        let held = table.context().throttle.allow("sniff_dropped");
        if held.is_some() || stop {
            let n = c.unwarned.swap(0, Relaxed);
            if n > 0 {
                tracing::warn!(
                    interface = %what,
                    dropped = n,
                    rcvbuf,
                    "sniff: {n} packets dropped by the kernel: raise monitor.sniff.rcvbuf"
                );
            }
        }
    }

    fn log_summary(&self) {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Relaxed);
        tracing::info!(
            packets = g(&c.packets),
            tcp_resets = g(&c.tcp_resets),
            port_unreachables = g(&c.port_unreachables),
            servers_started = g(&c.started),
            already_running = g(&c.running),
            ignored_ports = g(&c.ignored),
            unavailable = g(&c.unavailable),
            not_ours = g(&c.not_ours),
            filtered = g(&c.filtered),
            malformed = g(&c.malformed),
            other = g(&c.other),
            errors = g(&c.errors),
            dropped = g(&c.dropped),
            unread_at_stop = g(&c.unread),
            "sniff monitor stopped"
        );
    }
}

/// Read and discard what is queued on the non-blocking socket `fd`; returns how many
/// packets there were (bounded: at most what a 1 GiB buffer holds).
fn discard_queued(fd: libc::c_int, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    while n < (1 << 21) && nix::sys::socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT).is_ok() {
        n += 1;
    }
    n
}

/// One packet socket being read.
struct Reader {
    fd: AsyncFd<Socket>,
    /// The interface name, or `*` for all of them (in logs).
    what: String,
    /// Its receive buffer in force, in bytes (in the drop warning).
    rcvbuf: usize,
}

/// Read one socket until shutdown; look at its drop counter every second.
async fn read_loop(r: Reader, table: Arc<PortTable>, shared: Arc<Shared>) {
    let stop = table.context().stop_accepting.clone();
    let raw = r.fd.get_ref().as_raw_fd();
    let mut buf = vec![0u8; BUF];
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut guard = tokio::select! {
            g = r.fd.readable() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(interface = %r.what, error = %e, "sniff: socket failed; this interface is no longer watched");
                    break;
                }
            },
            _ = tick.tick() => {
                shared.account_drops(raw, &r.what, r.rcvbuf, &table, false);
                continue;
            }
            _ = stop.cancelled() => break,
        };
        // Drain: one wake-up serves every queued packet (up to BATCH, then the
        // readiness is kept and the next `readable` returns at once).
        for _ in 0..BATCH {
            let got = guard.try_io(|s| {
                nix::sys::socket::recvfrom::<nix::sys::socket::LinkAddr>(s.as_raw_fd(), &mut buf)
                    .map_err(io::Error::from)
            });
            match got {
                Ok(Ok((n, addr))) => {
                    let n = n.min(buf.len());
                    shared.handle(&buf[..n], addr.map(|a| a.pkttype()), &table);
                }
                Ok(Err(e)) => {
                    // ENETDOWN when a watched interface goes down, for example.
                    shared.counters.errors.fetch_add(1, Relaxed);
                    tracing::warn!(interface = %r.what, error = %e, "sniff: receive error");
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
    shared.account_drops(raw, &r.what, r.rcvbuf, &table, true);
    // What is still queued is no longer served (no server starts after the stop):
    // counted, so that seen + dropped + unread is every packet the filter kept.
    let unread = discard_queued(raw, &mut buf);
    shared.counters.unread.fetch_add(unread, Relaxed);
    if shared.readers.fetch_sub(1, Relaxed) == 1 {
        shared.log_summary();
    }
}

impl Monitor for SniffMonitor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Vec<caps::Capability> {
        // The packet socket is opened after the privilege drop; servers may be
        // started on ports below 1024; SO_RCVBUFFORCE (monitor.sniff.rcvbuf above
        // net.core.rmem_max) needs CAP_NET_ADMIN.
        vec![
            caps::Capability::CAP_NET_RAW,
            caps::Capability::CAP_NET_BIND_SERVICE,
            caps::Capability::CAP_NET_ADMIN,
        ]
    }

    fn start(&mut self, table: &Arc<PortTable>) -> anyhow::Result<()> {
        let cfg = table.context().config().config.monitor.sniff.clone();
        self.refresh_filter(&cfg)?;
        // Resolve every name first: a missing interface is an error naming it.
        let mut watched = Vec::new();
        for name in &cfg.interfaces {
            let index = nix::net::if_::if_nametoindex(name.as_str()).map_err(|e| {
                anyhow::anyhow!("monitor.sniff.interfaces: no such interface `{name}` ({e})")
            })?;
            watched.push((name.clone(), index));
        }
        let mut sockets = Vec::new();
        if watched.is_empty() {
            let promisc: Vec<u32> = if cfg.promiscuous {
                nix::net::if_::if_nameindex()
                    .map_err(|e| anyhow::anyhow!("monitor.sniff: listing interfaces: {e}"))?
                    .iter()
                    .map(|i| i.index())
                    .collect()
            } else {
                Vec::new()
            };
            let s = open(0, &promisc, cfg.rcvbuf, "*").map_err(|e| {
                anyhow::anyhow!(
                    "monitor.sniff: cannot open a packet socket (needs CAP_NET_RAW): {e}"
                )
            })?;
            sockets.push(("*".to_string(), s));
        } else {
            for (name, index) in &watched {
                let promisc = if cfg.promiscuous {
                    vec![*index]
                } else {
                    vec![]
                };
                let s = open(*index, &promisc, cfg.rcvbuf, name).map_err(|e| {
                    anyhow::anyhow!(
                        "monitor.sniff: cannot open a packet socket on `{name}` (needs CAP_NET_RAW): {e}"
                    )
                })?;
                sockets.push((name.clone(), s));
            }
        }
        let readers = sockets
            .into_iter()
            .map(|(what, (s, rcvbuf))| {
                // SAFETY: the socket owns its descriptor, which stays open and the
                // same until the AsyncFd (which owns the socket) is dropped.
                let fd = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
                    .map_err(io::Error::from)?;
                Ok(Reader { fd, what, rcvbuf })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let rcvbuf = readers.first().map_or(0, |r| r.rcvbuf);
        let addresses = self.refresh_addresses(&cfg);
        self.shared.readers.store(readers.len(), Relaxed);
        // Tracked with the sessions, so shutdown waits for the readers (and their
        // summary line) before the process exits.
        for r in readers {
            table.context().sessions.spawn(read_loop(
                r,
                Arc::clone(table),
                Arc::clone(&self.shared),
            ));
        }
        tracing::info!(
            interfaces = if cfg.interfaces.is_empty() {
                "all".to_string()
            } else {
                cfg.interfaces.join(" ")
            },
            promiscuous = cfg.promiscuous,
            addresses,
            rcvbuf,
            filter = %cfg.filter,
            "sniffing for outgoing TCP RST and ICMP port unreachable; no port is bound before it is hit"
        );
        self.started = Some(cfg);
        Ok(())
    }

    fn reload(&mut self, table: &Arc<PortTable>) {
        let cfg = table.context().config().config.monitor.sniff.clone();
        if let Some(old) = &self.started {
            if old.interfaces != cfg.interfaces
                || old.promiscuous != cfg.promiscuous
                || old.rcvbuf != cfg.rcvbuf
            {
                tracing::warn!("SIGHUP: changes to monitor.sniff.interfaces, monitor.sniff.promiscuous and monitor.sniff.rcvbuf need a restart; they are kept as they were");
            }
        }
        let n = self.refresh_addresses(&cfg);
        tracing::info!(addresses = n, "sniff: addresses of this host refreshed");
        // The filter stays as started: it may come from the original command line,
        // which a reload of the file does not see.
        if self
            .started
            .as_ref()
            .is_some_and(|old| old.filter != cfg.filter)
        {
            tracing::warn!("SIGHUP: monitor.sniff.filter differs from the expression in force (set at start from the configuration or the original command line); a change needs a restart, the expression in force is kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v4_header(proto: u8, src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        let total = (20 + payload_len) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    fn v6_header(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload_len as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h
    }

    fn tcp_seg(sport: u16, dport: u16, seq: u32, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&1234u32.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
        t
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    const US4: [u8; 4] = [10, 0, 0, 1];
    const THEM4: [u8; 4] = [203, 0, 113, 9];

    fn us6() -> Ipv6Addr {
        "fd00::1".parse().unwrap()
    }
    fn them6() -> Ipv6Addr {
        "2001:db8::9".parse().unwrap()
    }

    /// RST|ACK seq 0 from us:2222 to them:40000.
    fn rst4() -> Vec<u8> {
        let t = tcp_seg(2222, 40000, 0, 0x14);
        let mut p = v4_header(6, US4, THEM4, t.len());
        p.extend(t);
        p
    }

    fn rst6() -> Vec<u8> {
        let t = tcp_seg(2222, 40000, 0, 0x14);
        let mut p = v6_header(6, us6(), them6(), t.len());
        p.extend(t);
        p
    }

    /// Port unreachable from us about them:41000 -> us:5060.
    fn unreach4() -> Vec<u8> {
        let u = udp(41000, 5060, b"probe");
        let mut quoted = v4_header(17, THEM4, US4, u.len());
        quoted.extend(u);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend(quoted);
        let mut p = v4_header(1, US4, THEM4, icmp.len());
        p.extend(icmp);
        p
    }

    fn unreach6() -> Vec<u8> {
        let u = udp(41000, 5060, b"probe");
        let mut quoted = v6_header(17, them6(), us6(), u.len());
        quoted.extend(u);
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend(quoted);
        let mut p = v6_header(58, us6(), them6(), icmp.len());
        p.extend(icmp);
        p
    }

    #[test]
    fn tcp_rst_with_sequence_zero_over_ipv4_and_ipv6() {
        let h = parse(&rst4()).unwrap();
        assert_eq!(h.protocol, Protocol::Tcp);
        assert_eq!(h.local, "10.0.0.1:2222".parse().unwrap());
        assert_eq!(h.remote, "203.0.113.9:40000".parse().unwrap());
        assert_eq!(h.sender, IpAddr::from(US4));
        let h = parse(&rst6()).unwrap();
        assert_eq!(h.local, "[fd00::1]:2222".parse().unwrap());
        assert_eq!(h.remote, "[2001:db8::9]:40000".parse().unwrap());
    }

    #[test]
    fn port_unreachable_names_the_quoted_destination() {
        let h = parse(&unreach4()).unwrap();
        assert_eq!(h.protocol, Protocol::Udp);
        assert_eq!(h.local, "10.0.0.1:5060".parse().unwrap());
        assert_eq!(h.remote, "203.0.113.9:41000".parse().unwrap());
        let h = parse(&unreach6()).unwrap();
        assert_eq!(h.protocol, Protocol::Udp);
        assert_eq!(h.local, "[fd00::1]:5060".parse().unwrap());
        assert_eq!(h.remote, "[2001:db8::9]:41000".parse().unwrap());
        assert_eq!(h.sender, IpAddr::from(us6()));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let t = tcp_seg(2222, 40000, 0, 0x04);
        let mut p = v4_header(6, US4, THEM4, t.len() + 4);
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend(t);
        assert_eq!(parse(&p).unwrap().local.port(), 2222);
    }

    #[test]
    fn other_packets_are_not_hits() {
        // RST with a sequence number (an established connection reset).
        let t = tcp_seg(2222, 40000, 77, 0x14);
        let mut p = v4_header(6, US4, THEM4, t.len());
        p.extend(t);
        assert_eq!(parse(&p), Err(Reject::Other));
        // SYN-ACK.
        let t = tcp_seg(2222, 40000, 0, 0x12);
        let mut p = v4_header(6, US4, THEM4, t.len());
        p.extend(t);
        assert_eq!(parse(&p), Err(Reject::Other));
        // Host unreachable (code 1).
        let mut p = unreach4();
        p[21] = 1;
        assert_eq!(parse(&p), Err(Reject::Other));
        // ICMPv6 address unreachable (code 3).
        let mut p = unreach6();
        p[41] = 3;
        assert_eq!(parse(&p), Err(Reject::Other));
        // A non-first fragment.
        let mut p = rst4();
        p[7] = 10;
        assert_eq!(parse(&p), Err(Reject::Other));
        // Port unreachable quoting TCP instead of UDP.
        let mut p = unreach4();
        p[20 + 8 + 9] = 6;
        assert_eq!(parse(&p), Err(Reject::Other));
        // Not IP at all.
        assert_eq!(parse(&[0x20, 1, 2]), Err(Reject::Other));
    }

    #[test]
    fn truncated_and_malformed_packets_never_panic() {
        // Shortest complete form: IP + TCP header; IP + ICMP + quoted IP + UDP ports.
        for (p, min) in [
            (rst4(), 40),
            (rst6(), 60),
            (unreach4(), 52),
            (unreach6(), 92),
        ] {
            for n in 0..p.len() {
                let r = parse(&p[..n]);
                assert_eq!(r.is_ok(), n >= min, "{n} bytes of {p:?}: {r:?}");
            }
        }
        // Header length below 20.
        let mut p = rst4();
        p[0] = 0x44;
        assert_eq!(parse(&p), Err(Reject::Malformed));
        // Header length beyond the packet.
        let mut p = rst4();
        p[0] = 0x4f;
        p.truncate(50);
        assert_eq!(parse(&p), Err(Reject::Malformed));
        // Quoted header of the wrong version.
        let mut p = unreach4();
        p[28] = 0x65;
        assert_eq!(parse(&p), Err(Reject::Malformed));
        assert_eq!(parse(&[]), Err(Reject::Malformed));
        // Arbitrary bytes.
        let mut x: u32 = 1;
        for len in 0..300 {
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

    #[test]
    fn rcvbuf_defaults_to_8_mib_and_is_validated() {
        let parse = |t: &str| crate::config::parse(std::path::Path::new("t"), t);
        assert_eq!(parse("").unwrap().monitor.sniff.rcvbuf, 8 << 20);
        let c = parse("[monitor.sniff]\nrcvbuf = \"64KiB\"\n").unwrap();
        assert_eq!(c.monitor.sniff.rcvbuf, 64 << 10);
        for bad in ["\"63KiB\"", "\"2GiB\"", "0"] {
            let e = parse(&format!("[monitor.sniff]\nrcvbuf = {bad}\n")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line),
                ("monitor.sniff.rcvbuf", Some(2)),
                "{e}"
            );
        }
    }

    #[test]
    fn filter_is_validated_at_load_and_applies_to_the_hits() {
        let parse = |t: &str| crate::config::parse(std::path::Path::new("t"), t);
        assert_eq!(parse("").unwrap().monitor.sniff.filter, "");
        let c = parse("[monitor.sniff]\nfilter = \"not port 22\"\n").unwrap();
        assert_eq!(c.monitor.sniff.filter, "not port 22");
        let e = parse("[monitor.sniff]\nrcvbuf = \"1MiB\"\nfilter = \"tcp[13] & 4 != 0\"\n")
            .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("monitor.sniff.filter", Some(3)),
            "{e}"
        );
        assert!(e.to_string().contains("column 4, `[`"), "{e}");
        // On the packets the kernel filter keeps: src is us, dst the attacker; the
        // ICMP error has no ports (pcap's meaning).
        let f = |s: &str| super::super::filter::parse(s).unwrap().unwrap();
        for p in [rst4(), unreach4(), rst6(), unreach6()] {
            assert!(parse_ok(&p));
            assert!(f("not port 22").matches(&p));
            assert!(f("src host 10.0.0.1 or src host fd00::1").matches(&p));
            assert!(!f("dst host 10.0.0.1 or dst host fd00::1").matches(&p));
        }
        assert!(f("port 2222").matches(&rst4()));
        assert!(!f("port 5060").matches(&unreach4()));
        assert!(f("port 5060 or icmp").matches(&unreach4()));
        assert!(!f("port 5060 or icmp").matches(&unreach6()));
    }

    fn parse_ok(p: &[u8]) -> bool {
        parse(p).is_ok()
    }

    #[test]
    fn drop_counter_of_a_packet_socket_is_readable_and_rcvbuf_is_forced() {
        let root = nix::unistd::Uid::effective().is_root();
        let s = match Socket::new(Domain::PACKET, Type::DGRAM, None) {
            Ok(s) => s,
            // A packet socket needs CAP_NET_RAW: only skipped when not root.
            Err(e) if !root => return eprintln!("SKIPPED: no packet socket ({e})"),
            Err(e) => panic!("packet socket as root: {e}"),
        };
        assert_eq!(take_drops(s.as_raw_fd()).unwrap(), 0);
        let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let beyond = 4 * rmem_max;
        let got = set_rcvbuf(s.as_raw_fd(), beyond, "test").unwrap();
        if !root {
            return;
        }
        // SO_RCVBUFFORCE: the size as given, beyond net.core.rmem_max.
        assert_eq!(got as u64, beyond);
        // Without CAP_NET_ADMIN (capabilities are per thread: dropped in a thread of
        // its own), SO_RCVBUF applies, capped at twice rmem_max.
        let fd = s.as_raw_fd();
        let capped = std::thread::spawn(move || {
            caps::drop(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_NET_ADMIN,
            )
            .unwrap();
            set_rcvbuf(fd, beyond, "test").unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(capped as u64, 2 * rmem_max);
    }

    #[test]
    fn bpf_program_jumps_stay_in_range_and_end_in_returns() {
        let prog = program().unwrap();
        assert!(prog.len() < 256);
        for (i, ins) in prog.iter().enumerate() {
            if ins.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + (ins.jt as usize) < prog.len(), "jt of {i}");
                assert!(i + 1 + (ins.jf as usize) < prog.len(), "jf of {i}");
            } else {
                assert_eq!((ins.jt, ins.jf), (0, 0), "non-jump {i} has jump offsets");
            }
        }
        let last = prog.last().unwrap();
        assert_eq!(last.code, (libc::BPF_RET | libc::BPF_K) as u16);
        assert_eq!(last.k, 0);
    }

    /// A classic BPF interpreter for the instructions the program uses.
    fn run(prog: &[libc::sock_filter], pkt: &[u8], pkttype: u8, ethertype: u16) -> u32 {
        use libc::{BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JSET, BPF_MSH, BPF_W};
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |at: u32, size: u32| -> Option<u32> {
            if at == ancillary(libc::SKF_AD_PKTTYPE) {
                return Some(pkttype.into());
            }
            if at == ancillary(libc::SKF_AD_PROTOCOL) {
                return Some(ethertype.into());
            }
            let at = at as usize;
            let n = match size {
                s if s == BPF_B => 1,
                s if s == BPF_H => 2,
                s if s == BPF_W => 4,
                _ => unreachable!(),
            };
            let b = pkt.get(at..at + n)?;
            Some(b.iter().fold(0u32, |v, &x| v << 8 | u32::from(x)))
        };
        loop {
            let ins = prog[pc];
            let code = u32::from(ins.code);
            pc += 1;
            match code & 0x07 {
                0x00 => {
                    let at = if code & 0xe0 == BPF_IND {
                        x + ins.k
                    } else {
                        ins.k
                    };
                    assert!(code & 0xe0 == BPF_ABS || code & 0xe0 == BPF_IND);
                    match load(at, code & 0x18) {
                        Some(v) => a = v,
                        None => return 0,
                    }
                }
                0x01 => {
                    assert_eq!(code & 0xe0, BPF_MSH);
                    match pkt.get(ins.k as usize) {
                        Some(b) => x = 4 * u32::from(b & 0x0f),
                        None => return 0,
                    }
                }
                0x05 => {
                    let taken = match code & 0xf0 {
                        c if c == BPF_JEQ => a == ins.k,
                        c if c == BPF_JSET => a & ins.k != 0,
                        _ => unreachable!(),
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                0x06 => return ins.k,
                c => panic!("unexpected class {c}"),
            }
        }
    }

    #[test]
    fn bpf_program_keeps_exactly_the_hits() {
        let prog = program().unwrap();
        let (ip4, ip6) = (0x0800, 0x86dd);
        for (p, et) in [
            (rst4(), ip4),
            (rst6(), ip6),
            (unreach4(), ip4),
            (unreach6(), ip6),
        ] {
            assert_eq!(run(&prog, &p, PACKET_OUTGOING, et), SNAP, "{p:?}");
            // Incoming copies (PACKET_HOST) are not wanted.
            assert_eq!(run(&prog, &p, 0, et), 0);
            // Truncated to the IP header: dropped, not an error.
            assert_eq!(run(&prog, &p[..20], PACKET_OUTGOING, et), 0);
        }
        // IPv4 with options: X follows the header length.
        let t = tcp_seg(2222, 40000, 0, 0x04);
        let mut p = v4_header(6, US4, THEM4, t.len() + 4);
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend(t);
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip4), SNAP);
        // RST with a sequence number, SYN-ACK, other ICMP: dropped.
        let mut p = rst4();
        p[20 + 7] = 1;
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip4), 0);
        let mut p = rst6();
        p[40 + 13] = 0x12;
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip6), 0);
        let mut p = unreach4();
        p[21] = 1;
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip4), 0);
        let mut p = unreach6();
        p[40] = 3;
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip6), 0);
        // A non-first fragment, and a non-IP EtherType.
        let mut p = rst4();
        p[7] = 1;
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, ip4), 0);
        assert_eq!(run(&prog, &rst4(), PACKET_OUTGOING, 0x0806), 0);
    }
}
