//! Map the original's keys, `portconf` and plugins onto the native [`Config`].
//! Each native key set is recorded with where it came from ([`Origin`]), so a
//! value refused by the native validation is reported at its original line, and
//! `convert-config` can say what came from where.

use super::syntax::{Entry, Pos, Value};
use super::{LegacyExtras, SaveFile, Warning};
use crate::analysis::registry;
use crate::attack::Mode;
use crate::config::{Config, ConfigError, Invalid, PortRange, PortRule, Protocols, ProxyMap};
use crate::proto::Protocol;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A native key and the original key it was mapped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Native dotted key (`limits.read_limit`, `ports.rule[2].ports[0]`).
    pub key: String,
    /// The original key (`read_limit`, `portconf.normal`).
    pub from: String,
    pub pos: Pos,
}

/// What an original plugin became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Our analyzer of this name.
    Analyzer(&'static str),
    /// One of the original's outputs (kept in [`LegacyExtras`] for the outputs).
    Output,
    /// Not available yet; its options are kept.
    Future(&'static str),
    /// Gone: what replaces it.
    Obsolete(&'static str),
}

/// Every plugin of the original and what it maps to.
pub const PLUGINS: &[(&str, PluginKind)] = &[
    ("b64Decode", PluginKind::Analyzer("base64")),
    ("deUnicode", PluginKind::Analyzer("utf16")),
    ("ftpDownload", PluginKind::Analyzer("ftp")),
    ("tftpDownload", PluginKind::Analyzer("tftp")),
    ("httpDownload", PluginKind::Analyzer("http")),
    ("vncDownload", PluginKind::Analyzer("vnc")),
    ("magicPE", PluginKind::Analyzer("exe")),
    ("SpamSum", PluginKind::Analyzer("fuzzy")),
    ("ClamAV", PluginKind::Analyzer("clamav")),
    ("cpuEmu", PluginKind::Analyzer("shellcode")),
    ("SaveFile", PluginKind::Output),
    ("logAttacker", PluginKind::Output),
    ("logJSON", PluginKind::Output),
    (
        "submitPostgres",
        PluginKind::Future("there is no PostgreSQL output yet: attacks are not submitted; the options are kept"),
    ),
    (
        "SavePostgres",
        PluginKind::Future("there is no PostgreSQL output yet: attacks are not stored; the options are kept"),
    ),
    (
        "submitMWserv",
        PluginKind::Obsolete("the mwserv service no longer exists; the event log (output.jsonl) and the stored downloads replace it"),
    ),
    (
        "submitNebula",
        PluginKind::Obsolete("the Nebula service no longer exists; the event log (output.jsonl) replaces it"),
    ),
    (
        "cspm",
        PluginKind::Obsolete("shellcode is found by the `shellcode` analyzer"),
    ),
    (
        "xmatch",
        PluginKind::Obsolete("shellcode (also XOR-encoded) is found by the `shellcode` analyzer"),
    ),
];

/// Plugin options we understand; any other option is ignored with a warning.
const PLUGIN_OPTIONS: &[(&str, &[&str])] = &[
    ("SaveFile", &["attacks_dir", "downloads_dir"]),
    ("logAttacker", &["logfile"]),
    ("logJSON", &["logfile"]),
];

/// Downloaders of the original: our `percent` and `http_body` decoders are on
/// when one of them is, since they only widen what the downloaders see.
const DOWNLOAD_PLUGINS: &[&str] = &["ftpDownload", "tftpDownload", "httpDownload", "vncDownload"];

/// The result of mapping, before validation.
pub struct Mapped {
    pub config: Config,
    pub extras: LegacyExtras,
    pub origins: Vec<Origin>,
}

/// Map the parsed entries of `file` onto a native configuration.
pub fn map(file: &Path, entries: &[Entry]) -> Result<Mapped, ConfigError> {
    let mut m = Mapper {
        config: Config::default(),
        extras: LegacyExtras {
            source: file.to_path_buf(),
            ..LegacyExtras::default()
        },
        origins: Vec::new(),
        seen: HashMap::new(),
        claimed: HashMap::new(),
    };
    for e in entries {
        m.entry(e)?;
    }
    m.analyzers();
    m.data_dir();
    Ok(Mapped {
        config: m.config,
        extras: m.extras,
        origins: m.origins,
    })
}

/// Attach the original file and line to a problem the native validation found.
pub fn locate(file: &Path, origins: &[Origin], e: Invalid) -> ConfigError {
    let under = |o: &Origin| {
        e.key == o.key
            || e.key
                .strip_prefix(o.key.as_str())
                .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
    };
    let best = origins
        .iter()
        .filter(|o| under(o))
        .max_by_key(|o| o.key.len())
        .or_else(|| origins.iter().find(|o| o.key.starts_with(&e.key)));
    match best {
        Some(o) => error(
            &o.pos,
            &o.from,
            format!("{} (native key `{}`)", e.message, e.key),
        ),
        None => ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: e.key,
            message: e.message,
        },
    }
}

fn error(pos: &Pos, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: pos.file.to_path_buf(),
        line: Some(pos.line).filter(|l| *l > 0),
        column: Some(pos.column).filter(|c| *c > 0),
        key: key.to_string(),
        message: message.into(),
    }
}

struct Mapper {
    config: Config,
    extras: LegacyExtras,
    origins: Vec<Origin>,
    /// Scalar keys and plugins already set: a repeat keeps the first.
    seen: HashMap<String, Pos>,
    /// (protocol, port) → where it is configured, to refuse duplicates.
    claimed: HashMap<(Protocol, u16), Pos>,
}

impl Mapper {
    fn origin(&mut self, key: impl Into<String>, from: impl Into<String>, pos: &Pos) {
        self.origins.push(Origin {
            key: key.into(),
            from: from.into(),
            pos: pos.clone(),
        });
    }

    fn warn(&mut self, pos: Option<&Pos>, message: impl Into<String>) {
        self.extras.warnings.push(Warning {
            pos: pos.cloned(),
            message: message.into(),
        });
    }

    fn entry(&mut self, e: &Entry) -> Result<(), ConfigError> {
        let key = e.key.as_str();
        if key == "portconf" {
            return self.portconf(e);
        }
        let plugin = key.strip_prefix("plugin-");
        if plugin.is_none() && !super::TOP_LEVEL_KEYS.contains(&key) {
            return Err(error(
                &e.pos,
                key,
                format!(
                    "unknown key (the original's keys: {}, plugin-<Name>)",
                    super::TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
        // The original kept the first of a repeated key; so do we, but say so.
        let seen_key = plugin.map_or(key.to_string(), |p| {
            format!("plugin-{}", p.to_ascii_lowercase())
        });
        if let Some(first) = self.seen.get(&seen_key) {
            let msg = format!(
                "`{key}` is set again; the first value ({first}) is kept, as the original did"
            );
            self.warn(Some(&e.pos), msg);
            return Ok(());
        }
        self.seen.insert(seen_key, e.pos.clone());
        match plugin {
            Some(name) => self.plugin(name, e),
            None => self.scalar(e),
        }
    }

    fn scalar(&mut self, e: &Entry) -> Result<(), ConfigError> {
        let key = e.key.as_str();
        let pos = &e.value_pos;
        if key == "bind_address" {
            return self.bind_address(e);
        }
        let v = string(e)?;
        let path = || PathBuf::from(&v);
        match key {
            "logfile" => self.extras.logfile = Some(path()),
            "pidfile" => self.extras.pidfile = Some(path()),
            "plugin_dir" => self.extras.plugin_dir = Some(path()),
            "response_dir" => {
                self.config.ports.response_dir = path();
                self.origin("ports.response_dir", key, pos);
            }
            "replace_private_ips" => {
                self.config.downloads.replace_private_ips = switch(&v, pos, key)?;
                self.origin("downloads.replace_private_ips", key, pos);
            }
            "promisc" => {
                self.config.monitor.sniff.promiscuous = switch(&v, pos, key)?;
                self.origin("monitor.sniff.promiscuous", key, pos);
            }
            "user" => {
                self.config.process.user = v;
                self.origin("process.user", key, pos);
            }
            "group" => {
                self.config.process.group = v;
                self.origin("process.group", key, pos);
            }
            "read_limit" => self.read_limit(&v, pos)?,
            "portconf_default" => {
                let mode = mode(&v).ok_or_else(|| {
                    error(
                        pos,
                        key,
                        format!("`{v}` is not a mode (ignore, normal or mirror)"),
                    )
                })?;
                if mode == Mode::Proxy {
                    return Err(error(
                        pos,
                        key,
                        "proxy cannot be the default mode (it needs a target)",
                    ));
                }
                self.config.ports.default_mode = mode;
                self.origin("ports.default_mode", key, pos);
            }
            _ => unreachable!("checked against TOP_LEVEL_KEYS"),
        }
        Ok(())
    }

    /// `bind_address`: one address (or a list). Any address means any address of
    /// both families: the original was IPv4-only by limitation, not by choice.
    fn bind_address(&mut self, e: &Entry) -> Result<(), ConfigError> {
        let mut addrs = Vec::new();
        for (v, pos) in strings(e)? {
            let a: IpAddr = v
                .trim()
                .parse()
                .map_err(|_| error(&pos, "bind_address", format!("`{v}` is not an IP address")))?;
            if a.is_unspecified() {
                for any in ["0.0.0.0", "::"] {
                    let any: IpAddr = any.parse().expect("literal");
                    if !addrs.contains(&any) {
                        addrs.push(any);
                    }
                }
            } else if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if !addrs.is_empty() {
            self.config.network.bind_addresses = addrs;
        }
        self.origin("network.bind_addresses", "bind_address", &e.value_pos);
        Ok(())
    }

    /// `read_limit` in bytes; the output budgets grow with it (the native
    /// validation wants room for two attacks of that size).
    fn read_limit(&mut self, v: &str, pos: &Pos) -> Result<(), ConfigError> {
        let n = crate::config::units::parse_size(v).map_err(|m| error(pos, "read_limit", m))?;
        let l = &mut self.config;
        l.limits.read_limit = n;
        self.origin("limits.read_limit", "read_limit", pos);
        let need = n.saturating_mul(2);
        if self.config.output.queue_bytes < need {
            self.config.output.queue_bytes = need;
            self.origin("output.queue_bytes", "read_limit", pos);
        }
        if self.config.output.transcripts.quota_bytes < need {
            self.config.output.transcripts.quota_bytes = need;
            self.origin("output.transcripts.quota_bytes", "read_limit", pos);
        }
        Ok(())
    }

    /// `portconf = { ignore = {...} normal = {...} mirror = {...} proxy = {...} }`,
    /// possibly given more than once (every block counts, also from a late include).
    fn portconf(&mut self, e: &Entry) -> Result<(), ConfigError> {
        for b in block(e)? {
            let from = format!("portconf.{}", b.key);
            match b.key.as_str() {
                "ignore" | "normal" | "mirror" => {
                    let mode = mode(&b.key).expect("a mode name");
                    let fields = fields(b, &["protocol", "port"], &[])?;
                    let (protocols, ports) = self.claim(b, &fields, &from)?;
                    let i = self.config.ports.rules.len();
                    self.origin(format!("ports.rule[{i}]"), &from, &b.pos);
                    self.origin(
                        format!("ports.rule[{i}].ports"),
                        &from,
                        &fields["port"].value_pos,
                    );
                    self.origin(
                        format!("ports.rule[{i}].protocol"),
                        &from,
                        &fields["protocol"].value_pos,
                    );
                    self.config.ports.rules.push(PortRule {
                        protocol: protocols,
                        ports,
                        mode,
                        response: None,
                        greeting: None,
                        responses: None,
                    });
                }
                "proxy" => {
                    for p in block(b)? {
                        self.proxy(p)?;
                    }
                }
                other => {
                    return Err(error(
                        &b.pos,
                        &format!("portconf.{other}"),
                        "unknown block (expected ignore, normal, mirror or proxy)",
                    ))
                }
            }
        }
        Ok(())
    }

    /// One proxy map `name = { protocol, port, target_host, target_port, target_protocol }`.
    fn proxy(&mut self, p: &Entry) -> Result<(), ConfigError> {
        let name = p.key.clone();
        let from = format!("portconf.proxy.{name}");
        if self.config.proxy.contains_key(&name) {
            return Err(error(
                &p.pos,
                &from,
                "a proxy map of this name is already configured",
            ));
        }
        let f = fields(
            p,
            &["protocol", "port", "target_host"],
            &["target_port", "target_protocol"],
        )?;
        let (protocol, ports) = self.claim(p, &f, &from)?;
        let target_port = match f.get("target_port") {
            None => None,
            Some(e) => {
                let v = string(e)?;
                let n: u16 = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    error(
                        &e.value_pos,
                        &format!("{from}.target_port"),
                        format!("`{v}` is not a port (1-65535)"),
                    )
                })?;
                Some(n)
            }
        };
        let target_protocol = match f.get("target_protocol") {
            None => None,
            Some(e) => {
                let v = string(e)?;
                Some(
                    v.parse::<Protocol>()
                        .map_err(|m| error(&e.value_pos, &format!("{from}.target_protocol"), m))?,
                )
            }
        };
        let key = format!("proxy.{name}");
        self.origin(&key, &from, &p.pos);
        for field in [
            "protocol",
            "port",
            "target_host",
            "target_port",
            "target_protocol",
        ] {
            if let Some(e) = f.get(field) {
                let native = if field == "port" { "ports" } else { field };
                self.origin(
                    format!("{key}.{native}"),
                    format!("{from}.{field}"),
                    &e.value_pos,
                );
            }
        }
        self.config.proxy.insert(
            name,
            ProxyMap {
                protocol,
                ports,
                target_host: string(f["target_host"])?,
                target_port,
                target_protocol,
                response: None,
                greeting: None,
                responses: None,
            },
        );
        Ok(())
    }

    /// Read `protocol` and `port` of a block and claim every (protocol, port)
    /// pair: each protocol pairs with each port, and a pair may be configured once.
    fn claim(
        &mut self,
        b: &Entry,
        f: &BTreeMap<&str, &Entry>,
        from: &str,
    ) -> Result<(Protocols, Vec<PortRange>), ConfigError> {
        let mut protocols = Vec::new();
        for (v, pos) in strings(f["protocol"])? {
            let p: Protocol = v
                .parse()
                .map_err(|m| error(&pos, &format!("{from}.protocol"), m))?;
            if !protocols.contains(&p) {
                protocols.push(p);
            }
        }
        let mut ports = Vec::new();
        for (v, pos) in strings(f["port"])? {
            let r: PortRange = v
                .parse()
                .map_err(|m| error(&pos, &format!("{from}.port"), m))?;
            for p in &protocols {
                for port in r.range() {
                    if let Some(first) = self.claimed.insert((*p, port), pos.clone()) {
                        return Err(error(
                            &pos,
                            &format!("{from}.port"),
                            format!("{p} {port} is already configured at {first}"),
                        ));
                    }
                }
            }
            ports.push(r);
        }
        if protocols.is_empty() || ports.is_empty() {
            return Err(error(
                &b.pos,
                from,
                "needs at least one protocol and one port",
            ));
        }
        let protocols = if protocols.len() == 1 {
            Protocols::One(protocols[0])
        } else {
            Protocols::Many(protocols)
        };
        Ok((protocols, ports))
    }

    /// `plugin-<Name> = ""` or `plugin-<Name> = { options }`.
    fn plugin(&mut self, name: &str, e: &Entry) -> Result<(), ConfigError> {
        let Some(&(canonical, kind)) = PLUGINS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            let known: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).collect();
            return Err(error(
                &e.pos,
                &e.key,
                format!(
                    "unknown plugin `{name}` (the original's plugins: {})",
                    known.join(", ")
                ),
            ));
        };
        let mut options = BTreeMap::new();
        if let Value::Block(items) = &e.value {
            for o in items {
                let value = strings(o)?
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect::<Vec<_>>()
                    .join(", ");
                options.insert(o.key.clone(), value);
            }
        }
        let key = format!("plugin-{canonical}");
        let pos = &e.pos;
        match kind {
            PluginKind::Obsolete(why) => {
                self.warn(Some(pos), format!("`{key}` is obsolete and ignored: {why}"));
                return Ok(());
            }
            PluginKind::Future(why) => {
                self.warn(Some(pos), format!("`{key}` is not available yet: {why}"));
                self.extras.submit_postgres = Some(options.clone());
            }
            PluginKind::Output => self.output(canonical, &options, pos),
            PluginKind::Analyzer(a) => self.analyzer_plugin(canonical, a, &options, pos),
        }
        if kind == PluginKind::Output {
            let known = PLUGIN_OPTIONS
                .iter()
                .find(|(n, _)| *n == canonical)
                .map_or(&[][..], |(_, o)| *o);
            let unknown: Vec<&str> = options
                .keys()
                .map(String::as_str)
                .filter(|k| !known.contains(k))
                .collect();
            if !unknown.is_empty() {
                let msg = format!("`{key}`: unknown option(s) {} ignored", unknown.join(", "));
                self.warn(Some(pos), msg);
            }
        }
        self.extras.plugins.insert(canonical.to_string(), options);
        Ok(())
    }

    /// An output plugin turns on its native output (src/sink/legacy); a missing
    /// file or directory keeps the native default under the data directory.
    fn output(&mut self, plugin: &str, options: &BTreeMap<String, String>, pos: &Pos) {
        let path = |k: &str| options.get(k).map(PathBuf::from);
        let o = &mut self.config.output;
        let key = match plugin {
            "SaveFile" => {
                self.extras.save_file = Some(SaveFile {
                    attacks_dir: path("attacks_dir"),
                    downloads_dir: path("downloads_dir"),
                });
                o.savefile.enabled = true;
                if let Some(p) = path("attacks_dir") {
                    o.savefile.attacks_dir = p;
                }
                if let Some(p) = path("downloads_dir") {
                    o.savefile.downloads_dir = p;
                }
                "output.savefile"
            }
            "logAttacker" => {
                self.extras.log_attacker = path("logfile");
                o.attacker_log.enabled = true;
                if let Some(p) = path("logfile") {
                    o.attacker_log.path = p;
                }
                "output.attacker_log"
            }
            "logJSON" => {
                self.extras.log_json = path("logfile");
                o.logjson.enabled = true;
                if let Some(p) = path("logfile") {
                    o.logjson.path = p;
                }
                "output.logjson"
            }
            _ => return,
        };
        self.origin(key, format!("plugin-{plugin}"), pos);
    }

    /// A plugin that is one of our analyzers: options with no equivalent are
    /// named in one warning (the analyzer runs with its defaults).
    fn analyzer_plugin(
        &mut self,
        plugin: &str,
        analyzer: &str,
        options: &BTreeMap<String, String>,
        pos: &Pos,
    ) {
        let key = format!("plugin-{plugin}");
        let available = registry::find(analyzer).is_some();
        let opts: Vec<&str> = options.keys().map(String::as_str).collect();
        let mut parts = Vec::new();
        if !available {
            parts.push(format!(
                "it maps to the `{analyzer}` analyzer, which this build does not have yet: ignored"
            ));
        }
        if plugin == "cpuEmu" {
            parts.push(format!(
                "its emulation (libemu, wine) is obsolete: the `{analyzer}` analyzer detects shellcode without running it{}",
                if opts.is_empty() { String::new() } else { format!("; options {} ignored", opts.join(", ")) }
            ));
        } else if plugin == "httpDownload" && !opts.is_empty() {
            parts.push(format!(
                "options {} are obsolete: honeytrap downloads with its own HTTP client, no program is run",
                opts.join(", ")
            ));
        } else if !opts.is_empty() && available {
            parts.push(format!(
                "options {} have no equivalent: analyzer.{analyzer} runs with its own options (docs/analysis.md)",
                opts.join(", ")
            ));
        }
        if !parts.is_empty() {
            self.warn(Some(pos), format!("`{key}`: {}", parts.join("; ")));
        }
    }

    /// The original ran only the plugins it loaded: an analyzer with an original
    /// counterpart runs only when that plugin is loaded, `store` only with SaveFile,
    /// `percent` and `http_body` with any downloader; the others keep their default.
    fn analyzers(&mut self) {
        let loaded: BTreeSet<&str> = self.extras.plugins.keys().map(String::as_str).collect();
        let mut set: Vec<(&str, bool, String)> = Vec::new();
        for (plugin, kind) in PLUGINS {
            if let PluginKind::Analyzer(a) = kind {
                set.push((*a, loaded.contains(plugin), format!("plugin-{plugin}")));
            }
        }
        set.push((
            "store",
            loaded.contains("SaveFile"),
            "plugin-SaveFile".into(),
        ));
        let dl = DOWNLOAD_PLUGINS.iter().any(|p| loaded.contains(p));
        let dl_from = DOWNLOAD_PLUGINS
            .iter()
            .map(|p| format!("plugin-{p}"))
            .collect::<Vec<_>>()
            .join(" / ");
        set.push(("percent", dl, dl_from.clone()));
        set.push(("http_body", dl, dl_from));
        // Line 0: set because something is *not* in the file.
        let nowhere = Pos {
            file: std::sync::Arc::new(self.extras.source.clone()),
            line: 0,
            column: 0,
        };
        for (name, on, from) in set {
            if registry::find(name).is_none() {
                continue;
            }
            self.config
                .analyzer
                .entry(name.to_string())
                .or_default()
                .insert("enabled".into(), toml::Value::Boolean(on));
            match self.seen_plugin(&from) {
                Some(pos) if on => self.origin(format!("analyzer.{name}"), from, &pos),
                _ => self.origin(
                    format!("analyzer.{name}"),
                    format!("no {from} loaded"),
                    &nowhere,
                ),
            }
        }
    }

    /// Where the first of the plugins named in `from` ("plugin-A / plugin-B") is loaded.
    fn seen_plugin(&self, from: &str) -> Option<Pos> {
        from.split(" / ")
            .filter_map(|p| self.seen.get(&p.to_ascii_lowercase()))
            .min_by_key(|p| (p.line, p.column))
            .cloned()
    }

    /// The data directory goes where the original kept its data: the directory
    /// above SaveFile's `attacks_dir`, else the directory of `logfile`.
    fn data_dir(&mut self) {
        let from_save = self
            .extras
            .save_file
            .as_ref()
            .and_then(|s| s.attacks_dir.as_ref())
            .and_then(|d| d.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| (p.to_path_buf(), "plugin-SaveFile.attacks_dir"));
        let from_log = self
            .extras
            .logfile
            .as_ref()
            .and_then(|f| f.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| (p.to_path_buf(), "logfile"));
        if let Some((dir, from)) = from_save.or(from_log) {
            self.config.sensor.data_dir = dir;
            let key = if from == "logfile" {
                "logfile".to_string()
            } else {
                "plugin-savefile".to_string()
            };
            if let Some(pos) = self.seen.get(&key).cloned() {
                self.origin("sensor.data_dir", from, &pos);
            }
        }
    }
}

/// The value of `e` as one string.
fn string(e: &Entry) -> Result<String, ConfigError> {
    match &e.value {
        Value::Str(s) => Ok(s.clone()),
        other => Err(error(
            &e.value_pos,
            &e.key,
            format!("expected a string, found {}", other.kind()),
        )),
    }
}

/// A string or a list of strings, each with its place.
fn strings(e: &Entry) -> Result<Vec<(String, Pos)>, ConfigError> {
    match &e.value {
        Value::Str(s) => Ok(vec![(s.clone(), e.value_pos.clone())]),
        Value::List(items) => items
            .iter()
            .map(|(v, p)| match v {
                Value::Str(s) => Ok((s.clone(), p.clone())),
                other => Err(error(
                    p,
                    &e.key,
                    format!("expected a string, found {}", other.kind()),
                )),
            })
            .collect(),
        Value::Block(_) => Err(error(
            &e.value_pos,
            &e.key,
            "expected a string or a list, found a block",
        )),
    }
}

/// The entries of a block value.
fn block(e: &Entry) -> Result<&[Entry], ConfigError> {
    match &e.value {
        Value::Block(b) => Ok(b),
        other => Err(error(
            &e.value_pos,
            &e.key,
            format!("expected a block `{{ ... }}`, found {}", other.kind()),
        )),
    }
}

/// The fields of a block: each required one present, nothing unknown, none twice.
fn fields<'e>(
    e: &'e Entry,
    required: &[&'static str],
    optional: &[&'static str],
) -> Result<BTreeMap<&'static str, &'e Entry>, ConfigError> {
    let mut out = BTreeMap::new();
    for f in block(e)? {
        let Some(&name) = required.iter().chain(optional).find(|n| **n == f.key) else {
            let all: Vec<&str> = required.iter().chain(optional).copied().collect();
            return Err(error(
                &f.pos,
                &format!("{}.{}", e.key, f.key),
                format!("unknown key (expected {})", all.join(", ")),
            ));
        };
        if out.insert(name, f).is_some() {
            return Err(error(
                &f.pos,
                &format!("{}.{}", e.key, f.key),
                "given twice in this block",
            ));
        }
    }
    for r in required {
        if !out.contains_key(r) {
            return Err(error(&e.pos, &e.key, format!("`{r}` is missing")));
        }
    }
    Ok(out)
}

/// yes/no, on/off (and true/false, 1/0).
fn switch(v: &str, pos: &Pos, key: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" | "1" => Ok(true),
        "no" | "off" | "false" | "0" => Ok(false),
        _ => Err(error(pos, key, format!("`{v}` is not yes/no or on/off"))),
    }
}

fn mode(v: &str) -> Option<Mode> {
    match v.trim().to_ascii_lowercase().as_str() {
        "ignore" => Some(Mode::Ignore),
        "normal" => Some(Mode::Normal),
        "mirror" => Some(Mode::Mirror),
        "proxy" => Some(Mode::Proxy),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read, Legacy};
    use super::*;

    fn load(text: &str) -> Result<Legacy, ConfigError> {
        read(Path::new("t.conf"), &format!("// t\n{text}"))
    }

    fn warnings(l: &Legacy) -> Vec<String> {
        l.extras.warnings.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn repeated_key_keeps_the_first_with_a_warning() {
        let l = load("user = \"a\"\nuser = \"b\"\n").unwrap();
        assert_eq!(l.config.process.user, "a");
        let w = warnings(&l);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("t.conf:3:1:") && w[0].contains("t.conf:2:1"),
            "{w:?}"
        );
    }

    #[test]
    fn scalar_values() {
        let l = load("bind_address = \"192.0.2.7\"\npromisc = \"off\"\nreplace_private_ips = \"no\"\nread_limit = \"200MiB\"\nportconf_default = \"mirror\"\n").unwrap();
        let c = &l.config;
        assert_eq!(
            c.network.bind_addresses,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert!(!c.monitor.sniff.promiscuous && !c.downloads.replace_private_ips);
        assert_eq!(c.limits.read_limit, 200 << 20);
        // The output budgets grow so that two such attacks fit.
        assert_eq!(c.output.queue_bytes, 400 << 20);
        assert_eq!(c.output.transcripts.quota_bytes, 1 << 30);
        assert_eq!(c.ports.default_mode, Mode::Mirror);
        let e = load("\nportconf_default = \"proxy\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(20)), "{e}");
        let e = load("promisc = \"maybe\"\n").unwrap_err();
        assert!(e.message.contains("yes/no"), "{e}");
        let e = load("bind_address = \"eth0\"\n").unwrap_err();
        assert!(e.message.contains("not an IP address"), "{e}");
        let e = load("read_limit = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "read_limit", "{e}");
        let e = load("logfile = [\"a\", \"b\"]\n").unwrap_err();
        assert!(e.message.contains("expected a string"), "{e}");
    }

    #[test]
    fn portconf_shapes() {
        let e = load("portconf = { normal = { protocol = \"tcp\" } }\n").unwrap_err();
        assert!(e.message.contains("`port` is missing"), "{e}");
        let e = load("portconf = { normal = { protocol = \"tcp\" port = \"1\" prot = \"2\" } }\n")
            .unwrap_err();
        assert_eq!(e.key, "normal.prot", "{e}");
        let e = load("portconf = { reject = { } }\n").unwrap_err();
        assert!(e.message.contains("unknown block"), "{e}");
        let e = load("portconf = { normal = { protocol = \"sctp\" port = \"1\" } }\n").unwrap_err();
        assert!(e.message.contains("sctp"), "{e}");
        // A duplicate across a rule and a proxy map, and two maps of one name.
        let text = "portconf = {\n normal = { protocol = \"tcp\" port = \"80\" }\n proxy = { web = { protocol = \"tcp\" port = \"80\" target_host = \"h\" } }\n}\n";
        let e = load(text).unwrap_err();
        assert!(e.message.contains("already configured at t.conf:3:"), "{e}");
        let text = "portconf = { proxy = {\n a = { protocol = \"tcp\" port = \"1\" target_host = \"h\" }\n a = { protocol = \"tcp\" port = \"2\" target_host = \"h\" }\n} }\n";
        assert!(load(text)
            .unwrap_err()
            .message
            .contains("already configured"));
        // A proxy map without target port and protocol: the attacker's.
        let l = load("portconf = { proxy = { p = { protocol = [\"tcp\", \"udp\"] port = \"53\" target_host = \"10.0.0.1\" } } }\n").unwrap();
        let p = &l.config.proxy["p"];
        assert_eq!((p.target_port, p.target_protocol), (None, None));
        assert_eq!(p.protocol.list(), vec![Protocol::Tcp, Protocol::Udp]);
        // A bad target host is refused by the native check, at the original's line.
        let e = load("portconf = { proxy = { p = {\n protocol = \"tcp\" port = \"5\"\n target_host = \"a b\" } } }\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(4), "portconf.proxy.p.target_host"),
            "{e}"
        );
    }

    #[test]
    fn plugins() {
        // Case does not matter; unknown options of an output are warned about.
        let l = load("plugin-savefile = { attacks_dir = \"/x/attacks\" colour = \"blue\" }\nplugin-B64DECODE = \"\"\n").unwrap();
        assert!(l.extras.plugins.contains_key("SaveFile"));
        assert_eq!(l.config.sensor.data_dir, PathBuf::from("/x"));
        assert_eq!(l.config.analyzer["base64"]["enabled"].as_bool(), Some(true));
        assert_eq!(l.config.analyzer["utf16"]["enabled"].as_bool(), Some(false));
        assert_eq!(
            l.config.analyzer["protocol"]["enabled"].as_bool(),
            Some(true)
        );
        let w = warnings(&l);
        assert!(w.len() == 1 && w[0].contains("colour"), "{w:?}");
        // No plugin at all: only the per-read protocol analyzer runs.
        let l = load("user = \"nobody\"\n").unwrap();
        let on = |n: &str| l.config.analyzer[n]["enabled"].as_bool().unwrap();
        assert!(on("protocol"));
        for (_, kind) in PLUGINS {
            if let PluginKind::Analyzer(a) = kind {
                if registry::find(a).is_some() {
                    assert!(!on(a), "{a} is on");
                }
            }
        }
        for a in ["store", "percent", "http_body"] {
            assert!(!on(a), "{a} is on");
        }
        // Obsolete plugins: exactly one warning each.
        let l = load("plugin-xmatch = \"\"\nplugin-submitNebula = { url = \"x\" }\n").unwrap();
        let w = warnings(&l);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("obsolete") && w[0].contains("shellcode"),
            "{w:?}"
        );
        let e = load("plugin-Nonsense = \"\"\n").unwrap_err();
        assert!(e.message.contains("unknown plugin"), "{e}");
    }
}
