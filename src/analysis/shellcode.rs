//! The `shellcode` classifier (analyze, on by default): finds x86 and x86-64
//! shellcode in payloads, decoded copies and downloads, the part of the original's
//! cpuEmu that told shellcode apart (GetPC heuristics), without emulation.
//!
//! [`detect`] does the work: a byte prefilter picks candidate offsets, the
//! iced-x86 decoder checks them against GetPC stubs (call/pop, jmp-call-pop,
//! fnstenv), decoder loops, PEB access and syscalls, NOP sleds are found as runs;
//! hits close together become one region with a confidence, and each region at or
//! above `min_confidence` is one finding. The accuracy corpus and its measured
//! rates are in [`accuracy`] and `docs/analysis.md`.

#[cfg(test)]
mod accuracy;
pub mod detect;
#[cfg(test)]
pub mod samples;

use super::decoding;
use super::registry::{self, Options, Registration};
use super::{Analyzer, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "shellcode";

/// At most this many findings per input (the strongest regions first).
const MAX_FINDINGS: usize = 16;

/// `[analyzer.shellcode]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShellcodeOptions {
    pub enabled: bool,
    /// Shortest run of one-byte NOP equivalents reported as a sled.
    pub min_sled: usize,
    /// Candidate offsets examined per input, at most (bounds the work).
    pub max_candidates: usize,
    /// Regions scoring below this (0 to 1) are not reported.
    pub min_confidence: f64,
}

impl Default for ShellcodeOptions {
    fn default() -> Self {
        ShellcodeOptions {
            enabled: true,
            min_sled: 16,
            max_candidates: 50_000,
            min_confidence: 0.5,
        }
    }
}

impl Options for ShellcodeOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &ShellcodeOptions) -> Result<(), (String, String)> {
    decoding::in_range("min_sled", o.min_sled as u64, 4, 4096)?;
    decoding::in_range("max_candidates", o.max_candidates as u64, 1, 10_000_000)?;
    if !(0.0..=1.0).contains(&o.min_confidence) {
        return Err(("min_confidence".into(), "must be between 0 and 1".into()));
    }
    Ok(())
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "finds x86/x86-64 shellcode: GetPC stubs, NOP sleds, decoder loops, PEB access",
        options: |t| decoding::checked(t, check),
        build: |t, _| registry::build_with(t, |o: ShellcodeOptions| Ok(Shellcode::new(o))),
    }
}

/// The classifier.
pub struct Shellcode {
    params: detect::Params,
}

impl Shellcode {
    pub fn new(o: ShellcodeOptions) -> Shellcode {
        Shellcode {
            params: detect::Params {
                min_sled: o.min_sled,
                max_candidates: o.max_candidates,
                min_confidence: o.min_confidence as f32,
            },
        }
    }

    /// The regions found in `data`.
    pub fn scan(&self, data: &[u8]) -> detect::Scan {
        detect::scan(data, &self.params)
    }
}

impl Analyzer for Shellcode {
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
        let scan = self.scan(input.data);
        let mut regions = scan.regions;
        regions.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        regions.truncate(MAX_FINDINGS);
        regions.sort_by_key(|r| r.start);
        for r in regions {
            report(out, &r, scan.truncated);
        }
        Ok(())
    }
}

/// One finding for one region.
fn report(out: &mut Output, r: &detect::Region, truncated: bool) {
    let arch = if r.x64 { "x86_64" } else { "x86" };
    let names: Vec<&str> = r.techniques.iter().map(|t| t.as_str()).collect();
    // Two decimals: the score is a heuristic, not a measurement.
    let confidence = (r.confidence as f64 * 100.0).round() / 100.0;
    let f = out
        .finding(
            NAME,
            "shellcode",
            format!(
                "{arch} shellcode ({}) at offset {}, {} bytes, confidence {confidence}",
                names.join(", "),
                r.start,
                r.end - r.start
            ),
        )
        .at(r.start as u64, (r.end - r.start) as u64)
        .meta("arch", arch)
        .meta("technique", r.technique.as_str())
        .meta("techniques", names)
        .meta("confidence", confidence);
    if truncated {
        f.meta("truncated", true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> Output {
        decoding::run_on(&Shellcode::new(ShellcodeOptions::default()), data)
    }

    #[test]
    fn finds_a_sled_and_decoder_with_offset_and_technique() {
        let mut p = b"GET /default.ida?".to_vec();
        p.extend([0x90; 32]);
        let stub = p.len();
        // xor ecx,ecx; mov cl,0x40; jmp short +? ... a plain xor loop:
        // lea esi,[eax+0x10]; xor byte [esi],0x5a; inc esi; loop -6
        p.extend([0x8D, 0x70, 0x10, 0x80, 0x36, 0x5A, 0x46, 0xE2, 0xFA]);
        p.extend([0x11; 40]);
        let out = run(&p);
        assert_eq!(out.findings.len(), 1, "{:?}", out.findings);
        let f = &out.findings[0];
        assert_eq!(f.kind, "shellcode");
        assert_eq!(f.offset, Some(17));
        assert!(f.length.unwrap() as usize >= stub + 9 - 17);
        assert_eq!(f.meta["arch"], "x86");
        assert_eq!(f.meta["technique"], "decoder_loop");
        let t = f.meta["techniques"].as_array().unwrap();
        assert!(t.contains(&"nop_sled".into()), "{t:?}");
    }

    #[test]
    fn leaves_text_alone() {
        let http =
            b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\n\r\n";
        assert!(run(http).findings.is_empty());
        assert!(run(&[b'A'; 400]).findings.is_empty(), "a filler is no sled");
    }

    #[test]
    fn options_are_checked() {
        let t: toml::Table = toml::from_str("min_confidence = 1.5").unwrap();
        assert_eq!(
            (registration().options)(&t).unwrap_err().0,
            "min_confidence"
        );
        let t: toml::Table = toml::from_str("min_sled = 2").unwrap();
        assert_eq!((registration().options)(&t).unwrap_err().0, "min_sled");
        let filled = (registration().options)(&toml::Table::new()).unwrap();
        assert_eq!(filled["min_sled"].as_integer(), Some(16));
        assert_eq!(filled["enabled"].as_bool(), Some(true));
    }
}
