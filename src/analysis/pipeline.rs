//! The analysis pipeline: a bounded queue of sealed attacks and a pool of worker
//! threads (never the async runtime's) that run the stages on each one.
//!
//! For one attack: the decoders run on the payload and, up to `analysis.max_depth`,
//! on what they decoded; every decoded copy becomes a *virtual attack* (its own id,
//! a link to its parent). The analyze stage runs on the payload, the decoded copies
//! and every downloaded file; the store stage on the downloads; post-process once on
//! the attack. Findings and downloads from every input are attached to the real
//! attack (each says what it came from); a virtual attack also carries those found
//! on its own payload.
//!
//! Each analyzer run is timed against `analysis.analyzer_budget`, the whole attack
//! against `analysis.attack_budget` (what is left is skipped and recorded); a panic
//! or an error is caught, logged and counted. Whatever happens, the attack and its
//! virtual attacks are handed on to the outputs.

use super::record::{Analysis, Failure, Source};
use super::registry::AnalyzerSet;
use super::{Analyzer, Input, InputKind, Output};
use crate::attack::{Attack, Captured, Hashes, Transcript};
use crate::config::AnalysisConfig;
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Most virtual attacks made from one attack.
pub const MAX_VIRTUAL: usize = 16;

/// An analyzed attack, its virtual attacks, and the byte size it holds in the
/// output queue's budget.
pub struct Analyzed {
    pub attack: Attack,
    pub virtuals: Vec<Attack>,
    pub size: u64,
}

/// Where analyzed attacks go (the recorder).
pub type Done = Arc<dyn Fn(Analyzed) + Send + Sync>;

struct Job {
    attack: Box<Attack>,
    size: u64,
}

/// Shared by the workers.
struct Shared {
    set: ArcSwap<AnalyzerSet>,
    limits: ArcSwap<AnalysisConfig>,
    closing: AtomicBool,
    alive: AtomicUsize,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
    done: Done,
}

/// The worker pool.
pub struct Pipeline {
    jobs: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Start `analysis.workers` threads running `set`; finished attacks go to `done`.
    pub fn start(
        limits: &AnalysisConfig,
        set: AnalyzerSet,
        stats: Arc<Stats>,
        throttle: Arc<Throttle>,
        done: Done,
    ) -> anyhow::Result<Pipeline> {
        let (tx, rx) = bounded::<Job>(limits.queue_size);
        let shared = Arc::new(Shared {
            set: ArcSwap::from_pointee(set),
            limits: ArcSwap::from_pointee(limits.clone()),
            closing: AtomicBool::new(false),
            alive: AtomicUsize::new(limits.workers),
            stats,
            throttle,
            done,
        });
        let mut workers = Vec::new();
        for i in 0..limits.workers {
            let rx = rx.clone();
            let sh = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("analysis-{i}"))
                    .spawn({
                        let (nice, idle) = (limits.nice, limits.idle_priority);
                        move || worker(rx, sh, nice, idle)
                    })?,
            );
        }
        Ok(Pipeline {
            jobs: Mutex::new(Some(tx)),
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Queue an attack without waiting; a full queue (or a closing pipeline) hands
    /// it back.
    pub fn try_submit(&self, attack: Box<Attack>, size: u64) -> Result<(), (Box<Attack>, u64)> {
        let jobs = self.jobs.lock().unwrap();
        let Some(tx) = jobs.as_ref() else {
            return Err((attack, size));
        };
        match tx.try_send(Job { attack, size }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Err((j.attack, j.size)),
        }
    }

    /// Use a new set of analyzers (SIGHUP) for the attacks analyzed from now on.
    pub fn reload(&self, limits: &AnalysisConfig, set: AnalyzerSet) {
        self.shared.limits.store(Arc::new(limits.clone()));
        self.shared.set.store(Arc::new(set));
    }

    /// Stop taking attacks; queued ones are passed on unanalyzed, running ones
    /// finish. Returns at once; see [`Pipeline::finished`].
    pub fn begin_close(&self) {
        self.shared.closing.store(true, SeqCst);
        self.jobs.lock().unwrap().take();
    }

    /// True once every worker has exited.
    pub fn finished(&self) -> bool {
        self.shared.alive.load(SeqCst) == 0
    }

    /// Wait for the worker threads (after [`Pipeline::begin_close`] and
    /// [`Pipeline::finished`]).
    pub fn join(&self) {
        for w in self.workers.lock().unwrap().drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(rx: Receiver<Job>, sh: Arc<Shared>, nice: i32, idle: bool) {
    // Linux nice values are per thread: analysis yields the CPU to capture, so
    // a busy sensor fills the analysis queue (attacks then skip analysis,
    // counted) instead of accepting fewer connections.
    crate::privileges::lower_thread_priority(nice, "analysis worker");
    if idle {
        // Nice 19 still gets a time slice when it is its turn, and capture threads
        // waking up then wait for it; SCHED_IDLE is preempted at once.
        crate::privileges::idle_thread_priority("analysis worker");
    }
    let saturation = crate::saturation::Saturation::global();
    while let Some(Job { mut attack, size }) = crate::linger::recv(&rx, || ()) {
        // While capture has every CPU busy, wait (bounded): the queue fills and
        // later attacks skip analysis instead of slowing capture down.
        let pause = sh.limits.load().busy_pause;
        if saturation.wait(pause, || sh.closing.load(SeqCst)) >= crate::saturation::WINDOW {
            Stats::inc(&sh.stats.analysis_waits);
        }
        let cpu = crate::saturation::thread_cpu();
        let virtuals = if sh.closing.load(SeqCst) {
            Stats::inc(&sh.stats.analysis_skipped);
            Vec::new()
        } else {
            let set = sh.set.load_full();
            let limits = sh.limits.load_full();
            analyze(&set, &limits, &sh.stats, &sh.throttle, &mut attack)
        };
        (sh.done)(Analyzed {
            attack: *attack,
            virtuals,
            size,
        });
        // Analysis's own CPU time does not count towards saturation.
        saturation.charge(crate::saturation::thread_cpu().saturating_sub(cpu));
    }
    sh.alive.fetch_sub(1, SeqCst);
}

/// One input of an attack under analysis.
#[derive(Clone)]
struct Item {
    data: Arc<Vec<u8>>,
    kind: InputKind,
    source: Source,
    depth: u32,
    /// The virtual attack it is the payload of.
    virtual_index: Option<usize>,
    /// The download it is the content of.
    download_index: Option<usize>,
}

/// Runs analyzers on the inputs of one attack and collects what they produce.
struct Run<'a> {
    attack: &'a Attack,
    limits: &'a AnalysisConfig,
    stats: &'a Stats,
    throttle: &'a Throttle,
    deadline: Instant,
    analysis: Analysis,
    virtuals: Vec<Attack>,
}

impl Run<'_> {
    /// Run `a` on `item`, within the budgets; what it found is attached.
    fn run(&mut self, a: &Arc<dyn Analyzer>, item: &Item) -> Output {
        let mut out = Output::default();
        if !a.accepts(item.kind) {
            return out;
        }
        let now = Instant::now();
        if now >= self.deadline {
            Stats::inc(&self.stats.analyzer_skipped);
            self.fail(a.name(), "skipped", "analysis.attack_budget used up".into());
            return out;
        }
        let deadline = self.deadline.min(now + self.limits.analyzer_budget);
        let download = item.download_index.map(|i| &self.analysis.downloads[i]);
        let input = Input {
            data: &item.data,
            kind: item.kind,
            attack: self.attack,
            depth: item.depth,
            deadline,
            download,
            downloads_left: self
                .limits
                .max_downloads
                .saturating_sub(self.analysis.downloads.len()),
        };
        self.analysis.runs += 1;
        Stats::inc(&self.stats.analyzer_runs);
        self.stats.analyzer_runs_by.inc(&[a.name()]);
        let result = catch_unwind(AssertUnwindSafe(|| a.run(&input, &mut out)));
        let took = now.elapsed();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                Stats::inc(&self.stats.analyzer_failures);
                self.stats.analyzer_failures_by.inc(&[a.name()]);
                limit_warn!(self.throttle, "analyzer_error", analyzer = a.name(), id = %self.attack.id, error = %format!("{e:#}"), "analyzer failed");
                self.fail(a.name(), "error", format!("{e:#}"));
            }
            Err(panic) => {
                Stats::inc(&self.stats.analyzer_failures);
                self.stats.analyzer_failures_by.inc(&[a.name()]);
                let msg = panic_message(&panic);
                limit_warn!(self.throttle, "analyzer_panic", analyzer = a.name(), id = %self.attack.id, panic = %msg, "analyzer crashed");
                self.fail(a.name(), "panic", msg);
                return Output::default();
            }
        }
        if took > self.limits.analyzer_budget {
            Stats::inc(&self.stats.analyzer_timeouts);
            limit_warn!(self.throttle, "analyzer_timeout", analyzer = a.name(), id = %self.attack.id, took_ms = took.as_millis() as u64, "analyzer ran past analysis.analyzer_budget");
            self.fail(a.name(), "timeout", format!("took {} ms", took.as_millis()));
        }
        for f in &mut out.findings {
            f.source = item.source.clone();
        }
        for d in &mut out.downloads {
            d.source = item.source.clone();
        }
        Stats::add(&self.stats.findings, out.findings.len() as u64);
        if !out.findings.is_empty() {
            (self.stats.findings_by).add(&[a.name()], out.findings.len() as u64);
        }
        if let Some(v) = item.virtual_index {
            self.virtuals[v]
                .analysis
                .findings
                .extend(out.findings.iter().cloned());
        }
        self.analysis.findings.append(&mut out.findings);
        out
    }

    fn fail(&mut self, analyzer: &'static str, what: &'static str, message: String) {
        self.analysis.failures.push(Failure {
            analyzer,
            what,
            message,
        });
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Analyze `attack` in place; returns the virtual attacks made from it.
pub fn analyze(
    set: &AnalyzerSet,
    limits: &AnalysisConfig,
    stats: &Stats,
    throttle: &Throttle,
    attack: &mut Attack,
) -> Vec<Attack> {
    // Keep what the per-read analyzers found during the session.
    let earlier = std::mem::take(&mut attack.analysis.findings);
    let mut run = Run {
        attack,
        limits,
        stats,
        throttle,
        deadline: Instant::now() + limits.attack_budget,
        analysis: Analysis {
            findings: earlier,
            ..Analysis::default()
        },
        virtuals: Vec::new(),
    };
    let payload = Item {
        // A huge payload is analysed by its start: decoders copy what they
        // decode, and the whole payload is already hashed and recorded.
        data: Arc::new(attack.transcript.payload_prefix(limits.max_input as usize)),
        kind: InputKind::Payload,
        source: Source::Payload,
        depth: 0,
        virtual_index: None,
        download_index: None,
    };
    // Decode: breadth first, decoded copies decoded again up to max_depth. A copy
    // whose bytes are already an input (the same blob found again inside another
    // decoded copy) is not made twice.
    let mut seen = std::collections::HashSet::new();
    seen.insert(content_key(&payload.data));
    let mut items = vec![payload.clone()];
    let mut i = 0;
    while i < items.len() {
        let item = items[i].clone();
        i += 1;
        if item.depth >= limits.max_depth {
            continue;
        }
        for a in &set.decode {
            let out = run.run(a, &item);
            for d in out.decoded {
                if run.virtuals.len() >= MAX_VIRTUAL || d.data.is_empty() {
                    break;
                }
                if !seen.insert(content_key(&d.data)) {
                    continue;
                }
                let v = make_virtual(run.attack, a.name(), d.data);
                let data = Arc::new(v.transcript.payload());
                run.analysis.virtual_attacks.push(v.id);
                items.push(Item {
                    data,
                    kind: InputKind::Decoded,
                    source: Source::Virtual { id: v.id },
                    depth: item.depth + 1,
                    virtual_index: Some(run.virtuals.len()),
                    download_index: None,
                });
                run.virtuals.push(v);
                Stats::inc(&stats.virtual_attacks);
            }
        }
    }
    // Analyze: the payload, the decoded copies, then every download as it arrives.
    let mut queue: std::collections::VecDeque<Item> = items.into();
    while let Some(item) = queue.pop_front() {
        for a in &set.analyze {
            let out = run.run(a, &item);
            for d in out.downloads {
                if run.analysis.downloads.len() >= limits.max_downloads {
                    break;
                }
                Stats::inc(&stats.downloads);
                let index = run.analysis.downloads.len();
                if let (Some(data), Some(h)) = (&d.data, &d.hashes) {
                    if item.depth < limits.max_depth {
                        queue.push_back(Item {
                            data: Arc::clone(data),
                            kind: InputKind::Download,
                            source: Source::Download {
                                sha256: h.sha256.clone(),
                            },
                            depth: item.depth + 1,
                            virtual_index: None,
                            download_index: Some(index),
                        });
                    }
                }
                if let Some(v) = item.virtual_index {
                    run.virtuals[v].analysis.downloads.push(d.clone());
                }
                run.analysis.downloads.push(d);
            }
        }
    }
    // Store: each download with content.
    for index in 0..run.analysis.downloads.len() {
        let d = &run.analysis.downloads[index];
        let (Some(data), Some(h)) = (d.data.clone(), d.hashes.clone()) else {
            continue;
        };
        let item = Item {
            data,
            kind: InputKind::Download,
            source: Source::Download { sha256: h.sha256 },
            depth: 1,
            virtual_index: None,
            download_index: Some(index),
        };
        for a in &set.store {
            let out = run.run(a, &item);
            // A store analyzer reports where it put the file as a download record
            // for the same content.
            for stored in out.downloads {
                if let Some(path) = stored.stored {
                    run.analysis.downloads[index].stored = Some(path);
                }
            }
        }
    }
    for a in &set.post_process {
        run.run(a, &payload);
    }
    // The content is not needed any more.
    for d in &mut run.analysis.downloads {
        d.data = None;
    }
    run.analysis.done = true;
    let Run {
        analysis, virtuals, ..
    } = run;
    attack.analysis = analysis;
    virtuals
}

/// Identifies an input's bytes (length and a 64-bit hash; a collision would only
/// skip one duplicate-looking decoded copy).
fn content_key(data: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    (data.len(), h.finish())
}

/// A virtual attack: the parent's metadata with `data` as its whole payload.
fn make_virtual(parent: &Attack, decoder: &'static str, data: Vec<u8>) -> Attack {
    let mut t = Transcript::default();
    t.push_in(&data, u64::MAX);
    let session = Captured {
        start: parent.start,
        end: parent.end,
        sensor: parent.sensor.clone(),
        monitor: parent.monitor.clone(),
        mode: parent.mode,
        protocol: parent.protocol,
        local: parent.local,
        remote: parent.remote,
        transcript: t,
        responses_sent: 0,
        end_reason: parent.end_reason,
        relay: None,
    };
    Attack {
        id: crate::attack::new_attack_id(chrono::Utc::now()),
        payload_hashes: Hashes::of(&data),
        session,
        transcript_ref: None,
        analysis: Analysis {
            is_virtual: true,
            parent: Some(parent.id),
            decoder: Some(decoder),
            done: true,
            ..Analysis::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Decoded, Download, Stage};
    fn attack(payload: &[u8]) -> Attack {
        Captured::test_session_private(payload).seal()
    }

    /// Decodes `rev:<text>` into `<text>` reversed (a stand-in decoder).
    struct Rev;
    impl Analyzer for Rev {
        fn name(&self) -> &'static str {
            "rev"
        }
        fn stage(&self) -> Stage {
            Stage::Decode
        }
        fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
            if let Some(rest) = input.data.strip_prefix(b"rev:") {
                out.decoded.push(Decoded {
                    offset: 4,
                    length: rest.len() as u64,
                    data: rest.iter().rev().copied().collect(),
                });
            }
            Ok(())
        }
    }

    /// Finds the word `evil`; "downloads" `get:<x>` as the content `<x>`.
    struct Spot;
    impl Analyzer for Spot {
        fn name(&self) -> &'static str {
            "spot"
        }
        fn stage(&self) -> Stage {
            Stage::Analyze
        }
        fn accepts(&self, _: InputKind) -> bool {
            true
        }
        fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
            if let Some(i) = input.data.windows(4).position(|w| w == b"evil") {
                out.finding("spot", "evil", "the word evil").at(i as u64, 4);
            }
            if let Some(rest) = input.data.strip_prefix(b"get:") {
                if input.downloads_left > 0 {
                    let mut d = Download::new("spot", "x://h/f".into(), "h".into(), 1);
                    d.set_data(rest.to_vec());
                    out.downloads.push(d);
                }
            }
            Ok(())
        }
    }

    struct Crash;
    impl Analyzer for Crash {
        fn name(&self) -> &'static str {
            "crash"
        }
        fn stage(&self) -> Stage {
            Stage::Analyze
        }
        fn run(&self, _: &Input, _: &mut Output) -> anyhow::Result<()> {
            panic!("boom");
        }
    }

    struct Fails;
    impl Analyzer for Fails {
        fn name(&self) -> &'static str {
            "fails"
        }
        fn stage(&self) -> Stage {
            Stage::PostProcess
        }
        fn run(&self, _: &Input, _: &mut Output) -> anyhow::Result<()> {
            anyhow::bail!("no luck")
        }
    }

    struct Slow;
    impl Analyzer for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn stage(&self) -> Stage {
            Stage::Analyze
        }
        fn run(&self, _: &Input, _: &mut Output) -> anyhow::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(60));
            Ok(())
        }
    }

    fn set(decode: Vec<Arc<dyn Analyzer>>, analyze: Vec<Arc<dyn Analyzer>>) -> AnalyzerSet {
        AnalyzerSet {
            decode,
            analyze,
            post_process: vec![Arc::new(Fails)],
            ..AnalyzerSet::default()
        }
    }

    fn run(set: &AnalyzerSet, limits: &AnalysisConfig, a: &mut Attack) -> Vec<Attack> {
        analyze(set, limits, &Stats::default(), &Throttle::default(), a)
    }

    #[test]
    fn virtual_attacks_findings_downloads_and_failures() {
        let s = set(vec![Arc::new(Rev)], vec![Arc::new(Crash), Arc::new(Spot)]);
        // Decoded once: "rev:live:teg"; twice: "get:evil".
        let mut a = attack(b"rev:get:evil:ver");
        let limits = AnalysisConfig::default();
        let v = run(&s, &limits, &mut a);
        assert_eq!(v.len(), 2, "decoded twice (depth 2 < max_depth 3)");
        assert!(v
            .iter()
            .all(|x| x.analysis.is_virtual && x.analysis.parent == Some(a.id)));
        assert_eq!(v[0].transcript.payload(), b"rev:live:teg");
        assert_eq!(v[1].transcript.payload(), b"get:evil");
        assert_eq!(v[1].analysis.decoder, Some("rev"));
        assert_eq!(a.analysis.virtual_attacks, vec![v[0].id, v[1].id]);
        // The download found on the second virtual attack: its content "evil" is
        // analysed again and found, with the download as its source.
        assert_eq!(a.analysis.downloads.len(), 1);
        let d = &a.analysis.downloads[0];
        assert_eq!(d.source, Source::Virtual { id: v[1].id });
        assert!(d.data.is_none(), "content dropped after analysis");
        let sha = d.hashes.as_ref().unwrap().sha256.clone();
        let evil: Vec<_> = a
            .analysis
            .findings
            .iter()
            .filter(|f| f.kind == "evil")
            .collect();
        assert_eq!(evil.len(), 3, "{:?}", a.analysis.findings);
        assert_eq!(evil[0].source, Source::Payload);
        assert_eq!(evil[0].offset, Some(8));
        assert_eq!(evil[1].source, Source::Virtual { id: v[1].id });
        assert_eq!(evil[2].source, Source::Download { sha256: sha });
        // The virtual attack carries what was found on its own payload.
        assert_eq!(v[1].analysis.findings.len(), 1);
        assert_eq!(v[1].analysis.downloads.len(), 1);
        assert!(v[0].analysis.findings.is_empty());
        // The crash and the error are recorded, and the attack is complete.
        let what: Vec<_> = a
            .analysis
            .failures
            .iter()
            .map(|f| (f.analyzer, f.what))
            .collect();
        assert!(what.contains(&("crash", "panic")), "{what:?}");
        assert!(what.contains(&("fails", "error")), "{what:?}");
        assert!(a.analysis.done);
        assert!(a.analysis.runs >= 7);
    }

    #[test]
    fn depth_and_download_limits() {
        let s = set(vec![Arc::new(Rev)], vec![Arc::new(Spot)]);
        let limits = AnalysisConfig {
            max_depth: 1,
            max_downloads: 0,
            ..AnalysisConfig::default()
        };
        let mut a = attack(b"rev:get:evil:ver");
        let v = run(&s, &limits, &mut a);
        assert_eq!(v.len(), 1, "only one level of decoding");
        assert!(a.analysis.downloads.is_empty());
    }

    #[test]
    fn budgets_time_out_and_skip() {
        let s = set(vec![], vec![Arc::new(Slow), Arc::new(Spot)]);
        let limits = AnalysisConfig {
            analyzer_budget: std::time::Duration::from_millis(20),
            attack_budget: std::time::Duration::from_millis(40),
            ..AnalysisConfig::default()
        };
        let mut a = attack(b"evil");
        run(&s, &limits, &mut a);
        let what: Vec<_> = a
            .analysis
            .failures
            .iter()
            .map(|f| (f.analyzer, f.what))
            .collect();
        assert!(what.contains(&("slow", "timeout")), "{what:?}");
        assert!(what.contains(&("spot", "skipped")), "{what:?}");
        assert!(a.analysis.findings.is_empty());
    }

    #[test]
    fn the_pool_hands_every_attack_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let done: Done = Arc::new(move |a: Analyzed| {
            tx.lock()
                .unwrap()
                .send((a.attack, a.virtuals.len()))
                .unwrap();
        });
        let limits = AnalysisConfig {
            workers: 2,
            queue_size: 4,
            // Not niced: on a loaded test machine nice-19 workers can wait for
            // seconds, and this test is about hand-over, not priority.
            nice: 0,
            idle_priority: false,
            busy_pause: std::time::Duration::ZERO,
            ..AnalysisConfig::default()
        };
        let p = Pipeline::start(
            &limits,
            set(vec![Arc::new(Rev)], vec![Arc::new(Crash), Arc::new(Spot)]),
            Arc::new(Stats::default()),
            Arc::new(Throttle::default()),
            done,
        )
        .unwrap();
        let mut sent = 0;
        for i in 0..4 {
            let a = attack(format!("rev:{i} evil").as_bytes());
            if p.try_submit(Box::new(a), 1).is_ok() {
                sent += 1;
            }
        }
        assert!(sent >= 1);
        let mut got = Vec::new();
        for _ in 0..sent {
            got.push(rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap());
        }
        assert!(got.iter().all(|(a, n)| a.analysis.done && *n == 1));
        p.begin_close();
        let until = Instant::now() + std::time::Duration::from_secs(30);
        while !p.finished() && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(p.finished());
        p.join();
        assert!(
            p.try_submit(Box::new(attack(b"late")), 1).is_err(),
            "closed"
        );
    }

    /// Decodes `dup:<x>` into `<x>` twice (two identical copies).
    struct Dup;
    impl Analyzer for Dup {
        fn name(&self) -> &'static str {
            "dup"
        }
        fn stage(&self) -> Stage {
            Stage::Decode
        }
        fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
            if let Some(rest) = input.data.strip_prefix(b"dup:") {
                for _ in 0..2 {
                    out.decoded.push(Decoded {
                        offset: 4,
                        length: rest.len() as u64,
                        data: rest.to_vec(),
                    });
                }
            }
            Ok(())
        }
    }

    #[test]
    fn identical_decoded_copies_are_made_once() {
        let s = set(vec![Arc::new(Dup)], vec![]);
        let mut a = attack(b"dup:dup:x");
        let v = run(&s, &AnalysisConfig::default(), &mut a);
        let payloads: Vec<_> = v.iter().map(|x| x.transcript.payload()).collect();
        assert_eq!(payloads, vec![b"dup:x".to_vec(), b"x".to_vec()]);
    }
}
