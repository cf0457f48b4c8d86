//! Transcript files: the whole session, both directions with timestamps, one JSON
//! file per attack at `<dir>/<YYYY-MM-DD>/<attack id>.json`. The attack id is a
//! UUIDv7, so names never collide and sort oldest first, which is the order the
//! disk quota removes them in.

use crate::attack::Attack;
use crate::config::Config;
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use anyhow::Context as _;
use base64::Engine as _;
use serde_json::json;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes transcript files and keeps them within the quota.
pub struct TranscriptStore {
    dir: PathBuf,
    quota_bytes: u64,
    quota_files: u64,
    /// Every file kept, oldest first, with its size.
    files: VecDeque<(PathBuf, u64)>,
    total_bytes: u64,
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
            quota_bytes: c.quota_bytes,
            quota_files: c.quota_files,
            files: files.into(),
            total_bytes,
            stats,
            throttle,
        };
        store.enforce_quota();
        Ok(store)
    }

    /// Write the transcript of `attack`; returns its path.
    pub fn write(&mut self, attack: &Attack) -> anyhow::Result<PathBuf> {
        let day = attack.start.format("%Y-%m-%d").to_string();
        let dir = self.dir.join(day);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", attack.id));
        let body = serde_json::to_vec(&transcript_json(attack))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(&body)?;
        self.files.push_back((path.clone(), body.len() as u64));
        self.total_bytes += body.len() as u64;
        self.enforce_quota();
        Ok(path)
    }

    fn enforce_quota(&mut self) {
        // The newest file always stays: the event just written points at it.
        while (self.total_bytes > self.quota_bytes || self.files.len() as u64 > self.quota_files)
            && self.files.len() > 1
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
                let next_in_same_dir = self
                    .files
                    .front()
                    .is_some_and(|(p, _)| p.parent() == Some(parent));
                if !next_in_same_dir && parent != self.dir {
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
pub fn transcript_json(a: &Attack) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let chunks: Vec<_> = a
        .transcript
        .chunks
        .iter()
        .map(|c| {
            json!({
                "time": c.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "direction": c.direction,
                "length": c.data.len(),
                "data": b64.encode(&c.data),
            })
        })
        .collect();
    json!({
        "attack_id": a.id.to_string(),
        "sensor": a.sensor,
        "protocol": a.protocol.as_str(),
        "source": a.remote.to_string(),
        "destination": a.local.to_string(),
        "start": a.start.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "end": a.end.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "encoding": "base64",
        "read_limit_reached": a.transcript.truncated,
        "chunks": chunks,
    })
}
