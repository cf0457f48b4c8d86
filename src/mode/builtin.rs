//! Built-in canned responses for normal mode, honeytrap's poor man's service emulator.
//!
//! In normal mode honeytrap reads what an attacker sends and then sends the port's canned
//! response: right after connecting for services where the server speaks first (a banner
//! or greeting), otherwise once the client has gone quiet after its request. A response
//! file in the configured response directory wins over these; this table is the fallback
//! so that, out of the box, scanners and bots on commonly attacked ports see something
//! realistic enough to send their real payload.
//!
//! Every entry is static, byte-exact data: length fields, checksums and `Content-Length`
//! headers are consistent with the bytes that follow, and the unit tests at the bottom
//! check that. Host names are neutral (`example.com`, `example.net`, TEST-NET addresses).
//!
//! UDP entries are kept short because UDP replies are capped at the number of bytes the
//! peer sent (no amplification); memcached deliberately has no UDP entry.

use crate::proto::Protocol;

/// One built-in response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinResponse {
    /// Short service name, e.g. "ssh".
    pub service: &'static str,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Ports this response is used for by default.
    pub ports: &'static [u16],
    /// True if the server speaks first (banner sent right after connect), false if it
    /// answers after the client's request.
    pub greeting: bool,
    /// The exact bytes sent.
    pub data: &'static [u8],
}

/// All built-in responses.
pub fn all() -> &'static [BuiltinResponse] {
    &RESPONSES
}

/// The built-in response for (protocol, port), if any.
pub fn lookup(protocol: Protocol, port: u16) -> Option<&'static BuiltinResponse> {
    RESPONSES
        .iter()
        .find(|r| r.protocol == protocol && r.ports.contains(&port))
}

/// Concatenates two byte strings at compile time; `N` must be the sum of their lengths.
///
/// Used to keep HTTP bodies (pretty-printed JSON, HTML) readable as raw literals next to
/// CRLF-terminated headers.
const fn concat<const N: usize>(head: &[u8], tail: &[u8]) -> [u8; N] {
    assert!(head.len() + tail.len() == N, "concat: wrong output length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < head.len() {
        out[i] = head[i];
        i += 1;
    }
    let mut j = 0;
    while j < tail.len() {
        out[head.len() + j] = tail[j];
        j += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Line-based greetings (the server speaks first).
// ---------------------------------------------------------------------------------------

/// vsftpd 3.0.x greeting.
const FTP: &[u8] = b"220 (vsFTPd 3.0.5)\r\n";

/// OpenSSH identification string as sent by Ubuntu 22.04.
const SSH: &[u8] = b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10\r\n";

/// BusyBox-telnetd-like option negotiation followed by a login prompt:
/// IAC WILL ECHO, IAC WILL SUPPRESS-GO-AHEAD, IAC DO NAWS, CRLF, `login: `.
const TELNET: &[u8] = b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x1f\r\nlogin: ";

/// Postfix greeting.
const SMTP: &[u8] = b"220 mail.example.com ESMTP Postfix (Ubuntu)\r\n";

/// Dovecot POP3 greeting.
const POP3: &[u8] = b"+OK Dovecot ready.\r\n";

/// Dovecot IMAP greeting with its pre-login capabilities.
const IMAP: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
LITERAL+ STARTTLS AUTH=PLAIN] Dovecot ready.\r\n";

/// RFB protocol version handshake (RFB 3.8).
const VNC: &[u8] = b"RFB 003.008\n";

/// First line an IRC server sends while it does its ident/DNS lookups.
const IRC: &[u8] = b":irc.example.net NOTICE * :*** Looking up your hostname...\r\n";

/// MySQL 5.7 protocol-10 initial handshake packet.
///
/// Layout: 3-byte little-endian payload length (78) and sequence id 0; then the payload:
/// protocol version 10, server version `5.7.42-log\0`, connection id 11 (LE u32),
/// auth-plugin-data part 1 (8 bytes), filler 0, capability flags lower 16 bits 0xf7ff
/// (everything but CLIENT_SSL), character set 0x21 (utf8_general_ci), status 0x0002
/// (autocommit), capability flags upper 16 bits 0x81ff (PLUGIN_AUTH etc.),
/// auth-plugin-data length 21, 10 reserved zero bytes, auth-plugin-data part 2
/// (12 bytes + NUL), auth plugin name `mysql_native_password\0`.
const MYSQL: &[u8] = b"\x4e\x00\x00\
\x00\
\x0a\
5.7.42-log\x00\
\x0b\x00\x00\x00\
/U>tPrmK\
\x00\
\xff\xf7\
\x21\
\x02\x00\
\xff\x81\
\x15\
\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
L~%Zo3H^*q1w\x00\
mysql_native_password\x00";

// ---------------------------------------------------------------------------------------
// Binary replies (sent after the client's request).
// ---------------------------------------------------------------------------------------

/// TLS alert record: content type 21 (alert), record version TLS 1.2, length 2,
/// level 2 (fatal), description 40 (handshake_failure).
const TLS_ALERT: &[u8] = b"\x15\x03\x03\x00\x02\x02\x28";

/// MS SQL Server TDS PRELOGIN response (SQL Server 2019 RTM, 15.0.2000).
///
/// Header: type 0x04 (tabular result), status 0x01 (end of message), length 43
/// (big-endian, whole packet), SPID 0, packet id 1, window 0.
/// Option tokens (type, BE offset, BE length; offsets relative to the payload start):
/// VERSION @26 len 6, ENCRYPTION @32 len 1, INSTOPT @33 len 1, THREADID @34 len 0,
/// MARS @34 len 1, terminator 0xFF.
/// Option data: version 15.0.2000 sub-build 0, ENCRYPT_NOT_SUP (0x02), INSTOPT 0
/// (instance matches), MARS off.
const MSSQL: &[u8] = b"\x04\x01\x00\x2b\x00\x00\x01\x00\
\x00\x00\x1a\x00\x06\
\x01\x00\x20\x00\x01\
\x02\x00\x21\x00\x01\
\x03\x00\x22\x00\x00\
\x04\x00\x22\x00\x01\
\xff\
\x0f\x00\x07\xd0\x00\x00\
\x02\
\x00\
\x00";

/// PostgreSQL AuthenticationMD5Password: 'R', int32 length 12 (counts itself, not the
/// type byte), int32 5 (MD5), 4-byte salt.
const POSTGRES: &[u8] = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x9a\x3c\x51\xe7";

/// RDP X.224 Connection Confirm in a TPKT.
///
/// TPKT: version 3, reserved 0, length 19 (big-endian, whole packet).
/// X.224: length indicator 14 (bytes after itself), CC TPDU code 0xd0, dst-ref 0,
/// src-ref 0x1234, class 0.
/// RDP_NEG_RSP: type 2, flags 0, length 8 (LE), selectedProtocol PROTOCOL_SSL (1, LE).
const RDP: &[u8] = b"\x03\x00\x00\x13\
\x0e\xd0\x00\x00\x12\x34\x00\
\x02\x00\x08\x00\x01\x00\x00\x00";

/// SMB2 NEGOTIATE response (dialect 2.1) behind a NetBIOS session service header.
///
/// NetBIOS: type 0 (session message), 3-byte big-endian length 158.
/// SMB2 header (64 bytes): ProtocolId `\xfeSMB`, StructureSize 64, CreditCharge 0,
/// Status 0, Command 0 (NEGOTIATE), CreditResponse 1, Flags 1 (SERVER_TO_REDIR),
/// NextCommand 0, MessageId 0, Reserved 0, TreeId 0, SessionId 0, Signature 0.
/// NEGOTIATE response: StructureSize 65, SecurityMode 1 (signing enabled),
/// DialectRevision 0x0210, Reserved 0, ServerGuid, Capabilities 7 (DFS, LEASING,
/// LARGE_MTU), MaxTransact/MaxRead/MaxWriteSize 8 MiB, SystemTime 0,
/// ServerStartTime 0, SecurityBufferOffset 128, SecurityBufferLength 30, Reserved2 0,
/// then a 30-byte SPNEGO NegTokenInit offering NTLMSSP (1.3.6.1.4.1.311.2.2.10).
const SMB: &[u8] = b"\x00\x00\x00\x9e\
\xfeSMB\
\x40\x00\
\x00\x00\
\x00\x00\x00\x00\
\x00\x00\
\x01\x00\
\x01\x00\x00\x00\
\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\
\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
\x41\x00\
\x01\x00\
\x10\x02\
\x00\x00\
\x8d\x3a\x5f\x1c\x27\x4b\x9e\x41\xa3\x62\x0f\xd4\x5b\x19\xc7\x2e\
\x07\x00\x00\x00\
\x00\x00\x80\x00\
\x00\x00\x80\x00\
\x00\x00\x80\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\
\x80\x00\
\x1e\x00\
\x00\x00\x00\x00\
\x60\x1c\
\x06\x06\x2b\x06\x01\x05\x05\x02\
\xa0\x12\
\x30\x10\
\xa0\x0e\
\x30\x0c\
\x06\x0a\x2b\x06\x01\x04\x01\x82\x37\x02\x02\x0a";

/// MQTT CONNACK: packet type 2, remaining length 2, no session present, return code 0
/// (connection accepted).
const MQTT: &[u8] = b"\x20\x02\x00\x00";

/// SOCKS5 method selection: version 5, method 0 (no authentication required).
const SOCKS5: &[u8] = b"\x05\x00";

/// ADB CNXN message header (six little-endian u32): command `CNXN` (0x4e584e43),
/// arg0 version 0x01000000, arg1 maxdata 4096, data length 112, data checksum 10426
/// (sum of the payload bytes), magic 0xb1a7b1bc (command ^ 0xffffffff).
const ADB_HEADER: &[u8] = b"CNXN\
\x00\x00\x00\x01\
\x00\x10\x00\x00\
\x70\x00\x00\x00\
\xba\x28\x00\x00\
\xbc\xb1\xa7\xb1";

/// ADB CNXN payload: the device banner of an Android emulator image.
const ADB_BANNER: &[u8] = b"device::ro.product.name=sdk_phone_x86;\
ro.product.model=Android SDK built for x86;ro.product.device=generic_x86;\x00";

/// ADB CNXN message: header and banner.
static ADB: [u8; ADB_HEADER.len() + ADB_BANNER.len()] = concat(ADB_HEADER, ADB_BANNER);

// ---------------------------------------------------------------------------------------
// Text replies (sent after the client's request).
// ---------------------------------------------------------------------------------------

/// Redis with `requirepass` set.
const REDIS: &[u8] = b"-NOAUTH Authentication required.\r\n";

/// memcached's answer to an unknown command (TCP only).
const MEMCACHED: &[u8] = b"ERROR\r\n";

/// SIP 200 OK (as to an OPTIONS ping) over UDP. Under 350 bytes on purpose.
const SIP_UDP: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1;rport=5060\r\n\
From: <sip:100@example.com>;tag=a1b2c3\r\n\
To: <sip:100@example.com>;tag=d4e5f6\r\n\
Call-ID: 1@example.com\r\n\
CSeq: 1 OPTIONS\r\n\
Server: Asterisk PBX 18.10.0\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n\
Accept: application/sdp\r\n\
Content-Length: 0\r\n\
\r\n";

/// SIP 200 OK (as to an OPTIONS ping) over TCP.
const SIP_TCP: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK-1;rport=5060\r\n\
From: <sip:100@example.com>;tag=a1b2c3\r\n\
To: <sip:100@example.com>;tag=d4e5f6\r\n\
Call-ID: 1@example.com\r\n\
CSeq: 1 OPTIONS\r\n\
Server: Asterisk PBX 18.10.0\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n\
Accept: application/sdp\r\n\
Content-Length: 0\r\n\
\r\n";

/// RTSP camera asking for credentials (CSeq 1, as scanners start with).
const RTSP: &[u8] = b"RTSP/1.0 401 Unauthorized\r\n\
CSeq: 1\r\n\
WWW-Authenticate: Basic realm=\"IP Camera\"\r\n\
Content-Length: 0\r\n\
\r\n";

// ---------------------------------------------------------------------------------------
// HTTP replies.
// ---------------------------------------------------------------------------------------

/// Apache httpd's stock `htdocs/index.html`.
const HTTP_BODY: &[u8] = b"<html><body><h1>It works!</h1></body></html>\n";
const HTTP_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: Apache/2.4.58 (Unix)\r\n\
Accept-Ranges: bytes\r\n\
Content-Length: 45\r\n\
Connection: close\r\n\
Content-Type: text/html\r\n\
\r\n";
/// Plain web server: Apache serving its default page.
static HTTP: [u8; HTTP_HEAD.len() + HTTP_BODY.len()] = concat(HTTP_HEAD, HTTP_BODY);

const PROXY_BODY: &[u8] = b"<html><head><title>407 Proxy Authentication Required</title></head>\
<body><h1>Proxy Authentication Required</h1><p>Sorry, you are not currently allowed to \
request this URL until you have authenticated yourself.</p></body></html>\n";
const PROXY_HEAD: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
Server: squid/5.7\r\n\
Mime-Version: 1.0\r\n\
Content-Type: text/html;charset=utf-8\r\n\
Content-Length: 228\r\n\
X-Squid-Error: ERR_CACHE_ACCESS_DENIED 0\r\n\
Proxy-Authenticate: Basic realm=\"Squid proxy-caching web server\"\r\n\
Connection: close\r\n\
\r\n";
/// Squid demanding proxy credentials.
static PROXY: [u8; PROXY_HEAD.len() + PROXY_BODY.len()] = concat(PROXY_HEAD, PROXY_BODY);

const CWMP_BODY: &[u8] =
    b"<html><head><title>401 Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>\n";
const CWMP_HEAD: &[u8] = b"HTTP/1.1 401 Unauthorized\r\n\
Server: gSOAP/2.8\r\n\
WWW-Authenticate: Digest realm=\"IGD\", qop=\"auth\", nonce=\"5f2b8c1e9a4d7f3b\", \
algorithm=MD5\r\n\
Content-Type: text/html\r\n\
Content-Length: 96\r\n\
Connection: close\r\n\
\r\n";
/// A home router's TR-069 connection-request server demanding digest credentials.
static CWMP: [u8; CWMP_HEAD.len() + CWMP_BODY.len()] = concat(CWMP_HEAD, CWMP_BODY);

const ELASTICSEARCH_BODY: &[u8] = br#"{
  "name" : "es-node-1",
  "cluster_name" : "elasticsearch",
  "cluster_uuid" : "pX3bQ8ZkT2ehY0vLr1M9Aw",
  "version" : {
    "number" : "7.17.18",
    "build_flavor" : "default",
    "build_type" : "deb",
    "build_hash" : "8682172c2130b9a411b1bd5ff37c9792367de6b0",
    "build_date" : "2024-02-02T12:04:59.691750271Z",
    "build_snapshot" : false,
    "lucene_version" : "8.11.1",
    "minimum_wire_compatibility_version" : "6.8.0",
    "minimum_index_compatibility_version" : "6.0.0-beta1"
  },
  "tagline" : "You Know, for Search"
}
"#;
const ELASTICSEARCH_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
X-elastic-product: Elasticsearch\r\n\
content-type: application/json; charset=UTF-8\r\n\
content-length: 540\r\n\
\r\n";
/// Elasticsearch 7.17 answering `GET /`.
static ELASTICSEARCH: [u8; ELASTICSEARCH_HEAD.len() + ELASTICSEARCH_BODY.len()] =
    concat(ELASTICSEARCH_HEAD, ELASTICSEARCH_BODY);

const DOCKER_BODY: &[u8] = br#"{"Platform":{"Name":"Docker Engine - Community"},"Components":[{"Name":"Engine","Version":"24.0.7","Details":{"ApiVersion":"1.43","Arch":"amd64","BuildTime":"2023-10-26T09:08:02.000000000+00:00","Experimental":"false","GitCommit":"311b9ff","GoVersion":"go1.20.10","KernelVersion":"5.15.0-91-generic","MinAPIVersion":"1.12","Os":"linux"}}],"Version":"24.0.7","ApiVersion":"1.43","MinAPIVersion":"1.12","GitCommit":"311b9ff","GoVersion":"go1.20.10","Os":"linux","Arch":"amd64","KernelVersion":"5.15.0-91-generic","BuildTime":"2023-10-26T09:08:02.000000000+00:00"}
"#;
const DOCKER_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Api-Version: 1.43\r\n\
Content-Type: application/json\r\n\
Docker-Experimental: false\r\n\
Ostype: linux\r\n\
Server: Docker/24.0.7 (linux)\r\n\
Content-Length: 562\r\n\
\r\n";
/// Docker Engine API answering `GET /version` without TLS or authentication.
static DOCKER: [u8; DOCKER_HEAD.len() + DOCKER_BODY.len()] = concat(DOCKER_HEAD, DOCKER_BODY);

// ---------------------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------------------

const fn tcp(
    service: &'static str,
    ports: &'static [u16],
    greeting: bool,
    data: &'static [u8],
) -> BuiltinResponse {
    BuiltinResponse {
        service,
        protocol: Protocol::Tcp,
        ports,
        greeting,
        data,
    }
}

const fn udp(service: &'static str, ports: &'static [u16], data: &'static [u8]) -> BuiltinResponse {
    BuiltinResponse {
        service,
        protocol: Protocol::Udp,
        ports,
        greeting: false,
        data,
    }
}

static RESPONSES: [BuiltinResponse; 27] = [
    tcp("ftp", &[21], true, FTP),
    tcp("ssh", &[22, 2222], true, SSH),
    tcp("telnet", &[23, 2323], true, TELNET),
    tcp("smtp", &[25, 587], true, SMTP),
    tcp("http", &[80, 81, 8000, 8080, 8081, 8888], false, &HTTP),
    tcp("pop3", &[110], true, POP3),
    tcp("imap", &[143], true, IMAP),
    tcp("https", &[443, 8443], false, TLS_ALERT),
    tcp("smb", &[445], false, SMB),
    tcp("rtsp", &[554], false, RTSP),
    tcp("socks5", &[1080], false, SOCKS5),
    tcp("mssql", &[1433], false, MSSQL),
    tcp("mqtt", &[1883], false, MQTT),
    tcp("docker", &[2375], false, &DOCKER),
    tcp("http-proxy", &[3128], false, &PROXY),
    tcp("mysql", &[3306], true, MYSQL),
    tcp("rdp", &[3389], false, RDP),
    tcp("sip", &[5060], false, SIP_TCP),
    udp("sip", &[5060], SIP_UDP),
    tcp("postgresql", &[5432], false, POSTGRES),
    tcp("adb", &[5555], false, &ADB),
    tcp("vnc", &[5900, 5901], true, VNC),
    tcp("redis", &[6379], false, REDIS),
    tcp("irc", &[6667], true, IRC),
    tcp("cwmp", &[7547], false, &CWMP),
    tcp("elasticsearch", &[9200], false, &ELASTICSEARCH),
    tcp("memcached", &[11211], false, MEMCACHED),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    fn get(service: &str, protocol: Protocol) -> &'static BuiltinResponse {
        all()
            .iter()
            .find(|r| r.service == service && r.protocol == protocol)
            .unwrap_or_else(|| panic!("no built-in response for {service}/{protocol}"))
    }

    fn tcp_data(service: &str) -> &'static [u8] {
        get(service, Protocol::Tcp).data
    }

    fn be16(b: &[u8]) -> usize {
        u16::from_be_bytes([b[0], b[1]]) as usize
    }

    fn le16(b: &[u8]) -> usize {
        u16::from_le_bytes([b[0], b[1]]) as usize
    }

    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// A parsed HTTP-style (HTTP, RTSP, SIP) message.
    struct Message<'a> {
        version: &'a str,
        code: u16,
        reason: &'a str,
        headers: Vec<(&'a str, &'a str)>,
        body: &'a [u8],
    }

    impl Message<'_> {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    fn parse_message(data: &[u8]) -> Message<'_> {
        let split = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no CRLFCRLF between headers and body");
        let head = std::str::from_utf8(&data[..split]).expect("headers are not UTF-8");
        let body = &data[split + 4..];
        assert!(
            head.split("\r\n").all(|l| !l.contains(['\r', '\n'])),
            "bare CR or LF in headers"
        );
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap();
        let mut parts = status.splitn(3, ' ');
        let version = parts.next().unwrap();
        let code = parts.next().expect("status line without code");
        let reason = parts.next().expect("status line without reason");
        assert!(
            ["HTTP/1.1", "RTSP/1.0", "SIP/2.0"].contains(&version),
            "bad version in {status:?}"
        );
        assert!(
            code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()),
            "bad code in {status:?}"
        );
        assert!(
            !reason.is_empty() && !reason.starts_with(' '),
            "bad reason in {status:?}"
        );
        let headers = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
                assert!(!v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b)));
                (n, v)
            })
            .collect();
        Message {
            version,
            code: code.parse().unwrap(),
            reason,
            headers,
            body,
        }
    }

    fn is_http_style(data: &[u8]) -> bool {
        data.starts_with(b"HTTP/") || data.starts_with(b"RTSP/") || data.starts_with(b"SIP/")
    }

    #[test]
    fn ports_unique_per_protocol() {
        let mut seen = HashSet::new();
        for r in all() {
            assert!(!r.ports.is_empty(), "{} has no ports", r.service);
            for &port in r.ports {
                assert!(
                    seen.insert((r.protocol, port)),
                    "{}/{} declared twice (again by {})",
                    port,
                    r.protocol,
                    r.service
                );
            }
        }
    }

    #[test]
    fn service_names_unique_per_protocol_and_well_formed() {
        let mut seen = HashSet::new();
        for r in all() {
            assert!(seen.insert((r.service, r.protocol)), "{} twice", r.service);
            assert!(r
                .service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
    }

    #[test]
    fn enough_services() {
        let services: BTreeSet<_> = all().iter().map(|r| r.service).collect();
        assert!(services.len() >= 24, "only {} services", services.len());
        for s in [
            "ftp",
            "ssh",
            "telnet",
            "smtp",
            "http",
            "https",
            "pop3",
            "imap",
            "mssql",
            "mysql",
            "postgresql",
            "rdp",
            "vnc",
            "redis",
            "smb",
            "sip",
            "memcached",
            "elasticsearch",
            "docker",
            "mqtt",
            "irc",
            "socks5",
            "http-proxy",
            "adb",
            "cwmp",
        ] {
            assert!(services.contains(s), "missing {s}");
        }
    }

    #[test]
    fn lookup_finds_every_declared_port() {
        for r in all() {
            for &port in r.ports {
                let found = lookup(r.protocol, port).expect("declared port not found");
                assert!(
                    std::ptr::eq(found, r),
                    "{port}/{} maps to {}",
                    r.protocol,
                    found.service
                );
            }
        }
    }

    #[test]
    fn lookup_misses() {
        assert_eq!(lookup(Protocol::Tcp, 4), None);
        assert_eq!(lookup(Protocol::Tcp, 0), None);
        assert_eq!(lookup(Protocol::Tcp, 65535), None);
        assert_eq!(lookup(Protocol::Udp, 22), None);
        assert_eq!(lookup(Protocol::Udp, 80), None);
        // memcached over UDP is an amplification vector: never answered.
        assert_eq!(lookup(Protocol::Udp, 11211), None);
    }

    #[test]
    fn lookup_examples() {
        assert_eq!(lookup(Protocol::Tcp, 22).unwrap().service, "ssh");
        assert_eq!(lookup(Protocol::Tcp, 2222).unwrap().service, "ssh");
        assert_eq!(lookup(Protocol::Tcp, 8888).unwrap().service, "http");
        assert_eq!(lookup(Protocol::Tcp, 8443).unwrap().service, "https");
        assert_eq!(lookup(Protocol::Tcp, 11211).unwrap().service, "memcached");
        let sip = lookup(Protocol::Udp, 5060).unwrap();
        assert_eq!((sip.service, sip.protocol), ("sip", Protocol::Udp));
        let sip = lookup(Protocol::Tcp, 5060).unwrap();
        assert_eq!((sip.service, sip.protocol), ("sip", Protocol::Tcp));
    }

    #[test]
    fn data_non_empty() {
        for r in all() {
            assert!(!r.data.is_empty(), "{} is empty", r.service);
        }
    }

    #[test]
    fn udp_entries_are_short() {
        for r in all().iter().filter(|r| r.protocol == Protocol::Udp) {
            assert!(
                r.data.len() <= 350,
                "{} is {} bytes",
                r.service,
                r.data.len()
            );
            assert!(!r.greeting, "UDP has no greeting: {}", r.service);
        }
    }

    #[test]
    fn greeting_flags() {
        let greeting: BTreeSet<_> = all()
            .iter()
            .filter(|r| r.greeting)
            .map(|r| r.service)
            .collect();
        let expected: BTreeSet<_> = [
            "ftp", "ssh", "telnet", "smtp", "pop3", "imap", "mysql", "vnc", "irc",
        ]
        .into_iter()
        .collect();
        assert_eq!(greeting, expected);
    }

    #[test]
    fn line_greetings_terminated() {
        for s in ["ftp", "ssh", "smtp", "pop3", "imap", "irc"] {
            let d = tcp_data(s);
            assert!(d.ends_with(b"\r\n"), "{s} does not end with CRLF");
            let text = std::str::from_utf8(d).unwrap();
            assert_eq!(text.matches("\r\n").count(), 1, "{s} is not one line");
            assert!(
                !text[..text.len() - 2].contains(['\r', '\n']),
                "{s} has stray CR/LF"
            );
            assert!(text
                .bytes()
                .all(|b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b)));
        }
        assert!(tcp_data("ftp").starts_with(b"220 "));
        assert!(tcp_data("smtp").starts_with(b"220 "));
        assert!(tcp_data("pop3").starts_with(b"+OK "));
        assert!(tcp_data("imap").starts_with(b"* OK [CAPABILITY IMAP4rev1 "));
        assert!(tcp_data("irc").starts_with(b":irc.example.net NOTICE * :"));
        assert_eq!(tcp_data("redis"), b"-NOAUTH Authentication required.\r\n");
        assert_eq!(tcp_data("memcached"), b"ERROR\r\n");
    }

    #[test]
    fn ssh_identification() {
        let d = tcp_data("ssh");
        assert_eq!(d, b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10\r\n");
        // RFC 4253: at most 255 bytes including CRLF.
        assert!(d.len() <= 255);
    }

    #[test]
    fn vnc_version() {
        let d = tcp_data("vnc");
        assert_eq!(d.len(), 12);
        assert_eq!(d, b"RFB 003.008\n");
    }

    #[test]
    fn telnet_negotiation_then_prompt() {
        let d = tcp_data("telnet");
        const IAC: u8 = 0xff;
        // Walk the three-byte option commands at the start.
        let mut i = 0;
        let mut options = Vec::new();
        while i < d.len() && d[i] == IAC {
            assert!((0xfb..=0xfe).contains(&d[i + 1]), "bad verb at {i}");
            options.push((d[i + 1], d[i + 2]));
            i += 3;
        }
        // WILL ECHO, WILL SGA, DO NAWS
        assert_eq!(options, vec![(0xfb, 1), (0xfb, 3), (0xfd, 31)]);
        let rest = &d[i..];
        assert!(!rest.contains(&IAC));
        assert!(rest.ends_with(b"login: "));
    }

    #[test]
    fn http_style_messages_consistent() {
        let mut checked = BTreeSet::new();
        for r in all().iter().filter(|r| is_http_style(r.data)) {
            let m = parse_message(r.data);
            let cl = m
                .header("Content-Length")
                .unwrap_or_else(|| panic!("{} has no Content-Length", r.service));
            let cl: usize = cl.parse().unwrap();
            assert_eq!(cl, m.body.len(), "{}: Content-Length vs body", r.service);
            assert_eq!(
                m.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
                    .count(),
                1
            );
            if m.header("Content-Type").is_some_and(|t| t.contains("json")) {
                serde_json::from_slice::<serde_json::Value>(m.body)
                    .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", r.service));
            }
            if m.header("Content-Type")
                .is_some_and(|t| t.starts_with("text/html"))
            {
                let body = std::str::from_utf8(m.body).unwrap();
                assert!(body.starts_with("<html>") && body.ends_with("</html>\n"));
            }
            checked.insert((r.service, r.protocol));
        }
        let expected: BTreeSet<_> = [
            ("http", Protocol::Tcp),
            ("http-proxy", Protocol::Tcp),
            ("cwmp", Protocol::Tcp),
            ("elasticsearch", Protocol::Tcp),
            ("docker", Protocol::Tcp),
            ("rtsp", Protocol::Tcp),
            ("sip", Protocol::Tcp),
            ("sip", Protocol::Udp),
        ]
        .into_iter()
        .collect();
        assert_eq!(checked, expected);
    }

    #[test]
    fn http_statuses() {
        let m = parse_message(tcp_data("http"));
        assert_eq!((m.version, m.code, m.reason), ("HTTP/1.1", 200, "OK"));
        assert!(m.header("Server").unwrap().starts_with("Apache/2.4."));
        assert_eq!(m.header("Connection"), Some("close"));
        assert!(m.header("Date").is_none());

        let m = parse_message(tcp_data("http-proxy"));
        assert_eq!((m.code, m.reason), (407, "Proxy Authentication Required"));
        assert!(m
            .header("Proxy-Authenticate")
            .unwrap()
            .starts_with("Basic realm=\""));

        let m = parse_message(tcp_data("cwmp"));
        assert_eq!((m.code, m.reason), (401, "Unauthorized"));
        assert!(m
            .header("WWW-Authenticate")
            .unwrap()
            .starts_with("Digest realm=\""));

        let m = parse_message(tcp_data("rtsp"));
        assert_eq!((m.version, m.code), ("RTSP/1.0", 401));
        assert_eq!(m.header("CSeq"), Some("1"));
    }

    #[test]
    fn sip_messages() {
        for (proto, transport) in [(Protocol::Udp, "UDP"), (Protocol::Tcp, "TCP")] {
            let m = parse_message(get("sip", proto).data);
            assert_eq!((m.version, m.code, m.reason), ("SIP/2.0", 200, "OK"));
            for h in ["Via", "From", "To", "Call-ID", "CSeq", "Allow"] {
                assert!(m.header(h).is_some(), "SIP/{transport} lacks {h}");
            }
            assert!(m
                .header("Via")
                .unwrap()
                .starts_with(&format!("SIP/2.0/{transport} ")));
            assert_eq!(m.header("Content-Length"), Some("0"));
            assert!(m.body.is_empty());
        }
    }

    #[test]
    fn elasticsearch_root() {
        let m = parse_message(tcp_data("elasticsearch"));
        assert_eq!(m.code, 200);
        assert!(m
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        let v: serde_json::Value = serde_json::from_slice(m.body).unwrap();
        assert_eq!(v["tagline"], "You Know, for Search");
        assert!(v["name"].is_string() && v["cluster_name"].is_string());
        assert!(v["cluster_uuid"].is_string());
        assert!(v["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with("7.17."));
    }

    #[test]
    fn docker_version() {
        let m = parse_message(tcp_data("docker"));
        assert_eq!(m.code, 200);
        assert_eq!(m.header("Content-Type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(m.body).unwrap();
        assert_eq!(v["ApiVersion"], m.header("Api-Version").unwrap());
        assert!(v["Version"].is_string());
        assert_eq!(v["Os"], "linux");
        assert_eq!(v["Arch"], "amd64");
        assert_eq!(
            m.header("Server"),
            Some(format!("Docker/{} (linux)", v["Version"].as_str().unwrap()).as_str())
        );
    }

    #[test]
    fn mysql_handshake() {
        let d = tcp_data("mysql");
        let len = d[0] as usize | (d[1] as usize) << 8 | (d[2] as usize) << 16;
        assert_eq!(len, d.len() - 4, "payload length");
        assert_eq!(d[3], 0, "sequence id");
        let p = &d[4..];
        assert_eq!(p[0], 10, "protocol version");
        let nul = p[1..].iter().position(|&b| b == 0).unwrap();
        let version = std::str::from_utf8(&p[1..1 + nul]).unwrap();
        assert_eq!(version, "5.7.42-log");
        let mut i = 1 + nul + 1;
        let _conn_id = le32(&p[i..]);
        i += 4;
        let part1 = &p[i..i + 8];
        assert!(!part1.contains(&0));
        i += 8;
        assert_eq!(p[i], 0, "filler");
        i += 1;
        let caps_lo = le16(&p[i..]) as u32;
        i += 2;
        let _charset = p[i];
        i += 1;
        let _status = le16(&p[i..]);
        i += 2;
        let caps_hi = le16(&p[i..]) as u32;
        i += 2;
        let caps = caps_lo | caps_hi << 16;
        assert!(caps & 0x0200 != 0, "CLIENT_PROTOCOL_41");
        assert!(caps & 0x8000 != 0, "CLIENT_SECURE_CONNECTION");
        assert!(caps & 0x0008_0000 != 0, "CLIENT_PLUGIN_AUTH");
        assert!(
            caps & 0x0800 == 0,
            "CLIENT_SSL must be off: we cannot do TLS"
        );
        let auth_len = p[i] as usize;
        assert_eq!(auth_len, 21);
        i += 1;
        assert_eq!(&p[i..i + 10], &[0u8; 10], "reserved");
        i += 10;
        let part2_len = (auth_len - 8).max(13);
        let part2 = &p[i..i + part2_len];
        assert_eq!(part2[part2_len - 1], 0);
        assert!(!part2[..part2_len - 1].contains(&0));
        i += part2_len;
        assert_eq!(&p[i..], b"mysql_native_password\0");
    }

    #[test]
    fn tds_prelogin() {
        let d = tcp_data("mssql");
        assert_eq!(d[0], 0x04, "type: tabular result");
        assert_eq!(d[1], 0x01, "status: end of message");
        assert_eq!(be16(&d[2..]), d.len(), "packet length");
        let payload = &d[8..];
        let mut options = Vec::new();
        let mut i = 0;
        while payload[i] != 0xff {
            options.push((payload[i], be16(&payload[i + 1..]), be16(&payload[i + 3..])));
            i += 5;
        }
        let table_end = i + 1;
        let mut used = 0;
        for &(t, off, len) in &options {
            // Option data lies after the token table and inside the packet.
            assert!(off >= table_end, "option {t} points into the token table");
            assert!(
                off + len <= payload.len(),
                "option {t} points outside the packet"
            );
            used += len;
        }
        // The data area is exactly the option data.
        assert_eq!(table_end + used, payload.len());
        let tokens: Vec<u8> = options.iter().map(|o| o.0).collect();
        assert_eq!(
            tokens,
            vec![0, 1, 2, 3, 4],
            "VERSION ENCRYPTION INSTOPT THREADID MARS"
        );
        // VERSION is 6 bytes, ENCRYPTION says "not supported".
        assert_eq!(be16(&payload[3..]), 6);
        let enc_off = be16(&payload[6..]);
        assert_eq!(payload[enc_off], 0x02, "ENCRYPT_NOT_SUP");
    }

    #[test]
    fn postgres_md5_request() {
        let d = tcp_data("postgresql");
        assert_eq!(d[0], b'R');
        let len = be32(&d[1..]) as usize;
        assert!(len >= 8);
        assert_eq!(len, d.len() - 1, "length counts itself, not the type byte");
        assert_eq!(be32(&d[5..]), 5, "AuthenticationMD5Password");
        assert_eq!(d.len(), 13, "4-byte salt");
    }

    #[test]
    fn rdp_connection_confirm() {
        let d = tcp_data("rdp");
        assert_eq!(&d[..2], &[3, 0], "TPKT version 3");
        assert_eq!(be16(&d[2..]), d.len(), "TPKT length");
        let li = d[4] as usize;
        // The X.224 length indicator counts the bytes after itself.
        assert_eq!(li, d.len() - 5);
        assert_eq!(d[5] & 0xf0, 0xd0, "Connection Confirm");
        let neg = &d[11..];
        assert_eq!(neg[0], 0x02, "TYPE_RDP_NEG_RSP");
        assert_eq!(le16(&neg[2..]), neg.len());
        assert_eq!(le32(&neg[4..]), 1, "PROTOCOL_SSL");
    }

    #[test]
    fn smb2_negotiate_response() {
        let d = tcp_data("smb");
        assert_eq!(d[0], 0, "NetBIOS session message");
        let nb_len = (d[1] as usize) << 16 | (d[2] as usize) << 8 | d[3] as usize;
        assert_eq!(nb_len, d.len() - 4, "NetBIOS length");
        let smb = &d[4..];
        assert_eq!(&smb[..4], b"\xfeSMB");
        assert_eq!(le16(&smb[4..]), 64, "header StructureSize");
        assert_eq!(le32(&smb[8..]), 0, "Status");
        assert_eq!(le16(&smb[12..]), 0, "Command NEGOTIATE");
        assert_eq!(le32(&smb[16..]) & 1, 1, "SMB2_FLAGS_SERVER_TO_REDIR");
        let neg = &smb[64..];
        assert_eq!(le16(neg), 65, "NEGOTIATE response StructureSize");
        let dialect = le16(&neg[4..]);
        assert!(
            [0x0202, 0x0210, 0x02ff].contains(&dialect),
            "dialect {dialect:#x}"
        );
        let sec_off = le16(&neg[56..]);
        let sec_len = le16(&neg[58..]);
        assert_eq!(sec_off, 128, "security buffer right after the fixed part");
        assert_eq!(
            sec_off + sec_len,
            smb.len(),
            "security buffer ends the message"
        );
        let blob = &smb[sec_off..];
        if !blob.is_empty() {
            // GSS-API InitialContextToken: [APPLICATION 0] with a short-form length.
            assert_eq!(blob[0], 0x60);
            assert_eq!(blob[1] as usize, blob.len() - 2);
            assert_eq!(
                &blob[2..10],
                b"\x06\x06\x2b\x06\x01\x05\x05\x02",
                "SPNEGO OID"
            );
            // negTokenInit [0] { SEQUENCE { mechTypes [0] { SEQUENCE OF OID } } }: each
            // nested short-form length covers exactly the rest of the blob.
            let mut rest = &blob[10..];
            for tag in [0xa0, 0x30, 0xa0, 0x30] {
                assert_eq!(rest[0], tag);
                assert_eq!(rest[1] as usize, rest.len() - 2, "DER length of {tag:#x}");
                rest = &rest[2..];
            }
            assert_eq!(
                rest, b"\x06\x0a\x2b\x06\x01\x04\x01\x82\x37\x02\x02\x0a",
                "NTLMSSP"
            );
        }
    }

    #[test]
    fn tls_alert_record() {
        let d = tcp_data("https");
        assert_eq!(d[0], 0x15, "alert");
        assert_eq!(d[1], 0x03);
        assert!((0x01..=0x03).contains(&d[2]), "TLS 1.0..1.2 record version");
        assert_eq!(be16(&d[3..]), 2);
        assert_eq!(d.len(), 7);
        assert_eq!(d[5], 2, "fatal");
        assert_eq!(d[6], 40, "handshake_failure");
    }

    #[test]
    fn adb_cnxn() {
        let d = tcp_data("adb");
        assert!(d.len() >= 24);
        let field = |k: usize| le32(&d[k * 4..]);
        let command = field(0);
        assert_eq!(command, 0x4e58_4e43);
        assert_eq!(&d[..4], b"CNXN");
        assert_eq!(field(1), 0x0100_0000, "version");
        assert_eq!(field(2), 4096, "maxdata");
        let payload = &d[24..];
        assert_eq!(field(3) as usize, payload.len(), "data length");
        let sum: u32 = payload.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(field(4), sum, "data checksum");
        assert_eq!(field(5), command ^ 0xffff_ffff, "magic");
        assert!(payload.starts_with(b"device::"));
        assert!(payload.ends_with(b";\0"));
        for key in [
            "ro.product.name=",
            "ro.product.model=",
            "ro.product.device=",
        ] {
            assert!(
                payload.windows(key.len()).any(|w| w == key.as_bytes()),
                "banner lacks {key}"
            );
        }
    }

    #[test]
    fn small_binary_replies() {
        assert_eq!(tcp_data("mqtt"), &[0x20, 0x02, 0x00, 0x00]);
        assert_eq!(tcp_data("mqtt")[1] as usize, tcp_data("mqtt").len() - 2);
        assert_eq!(tcp_data("socks5"), &[0x05, 0x00]);
    }
}
