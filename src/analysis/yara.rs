//! The `yara` analyzer: matches YARA rules against payloads, decoded copies and
//! downloads with YARA-X (the maintained pure-Rust engine), each scan within a time
//! limit; every matching rule becomes a finding of kind `yara` with the rule's
//! name, namespace, tags, metadata and the offsets of its first matches.
//!
//! The rules are every `*.yar` / `*.yara` file in `rules_dir` (each file its own
//! namespace, the file name without extension), compiled when the configuration is
//! checked (so a broken rule is refused at start and on SIGHUP with the file and
//! line) and reused by the analyzer built from the same files: compiled once per
//! distinct set of rule files.
//!
//! The engine sits behind the `yara` cargo feature (on by default). Without it the
//! analyzer is still registered, so its options are known, but `enabled = true`
//! is refused with a message saying how to build it in.

use super::registry::{self, Registration};
use super::Stage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const NAME: &str = "yara";

/// Most matches listed per rule in `meta.matches`.
#[cfg_attr(not(feature = "yara"), allow(dead_code))]
pub const MAX_LISTED: usize = 8;

/// `[analyzer.yara]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YaraOptions {
    /// Default: on when `rules_dir` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Directory of `*.yar` / `*.yara` files (not searched recursively).
    pub rules_dir: PathBuf,
    /// Time limit of one scan.
    #[serde(with = "crate::config::units::duration")]
    pub timeout: Duration,
    /// Scan at most this many bytes of an input (its beginning).
    #[serde(with = "crate::config::units::bytesize")]
    pub max_size: u64,
}

impl Default for YaraOptions {
    fn default() -> Self {
        YaraOptions {
            enabled: None,
            rules_dir: PathBuf::new(),
            timeout: Duration::from_secs(5),
            max_size: 16 << 20,
        }
    }
}

impl YaraOptions {
    /// Whether the analyzer runs: `enabled`, or by default whether rules are set.
    pub fn on(&self) -> bool {
        self.enabled
            .unwrap_or(!self.rules_dir.as_os_str().is_empty())
    }
}

impl registry::Options for YaraOptions {
    fn enabled(&self) -> bool {
        self.on()
    }
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "matches YARA rules (YARA-X) against payloads, decoded copies and downloads",
        options,
        build: |t, _| build(t),
    }
}

/// Check the options and, when enabled, compile the rules (a broken rule is an
/// error on `rules_dir` naming the file and line).
fn options(table: &toml::Table) -> Result<toml::Table, (String, String)> {
    let mut o: YaraOptions = registry::parse(table)?;
    o.enabled = Some(o.on());
    if o.timeout.is_zero() {
        return Err(("timeout".into(), "must be more than 0".into()));
    }
    if !(1..=1 << 30).contains(&o.max_size) {
        return Err(("max_size".into(), "must be between 1B and 1GiB".into()));
    }
    if o.on() {
        if o.rules_dir.as_os_str().is_empty() {
            return Err((
                "rules_dir".into(),
                "required when the yara analyzer is enabled".into(),
            ));
        }
        engine::check(&o)?;
    }
    match toml::Value::try_from(&o) {
        Ok(toml::Value::Table(t)) => Ok(t),
        _ => Err((String::new(), "options do not serialize".into())),
    }
}

fn build(table: &toml::Table) -> anyhow::Result<Option<std::sync::Arc<dyn super::Analyzer>>> {
    let o: YaraOptions = registry::parse(table).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    if !o.on() {
        return Ok(None);
    }
    engine::build(o)
}

/// The rule files of `dir`, sorted: `*.yar` and `*.yara`.
#[cfg_attr(not(feature = "yara"), allow(dead_code))]
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yar" | "yara"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.yar or *.yara files in `{}`", dir.display()));
    }
    Ok(files)
}

#[cfg(not(feature = "yara"))]
mod engine {
    use super::YaraOptions;

    const WITHOUT: &str =
        "this honeytrap was built without YARA support (the `yara` cargo feature); \
         build it with the default features (`cargo build --release`) to use the yara analyzer";

    pub fn check(_: &YaraOptions) -> Result<(), (String, String)> {
        Err(("enabled".into(), WITHOUT.into()))
    }

    pub fn build(
        _: YaraOptions,
    ) -> anyhow::Result<Option<std::sync::Arc<dyn crate::analysis::Analyzer>>> {
        anyhow::bail!("{WITHOUT}")
    }
}

#[cfg(feature = "yara")]
mod engine {
    use super::{rule_files, YaraOptions, MAX_LISTED, NAME};
    use crate::analysis::{Analyzer, Input, InputKind, Output, Stage};
    use sha2::{Digest, Sha256};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// The rules last compiled, by a digest of the rule files (names and contents),
    /// so checking the configuration and building the analyzer compile them once.
    static COMPILED: Mutex<Option<([u8; 32], Arc<yara_x::Rules>)>> = Mutex::new(None);

    pub fn check(o: &YaraOptions) -> Result<(), (String, String)> {
        rules(o).map(|_| ()).map_err(|e| ("rules_dir".into(), e))
    }

    pub fn build(o: YaraOptions) -> anyhow::Result<Option<Arc<dyn Analyzer>>> {
        let rules = rules(&o).map_err(|e| anyhow::anyhow!("rules_dir: {e}"))?;
        tracing::info!(rules_dir = %o.rules_dir.display(), "yara rules loaded");
        Ok(Some(Arc::new(Yara { o, rules })))
    }

    /// The compiled rules of `o.rules_dir` (from the cache when the files are the
    /// same).
    pub fn rules(o: &YaraOptions) -> Result<Arc<yara_x::Rules>, String> {
        let files = rule_files(&o.rules_dir)?;
        let mut sources = Vec::new();
        let mut digest = Sha256::new();
        for f in &files {
            let text =
                std::fs::read(f).map_err(|e| format!("cannot read `{}`: {e}", f.display()))?;
            digest.update(f.as_os_str().as_encoded_bytes());
            digest.update((text.len() as u64).to_le_bytes());
            digest.update(&text);
            sources.push((f.clone(), text));
        }
        let key: [u8; 32] = digest.finalize().into();
        let mut cache = COMPILED.lock().unwrap();
        if let Some((k, r)) = cache.as_ref() {
            if *k == key {
                return Ok(Arc::clone(r));
            }
        }
        let rules = Arc::new(compile(&sources)?);
        *cache = Some((key, Arc::clone(&rules)));
        Ok(rules)
    }

    /// Compile the rule files, each in the namespace of its file name; the first
    /// error is returned with its file and line (YARA-X's report).
    pub fn compile(sources: &[(std::path::PathBuf, Vec<u8>)]) -> Result<yara_x::Rules, String> {
        let mut c = yara_x::Compiler::new();
        for (path, text) in sources {
            let ns = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".into());
            c.new_namespace(&ns);
            let origin = path.display().to_string();
            c.add_source(yara_x::SourceCode::from(text.as_slice()).with_origin(origin.as_str()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(c.build())
    }

    /// The analyzer.
    pub struct Yara {
        pub(super) o: YaraOptions,
        pub(super) rules: Arc<yara_x::Rules>,
    }

    impl Analyzer for Yara {
        fn name(&self) -> &'static str {
            NAME
        }
        fn stage(&self) -> Stage {
            Stage::Analyze
        }
        fn accepts(&self, kind: InputKind) -> bool {
            matches!(
                kind,
                InputKind::Payload | InputKind::Decoded | InputKind::Download
            )
        }
        fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
            let left = input.deadline.saturating_duration_since(Instant::now());
            let timeout = self.o.timeout.min(left);
            if timeout.is_zero() {
                anyhow::bail!("no time left for the scan");
            }
            let max = usize::try_from(self.o.max_size).unwrap_or(usize::MAX);
            let data = &input.data[..input.data.len().min(max)];
            // This thread's scanner for these rules (made on first use), taken out
            // while it scans: a scan that fails or panics drops it.
            let mut cached = SCANNER
                .with(|c| c.borrow_mut().take())
                .filter(|c| Arc::ptr_eq(&c.rules, &self.rules))
                .unwrap_or_else(|| Cached::new(&self.rules));
            cached.scanner.set_timeout(timeout);
            let results = match cached.scanner.scan(data) {
                Ok(r) => r,
                Err(yara_x::errors::ScanError::Timeout) => {
                    anyhow::bail!("scan timed out after {} ms", timeout.as_millis())
                }
                Err(e) => anyhow::bail!("scan failed: {e}"),
            };
            for rule in results.matching_rules() {
                finding(&rule, out);
            }
            SCANNER.with(|c| *c.borrow_mut() = Some(cached));
            Ok(())
        }
    }

    thread_local! {
        /// The scanner of this analysis worker thread. Making one (a WebAssembly
        /// store and instance, the rules' and modules' types) costs about a
        /// millisecond, far more than scanning a small payload; a scanner may be
        /// reused for scans one after the other, never by two threads at once.
        static SCANNER: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
    }

    /// A scanner with the rules it borrows. `scanner` is declared first so it is
    /// dropped before `rules`.
    struct Cached {
        scanner: yara_x::Scanner<'static>,
        rules: Arc<yara_x::Rules>,
    }

    impl Cached {
        fn new(rules: &Arc<yara_x::Rules>) -> Cached {
            let rules = Arc::clone(rules);
            let scanner = yara_x::Scanner::new(rules.as_ref());
            // SAFETY: the scanner borrows the `Rules` inside `rules`' allocation,
            // which does not move and lives as long as this struct holds the Arc;
            // the scanner is dropped first (field order) and never handed out.
            let scanner = unsafe {
                std::mem::transmute::<yara_x::Scanner<'_>, yara_x::Scanner<'static>>(scanner)
            };
            Cached { scanner, rules }
        }
    }

    /// A finding for one matching rule.
    fn finding(rule: &yara_x::Rule, out: &mut Output) {
        let mut matches: Vec<(usize, usize, &str)> = rule
            .patterns()
            .flat_map(|p| {
                let id = p.identifier();
                p.matches()
                    .take(MAX_LISTED)
                    .map(move |m| (m.range().start, m.range().len(), id))
            })
            .collect();
        matches.sort();
        matches.truncate(MAX_LISTED);
        let tags: Vec<&str> = rule.tags().map(|t| t.identifier()).collect();
        let mut metadata = serde_json::Map::new();
        for (key, value) in rule.metadata() {
            metadata.insert(key.to_string(), meta_value(value));
        }
        let f = out.finding(
            NAME,
            "yara",
            format!(
                "YARA rule {}:{} matched",
                rule.namespace(),
                rule.identifier()
            ),
        );
        if let Some(&(offset, length, _)) = matches.first() {
            f.at(offset as u64, length as u64);
        }
        f.meta("rule", rule.identifier())
            .meta("namespace", rule.namespace())
            .meta("tags", tags)
            .meta("metadata", metadata)
            .meta(
                "matches",
                matches
                    .iter()
                    .map(|(o, l, p)| serde_json::json!({"pattern": p, "offset": o, "length": l}))
                    .collect::<Vec<_>>(),
            );
    }

    fn meta_value(v: yara_x::MetaValue) -> serde_json::Value {
        use yara_x::MetaValue as M;
        match v {
            M::Integer(i) => i.into(),
            M::Float(f) => f.into(),
            M::Bool(b) => b.into(),
            M::String(s) => s.into(),
            M::Bytes(b) => String::from_utf8_lossy(b).into_owned().into(),
        }
    }
}

#[cfg(all(test, feature = "yara"))]
mod tests {
    use super::*;
    use crate::analysis::{Analyzer, Input, InputKind, Output};

    const RULES: &str = r#"
rule Mirai_Dropper : botnet linux {
    meta:
        author = "honeytrap tests"
        severity = 7
        shared = true
    strings:
        $a = "/bin/busybox MIRAI"
        $b = { 2F 74 6D 70 2F }
    condition:
        any of them
}

rule Never { strings: $x = "not in there" condition: $x }
"#;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    fn table(dir: &Path) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("rules_dir".into(), dir.display().to_string().into());
        t
    }

    fn scan(a: &dyn Analyzer, data: &[u8], kind: InputKind) -> anyhow::Result<Output> {
        let attack = crate::analysis::download::testing::attack("10.0.0.2:4000");
        let input = Input {
            data,
            kind,
            attack: &attack,
            depth: 0,
            deadline: std::time::Instant::now() + Duration::from_secs(10),
            download: None,
            downloads_left: 5,
        };
        let mut out = Output::default();
        a.run(&input, &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_rule_matches_with_name_tags_metadata_and_offsets() {
        let d = dir_with(&[("mirai.yar", RULES), ("notes.txt", "not a rule {")]);
        let filled = options(&table(d.path())).unwrap();
        assert_eq!(filled["enabled"].as_bool(), Some(true), "on with rules_dir");
        let a = build(&filled).unwrap().expect("enabled");
        assert!(a.accepts(InputKind::Download) && a.accepts(InputKind::Decoded));
        let payload = b"GET / HTTP/1.0\r\n\r\ncd /tmp/; /bin/busybox MIRAI";
        let out = scan(a.as_ref(), payload, InputKind::Payload).unwrap();
        assert_eq!(out.findings.len(), 1, "{:?}", out.findings);
        let f = &out.findings[0];
        assert_eq!((f.analyzer, f.kind.as_str()), ("yara", "yara"));
        assert_eq!(f.meta["rule"], "Mirai_Dropper");
        assert_eq!(f.meta["namespace"], "mirai");
        assert_eq!(f.meta["tags"], serde_json::json!(["botnet", "linux"]));
        assert_eq!(
            f.meta["metadata"],
            serde_json::json!({"author": "honeytrap tests", "severity": 7, "shared": true})
        );
        // The first match: "/tmp/" at 21, then the busybox string at 28.
        assert_eq!((f.offset, f.length), (Some(21), Some(5)));
        let m = f.meta["matches"].as_array().unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[1]["offset"], 28);
        assert_eq!(m[1]["pattern"], "$a");
        // Nothing on a benign payload.
        let out = scan(a.as_ref(), b"GET / HTTP/1.0\r\n\r\n", InputKind::Payload).unwrap();
        assert!(out.findings.is_empty());
    }

    #[test]
    fn the_reused_scanner_forgets_earlier_scans_and_follows_the_rules() {
        let d = dir_with(&[("mirai.yar", RULES)]);
        let a = build(&options(&table(d.path())).unwrap()).unwrap().unwrap();
        let hit = b"/bin/busybox MIRAI".as_slice();
        for (data, want) in [(hit, 1), (b"nothing here".as_slice(), 0), (hit, 1)] {
            let out = scan(a.as_ref(), data, InputKind::Payload).unwrap();
            assert_eq!(out.findings.len(), want, "{:?}", out.findings);
        }
        // Other rules on the same thread: their own scanner, their own matches.
        let other = dir_with(&[("other.yar", LATER_RULE)]);
        let b = build(&options(&table(other.path())).unwrap())
            .unwrap()
            .unwrap();
        assert!(scan(b.as_ref(), hit, InputKind::Payload)
            .unwrap()
            .findings
            .is_empty());
        let out = scan(b.as_ref(), b"x added-later x", InputKind::Payload).unwrap();
        assert_eq!(out.findings[0].meta["rule"], "Later");
        assert_eq!(
            scan(a.as_ref(), hit, InputKind::Payload)
                .unwrap()
                .findings
                .len(),
            1
        );
    }

    const LATER_RULE: &str = "rule Later { strings: $x = \"added-later\" condition: $x }\n";

    #[test]
    fn max_size_limits_what_is_scanned() {
        let d = dir_with(&[("r.yara", RULES)]);
        let mut t = table(d.path());
        t.insert("max_size".into(), "16B".into());
        let a = build(&options(&t).unwrap()).unwrap().unwrap();
        let out = scan(
            a.as_ref(),
            b"0123456789abcdef/bin/busybox MIRAI",
            InputKind::Download,
        );
        assert!(
            out.unwrap().findings.is_empty(),
            "the match is past max_size"
        );
    }

    #[test]
    fn a_broken_rule_names_the_file_and_line() {
        let broken = "rule Fine { condition: true }\n\nrule Broken {\n  strings:\n    $a = \"x\"\n  condition:\n    $a and $nope\n}\n";
        let d = dir_with(&[("good.yar", RULES), ("broken.yar", broken)]);
        let (key, msg) = options(&table(d.path())).unwrap_err();
        assert_eq!(key, "rules_dir");
        assert!(msg.contains("broken.yar:7"), "{msg}");
        assert!(msg.contains("$nope"), "{msg}");
    }

    #[test]
    fn options_checked() {
        let off = options(&toml::Table::new()).unwrap();
        assert_eq!(off["enabled"].as_bool(), Some(false), "off without rules");
        assert!(build(&off).unwrap().is_none());
        let mut t = toml::Table::new();
        t.insert("enabled".into(), true.into());
        assert_eq!(options(&t).unwrap_err().0, "rules_dir");
        let empty = tempfile::tempdir().unwrap();
        let e = options(&table(empty.path())).unwrap_err();
        assert!(e.1.contains("no *.yar"), "{e:?}");
        let mut t = table(Path::new("/nonexistent/rules"));
        assert!(options(&t).unwrap_err().1.contains("cannot read"));
        t.insert("timeout".into(), "0s".into());
        assert_eq!(options(&t).unwrap_err().0, "timeout");
        let mut t = toml::Table::new();
        t.insert("rule_dir".into(), "x".into());
        assert_eq!(options(&t).unwrap_err().0, "rule_dir");
    }
}

#[cfg(all(test, not(feature = "yara")))]
mod tests {
    use super::*;

    #[test]
    fn enabled_is_refused_without_the_feature() {
        let mut t = toml::Table::new();
        t.insert("enabled".into(), true.into());
        t.insert("rules_dir".into(), "/tmp".into());
        let (key, msg) = options(&t).unwrap_err();
        assert_eq!(key, "enabled");
        assert!(msg.contains("`yara` cargo feature"), "{msg}");
        assert!(options(&toml::Table::new()).is_ok(), "off is fine");
    }
}
