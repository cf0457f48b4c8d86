//! The `fuzzy` classifier: ssdeep (the original's SpamSum) and TLSH hashes of
//! payloads and downloads, put into the event so similar samples can be grouped,
//! and an optional list of signatures (exact SHA-256/MD5, ssdeep or TLSH with a
//! threshold) that name what a sample resembles.
//!
//! Both engines are pure Rust crates by an ssdeep maintainer (`ffuzzy`, imported
//! as `ssdeep`; `fast-tlsh`, imported as `tlsh`), compatible with the reference
//! implementations (checked against vectors from `ssdeep` and `py-tlsh`).
//!
//! Signature file: one signature a line, `name<TAB>algorithm<TAB>value`, algorithm
//! `sha256`, `md5`, `ssdeep` or `tlsh`; blank lines and lines starting with `#` are
//! skipped. It is read when the analyzers are built (start and SIGHUP); a bad line
//! is an error naming `file:line`.

use super::decoding;
use super::registry::{self, Options, Registration};
use super::{Analyzer, Input, InputKind, Output, Stage};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::Path;

pub const NAME: &str = "fuzzy";

/// `[analyzer.fuzzy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FuzzyOptions {
    pub enabled: bool,
    /// Inputs shorter than this get no fuzzy hashes (exact signatures still match).
    pub min_size: u64,
    /// Signature file; empty: none.
    pub signatures: String,
    /// Lowest ssdeep similarity (0-100) that matches an ssdeep signature.
    pub ssdeep_threshold: u32,
    /// Highest TLSH distance that matches a TLSH signature.
    pub tlsh_threshold: u32,
}

impl Default for FuzzyOptions {
    fn default() -> Self {
        FuzzyOptions {
            enabled: true,
            min_size: 1024,
            signatures: String::new(),
            ssdeep_threshold: 80,
            tlsh_threshold: 50,
        }
    }
}

impl Options for FuzzyOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &FuzzyOptions) -> Result<(), (String, String)> {
    decoding::in_range("min_size", o.min_size, 50, 1 << 30)?;
    decoding::in_range("ssdeep_threshold", o.ssdeep_threshold.into(), 0, 100)?;
    decoding::in_range("tlsh_threshold", o.tlsh_threshold.into(), 0, 2000)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "ssdeep and TLSH hashes of payloads and downloads, matched against signatures",
        options: |t| decoding::checked(t, check),
        build: |t, _| registry::build_with(t, Fuzzy::new),
    }
}

/// What a signature holds.
#[derive(Debug, Clone)]
enum Value {
    Sha256(String),
    Md5(String),
    Ssdeep(ssdeep::LongFuzzyHash),
    Tlsh(tlsh::Tlsh),
}

/// One named signature.
#[derive(Debug, Clone)]
pub struct Signature {
    pub name: String,
    value: Value,
}

impl Signature {
    fn algorithm(&self) -> &'static str {
        match self.value {
            Value::Sha256(_) => "sha256",
            Value::Md5(_) => "md5",
            Value::Ssdeep(_) => "ssdeep",
            Value::Tlsh(_) => "tlsh",
        }
    }
}

/// Parse a signature file's text; errors name `origin:line`.
pub fn parse_signatures(text: &str, origin: &str) -> anyhow::Result<Vec<Signature>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, algo, value] = fields[..] else {
            anyhow::bail!("{at}: expected name<TAB>algorithm<TAB>value");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            anyhow::bail!("{at}: empty signature name");
        }
        let hex_of = |n: usize| {
            if value.len() == n && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(value.to_ascii_lowercase())
            } else {
                Err(anyhow::anyhow!("{at}: {algo} must be {n} hex digits"))
            }
        };
        let value = match algo.trim() {
            "sha256" => Value::Sha256(hex_of(64)?),
            "md5" => Value::Md5(hex_of(32)?),
            "ssdeep" => Value::Ssdeep(
                value
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{at}: bad ssdeep hash: {e}"))?,
            ),
            "tlsh" => Value::Tlsh(
                value
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{at}: bad TLSH hash: {e}"))?,
            ),
            other => anyhow::bail!(
                "{at}: unknown algorithm `{other}` (known: sha256, md5, ssdeep, tlsh)"
            ),
        };
        out.push(Signature {
            name: name.to_string(),
            value,
        });
    }
    Ok(out)
}

/// Read a signature file.
pub fn load_signatures(path: &Path) -> anyhow::Result<Vec<Signature>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("signatures {}: {e}", path.display()))?;
    parse_signatures(&text, &path.display().to_string())
}

/// The classifier.
pub struct Fuzzy {
    o: FuzzyOptions,
    signatures: Vec<Signature>,
}

impl Fuzzy {
    pub fn new(o: FuzzyOptions) -> anyhow::Result<Fuzzy> {
        let signatures = if o.signatures.is_empty() {
            Vec::new()
        } else {
            load_signatures(Path::new(&o.signatures))?
        };
        Ok(Fuzzy { o, signatures })
    }

    pub fn with_signatures(o: FuzzyOptions, signatures: Vec<Signature>) -> Fuzzy {
        Fuzzy { o, signatures }
    }
}

/// The fuzzy hashes of one input.
pub struct Hashes {
    pub ssdeep: String,
    /// None when TLSH has no hash for the input (too short or too uniform).
    pub tlsh: Option<tlsh::Tlsh>,
}

/// ssdeep and TLSH of `data`.
pub fn hashes(data: &[u8]) -> Hashes {
    let ssdeep = ssdeep::hash_buf(data)
        .map(|h| h.to_string())
        .unwrap_or_default();
    Hashes {
        ssdeep,
        tlsh: tlsh::hash_buf(data).ok(),
    }
}

impl Analyzer for Fuzzy {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Analyze
    }
    fn accepts(&self, kind: InputKind) -> bool {
        matches!(kind, InputKind::Payload | InputKind::Download)
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let data = input.data;
        if data.is_empty() {
            return Ok(());
        }
        self.exact(data, out);
        if (data.len() as u64) < self.o.min_size {
            return Ok(());
        }
        let h = hashes(data);
        let tlsh = h.tlsh.as_ref().map(|t| t.to_string());
        out.finding(
            NAME,
            "fuzzy_hash",
            format!(
                "ssdeep {}, TLSH {}",
                h.ssdeep,
                tlsh.as_deref().unwrap_or("(none: input too uniform)")
            ),
        )
        .at(0, data.len() as u64)
        .meta("ssdeep", h.ssdeep.as_str())
        .meta("tlsh", tlsh.clone());
        self.similar(&h, out);
        Ok(())
    }
}

impl Fuzzy {
    /// Exact SHA-256/MD5 signatures (any size).
    fn exact(&self, data: &[u8], out: &mut Output) {
        let has = |f: fn(&Value) -> bool| self.signatures.iter().any(|s| f(&s.value));
        let sha = has(|v| matches!(v, Value::Sha256(_))).then(|| hex::encode(Sha256::digest(data)));
        let md5 = has(|v| matches!(v, Value::Md5(_))).then(|| hex::encode(Md5::digest(data)));
        for s in &self.signatures {
            let hit = match &s.value {
                Value::Sha256(v) => sha.as_ref() == Some(v),
                Value::Md5(v) => md5.as_ref() == Some(v),
                _ => false,
            };
            if hit {
                signature(out, s, 100, None);
            }
        }
    }

    /// ssdeep and TLSH signatures within their thresholds.
    fn similar(&self, h: &Hashes, out: &mut Output) {
        let mine: Option<ssdeep::LongFuzzyHash> = h.ssdeep.parse().ok();
        for s in &self.signatures {
            match (&s.value, &mine, &h.tlsh) {
                (Value::Ssdeep(sig), Some(m), _) => {
                    let score = m.compare(sig);
                    if score >= self.o.ssdeep_threshold && score > 0 {
                        signature(out, s, score, None);
                    }
                }
                (Value::Tlsh(sig), _, Some(t)) => {
                    use tlsh::FuzzyHashType as _;
                    let distance = t.compare(sig);
                    if distance <= self.o.tlsh_threshold {
                        signature(out, s, 0, Some(distance));
                    }
                }
                _ => {}
            }
        }
    }
}

/// A signature finding; `distance` for TLSH (else `score`, 0-100).
fn signature(out: &mut Output, s: &Signature, score: u32, distance: Option<u32>) {
    let detail = match distance {
        Some(d) => format!("matches signature {} (TLSH distance {d})", s.name),
        None => format!(
            "matches signature {} ({} score {score})",
            s.name,
            s.algorithm()
        ),
    };
    let f = out
        .finding(NAME, "signature", detail)
        .meta("name", s.name.as_str())
        .meta("algorithm", s.algorithm());
    match distance {
        Some(d) => f.meta("distance", d),
        None => f.meta("score", score),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes (the same LCG as the reference vectors below were
    /// computed from with `ssdeep` 2.14 and `py-tlsh` 4.x).
    fn lcg(n: usize) -> Vec<u8> {
        let mut s = 1u64;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 33) as u8
            })
            .collect()
    }

    fn text() -> Vec<u8> {
        (0..400)
            .flat_map(|i| {
                format!("line {i}: the quick brown fox jumps over the lazy dog\n").into_bytes()
            })
            .collect()
    }

    fn changed(mut d: Vec<u8>) -> Vec<u8> {
        for i in [100, 3000, 5000, 7000, 9000] {
            d[i] ^= 0xff;
        }
        d
    }

    const RAND_SSDEEP: &str = "192:u86vK/Gl4keF4wIIfeBCjxMh/ubP6/0dzXh8vGqFktPjICRfzrCXQNs0UmclQ:u7vKOE6sjxmCzvqaLICoX0s0PwQ";
    const RAND_TLSH: &str =
        "T18D22AE7BEC07BC7E90AB7AD1513C00D47FCB9FA4AF3951289A84E4D34EF1851E89A064";
    const TEXT_SSDEEP: &str = "96:F9sU5urYX0fRZIXhp3U5WDQlSv5IUwBCX6OVWFFa:zsCEZIXv3U5WDQlSv5I06ir";
    const TEXT_TLSH: &str =
        "T18FA2729E622953F4F5CF1885638EE8F2D7ECC533A2726426F930B0136919521ECFC4A6";
    const RAND2_SSDEEP: &str = "192:986vK/Gl4keFZwIIfeBCjxMh/ubu6/0dzXh8vGqFktOjICRfzrCXrNs0UmclQ:97vKOEPsjxmCuvqagICoXhs0PwQ";
    const RAND2_TLSH: &str =
        "T10622AF7BEC07BC7E90AF6AD1512C00D47FCB9FB4AE3951649A84E4D34EE1851E89A064";

    #[test]
    fn reference_vectors() {
        let h = hashes(&lcg(10240));
        assert_eq!(h.ssdeep, RAND_SSDEEP);
        assert_eq!(h.tlsh.unwrap().to_string(), RAND_TLSH);
        let h = hashes(&text());
        assert_eq!(h.ssdeep, TEXT_SSDEEP);
        assert_eq!(h.tlsh.unwrap().to_string(), TEXT_TLSH);
        let h = hashes(&changed(lcg(10240)));
        assert_eq!(h.ssdeep, RAND2_SSDEEP);
        assert_eq!(h.tlsh.unwrap().to_string(), RAND2_TLSH);
        // The reference tools' comparisons: ssdeep 93, TLSH distance 10.
        assert_eq!(ssdeep::compare(RAND_SSDEEP, RAND2_SSDEEP).unwrap(), 93);
        assert_eq!(tlsh::compare(RAND_TLSH, RAND2_TLSH).unwrap(), 10);
        // ffuzzy's own vector.
        assert_eq!(hashes(b"Hello, World!\n").ssdeep, "3:aaX8v:aV");
        // Too uniform for TLSH.
        assert!(hashes(&[0u8; 4096]).tlsh.is_none());
    }

    fn run(f: &Fuzzy, data: &[u8]) -> Vec<crate::analysis::Finding> {
        decoding::run_on(f, data).findings
    }

    fn sigs(text: &str) -> Vec<Signature> {
        parse_signatures(text, "sigs.txt").unwrap()
    }

    #[test]
    fn fuzzy_hash_finding_and_min_size() {
        let f = Fuzzy::with_signatures(FuzzyOptions::default(), vec![]);
        let got = run(&f, &lcg(10240));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "fuzzy_hash");
        assert_eq!(got[0].meta["ssdeep"], RAND_SSDEEP);
        assert_eq!(got[0].meta["tlsh"], RAND_TLSH);
        assert_eq!((got[0].offset, got[0].length), (Some(0), Some(10240)));
        assert!(run(&f, &lcg(1000)).is_empty(), "under min_size");
        let got = run(&f, &[b'A'; 2000]);
        assert_eq!(got[0].meta["tlsh"], serde_json::Value::Null);
    }

    #[test]
    fn signatures_exact_similar_and_not() {
        let data = lcg(10240);
        let sha = hex::encode(Sha256::digest(&data));
        let md5 = hex::encode(Md5::digest(&data));
        let list = format!(
            "# test list\n\nexact-sha\tsha256\t{sha}\nexact-md5\tmd5\t{}\nfam-ssdeep\tssdeep\t{RAND_SSDEEP}\nfam-tlsh\ttlsh\t{RAND_TLSH}\nother\tssdeep\t{TEXT_SSDEEP}\nother-tlsh\ttlsh\t{TEXT_TLSH}\n",
            md5.to_uppercase()
        );
        let f = Fuzzy::with_signatures(FuzzyOptions::default(), sigs(&list));
        let names = |got: &[crate::analysis::Finding]| {
            let mut n: Vec<(String, String)> = got
                .iter()
                .filter(|x| x.kind == "signature")
                .map(|x| {
                    (
                        x.meta["name"].as_str().unwrap().to_string(),
                        x.meta
                            .get("score")
                            .or(x.meta.get("distance"))
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect();
            n.sort();
            n
        };
        // The same bytes: every exact and fuzzy signature of it, not the others.
        let got = run(&f, &data);
        assert_eq!(
            names(&got),
            [
                ("exact-md5", "100"),
                ("exact-sha", "100"),
                ("fam-ssdeep", "100"),
                ("fam-tlsh", "0")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // Five bytes changed: the fuzzy ones with their score and distance.
        let got = run(&f, &changed(data.clone()));
        assert_eq!(
            names(&got),
            [("fam-ssdeep", "93"), ("fam-tlsh", "10")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let s = got
            .iter()
            .find(|x| x.meta.get("name").is_some_and(|n| n == "fam-ssdeep"))
            .unwrap();
        assert_eq!(s.meta["algorithm"], "ssdeep");
        // Other random data: nothing.
        let other: Vec<u8> = lcg(20480)[10240..].to_vec();
        assert!(names(&run(&f, &other)).is_empty());
        // Exact signatures also match inputs under min_size.
        let small = b"wget http://x/y.sh".to_vec();
        let line = format!("tiny\tsha256\t{}\n", hex::encode(Sha256::digest(&small)));
        let f = Fuzzy::with_signatures(FuzzyOptions::default(), sigs(&line));
        assert_eq!(names(&run(&f, &small)).len(), 1);
        // A stricter threshold drops the 93.
        let o = FuzzyOptions {
            ssdeep_threshold: 95,
            tlsh_threshold: 5,
            ..FuzzyOptions::default()
        };
        let f = Fuzzy::with_signatures(o, sigs(&list));
        assert!(names(&run(&f, &changed(data))).is_empty());
    }

    #[test]
    fn bad_signature_files_name_file_and_line() {
        for (text, want) in [
            (
                "ok\tsha256\t00\n",
                "sigs.txt:1: sha256 must be 64 hex digits",
            ),
            (
                "# c\nx\tcrc32\tabcd\n",
                "sigs.txt:2: unknown algorithm `crc32`",
            ),
            (
                "\n\nno tabs here\n",
                "sigs.txt:3: expected name<TAB>algorithm<TAB>value",
            ),
            ("x\tssdeep\tnot-a-hash\n", "sigs.txt:1: bad ssdeep hash"),
            ("x\ttlsh\tT1ZZ\n", "sigs.txt:1: bad TLSH hash"),
        ] {
            let e = parse_signatures(text, "sigs.txt").unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.tsv");
        std::fs::write(&p, "a\tmd5\t0123456789abcdef0123456789abcdef\nb\tmd5\tzz\n").unwrap();
        let o = FuzzyOptions {
            signatures: p.display().to_string(),
            ..FuzzyOptions::default()
        };
        let e = Fuzzy::new(o).err().unwrap().to_string();
        assert!(e.contains(&format!("{}:2:", p.display())), "{e}");
        let o = FuzzyOptions {
            signatures: "/nonexistent/sigs".into(),
            ..FuzzyOptions::default()
        };
        assert!(Fuzzy::new(o).is_err());
    }

    #[test]
    fn per_mb_cost() {
        let d = lcg(1 << 20);
        let t = std::time::Instant::now();
        let h = hashes(&d);
        let per_mb = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("fuzzy (ssdeep + TLSH): {per_mb:.2} ms/MiB");
        assert!(!h.ssdeep.is_empty() && h.tlsh.is_some());
        let t = std::time::Instant::now();
        let _ = ssdeep::hash_buf(&d);
        eprintln!(
            "  ssdeep alone: {:.2} ms/MiB",
            t.elapsed().as_secs_f64() * 1000.0
        );
        assert!(per_mb < 2000.0, "{per_mb} ms/MiB");
    }
}
