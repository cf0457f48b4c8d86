//! The compiled port policy: per (protocol, port) the mode, the canned response and
//! when to send it. Built once per (re)load, so no file is read per connection.

use super::ports::PolicyIndex;
use super::{Config, Greeting, Invalid, MAX_RESPONSE_BYTES};
use crate::attack::Mode;
use crate::mode::builtin;
use crate::proto::Protocol;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where a proxy map relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The map's name (`[proxy.<name>]`).
    pub name: String,
    /// IP address or host name.
    pub host: String,
    /// None: the port the attacker connected to.
    pub port: Option<u16>,
    /// None: the attacker's protocol.
    pub protocol: Option<Protocol>,
}

/// Everything a server needs to know about one (protocol, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHandling {
    pub mode: Mode,
    /// The target of a proxy port.
    pub proxy: Option<Arc<ProxyTarget>>,
    /// The canned response of normal mode.
    pub response: Bytes,
    /// Send the response right after connect instead of after silence.
    pub greeting: bool,
    /// How many times the response is sent before an idle session is closed.
    pub max_responses: u32,
}

/// One rule with its response file already read.
#[derive(Debug, Clone)]
struct Rule {
    mode: Mode,
    proxy: Option<Arc<ProxyTarget>>,
    response: Option<Bytes>,
    greeting: Option<Greeting>,
    responses: Option<u32>,
}

/// The port policy of one configuration generation.
#[derive(Debug, Clone)]
pub struct PortPolicy {
    index: PolicyIndex,
    rules: Vec<Rule>,
    default_mode: Mode,
    greeting: Greeting,
    responses: u32,
    /// Files `<port>_<proto>` from `ports.response_dir`.
    dir_responses: HashMap<(Protocol, u16), Bytes>,
}

const NEWLINE: &[u8] = b"\n";

impl PortPolicy {
    /// Compile the `[ports]` section, reading response files.
    pub fn build(config: &Config) -> Result<PortPolicy, Invalid> {
        let p = &config.ports;
        if let Some(why) = super::ports::mode_refused(p.default_mode) {
            return Err(Invalid::new("ports.default_mode", why));
        }
        // Rules first, then the proxy maps, all in one index so overlaps are found.
        let mut sources: Vec<RuleSource> = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleSource {
                key: format!("ports.rule[{i}]"),
                protocol: &r.protocol,
                ports: &r.ports,
                mode: r.mode,
                proxy: None,
                response: r.response.as_deref(),
                greeting: r.greeting,
                responses: r.responses,
            })
            .collect();
        for (name, m) in &config.proxy {
            sources.push(RuleSource {
                key: format!("proxy.{name}"),
                protocol: &m.protocol,
                ports: &m.ports,
                mode: Mode::Proxy,
                proxy: Some(Arc::new(ProxyTarget {
                    name: name.clone(),
                    host: m.target_host.trim().to_string(),
                    port: m.target_port,
                    protocol: m.target_protocol,
                })),
                response: m.response.as_deref(),
                greeting: m.greeting,
                responses: m.responses,
            });
        }
        let mut index = PolicyIndex::default();
        let mut rules = Vec::with_capacity(sources.len());
        for (i, r) in sources.iter().enumerate() {
            let key = &r.key;
            if r.proxy.is_none() {
                if let Some(why) = super::ports::mode_refused(r.mode) {
                    return Err(Invalid::new(format!("{key}.mode"), why));
                }
            }
            let protocols = r.protocol.list();
            if protocols.is_empty() {
                return Err(Invalid::new(
                    format!("{key}.protocol"),
                    "must name tcp, udp or both",
                ));
            }
            if r.ports.is_empty() {
                return Err(Invalid::new(
                    format!("{key}.ports"),
                    "must name at least one port",
                ));
            }
            for (j, range) in r.ports.iter().enumerate() {
                for proto in &protocols {
                    if let Err(owner) = index.insert(*proto, *range, i) {
                        let other = if owner == i {
                            "another entry of the same rule".to_string()
                        } else {
                            sources[owner].key.clone()
                        };
                        return Err(Invalid::new(
                            format!("{key}.ports[{j}]"),
                            format!("{proto} {range} overlaps {other}"),
                        ));
                    }
                }
            }
            let response = match r.response {
                Some(path) => Some(
                    read_response(path).map_err(|m| Invalid::new(format!("{key}.response"), m))?,
                ),
                None => None,
            };
            rules.push(Rule {
                mode: r.mode,
                proxy: r.proxy.clone(),
                response,
                greeting: r.greeting,
                responses: r.responses,
            });
        }
        let dir_responses = if p.response_dir.as_os_str().is_empty() {
            HashMap::new()
        } else {
            read_response_dir(&p.response_dir).map_err(|m| Invalid::new("ports.response_dir", m))?
        };
        Ok(PortPolicy {
            index,
            rules,
            default_mode: p.default_mode,
            greeting: p.greeting,
            responses: p.responses,
            dir_responses,
        })
    }

    /// The mode of (protocol, port), without resolving the response.
    pub fn mode(&self, proto: Protocol, port: u16) -> Mode {
        match self.index.lookup(proto, port) {
            Some(i) => self.rules[i].mode,
            None => self.default_mode,
        }
    }

    /// How (protocol, port) is handled.
    pub fn lookup(&self, proto: Protocol, port: u16) -> PortHandling {
        let rule = self.index.lookup(proto, port).map(|i| &self.rules[i]);
        let builtin = builtin::lookup(proto, port);
        let (response, from_builtin) = match rule.and_then(|r| r.response.clone()) {
            Some(r) => (r, false),
            None => match self.dir_responses.get(&(proto, port)) {
                Some(r) => (r.clone(), false),
                None => match builtin {
                    Some(b) => (Bytes::from_static(b.data), true),
                    None => (Bytes::from_static(NEWLINE), false),
                },
            },
        };
        let greeting = match rule.and_then(|r| r.greeting).unwrap_or(self.greeting) {
            Greeting::Always => true,
            Greeting::Never => false,
            Greeting::Auto => from_builtin && builtin.is_some_and(|b| b.greeting),
        };
        PortHandling {
            mode: rule.map(|r| r.mode).unwrap_or(self.default_mode),
            proxy: rule.and_then(|r| r.proxy.clone()),
            response,
            greeting,
            max_responses: rule.and_then(|r| r.responses).unwrap_or(self.responses),
        }
    }
}

/// A rule or a proxy map, before compiling.
struct RuleSource<'a> {
    /// Config key for errors (`ports.rule[3]`, `proxy.web`).
    key: String,
    protocol: &'a super::Protocols,
    ports: &'a [super::PortRange],
    mode: Mode,
    proxy: Option<Arc<ProxyTarget>>,
    response: Option<&'a Path>,
    greeting: Option<Greeting>,
    responses: Option<u32>,
}

fn read_response(path: &Path) -> Result<Bytes, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_RESPONSE_BYTES {
        return Err(format!(
            "{} is {} bytes, more than the {MAX_RESPONSE_BYTES} allowed for a response",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Read every `<port>_tcp` / `<port>_udp` file of a response directory.
fn read_response_dir(dir: &Path) -> Result<HashMap<(Protocol, u16), Bytes>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(parse_response_name) else {
            tracing::debug!(file = ?entry.path(), "not a <port>_<proto> response file, skipped");
            continue;
        };
        out.insert(key, read_response(&entry.path())?);
    }
    Ok(out)
}

/// `"80_tcp"` → (Tcp, 80).
fn parse_response_name(name: &str) -> Option<(Protocol, u16)> {
    let (port, proto) = name.split_once('_')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((proto.parse().ok()?, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn policy(text: &str) -> PortPolicy {
        PortPolicy::build(&parse(Path::new("t"), text).unwrap()).unwrap()
    }

    #[test]
    fn default_and_rules() {
        let p = policy(
            "[ports]\ndefault_mode = \"ignore\"\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"8000-8100\"]\nmode = \"normal\"\nresponses = 1\n",
        );
        assert_eq!(p.mode(Protocol::Tcp, 8050), Mode::Normal);
        assert_eq!(p.mode(Protocol::Udp, 8050), Mode::Ignore);
        assert_eq!(p.mode(Protocol::Tcp, 22), Mode::Ignore);
        assert_eq!(p.lookup(Protocol::Tcp, 8050).max_responses, 1);
    }

    #[test]
    fn response_precedence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2222_tcp"), b"from dir").unwrap();
        std::fs::write(dir.path().join("README"), b"ignored").unwrap();
        let file = dir.path().join("custom");
        std::fs::write(&file, b"from rule").unwrap();
        let text = format!(
            "[ports]\nresponse_dir = {:?}\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [3306]\nmode = \"normal\"\nresponse = {:?}\n",
            dir.path(),
            file
        );
        let p = policy(&text);
        // A rule's file wins over the built-in MySQL greeting.
        let h = p.lookup(Protocol::Tcp, 3306);
        assert_eq!(&h.response[..], b"from rule");
        assert!(!h.greeting, "auto greeting applies to built-ins only");
        // The directory wins over the built-in SSH banner.
        assert_eq!(&p.lookup(Protocol::Tcp, 2222).response[..], b"from dir");
        // The built-in SSH banner on 22 is a greeting.
        let ssh = p.lookup(Protocol::Tcp, 22);
        assert!(ssh.response.starts_with(b"SSH-2.0-"));
        assert!(ssh.greeting);
        // No response anywhere: a single newline.
        assert_eq!(&p.lookup(Protocol::Tcp, 4).response[..], b"\n");
    }

    #[test]
    fn oversized_response_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("80_tcp"), vec![b'x'; 70_000]).unwrap();
        let c = parse(
            Path::new("t"),
            &format!("[ports]\nresponse_dir = {:?}\n", dir.path()),
        )
        .unwrap();
        let e = PortPolicy::build(&c).unwrap_err();
        assert_eq!(e.key, "ports.response_dir");
    }

    #[test]
    fn proxy_needs_a_map() {
        let c = parse(Path::new("t"), "[ports]\ndefault_mode = \"proxy\"\n").unwrap();
        assert_eq!(PortPolicy::build(&c).unwrap_err().key, "ports.default_mode");
        let c = parse(
            Path::new("t"),
            "[[ports.rule]]\nprotocol = \"tcp\"\nports = [80]\nmode = \"proxy\"\n",
        )
        .unwrap();
        assert_eq!(PortPolicy::build(&c).unwrap_err().key, "ports.rule[0].mode");
        let p = policy("[ports]\ndefault_mode = \"mirror\"\n");
        assert_eq!(p.mode(Protocol::Tcp, 1), Mode::Mirror);
    }

    #[test]
    fn proxy_maps_join_the_index() {
        let p = policy(
            "[[ports.rule]]\nprotocol = \"tcp\"\nports = [22]\nmode = \"ignore\"\n[proxy.web]\nprotocol = \"tcp\"\nports = [80, \"8000-8100\"]\ntarget_host = \"10.0.0.5\"\ntarget_port = 8080\n[proxy.dns]\nprotocol = [\"udp\", \"tcp\"]\nports = [53]\ntarget_host = \"ns.example\"\ntarget_protocol = \"udp\"\n",
        );
        let h = p.lookup(Protocol::Tcp, 8050);
        assert_eq!(h.mode, Mode::Proxy);
        let t = h.proxy.unwrap();
        assert_eq!(
            (t.name.as_str(), t.host.as_str(), t.port),
            ("web", "10.0.0.5", Some(8080))
        );
        let d = p.lookup(Protocol::Tcp, 53).proxy.unwrap();
        assert_eq!((d.name.as_str(), d.protocol), ("dns", Some(Protocol::Udp)));
        assert_eq!(p.mode(Protocol::Udp, 53), Mode::Proxy);
        assert_eq!(p.mode(Protocol::Tcp, 22), Mode::Ignore);
        assert!(p.lookup(Protocol::Tcp, 81).proxy.is_none());
        let bad = parse(
            Path::new("t"),
            "[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"70-90\"]\nmode = \"normal\"\n[proxy.web]\nprotocol = \"tcp\"\nports = [80]\ntarget_host = \"h\"\n",
        )
        .unwrap();
        let e = PortPolicy::build(&bad).unwrap_err();
        assert_eq!(e.key, "proxy.web.ports[0]");
        assert!(e.message.contains("ports.rule[0]"), "{}", e.message);
    }

    #[test]
    fn response_names() {
        assert_eq!(parse_response_name("80_tcp"), Some((Protocol::Tcp, 80)));
        assert_eq!(parse_response_name("53_udp"), Some((Protocol::Udp, 53)));
        assert_eq!(parse_response_name("0_tcp"), None);
        assert_eq!(parse_response_name("x_tcp"), None);
        assert_eq!(parse_response_name("80_sctp"), None);
    }
}
