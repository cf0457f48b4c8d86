//! The shellcode heuristics: a cheap byte-level prefilter picks candidate offsets
//! (a call, a short jump, an FPU environment store, a segment prefix, a backward
//! branch, a syscall), the iced-x86 decoder checks each candidate's instructions,
//! and hits close to each other are merged into one region with a confidence.
//!
//! Every detector decodes at most [`MAX_INSNS`] instructions per candidate, and at
//! most `max_candidates` candidates are examined per input, so the work per input
//! is bounded whatever the bytes are.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Instructions decoded per candidate, at most.
pub const MAX_INSNS: usize = 64;
/// Hits this close (bytes) belong to one region.
const MERGE_GAP: usize = 32;
/// A call may skip this much data (a string, an API-resolution block) before its pop.
const MAX_CALL_SKIP: i32 = 512;
/// Longest decoder loop body (bytes).
const MAX_LOOP_BODY: usize = 64;
/// How far before `fnstenv` its FPU instruction may be (bytes).
const MAX_FPU_DISTANCE: usize = 24;
/// How far a region's end is extended over code that still decodes (bytes).
const MAX_EXTEND: usize = 1024;

/// What gave a region away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Technique {
    /// `call $+5; pop reg` or a call over data to a pop.
    GetpcCallPop,
    /// A short jump forward to a call back to just after the jump, then a pop.
    JmpCallPop,
    /// An FPU instruction, then `fnstenv`/`fstenv [esp-0xc]`: the FPU's last
    /// instruction pointer lands on the stack.
    Fnstenv,
    /// A run of one-byte NOP equivalents.
    NopSled,
    /// A short backward loop that XORs/ADDs/SUBs memory through a moving pointer.
    DecoderLoop,
    /// `mov reg, fs:[0x30]` (x86) or `gs:[0x60]` (x86-64): the PEB, to find DLLs.
    PebAccess,
    /// `int 0x80`, `int 0x2e`, `syscall`, `sysenter` (supporting evidence).
    Syscall,
    /// `/bin//sh` pushed on the stack or loaded as an immediate.
    BinSh,
}

impl Technique {
    pub fn as_str(self) -> &'static str {
        match self {
            Technique::GetpcCallPop => "getpc_call_pop",
            Technique::JmpCallPop => "jmp_call_pop",
            Technique::Fnstenv => "fnstenv",
            Technique::NopSled => "nop_sled",
            Technique::DecoderLoop => "decoder_loop",
            Technique::PebAccess => "peb_access",
            Technique::Syscall => "syscall",
            Technique::BinSh => "binsh_string",
        }
    }
}

/// One heuristic that matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub technique: Technique,
    pub confidence: f32,
    /// Found decoding as 64-bit code, with something only 64-bit code has.
    pub x64: bool,
}

/// A stretch of the input that looks like shellcode: the merged hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub start: usize,
    /// Best estimate of where the code ends (extended over what still decodes).
    pub end: usize,
    pub x64: bool,
    pub confidence: f32,
    /// The technique of the strongest hit.
    pub technique: Technique,
    /// Every technique seen, sorted.
    pub techniques: Vec<Technique>,
}

/// Scan settings.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub min_sled: usize,
    pub max_candidates: usize,
    pub min_confidence: f32,
}

/// What a scan found, and whether the candidate budget ran out.
#[derive(Debug, Default)]
pub struct Scan {
    pub regions: Vec<Region>,
    pub candidates: usize,
    pub truncated: bool,
}

/// Scan `data` for shellcode.
pub fn scan(data: &[u8], p: &Params) -> Scan {
    let mut hits = sleds(data, p.min_sled);
    let mut out = Scan::default();
    for i in 0..data.len() {
        if !is_candidate(data, i) {
            continue;
        }
        if out.candidates >= p.max_candidates {
            out.truncated = true;
            break;
        }
        out.candidates += 1;
        let h32 = candidate(data, i, 32);
        for h in candidate(data, i, 64) {
            // 64-bit decoding of the same bytes: keep it only when it says more.
            let dup = h32
                .iter()
                .any(|g| g.technique == h.technique && g.start == h.start);
            if h.x64 || !dup {
                hits.push(Hit { x64: true, ..h });
            }
        }
        hits.extend(h32);
    }
    out.regions = merge(data, hits)
        .into_iter()
        .filter(|r| r.confidence >= p.min_confidence)
        .collect();
    out
}

/// The byte-level prefilter: could a detector match at `i`?
fn is_candidate(d: &[u8], i: usize) -> bool {
    let at = |k: usize| d.get(i + k).copied();
    match d[i] {
        0xE8 => call_rel(d, i).is_some_and(|r| (-4..=MAX_CALL_SKIP).contains(&r)),
        0xEB => at(1).is_some_and(|b| (1..0x80).contains(&b)),
        0xE9 => rel32(d, i + 1).is_some_and(|r| r > 0 && r <= 4096),
        0xD9 => at(1).is_some_and(|m| (m >> 3) & 7 == 6 && m >> 6 != 3),
        0x64 | 0x65 => (1..9).any(|k| matches!(at(k), Some(0x30 | 0x60))),
        0xCD => matches!(at(1), Some(0x80 | 0x2E)),
        0x0F => matches!(at(1), Some(0x05 | 0x34)) || at(1) == Some(0x85) && backward32(d, i),
        0xE0 | 0xE1 | 0xE2 | 0x75 | 0x72 | 0x7C => at(1).is_some_and(|b| (0x80..0xFE).contains(&b)),
        // push "//sh" (the end of the path is pushed first); mov r64, "/bin//sh"
        0x68 => d[i + 1..].starts_with(b"//sh") || d[i + 1..].starts_with(b"n/sh"),
        0x48 => at(1).is_some_and(|b| (0xB8..=0xBF).contains(&b)) && d[i + 2..].starts_with(b"/"),
        _ => false,
    }
}

/// `jne rel32` going back a little.
fn backward32(d: &[u8], i: usize) -> bool {
    rel32(d, i + 2).is_some_and(|r| (-(MAX_LOOP_BODY as i32) - 6..0).contains(&r))
}

fn rel32(d: &[u8], at: usize) -> Option<i32> {
    let b = d.get(at..at + 4)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn call_rel(d: &[u8], i: usize) -> Option<i32> {
    rel32(d, i + 1)
}

/// Every detector at one candidate offset, decoding as `bits`-bit code.
fn candidate(d: &[u8], i: usize, bits: u32) -> Vec<Hit> {
    let mut v = Vec::new();
    let found = match d[i] {
        0xE8 => getpc_call(d, i, bits),
        0xEB | 0xE9 => jmp_call_pop(d, i, bits),
        0xD9 => fnstenv(d, i, bits),
        0x64 | 0x65 => peb(d, i, bits),
        0xCD => syscall(d, i, bits),
        0x0F if matches!(d.get(i + 1), Some(0x05 | 0x34)) => syscall(d, i, bits),
        0x68 | 0x48 => binsh(d, i, bits),
        _ => None,
    };
    v.extend(found);
    if matches!(d[i], 0xE0 | 0xE1 | 0xE2 | 0x75 | 0x72 | 0x7C | 0x0F) {
        v.extend(decoder_loop(d, i, bits));
    }
    v
}

/// A decoder at `off` (instruction pointers are offsets into `d`).
fn decoder(d: &[u8], off: usize, bits: u32) -> Decoder<'_> {
    Decoder::with_ip(bits, &d[off..], off as u64, DecoderOptions::NONE)
}

fn decode_one(d: &[u8], off: usize, bits: u32) -> Option<Instruction> {
    if off >= d.len() {
        return None;
    }
    let ins = decoder(d, off, bits).decode();
    (!ins.is_invalid()).then_some(ins)
}

/// Decode from `from` to exactly `to`; None when the stream does not land there or
/// holds an invalid instruction.
fn decode_span(d: &[u8], from: usize, to: usize, bits: u32) -> Option<Vec<Instruction>> {
    let mut dec = decoder(&d[..to], from, bits);
    let mut v = Vec::new();
    while dec.can_decode() && v.len() < MAX_INSNS {
        let ins = dec.decode();
        if ins.is_invalid() {
            return None;
        }
        v.push(ins);
        if ins.next_ip() as usize == to {
            return Some(v);
        }
    }
    None
}

/// Operand `k`'s immediate value, if it is one.
fn imm(ins: &Instruction, k: u32) -> Option<u64> {
    ins.try_immediate(k).ok()
}

/// The GPR family of a register (0 = ax, 1 = cx, ..., 15 = r15), any width.
pub fn family(r: Register) -> Option<u8> {
    let v = r as u32;
    let (al, ax, r15) = (
        Register::AL as u32,
        Register::AX as u32,
        Register::R15 as u32,
    );
    if (al..ax).contains(&v) {
        let k = v - al;
        return Some(match k {
            0..=3 => k,
            4..=7 => k - 4, // ah, ch, dh, bh
            _ => k - 4,     // spl.. r15l
        } as u8);
    }
    if (ax..=r15).contains(&v) {
        return Some(((v - ax) % 16) as u8);
    }
    None
}

const SP: u8 = 4;

/// True when `ins` carries a REX prefix (64-bit code only).
fn has_rex(d: &[u8], ins: &Instruction) -> bool {
    let bytes = &d[ins.ip() as usize..ins.next_ip() as usize];
    bytes
        .iter()
        .find(|b| {
            !matches!(
                b,
                0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65
            )
        })
        .is_some_and(|b| (0x40..=0x4F).contains(b))
}

fn printable_share(b: &[u8]) -> f32 {
    if b.is_empty() {
        return 0.0;
    }
    let n = b
        .iter()
        .filter(|c| (0x20..0x7F).contains(*c) || matches!(c, b'\r' | b'\n' | b'\t'))
        .count();
    n as f32 / b.len() as f32
}

/// Looks like text, not code.
fn texty(b: &[u8]) -> bool {
    printable_share(b) >= 0.8
}

/// The `pop reg` at or just after `target` (at most two instructions in, as in
/// `call $-1`, which lands in its own last byte: `inc eax; pop`).
fn pop_at(d: &[u8], target: usize, bits: u32) -> Option<Instruction> {
    let mut dec = decoder(d, target, bits);
    for _ in 0..3 {
        if !dec.can_decode() {
            return None;
        }
        let ins = dec.decode();
        if ins.is_invalid() {
            return None;
        }
        if ins.mnemonic() == Mnemonic::Pop && ins.op0_kind() == OpKind::Register {
            return family(ins.op0_register()).filter(|&f| f != SP).map(|_| ins);
        }
        if !matches!(
            ins.mnemonic(),
            Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Nop
        ) {
            return None;
        }
    }
    None
}

/// Does code after `at` use the register family `f` within a few instructions?
fn uses_reg(d: &[u8], at: usize, bits: u32, f: u8) -> bool {
    let mut dec = decoder(d, at, bits);
    for _ in 0..6 {
        if !dec.can_decode() {
            return false;
        }
        let ins = dec.decode();
        if ins.is_invalid() {
            return false;
        }
        let mem = family(ins.memory_base()) == Some(f) || family(ins.memory_index()) == Some(f);
        let reg = (0..ins.op_count())
            .any(|k| ins.op_kind(k) == OpKind::Register && family(ins.op_register(k)) == Some(f));
        if mem || reg {
            return true;
        }
    }
    false
}

/// `call $+5; pop reg`, `call $-1` (lands in its own last byte), or a call over a
/// little data to a pop.
fn getpc_call(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let rel = call_rel(d, i)?;
    let target = (i as i64 + 5 + rel as i64) as usize;
    if target <= i || target >= d.len() || texty(&d[target..(target + 16).min(d.len())]) {
        return None;
    }
    let pop = pop_at(d, target, bits)?;
    let f = family(pop.op0_register())?;
    let used = uses_reg(d, pop.next_ip() as usize, bits, f);
    let confidence = match (rel, used) {
        (0, true) | (-4..=-1, true) => 0.8,
        (0, false) | (-4..=-1, false) => 0.6,
        (_, true) => 0.6,
        (_, false) => return None,
    };
    Some(Hit {
        start: i,
        end: pop.next_ip() as usize,
        technique: Technique::GetpcCallPop,
        confidence,
        x64: bits == 64 && has_rex(d, &pop),
    })
}

/// `jmp short fwd; back: pop reg; ...; fwd: call back`.
fn jmp_call_pop(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let (after, fwd) = match d[i] {
        0xEB => (i + 2, i + 2 + *d.get(i + 1)? as usize),
        _ => (i + 5, (i as i64 + 5 + rel32(d, i + 1)? as i64) as usize),
    };
    if *d.get(fwd)? != 0xE8 {
        return None;
    }
    let back = (fwd as i64 + 5 + call_rel(d, fwd)? as i64) as usize;
    if back != after {
        return None;
    }
    let pop = pop_at(d, after, bits)?;
    let x64 = bits == 64 && has_rex(d, &pop);
    Some(Hit {
        start: i,
        end: fwd + 5,
        technique: Technique::JmpCallPop,
        confidence: 0.85,
        x64,
    })
}

/// An FPU instruction, then `fnstenv [esp-0xc]` (its saved FPU instruction pointer
/// is then at `[esp]`, ready to pop).
fn fnstenv(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let ins = decode_one(d, i, bits)?;
    if !matches!(ins.mnemonic(), Mnemonic::Fnstenv | Mnemonic::Fstenv)
        || family(ins.memory_base()) != Some(SP)
        || ins.memory_index() != Register::None
    {
        return None;
    }
    let at_minus_12 = ins.memory_displacement64() as i64 == -12
        || (bits == 32 && ins.memory_displacement32() as i32 == -12);
    let fpu = (2..=MAX_FPU_DISTANCE.min(i)).map(|k| i - k).find(|&s| {
        (0xD8..=0xDF).contains(&d[s]) && decode_span(d, s, i, bits).is_some_and(|v| v.len() <= 6)
    });
    let confidence = match (at_minus_12, fpu.is_some()) {
        (true, true) => 0.9,
        (true, false) => 0.6,
        // Elsewhere on the stack: read back later (`mov reg, [esp+d+12]`); weak.
        (false, true) => 0.45,
        (false, false) => return None,
    };
    Some(Hit {
        start: fpu.unwrap_or(i),
        end: ins.next_ip() as usize,
        technique: Technique::Fnstenv,
        confidence,
        x64: false,
    })
}

/// `mov reg, fs:[0x30]` / `gs:[0x60]` (also through a zeroed register), more so
/// when followed by the load of `PEB.Ldr`.
fn peb(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let (seg, disp, ldr) = if bits == 32 {
        (Register::FS, 0x30, 0x0C)
    } else {
        (Register::GS, 0x60, 0x18)
    };
    let ins = decode_one(d, i, bits)?;
    if !matches!(ins.mnemonic(), Mnemonic::Mov | Mnemonic::Push)
        || ins.segment_prefix() != seg
        || ins.memory_displacement64() != disp
        || ins.memory_index() != Register::None
    {
        return None;
    }
    let mut confidence: f32 = if ins.memory_base() == Register::None {
        0.7
    } else if zeroed_before(d, i, bits, family(ins.memory_base())) {
        0.65
    } else {
        0.45
    };
    let mut end = ins.next_ip() as usize;
    if ins.mnemonic() == Mnemonic::Mov {
        let dst = family(ins.op0_register());
        let mut dec = decoder(d, end, bits);
        for _ in 0..3 {
            let n = dec.decode();
            if n.is_invalid() {
                break;
            }
            if n.mnemonic() == Mnemonic::Mov
                && family(n.memory_base()) == dst
                && n.memory_displacement64() == ldr
            {
                confidence += 0.15;
                end = n.next_ip() as usize;
                break;
            }
        }
    }
    Some(Hit {
        start: i,
        end,
        technique: Technique::PebAccess,
        confidence,
        x64: bits == 64,
    })
}

/// `xor reg, reg` or `sub reg, reg` of family `f` right before `i`.
fn zeroed_before(d: &[u8], i: usize, bits: u32, f: Option<u8>) -> bool {
    (2..=3).filter(|&k| k <= i).any(|k| {
        decode_span(d, i - k, i, bits).is_some_and(|v| {
            v.len() == 1
                && matches!(v[0].mnemonic(), Mnemonic::Xor | Mnemonic::Sub)
                && v[0].op0_kind() == OpKind::Register
                && v[0].op1_kind() == OpKind::Register
                && v[0].op0_register() == v[0].op1_register()
                && family(v[0].op0_register()) == f
        })
    })
}

/// `int 0x80`, `int 0x2e`, `syscall`, `sysenter`: supporting evidence only, a
/// little stronger right after the syscall number is set (`mov al/eax, n`,
/// `push n; pop eax`).
fn syscall(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let ins = decode_one(d, i, bits)?;
    if !matches!(
        ins.mnemonic(),
        Mnemonic::Int | Mnemonic::Syscall | Mnemonic::Sysenter
    ) {
        return None;
    }
    let set_up = (2..=7).filter(|&k| k <= i).any(|k| {
        decode_span(d, i - k, i, bits).is_some_and(|v| {
            let last = v.last().unwrap();
            (last.mnemonic() == Mnemonic::Mov
                && last.op0_kind() == OpKind::Register
                && family(last.op0_register()) == Some(0)
                && last.op1_kind() != OpKind::Register
                && last.op1_kind() != OpKind::Memory)
                || (v.len() >= 2
                    && last.mnemonic() == Mnemonic::Pop
                    && family(last.op0_register()) == Some(0)
                    && v[v.len() - 2].mnemonic() == Mnemonic::Push)
        })
    });
    let x64 = bits == 64 && ins.mnemonic() == Mnemonic::Syscall;
    Some(Hit {
        start: i,
        end: ins.next_ip() as usize,
        technique: Technique::Syscall,
        confidence: if set_up { 0.4 } else { 0.25 },
        x64,
    })
}

/// `push "//sh"; push "/bin"` or `mov rbx, "/bin//sh"`.
fn binsh(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let ins = decode_one(d, i, bits)?;
    let value = match ins.mnemonic() {
        Mnemonic::Push => imm(&ins, 0)? as u32 as u64,
        Mnemonic::Mov if bits == 64 && ins.op1_kind() == OpKind::Immediate64 => imm(&ins, 1)?,
        _ => return None,
    };
    let s = value.to_le_bytes();
    let (first, end) = if ins.mnemonic() == Mnemonic::Mov {
        (&s[..], ins.next_ip() as usize)
    } else {
        // The first push holds the end of the path; the next one its start.
        let next = decode_one(d, ins.next_ip() as usize, bits)?;
        if next.mnemonic() != Mnemonic::Push || !matches!(&s[..4], b"//sh" | b"n/sh") {
            return None;
        }
        let t = (imm(&next, 0)? as u32).to_le_bytes();
        if !matches!(&t, b"/bin" | b"//bi") {
            return None;
        }
        (&s[..4], next.next_ip() as usize)
    };
    if ins.mnemonic() == Mnemonic::Mov && !matches!(first, b"/bin//sh" | b"//bin/sh") {
        return None;
    }
    Some(Hit {
        start: i,
        end,
        technique: Technique::BinSh,
        confidence: 0.6,
        x64: ins.mnemonic() == Mnemonic::Mov,
    })
}

/// Encoded as an assembler would: no legacy prefixes (operand size, segment,
/// lock, rep) and not the undocumented 0x82 alias of 0x80.
fn plain_encoding(d: &[u8], ins: &Instruction) -> bool {
    let b = d[ins.ip() as usize];
    !matches!(
        b,
        0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 | 0x82
    )
}

/// Mnemonics a decoder loop's body is made of.
fn loop_body_op(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Mov | Xor
            | Add
            | Sub
            | Inc
            | Dec
            | Lea
            | Rol
            | Ror
            | Not
            | Cmp
            | Nop
            | Lodsb
            | Lodsw
            | Lodsd
            | Lodsq
            | Stosb
            | Stosw
            | Stosd
            | Stosq
    )
}

/// A short backward loop whose body transforms memory through a pointer it
/// advances: `xor byte [esi+ecx], key; loop`, `xor [eax], ebx; add eax, 4; ...;
/// jnz`, `lodsb; xor al, key; stosb; loop`.
fn decoder_loop(d: &[u8], i: usize, bits: u32) -> Option<Hit> {
    let br = decode_one(d, i, bits)?;
    let counted = matches!(
        br.mnemonic(),
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne
    );
    if !counted && !matches!(br.mnemonic(), Mnemonic::Jne | Mnemonic::Jb | Mnemonic::Jl) {
        return None;
    }
    let target = br.near_branch_target() as usize;
    if target >= i || i - target > MAX_LOOP_BODY || texty(&d[target..i]) {
        return None;
    }
    // Decoders travel inside string overflows: (almost) no NUL bytes.
    if d[target..i].iter().filter(|&&b| b == 0).count() > 1 {
        return None;
    }
    let body = decode_span(d, target, i, bits)?;
    if !body
        .iter()
        .all(|x| loop_body_op(x.mnemonic()) && plain_encoding(d, x))
    {
        return None;
    }
    let advanced = |f: u8| {
        body.iter().any(|x| {
            let dst = x.op0_kind() == OpKind::Register && family(x.op0_register()) == Some(f);
            dst && match x.mnemonic() {
                Mnemonic::Inc | Mnemonic::Dec => true,
                Mnemonic::Add | Mnemonic::Sub => {
                    imm(x, 1).is_some_and(|v| matches!(v as i64, -8..=-1 | 1..=8))
                }
                Mnemonic::Lea => family(x.memory_base()) == Some(f),
                _ => false,
            }
        })
    };
    let crypt = body.iter().find(|x| {
        let op = matches!(
            x.mnemonic(),
            Mnemonic::Xor
                | Mnemonic::Add
                | Mnemonic::Sub
                | Mnemonic::Rol
                | Mnemonic::Ror
                | Mnemonic::Not
        );
        if !op || x.op0_kind() != OpKind::Memory || x.segment_prefix() != Register::None {
            return false;
        }
        let Some(base) = family(x.memory_base()) else {
            return false;
        };
        if base == SP {
            return false;
        }
        let key_ok = match x.op1_kind() {
            OpKind::Register => family(x.op1_register()) != Some(base),
            OpKind::Memory => false,
            _ if x.mnemonic() == Mnemonic::Not => true,
            _ => imm(x, 1).is_some_and(|v| v != 0),
        };
        // `xor byte [esi+ecx], key; loop`: the counter is the index.
        let index = family(x.memory_index());
        let ptr = advanced(base) || index.is_some_and(advanced) || (counted && index == Some(1));
        key_ok && ptr
    });
    let strings = || {
        let has = |ms: &[Mnemonic]| body.iter().any(|x| ms.contains(&x.mnemonic()));
        has(&[
            Mnemonic::Lodsb,
            Mnemonic::Lodsd,
            Mnemonic::Lodsw,
            Mnemonic::Lodsq,
        ]) && has(&[
            Mnemonic::Stosb,
            Mnemonic::Stosd,
            Mnemonic::Stosw,
            Mnemonic::Stosq,
        ]) && body.iter().any(|x| {
            matches!(x.mnemonic(), Mnemonic::Xor | Mnemonic::Add | Mnemonic::Sub)
                && x.op0_kind() == OpKind::Register
                && family(x.op0_register()) == Some(0)
        })
    };
    if crypt.is_none() && !strings() {
        return None;
    }
    let x64 = bits == 64 && body.iter().any(|x| has_rex(d, x));
    Some(Hit {
        start: target,
        end: br.next_ip() as usize,
        technique: Technique::DecoderLoop,
        confidence: 0.8,
        x64,
    })
}

/// One-byte instructions that do nothing harmful to a sled (as x86 code).
fn sled_byte(b: u8) -> bool {
    matches!(
        b,
        0x90..=0x99 | 0x9B | 0x9E | 0x9F | 0xF5 | 0xF8 | 0xF9 | 0xFC | 0xFD | 0xD6
            | 0x27 | 0x2F | 0x37 | 0x3F | 0x40..=0x4F
    )
}

/// Runs of at least `min` sled bytes, not mostly text (`AAAA...` is `inc ecx`,
/// but more often a filler or a word).
fn sleds(d: &[u8], min: usize) -> Vec<Hit> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < d.len() {
        if !sled_byte(d[i]) {
            i += 1;
            continue;
        }
        let mut start = i;
        while i < d.len() && sled_byte(d[i]) {
            i += 1;
        }
        // Text at either end (an `AAAA` filler before the sled) is not part of it.
        let mut end = i;
        while start < end && d[start].is_ascii_graphic() {
            start += 1;
        }
        while end > start && d[end - 1].is_ascii_graphic() {
            end -= 1;
        }
        let run = &d[start..end];
        if run.len() >= min && printable_share(run) <= 0.5 {
            v.push(Hit {
                start,
                end,
                technique: Technique::NopSled,
                confidence: if run.len() >= 4 * min { 0.6 } else { 0.5 },
                x64: false,
            });
        }
    }
    v
}

/// Merge hits into regions and score them.
fn merge(d: &[u8], mut hits: Vec<Hit>) -> Vec<Region> {
    hits.sort_by_key(|h| (h.start, h.end));
    let mut groups: Vec<Vec<Hit>> = Vec::new();
    for h in hits {
        match groups.last_mut() {
            Some(g) if h.start <= g.iter().map(|x| x.end).max().unwrap_or(0) + MERGE_GAP => {
                g.push(h)
            }
            _ => groups.push(vec![h]),
        }
    }
    groups.into_iter().map(|g| region(d, &g)).collect()
}

fn region(d: &[u8], g: &[Hit]) -> Region {
    // The strongest hit; the first one on a tie.
    let best = g.iter().fold(
        &g[0],
        |b, h| if h.confidence > b.confidence { h } else { b },
    );
    let mut techniques: Vec<Technique> = g.iter().map(|h| h.technique).collect();
    techniques.sort();
    techniques.dedup();
    let confidence = (best.confidence + 0.1 * (techniques.len() - 1) as f32).min(0.99);
    let x64 = g.iter().any(|h| h.x64);
    let start = g.iter().map(|h| h.start).min().unwrap();
    let end = g.iter().map(|h| h.end).max().unwrap();
    Region {
        start,
        end: extend(d, end, if x64 { 64 } else { 32 }),
        x64,
        confidence,
        technique: best.technique,
        techniques,
    }
}

/// Where the code that starts at `end` stops: at an invalid instruction, four zero
/// bytes or a stretch of text, at most [`MAX_EXTEND`] bytes on.
fn extend(d: &[u8], end: usize, bits: u32) -> usize {
    let cap = (end + MAX_EXTEND).min(d.len());
    if end >= cap {
        return end.min(d.len());
    }
    let mut dec = decoder(&d[..cap], end, bits);
    let mut at = end;
    while dec.can_decode() {
        if d[at..].starts_with(&[0, 0, 0, 0])
            || texty(&d[at..(at + 16).min(d.len())]) && d.len() - at >= 16
        {
            break;
        }
        let ins = dec.decode();
        if ins.is_invalid() {
            break;
        }
        at = ins.next_ip() as usize;
    }
    at
}
