//! End-to-end: the `shellcode` classifier (issue 6, point 5). nc in the attacker
//! namespace sends exploit-like payloads to honeytrap (`kind = "listen"`): an
//! overflow with a NOP sled and a jmp-call-pop XOR decoder (x86), a call/pop
//! decoder on r8-r15 (x86-64), and Code Red-style `%u` shellcode that only the
//! `percent` decoder's copy shows; each must give a `shellcode` finding with its
//! offset, technique and architecture in the event. A plain HTTP request, analysed
//! the same way, must give none.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::clients::{nc_once, payload};
use support::daemon::wait_until;
use support::{base_config, require_root, Daemon, NetPair};

fn config() -> String {
    format!(
        "{}[limits]\nread_timeout = \"300ms\"\n\n[ports]\nresponses = 1\n",
        base_config(Path::new("@DATA@"), "8080, 4444, 4445", "")
    )
}

/// The real (not virtual) event whose payload is `data`, analysed.
fn event(d: &Daemon, data: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["honeytrap"]["virtual"] == false && payload(e) == data);
        found.is_some()
    });
    let e = found.unwrap_or_else(|| panic!("no event with the payload:\n{}", d.log()));
    assert_eq!(e["honeytrap"]["analysis"]["done"], true, "{e:#}");
    e
}

fn shellcode_findings(e: &Value) -> Vec<Value> {
    e["honeytrap"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["analyzer"] == "shellcode")
        .cloned()
        .collect()
}

/// jmp-call-pop: `jmp fwd; back: pop esi; xor ecx,ecx; mov cl,64;
/// l: xor byte [esi], 0x5a; inc esi; loop l; jmp payload; fwd: call back`.
fn jmp_call_pop_stub() -> Vec<u8> {
    vec![
        0xEB, 0x0F, // jmp short +15 (to the call)
        0x5E, // pop esi
        0x31, 0xC9, // xor ecx, ecx
        0xB1, 0x40, // mov cl, 64
        0x80, 0x36, 0x5A, // xor byte [esi], 0x5a
        0x46, // inc esi
        0xE2, 0xFA, // loop -6
        0xEB, 0x07, // jmp short payload (past the call)
        0x90, 0x90, // padding inside the stub
        0xE8, 0xEC, 0xFF, 0xFF, 0xFF, // call back (to the pop)
    ]
}

/// The XOR-encoded "payload" after a stub: bytes no text has.
fn encoded(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(37) ^ 0x5A | 0x80)
        .collect()
}

#[test]
fn x86_sled_and_decoder_in_an_overflow() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("scx86");
    let mut d = Daemon::start(&net, &config());

    let mut attack = b"\x00\x00\x00\x90\xffSMB\x72".to_vec();
    attack.extend([b'A'; 200]); // the overflow's filler: text, no sled
    let sled_at = attack.len();
    attack.extend([0x90; 48]);
    attack.extend(jmp_call_pop_stub());
    attack.extend(encoded(64));
    nc_once(&net, &net.hp_v4, 4444, &attack);

    let e = event(&d, &attack);
    let f = shellcode_findings(&e);
    assert_eq!(f.len(), 1, "one region: {e:#}");
    let f = &f[0];
    assert_eq!(f["kind"], "shellcode");
    assert_eq!(f["source"]["kind"], "payload");
    assert_eq!(f["offset"], sled_at as u64, "starts at the sled: {f:#}");
    assert!(f["length"].as_u64().unwrap() >= 48 + 22, "{f:#}");
    assert_eq!(f["meta"]["arch"], "x86");
    let t: Vec<&str> = f["meta"]["techniques"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for want in ["nop_sled", "jmp_call_pop", "decoder_loop"] {
        assert!(t.contains(&want), "{want} in {t:?}");
    }
    assert_eq!(f["meta"]["technique"], "jmp_call_pop");
    assert!(f["meta"]["confidence"].as_f64().unwrap() >= 0.9, "{f:#}");

    // x86-64: call $+5; pop r9; xor rcx,rcx; mov cl,64;
    // l: xor byte [r9+0x10], 0x77; inc r9; loop l.
    let mut x64 = b"POST /vuln HTTP/1.0\r\nContent-Length: 300\r\n\r\n".to_vec();
    let stub_at = x64.len();
    x64.extend([0xE8, 0, 0, 0, 0, 0x41, 0x59, 0x48, 0x31, 0xC9, 0xB1, 0x40]);
    x64.extend([0x41, 0x80, 0x71, 0x10, 0x77, 0x49, 0xFF, 0xC1, 0xE2, 0xF6]);
    x64.extend(encoded(80));
    nc_once(&net, &net.hp_v4, 4445, &x64);
    let e = event(&d, &x64);
    let f = shellcode_findings(&e);
    assert_eq!(f.len(), 1, "{e:#}");
    assert_eq!(f[0]["offset"], stub_at as u64, "{:#}", f[0]);
    assert_eq!(f[0]["meta"]["arch"], "x86_64", "{:#}", f[0]);
    assert_eq!(f[0]["meta"]["technique"], "getpc_call_pop", "{:#}", f[0]);

    // A plain HTTP request: analysed, no shellcode.
    let get = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n";
    nc_once(&net, &net.hp_v4, 8080, get);
    let e = event(&d, get);
    assert!(e["honeytrap"]["analysis"]["runs"].as_u64().unwrap() > 0);
    assert!(shellcode_findings(&e).is_empty(), "{e:#}");
    assert!(d.stop().success());
}

#[test]
fn code_red_style_percent_u_shellcode_in_a_decoded_copy() {
    if !require_root() {
        return;
    }
    let net = NetPair::new("scpct");
    let mut d = Daemon::start(&net, &config());
    // The bytes as %uXXXX (two bytes, little-endian), as Code Red sent them.
    let mut bytes = vec![0x90; 32];
    bytes.extend(jmp_call_pop_stub());
    bytes.extend(encoded(16));
    let mut req = b"GET /default.ida?".to_vec();
    req.extend([b'N'; 64]);
    for w in bytes.chunks(2) {
        req.extend(format!("%u{:02x}{:02x}", w[1], w[0]).as_bytes());
    }
    req.extend(b" HTTP/1.0\r\n\r\n");
    nc_once(&net, &net.hp_v4, 8080, &req);

    let e = event(&d, &req);
    let f = shellcode_findings(&e);
    assert_eq!(f.len(), 1, "only the decoded copy has shellcode: {e:#}");
    assert_eq!(f[0]["source"]["kind"], "virtual", "{:#}", f[0]);
    let copy = f[0]["source"]["id"].clone();
    assert!(e["honeytrap"]["analysis"]["virtual_attacks"]
        .as_array()
        .unwrap()
        .contains(&copy));
    // The offset is into the decoded copy: the sled right after the Ns.
    let at = f[0]["offset"].as_u64().unwrap() as usize;
    assert_eq!(at, "GET /default.ida?".len() + 64, "{:#}", f[0]);
    let t = f[0]["meta"]["techniques"].as_array().unwrap();
    assert!(
        t.contains(&"nop_sled".into()) && t.contains(&"jmp_call_pop".into()),
        "{t:?}"
    );
    assert!(d.stop().success());
}
