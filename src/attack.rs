//! The attack record: one session's metadata and transcript, plus payload hashes.
//!
//! A mode handler fills a [`Transcript`] while the session runs; when it ends the
//! session is frozen into an [`Attack`] that flows, unchanged, to every sink.

use crate::proto::Protocol;
use chrono::{DateTime, Utc};
use md5::{Digest as _, Md5};
use serde::Serialize;
use sha2::{Sha256, Sha512};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use uuid::Uuid;

/// Most chunks a transcript keeps apart; later ones in the same direction merge.
pub const MAX_CHUNKS: usize = 4096;

/// Which way a chunk of data travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the attacker to honeytrap.
    In,
    /// From honeytrap to the attacker.
    Out,
}

impl Direction {
    /// The other way.
    pub fn flip(self) -> Direction {
        match self {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        }
    }
}

/// One read or write of a session, in order.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// When the chunk was read or written.
    pub at: DateTime<Utc>,
    /// Which way it went.
    pub direction: Direction,
    /// The bytes (possibly cut short when `read_limit` was reached).
    pub data: Vec<u8>,
}

/// The ordered, timestamped chunks of one session in both directions, bounded by a
/// byte limit on what is kept from the attacker.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Chunks in the order they happened.
    pub chunks: Vec<Chunk>,
    /// Bytes received from the attacker and kept.
    pub bytes_in: u64,
    /// Bytes sent to the attacker.
    pub bytes_out: u64,
    /// True when `read_limit` was reached (incoming data may have been cut).
    pub truncated: bool,
    /// Findings of the per-read analyzers, made while the session ran.
    pub findings: Vec<crate::analysis::Finding>,
}

impl Transcript {
    /// Record bytes received, keeping at most `limit` incoming bytes in total.
    /// Returns false once the limit is reached (the caller should end the session).
    pub fn push_in(&mut self, data: &[u8], limit: u64) -> bool {
        let room = limit.saturating_sub(self.bytes_in);
        let take = (data.len() as u64).min(room) as usize;
        if take < data.len() || (limit > 0 && self.bytes_in + take as u64 >= limit) {
            self.truncated = true;
        }
        if take > 0 || data.is_empty() {
            self.bytes_in += take as u64;
            self.push(Direction::In, &data[..take]);
        }
        !self.truncated && self.bytes_in < limit
    }

    /// Record bytes sent to the attacker.
    pub fn push_out(&mut self, data: &[u8]) {
        self.bytes_out += data.len() as u64;
        self.push(Direction::Out, data);
    }

    fn push(&mut self, direction: Direction, data: &[u8]) {
        // One copy, straight into the chunk it joins or starts.
        let v = self.tail(direction);
        v.extend_from_slice(data);
    }

    /// The chunk new data going `direction` belongs to: the last one, or a new one.
    fn tail(&mut self, direction: Direction) -> &mut Vec<u8> {
        // Consecutive chunks the same way within one millisecond are merged: a
        // trickling attacker must not cost one Chunk per byte.
        // Past MAX_CHUNKS, data going the same way as the last chunk is always merged
        // into it, which bounds the per-chunk overhead however the peer slices its
        // data (outgoing chunks are bounded by the number of responses).
        let now = Utc::now();
        let full = self.chunks.len() >= MAX_CHUNKS;
        let merge = self.chunks.last().is_some_and(|last| {
            last.direction == direction && (full || (now - last.at).num_milliseconds() < 1)
        });
        if !merge {
            if let Some(last) = self.chunks.last_mut() {
                // Room reserved for reads that did not come (realloc shrinks in place).
                last.data.shrink_to_fit();
            }
            self.chunks.push(Chunk {
                at: now,
                direction,
                data: Vec::new(),
            });
        }
        &mut self.chunks.last_mut().expect("a chunk").data
    }

    /// Record up to `max` bytes going `direction` without an intermediate buffer:
    /// `fill` writes them into the transcript's own memory and says how many;
    /// `admit` sees them and may refuse them, and then nothing is kept. Returns the
    /// bytes kept (0 when `fill` wrote none), None when `admit` refused. Unlike
    /// [`push_in`](Self::push_in), no limit is applied: the caller sets `max`.
    pub fn push_with(
        &mut self,
        direction: Direction,
        max: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> std::io::Result<usize>,
        admit: impl FnOnce(&[u8]) -> bool,
    ) -> std::io::Result<Option<usize>> {
        let count = self.chunks.len();
        let v = self.tail(direction);
        let len = v.len();
        v.reserve(max);
        let r = fill(&mut v.spare_capacity_mut()[..max]).map(|n| n.min(max));
        let n = *r.as_ref().unwrap_or(&0);
        // SAFETY: `fill` initialised the first `n` bytes of the spare capacity.
        unsafe { v.set_len(len + n) };
        let admitted = n > 0 && admit(&v[len..]);
        if !admitted {
            v.truncate(len);
        }
        if !admitted && self.chunks.len() > count {
            self.chunks.pop();
        }
        r?;
        if n > 0 && admitted {
            match direction {
                Direction::In => self.bytes_in += n as u64,
                Direction::Out => self.bytes_out += n as u64,
            }
        }
        Ok((n == 0 || admitted).then_some(n))
    }

    /// The first `max` bytes received from the attacker.
    pub fn payload_prefix(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(max.min(self.bytes_in as usize));
        for c in self.chunks.iter().filter(|c| c.direction == Direction::In) {
            let room = max - out.len();
            if room == 0 {
                break;
            }
            out.extend_from_slice(&c.data[..c.data.len().min(room)]);
        }
        out
    }

    /// Everything sent to the attacker, concatenated.
    pub fn outgoing(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes_out as usize);
        for c in self.chunks.iter().filter(|c| c.direction == Direction::Out) {
            out.extend_from_slice(&c.data);
        }
        out
    }

    /// Everything received from the attacker, concatenated (the "attack string").
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes_in as usize);
        for c in self.chunks.iter().filter(|c| c.direction == Direction::In) {
            out.extend_from_slice(&c.data);
        }
        out
    }
}

/// How a port is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Not handled at all.
    Ignore,
    /// Canned per-port responses.
    Normal,
    /// Connect back to the attacker on the same port and relay both ways.
    Mirror,
    /// Relay to a configured target (a proxy map).
    Proxy,
}

impl Mode {
    /// Lower-case name as used in configs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::Normal => "normal",
            Mode::Mirror => "mirror",
            Mode::Proxy => "proxy",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The attacker closed the connection.
    Closed,
    /// The attacker stayed silent after the last response.
    Idle,
    /// `read_limit` was reached.
    ReadLimit,
    /// `limits.max_buffered` was reached: all sessions together hold too much.
    BufferLimit,
    /// The hard session time limit passed.
    SessionTimeout,
    /// Honeytrap shut down and the grace period ran out.
    Shutdown,
    /// A socket error ended the session.
    Error,
}

/// Message digests of a byte string.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hashes {
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
}

impl Hashes {
    /// Hash `data` with md5, sha256 and sha512 (hex, lower case).
    pub fn of(data: &[u8]) -> Hashes {
        Hashes {
            md5: hex::encode(Md5::digest(data)),
            sha256: hex::encode(Sha256::digest(data)),
            sha512: hex::encode(Sha512::digest(data)),
        }
    }
}

/// One finished session, ready for the sinks: the [`Captured`] session (reachable
/// through `Deref`, so `attack.remote` works) plus what sealing added.
#[derive(Debug, Clone)]
pub struct Attack {
    /// Unique, time-ordered id (UUIDv7).
    pub id: Uuid,
    /// The session as the mode handler recorded it.
    pub session: Captured,
    /// Hashes of the payload (everything received from the attacker).
    pub payload_hashes: Hashes,
    /// Where the transcript was written, once the file store has run.
    pub transcript_ref: Option<crate::sink::transcripts::TranscriptRef>,
    /// What analysis found (empty until the pipeline has run).
    pub analysis: crate::analysis::Analysis,
}

impl std::ops::Deref for Attack {
    type Target = Captured;
    fn deref(&self) -> &Captured {
        &self.session
    }
}

/// A finished session as a mode handler hands it over; [`Captured::seal`] hashes
/// it into an [`Attack`] off the capture path.
#[derive(Debug, Clone)]
pub struct Captured {
    /// When the session started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// Sensor name from the config.
    pub sensor: String,
    /// Monitor that caught the connection attempt.
    pub monitor: String,
    /// How the session was handled.
    pub mode: Mode,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Honeytrap's side of the connection.
    pub local: SocketAddr,
    /// The attacker's side.
    pub remote: SocketAddr,
    /// What was said both ways.
    pub transcript: Transcript,
    /// Number of canned responses sent.
    pub responses_sent: u32,
    /// Why the session ended.
    pub end_reason: EndReason,
    /// The second connection of a mirror or proxy session (None in other modes).
    pub relay: Option<Box<RelayRecord>>,
}

/// Why a mirror or proxy session was served in normal mode instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The target refused the connection.
    Refused,
    /// The connection attempt timed out (`relay.connect_timeout`).
    Timeout,
    /// No route to the target, or another connect error.
    Unreachable,
    /// Mirroring to this address is not allowed (loopback, own, private, ...).
    ForbiddenAddress,
    /// The source opened relays faster than `relay.source_rate`.
    RateLimited,
    /// `relay.max_relays` relays are open.
    RelayCap,
    /// The proxy target's host name could not be resolved.
    ResolveFailed,
    /// UDP mirroring is off (`relay.mirror_udp`).
    MirrorUdpDisabled,
    /// Any other failure to set up the relay.
    Error,
}

/// The second connection of a mirror or proxy session.
#[derive(Debug, Clone)]
pub struct RelayRecord {
    /// Mirror or Proxy.
    pub kind: Mode,
    /// The proxy map's name (None for mirror).
    pub map: Option<String>,
    /// The target as configured (host name or address).
    pub target_host: String,
    /// The address connected to, once known.
    pub target_ip: Option<std::net::IpAddr>,
    pub target_port: u16,
    pub target_protocol: Protocol,
    /// Honeytrap's side of the second connection, once established.
    pub local: Option<SocketAddr>,
    /// Bytes relayed to the target.
    pub bytes_sent: u64,
    /// Bytes received from the target.
    pub bytes_received: u64,
    /// Hashes of what the target sent (filled when the attack is sealed).
    pub received: Option<Hashes>,
    /// Why the session fell back to normal mode, if it did.
    pub fallback: Option<Fallback>,
}

impl RelayRecord {
    /// True if the second connection was established.
    pub fn connected(&self) -> bool {
        self.local.is_some()
    }
}

impl Captured {
    /// A finished TCP session in normal mode from 127.0.0.1:2 to 127.0.0.1:1 that
    /// sent `payload` (all of it): the fixture of the output, event and analysis
    /// tests.
    #[cfg(test)]
    pub(crate) fn test_session(payload: &[u8]) -> Captured {
        let mut t = Transcript::default();
        t.push_in(payload, u64::MAX);
        Captured {
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            sensor: "s".into(),
            monitor: "test".into(),
            mode: Mode::Normal,
            protocol: crate::proto::Protocol::Tcp,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            transcript: t,
            responses_sent: 0,
            relay: None,
            end_reason: EndReason::Closed,
        }
    }

    /// As [`Captured::test_session`], between private addresses (the analysis tests): from
    /// 10.0.0.2:4000 (the attacker) to 10.0.0.1:80, caught by monitor `m`.
    #[cfg(test)]
    pub(crate) fn test_session_private(payload: &[u8]) -> Captured {
        Captured {
            monitor: "m".into(),
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "10.0.0.2:4000".parse().unwrap(),
            ..Captured::test_session(payload)
        }
    }

    /// Bytes this record holds (for the output queue's byte budget).
    pub fn size(&self) -> u64 {
        self.transcript.bytes_in + self.transcript.bytes_out + 512
    }

    /// Hash the payload and give the record its id.
    pub fn seal(mut self) -> Attack {
        self.local = normalize(self.local);
        self.remote = normalize(self.remote);
        if let Some(r) = &mut self.relay {
            r.local = r.local.map(normalize);
            r.target_ip = r.target_ip.map(|ip| normalize(SocketAddr::new(ip, 0)).ip());
            if r.connected() {
                // What the target sent is what was relayed to the attacker.
                r.received = Some(Hashes::of(&self.transcript.outgoing()));
            }
        }
        let analysis = crate::analysis::Analysis {
            findings: std::mem::take(&mut self.transcript.findings),
            ..Default::default()
        };
        Attack {
            id: new_attack_id(self.start),
            payload_hashes: Hashes::of(&self.transcript.payload()),
            session: self,
            transcript_ref: None,
            analysis,
        }
    }
}

/// A UUIDv7 for an attack that started at `start`.
pub fn new_attack_id(start: DateTime<Utc>) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        start.timestamp() as u64,
        start.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts)
}

/// Show IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as plain IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limit_cuts_and_flags() {
        let mut t = Transcript::default();
        assert!(t.push_in(b"hello", 8));
        assert!(!t.push_in(b"world", 8));
        assert_eq!(t.payload(), b"hellowor");
        assert!(t.truncated);
        assert_eq!(t.bytes_in, 8);
    }

    #[test]
    fn directions_keep_order() {
        let mut t = Transcript::default();
        t.push_in(b"a", 100);
        t.push_out(b"b");
        t.push_in(b"c", 100);
        let dirs: Vec<_> = t.chunks.iter().map(|c| c.direction).collect();
        assert_eq!(dirs, [Direction::In, Direction::Out, Direction::In]);
        assert_eq!(t.payload(), b"ac");
        assert_eq!(t.payload_prefix(1), b"a");
        assert_eq!(t.payload_prefix(9), b"ac");
        assert_eq!(t.payload_prefix(0), b"");
        assert_eq!(t.bytes_out, 1);
    }

    #[test]
    fn push_with_writes_in_place_and_takes_back_what_is_refused() {
        let fill = |d: &'static [u8]| {
            move |buf: &mut [MaybeUninit<u8>]| {
                for (b, v) in buf.iter_mut().zip(d) {
                    b.write(*v);
                }
                Ok(d.len().min(buf.len()))
            }
        };
        let mut t = Transcript::default();
        assert_eq!(
            t.push_with(Direction::In, 8, fill(b"abc"), |_| true)
                .unwrap(),
            Some(3)
        );
        // At most `max` bytes are taken.
        assert_eq!(
            t.push_with(Direction::In, 2, fill(b"def"), |_| true)
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            t.push_with(Direction::Out, 8, fill(b"xy"), |_| false)
                .unwrap(),
            None
        );
        assert_eq!(
            t.push_with(Direction::Out, 8, fill(b""), |_| true).unwrap(),
            Some(0)
        );
        let err = |_: &mut [MaybeUninit<u8>]| Err(std::io::ErrorKind::WouldBlock.into());
        assert!(t.push_with(Direction::Out, 8, err, |_| true).is_err());
        // Refused, empty and failed pushes leave no trace.
        assert_eq!(t.payload(), b"abcde");
        assert_eq!((t.bytes_in, t.bytes_out), (5, 0));
        assert!(t.chunks.iter().all(|c| c.direction == Direction::In));
        t.push_out(b"ok");
        assert_eq!(t.outgoing(), b"ok");
    }

    #[test]
    fn known_hashes() {
        let h = Hashes::of(b"abc");
        assert_eq!(h.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            h.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(h.sha512.starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn ids_are_v7_and_ordered() {
        let a = new_attack_id(Utc::now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_attack_id(Utc::now());
        assert_eq!(a.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn mapped_v4_is_shown_as_v4() {
        let a: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(normalize(a).to_string(), "10.1.2.3:80");
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(normalize(b), b);
    }
}
