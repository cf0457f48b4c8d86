//! Accuracy of the shellcode classifier with its default options: false positives
//! on benign corpora and detection on shellcode the tests assemble (see
//! [`super::samples`]). The figures in `docs/analysis.md` come from
//! `cargo test --release --lib shellcode::accuracy -- --nocapture`.

use super::samples;
use super::{Shellcode, ShellcodeOptions};
use std::time::Instant;

fn classifier() -> Shellcode {
    Shellcode::new(ShellcodeOptions::default())
}

/// How many inputs of `corpus` have at least one finding; prints the rate.
fn false_positives(name: &str, corpus: &[Vec<u8>]) -> usize {
    let c = classifier();
    let t = Instant::now();
    let mut hits = 0;
    for data in corpus {
        let scan = c.scan(data);
        if let Some(r) = scan.regions.first() {
            hits += 1;
            if hits <= 3 {
                println!(
                    "  {name}: FP {:?} conf {} at {}..{}: {:02x?}",
                    r.techniques,
                    r.confidence,
                    r.start,
                    r.end,
                    &data[r.start..r.end.min(r.start + 32)]
                );
            }
        }
    }
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name}: {hits} of {} inputs with a finding ({:.3} %), {:.1} MiB at {:.1} MiB/s",
        corpus.len(),
        100.0 * hits as f64 / corpus.len() as f64,
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs
    );
    hits
}

#[test]
fn false_positive_rate_on_benign_payloads() {
    let random = samples::random(0x5EED, 10_000, 1024);
    let fp = false_positives("random 1 KiB", &random);
    assert!(fp * 1000 <= random.len() * 5, "random: {fp} FPs (> 0.5 %)");
    for (name, corpus) in [
        ("http", samples::http(1, 2000)),
        ("tls", samples::tls(2, 2000)),
        ("smb", samples::smb(3, 1000)),
        ("text", samples::text()),
    ] {
        assert!(!corpus.is_empty(), "{name}: empty corpus");
        assert_eq!(false_positives(name, &corpus), 0, "{name}: false positives");
    }
}

#[test]
fn detection_rate_on_assembled_shellcode() {
    let c = classifier();
    let all = samples::shellcode(0xC0DE, 20);
    let mut found = 0;
    let mut arch_ok = 0;
    for (s, x64) in &all {
        let scan = c.scan(&s.data);
        let hit = scan
            .regions
            .iter()
            .find(|r| r.start < s.end && r.end > s.start);
        match hit {
            Some(r) => {
                found += 1;
                arch_ok += usize::from(r.x64 == *x64);
            }
            None => println!("  missed {}: {:02x?}", s.name, &s.data[s.start..s.end]),
        }
    }
    println!(
        "shellcode: {found} of {} detected ({:.1} %), arch right for {arch_ok}, {} families",
        all.len(),
        100.0 * found as f64 / all.len() as f64,
        samples::FAMILIES.len()
    );
    assert!(
        found * 100 >= all.len() * 95,
        "detection {found}/{}",
        all.len()
    );
}

/// Informational (not a threshold): findings on compiled programs, the benign
/// code a download may be. `cargo test --release --lib shellcode::accuracy --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn findings_on_compiled_programs() {
    let c = classifier();
    let mut files: Vec<_> = std::fs::read_dir("/usr/bin")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let (mut n, mut bytes, mut regions, mut with) = (0usize, 0usize, 0usize, 0usize);
    let mut techniques = std::collections::BTreeMap::new();
    for f in files.iter().filter(|f| f.is_file()).take(200) {
        let Ok(data) = std::fs::read(f) else { continue };
        if !data.starts_with(b"\x7fELF") {
            continue;
        }
        let scan = c.scan(&data);
        n += 1;
        bytes += data.len();
        regions += scan.regions.len();
        with += usize::from(!scan.regions.is_empty());
        for r in &scan.regions {
            *techniques.entry(r.technique.as_str()).or_insert(0) += 1;
        }
    }
    println!(
        "compiled: {with} of {n} ELF programs in /usr/bin with a finding, {regions} regions in {:.1} MiB: {techniques:?}",
        bytes as f64 / 1048576.0
    );
}
