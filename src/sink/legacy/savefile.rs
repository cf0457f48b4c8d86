//! The original's `SaveFile` plugin: each attack string as a file
//! `<attacks_dir>/from_port_<port>-<proto>_<n>_<YYYY-MM-DD>` (local date), and each
//! downloaded file as `<downloads_dir>/<md5>-<filename>` (or `<md5>` without a
//! name), mode 0644, never overwriting an existing file.
//!
//! `<n>` was the id of the process that handled the connection in the original
//! (one process per connection); here it counts up from our process id, skipping
//! numbers already taken in the directory. Download files are hard links to the
//! copy the `store` analyzer keeps (a copy across file systems), so they cost no
//! second copy of the data; a download the store did not keep is not saved. The
//! file name from the URL is sanitised (letters, digits, `.`, `-`, `_`, `+`). Both
//! directories together are bounded by `quota_bytes` / `quota_files`: past them
//! nothing new is written (an error per attack, counted and logged throttled).

use super::{proto_name, url_filename};
use crate::analysis::Download;
use crate::attack::Attack;
use crate::config::Config;
use crate::event::Rendered;
use crate::sink::Sink;
use anyhow::{bail, Context as _};
use chrono::Local;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Longest file name part taken from a URL.
const MAX_NAME: usize = 128;

pub struct SaveFileSink {
    attacks_dir: PathBuf,
    downloads_dir: PathBuf,
    data_dir: PathBuf,
    quota_bytes: u64,
    quota_files: u64,
    used_bytes: u64,
    used_files: u64,
    /// The `<n>` to try next for an attack file.
    next: u64,
}

impl SaveFileSink {
    /// Create both directories and count what they hold.
    pub fn open(config: &Config) -> anyhow::Result<SaveFileSink> {
        let c = &config.output.savefile;
        let attacks_dir = config.data_path(&c.attacks_dir);
        let downloads_dir = config.data_path(&c.downloads_dir);
        let mut used = (0, 0);
        for dir in [&attacks_dir, &downloads_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for dir in dedup([&attacks_dir, &downloads_dir]) {
            let (b, f) = measure(dir);
            used = (used.0 + b, used.1 + f);
        }
        Ok(SaveFileSink {
            attacks_dir,
            downloads_dir,
            data_dir: config.sensor.data_dir.clone(),
            quota_bytes: c.quota_bytes,
            quota_files: c.quota_files,
            used_bytes: used.0,
            used_files: used.1,
            next: std::process::id().into(),
        })
    }

    /// Take `bytes` and one file of the quota, or say why not.
    fn reserve(&mut self, bytes: u64, what: &str) -> anyhow::Result<()> {
        if self.used_files + 1 > self.quota_files || self.used_bytes + bytes > self.quota_bytes {
            bail!(
                "SaveFile quota full (output.savefile.quota_bytes / quota_files): {what} not saved"
            );
        }
        self.used_files += 1;
        self.used_bytes += bytes;
        Ok(())
    }

    fn release(&mut self, bytes: u64) {
        self.used_files -= 1;
        self.used_bytes -= bytes;
    }

    /// The attack string, under the first free `<n>`.
    fn save_attack(&mut self, a: &Attack, payload: &[u8]) -> anyhow::Result<PathBuf> {
        let len = payload.len() as u64;
        self.reserve(len, "attack string")?;
        let date = a.end.with_timezone(&Local).format("%Y-%m-%d");
        let proto = proto_name(a.protocol);
        // Every file in the directory may hold a number: one more try than files.
        for _ in 0..=self.quota_files {
            let n = self.next;
            self.next += 1;
            let name = format!("from_port_{}-{proto}_{n}_{date}", a.local.port());
            let path = self.attacks_dir.join(name);
            match create_new(&path) {
                Ok(mut f) => {
                    let written = f.write_all(payload);
                    if let Err(e) = written {
                        let _ = std::fs::remove_file(&path);
                        self.release(len);
                        return Err(e).with_context(|| format!("writing {}", path.display()));
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    self.release(len);
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        self.release(len);
        bail!("no free attack file name in {}", self.attacks_dir.display())
    }

    /// One download, linked (or copied) from the store's copy.
    fn save_download(&mut self, d: &Download) -> anyhow::Result<()> {
        let (Some(h), Some(stored)) = (&d.hashes, &d.stored) else {
            return Ok(());
        };
        if d.size == 0 {
            return Ok(());
        }
        let target = self.downloads_dir.join(download_name(&h.md5, &d.url));
        if target.symlink_metadata().is_ok() {
            // Saved before (the original's O_EXCL failed the same way).
            return Ok(());
        }
        self.reserve(d.size, "download")?;
        let source = self.data_dir.join(stored);
        let done = std::fs::hard_link(&source, &target).or_else(|_| copy(&source, &target));
        if let Err(e) = done {
            self.release(d.size);
            if e.kind() == ErrorKind::AlreadyExists {
                return Ok(());
            }
            return Err(e).with_context(|| format!("saving {}", target.display()));
        }
        Ok(())
    }
}

impl Sink for SaveFileSink {
    fn name(&self) -> &'static str {
        "savefile"
    }

    fn write(&mut self, attack: &Attack, _: &Rendered) -> anyhow::Result<()> {
        let payload = attack.transcript.payload();
        // No data: nothing to save, as in the original.
        if payload.is_empty() {
            return Ok(());
        }
        self.save_attack(attack, &payload)?;
        // A virtual attack's downloads are also on its real attack: saved there.
        if attack.analysis.is_virtual {
            return Ok(());
        }
        let mut first_error = None;
        for d in &attack.analysis.downloads {
            if let Err(e) = self.save_download(d) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `<md5>-<filename>`, or `<md5>` when the URL names no usable file.
pub fn download_name(md5: &str, url: &str) -> String {
    let name = sanitize(url_filename(url));
    if name.is_empty() {
        md5.to_string()
    } else {
        format!("{md5}-{name}")
    }
}

/// Keep letters, digits, `.`, `-`, `_` and `+` (anything else becomes `_`), drop
/// leading dots, at most [`MAX_NAME`] bytes: never a path, never hidden.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.');
    s[..s.len().min(MAX_NAME)].to_string()
}

/// Create `path`, failing if it exists, mode 0644 (set explicitly, as the
/// original did, whatever the umask).
fn create_new(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(f)
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = create_new(to)?;
    let done = std::io::copy(&mut src, &mut dst);
    if done.is_err() {
        let _ = std::fs::remove_file(to);
    }
    done.map(|_| ())
}

/// Bytes and regular files directly in `dir` (the store's subdirectories, when it
/// shares the directory, are its own quota's business).
fn measure(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(b, f), m| (b + m.len(), f + 1))
}

/// The directories once each (attacks and downloads may be the same).
fn dedup(dirs: [&PathBuf; 2]) -> Vec<&PathBuf> {
    if dirs[0] == dirs[1] {
        vec![dirs[0]]
    } else {
        dirs.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{add_download, attack};
    use super::*;
    use crate::attack::{Hashes, Mode};

    fn setup(dir: &Path) -> Config {
        let mut config = Config::default();
        config.sensor.data_dir = dir.to_path_buf();
        config.output.savefile.enabled = true;
        config
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn attack_strings_and_downloads_with_the_original_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let mut sink = SaveFileSink::open(&config).unwrap();
        let mut a = attack(b"GET / HTTP/1.0\r\n\r\n", Mode::Normal);
        add_download(
            &mut a,
            dir.path(),
            "http",
            "http://203.0.113.9/x/../mal ware.exe?q",
            b"MZ-data",
        );
        add_download(&mut a, dir.path(), "tftp", "tftp://203.0.113.9/", b"other");
        sink.write(&a, &Rendered::default()).unwrap();
        // The same attack again: a second attack file, the downloads already there.
        sink.write(&a, &Rendered::default()).unwrap();
        // No payload: nothing.
        sink.write(&attack(b"", Mode::Normal), &Rendered::default())
            .unwrap();
        let date = a.end.with_timezone(&Local).format("%Y-%m-%d").to_string();
        let pid = std::process::id();
        assert_eq!(
            names(&dir.path().join("attacks")),
            [
                format!("from_port_8080-tcp_{pid}_{date}"),
                format!("from_port_8080-tcp_{}_{date}", pid + 1)
            ]
        );
        let file = dir
            .path()
            .join("attacks")
            .join(format!("from_port_8080-tcp_{pid}_{date}"));
        assert_eq!(std::fs::read(&file).unwrap(), b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o644);
        let m1 = Hashes::of(b"MZ-data").md5;
        let m2 = Hashes::of(b"other").md5;
        let mut want = vec![format!("{m1}-mal_ware.exe"), m2.clone()];
        want.sort();
        assert_eq!(names(&dir.path().join("downloads")), want);
        let saved = dir
            .path()
            .join("downloads")
            .join(format!("{m1}-mal_ware.exe"));
        assert_eq!(std::fs::read(saved).unwrap(), b"MZ-data");
        // A new sink (a restart with the same process id) skips the taken numbers.
        let mut sink = SaveFileSink::open(&config).unwrap();
        sink.write(&attack(b"again", Mode::Normal), &Rendered::default())
            .unwrap();
        assert_eq!(names(&dir.path().join("attacks")).len(), 3);
    }

    #[test]
    fn a_virtual_attack_saves_its_string_but_not_its_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SaveFileSink::open(&setup(dir.path())).unwrap();
        let mut v = attack(b"decoded copy", Mode::Normal);
        v.analysis.is_virtual = true;
        add_download(&mut v, dir.path(), "http", "http://h/x.exe", b"MZ");
        sink.write(&v, &Rendered::default()).unwrap();
        assert_eq!(names(&dir.path().join("attacks")).len(), 1);
        assert!(names(&dir.path().join("downloads")).is_empty());
    }

    #[test]
    fn names_from_urls_are_sanitised() {
        assert_eq!(
            download_name("m", "http://h/a/..%2f..%2fetc"),
            "m-_2f.._2fetc"
        );
        assert_eq!(download_name("m", "http://h/.hidden"), "m-hidden");
        assert_eq!(download_name("m", "http://h/"), "m");
        assert_eq!(download_name("m", "ftp://h/é\u{0}x"), "m-__x");
        assert_eq!(
            download_name("m", &format!("http://h/{}", "a".repeat(500))).len(),
            2 + MAX_NAME
        );
    }

    #[test]
    fn the_quota_bounds_both_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = setup(dir.path());
        config.output.savefile.quota_files = 3;
        config.output.savefile.quota_bytes = 1 << 20;
        let mut sink = SaveFileSink::open(&config).unwrap();
        let mut errors = 0;
        for i in 0..10 {
            if sink
                .write(
                    &attack(format!("attack {i}").as_bytes(), Mode::Normal),
                    &Rendered::default(),
                )
                .is_err()
            {
                errors += 1;
            }
        }
        assert_eq!(names(&dir.path().join("attacks")).len(), 3);
        assert_eq!(errors, 7);
        // Bytes too, counted again after a restart.
        config.output.savefile.quota_files = 100;
        config.output.savefile.quota_bytes = 20;
        let mut sink = SaveFileSink::open(&config).unwrap();
        assert!(sink
            .write(&attack(&[b'x'; 30], Mode::Normal), &Rendered::default())
            .is_err());
        assert_eq!(names(&dir.path().join("attacks")).len(), 3);
    }
}
