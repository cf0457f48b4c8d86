//! What analysis adds to an attack: findings, downloads, the virtual attacks made
//! from it (or its parent, for a virtual attack), and how the analyzers fared.

use crate::attack::Hashes;
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

/// What a finding or a download was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The attack's own payload.
    Payload,
    /// The payload of a virtual attack (a decoded copy).
    Virtual { id: Uuid },
    /// A downloaded file.
    Download { sha256: String },
}

/// One thing an analyzer found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The analyzer that found it.
    pub analyzer: &'static str,
    /// What kind of thing (analyzer-specific, e.g. `base64`, `pe`, `yara`).
    pub kind: String,
    /// A short human-readable description.
    pub detail: String,
    /// Where in the input, if it has a place.
    pub offset: Option<u64>,
    pub length: Option<u64>,
    /// Where the input came from (filled by the pipeline).
    pub source: Source,
    /// Analyzer-specific fields (rule tags, scores, architecture, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Finding {
    pub fn new(analyzer: &'static str, kind: &str, detail: impl Into<String>) -> Finding {
        Finding {
            analyzer,
            kind: kind.to_string(),
            detail: detail.into(),
            offset: None,
            length: None,
            source: Source::Payload,
            meta: serde_json::Map::new(),
        }
    }

    /// Set where in the input it is.
    pub fn at(&mut self, offset: u64, length: u64) -> &mut Finding {
        self.offset = Some(offset);
        self.length = Some(length);
        self
    }

    /// Add an analyzer-specific field.
    pub fn meta(&mut self, key: &str, value: impl Into<serde_json::Value>) -> &mut Finding {
        self.meta.insert(key.to_string(), value.into());
        self
    }
}

/// One file a downloader fetched (or tried to).
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    /// The downloader (`ftp`, `tftp`, `http`, ...).
    pub analyzer: &'static str,
    /// The URL as honeytrap understood it (`ftp://user@host:21/file`, ...).
    pub url: String,
    /// Host and port contacted (after `replace_private_ips`, if that applied).
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Bytes received (at most the size cap).
    pub size: u64,
    /// True when the file was larger than the size cap and was cut there.
    pub truncated: bool,
    /// Digests of the content, when something was received.
    pub hashes: Option<Hashes>,
    /// Where the content is stored, relative to the data directory.
    pub stored: Option<String>,
    /// Fetched earlier (same URL within the dedup window): this refers to that file.
    pub cached: bool,
    /// Why nothing (or not everything) was fetched.
    pub error: Option<String>,
    /// What the input that carried the instruction was.
    pub source: Source,
    /// The content, for the later stages (not serialized; dropped after analysis).
    #[serde(skip)]
    pub data: Option<Arc<Vec<u8>>>,
}

impl Download {
    /// A download of `url` from `host:port` by `analyzer`, not yet fetched.
    pub fn new(analyzer: &'static str, url: String, host: String, port: u16) -> Download {
        Download {
            analyzer,
            url,
            host,
            port,
            user: None,
            password: None,
            size: 0,
            truncated: false,
            hashes: None,
            stored: None,
            cached: false,
            error: None,
            source: Source::Payload,
            data: None,
        }
    }

    /// Set the content: size and digests.
    pub fn set_data(&mut self, data: Vec<u8>) {
        self.size = data.len() as u64;
        self.hashes = Some(Hashes::of(&data));
        self.data = Some(Arc::new(data));
    }
}

/// An analyzer that failed or ran out of time on an input.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub analyzer: &'static str,
    /// `error`, `panic`, `timeout` or `skipped` (the attack's budget was used up).
    pub what: &'static str,
    pub message: String,
}

/// Everything analysis attached to one attack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// True for a virtual attack (a decoded copy of its parent's payload).
    #[serde(skip)]
    pub is_virtual: bool,
    /// The real attack a virtual attack was decoded from.
    #[serde(skip)]
    pub parent: Option<Uuid>,
    /// The decoder that made a virtual attack.
    #[serde(skip)]
    pub decoder: Option<&'static str>,
    /// Findings on the payload, on virtual attacks made from it and on downloads.
    pub findings: Vec<Finding>,
    /// Downloads its instructions led to.
    pub downloads: Vec<Download>,
    /// Ids of the virtual attacks made from it.
    pub virtual_attacks: Vec<Uuid>,
    /// Analyzer runs.
    pub runs: u32,
    /// Analyzers that failed, timed out or were skipped.
    pub failures: Vec<Failure>,
    /// False when the attack went to the outputs without analysis (analysis off,
    /// queue full, shutting down).
    pub done: bool,
}
