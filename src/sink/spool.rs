//! The durable spool in front of every network output (PostgreSQL, hpfeeds, ...).
//!
//! A [`SpoolSink`] is an ordinary [`Sink`]: on its sink thread it takes each attack's
//! JSON event (rendered once per attack for every sink with the same payload
//! settings, [`Rendered`]) and appends it to segment files under
//! `<data_dir>/spool/<output>/`; it never talks to the network, so capture and the
//! recorder never wait for a server. A delivery thread (`deliver-<output>`) reads the
//! spool in order and hands batches to the output's [`Delivery`]; after a batch is
//! delivered it writes the acknowledged position to the `ack` file (atomically:
//! temporary file, fsync, rename) and removes segments it has passed. A failed batch
//! is retried, whole, with exponential backoff (capped).
//!
//! So after a crash (even SIGKILL) or a restart, everything not acknowledged is
//! delivered again, and what was acknowledged is not; a batch that was delivered
//! but whose acknowledgement was lost is sent again, which is why a [`Delivery`] must
//! be idempotent on [`Spooled::key`] (the attack id).
//!
//! On disk a record is `[u32 length][u32 crc32 of the body][body]` (little-endian),
//! the body `[u16 key length][key][u8 kind length][kind][event JSON]`. A record that
//! does not check out (a torn tail after a crash, a damaged disk) ends the reading of
//! its segment: it is counted (`spool_torn`), logged, and reading goes on with the
//! next segment. The writer always starts a new segment at start-up, so it never
//! appends behind a torn tail.
//!
//! Durability (`fsync`): with `always` every event is written and synced before the
//! next; with `batch` (the default) the writer hands what it has to the file (write(2))
//! whenever its queue runs empty or 256 KiB are buffered, so a crash of honeytrap,
//! even SIGKILL, loses nothing (the page cache outlives the process), and a sync
//! thread (`sync-<output>`) syncs the segment being written (`sync_data`) at most every
//! `fsync_interval` and at the latest `fsync_interval` after the first write not yet
//! synced, whether more events come or not (a power loss may lose that much); a
//! finished segment is synced when the writer leaves it, and everything at shutdown.
//! `fsync_interval` 0 syncs every batch on the writer thread. `never` leaves it to
//! the kernel.
//!
//! When the undelivered bytes would pass `max_bytes`, the new event is dropped
//! ("drop newest"): counted (`spool_dropped`) and logged, so what is already spooled
//! keeps its order and the oldest events are delivered first.
//!
//! Writing a new network output: implement [`Delivery`] and start a [`SpoolSink`]
//! with it in `sink::build`.

use super::Sink;
use crate::attack::Attack;
use crate::config::PayloadEncoding;
use crate::event::Rendered;
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use anyhow::Context as _;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One event waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The attack id: the idempotency key.
    pub key: String,
    /// What the body is: `"attack"`.
    pub kind: String,
    /// The JSON event (`docs/events.md`).
    pub body: Vec<u8>,
}

/// A network output fed by the spool. Runs on the spool's delivery thread, so it may
/// block and may own a tokio runtime; it should time out its own network calls.
pub trait Delivery: Send + 'static {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Deliver a batch, in order. `Ok`: all delivered, the spool drops them. `Err`:
    /// the whole batch is retried later with backoff, so delivery must be
    /// idempotent on `key`.
    fn deliver(&mut self, batch: &[Spooled]) -> anyhow::Result<()>;
}

/// When spool writes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every event.
    Always,
    /// Written once per batch of events (when the output queue runs empty, or every
    /// 256 KiB) and synced at most every `fsync_interval` (0: every batch).
    Batch,
    /// Never: the kernel writes back when it likes (a power loss may lose events,
    /// a crash of honeytrap does not).
    Never,
}

/// How a spool behaves.
#[derive(Debug, Clone)]
pub struct SpoolLimits {
    /// Most undelivered bytes on disk; past it new events are dropped (counted).
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// With `Fsync::Batch`: the longest written data waits for its sync, and the
    /// shortest time between two syncs; zero syncs every batch.
    pub fsync_interval: Duration,
    /// Most events per delivered batch.
    pub batch_max: usize,
    /// First wait after a failed delivery; doubled after each failure ...
    pub retry_initial: Duration,
    /// ... up to this.
    pub retry_max: Duration,
    /// At shutdown, how long the delivery thread keeps delivering what is spooled.
    pub drain: Duration,
    /// Nice steps of the spool's writer and delivery threads below `process.nice`
    /// (0 = as capture).
    pub nice: i32,
    /// Longest deliveries are held back in a row while the host's CPUs are
    /// saturated (crate::saturation); zero: never.
    pub busy_defer: Duration,
    /// The saturation detector (None: the process's own; tests put theirs).
    pub saturation: Option<&'static crate::saturation::Saturation>,
    /// Payload bytes in the event (`honeytrap.payload.data`) and their encoding.
    pub payload_max: u64,
    pub encoding: PayloadEncoding,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: Fsync::Batch,
            fsync_interval: Duration::from_secs(1),
            batch_max: 500,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            drain: Duration::from_secs(5),
            nice: 10,
            busy_defer: Duration::from_secs(30),
            saturation: None,
            payload_max: 4096,
            encoding: PayloadEncoding::Base64,
        }
    }
}

/// The spool settings of `[output.spool]` (docs/configuration.md), shared by every
/// network output; each has its own spool directory `<dir>/<output>`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory, relative to `sensor.data_dir`.
    pub dir: PathBuf,
    /// Most undelivered bytes per output; past it new events are dropped (counted).
    #[serde(with = "crate::config::units::bytesize")]
    pub max_bytes: u64,
    #[serde(with = "crate::config::units::bytesize")]
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// With `fsync = "batch"`: sync at most this often (milliseconds), and at the
    /// latest this long after a write; 0 syncs every batch.
    pub fsync_interval_ms: u64,
    /// Most events per delivered batch (one transaction for PostgreSQL).
    pub batch_max: usize,
    #[serde(with = "crate::config::units::duration")]
    pub retry_initial: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub retry_max: Duration,
    /// At shutdown, how long delivery goes on with what is spooled.
    #[serde(with = "crate::config::units::duration")]
    pub drain: Duration,
    /// Nice steps (0-19) of the spool writer and delivery threads below
    /// `process.nice` (at most nice 19): capture and the connection handlers come
    /// first when the CPU is short.
    pub nice: i32,
    /// Longest deliveries are held back in a row while the host's CPUs are
    /// saturated; 0 never holds them back.
    #[serde(with = "crate::config::units::duration")]
    pub busy_defer: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        let l = SpoolLimits::default();
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: l.max_bytes,
            segment_bytes: l.segment_bytes,
            fsync: l.fsync,
            fsync_interval_ms: l.fsync_interval.as_millis() as u64,
            batch_max: l.batch_max,
            retry_initial: l.retry_initial,
            retry_max: l.retry_max,
            drain: l.drain,
            nice: l.nice,
            busy_defer: l.busy_defer,
        }
    }
}

impl SpoolConfig {
    /// Checks for `Config::validate`.
    pub fn validate(&self) -> Result<(), crate::config::Invalid> {
        use crate::config::Invalid;
        let key = |k: &str| format!("output.spool.{k}");
        if self.dir.as_os_str().is_empty() {
            return Err(Invalid::new(key("dir"), "must not be empty"));
        }
        if self.segment_bytes < 4096 {
            return Err(Invalid::new(key("segment_bytes"), "must be at least 4KiB"));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(Invalid::new(
                key("max_bytes"),
                "must be at least segment_bytes",
            ));
        }
        if self.fsync_interval_ms > MAX_FSYNC_INTERVAL_MS {
            return Err(Invalid::new(
                key("fsync_interval_ms"),
                "must be at most 60000 (1 minute)",
            ));
        }
        if self.batch_max == 0 {
            return Err(Invalid::new(key("batch_max"), "must be at least 1"));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(Invalid::new(key("nice"), "must be between 0 and 19"));
        }
        if self.busy_defer > Duration::from_secs(600) {
            return Err(Invalid::new(key("busy_defer"), "must be at most 10m"));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(Invalid::new(
                key("retry_max"),
                "retry_initial must be longer than 0 and retry_max at least retry_initial",
            ));
        }
        Ok(())
    }
}

impl SpoolLimits {
    /// The limits of `[output.spool]` for an output with this event payload setting.
    pub fn from_config(
        c: &SpoolConfig,
        payload_max: u64,
        encoding: PayloadEncoding,
    ) -> SpoolLimits {
        SpoolLimits {
            max_bytes: c.max_bytes,
            segment_bytes: c.segment_bytes,
            fsync: c.fsync,
            fsync_interval: Duration::from_millis(c.fsync_interval_ms),
            batch_max: c.batch_max,
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            drain: c.drain,
            nice: c.nice,
            busy_defer: c.busy_defer,
            saturation: None,
            payload_max,
            encoding,
        }
    }
}

/// Largest `fsync_interval_ms`.
const MAX_FSYNC_INTERVAL_MS: u64 = 60_000;

/// Records longer than this are treated as damage.
const MAX_RECORD: u32 = 256 << 20;
/// Header: length and crc32.
const HEADER: u64 = 8;
/// The writer hands its buffer to the file at this size even if the queue is busy.
const WRITE_CHUNK: usize = 256 << 10;

/// A place in the spool: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Pos {
    seq: u64,
    offset: u64,
}

/// What the writer and the delivery thread share.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Undelivered bytes on disk: read by the writer for every event, so outside
    /// the lock.
    pending: std::sync::atomic::AtomicU64,
}

struct State {
    /// The end of what the writer has written to its segment (readable up to here).
    head: Pos,
    stop: bool,
}

/// One network output fed by a spool: its delivery, and its own directory, which
/// holds its acknowledged position (`ack`) and its links to the segments it has yet
/// to deliver.
pub struct Member {
    /// Short name (`postgres`, `nats`, ...), for logs and the delivery thread's name.
    pub name: &'static str,
    /// `<output.spool.dir>/<name>`.
    pub dir: PathBuf,
    pub delivery: Box<dyn Delivery>,
    /// Rate limit of this output's warnings (its delivery may share it).
    pub throttle: Arc<Throttle>,
}

/// A [`Sink`] that appends every event to an on-disk spool and never waits for the
/// network; one delivery thread per member output drains it.
///
/// Several outputs that take the same event share one spool: each segment is one
/// file, written once and hard-linked into every member's directory, so an event
/// costs one write however many outputs deliver it. Each member reads its own links
/// and acknowledges on its own; a segment's disk is freed when the last member has
/// passed it. A member whose undelivered bytes reach `max_bytes` (its server has
/// been away a long time) is left out of new segments, so the others go on: its
/// events are dropped and counted until it has drained a segment's worth, then
/// the next segment is linked for it again.
pub struct SpoolSink {
    name: &'static str,
    limits: SpoolLimits,
    /// The member outputs, in the order given.
    members: Vec<Writing>,
    /// The segment being written: one file linked into every attached member's
    /// directory (more than one only where a link could not be made). Shared with
    /// the sync thread.
    files: Vec<Arc<File>>,
    /// The sync thread (`Fsync::Batch` with an interval).
    syncer: Option<(Arc<Syncer>, JoinHandle<()>)>,
    /// The segment being written and the bytes already in it.
    at: Pos,
    /// Records not yet written to the file.
    buf: Vec<u8>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
    /// The sink thread's priority is lowered on its first event (the sink is
    /// created on the main thread, then runs on its own).
    niced: bool,
}

/// The writer's view of one member output.
struct Writing {
    name: &'static str,
    dir: PathBuf,
    /// What the writer and this member's delivery thread share.
    shared: Arc<Shared>,
    /// Whether the segment being written is linked into its directory (false while
    /// its spool is full).
    attached: bool,
    /// Whether it takes the event being appended (set per event).
    room: bool,
    thread: Option<JoinHandle<()>>,
}

impl Writing {
    fn pending(&self) -> u64 {
        self.shared.pending.load(Relaxed)
    }
}

/// A network output as `sink::build` hands it over: the spool member and the event
/// it takes (payload cap and encoding).
pub struct Output {
    pub member: Member,
    pub payload_max: u64,
    pub encoding: PayloadEncoding,
}

/// Start the spools of `outputs` with the settings of `[output.spool]`: one spool for
/// each set of outputs taking the same event, so each event is written once per
/// set, in the order the outputs were given.
pub fn start_shared(
    config: &SpoolConfig,
    outputs: Vec<Output>,
    stats: &Arc<Stats>,
) -> anyhow::Result<Vec<SpoolSink>> {
    let mut groups: Vec<((u64, PayloadEncoding), Vec<Member>)> = Vec::new();
    for o in outputs {
        let event = (o.payload_max, o.encoding);
        match groups.iter_mut().find(|(e, _)| *e == event) {
            Some((_, members)) => members.push(o.member),
            None => groups.push((event, vec![o.member])),
        }
    }
    groups
        .into_iter()
        .map(|((payload_max, encoding), members)| {
            let limits = SpoolLimits::from_config(config, payload_max, encoding);
            SpoolSink::start(members, limits, Arc::clone(stats))
        })
        .collect()
}

/// The name of a spool shared by `names` (`postgres+nats`), made once per set.
fn group_name(names: &[&'static str]) -> &'static str {
    if let [one] = names {
        return one;
    }
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let joined = names.join("+");
    let mut known = NAMES.lock().unwrap();
    if let Some(n) = known.iter().find(|n| **n == joined) {
        return n;
    }
    let n: &'static str = Box::leak(joined.into_boxed_str());
    known.push(n);
    n
}

impl SpoolSink {
    /// Open (or create) each member's spool directory, start a delivery thread per
    /// member, and deliver whatever an earlier run left undelivered.
    pub fn start(
        members: Vec<Member>,
        limits: SpoolLimits,
        stats: Arc<Stats>,
    ) -> anyhow::Result<SpoolSink> {
        anyhow::ensure!(!members.is_empty(), "a spool needs at least one output");
        let names: Vec<_> = members.iter().map(|m| m.name).collect();
        let name = group_name(&names);
        if names.len() > 1 {
            tracing::info!(
                spool = name,
                "spool: these outputs take the same event and share one spool (each event written once)"
            );
        }
        // Where each member stands, and the first segment number none has used.
        let mut seq = 0;
        let mut found = Vec::new();
        for m in &members {
            let dir = &m.dir;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let acked = read_ack(dir)?;
            let segments = list_segments(dir)?;
            let pending = undelivered_bytes(dir, &segments, acked)?;
            // Always a fresh segment: never append behind a torn tail.
            seq = seq
                .max(segments.last().map_or(0, |s| s + 1))
                .max(acked.seq + 1);
            Stats::add(&stats.spool_bytes, pending);
            if pending > 0 {
                tracing::info!(
                    output = m.name,
                    bytes = pending,
                    "spool: undelivered events from an earlier run"
                );
            }
            found.push((acked, pending));
        }
        let at = Pos { seq, offset: 0 };
        let dirs: Vec<&Path> = members.iter().map(|m| m.dir.as_path()).collect();
        let files = create_segments(&dirs, seq, limits.segment_bytes)?;
        let mut writing = Vec::new();
        for (m, (acked, pending)) in members.into_iter().zip(found) {
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    head: at,
                    stop: false,
                }),
                wake: Condvar::new(),
                pending: pending.into(),
            });
            let reader = Reader {
                name: m.name,
                dir: m.dir.clone(),
                cursor: acked,
                file: None,
                shared: Arc::clone(&shared),
                stats: Arc::clone(&stats),
                throttle: m.throttle,
            };
            let (l, delivery) = (limits.clone(), m.delivery);
            let thread = std::thread::Builder::new()
                .name(format!("deliver-{}", m.name))
                .spawn(move || run_delivery(reader, delivery, l))?;
            writing.push(Writing {
                name: m.name,
                dir: m.dir,
                shared,
                attached: true,
                room: true,
                thread: Some(thread),
            });
        }
        let throttle = Arc::new(Throttle::default());
        let syncer = if limits.fsync == Fsync::Batch && !limits.fsync_interval.is_zero() {
            let sy = Arc::new(Syncer {
                state: Mutex::new(SyncState {
                    files: files.clone(),
                    dirty_since: None,
                    stop: false,
                }),
                wake: Condvar::new(),
                #[cfg(test)]
                syncs: Default::default(),
            });
            let (s2, interval, limits_nice) = (Arc::clone(&sy), limits.fsync_interval, limits.nice);
            let (st, th) = (Arc::clone(&stats), Arc::clone(&throttle));
            let t = std::thread::Builder::new()
                .name(format!("sync-{name}"))
                .spawn(move || {
                    crate::privileges::lower_thread_priority(limits_nice, "spool sync");
                    run_sync(&s2, interval, name, &st, &th)
                })?;
            Some((sy, t))
        } else {
            None
        };
        Ok(SpoolSink {
            name,
            limits,
            members: writing,
            files,
            syncer,
            at,
            buf: Vec::with_capacity(WRITE_CHUNK),
            stats,
            throttle,
            niced: false,
        })
    }

    /// Append one event (the key is the attack id).
    pub fn append(&mut self, s: &Spooled) -> anyhow::Result<()> {
        self.append_parts(&s.key, &s.kind, &s.body)
    }

    /// Append one event given by its parts, encoded straight into the buffer.
    fn append_parts(&mut self, key: &str, kind: &str, body: &[u8]) -> anyhow::Result<()> {
        let size = record_len(key, kind, body);
        let (max, buffered) = (self.limits.max_bytes, self.buf.len() as u64);
        let (mut any_room, mut change) = (false, false);
        for m in &mut self.members {
            let pending = m.pending();
            m.room = if m.attached {
                pending + buffered + size <= max
            } else {
                // Taken back once a segment's worth has drained, not at the first
                // free byte: each change of members starts a new segment.
                pending + self.limits.segment_bytes <= max
            };
            any_room |= m.room;
            change |= m.room != m.attached;
            if !m.room {
                Stats::inc(&self.stats.spool_dropped);
                limit_warn!(self.throttle, "spool_full", output = m.name, id = %key, max_bytes = max, "spool full: event dropped (the newest is dropped; see output.spool.max_bytes)");
            }
        }
        if !any_room {
            return Ok(());
        }
        let used = self.at.offset + self.buf.len() as u64;
        if change || (used > 0 && used + size > self.limits.segment_bytes) {
            self.write_out()?;
            self.rotate()?;
        }
        encode_into(&mut self.buf, key, kind, body);
        if self.buf.len() >= WRITE_CHUNK || self.limits.fsync == Fsync::Always {
            self.write_out()?;
        }
        Ok(())
    }

    /// Write the buffer to the segment, sync it per the policy, and let the delivery
    /// threads of the attached members see it.
    fn write_out(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        for f in &self.files {
            (&**f)
                .write_all(&self.buf)
                .with_context(|| format!("writing the spool of {}", self.name))?;
        }
        match &self.syncer {
            // The sync thread syncs it within the interval.
            Some((sy, _)) => sy.written(),
            None if self.limits.fsync != Fsync::Never => self.sync_now()?,
            None => {}
        }
        let n = self.buf.len() as u64;
        self.buf.clear();
        self.at.offset += n;
        for m in self.members.iter().filter(|m| m.attached) {
            Stats::add(&self.stats.spool_bytes, n);
            let mut st = m.shared.state.lock().unwrap();
            st.head = self.at;
            m.shared.pending.fetch_add(n, Relaxed);
            m.shared.wake.notify_all();
        }
        Ok(())
    }

    /// Sync the segment being written, on this thread.
    fn sync_now(&self) -> anyhow::Result<()> {
        for f in &self.files {
            f.sync_data()
                .with_context(|| format!("syncing the spool of {}", self.name))?;
        }
        #[cfg(test)]
        if let Some((sy, _)) = &self.syncer {
            sy.syncs.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Sync what the sync thread has not synced yet (a segment being left, shutdown).
    fn sync_rest(&mut self) -> anyhow::Result<()> {
        if let Some((sy, _)) = &self.syncer {
            if sy.state.lock().unwrap().dirty_since.take().is_some() {
                self.sync_now()?;
            }
        }
        Ok(())
    }

    /// Close the segment and start the next one, linked into the directories of
    /// the members with room (`Writing::room`); a member left out keeps its head at
    /// the end of the segment just closed.
    fn rotate(&mut self) -> anyhow::Result<()> {
        // The sync thread only knows the segment being written: sync this one now.
        self.sync_rest()?;
        let seq = self.at.seq + 1;
        for m in &mut self.members {
            if m.attached != m.room {
                tracing::info!(
                    output = m.name,
                    segment = seq,
                    "spool: {}",
                    if m.room {
                        "room again: new events are spooled for this output"
                    } else {
                        "full: this output is left out of new segments until it has delivered a segment's worth"
                    }
                );
            }
            m.attached = m.room;
        }
        let dirs: Vec<&Path> = self
            .members
            .iter()
            .filter(|m| m.attached)
            .map(|m| m.dir.as_path())
            .collect();
        self.files = create_segments(&dirs, seq, self.limits.segment_bytes)?;
        if let Some((sy, _)) = &self.syncer {
            sy.state.lock().unwrap().files = self.files.clone();
        }
        self.at = Pos { seq, offset: 0 };
        for m in self.members.iter().filter(|m| m.attached) {
            let mut st = m.shared.state.lock().unwrap();
            st.head = self.at;
            m.shared.wake.notify_all();
        }
        Ok(())
    }
}

impl Sink for SpoolSink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn outputs(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.name).collect()
    }

    fn event_settings(&self) -> Option<(u64, crate::config::PayloadEncoding)> {
        Some((self.limits.payload_max, self.limits.encoding))
    }

    fn write(&mut self, attack: &Attack, events: &Rendered) -> anyhow::Result<()> {
        if !self.niced {
            crate::privileges::lower_thread_priority(self.limits.nice, "spool writer");
            self.niced = true;
        }
        let body = events.json(attack, self.limits.payload_max, self.limits.encoding)?;
        let mut id = uuid::Uuid::encode_buffer();
        let key = attack.id.hyphenated().encode_lower(&mut id);
        self.append_parts(key, "attack", &body)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.write_out()
    }
}

impl Drop for SpoolSink {
    /// Stop the delivery threads: each delivers what it can within `limits.drain`;
    /// the rest stays spooled for the next start.
    fn drop(&mut self) {
        if let Err(e) = self.write_out().and_then(|()| self.sync_rest()) {
            tracing::error!(output = self.name, error = %e, "spool: last events not written");
        }
        if let Some((sy, t)) = self.syncer.take() {
            sy.state.lock().unwrap().stop = true;
            sy.wake.notify_all();
            let _ = t.join();
        }
        for m in &self.members {
            m.shared.state.lock().unwrap().stop = true;
            m.shared.wake.notify_all();
        }
        for m in &mut self.members {
            if let Some(t) = m.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The encoded size of a record: header and body.
fn record_len(key: &str, kind: &str, body: &[u8]) -> u64 {
    let key = key.len().min(u16::MAX as usize);
    let kind = kind.len().min(u8::MAX as usize);
    HEADER + (2 + key + 1 + kind + body.len()) as u64
}

/// Append one record, header and body, to `out`.
fn encode_into(out: &mut Vec<u8>, key: &str, kind: &str, body: &[u8]) {
    let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
    let kind = &kind.as_bytes()[..kind.len().min(u8::MAX as usize)];
    let len = 2 + key.len() + 1 + kind.len() + body.len();
    let start = out.len();
    out.reserve(HEADER as usize + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + HEADER as usize..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What the writer and its sync thread share.
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// Syncs made (for the tests).
    #[cfg(test)]
    syncs: std::sync::atomic::AtomicU64,
}

struct SyncState {
    /// The segment being written (its files).
    files: Vec<Arc<File>>,
    /// When the first write not yet synced was made; None: all synced.
    dirty_since: Option<Instant>,
    stop: bool,
}

impl Syncer {
    /// The writer wrote to the segment: it needs a sync.
    fn written(&self) {
        let mut st = self.state.lock().unwrap();
        if st.dirty_since.is_none() {
            st.dirty_since = Some(Instant::now());
            self.wake.notify_all();
        }
    }
}

/// The sync thread: syncs the segment being written `interval` after the first
/// write it has not synced (so at most once per interval).
fn run_sync(
    sy: &Syncer,
    interval: Duration,
    name: &'static str,
    stats: &Stats,
    throttle: &Throttle,
) {
    let mut st = sy.state.lock().unwrap();
    loop {
        if st.stop {
            return;
        }
        let Some(since) = st.dirty_since else {
            st = sy.wake.wait(st).unwrap();
            continue;
        };
        let due = since + interval;
        let now = Instant::now();
        if now < due {
            st = sy.wake.wait_timeout(st, due - now).unwrap().0;
            continue;
        }
        // Everything written before this point is in the file: the sync covers it;
        // a later write marks the segment again.
        st.dirty_since = None;
        let files = st.files.clone();
        drop(st);
        for file in files {
            if let Err(e) = file.sync_data() {
                Stats::inc(&stats.output_errors);
                limit_warn!(throttle, "spool_sync", output = name, error = %e, "spool: sync failed");
            }
        }
        #[cfg(test)]
        sy.syncs.fetch_add(1, Relaxed);
        st = sy.state.lock().unwrap();
    }
}

/// Encode one record: header and body.
#[cfg(test)]
fn encode(s: &Spooled) -> Vec<u8> {
    let mut r = Vec::new();
    encode_into(&mut r, &s.key, &s.kind, &s.body);
    r
}

/// Decode a record body; None when it does not parse.
fn decode(body: &[u8]) -> Option<Spooled> {
    let kl = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(body.get(2..2 + kl)?).ok()?;
    let kindl = *body.get(2 + kl)? as usize;
    let kind = std::str::from_utf8(body.get(3 + kl..3 + kl + kindl)?).ok()?;
    Some(Spooled {
        key: key.to_string(),
        kind: kind.to_string(),
        body: body.get(3 + kl + kindl..)?.to_vec(),
    })
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Create segment `seq`, with `size` bytes of disk reserved for it.
fn create_segment(dir: &Path, seq: u64, size: u64) -> anyhow::Result<File> {
    let p = segment_path(dir, seq);
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("creating {}", p.display()))?;
    preallocate(&f, size);
    Ok(f)
}

/// Create segment `seq` in the first of `dirs` and hard-link it into the others, so
/// it is written once for all of them. Where a link cannot be made (another file
/// system), that directory gets a file of its own, written alongside.
fn create_segments(dirs: &[&Path], seq: u64, size: u64) -> anyhow::Result<Vec<Arc<File>>> {
    let Some((first, rest)) = dirs.split_first() else {
        return Ok(Vec::new());
    };
    let mut files = vec![Arc::new(create_segment(first, seq, size)?)];
    for dir in rest {
        let to = segment_path(dir, seq);
        if let Err(e) = std::fs::hard_link(segment_path(first, seq), &to) {
            tracing::warn!(segment = %to.display(), error = %e, "spool: segment not shared by a hard link; written once more for this output");
            files.push(Arc::new(create_segment(dir, seq, size)?));
        }
    }
    Ok(files)
}

/// Reserve `size` bytes of disk for a new segment without changing its length
/// (`FALLOC_FL_KEEP_SIZE`: readers and recovery still see only what was written).
/// Appending into reserved blocks spares the file system a block reservation per
/// write (ext4's delayed allocation): measured, the spool writer's CPU time per
/// event fell by about a quarter (docs/benchmarks.md). Where the file system cannot
/// (EOPNOTSUPP) the segment simply grows as it is written.
fn preallocate(f: &File, size: u64) {
    use std::os::fd::AsRawFd;
    let len = size.min(i64::MAX as u64) as libc::off_t;
    // SAFETY: fallocate only reads its arguments; `f` is an open file.
    if unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "spool: segment not preallocated");
    }
}

/// The segment numbers in `dir`, oldest first.
fn list_segments(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// The acknowledged position; the start when there is no `ack` file yet.
fn read_ack(dir: &Path) -> anyhow::Result<Pos> {
    let p = dir.join("ack");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pos::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(seq)), Some(Ok(offset))) => Ok(Pos { seq, offset }),
        _ => anyhow::bail!("{}: not \"<segment> <offset>\"", p.display()),
    }
}

/// Write the acknowledged position atomically (a crash leaves the old or the new).
fn write_ack(dir: &Path, pos: Pos) -> std::io::Result<()> {
    let tmp = dir.join("ack.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", pos.seq, pos.offset)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join("ack"))
}

/// Bytes in segments at or after `acked`.
fn undelivered_bytes(dir: &Path, segments: &[u64], acked: Pos) -> anyhow::Result<u64> {
    let mut n = 0;
    for &s in segments.iter().filter(|&&s| s >= acked.seq) {
        let len = std::fs::metadata(segment_path(dir, s))?.len();
        n += if s == acked.seq {
            len.saturating_sub(acked.offset)
        } else {
            len
        };
    }
    Ok(n)
}

/// The delivery thread's view of the spool.
struct Reader {
    name: &'static str,
    dir: PathBuf,
    /// Everything before this is acknowledged.
    cursor: Pos,
    /// The segment being read, when open.
    file: Option<OpenSegment>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
}

/// A segment open for reading.
struct OpenSegment {
    seq: u64,
    r: BufReader<File>,
    /// Where `r` is in the file.
    at: u64,
    /// The file's length when last looked at.
    len: u64,
}

/// Why reading stopped.
enum Read1 {
    /// A record, and the position after it.
    Record(Spooled, Pos),
    /// Nothing more to read in this segment now.
    End,
    /// A record that does not check out.
    Damaged(&'static str),
}

impl Reader {
    /// Up to `max` events after the cursor, and the position after them. Empty when
    /// nothing is there yet.
    fn batch(&mut self, max: usize) -> (Vec<Spooled>, Pos) {
        let mut out = Vec::new();
        let mut pos = self.cursor;
        while out.len() < max {
            let head = self.shared.state.lock().unwrap().head;
            let limit = (pos.seq == head.seq).then_some(head.offset);
            match self.read_one(pos, limit) {
                Read1::Record(s, next) => {
                    out.push(s);
                    pos = next;
                }
                Read1::End if pos.seq < head.seq => {
                    // The segment is finished: go on only when nothing is taken from
                    // it in this batch, so the acknowledgement moves segment by segment.
                    if !out.is_empty() {
                        break;
                    }
                    pos = self.next_segment(pos, head);
                }
                Read1::End => break,
                Read1::Damaged(why) => {
                    if !out.is_empty() {
                        break;
                    }
                    pos = self.skip_damaged(pos, head, why);
                }
            }
        }
        (out, pos)
    }

    /// Read the record at `pos` (not past `limit`, the writer's end, if given).
    fn read_one(&mut self, pos: Pos, limit: Option<u64>) -> Read1 {
        if self.file.as_ref().map(|f| f.seq) != Some(pos.seq) {
            let Ok(f) = File::open(segment_path(&self.dir, pos.seq)) else {
                return Read1::End;
            };
            let len = f.metadata().map_or(0, |m| m.len());
            self.file = Some(OpenSegment {
                seq: pos.seq,
                r: BufReader::with_capacity(1 << 20, f),
                at: 0,
                len,
            });
        }
        let f = self.file.as_mut().expect("opened above");
        if limit.is_none_or(|l| l > f.len) {
            // A segment the writer has left (or is writing) may have grown.
            f.len = f.r.get_ref().metadata().map_or(f.len, |m| m.len());
        }
        let end = limit.unwrap_or(f.len).min(f.len);
        if pos.offset >= end {
            return Read1::End;
        }
        if end - pos.offset < HEADER {
            return torn_or_end(limit, "header cut short");
        }
        if f.at != pos.offset {
            if f.r.seek(SeekFrom::Start(pos.offset)).is_err() {
                self.file = None;
                return Read1::End;
            }
            f.at = pos.offset;
        }
        let mut h = [0u8; HEADER as usize];
        if f.r.read_exact(&mut h).is_err() {
            self.file = None;
            return Read1::Damaged("header unreadable");
        }
        f.at += HEADER;
        let len = u32::from_le_bytes(h[..4].try_into().unwrap());
        let crc = u32::from_le_bytes(h[4..].try_into().unwrap());
        if len > MAX_RECORD {
            return Read1::Damaged("length out of range");
        }
        if end - pos.offset - HEADER < len as u64 {
            return torn_or_end(limit, "record cut short");
        }
        let mut body = vec![0; len as usize];
        if f.r.read_exact(&mut body).is_err() {
            self.file = None;
            return Read1::Damaged("record unreadable");
        }
        f.at += len as u64;
        if crc32fast::hash(&body) != crc {
            return Read1::Damaged("checksum mismatch");
        }
        match decode(&body) {
            Some(s) => Read1::Record(
                s,
                Pos {
                    seq: pos.seq,
                    offset: pos.offset + HEADER + len as u64,
                },
            ),
            None => Read1::Damaged("record does not parse"),
        }
    }

    /// The segment after `pos` (segments are numbered without gaps, but a missing
    /// one is skipped). Acknowledges the move so the old segment can go.
    fn next_segment(&mut self, pos: Pos, head: Pos) -> Pos {
        let next = list_segments(&self.dir)
            .ok()
            .and_then(|v| v.into_iter().find(|&s| s > pos.seq))
            .unwrap_or(head.seq)
            .min(head.seq);
        let to = Pos {
            seq: next,
            offset: 0,
        };
        self.file = None;
        self.acknowledge(to, 0);
        to
    }

    /// Count and log a damaged record and skip the rest of its segment.
    fn skip_damaged(&mut self, pos: Pos, head: Pos, why: &'static str) -> Pos {
        let len = std::fs::metadata(segment_path(&self.dir, pos.seq)).map_or(0, |m| m.len());
        Stats::inc(&self.stats.spool_torn);
        limit_warn!(
            self.throttle,
            "spool_torn",
            output = self.name,
            segment = pos.seq,
            offset = pos.offset,
            skipped_bytes = len.saturating_sub(pos.offset),
            "spool: damaged or torn record ({why}); the rest of its segment is skipped"
        );
        let skipped = len.saturating_sub(pos.offset);
        if pos.seq == head.seq {
            // The writer's own segment is never torn; stop reading it rather than loop.
            self.acknowledge(head, skipped);
            return head;
        }
        self.file = None;
        let to = Pos {
            seq: pos.seq,
            offset: len,
        };
        self.acknowledge(to, skipped);
        self.next_segment(to, head)
    }

    /// Everything before `to` is done: write the ack file, remove segments before it,
    /// and give back `bytes` of the spool's size.
    fn acknowledge(&mut self, to: Pos, bytes: u64) {
        if let Err(e) = write_ack(&self.dir, to) {
            limit_warn!(self.throttle, "spool_ack", output = self.name, error = %e, "spool: acknowledgement not written (events may be delivered twice)");
        }
        if let Ok(segments) = list_segments(&self.dir) {
            for s in segments.into_iter().take_while(|&s| s < to.seq) {
                let _ = std::fs::remove_file(segment_path(&self.dir, s));
            }
        }
        self.cursor = to;
        let _ = self
            .shared
            .pending
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
        let _ = self
            .stats
            .spool_bytes
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
    }

    /// Bytes between the cursor and `to` (same segment).
    fn span(&self, to: Pos) -> u64 {
        to.offset.saturating_sub(self.cursor.offset)
    }
}

/// A short record at the writer's end is not written yet; in an old segment it is torn.
fn torn_or_end(limit: Option<u64>, why: &'static str) -> Read1 {
    match limit {
        Some(_) => Read1::End,
        None => Read1::Damaged(why),
    }
}

/// The delivery thread: batches out, acknowledgements in, backoff on failure.
fn run_delivery(mut reader: Reader, mut delivery: Box<dyn Delivery>, limits: SpoolLimits) {
    crate::privileges::lower_thread_priority(limits.nice, "spool delivery");
    let name = reader.name;
    let mut backoff = limits.retry_initial;
    let mut stopping: Option<Instant> = None;
    let saturation = limits
        .saturation
        .unwrap_or_else(crate::saturation::Saturation::global);
    // Since when deliveries have been held back for saturation, without a break.
    let mut deferring: Option<Instant> = None;
    loop {
        let (batch, end) = reader.batch(limits.batch_max.max(1));
        if !batch.is_empty() && !limits.busy_defer.is_zero() {
            // While capture has every CPU busy, the events wait in the spool: a
            // delivery would make this thread and the server (often on the same
            // host) take CPU time from capture. At most `busy_defer` in a row, so a
            // long flood still gets its events out.
            if saturation.saturated() {
                let since = *deferring.get_or_insert_with(Instant::now);
                let left = limits.busy_defer.saturating_sub(since.elapsed());
                let waited = saturation.wait(left, || reader.shared.state.lock().unwrap().stop);
                if waited >= crate::saturation::WINDOW {
                    Stats::inc(&reader.stats.spool_deferred);
                }
            }
            if !saturation.saturated() {
                deferring = None;
            }
        }
        if batch.is_empty() {
            // All out: the next saturation starts a new deferral.
            deferring = None;
            let shared = Arc::clone(&reader.shared);
            let st = shared.state.lock().unwrap();
            if st.stop {
                return;
            }
            // The writer notifies under this lock, so no wake-up is lost; a head
            // that moved since the batch was read means there is more already.
            let wait = if st.head != end { 10 } else { 500 };
            drop(shared.wake.wait_timeout(st, Duration::from_millis(wait)));
            continue;
        }
        let started = Instant::now();
        match delivery.deliver(&batch) {
            Ok(()) => {
                Stats::add(&reader.stats.spool_delivered, batch.len() as u64);
                let bytes = reader.span(end);
                reader.acknowledge(end, bytes);
                backoff = limits.retry_initial;
                tracing::debug!(output = name, events = batch.len(), took = ?started.elapsed(), "spool: batch delivered");
            }
            Err(e) => {
                Stats::inc(&reader.stats.spool_delivery_failures);
                limit_warn!(reader.throttle, "spool_delivery", output = name, delivery = delivery.name(), events = batch.len(), retry_in = ?backoff, error = format!("{e:#}"), "spool: delivery failed; retrying with backoff");
                // Re-read the batch next time from the acknowledged position.
                reader.file = None;
                if wait_or_stop(&reader.shared, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(limits.retry_max);
            }
        }
        if stop_requested(&reader.shared, &mut stopping, limits.drain) {
            return;
        }
    }
}

/// Note when a stop was asked for; true once the drain time is over.
fn stop_requested(shared: &Shared, since: &mut Option<Instant>, drain: Duration) -> bool {
    if !shared.state.lock().unwrap().stop {
        return false;
    }
    let t = *since.get_or_insert_with(Instant::now);
    t.elapsed() >= drain
}

/// Wait `d` (the backoff); true when honeytrap is stopping (then there is no retry).
fn wait_or_stop(shared: &Shared, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut st = shared.state.lock().unwrap();
    loop {
        if st.stop {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        st = shared.wake.wait_timeout(st, deadline - now).unwrap().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Records what it delivers; fails while `down` is set.
    #[derive(Clone, Default)]
    struct Probe {
        got: Arc<Mutex<Vec<String>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Delivery for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn deliver(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
            self.calls.fetch_add(1, SeqCst);
            if self.down.load(SeqCst) {
                anyhow::bail!("server down");
            }
            let mut g = self.got.lock().unwrap();
            for s in batch {
                assert_eq!(s.kind, "attack");
                assert_eq!(s.body, format!("{{\"id\":\"{}\"}}", s.key).into_bytes());
                g.push(s.key.clone());
            }
            Ok(())
        }
    }

    fn limits() -> SpoolLimits {
        SpoolLimits {
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            drain: Duration::from_millis(500),
            // Deferral has its own test; a busy test machine must not hold these up.
            busy_defer: Duration::ZERO,
            ..SpoolLimits::default()
        }
    }

    /// A detector that finds the host saturated while SATURATED is set.
    fn fake_saturation() -> &'static crate::saturation::Saturation {
        fn read() -> Option<(u64, u64)> {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            static BUSY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, SeqCst) + 1;
            let step = if SATURATED.load(SeqCst) { 100 } else { 10 };
            Some((BUSY.fetch_add(step, SeqCst) + step, n * 100))
        }
        Box::leak(Box::new(crate::saturation::Saturation::new(read, 100)))
    }
    static SATURATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    #[test]
    fn deliveries_wait_while_the_host_is_saturated_at_most_busy_defer() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        let sat = fake_saturation();
        // Two windows, so the detector has a verdict before the first batch.
        sat.saturated();
        std::thread::sleep(crate::saturation::WINDOW + Duration::from_millis(10));
        assert!(sat.saturated());
        let l = SpoolLimits {
            busy_defer: Duration::from_millis(1500),
            saturation: Some(sat),
            batch_max: 1,
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        let t = Instant::now();
        for i in 0..3 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            p.got.lock().unwrap().is_empty(),
            "held back while saturated"
        );
        // Saturated for longer than busy_defer: delivered anyway, and the batches
        // after the first go at once (the deferral was used up).
        wait_for(&p, 3);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(stats.spool_deferred.load(Relaxed), 1);
        // With everything delivered, the next event starts a new deferral, which
        // ends as soon as the host is no longer saturated. (The delivery thread
        // must have seen the spool empty first: give it a moment after the ack.)
        wait_drained(&stats);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        s.append(&ev(3)).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(p.got.lock().unwrap().len(), 3, "held back again");
        SATURATED.store(false, SeqCst);
        wait_for(&p, 4);
        assert!(
            t.elapsed() < Duration::from_millis(1400),
            "{:?}",
            t.elapsed()
        );
        drop(s);
        assert_eq!(*p.got.lock().unwrap(), keys(0..4));
    }

    fn ev(i: usize) -> Spooled {
        let key = format!("k{i:05}");
        Spooled {
            body: format!("{{\"id\":\"{key}\"}}").into_bytes(),
            key,
            kind: "attack".into(),
        }
    }

    fn member(name: &'static str, dir: &Path, p: &Probe) -> Member {
        Member {
            name,
            dir: dir.to_path_buf(),
            delivery: Box::new(p.clone()),
            throttle: Arc::new(Throttle::default()),
        }
    }

    fn start(dir: &Path, l: SpoolLimits, p: &Probe, stats: &Arc<Stats>) -> SpoolSink {
        SpoolSink::start(vec![member("test", dir, p)], l, Arc::clone(stats)).unwrap()
    }

    fn wait_for(p: &Probe, n: usize) {
        let t = Instant::now();
        while p.got.lock().unwrap().len() < n && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until every spool has delivered everything (at most 5 s).
    fn wait_drained(stats: &Stats) {
        let t = Instant::now();
        while stats.spool_bytes.load(Relaxed) > 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Bytes of all segments in `dir`.
    fn on_disk(dir: &Path) -> u64 {
        undelivered_bytes(dir, &list_segments(dir).unwrap(), Pos::default()).unwrap()
    }

    fn keys(r: std::ops::Range<usize>) -> Vec<String> {
        r.map(|i| ev(i).key).collect()
    }

    #[test]
    fn events_are_delivered_in_order_across_segments_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        let l = SpoolLimits {
            segment_bytes: 300,
            batch_max: 7,
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        for i in 0..100 {
            s.append(&ev(i)).unwrap();
            if i % 10 == 0 {
                s.flush().unwrap();
            }
        }
        s.flush().unwrap();
        wait_for(&p, 100);
        assert_eq!(*p.got.lock().unwrap(), keys(0..100));
        assert_eq!(stats.spool_delivered.load(Relaxed), 100);
        drop(s);
        assert_eq!(stats.spool_bytes.load(Relaxed), 0);
        // At most the writer's last segment is left.
        assert!(list_segments(dir.path()).unwrap().len() <= 1);
    }

    #[test]
    fn a_restart_delivers_what_was_not_acknowledged_and_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        let mut s = start(dir.path(), limits(), &p, &stats);
        for i in 0..10 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        wait_for(&p, 10);
        p.down.store(true, SeqCst);
        for i in 10..30 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        assert!(stats.spool_delivery_failures.load(Relaxed) > 0);
        assert_eq!(p.got.lock().unwrap().len(), 10);
        // Restarted, with the server back.
        p.down.store(false, SeqCst);
        let s = start(dir.path(), limits(), &p, &stats);
        wait_for(&p, 30);
        drop(s);
        let s = start(dir.path(), limits(), &p, &stats);
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        assert_eq!(*p.got.lock().unwrap(), keys(0..30));
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let mut s = start(dir.path(), limits(), &p, &stats);
        for i in 0..5 {
            s.append(&ev(i)).unwrap();
        }
        drop(s);
        // A crash in the middle of a write: half a record at the end.
        let seg = *list_segments(dir.path()).unwrap().last().unwrap();
        let half = encode(&ev(5));
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), seg))
            .unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        p.down.store(false, SeqCst);
        let mut s = start(dir.path(), limits(), &p, &stats);
        s.append(&ev(6)).unwrap();
        s.flush().unwrap();
        wait_for(&p, 6);
        drop(s);
        let mut want = keys(0..5);
        want.push(ev(6).key);
        assert_eq!(*p.got.lock().unwrap(), want);
        assert_eq!(stats.spool_torn.load(Relaxed), 1);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let mut s = start(dir.path(), limits(), &p, &stats);
        for i in 0..3 {
            s.append(&ev(i)).unwrap();
        }
        drop(s);
        let seg = *list_segments(dir.path()).unwrap().last().unwrap();
        let path = segment_path(dir.path(), seg);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = encode(&ev(0)).len() + 12;
        bytes[second] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        p.down.store(false, SeqCst);
        let s = start(dir.path(), limits(), &p, &stats);
        wait_for(&p, 1);
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        assert_eq!(*p.got.lock().unwrap(), keys(0..1));
        assert_eq!(stats.spool_torn.load(Relaxed), 1);
    }

    #[test]
    fn a_full_spool_drops_the_newest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let one = encode(&ev(0)).len() as u64;
        let l = SpoolLimits {
            max_bytes: one * 10,
            ..limits()
        };
        let mut s = start(dir.path(), l.clone(), &p, &stats);
        for i in 0..25 {
            s.append(&ev(i)).unwrap();
            s.flush().unwrap();
        }
        assert_eq!(stats.spool_dropped.load(Relaxed), 15);
        assert_eq!(stats.spool_bytes.load(Relaxed), one * 10);
        p.down.store(false, SeqCst);
        wait_for(&p, 10);
        // Delivered: room again.
        wait_drained(&stats);
        s.append(&ev(99)).unwrap();
        s.flush().unwrap();
        wait_for(&p, 11);
        drop(s);
        let mut want = keys(0..10);
        want.push(ev(99).key);
        assert_eq!(*p.got.lock().unwrap(), want);
    }

    /// The sink of two outputs sharing a spool, in `root/a` and `root/b`.
    fn start_two(
        root: &Path,
        l: SpoolLimits,
        a: &Probe,
        b: &Probe,
        stats: &Arc<Stats>,
    ) -> SpoolSink {
        let members = vec![
            member("a", &root.join("a"), a),
            member("b", &root.join("b"), b),
        ];
        SpoolSink::start(members, l, Arc::clone(stats)).unwrap()
    }

    /// The inode of each segment in `dir`, and how many links it has.
    fn inodes(dir: &Path) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|s| {
                let m = std::fs::metadata(segment_path(dir, s)).unwrap();
                (m.ino(), m.nlink())
            })
            .collect()
    }

    #[test]
    fn outputs_sharing_a_spool_get_every_event_written_once() {
        let root = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (a, b) = (Probe::default(), Probe::default());
        b.down.store(true, SeqCst);
        let l = SpoolLimits {
            segment_bytes: 300,
            batch_max: 7,
            ..limits()
        };
        let mut s = start_two(root.path(), l, &a, &b, &stats);
        assert_eq!(s.name(), "a+b");
        for i in 0..50 {
            s.append(&ev(i)).unwrap();
            if i % 10 == 0 {
                s.flush().unwrap();
            }
        }
        s.flush().unwrap();
        wait_for(&a, 50);
        // `a` has delivered and let go of its links; `b` (down) still holds every
        // segment, each one file: written once, linked into `a` while `a` needed it.
        let held = inodes(&root.path().join("b"));
        assert!(held.len() > 5, "{held:?}");
        assert_eq!(
            on_disk(&root.path().join("b")),
            50 * encode(&ev(0)).len() as u64
        );
        let (last_a, last_b) = (
            *inodes(&root.path().join("a")).last().unwrap(),
            *held.last().unwrap(),
        );
        assert_eq!(last_a.0, last_b.0, "the segment being written is one file");
        assert_eq!(last_a.1, 2, "linked into both directories");
        assert!(held[..held.len() - 1].iter().all(|&(_, n)| n == 1));
        b.down.store(false, SeqCst);
        wait_for(&b, 50);
        drop(s);
        assert_eq!(*a.got.lock().unwrap(), keys(0..50));
        assert_eq!(*b.got.lock().unwrap(), keys(0..50));
        assert_eq!(stats.spool_delivered.load(Relaxed), 100);
        assert_eq!(stats.spool_bytes.load(Relaxed), 0);
        assert!(list_segments(&root.path().join("b")).unwrap().len() <= 1);
    }

    #[test]
    fn a_full_member_is_left_out_and_the_others_lose_nothing() {
        let root = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (a, b) = (Probe::default(), Probe::default());
        b.down.store(true, SeqCst);
        let one = encode(&ev(0)).len() as u64;
        let l = SpoolLimits {
            max_bytes: one * 10,
            segment_bytes: one * 4,
            ..limits()
        };
        let mut s = start_two(root.path(), l.clone(), &a, &b, &stats);
        for i in 0..40 {
            s.append(&ev(i)).unwrap();
            s.flush().unwrap();
            // `a` keeps up (its own spool never fills).
            let t = Instant::now();
            while s.members[0].pending() > 0 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(*a.got.lock().unwrap(), keys(0..40), "a loses nothing");
        assert_eq!(stats.spool_dropped.load(Relaxed), 30, "dropped for b only");
        let b_dir = root.path().join("b");
        assert_eq!(
            on_disk(&b_dir),
            one * 10,
            "b's directory holds at most max_bytes"
        );
        // A restart while b is full: b still has its ten, a nothing to deliver.
        drop(s);
        b.down.store(false, SeqCst);
        let mut s = start_two(root.path(), l, &a, &b, &stats);
        wait_for(&b, 10);
        assert_eq!(*b.got.lock().unwrap(), keys(0..10));
        // Drained: b takes new events again.
        wait_drained(&stats);
        for i in 40..45 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        wait_for(&a, 45);
        wait_for(&b, 15);
        drop(s);
        assert_eq!(*a.got.lock().unwrap(), keys(0..45), "nothing twice");
        let mut want = keys(0..10);
        want.extend(keys(40..45));
        assert_eq!(*b.got.lock().unwrap(), want);
    }

    #[test]
    fn a_member_on_another_file_system_gets_its_own_copy() {
        use std::os::unix::fs::MetadataExt;
        let disk = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed");
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(disk.path()),
            dev(shm.path()),
            "this test needs the temporary directory and /dev/shm on two file systems"
        );
        let stats = Arc::new(Stats::default());
        let (a, b) = (Probe::default(), Probe::default());
        let members = vec![member("a", disk.path(), &a), member("b", shm.path(), &b)];
        let mut s = SpoolSink::start(members, limits(), Arc::clone(&stats)).unwrap();
        assert_eq!(s.files.len(), 2, "no link across file systems: two files");
        for i in 0..20 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        wait_for(&a, 20);
        wait_for(&b, 20);
        drop(s);
        assert_eq!(*a.got.lock().unwrap(), keys(0..20));
        assert_eq!(*b.got.lock().unwrap(), keys(0..20));
    }

    #[test]
    fn a_new_segment_has_its_disk_reserved_but_shows_only_what_was_written() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        let l = SpoolLimits {
            segment_bytes: 1 << 20,
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        let seg = segment_path(dir.path(), s.at.seq);
        let m = std::fs::metadata(&seg).unwrap();
        assert_eq!(m.len(), 0, "the length is what was written");
        assert!(
            m.blocks() * 512 >= 1 << 20,
            "{} bytes reserved",
            m.blocks() * 512
        );
        s.append(&ev(0)).unwrap();
        s.flush().unwrap();
        wait_for(&p, 1);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            record_len(&ev(0).key, "attack", &ev(0).body)
        );
        drop(s);
        assert_eq!(*p.got.lock().unwrap(), keys(0..1));
    }

    #[test]
    fn failed_batches_are_retried_with_growing_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let l = SpoolLimits {
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        s.append(&ev(0)).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        // 50+100+200+400+400 ms: about 5 tries in a second, not 1000/50 = 20.
        let calls = p.calls.load(SeqCst);
        assert!((2..=8).contains(&calls), "{calls} attempts");
        p.down.store(false, SeqCst);
        wait_for(&p, 1);
        drop(s);
        assert_eq!(*p.got.lock().unwrap(), keys(0..1));
    }

    #[test]
    fn the_sink_spools_the_shared_rendering_in_the_same_format() {
        use crate::attack::Captured;
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let mut s = start(dir.path(), limits(), &p, &stats);
        let a = Captured::test_session(b"payload").seal();
        let events = Rendered::default();
        s.write(&a, &events).unwrap();
        assert_eq!(events.renders(), 1, "rendered through the shared cache");
        let json = events.json(&a, 4096, PayloadEncoding::Base64).unwrap();
        assert_eq!(events.renders(), 1);
        drop(s);
        // On disk: exactly the record the old code wrote (key = attack id).
        let seg = *list_segments(dir.path()).unwrap().first().unwrap();
        let want = encode(&Spooled {
            key: a.id.to_string(),
            kind: "attack".into(),
            body: serde_json::to_vec(&crate::event::Event::of(&a, 4096, PayloadEncoding::Base64))
                .unwrap(),
        });
        assert_eq!(*json, want[want.len() - json.len()..]);
        assert_eq!(std::fs::read(segment_path(dir.path(), seg)).unwrap(), want);
    }

    fn syncs(s: &SpoolSink) -> u64 {
        s.syncer.as_ref().unwrap().0.syncs.load(Relaxed)
    }

    fn dirty(s: &SpoolSink) -> bool {
        let sy = &s.syncer.as_ref().unwrap().0;
        let dirty = sy.state.lock().unwrap().dirty_since.is_some();
        dirty
    }

    #[test]
    fn batches_are_written_at_once_and_synced_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let interval = Duration::from_millis(300);
        let l = SpoolLimits {
            fsync_interval: interval,
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        // Many batches in quick succession: each is written (readable by another
        // process at once), but synced far less often than once per batch.
        let started = Instant::now();
        for i in 0..20 {
            s.append(&ev(i)).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let seg = *list_segments(dir.path()).unwrap().last().unwrap();
        let on_file = std::fs::metadata(segment_path(dir.path(), seg))
            .unwrap()
            .len();
        assert_eq!(on_file, 20 * encode(&ev(0)).len() as u64, "written at once");
        let batches_took = started.elapsed();
        let n = syncs(&s);
        if batches_took < interval {
            assert_eq!(n, 0, "no sync before the interval");
        }
        assert!(
            n <= 1 + (batches_took.as_millis() / interval.as_millis()) as u64,
            "{n}"
        );
        // The last batch is synced within the interval though no event follows.
        let t = Instant::now();
        while (dirty(&s) || syncs(&s) == 0) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dirty(&s), "the last batch was synced");
        assert!(syncs(&s) >= 1);
        assert!(
            t.elapsed() < interval + Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        // A sync under way ends.
        std::thread::sleep(Duration::from_millis(50));
        // Nothing new: no more syncs.
        let n = syncs(&s);
        std::thread::sleep(interval + Duration::from_millis(100));
        assert_eq!(syncs(&s), n);
        // Shutdown syncs what is left at once.
        s.append(&ev(99)).unwrap();
        s.flush().unwrap();
        let sy = Arc::clone(&s.syncer.as_ref().unwrap().0);
        let t = Instant::now();
        drop(s);
        assert!(t.elapsed() < interval, "{:?}", t.elapsed());
        assert!(sy.state.lock().unwrap().dirty_since.is_none());
        assert_eq!(sy.syncs.load(Relaxed), n + 1);
    }

    #[test]
    fn interval_zero_syncs_every_batch_and_always_never_need_no_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        let l = SpoolLimits {
            fsync_interval: Duration::ZERO,
            ..limits()
        };
        let s = start(dir.path(), l, &p, &stats);
        assert!(
            s.syncer.is_none(),
            "0: synced on the writer thread, every batch"
        );
        drop(s);
        for fsync in [Fsync::Always, Fsync::Never] {
            let l = SpoolLimits { fsync, ..limits() };
            let s = start(dir.path(), l, &p, &stats);
            assert!(s.syncer.is_none());
            drop(s);
        }
        let s = start(dir.path(), limits(), &p, &stats);
        assert!(s.syncer.is_some(), "batch with the default interval");
    }

    #[test]
    fn a_segment_left_behind_is_synced_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let p = Probe::default();
        p.down.store(true, SeqCst);
        let l = SpoolLimits {
            segment_bytes: 300,
            fsync_interval: Duration::from_secs(60),
            ..limits()
        };
        let mut s = start(dir.path(), l, &p, &stats);
        for i in 0..30 {
            s.append(&ev(i)).unwrap();
        }
        s.flush().unwrap();
        let segments = list_segments(dir.path()).unwrap().len() as u64;
        assert!(segments > 2);
        // One sync per segment left; the one being written waits for the timer.
        assert_eq!(syncs(&s), segments - 1);
        assert!(dirty(&s));
    }

    #[test]
    fn the_fsync_interval_is_validated_and_read_from_the_config() {
        let c = SpoolConfig::default();
        assert_eq!(c.fsync_interval_ms, 1000);
        assert!(c.validate().is_ok());
        let zero = SpoolConfig {
            fsync_interval_ms: 0,
            ..SpoolConfig::default()
        };
        assert!(zero.validate().is_ok());
        let long = SpoolConfig {
            fsync_interval_ms: 60_001,
            ..SpoolConfig::default()
        };
        let e = long.validate().unwrap_err();
        assert!(
            format!("{e:?}").contains("output.spool.fsync_interval_ms"),
            "{e:?}"
        );
        let c: crate::config::Config =
            toml::from_str("[output.spool]\nfsync_interval_ms = 250\n").unwrap();
        let l = SpoolLimits::from_config(&c.output.spool, 4096, PayloadEncoding::Base64);
        assert_eq!(l.fsync_interval, Duration::from_millis(250));
        assert_eq!(
            SpoolLimits::from_config(&SpoolConfig::default(), 4096, PayloadEncoding::Base64)
                .fsync_interval,
            Duration::from_secs(1)
        );
    }
}
