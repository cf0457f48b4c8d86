//! The `exe` classifier (the original's magicPE, for more formats): recognises
//! Windows PE, ELF and Mach-O executables in payloads, decoded copies and
//! downloads, also embedded at an offset (after an exploit's header), with their
//! architecture, type and size. An executable found inside a payload or a decoded
//! copy is cut out and attached as a download (`analyzer = "exe"`, `url =
//! extracted:payload@OFFSET`, port 0), so it is hashed, analysed again and stored
//! like a fetched file.
//!
//! Work is bounded: one pass over the input looking for the magic numbers, each
//! candidate validated from its headers (a few hundred bytes, at most
//! [`MAX_TABLE`] table entries), at most `max_executables` per input.

use super::decoding;
use super::registry::{self, Options, Registration};
use super::{Analyzer, Download, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "exe";

/// Most section, program or load-command entries read from one header.
const MAX_TABLE: usize = 4096;

/// `[analyzer.exe]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExeOptions {
    pub enabled: bool,
    /// Most executables reported (and extracted) per input.
    pub max_executables: usize,
    /// Cut executables out of payloads and decoded copies as downloads.
    pub extract: bool,
}

impl Default for ExeOptions {
    fn default() -> Self {
        ExeOptions {
            enabled: true,
            max_executables: 4,
            extract: true,
        }
    }
}

impl Options for ExeOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

fn check(o: &ExeOptions) -> Result<(), (String, String)> {
    decoding::in_range("max_executables", o.max_executables as u64, 1, 64)
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "recognises PE, ELF and Mach-O executables (also embedded) and extracts them",
        options: |t| decoding::checked(t, check),
        build: |t, _| registry::build_with(t, |o: ExeOptions| Ok(Exe { o })),
    }
}

/// The classifier.
pub struct Exe {
    o: ExeOptions,
}

impl Exe {
    pub fn new(o: ExeOptions) -> Exe {
        Exe { o }
    }
}

/// One executable found in an input.
#[derive(Debug, Clone, PartialEq)]
pub struct Executable {
    /// `pe`, `elf` or `macho`.
    pub format: &'static str,
    pub arch: String,
    /// `exe`, `dll`, `exec`, `dyn`, `rel`, `core`, ...
    pub kind: String,
    pub bits: u32,
    /// `little` or `big` (ELF, Mach-O).
    pub endian: Option<&'static str>,
    /// PE subsystem (`windows_gui`, `windows_cui`, ...).
    pub subsystem: Option<String>,
    pub offset: usize,
    /// Bytes from `offset`: from the headers where computable, else to the end.
    pub length: usize,
    /// The headers say the file is longer than what the input holds.
    pub truncated: bool,
}

impl Analyzer for Exe {
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
        let found = scan(input.data, self.o.max_executables);
        let mut left = input.downloads_left;
        for x in found {
            finding(out, &x);
            if !self.o.extract || input.kind == InputKind::Download || left == 0 {
                continue;
            }
            let from = if input.kind == InputKind::Payload {
                "payload"
            } else {
                "decoded"
            };
            let mut d = Download::new(
                NAME,
                format!("extracted:{from}@{}", x.offset),
                String::new(),
                0,
            );
            d.truncated = x.truncated;
            d.set_data(input.data[x.offset..x.offset + x.length].to_vec());
            out.downloads.push(d);
            left -= 1;
        }
        Ok(())
    }
}

fn finding(out: &mut Output, x: &Executable) {
    let what = match x.format {
        "pe" => "PE",
        "elf" => "ELF",
        _ => "Mach-O",
    };
    let f = out
        .finding(
            NAME,
            "executable",
            format!(
                "{what} {} {} ({}-bit), {} bytes at offset {}",
                x.arch, x.kind, x.bits, x.length, x.offset
            ),
        )
        .at(x.offset as u64, x.length as u64)
        .meta("format", x.format)
        .meta("arch", x.arch.as_str())
        .meta("type", x.kind.as_str())
        .meta("bits", x.bits)
        .meta("truncated", x.truncated);
    if let Some(e) = x.endian {
        f.meta("endian", e);
    }
    if let Some(s) = &x.subsystem {
        f.meta("subsystem", s.as_str());
    }
}

/// Every executable in `data`, at most `max`, in order. A found executable's
/// bytes are not searched again (its own resources are part of it).
pub fn scan(data: &[u8], max: usize) -> Vec<Executable> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() && found.len() < max {
        let x = match data[i] {
            b'M' if data[i + 1] == b'Z' => pe(data, i),
            0x7f if &data[i + 1..i + 4] == b"ELF" => elf(data, i),
            0xfe | 0xce | 0xcf | 0xca => macho(data, i),
            _ => None,
        };
        match x {
            Some(x) => {
                i = x.offset + x.length.max(1);
                found.push(x);
            }
            None => i += 1,
        }
    }
    found
}

/// Little- or big-endian reads at absolute positions, None past the end.
#[derive(Clone, Copy)]
struct Bytes<'a> {
    d: &'a [u8],
    big: bool,
}

impl Bytes<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.d.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.d.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.d.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
    /// A 32- or 64-bit field.
    fn word(&self, at: usize, wide: bool) -> Option<u64> {
        if wide {
            self.u64(at)
        } else {
            self.u32(at).map(u64::from)
        }
    }
}

/// Length from a computed end (relative to the start), clamped to what `avail`
/// holds; `end` None (not computable) means to the end.
fn span(end: Option<u64>, avail: usize) -> (usize, bool) {
    match end {
        Some(e) if e > 0 && e <= avail as u64 => (e as usize, false),
        Some(e) if e > avail as u64 => (avail, true),
        _ => (avail, false),
    }
}

fn hex(v: u32) -> String {
    format!("0x{v:x}")
}

/// Windows PE: `MZ`, `PE\0\0` at `e_lfanew`, a COFF header and a PE32/PE32+
/// optional header.
fn pe(data: &[u8], at: usize) -> Option<Executable> {
    let d = &data[at..];
    let b = Bytes { d, big: false };
    let lfanew = b.u32(0x3c)? as usize;
    if !(4..=0x10000).contains(&lfanew) || d.get(lfanew..lfanew + 4)? != b"PE\0\0" {
        return None;
    }
    let coff = lfanew + 4;
    let machine = b.u16(coff)?;
    let sections = b.u16(coff + 2)? as usize;
    let opt_size = b.u16(coff + 16)? as usize;
    let chars = b.u16(coff + 18)?;
    let opt = coff + 20;
    let bits = match b.u16(opt)? {
        0x10b => 32,
        0x20b => 64,
        _ => return None,
    };
    if sections > 96 || opt_size < 72 {
        return None;
    }
    let arch = match machine {
        0x14c => "x86".to_string(),
        0x8664 => "x86-64".to_string(),
        0x1c0 | 0x1c2 | 0x1c4 => "arm".to_string(),
        0xaa64 => "arm64".to_string(),
        0x200 => "ia64".to_string(),
        m => hex(m.into()),
    };
    let kind = if chars & 0x2000 != 0 {
        "dll"
    } else if chars & 0x0002 != 0 {
        "exe"
    } else {
        "object"
    };
    let subsystem = match b.u16(opt + 68)? {
        1 => "native".to_string(),
        2 => "windows_gui".to_string(),
        3 => "windows_cui".to_string(),
        7 => "posix_cui".to_string(),
        9 => "windows_ce_gui".to_string(),
        10 => "efi_application".to_string(),
        11 => "efi_boot_service_driver".to_string(),
        12 => "efi_runtime_driver".to_string(),
        14 => "xbox".to_string(),
        s => hex(s.into()),
    };
    // The end: the headers, the last section's raw data, the certificate table
    // (data directory 4 holds a file offset, not an address).
    let size_of_headers = b.u32(opt + 60)? as u64;
    let table = opt + opt_size;
    let mut end = size_of_headers.max((table + sections * 40) as u64);
    for s in 0..sections {
        let e = table + s * 40;
        let (raw_size, raw_ptr) = (b.u32(e + 16)?, b.u32(e + 20)?);
        if raw_size > 0 {
            end = end.max(u64::from(raw_ptr) + u64::from(raw_size));
        }
    }
    let dirs = opt + if bits == 64 { 112 } else { 96 };
    if opt_size >= dirs - opt + 5 * 8 {
        if let (Some(off), Some(size)) = (b.u32(dirs + 32), b.u32(dirs + 36)) {
            if off > 0 && size > 0 {
                end = end.max(u64::from(off) + u64::from(size));
            }
        }
    }
    let (length, truncated) = span(Some(end), d.len());
    Some(Executable {
        format: "pe",
        arch,
        kind: kind.into(),
        bits,
        endian: Some("little"),
        subsystem: Some(subsystem),
        offset: at,
        length,
        truncated,
    })
}

/// Position of entry `i` of a table at `off` (attacker-chosen: checked).
fn entry(off: u64, size: u64, i: usize) -> Option<usize> {
    let at = off.checked_add(size.checked_mul(i as u64)?)?;
    // Past any input (so `at + field` cannot overflow either).
    usize::try_from(at).ok().filter(|_| at < 1 << 40)
}

fn elf_arch(machine: u16) -> String {
    match machine {
        2 => "sparc",
        3 => "x86",
        4 => "m68k",
        8 => "mips",
        20 => "ppc",
        21 => "ppc64",
        22 => "s390",
        40 => "arm",
        42 => "sh",
        43 => "sparc64",
        50 => "ia64",
        62 => "x86-64",
        183 => "arm64",
        243 => "riscv",
        258 => "loongarch",
        m => return hex(m.into()),
    }
    .to_string()
}

/// ELF: class, data encoding and version checked; the end from the section and
/// program header tables and what they point at.
fn elf(data: &[u8], at: usize) -> Option<Executable> {
    let d = &data[at..];
    let wide = match *d.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match *d.get(5)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let b = Bytes { d, big };
    if *d.get(6)? != 1 || b.u32(20)? != 1 {
        return None;
    }
    let kind = match b.u16(16)? {
        1 => "rel",
        2 => "exec",
        3 => "dyn",
        4 => "core",
        _ => return None,
    };
    let machine = b.u16(18)?;
    let w = if wide { 8 } else { 4 };
    // e_phoff, e_shoff, then flags, ehsize, phentsize, phnum, shentsize, shnum.
    let phoff = b.word(24 + w, wide)?;
    let shoff = b.word(24 + 2 * w, wide)?;
    let rest = 24 + 3 * w + 4;
    let ehsize = b.u16(rest)? as u64;
    let (phentsize, phnum) = (b.u16(rest + 2)? as u64, b.u16(rest + 4)? as usize);
    let (shentsize, shnum) = (b.u16(rest + 6)? as u64, b.u16(rest + 8)? as usize);
    let mut end = ehsize;
    if phnum > 0 {
        end = end.max(phoff.saturating_add(phentsize * phnum as u64));
        for i in 0..phnum.min(MAX_TABLE) {
            let Some(e) = entry(phoff, phentsize, i) else {
                break;
            };
            // p_offset, p_filesz: after p_type (and p_flags on ELF64).
            let (off, size) = if wide {
                (b.u64(e + 8), b.u64(e + 32))
            } else {
                (b.u32(e + 4).map(u64::from), b.u32(e + 16).map(u64::from))
            };
            let (Some(off), Some(size)) = (off, size) else {
                break;
            };
            end = end.max(off.saturating_add(size));
        }
    }
    if shnum > 0 {
        end = end.max(shoff.saturating_add(shentsize * shnum as u64));
        for i in 0..shnum.min(MAX_TABLE) {
            let Some(e) = entry(shoff, shentsize, i) else {
                break;
            };
            let (ty, off, size) = if wide {
                (b.u32(e + 4), b.u64(e + 24), b.u64(e + 32))
            } else {
                (
                    b.u32(e + 4),
                    b.u32(e + 16).map(u64::from),
                    b.u32(e + 20).map(u64::from),
                )
            };
            let (Some(ty), Some(off), Some(size)) = (ty, off, size) else {
                break;
            };
            // SHT_NOBITS (.bss) takes no room in the file.
            if ty != 8 {
                end = end.max(off.saturating_add(size));
            }
        }
    }
    let (length, truncated) = span(Some(end), d.len());
    Some(Executable {
        format: "elf",
        arch: elf_arch(machine),
        kind: kind.into(),
        bits: if wide { 64 } else { 32 },
        endian: Some(if big { "big" } else { "little" }),
        subsystem: None,
        offset: at,
        length,
        truncated,
    })
}

fn macho_arch(cpu: u32) -> String {
    match cpu {
        7 => "x86",
        0x0100_0007 => "x86-64",
        12 => "arm",
        0x0100_000c => "arm64",
        0x0200_000c => "arm64_32",
        18 => "ppc",
        0x0100_0012 => "ppc64",
        c => return hex(c),
    }
    .to_string()
}

fn macho_type(filetype: u32) -> Option<&'static str> {
    Some(match filetype {
        1 => "rel",
        2 => "exec",
        3 => "fvmlib",
        4 => "core",
        5 => "preload",
        6 => "dyn",
        7 => "dylinker",
        8 => "bundle",
        9 => "dylib_stub",
        10 => "dsym",
        11 => "kext",
        12 => "fileset",
        _ => return None,
    })
}

/// Mach-O: thin (32/64-bit, either byte order) or fat (universal).
fn macho(data: &[u8], at: usize) -> Option<Executable> {
    let d = &data[at..];
    let magic = u32::from_be_bytes(d.get(..4)?.try_into().ok()?);
    match magic {
        0xfeedface => thin(d, at, false, true),
        0xfeedfacf => thin(d, at, true, true),
        0xcefaedfe => thin(d, at, false, false),
        0xcffaedfe => thin(d, at, true, false),
        0xcafebabe => fat(d, at),
        _ => None,
    }
}

fn thin(d: &[u8], at: usize, wide: bool, big: bool) -> Option<Executable> {
    let b = Bytes { d, big };
    let cpu = b.u32(4)?;
    let kind = macho_type(b.u32(12)?)?;
    let (ncmds, sizeofcmds) = (b.u32(16)? as usize, b.u32(20)? as u64);
    let header = if wide { 32 } else { 28 };
    let known = macho_arch(cpu);
    if ncmds == 0 || known.starts_with("0x") || sizeofcmds > 0x100_0000 {
        return None;
    }
    // Segments (LC_SEGMENT 0x1, LC_SEGMENT_64 0x19): fileoff + filesize.
    let mut end = header as u64 + sizeofcmds;
    let mut p = header;
    for _ in 0..ncmds.min(MAX_TABLE) {
        let (Some(cmd), Some(size)) = (b.u32(p), b.u32(p + 4)) else {
            break;
        };
        let seg = match cmd {
            0x1 => b
                .u32(p + 32)
                .map(u64::from)
                .zip(b.u32(p + 36).map(u64::from)),
            0x19 => b.u64(p + 40).zip(b.u64(p + 48)),
            _ => None,
        };
        if let Some((off, size)) = seg {
            end = end.max(off.saturating_add(size));
        }
        if size < 8 {
            break;
        }
        p += size as usize;
    }
    let (length, truncated) = span(Some(end), d.len());
    Some(Executable {
        format: "macho",
        arch: known,
        kind: kind.into(),
        bits: if wide { 64 } else { 32 },
        endian: Some(if big { "big" } else { "little" }),
        subsystem: None,
        offset: at,
        length,
        truncated,
    })
}

/// Fat (universal) Mach-O. `CAFEBABE` also starts Java class files, whose next
/// word (the class file version) is at least 45: a fat header has few slices.
fn fat(d: &[u8], at: usize) -> Option<Executable> {
    let b = Bytes { d, big: true };
    let n = b.u32(4)? as usize;
    if !(1..20).contains(&n) {
        return None;
    }
    let mut arches = Vec::new();
    let mut end = 8 + 20 * n as u64;
    let mut kind = "fat".to_string();
    for i in 0..n {
        let e = 8 + 20 * i;
        let (cpu, off, size) = (b.u32(e)?, b.u32(e + 8)?, b.u32(e + 12)?);
        let arch = macho_arch(cpu);
        if arch.starts_with("0x") {
            return None;
        }
        arches.push(arch);
        end = end.max(u64::from(off) + u64::from(size));
        // The type of the first slice that is present.
        if i == 0 {
            if let Some(t) = d
                .get(off as usize..)
                .and_then(|s| thin_type(s))
                .map(|t| format!("fat_{t}"))
            {
                kind = t;
            }
        }
    }
    let (length, truncated) = span(Some(end), d.len());
    Some(Executable {
        format: "macho",
        arch: arches.join(","),
        kind,
        bits: if arches.iter().any(|a| a.ends_with("64")) {
            64
        } else {
            32
        },
        endian: Some("big"),
        subsystem: None,
        offset: at,
        length,
        truncated,
    })
}

fn thin_type(s: &[u8]) -> Option<&'static str> {
    let magic = u32::from_be_bytes(s.get(..4)?.try_into().ok()?);
    let big = match magic {
        0xfeedface | 0xfeedfacf => true,
        0xcefaedfe | 0xcffaedfe => false,
        _ => return None,
    };
    macho_type(Bytes { d: s, big }.u32(12)?)
}

/// Tiny executables built byte by byte, for the tests (also the end-to-end ones,
/// which have their own copy).
#[cfg(test)]
pub mod samples {
    /// A PE32 (x86, console exe) with one section of `code.len()` bytes at 0x200.
    pub fn pe32(code: &[u8]) -> Vec<u8> {
        let raw = code.len().div_ceil(0x200) * 0x200;
        let mut f = vec![0u8; 0x200 + raw];
        f[..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let c = 0x84;
        f[c..c + 2].copy_from_slice(&0x14cu16.to_le_bytes()); // i386
        f[c + 2..c + 4].copy_from_slice(&1u16.to_le_bytes()); // one section
        f[c + 16..c + 18].copy_from_slice(&224u16.to_le_bytes()); // optional header
        f[c + 18..c + 20].copy_from_slice(&0x0102u16.to_le_bytes()); // exe, 32-bit
        let o = c + 20;
        f[o..o + 2].copy_from_slice(&0x10bu16.to_le_bytes()); // PE32
        f[o + 60..o + 64].copy_from_slice(&0x200u32.to_le_bytes()); // SizeOfHeaders
        f[o + 68..o + 70].copy_from_slice(&3u16.to_le_bytes()); // console
        f[o + 92..o + 96].copy_from_slice(&16u32.to_le_bytes()); // directories
        let s = o + 224;
        f[s..s + 5].copy_from_slice(b".text");
        f[s + 16..s + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        f[s + 20..s + 24].copy_from_slice(&0x200u32.to_le_bytes());
        f[0x200..0x200 + code.len()].copy_from_slice(code);
        f
    }

    /// An ELF64 little-endian x86-64 executable: header, one PT_LOAD program
    /// header covering the whole file, then `code`.
    pub fn elf64(code: &[u8]) -> Vec<u8> {
        let total = 64 + 56 + code.len();
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x400078u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let p = 64;
        f[p..p + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes()); // r-x
        f[p + 16..p + 24].copy_from_slice(&0x400000u64.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&(total as u64).to_le_bytes()); // filesz
        f[p + 40..p + 48].copy_from_slice(&(total as u64).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    /// A 64-bit little-endian arm64 Mach-O executable with one LC_SEGMENT_64
    /// covering `size` bytes from 0 (the header and `size - 104` bytes of zeros).
    pub fn macho64(size: usize) -> Vec<u8> {
        let mut f = vec![0u8; size.max(32 + 72)];
        f[..4].copy_from_slice(&0xfeedfacfu32.to_le_bytes());
        f[4..8].copy_from_slice(&0x0100000cu32.to_le_bytes()); // arm64
        f[12..16].copy_from_slice(&2u32.to_le_bytes()); // MH_EXECUTE
        f[16..20].copy_from_slice(&1u32.to_le_bytes()); // ncmds
        f[20..24].copy_from_slice(&72u32.to_le_bytes()); // sizeofcmds
        let c = 32;
        f[c..c + 4].copy_from_slice(&0x19u32.to_le_bytes()); // LC_SEGMENT_64
        f[c + 4..c + 8].copy_from_slice(&72u32.to_le_bytes());
        f[c + 8..c + 14].copy_from_slice(b"__TEXT");
        f[c + 48..c + 56].copy_from_slice(&(size as u64).to_le_bytes()); // filesize
        f
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    /// 100 bytes of an exploit's header: text, a NOP sled, no magic.
    fn prefix() -> Vec<u8> {
        let mut p = b"GET /cgi-bin/x?".to_vec();
        p.resize(60, b'A');
        p.resize(100, 0x90);
        p
    }

    fn embedded(exe: &[u8], trailer: &[u8]) -> Vec<u8> {
        let mut d = prefix();
        d.extend_from_slice(exe);
        d.extend_from_slice(trailer);
        d
    }

    #[test]
    fn pe_embedded_after_a_prefix() {
        let pe = pe32(&[0xcc; 300]);
        assert_eq!(pe.len(), 0x400);
        let x = scan(&embedded(&pe, b"trailing junk"), 4);
        assert_eq!(x.len(), 1, "{x:?}");
        let x = &x[0];
        assert_eq!(
            (x.format, x.arch.as_str(), x.kind.as_str()),
            ("pe", "x86", "exe")
        );
        assert_eq!((x.bits, x.offset, x.length), (32, 100, pe.len()));
        assert_eq!(x.subsystem.as_deref(), Some("windows_cui"));
        assert!(!x.truncated);
        // A DLL, PE32+ on x86-64.
        let mut dll = pe.clone();
        dll[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        dll[0x96..0x98].copy_from_slice(&0x2022u16.to_le_bytes());
        dll[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
        let x = &scan(&dll, 4)[0];
        assert_eq!(
            (x.arch.as_str(), x.kind.as_str(), x.bits),
            ("x86-64", "dll", 64)
        );
    }

    #[test]
    fn elf_and_macho_embedded() {
        let elf = elf64(b"\x31\xc0\xb0\x3c\x0f\x05");
        let x = scan(&embedded(&elf, &[0xaa; 50]), 4);
        assert_eq!(x.len(), 1, "{x:?}");
        let x = &x[0];
        assert_eq!(
            (x.format, x.arch.as_str(), x.kind.as_str()),
            ("elf", "x86-64", "exec")
        );
        assert_eq!(
            (x.bits, x.endian, x.offset, x.length),
            (64, Some("little"), 100, elf.len())
        );
        let m = macho64(300);
        let x = scan(&embedded(&m, b"zz"), 4);
        assert_eq!(x.len(), 1, "{x:?}");
        let x = &x[0];
        assert_eq!(
            (x.format, x.arch.as_str(), x.kind.as_str()),
            ("macho", "arm64", "exec")
        );
        assert_eq!((x.bits, x.offset, x.length), (64, 100, 300));
    }

    #[test]
    fn truncated_and_several() {
        let pe = pe32(&[0xcc; 300]);
        let x = &scan(&embedded(&pe[..0x300], b""), 4)[0];
        assert!(x.truncated);
        assert_eq!(x.length, 0x300);
        let mut two = embedded(&elf64(b"abc"), b"");
        two.extend_from_slice(&pe);
        let x = scan(&two, 4);
        assert_eq!(x.len(), 2);
        assert_eq!((x[0].format, x[1].format), ("elf", "pe"));
        assert_eq!(scan(&two, 1).len(), 1, "max_executables");
    }

    #[test]
    fn look_alikes_are_not_executables() {
        // MZ without a PE header, ELF magic with a bad class, a Java class file.
        let mut d = b"MZ this is text, not a DOS header ............................".to_vec();
        d.extend_from_slice(b"\x7fELF\x09\x01\x01");
        d.extend_from_slice(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52, 0, 0]);
        d.extend_from_slice(&[0xfe, 0xed, 0xfa, 0xce, 0, 0, 0, 99]);
        assert!(scan(&d, 4).is_empty());
        // Random bytes: nothing (a fixed LCG).
        let mut s = 1u64;
        let r: Vec<u8> = (0..200_000)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 33) as u8
            })
            .collect();
        assert!(scan(&r, 4).is_empty());
    }

    #[test]
    fn the_analyzer_finds_and_extracts() {
        let pe = pe32(&[0xcc; 300]);
        let data = embedded(&pe, b"junk");
        let a = Exe::new(ExeOptions::default());
        // run_on gives downloads_left = 0: finding only.
        let out = decoding::run_on(&a, &data);
        assert_eq!(out.findings.len(), 1);
        let f = &out.findings[0];
        assert_eq!(f.kind, "executable");
        assert_eq!((f.offset, f.length), (Some(100), Some(pe.len() as u64)));
        assert_eq!(f.meta["format"], "pe");
        assert_eq!(f.meta["arch"], "x86");
        assert!(out.downloads.is_empty());
    }

    /// The pipeline with `exe` alone on a payload.
    fn pipeline(o: ExeOptions, max_downloads: usize, payload: &[u8]) -> crate::attack::Attack {
        use crate::analysis::registry::AnalyzerSet;
        let mut a = crate::attack::Captured::test_session_private(payload).seal();
        let set = AnalyzerSet {
            analyze: vec![std::sync::Arc::new(Exe::new(o))],
            ..AnalyzerSet::default()
        };
        let limits = crate::config::AnalysisConfig {
            max_downloads,
            ..Default::default()
        };
        let stats = crate::stats::Stats::default();
        let throttle = crate::stats::Throttle::default();
        crate::analysis::pipeline::analyze(&set, &limits, &stats, &throttle, &mut a);
        a
    }

    #[test]
    fn extracted_downloads_are_analysed_again_within_the_limits() {
        let (pe, elf) = (pe32(&[0xcc; 300]), elf64(b"\x31\xc0"));
        let mut data = embedded(&pe, &prefix());
        let elf_at = data.len();
        data.extend_from_slice(&elf);
        let a = pipeline(ExeOptions::default(), 5, &data);
        let urls: Vec<_> = a
            .analysis
            .downloads
            .iter()
            .map(|d| d.url.as_str())
            .collect();
        assert_eq!(
            urls,
            [
                "extracted:payload@100".to_string(),
                format!("extracted:payload@{elf_at}")
            ]
        );
        let d = &a.analysis.downloads[0];
        assert_eq!((d.analyzer, d.port, d.host.as_str()), ("exe", 0, ""));
        assert_eq!(d.size, pe.len() as u64);
        assert_eq!(
            d.hashes.as_ref().unwrap().sha256,
            crate::attack::Hashes::of(&pe).sha256
        );
        // Two on the payload, one on each extracted file (offset 0), no more
        // downloads from the downloads.
        let f = &a.analysis.findings;
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(f[2..]
            .iter()
            .all(|x| x.offset == Some(0)
                && matches!(x.source, crate::analysis::Source::Download { .. })));
        assert_eq!(
            pipeline(ExeOptions::default(), 1, &data)
                .analysis
                .downloads
                .len(),
            1
        );
        let off = ExeOptions {
            extract: false,
            ..ExeOptions::default()
        };
        let a = pipeline(off, 5, &data);
        assert!(a.analysis.downloads.is_empty());
        assert_eq!(a.analysis.findings.len(), 2);
    }

    #[test]
    fn mangled_headers_never_panic() {
        // Random bytes written over the headers of each sample (a fixed LCG,
        // bounded count): any answer is fine, a panic or overflow is not.
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 33) as usize
        };
        for sample in [pe32(&[0xcc; 64]), elf64(b"xy"), macho64(200)] {
            for _ in 0..3000 {
                let mut d = sample.clone();
                for _ in 0..1 + next() % 8 {
                    let at = next() % 0x180.min(d.len());
                    d[at] = next() as u8;
                }
                // Large table offsets and counts too.
                if next() % 4 == 0 {
                    let at = next() % (d.len() - 8).min(0x100);
                    d[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                }
                for x in scan(&d, 4) {
                    assert!(x.offset + x.length <= d.len());
                }
            }
        }
    }

    #[test]
    fn bounded_scan_speed() {
        // Linear on bytes full of near-magics (the worst case). Printed; the bound
        // only catches a quadratic scan (an optimised build does ~3 ms/MiB here and
        // ~8 ms/MiB on random bytes, docs/analysis.md).
        let mut d = Vec::new();
        while d.len() < 4 << 20 {
            d.extend_from_slice(b"MZ\x7fELF\xfe\xed\xfa\xce\xca\xfe\xba\xbe");
        }
        let t = std::time::Instant::now();
        assert!(scan(&d, 4).is_empty());
        let per_mb = t.elapsed().as_secs_f64() * 1000.0 / 4.0;
        eprintln!("exe scan: {per_mb:.2} ms/MiB (near-magic worst case)");
        assert!(per_mb < 2000.0, "{per_mb} ms/MiB");
    }
}
