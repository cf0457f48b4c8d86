//! Outputs ("sinks") and the recorder that feeds them.
//!
//! Capture hands a [`Captured`] session to the [`Recorder`] without waiting: it goes
//! into a bounded queue, and a recorder thread seals it into an [`Attack`] (hashes,
//! id, transcript path) and passes it to one bounded queue per sink, each drained by
//! the sink's own thread. A slow sink only backs up its own queue; what does not fit
//! is counted and logged, never silently dropped, and never blocks capture.
//!
//! A new sink is one file implementing [`Sink`] plus one line in [`build`].

pub mod hpfeeds;
pub mod jsonl;
pub mod legacy;
pub mod nats;
pub mod postgres;
pub mod spool;
pub mod transcripts;

use crate::analysis::pipeline::{Analyzed, Pipeline};
use crate::analysis::registry::AnalyzerSet;
use crate::attack::{Attack, Captured};
use crate::config::Config;
use crate::event::Rendered;
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// An output of finished attacks. Runs on its own thread, so it may block.
pub trait Sink: Send + 'static {
    /// Short name for logs and counters.
    fn name(&self) -> &'static str;
    /// Write one attack. `events` renders its JSON event once for every sink asking
    /// for the same payload settings: a sink writing the native event takes it from
    /// there; one writing another format ignores it.
    fn write(&mut self, attack: &Attack, events: &Rendered) -> anyhow::Result<()>;
    /// The payload cap and encoding of the native event this sink writes, if it
    /// writes one: analysed attacks' events are then rendered ahead of time by the
    /// analysis worker, off the capture path ([`Rendered::with_templates`]).
    fn event_settings(&self) -> Option<(u64, crate::config::PayloadEncoding)> {
        None
    }
    /// The outputs this sink writes for, as metrics name them: its own name, or
    /// each output sharing it (a shared spool).
    fn outputs(&self) -> Vec<&'static str> {
        vec![self.name()]
    }
    /// Make everything written so far durable (called when the queue has stayed empty for
    /// `linger::LINGER`, and at shutdown).
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Reopen files after log rotation (called on SIGHUP).
    fn reopen(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The registry: every sink the config enables, in order.
pub fn build(config: &Config, stats: &Arc<Stats>) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if config.output.jsonl.enabled {
        sinks.push(Box::new(jsonl::JsonlSink::open(config)?));
    }
    if config.output.logjson.enabled {
        sinks.push(Box::new(legacy::logjson::LogJsonSink::open(config)?));
    }
    if config.output.attacker_log.enabled {
        sinks.push(Box::new(legacy::attacker_log::AttackerLogSink::open(
            config,
        )?));
    }
    if config.output.savefile.enabled {
        sinks.push(Box::new(legacy::savefile::SaveFileSink::open(config)?));
    }
    // The network outputs, each behind the durable spool; those taking the same
    // event share one (spool::start_shared).
    let mut network = Vec::new();
    if config.output.postgres.enabled {
        network.push(postgres::output(config, stats)?);
    }
    if config.output.nats.enabled {
        network.push(nats::output(config)?);
    }
    if config.output.hpfeeds.enabled {
        network.push(hpfeeds::output(config, stats)?);
    }
    for s in spool::start_shared(&config.output.spool, network, stats)? {
        sinks.push(Box::new(s));
    }
    Ok(sinks)
}

/// Open `path` for appending, creating it and its directory (files 0644 under the
/// usual umask). Shared by the file sinks (jsonl, logJSON, logAttacker).
pub(crate) fn open_append(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// One attack in flight; gives its bytes back to the queue budget when the last
/// sink is done with it.
struct Record {
    attack: Attack,
    /// Its JSON events, rendered once for all sinks.
    events: Rendered,
    size: u64,
    budget: Arc<AtomicU64>,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.size, Relaxed);
    }
}

enum Msg {
    /// Boxed: the queue holds `output.queue_size` slots of this enum.
    Session(Box<Captured>, u64),
    /// Back from the analysis pipeline: the attack, then its virtual attacks.
    Analyzed(Vec<Prepared>),
    Reopen,
    Close,
}

/// An attack back from analysis with what its worker already rendered: its
/// events without the transcript part, and its transcript document.
struct Prepared {
    attack: Attack,
    /// Its share of the output queue's byte budget.
    size: u64,
    events: Rendered,
    /// `Some` when transcripts are written.
    transcript: Option<Vec<u8>>,
}

/// Render what can be rendered of `a` and its virtual attacks. Runs on the analysis
/// worker (low priority), so the recorder and the sinks, which capture waits for
/// when the CPU is short, only append bytes.
fn prepare(
    a: Analyzed,
    settings: &[(u64, crate::config::PayloadEncoding)],
    transcripts: bool,
) -> Vec<Prepared> {
    let one = |attack: Attack, size: u64| Prepared {
        events: Rendered::with_templates(&attack, settings),
        transcript: transcripts
            .then(|| transcripts::render(&attack))
            .and_then(Result::ok),
        attack,
        size,
    };
    let mut out = Vec::with_capacity(1 + a.virtuals.len());
    out.push(one(a.attack, a.size));
    // Virtual attacks hold no share of the byte budget of their own.
    out.extend(a.virtuals.into_iter().map(|v| one(v, 0)));
    out
}

/// What a sink's thread receives.
enum LaneMsg {
    Record(Arc<Record>),
    Reopen,
}

/// The front door of the outputs: `submit` never blocks.
pub struct Recorder {
    tx: SyncSender<Msg>,
    /// Bytes of records queued or being written.
    in_flight: Arc<AtomicU64>,
    max_bytes: u64,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The analysis pipeline, when an analyzer is enabled.
    pipeline: Option<Arc<Pipeline>>,
    /// The per-read analyzers in force (swapped on reload): the sessions run their
    /// `on_chunk`, the recorder thread their `on_seal`.
    per_read: Arc<PerReadSwap>,
}

/// The per-read analyzers in force.
type PerReadSwap = arc_swap::ArcSwap<Vec<Arc<dyn crate::analysis::Analyzer>>>;

impl Recorder {
    /// Start the recorder thread and one thread per sink.
    pub fn start(
        config: &Config,
        sinks: Vec<Box<dyn Sink>>,
        set: AnalyzerSet,
        stats: Arc<Stats>,
        throttle: Arc<Throttle>,
    ) -> anyhow::Result<Recorder> {
        let queue = config.output.queue_size;
        let store = if config.output.transcripts.enabled {
            Some(transcripts::TranscriptStore::open(
                config,
                Arc::clone(&stats),
                Arc::clone(&throttle),
            )?)
        } else {
            None
        };
        let in_flight = Arc::new(AtomicU64::new(0));
        let per_read = Arc::new(PerReadSwap::from_pointee(set.per_read.clone()));
        let mut settings = Vec::new();
        for s in sinks.iter().filter_map(|s| s.event_settings()) {
            if !settings.contains(&s) {
                settings.push(s);
            }
        }
        let transcripts_on = store.is_some();
        let mut lanes = Vec::new();
        for sink in sinks {
            let (tx, rx) = sync_channel::<LaneMsg>(queue);
            let name = sink.name();
            let st = Arc::clone(&stats);
            let th = Arc::clone(&throttle);
            // Under each output's own name: a shared spool's queue is each of its
            // outputs' queue.
            let outputs = sink.outputs();
            let depth = stats.output_queue.handle(&[outputs[0]]);
            for o in &outputs[1..] {
                stats.output_queue.alias(&[o], &depth);
            }
            let d = Arc::clone(&depth);
            let handle = std::thread::Builder::new()
                .name(format!("sink-{name}"))
                .spawn(move || {
                    crate::privileges::lower_thread_priority(0, "sink");
                    run_sink(sink, rx, st, th, d)
                })?;
            lanes.push(Lane {
                name,
                outputs: outputs.len() as u64,
                tx,
                handle,
                depth,
            });
        }
        let (tx, rx) = sync_channel::<Msg>(queue);
        let pipeline = if set.is_empty() {
            None
        } else {
            tracing::info!(analyzers = ?set.names(), workers = config.analysis.workers, "analysis pipeline started");
            let back = std::sync::Mutex::new(tx.clone());
            // Workers wait for room here: they are off the capture path, and the
            // recorder thread always drains its queue.
            let done = Arc::new(move |a: Analyzed| {
                let prepared = prepare(a, &settings, transcripts_on);
                let tx = back.lock().unwrap().clone();
                let _ = tx.send(Msg::Analyzed(prepared));
            });
            Some(Arc::new(Pipeline::start(
                &config.analysis,
                set,
                Arc::clone(&stats),
                Arc::clone(&throttle),
                done,
            )?))
        };
        let st = Arc::clone(&stats);
        let th = Arc::clone(&throttle);
        let budget = Arc::clone(&in_flight);
        let pl = pipeline.clone();
        let sealers = Arc::clone(&per_read);
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                crate::privileges::lower_thread_priority(0, "recorder");
                let mut out = Writer {
                    store,
                    lanes,
                    budget,
                    stats: st,
                    throttle: th,
                };
                run_recorder(rx, pl, &sealers, &mut out);
                out.close();
            })?;
        Ok(Recorder {
            tx,
            in_flight,
            max_bytes: config.output.queue_bytes,
            stats,
            throttle,
            thread: std::sync::Mutex::new(Some(thread)),
            pipeline,
            per_read,
        })
    }

    /// The per-read analyzers in force, for a new session.
    pub fn per_read(&self) -> crate::analysis::registry::PerRead {
        self.per_read.load_full()
    }

    /// Use the analyzers of a new configuration (SIGHUP). The number of workers
    /// and the queue size need a restart.
    pub fn reload_analysis(&self, config: &Config, set: AnalyzerSet) {
        self.per_read.store(Arc::new(set.per_read.clone()));
        match &self.pipeline {
            Some(p) => p.reload(&config.analysis, set),
            None if !set.is_empty() => tracing::warn!(
                "analyzers enabled by the reload start only after a restart (none ran at start)"
            ),
            None => {}
        }
    }

    /// Queue a finished session for the outputs. Never blocks; a full queue is
    /// counted and logged.
    pub fn submit(&self, captured: Captured) {
        let size = captured.size();
        let before = self.in_flight.fetch_add(size, Relaxed);
        if before + size > self.max_bytes {
            self.in_flight.fetch_sub(size, Relaxed);
            return self.dropped(&captured, "byte budget of the output queue exhausted");
        }
        match self.tx.try_send(Msg::Session(Box::new(captured), size)) {
            Ok(()) => {}
            Err(
                TrySendError::Full(Msg::Session(c, _))
                | TrySendError::Disconnected(Msg::Session(c, _)),
            ) => {
                self.in_flight.fetch_sub(size, Relaxed);
                self.dropped(&c, "output queue full");
            }
            Err(_) => unreachable!("only sessions are sent with try_send"),
        }
    }

    fn dropped(&self, c: &Captured, why: &'static str) {
        Stats::inc(&self.stats.records_dropped);
        limit_warn!(
            self.throttle,
            "records_dropped",
            remote = %c.remote,
            port = c.local.port(),
            bytes = c.transcript.bytes_in,
            "attack record dropped: {why}"
        );
    }

    /// Ask every sink to reopen its files (after log rotation), in queue order.
    pub fn reopen(&self) {
        if self.tx.try_send(Msg::Reopen).is_err() {
            tracing::warn!("output queue full: outputs not reopened");
        }
    }

    /// Write out everything queued, flush every sink and stop the threads.
    pub fn close(&self) {
        let Some(thread) = self.thread.lock().unwrap().take() else {
            return;
        };
        let _ = self.tx.send(Msg::Close);
        let _ = thread.join();
    }
}

struct Lane {
    name: &'static str,
    /// How many outputs this lane writes for (a shared spool: several).
    outputs: u64,
    tx: SyncSender<LaneMsg>,
    handle: JoinHandle<()>,
    /// Records in `tx` not yet taken by the sink (a metric).
    depth: Arc<AtomicU64>,
}

/// Writes attacks to the transcript store and the sinks' queues.
struct Writer {
    store: Option<transcripts::TranscriptStore>,
    lanes: Vec<Lane>,
    budget: Arc<AtomicU64>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
}

impl Writer {
    /// Write one attack: its transcript, then every sink's queue. `size` is what it
    /// holds of the output queue's byte budget.
    fn write(&mut self, attack: Attack, size: u64) {
        self.write_prepared(attack, size, Rendered::default(), None);
    }

    /// As `write`, with the events and the transcript document already rendered
    /// (`transcript` None: rendered here).
    fn write_prepared(
        &mut self,
        mut attack: Attack,
        size: u64,
        events: Rendered,
        transcript: Option<Vec<u8>>,
    ) {
        if let Some(store) = self.store.as_mut() {
            let written = match transcript {
                Some(doc) => store.write_rendered(&attack, doc),
                None => store.write(&attack),
            };
            match written {
                Ok(r) => attack.transcript_ref = Some(r),
                Err(e) => {
                    Stats::inc(&self.stats.output_errors);
                    limit_warn!(self.throttle, "transcript_write", error = %e, "transcript file not written");
                }
            }
        }
        if !attack.analysis.is_virtual {
            Stats::inc(&self.stats.attacks);
        }
        let record = Arc::new(Record {
            attack,
            events,
            size,
            budget: Arc::clone(&self.budget),
        });
        for lane in &self.lanes {
            lane.depth.fetch_add(1, Relaxed);
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                lane.tx.try_send(LaneMsg::Record(Arc::clone(&record)))
            {
                lane.depth.fetch_sub(1, Relaxed);
                // One per output that misses it.
                Stats::add(&self.stats.records_dropped, lane.outputs);
                limit_warn!(self.throttle, "sink_queue_full", sink = lane.name, id = %record.attack.id, "attack record not written: output queue full");
            }
        }
    }

    /// An analyzed attack and its virtual attacks.
    fn write_analyzed(&mut self, prepared: Vec<Prepared>) {
        for p in prepared {
            self.write_prepared(p.attack, p.size, p.events, p.transcript);
        }
    }

    fn reopen(&self) {
        for lane in &self.lanes {
            if lane.tx.try_send(LaneMsg::Reopen).is_err() {
                tracing::warn!(sink = lane.name, "output queue full: not reopened");
            }
        }
    }

    /// Let every sink write out its queue, then stop.
    fn close(&mut self) {
        for lane in self.lanes.drain(..) {
            drop(lane.tx);
            let _ = lane.handle.join();
        }
    }
}

/// Seal `c` and let the per-read analyzers look at the whole session.
fn seal(c: Captured, per_read: &PerReadSwap) -> Attack {
    let mut attack = c.seal();
    for a in per_read.load().iter() {
        a.on_seal(&attack.session.transcript, &mut attack.analysis.findings);
    }
    attack
}

fn run_recorder(
    rx: Receiver<Msg>,
    pipeline: Option<Arc<Pipeline>>,
    per_read: &PerReadSwap,
    out: &mut Writer,
) {
    // A sealed attack goes to analysis when there is room, else straight out.
    let session = |out: &mut Writer, c: Captured, size: u64| {
        let attack = seal(c, per_read);
        match &pipeline {
            Some(p) => {
                if let Err((attack, size)) = p.try_submit(Box::new(attack), size) {
                    Stats::inc(&out.stats.analysis_skipped);
                    limit_warn!(out.throttle, "analysis_queue_full", "attack written without analysis: the analysis queue is full (analysis.queue_size)");
                    out.write(*attack, size);
                }
            }
            None => out.write(attack, size),
        }
    };
    // Lingering on an empty queue spares capture a wake-up per attack (crate::linger).
    loop {
        match crate::linger::recv(&rx, || ()) {
            Some(Msg::Session(c, size)) => session(out, *c, size),
            Some(Msg::Analyzed(a)) => out.write_analyzed(a),
            Some(Msg::Reopen) => out.reopen(),
            Some(Msg::Close) | None => break,
        }
    }
    // Shutdown: attacks still queued for analysis go out unanalyzed, running
    // analyses finish; keep writing until every worker is done.
    let Some(p) = pipeline.as_ref() else {
        return;
    };
    p.begin_close();
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(20)) {
            Ok(Msg::Session(c, size)) => out.write(seal(*c, per_read), size),
            Ok(Msg::Analyzed(a)) => out.write_analyzed(a),
            Ok(Msg::Reopen | Msg::Close) => {}
            Err(_) if p.finished() => break,
            Err(_) => {}
        }
    }
    while let Ok(m) = rx.try_recv() {
        match m {
            Msg::Session(c, size) => out.write(seal(*c, per_read), size),
            Msg::Analyzed(a) => out.write_analyzed(a),
            _ => {}
        }
    }
    p.join();
}

fn run_sink(
    mut sink: Box<dyn Sink>,
    rx: Receiver<LaneMsg>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
    depth: Arc<AtomicU64>,
) {
    let name = sink.name();
    let flush = |sink: &mut Box<dyn Sink>| {
        if let Err(e) = sink.flush() {
            Stats::inc(&stats.output_errors);
            limit_warn!(throttle, "sink_flush", sink = name, error = %e, "output flush failed");
        }
    };
    // Flushed when the queue stays empty for a moment (crate::linger), then parked.
    loop {
        let Some(msg) = crate::linger::recv(&rx, || flush(&mut sink)) else {
            break;
        };
        let record = match msg {
            LaneMsg::Record(r) => {
                depth.fetch_sub(1, Relaxed);
                r
            }
            LaneMsg::Reopen => {
                flush(&mut sink);
                match sink.reopen() {
                    Ok(()) => tracing::info!(sink = name, "output reopened"),
                    Err(e) => {
                        Stats::inc(&stats.output_errors);
                        tracing::error!(sink = name, error = %e, "output not reopened");
                    }
                }
                continue;
            }
        };
        if let Err(e) = sink.write(&record.attack, &record.events) {
            Stats::inc(&stats.output_errors);
            limit_warn!(throttle, "sink_write", sink = name, id = %record.attack.id, error = %e, "attack record not written");
        }
    }
    flush(&mut sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// A sink that takes 50 ms per attack.
    struct Slow(Arc<AtomicUsize>);

    impl Sink for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn write(&mut self, _: &Attack, _: &Rendered) -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_millis(50));
            self.0.fetch_add(1, Relaxed);
            Ok(())
        }
    }

    fn captured() -> Captured {
        Captured::test_session(b"payload")
    }

    /// A recorder for `sinks` without analysis and transcripts, its configuration
    /// changed by `tweak`; its data directory lasts as long as the `TempDir`.
    fn recorder(
        sinks: Vec<Box<dyn Sink>>,
        stats: &Arc<Stats>,
        tweak: impl FnOnce(&mut Config),
    ) -> (tempfile::TempDir, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        config.output.transcripts.enabled = false;
        tweak(&mut config);
        let set = AnalyzerSet::default();
        let r = Recorder::start(&config, sinks, set, Arc::clone(stats), Arc::default());
        (dir, r.unwrap())
    }

    #[test]
    fn a_slow_sink_never_blocks_submit_and_overflow_is_counted() {
        let stats = Arc::new(Stats::default());
        let written = Arc::new(AtomicUsize::new(0));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Slow(Arc::clone(&written)))];
        let (_dir, r) = recorder(sinks, &stats, |c| c.output.queue_size = 4);
        let started = Instant::now();
        for _ in 0..100 {
            r.submit(captured());
        }
        // 100 attacks at 50 ms each would take 5 s if submit waited for the sink.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        r.close();
        let dropped = stats.records_dropped.load(Relaxed) as usize;
        let done = written.load(Relaxed);
        assert!(dropped > 0, "the small queue overflowed");
        assert_eq!(
            done + dropped,
            100,
            "every attack was either written or counted as dropped"
        );
    }

    /// A slow sink that writes for two outputs (like a shared spool).
    struct SlowPair(Arc<AtomicUsize>);

    impl Sink for SlowPair {
        fn name(&self) -> &'static str {
            "a+b"
        }
        fn outputs(&self) -> Vec<&'static str> {
            vec!["a", "b"]
        }
        fn write(&mut self, a: &Attack, e: &Rendered) -> anyhow::Result<()> {
            Slow(Arc::clone(&self.0)).write(a, e)
        }
    }

    #[test]
    fn a_sink_shared_by_outputs_shows_its_queue_under_each_outputs_name() {
        let stats = Arc::new(Stats::default());
        let written = Arc::new(AtomicUsize::new(0));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(SlowPair(Arc::clone(&written)))];
        let (_dir, r) = recorder(sinks, &stats, |_| {});
        for _ in 0..10 {
            r.submit(captured());
        }
        let depth = |name: &str| {
            let e = stats.output_queue.entries();
            e.iter()
                .find(|(k, _)| k == &[name.to_string()])
                .map(|(_, v)| v.load(Relaxed))
        };
        let t = Instant::now();
        while depth("a").unwrap_or(0) == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(depth("a").unwrap() > 0, "attacks wait behind the slow sink");
        let e = stats.output_queue.entries();
        let get = |n: &str| &e.iter().find(|(k, _)| k == &[n.to_string()]).unwrap().1;
        assert!(
            Arc::ptr_eq(get("a"), get("b")),
            "one queue, shown under both names"
        );
        assert_eq!(depth("a+b"), None);
        r.close();
        assert_eq!(written.load(Relaxed), 10);
        assert_eq!(depth("b"), Some(0));
    }

    #[test]
    fn the_byte_budget_bounds_queued_attacks() {
        let stats = Arc::new(Stats::default());
        let written = Arc::new(AtomicUsize::new(0));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Slow(Arc::clone(&written)))];
        let (_dir, r) = recorder(sinks, &stats, |c| c.output.queue_bytes = 1 << 20);
        // 40 attacks of 100 KiB: only about 10 fit in 1 MiB at a time.
        for _ in 0..40 {
            let mut c = captured();
            c.transcript.push_in(&vec![b'x'; 100 * 1024], 200 * 1024);
            r.submit(c);
        }
        r.close();
        let dropped = stats.records_dropped.load(Relaxed) as usize;
        assert!(dropped >= 25, "{dropped}");
        assert_eq!(written.load(Relaxed) + dropped, 40);
        assert_eq!(r.in_flight.load(Relaxed), 0, "every byte given back");
    }

    /// A sink that keeps the renderings it was handed.
    struct Keep(Arc<std::sync::Mutex<Vec<Arc<Vec<u8>>>>>);

    impl Sink for Keep {
        fn name(&self) -> &'static str {
            "keep"
        }
        fn write(&mut self, a: &Attack, events: &Rendered) -> anyhow::Result<()> {
            let json = events.json(a, 4096, crate::config::PayloadEncoding::Base64)?;
            self.0.lock().unwrap().push(json);
            Ok(())
        }
    }

    #[test]
    fn every_sink_gets_the_same_rendering_of_an_attack() {
        let (one, two) = (Arc::default(), Arc::default());
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Keep(Arc::clone(&one))),
            Box::new(Keep(Arc::clone(&two))),
        ];
        let (_dir, r) = recorder(sinks, &Arc::default(), |_| {});
        for _ in 0..3 {
            r.submit(captured());
        }
        r.close();
        let (one, two) = (one.lock().unwrap(), two.lock().unwrap());
        assert_eq!(one.len(), 3);
        assert_eq!(two.len(), 3);
        for (a, b) in one.iter().zip(two.iter()) {
            assert!(Arc::ptr_eq(a, b), "rendered once, shared");
        }
        assert!(!Arc::ptr_eq(&one[0], &one[1]), "one rendering per attack");
    }

    /// A sink that writes the native event and checks each rendering it is handed
    /// against the event rendered whole from the attack it got.
    struct Check(Arc<std::sync::Mutex<Vec<(bool, usize, serde_json::Value)>>>);

    impl Sink for Check {
        fn name(&self) -> &'static str {
            "check"
        }
        fn event_settings(&self) -> Option<(u64, crate::config::PayloadEncoding)> {
            Some((4096, crate::config::PayloadEncoding::Base64))
        }
        fn write(&mut self, a: &Attack, events: &Rendered) -> anyhow::Result<()> {
            let enc = crate::config::PayloadEncoding::Base64;
            let json = events.json(a, 4096, enc)?;
            let whole = serde_json::to_vec(&crate::event::Event::of(a, 4096, enc))?;
            let v = serde_json::from_slice(&json)?;
            self.0
                .lock()
                .unwrap()
                .push((*json == whole, events.templates(), v));
            Ok(())
        }
    }

    #[test]
    fn analysed_attacks_arrive_rendered_by_the_worker_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        config.analysis.nice = 0;
        config.analysis.idle_priority = false;
        let set = AnalyzerSet::build(&config).unwrap();
        assert!(set.names().contains(&"base64"), "{:?}", set.names());
        let got = Arc::default();
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Check(Arc::clone(&got)))];
        let stats = Arc::new(Stats::default());
        let r = Recorder::start(&config, sinks, set, Arc::clone(&stats), Arc::default()).unwrap();
        // A base64 run long enough for the decoder: one virtual attack.
        let blob = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "echo a decoded command line for the virtual attack; ".repeat(4),
        );
        r.submit(Captured::test_session(format!("cmd={blob}\r\n").as_bytes()));
        // Closing skips analysis still queued: wait for both events first.
        let started = Instant::now();
        while got.lock().unwrap().len() < 2 && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        r.close();
        let got = got.lock().unwrap();
        assert_eq!(stats.analysis_skipped.load(Relaxed), 0);
        assert!(
            got.len() >= 2,
            "the attack and its virtual attack: {}",
            got.len()
        );
        for (same, templates, v) in got.iter() {
            assert!(same, "the completed template is the whole event: {v}");
            assert_eq!(*templates, 1, "rendered ahead by the worker");
            let t = &v["honeytrap"]["transcript"];
            let path = t["path"].as_str().expect("transcript written");
            let doc = transcripts::read_transcript(&transcripts::TranscriptRef {
                path: path.into(),
                offset: t["offset"].as_u64().unwrap(),
                length: t["length"].as_u64().unwrap(),
            })
            .unwrap();
            assert_eq!(doc["attack_id"], v["honeytrap"]["attack_id"]);
        }
        assert!(got.iter().any(|g| g.2["honeytrap"]["virtual"] == true));
    }

    #[test]
    fn the_recorder_runs_the_per_read_analyzers_on_seal_also_without_analysis() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        config.output.transcripts.enabled = false;
        let mut set = AnalyzerSet::build(&config).unwrap();
        // Only the per-read stage: no pipeline, as when the queue is full.
        set.decode.clear();
        set.analyze.clear();
        set.store.clear();
        set.post_process.clear();
        assert_eq!(set.names(), ["protocol"]);
        let got = Arc::default();
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Check(Arc::clone(&got)))];
        let r = Recorder::start(&config, sinks, set, Arc::default(), Arc::default()).unwrap();
        assert!(r.pipeline.is_none());
        r.submit(Captured::test_session(
            b"GET /shell?cd+/tmp HTTP/1.1\r\nHost: x\r\n\r\n",
        ));
        r.close();
        let got = got.lock().unwrap();
        let findings = &got[0].2["honeytrap"]["findings"];
        assert_eq!(findings[0]["analyzer"], "protocol", "{findings}");
        assert_eq!(findings[0]["meta"]["protocol"], "http");
        assert_eq!(findings[0]["meta"]["path"], "/shell?cd+/tmp");
    }
}
