//! `honeytrap convert-config`: the native TOML equivalent of an original
//! configuration, with a comment on where each key came from and what has no
//! equivalent. Only mapped keys are written; everything else keeps its default.

use super::map::Origin;
use super::Legacy;
use serde::Serialize;
use std::fmt::Write as _;

/// The native TOML for `l`. Parsed as native, it gives the same [`crate::config::Config`].
pub fn to_toml(l: &Legacy) -> String {
    let mut out = String::new();
    header(l, &mut out);
    let c = &l.config;
    let mut w = Writer { l, out };
    w.section("sensor", &[("data_dir", value(&c.sensor.data_dir))]);
    w.section(
        "process",
        &[
            ("user", value(&c.process.user)),
            ("group", value(&c.process.group)),
        ],
    );
    w.section(
        "network",
        &[("bind_addresses", value(&c.network.bind_addresses))],
    );
    w.section(
        "monitor.sniff",
        &[("promiscuous", value(&c.monitor.sniff.promiscuous))],
    );
    w.section("limits", &[("read_limit", value(&c.limits.read_limit))]);
    w.section(
        "ports",
        &[
            ("default_mode", value(&c.ports.default_mode)),
            ("response_dir", value(&c.ports.response_dir)),
        ],
    );
    for (i, r) in c.ports.rules.iter().enumerate() {
        let key = format!("ports.rule[{i}]");
        w.comment_for(&key);
        w.out += "[[ports.rule]]\n";
        w.line("protocol", &value(&r.protocol), None);
        w.line("ports", &value(&r.ports), None);
        w.line("mode", &value(&r.mode), None);
        w.out += "\n";
    }
    for (name, p) in &c.proxy {
        let key = format!("proxy.{name}");
        w.comment_for(&key);
        w.out += &format!("[proxy.{}]\n", toml_key(name));
        w.line("protocol", &value(&p.protocol), None);
        w.line("ports", &value(&p.ports), None);
        w.line("target_host", &value(&p.target_host), None);
        if let Some(port) = p.target_port {
            w.line("target_port", &value(&port), None);
        }
        if let Some(proto) = p.target_protocol {
            w.line("target_protocol", &value(&proto), None);
        }
        w.out += "\n";
    }
    w.section(
        "downloads",
        &[(
            "replace_private_ips",
            value(&c.downloads.replace_private_ips),
        )],
    );
    w.section("output", &[("queue_bytes", value(&c.output.queue_bytes))]);
    w.section(
        "output.transcripts",
        &[("quota_bytes", value(&c.output.transcripts.quota_bytes))],
    );
    let o = &c.output;
    w.section(
        "output.logjson",
        &[
            ("enabled", value(&o.logjson.enabled)),
            ("path", value(&o.logjson.path)),
        ],
    );
    w.section(
        "output.attacker_log",
        &[
            ("enabled", value(&o.attacker_log.enabled)),
            ("path", value(&o.attacker_log.path)),
        ],
    );
    w.section(
        "output.savefile",
        &[
            ("enabled", value(&o.savefile.enabled)),
            ("attacks_dir", value(&o.savefile.attacks_dir)),
            ("downloads_dir", value(&o.savefile.downloads_dir)),
        ],
    );
    for (name, table) in &c.analyzer {
        let key = format!("analyzer.{name}");
        if let Some(enabled) = table.get("enabled") {
            w.section(&key, &[("enabled", enabled.to_string())]);
        }
    }
    w.out
}

/// Where the file came from, and what has no native key.
fn header(l: &Legacy, out: &mut String) {
    let x = &l.extras;
    let _ = writeln!(
        out,
        "# Converted from {} (the original honeytrap's syntax) by `honeytrap convert-config`.",
        x.source.display()
    );
    out.push_str("# Keys not written here keep their defaults (docs/configuration.md);\n");
    out.push_str("# docs/migration.md says how each original key and plugin maps.\n#\n");
    let mut none = Vec::new();
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    if let Some(p) = path(&x.logfile) {
        none.push(format!("logfile = {p} (honeytrap logs to standard error)"));
    }
    if let Some(p) = path(&x.pidfile) {
        none.push(format!("pidfile = {p} (the original command line's -P)"));
    }
    if let Some(p) = path(&x.plugin_dir) {
        none.push(format!("plugin_dir = {p} (every analyzer is built in)"));
    }
    if x.submit_postgres.is_some() {
        none.push("plugin-submitPostgres (no PostgreSQL output yet)".into());
    }
    if !none.is_empty() {
        out.push_str("# No native key (yet) for:\n");
        for n in none {
            let _ = writeln!(out, "#   {n}");
        }
        out.push_str("#\n");
    }
    if !x.warnings.is_empty() {
        out.push_str("# Warnings while reading it:\n");
        for w in &x.warnings {
            let _ = writeln!(out, "#   {w}");
        }
        out.push_str("#\n");
    }
    out.push('\n');
}

struct Writer<'a> {
    l: &'a Legacy,
    out: String,
}

impl Writer<'_> {
    fn origin(&self, key: &str) -> Option<&Origin> {
        self.l.origins.iter().find(|o| o.key == key)
    }

    /// A section with those of its keys that came from the original file.
    fn section(&mut self, name: &str, keys: &[(&str, String)]) {
        let set: Vec<_> = keys
            .iter()
            .filter_map(|(k, v)| {
                let full = format!("{name}.{k}");
                let o = self.origin(&full).or_else(|| self.origin(name))?;
                Some((k, v, describe(o)))
            })
            .collect();
        if set.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "[{name}]");
        for (k, v, why) in set {
            self.line(k, v, Some(&why));
        }
        self.out += "\n";
    }

    fn line(&mut self, key: &str, value: &str, comment: Option<&str>) {
        match comment {
            Some(c) => {
                let _ = writeln!(self.out, "{key} = {value}  # {c}");
            }
            None => {
                let _ = writeln!(self.out, "{key} = {value}");
            }
        }
    }

    fn comment_for(&mut self, key: &str) {
        if let Some(o) = self.origin(key) {
            let d = describe(o);
            let _ = writeln!(self.out, "# {d}");
        }
    }
}

fn describe(o: &Origin) -> String {
    if o.pos.line == 0 {
        return format!("{} (the original ran only the plugins it loaded)", o.from);
    }
    format!(
        "from `{}` ({}:{})",
        o.from,
        o.pos.file.display(),
        o.pos.line
    )
}

/// A value as inline TOML.
fn value<T: Serialize + ?Sized>(v: &T) -> String {
    toml::Value::try_from(v)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("\"<{e}>\""))
}

/// A table key, quoted when it is not a bare key.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        value(k)
    }
}
