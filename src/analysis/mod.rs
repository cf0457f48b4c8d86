//! Analysis: what happens to a recorded attack after capture and before the
//! outputs. Analyzers are small types implementing [`Analyzer`], registered in
//! [`registry`], enabled and configured per analyzer in `[analyzer.<name>]`.
//!
//! Stages, in order: per-read (cheap, on each chunk as it arrives), decode (make
//! decoded copies of the payload: *virtual attacks*, which run through decode again
//! up to `analysis.max_depth`, and through the later stages), analyze (findings and
//! downloads; a downloaded file runs through analyze and the later stages too),
//! store (keep downloaded files) and post-process. [`pipeline`] runs them off the
//! capture path, on a pool of worker threads behind a bounded queue, within a time
//! budget per analyzer and per attack; a failing or slow analyzer is logged and
//! counted, and the attack still reaches every output.

pub mod base64;
pub mod clamav;
pub mod decoding;
pub mod download;
pub mod exe;
pub mod fuzzy;
pub mod http_body;
pub mod percent;
pub mod pipeline;
pub mod protocol;
pub mod record;
pub mod registry;
pub mod selftest;
pub mod shellcode;
pub mod utf16;
pub mod vnc;
pub mod yara;

pub use pipeline::Pipeline;
pub use record::{Analysis, Download, Finding, Source};

use crate::attack::Attack;
use std::time::Instant;

/// When an analyzer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// On every chunk read from the attacker, in the session (must be cheap).
    PerRead,
    /// Decoders: produce decoded copies of the payload (virtual attacks).
    Decode,
    /// Classifiers and downloaders: findings and downloads.
    Analyze,
    /// Keep what was found (downloaded files).
    Store,
    /// Last look at the whole attack.
    PostProcess,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PerRead => "per_read",
            Stage::Decode => "decode",
            Stage::Analyze => "analyze",
            Stage::Store => "store",
            Stage::PostProcess => "post_process",
        }
    }
}

/// What kind of bytes an analyzer is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// The attack's payload (everything the attacker sent).
    Payload,
    /// A decoded copy made by a decoder (a virtual attack's payload).
    Decoded,
    /// A downloaded file.
    Download,
    /// One chunk as it arrives (per-read stage only).
    Chunk,
}

/// One thing to analyze.
pub struct Input<'a> {
    /// The bytes.
    pub data: &'a [u8],
    pub kind: InputKind,
    /// The real attack these bytes belong to (addresses, ports, protocol, transcript).
    pub attack: &'a Attack,
    /// 0 for the payload; one more for each decoding or download step.
    pub depth: u32,
    /// The analyzer should give up after this (downloads use it for their timeouts).
    pub deadline: Instant,
    /// For a downloaded file: its download record.
    pub download: Option<&'a Download>,
    /// How many more downloads this attack may make (`analysis.max_downloads`).
    pub downloads_left: usize,
}

/// A decoded copy of an input, made by a decoder.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Where in the input the decoded part starts.
    pub offset: u64,
    /// How long the encoded part is.
    pub length: u64,
    /// The decoded bytes.
    pub data: Vec<u8>,
}

/// What one analyzer run produced.
#[derive(Debug, Default)]
pub struct Output {
    pub findings: Vec<Finding>,
    /// Decoded copies (decode stage): each becomes a virtual attack.
    pub decoded: Vec<Decoded>,
    /// Files fetched (downloaders), with their content in `Download::data`.
    pub downloads: Vec<Download>,
}

impl Output {
    /// Add a finding of `analyzer`.
    pub fn finding(
        &mut self,
        analyzer: &'static str,
        kind: &str,
        detail: impl Into<String>,
    ) -> &mut Finding {
        self.findings.push(Finding::new(analyzer, kind, detail));
        self.findings.last_mut().unwrap()
    }
}

/// One analyzer. Implementations live in their own file and are listed in
/// [`registry::REGISTRY`].
pub trait Analyzer: Send + Sync + 'static {
    /// Name used in the config (`[analyzer.<name>]`), events and logs.
    fn name(&self) -> &'static str;
    /// The stage it runs in.
    fn stage(&self) -> Stage;
    /// Whether it wants this kind of input (default: payloads and decoded copies).
    fn accepts(&self, kind: InputKind) -> bool {
        matches!(kind, InputKind::Payload | InputKind::Decoded)
    }
    /// Look at `input` and put what it finds into `out`. An error is logged and
    /// counted; it never loses the attack.
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()>;

    /// Per-read stage only: look at one chunk from the attacker as it arrives
    /// (`offset`: bytes received before it). Runs in the session, so it must be
    /// cheap and bounded.
    fn on_chunk(&self, offset: u64, chunk: &[u8], findings: &mut Vec<Finding>) {
        let _ = (offset, chunk, findings);
    }

    /// Per-read stage only: look at the session's transcript once, when the
    /// recorder seals it, for every attack (also one that then skips the analysis
    /// queue). For what needs no action during the session: it runs on the
    /// recorder thread, so nothing is allocated on capture's threads (memory they
    /// allocate and other threads free costs capture more than the work itself;
    /// see docs/benchmarks.md).
    fn on_seal(&self, transcript: &crate::attack::Transcript, findings: &mut Vec<Finding>) {
        let _ = (transcript, findings);
    }
}
