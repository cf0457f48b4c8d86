//! The `store` analyzer: keeps downloaded files under `<data_dir>/downloads/`,
//! content-addressed by SHA-256 (`downloads/ab/abcdef…`), each written once, within
//! the disk quota of `downloads.quota_bytes` and `downloads.quota_files`. No name
//! the attacker chose ever reaches the disk.
//!
//! When the quota is full, new files are not stored (`stored` stays null, a warning
//! is logged, the download is still reported with its hashes); nothing already
//! stored is removed. The usage is counted once, by reading the directory, when the
//! first file is stored, and kept up to date from then on (process-wide).

use super::Settings;
use crate::analysis::registry::{self, Options, Registration};
use crate::analysis::{Analyzer, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Directory under the data directory.
pub const DIR: &str = "downloads";

/// Where the file with this SHA-256 is stored, relative to the data directory.
pub fn relative_path(sha256: &str) -> String {
    format!("{DIR}/{}/{sha256}", &sha256[..2])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    pub enabled: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { enabled: true }
    }
}

impl Options for StoreOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: "store",
        stage: Stage::Store,
        about: "keeps downloaded files under <data_dir>/downloads, by SHA-256, within a quota",
        options: registry::options::<StoreOptions>,
        build: |table, config| {
            let settings = Settings::from_config(config)?;
            registry::build_with(table, |_: StoreOptions| Ok(Store { settings }))
        },
    }
}

pub struct Store {
    settings: Arc<Settings>,
}

/// Bytes and files under the downloads directory, per directory.
#[derive(Default)]
struct Usage {
    counted: Option<(PathBuf, u64, u64)>,
}

fn usage() -> &'static Mutex<Usage> {
    static U: OnceLock<Mutex<Usage>> = OnceLock::new();
    U.get_or_init(Mutex::default)
}

/// Bytes and files under `dir` (the content-addressed layout: two levels).
fn measure(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let Ok(tops) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for top in tops.flatten() {
        let Ok(inner) = std::fs::read_dir(top.path()) else {
            continue;
        };
        for f in inner.flatten() {
            if let Ok(m) = f.metadata() {
                if m.is_file() {
                    bytes += m.len();
                    files += 1;
                }
            }
        }
    }
    (bytes, files)
}

impl Analyzer for Store {
    fn name(&self) -> &'static str {
        "store"
    }
    fn stage(&self) -> Stage {
        Stage::Store
    }
    fn accepts(&self, kind: InputKind) -> bool {
        kind == InputKind::Download
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let Some(d) = input.download else {
            return Ok(());
        };
        let Some(h) = &d.hashes else {
            return Ok(());
        };
        if let Some(rel) = self.store(&h.sha256, input.data)? {
            let mut record = d.clone();
            record.data = None;
            record.stored = Some(rel);
            out.downloads.push(record);
        }
        Ok(())
    }
}

impl Store {
    /// Write `data` as `sha256` unless it is there; None when the quota is full.
    fn store(&self, sha256: &str, data: &[u8]) -> anyhow::Result<Option<String>> {
        anyhow::ensure!(
            sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a sha256"
        );
        let rel = relative_path(sha256);
        let root = self.settings.data_dir.join(DIR);
        let path = self.settings.data_dir.join(&rel);
        let mut u = usage().lock().unwrap();
        if path.is_file() {
            return Ok(Some(rel));
        }
        let (bytes, files) = match &u.counted {
            Some((dir, b, f)) if *dir == root => (*b, *f),
            _ => {
                let (b, f) = measure(&root);
                (b, f)
            }
        };
        let cfg = &self.settings.cfg;
        if files + 1 > cfg.quota_files || bytes + data.len() as u64 > cfg.quota_bytes {
            u.counted = Some((root, bytes, files));
            tracing::warn!(
                sha256,
                used_bytes = bytes,
                used_files = files,
                "downloads: quota full (downloads.quota_bytes / quota_files), file not stored"
            );
            return Ok(None);
        }
        write_once(&path, data)?;
        u.counted = Some((root, bytes + data.len() as u64, files + 1));
        Ok(Some(rel))
    }
}

/// Write to a temporary name in the same directory, then rename: a reader never
/// sees half a file, and a crash leaves at most a `.tmp` file.
fn write_once(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("two levels");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Hashes;
    use crate::config::DownloadsConfig;

    fn store(dir: &Path, quota_files: u64) -> Store {
        Store {
            settings: Arc::new(Settings {
                cfg: DownloadsConfig {
                    quota_files,
                    quota_bytes: 100,
                    ..DownloadsConfig::default()
                },
                allow: vec![],
                data_dir: dir.to_path_buf(),
            }),
        }
    }

    #[test]
    fn content_addressed_once_within_quota() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 2);
        let a = Hashes::of(b"one").sha256;
        let rel = s.store(&a, b"one").unwrap().unwrap();
        assert_eq!(rel, format!("downloads/{}/{a}", &a[..2]));
        assert_eq!(std::fs::read(dir.path().join(&rel)).unwrap(), b"one");
        // Same content again: same path, not counted twice.
        assert_eq!(s.store(&a, b"one").unwrap().unwrap(), rel);
        let b = Hashes::of(b"two").sha256;
        assert!(s.store(&b, b"two").unwrap().is_some());
        // Two files: the quota is full.
        let c = Hashes::of(b"three").sha256;
        assert!(s.store(&c, b"three").unwrap().is_none());
        assert!(!dir.path().join(relative_path(&c)).exists());
        // Byte quota: 100 bytes.
        let dir2 = tempfile::tempdir().unwrap();
        let s = store(dir2.path(), 10);
        let big = vec![7u8; 101];
        assert!(s.store(&Hashes::of(&big).sha256, &big).unwrap().is_none());
        assert!(s.store("../../etc/passwd", b"x").is_err());
    }
}
