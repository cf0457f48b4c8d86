//! Transcript files: each session in full, both directions with timestamps, one JSON
//! document per attack (`docs/transcript.schema.json`), kept within a disk quota.
//!
//! Two layouts (`output.transcripts.layout`):
//! - `segments` (default): documents are appended, one per line, to segment files
//!   `<dir>/<YYYY-MM-DD>/<segment id>.jsonl` that roll over at `segment_bytes` and at
//!   midnight UTC; the event gives the file, byte offset and length. Appending costs
//!   one write per attack where creating a file costs an inode, which is what keeps
//!   capture rates up under a flood.
//! - `per_attack`: one file `<dir>/<YYYY-MM-DD>/<attack id>.json` per attack.
//!
//! Every name is a UUIDv7 made by this process (a segment's when it is opened, an
//! attack's id), so names never collide and sort oldest first, which is the order
//! the quota removes whole files in. The file being appended to is never removed.

use crate::attack::Attack;
use crate::config::{Config, TranscriptLayout};
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use anyhow::Context as _;
use base64::Engine as _;
use serde::Serialize;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one attack's transcript was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptRef {
    pub path: PathBuf,
    /// Byte offset of the document in the file (0 for `per_attack`).
    pub offset: u64,
    /// Length of the document in bytes (without the newline).
    pub length: u64,
}

/// The segment being appended to.
struct Segment {
    path: PathBuf,
    file: File,
    size: u64,
    day: String,
}

/// Writes transcripts and keeps them within the quota.
pub struct TranscriptStore {
    dir: PathBuf,
    layout: TranscriptLayout,
    segment_bytes: u64,
    quota_bytes: u64,
    quota_files: u64,
    /// Every closed file kept, oldest first, with its size.
    files: VecDeque<(PathBuf, u64)>,
    /// Bytes of all files kept, the open segment included.
    total_bytes: u64,
    segment: Option<Segment>,
    /// The day directory known to exist.
    day_dir: Option<(String, PathBuf)>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
}

impl TranscriptStore {
    /// Open the store, counting the files already there against the quota.
    pub fn open(
        config: &Config,
        stats: Arc<Stats>,
        throttle: Arc<Throttle>,
    ) -> anyhow::Result<TranscriptStore> {
        let c = &config.output.transcripts;
        let dir = config.data_path(&c.dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = Vec::new();
        scan(&dir, &mut files).with_context(|| format!("reading {}", dir.display()))?;
        files.sort();
        let total_bytes = files.iter().map(|(_, s)| s).sum();
        let mut store = TranscriptStore {
            dir,
            layout: c.layout,
            segment_bytes: c.segment_bytes,
            quota_bytes: c.quota_bytes,
            quota_files: c.quota_files,
            files: files.into(),
            total_bytes,
            segment: None,
            day_dir: None,
            stats,
            throttle,
        };
        store.enforce_quota();
        Ok(store)
    }

    /// Write the transcript of `attack`; returns where.
    pub fn write(&mut self, attack: &Attack) -> anyhow::Result<TranscriptRef> {
        self.write_rendered(attack, render(attack)?)
    }

    /// Write `doc`, the transcript document of `attack` made by [`render`].
    pub fn write_rendered(
        &mut self,
        attack: &Attack,
        mut doc: Vec<u8>,
    ) -> anyhow::Result<TranscriptRef> {
        let length = doc.len() as u64;
        let day = attack.end.format("%Y-%m-%d").to_string();
        let written = match self.layout {
            TranscriptLayout::PerAttack => {
                let path = self.day_dir(&day)?.join(format!("{}.json", attack.id));
                let mut f = File::options().write(true).create_new(true).open(&path)?;
                f.write_all(&doc)?;
                self.files.push_back((path.clone(), length));
                self.total_bytes += length;
                TranscriptRef {
                    path,
                    offset: 0,
                    length,
                }
            }
            TranscriptLayout::Segments => {
                doc.push(b'\n');
                let seg = self.segment_for(&day, doc.len() as u64)?;
                let offset = seg.size;
                // One write per document: a reader never sees half of it once the
                // event that points at it is out.
                let result = seg.file.write_all(&doc);
                if result.is_err() {
                    // Where the failed write stopped is unknown: start a new segment.
                    self.close_segment();
                    result?;
                }
                let seg = self.segment.as_mut().expect("segment open");
                seg.size += doc.len() as u64;
                self.total_bytes += doc.len() as u64;
                TranscriptRef {
                    path: seg.path.clone(),
                    offset,
                    length,
                }
            }
        };
        self.enforce_quota();
        Ok(written)
    }

    /// The segment to append `len` bytes to, rolling over when it is full or the day
    /// changed.
    fn segment_for(&mut self, day: &str, len: u64) -> anyhow::Result<&mut Segment> {
        let roll = match &self.segment {
            Some(s) => s.day != day || (s.size > 0 && s.size + len > self.segment_bytes),
            None => true,
        };
        if roll {
            self.close_segment();
            let name = format!("{}.jsonl", uuid::Uuid::now_v7());
            let path = self.day_dir(day)?.join(name);
            let file = File::options().append(true).create_new(true).open(&path)?;
            self.segment = Some(Segment {
                path,
                file,
                size: 0,
                day: day.to_string(),
            });
        }
        Ok(self.segment.as_mut().expect("segment open"))
    }

    /// Close the open segment: it becomes an ordinary file the quota may remove.
    fn close_segment(&mut self) {
        if let Some(s) = self.segment.take() {
            self.files.push_back((s.path, s.size));
        }
    }

    /// The directory of `day`, created once.
    fn day_dir(&mut self, day: &str) -> anyhow::Result<PathBuf> {
        if let Some((d, p)) = &self.day_dir {
            if d == day {
                return Ok(p.clone());
            }
        }
        let p = self.dir.join(day);
        std::fs::create_dir_all(&p)?;
        self.day_dir = Some((day.to_string(), p.clone()));
        Ok(p)
    }

    fn enforce_quota(&mut self) {
        let open = usize::from(self.segment.is_some());
        // The newest per-attack file always stays: the event about to be written
        // points at it. The open segment is never in `files`.
        let keep = 1 - open;
        while (self.total_bytes > self.quota_bytes
            || (self.files.len() + open) as u64 > self.quota_files)
            && self.files.len() > keep
        {
            let Some((path, size)) = self.files.pop_front() else {
                break;
            };
            self.total_bytes -= size;
            Stats::inc(&self.stats.quota_removed);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), error = %e, "removing old transcript");
            }
            limit_warn!(self.throttle, "transcript_quota", path = %path.display(), "transcript quota reached: removed the oldest transcript file");
            // Remove the day's directory once its last file is gone.
            if let Some(parent) = path.parent() {
                let still_used = self.files.iter().any(|(p, _)| p.parent() == Some(parent))
                    || self
                        .segment
                        .as_ref()
                        .is_some_and(|s| s.path.parent() == Some(parent))
                    || self.day_dir.as_ref().is_some_and(|(_, d)| d == parent);
                if !still_used && parent != self.dir {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

/// Collect `<dir>/<day>/<file>` with sizes.
fn scan(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    for day in std::fs::read_dir(dir)? {
        let day = day?;
        if !day.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(day.path())? {
            let f = f?;
            let meta = f.metadata()?;
            if meta.is_file() {
                out.push((f.path(), meta.len()));
            }
        }
    }
    Ok(())
}

/// The transcript document of one attack.
#[derive(Serialize)]
struct TranscriptDoc<'a> {
    attack_id: String,
    sensor: &'a str,
    protocol: &'static str,
    source: String,
    destination: String,
    start: String,
    end: String,
    encoding: &'static str,
    read_limit_reached: bool,
    chunks: Vec<ChunkDoc>,
}

#[derive(Serialize)]
struct ChunkDoc {
    time: String,
    direction: crate::attack::Direction,
    length: usize,
    data: String,
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl<'a> TranscriptDoc<'a> {
    fn of(a: &'a Attack) -> TranscriptDoc<'a> {
        let b64 = base64::engine::general_purpose::STANDARD;
        TranscriptDoc {
            attack_id: a.id.to_string(),
            sensor: &a.sensor,
            protocol: a.protocol.as_str(),
            source: a.remote.to_string(),
            destination: a.local.to_string(),
            start: rfc3339(a.start),
            end: rfc3339(a.end),
            encoding: "base64",
            read_limit_reached: a.transcript.truncated,
            chunks: a
                .transcript
                .chunks
                .iter()
                .map(|c| ChunkDoc {
                    time: rfc3339(c.at),
                    direction: c.direction,
                    length: c.data.len(),
                    data: b64.encode(&c.data),
                })
                .collect(),
        }
    }
}

/// The transcript document of one attack, as JSON (no trailing newline).
pub fn render(a: &Attack) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&TranscriptDoc::of(a))?)
}

/// The transcript document of one attack, as a JSON value.
pub fn transcript_json(a: &Attack) -> serde_json::Value {
    serde_json::to_value(TranscriptDoc::of(a)).expect("transcript serializes")
}

/// Read one transcript document back from where the store put it.
pub fn read_transcript(r: &TranscriptRef) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(&r.path).with_context(|| format!("opening {}", r.path.display()))?;
    f.seek(SeekFrom::Start(r.offset))?;
    let mut buf = vec![0u8; r.length as usize];
    f.read_exact(&mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}
