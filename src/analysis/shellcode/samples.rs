//! Test corpora for the shellcode classifier, built here from a fixed seed:
//! shellcode the tests assemble themselves (GetPC stubs, decoder loops, sleds,
//! PEB walks, syscalls; x86 and x86-64, with varied registers, offsets, keys and
//! padding) and benign look-alikes (HTTP, TLS handshakes, SMB negotiates, text,
//! random bytes).

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.range(0, xs.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// A key byte that is neither 0 nor a NUL-maker.
    pub fn key(&mut self) -> u8 {
        loop {
            let k = self.byte();
            if k != 0 {
                return k;
            }
        }
    }
}

/// One assembled sample: the bytes and where the shellcode is in them.
pub struct Sample {
    pub name: String,
    pub data: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

// x86 registers by number; esp (4) and ebp (5) are left out where the encoding
// would need a SIB byte or a displacement.
const PTR_REGS: [u8; 5] = [0, 2, 3, 6, 7];
const FPU: [&[u8]; 6] = [
    &[0xD9, 0xEE],
    &[0xD9, 0xD0],
    &[0xD9, 0xE8],
    &[0xDA, 0xC3],
    &[0xD9, 0xC9],
    &[0xDB, 0xD1],
];

fn le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// The decoding step in a body: one of several forms, on `[r+disp]`.
fn crypt_op(rng: &mut Rng, r: u8, disp: u8, key_reg: Option<u8>) -> Vec<u8> {
    match key_reg {
        // xor/add/sub dword [r+disp], key_reg
        Some(k) => {
            let op = rng.pick(&[0x31u8, 0x01, 0x29]);
            vec![op, 0x40 | (k << 3) | r, disp]
        }
        // xor/add/sub byte [r+disp], imm8
        None => {
            let ext = rng.pick(&[6u8, 0, 5]);
            vec![0x80, 0x40 | (ext << 3) | r, disp, rng.key()]
        }
    }
}

/// Advance pointer `r` by `n`: `inc r` (n = 1), `add r, n` or `lea r, [r+n]`.
fn advance(rng: &mut Rng, r: u8, n: u8) -> Vec<u8> {
    match (n, rng.range(0, 3)) {
        (1, 0) => vec![0x40 + r],
        (_, 1) => vec![0x8D, 0x40 | (r << 3) | r, n],
        _ => vec![0x83, 0xC0 | r, n],
    }
}

/// Close a loop whose body starts at `body_start` in `code`: `loop` or
/// `dec ecx; jnz`.
fn close_loop(rng: &mut Rng, code: &mut Vec<u8>, body_start: usize) {
    if rng.range(0, 2) == 0 {
        let rel = body_start as i64 - (code.len() as i64 + 2);
        code.extend([0xE2, rel as i8 as u8]);
    } else {
        code.push(0x49);
        let rel = body_start as i64 - (code.len() as i64 + 2);
        code.extend([0x75, rel as i8 as u8]);
    }
}

/// A decoder loop over pointer `r` (the counter in ecx).
fn decoder_body(rng: &mut Rng, code: &mut Vec<u8>, r: u8, key_reg: Option<u8>) {
    code.extend([0x31, 0xC9, 0xB1, rng.range(0x20, 0xF0) as u8]); // xor ecx,ecx; mov cl,n
    let body = code.len();
    let disp = rng.range(0, 0x30) as u8;
    code.extend(crypt_op(rng, r, disp, key_reg));
    let step = if key_reg.is_some() { 4 } else { 1 };
    code.extend(advance(rng, r, step));
    close_loop(rng, code, body);
}

/// `call $+5; pop r; decoder`.
fn call_pop(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&PTR_REGS);
    let mut c = vec![0xE8, 0, 0, 0, 0, 0x58 + r];
    decoder_body(rng, &mut c, r, None);
    c
}

/// `jmp fwd; back: pop r; decoder; jmp payload; fwd: call back; payload`.
fn jmp_call_pop(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&PTR_REGS);
    let mut dec = vec![0x58 + r];
    decoder_body(rng, &mut dec, r, None);
    dec.extend([0xEB, 0x05]);
    let mut c = vec![0xEB, dec.len() as u8];
    c.extend(&dec);
    let rel = -(dec.len() as i32 + 5);
    c.push(0xE8);
    c.extend(le(rel as u32));
    c
}

/// Shikata-ga-nai-like: an FPU instruction, the key in a register, `fnstenv
/// [esp-0xc]; pop r`, then a dword decoder.
fn fnstenv(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&[0u8, 2, 3, 6, 7]);
    let others: Vec<u8> = [0u8, 2, 3, 6, 7].into_iter().filter(|&x| x != r).collect();
    let k = rng.pick(&others);
    let mut c = rng.pick(&FPU).to_vec();
    let mut key = vec![0xB8 + k];
    key.extend(le(rng.next_u64() as u32 | 1));
    let fst = [0xD9, 0x74, 0x24, 0xF4];
    // The key load may come before or after fnstenv, as shikata varies it.
    if rng.range(0, 2) == 0 {
        c.extend(&key);
        c.extend(fst);
    } else {
        c.extend(fst);
        c.extend(&key);
    }
    c.push(0x58 + r);
    decoder_body(rng, &mut c, r, Some(k));
    c
}

/// A decoder with `lodsb; xor al, key; stosb; loop` (esi/edi set by `mov`).
fn lods_stos(rng: &mut Rng) -> Vec<u8> {
    let mut c = vec![0xE8, 0, 0, 0, 0, 0x5E]; // call $+5; pop esi
    c.extend([0x89, 0xF7]); // mov edi, esi
    c.extend([0x31, 0xC9, 0xB1, rng.range(0x20, 0xF0) as u8]);
    let body = c.len();
    c.extend([0xAC, rng.pick(&[0x34u8, 0x04, 0x2C]), rng.key(), 0xAA]);
    close_loop(rng, &mut c, body);
    c
}

/// A NOP sled (0x90 or mixed one-byte NOPs) in front of `code`.
fn sled(rng: &mut Rng, code: Vec<u8>) -> Vec<u8> {
    let n = rng.range(16, 80);
    let mixed = [
        0x90u8, 0x91, 0x92, 0x93, 0x96, 0x97, 0x99, 0xF8, 0xF9, 0xFC, 0xF5, 0x98,
    ];
    let mut c: Vec<u8> = if rng.range(0, 2) == 0 {
        vec![0x90; n]
    } else {
        (0..n).map(|_| rng.pick(&mixed)).collect()
    };
    c.extend(code);
    c
}

/// x86 `mov eax, fs:[0x30]; mov eax, [eax+0xc]` (or through a zeroed register).
fn peb32(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&[0u8, 2, 3, 6, 7]);
    let mut c = if rng.range(0, 2) == 0 {
        // mov r, fs:[0x30]
        vec![0x64, 0x8B, (r << 3) | 5, 0x30, 0, 0, 0]
    } else {
        // xor r,r; mov r, fs:[r+0x30]
        vec![
            0x31,
            0xC0 | (r << 3) | r,
            0x64,
            0x8B,
            0x40 | (r << 3) | r,
            0x30,
        ]
    };
    c.extend([0x8B, 0x40 | (r << 3) | r, 0x0C]); // mov r, [r+0xc]
    c.extend([0x8B, 0x40 | (r << 3) | r, 0x14]); // mov r, [r+0x14]
    c
}

/// Linux x86 execve("/bin//sh") through `int 0x80`.
fn execve32(rng: &mut Rng) -> Vec<u8> {
    let mut c = vec![0x31, 0xC0, 0x50];
    c.extend(if rng.range(0, 2) == 0 {
        b"\x68//sh\x68/bin".to_vec()
    } else {
        b"\x68n/sh\x68//bi".to_vec()
    });
    c.extend([
        0x89, 0xE3, 0x50, 0x53, 0x89, 0xE1, 0x99, 0xB0, 0x0B, 0xCD, 0x80,
    ]);
    c
}

/// x86-64: `call $+5; pop r8..r15` (REX) and a byte decoder on it.
fn call_pop64(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&[0u8, 2, 3, 6, 7]);
    let mut c = vec![0xE8, 0, 0, 0, 0, 0x41, 0x58 + r]; // pop r8+r
    c.extend([0x48, 0x31, 0xC9, 0xB1, rng.range(0x20, 0xF0) as u8]);
    let body = c.len();
    let disp = rng.range(0, 0x30) as u8;
    c.extend([0x41, 0x80, 0x70 | r, disp, rng.key()]); // xor byte [r8+r+disp], key
    c.extend([0x49, 0xFF, 0xC0 | r]); // inc r8+r
    close_loop_64(rng, &mut c, body);
    c
}

fn close_loop_64(rng: &mut Rng, code: &mut Vec<u8>, body_start: usize) {
    if rng.range(0, 2) == 0 {
        let rel = body_start as i64 - (code.len() as i64 + 2);
        code.extend([0xE2, rel as i8 as u8]);
    } else {
        code.extend([0x48, 0xFF, 0xC9]); // dec rcx
        let rel = body_start as i64 - (code.len() as i64 + 2);
        code.extend([0x75, rel as i8 as u8]);
    }
}

/// Metasploit's x64/xor layout: `lea rax, [rip-..]; mov rbx, key64;
/// xor [rax+d], rbx; sub rax, -8; loop`.
fn xor64(rng: &mut Rng) -> Vec<u8> {
    let mut c = vec![0x48, 0x31, 0xC9, 0x48, 0x81, 0xE9];
    c.extend(le((-(rng.range(4, 60) as i32)) as u32));
    c.extend([0x48, 0x8D, 0x05, 0xEF, 0xFF, 0xFF, 0xFF]);
    c.extend([0x48, 0xBB]);
    c.extend(rng.next_u64().to_le_bytes());
    let body = c.len();
    c.extend([0x48, 0x31, 0x58, rng.range(0x10, 0x30) as u8]);
    if rng.range(0, 2) == 0 {
        c.extend([0x48, 0x2D, 0xF8, 0xFF, 0xFF, 0xFF]); // sub rax, -8
    } else {
        c.extend([0x48, 0x83, 0xC0, 0x08]); // add rax, 8
    }
    let rel = body as i64 - (c.len() as i64 + 2);
    c.extend([0xE2, rel as i8 as u8]);
    c
}

/// x86-64 `mov rax, gs:[0x60]; mov rax, [rax+0x18]`: the PEB and its Ldr.
fn peb64(rng: &mut Rng) -> Vec<u8> {
    let r = rng.pick(&[0u8, 2, 3, 6, 7]);
    let mut c = vec![0x65, 0x48, 0x8B, 0x04 | (r << 3), 0x25, 0x60, 0, 0, 0];
    c.extend([0x48, 0x8B, 0x40 | (r << 3) | r, 0x18]);
    c.extend([0x48, 0x8B, 0x40 | (r << 3) | r, 0x20]);
    c
}

/// Linux x86-64 execve("/bin//sh") through `syscall`.
fn execve64(_: &mut Rng) -> Vec<u8> {
    let mut c = vec![0x48, 0x31, 0xD2, 0x48, 0xBB];
    c.extend(b"/bin//sh");
    c.extend([
        0x53, 0x48, 0x89, 0xE7, 0x52, 0x57, 0x48, 0x89, 0xE6, 0x6A, 0x3B, 0x58, 0x0F, 0x05,
    ]);
    c
}

/// The families: name, 64-bit, generator.
type Gen = fn(&mut Rng) -> Vec<u8>;
pub const FAMILIES: [(&str, bool, Gen); 12] = [
    ("call_pop_xor_byte", false, call_pop),
    ("jmp_call_pop_xor_byte", false, jmp_call_pop),
    ("fnstenv_xor_dword", false, fnstenv),
    ("lods_stos_loop", false, lods_stos),
    ("sled_call_pop", false, |r| {
        let c = call_pop(r);
        sled(r, c)
    }),
    ("sled_fnstenv", false, |r| {
        let c = fnstenv(r);
        sled(r, c)
    }),
    ("peb32", false, peb32),
    ("execve32", false, execve32),
    ("call_pop64", true, call_pop64),
    ("xor64", true, xor64),
    ("peb64", true, peb64),
    ("execve64", true, execve64),
];

/// `n` samples per family, each wrapped like an exploit: a header (text or
/// random bytes), padding, the shellcode, then an encoded payload (random bytes).
pub fn shellcode(seed: u64, n: usize) -> Vec<(Sample, bool)> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    for (name, x64, gen) in FAMILIES {
        for k in 0..n {
            let mut data = match rng.range(0, 3) {
                0 => b"POST /cgi-bin/vuln HTTP/1.0\r\nContent-Length: 999\r\n\r\n".to_vec(),
                1 => {
                    let n = rng.range(0, 200);
                    rng.bytes(n)
                }
                _ => vec![b'A'; rng.range(0, 300)],
            };
            let start = data.len();
            data.extend(gen(&mut rng));
            let end = data.len();
            let tail = rng.range(0, 400);
            data.extend(rng.bytes(tail));
            v.push((
                Sample {
                    name: format!("{name}#{k}"),
                    data,
                    start,
                    end,
                },
                x64,
            ));
        }
    }
    v
}

/// `n` random buffers of `len` bytes.
pub fn random(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.bytes(len)).collect()
}

const PATHS: [&str; 6] = [
    "/",
    "/index.html",
    "/wp-login.php",
    "/api/v1/items?id=42&sort=asc",
    "/cgi-bin/test.cgi",
    "/.env",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "curl/8.5.0",
    "Wget/1.21.3",
    "python-requests/2.31.0",
];

/// HTTP requests and responses (headers, forms, JSON, HTML, UTF-8 text).
pub fn http(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|k| {
            let path = rng.pick(&PATHS);
            let agent = rng.pick(&AGENTS);
            match k % 4 {
                0 => format!("GET {path} HTTP/1.1\r\nHost: 192.0.2.{}\r\nUser-Agent: {agent}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: close\r\n\r\n", rng.range(1, 255)).into_bytes(),
                1 => {
                    let body = format!("user=admin&pass={}&submit=Log+In", rng.next_u64());
                    format!("POST {path} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: {agent}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
                }
                2 => {
                    let body = format!("{{\"id\":{},\"name\":\"Ünïcödé テスト данные\",\"tags\":[\"a\",\"b\"],\"ok\":true}}", rng.next_u64());
                    format!("POST /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
                }
                _ => {
                    let body = format!("<!DOCTYPE html><html><head><title>Welcome {}</title></head><body><h1>It works!</h1><p>Café — naïve résumé. 你好，世界。</p></body></html>", rng.next_u64());
                    format!("HTTP/1.1 200 OK\r\nServer: Apache/2.4.57 (Debian)\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
                }
            }
        })
        .collect()
}

fn u16be(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

/// A TLS 1.2/1.3 ClientHello as browsers send it (random, session id and key
/// share random), or a ServerHello with a certificate-sized random blob cut to
/// 128 bytes.
pub fn tls(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|k| {
            let mut hs = vec![0x03, 0x03];
            hs.extend(rng.bytes(32));
            hs.push(32);
            hs.extend(rng.bytes(32));
            if k % 2 == 0 {
                let suites: [u16; 15] = [
                    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
                    0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
                ];
                hs.extend(u16be(suites.len() * 2));
                suites.iter().for_each(|s| hs.extend(s.to_be_bytes()));
                hs.extend([1, 0]);
                let host = format!("www{}.example.org", rng.range(0, 1000));
                let mut ext = Vec::new();
                ext.extend([0, 0]);
                ext.extend(u16be(host.len() + 5));
                ext.extend(u16be(host.len() + 3));
                ext.push(0);
                ext.extend(u16be(host.len()));
                ext.extend(host.as_bytes());
                ext.extend([
                    0x00, 0x0A, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1D, 0x00, 0x17, 0x00, 0x18,
                ]);
                ext.extend([0x00, 0x0B, 0x00, 0x02, 0x01, 0x00]);
                ext.extend([
                    0x00, 0x0D, 0x00, 0x0E, 0x00, 0x0C, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05,
                    0x03, 0x08, 0x05,
                ]);
                ext.extend([0x00, 0x10, 0x00, 0x0E, 0x00, 0x0C, 0x02, b'h', b'2', 0x08]);
                ext.extend(b"http/1.1");
                ext.extend([0x00, 0x2B, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
                ext.extend([0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1D, 0x00, 0x20]);
                ext.extend(rng.bytes(32));
                hs.extend(u16be(ext.len()));
                hs.extend(ext);
                record(0x01, &hs)
            } else {
                hs.extend([
                    0x13, 0x01, 0x00, 0x00, 0x2E, 0x00, 0x2B, 0x00, 0x02, 0x03, 0x04, 0x00, 0x33,
                    0x00, 0x24, 0x00, 0x1D, 0x00, 0x20,
                ]);
                hs.extend(rng.bytes(32));
                let mut r = record(0x02, &hs);
                r.extend([0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
                r.extend([0x17, 0x03, 0x03, 0x00, 0x80]);
                r.extend(rng.bytes(128));
                r
            }
        })
        .collect()
}

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut hs = vec![kind, 0];
    hs.extend(u16be(body.len()));
    hs.extend(body);
    let mut r = vec![0x16, 0x03, 0x01];
    r.extend(u16be(hs.len()));
    r.extend(hs);
    r
}

/// SMB1 and SMB2 negotiate requests behind a NetBIOS session header.
pub fn smb(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|k| {
            let mut m = Vec::new();
            if k % 2 == 0 {
                m.extend([0xFF, b'S', b'M', b'B', 0x72, 0, 0, 0, 0, 0x18, 0x53, 0xC8]);
                m.extend([0; 12]);
                m.extend([0xFF, 0xFE, 0, 0]);
                m.extend(rng.bytes(2)); // pid
                m.extend([0, 0, 0, 0]);
                let mut dialects = Vec::new();
                for d in [
                    "PC NETWORK PROGRAM 1.0",
                    "LANMAN1.0",
                    "Windows for Workgroups 3.1a",
                    "LM1.2X002",
                    "LANMAN2.1",
                    "NT LM 0.12",
                    "SMB 2.002",
                    "SMB 2.???",
                ] {
                    dialects.push(2);
                    dialects.extend(d.as_bytes());
                    dialects.push(0);
                }
                m.push(0);
                m.extend((dialects.len() as u16).to_le_bytes());
                m.extend(dialects);
            } else {
                m.extend([
                    0xFE, b'S', b'M', b'B', 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]);
                m.extend((rng.range(0, 10) as u64).to_le_bytes()); // message id
                m.extend([0, 0, 0, 0, 0xFF, 0xFE, 0, 0]);
                m.extend([0; 8]); // session id
                m.extend([0; 16]); // signature
                m.extend([0x24, 0, 5, 0, 1, 0, 0, 0, 0x7F, 0, 0, 0]);
                m.extend(rng.bytes(16)); // client guid
                m.extend([0x70, 0, 0, 0, 2, 0, 0, 0]);
                for d in [0x0202u16, 0x0210, 0x0300, 0x0302, 0x0311] {
                    m.extend(d.to_le_bytes());
                }
                m.extend([0, 0]);
                m.extend([1, 0, 0x26, 0, 0, 0, 0, 0, 1, 0, 0x20, 0, 1, 0]);
                m.extend(rng.bytes(32)); // preauth salt
            }
            let mut p = vec![0, 0];
            p.extend(u16be(m.len()));
            p.extend(m);
            p
        })
        .collect()
}

/// Text: the repository's own documentation and sources, cut in 1 KiB pieces.
pub fn text() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in ["docs", "src/analysis", "src"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut files: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            if let Ok(b) = std::fs::read(&f) {
                v.extend(b.chunks(1024).map(<[u8]>::to_vec));
            }
        }
    }
    v
}
