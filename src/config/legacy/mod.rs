//! The original honeytrap's `honeytrap.conf`, read directly: its language
//! ([`syntax`]), the mapping of each key and plugin onto the native [`Config`]
//! ([`map`]), and `honeytrap convert-config` ([`convert`]). docs/migration.md
//! says what maps where and where we differ from the original on purpose.
//!
//! A file is in the original syntax when its first significant token (after
//! comments) is `//` or `/*`, or when its first key is one of the original's
//! top-level keys (see [`is_legacy`]). No native file can look like that: the native
//! configuration has no top-level keys besides its sections, and TOML has no `//`
//! or `/* */` comments.

pub mod convert;
pub mod map;
pub mod syntax;

use super::{Config, ConfigError, PortPolicy};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
pub use syntax::Pos;

/// The original's top-level keys (besides `plugin-<Name>`).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "logfile",
    "pidfile",
    "response_dir",
    "replace_private_ips",
    "bind_address",
    "promisc",
    "user",
    "group",
    "read_limit",
    "plugin_dir",
    "portconf_default",
    "portconf",
    "include",
];

/// True when `text` is written in the original's syntax rather than TOML.
pub fn is_legacy(text: &str) -> bool {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.starts_with("//") || rest.starts_with("/*") {
            return true;
        }
        if rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        break;
    }
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let after = rest[key.len()..].trim_start();
    !key.is_empty()
        && after.starts_with('=')
        && (TOP_LEVEL_KEYS.contains(&key.as_str()) || key.starts_with("plugin-"))
}

/// What the original configured that has no native key yet (its outputs, files
/// of the process), for the command line and the outputs to pick up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegacyExtras {
    /// The file the configuration was read from.
    pub source: PathBuf,
    /// `logfile`: the main log file.
    pub logfile: Option<PathBuf>,
    /// `pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `plugin_dir` (unused: every analyzer is built in).
    pub plugin_dir: Option<PathBuf>,
    /// `plugin-SaveFile`: attack strings and downloads as files.
    pub save_file: Option<SaveFile>,
    /// `plugin-logAttacker`'s `logfile`: one line per attack.
    pub log_attacker: Option<PathBuf>,
    /// `plugin-logJSON`'s `logfile`: T-Pot's JSON event per line.
    pub log_json: Option<PathBuf>,
    /// `plugin-submitPostgres`'s options (no PostgreSQL output yet).
    pub submit_postgres: Option<BTreeMap<String, String>>,
    /// Every plugin the file loads (its canonical name) with its options.
    pub plugins: BTreeMap<String, BTreeMap<String, String>>,
    /// Things that were ignored or changed on the way, each once.
    pub warnings: Vec<Warning>,
}

/// `plugin-SaveFile`'s directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveFile {
    pub attacks_dir: Option<PathBuf>,
    pub downloads_dir: Option<PathBuf>,
}

/// A key or plugin that was accepted but ignored or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pos {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// An original configuration read, mapped and validated.
#[derive(Debug, Clone)]
pub struct Legacy {
    /// The native configuration (validated, defaults filled in).
    pub config: Config,
    pub policy: PortPolicy,
    pub extras: LegacyExtras,
    /// Native key → where it came from, for comments and error locations.
    pub origins: Vec<map::Origin>,
}

/// Read `text` (the contents of `file`, in the original syntax) and everything it
/// includes, map it onto the native model and validate it.
pub fn read(file: &Path, text: &str) -> Result<Legacy, ConfigError> {
    let entries = syntax::parse_file(file, text).map_err(|e| ConfigError {
        file: e.pos.file.to_path_buf(),
        line: Some(e.pos.line),
        column: Some(e.pos.column),
        key: String::new(),
        message: e.message,
    })?;
    let mapped = map::map(file, &entries)?;
    let (mut config, extras, origins) = (mapped.config, mapped.extras, mapped.origins);
    config
        .validate()
        .map_err(|e| map::locate(file, &origins, e))?;
    config.fill_defaults();
    let policy = PortPolicy::build(&config).map_err(|e| map::locate(file, &origins, e))?;
    Ok(Legacy {
        config,
        policy,
        extras,
        origins,
    })
}

/// Read the file at `path` in the original syntax.
pub fn read_path(path: &Path) -> Result<Legacy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    read(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_original_syntax() {
        assert!(is_legacy("/* honeytrap.conf */\n"));
        assert!(is_legacy("\n  // comment\nlogfile = \"x\"\n"));
        assert!(is_legacy("logfile = \"/var/log/honeytrap.log\"\n"));
        assert!(is_legacy("# a comment\nportconf_default = \"normal\"\n"));
        assert!(is_legacy("plugin-b64Decode = \"\"\n"));
        assert!(is_legacy("portconf = {\n}\n"));
        assert!(!is_legacy(""));
        assert!(!is_legacy("# only a comment\n"));
        assert!(!is_legacy("[sensor]\nname = \"x\"\n"));
        assert!(!is_legacy("# c\n[limits]\nread_limit = \"1MiB\"\n"));
        assert!(!is_legacy("sensor = { name = \"x\" }\n"));
        assert!(!is_legacy(crate::config::EMBEDDED_DEFAULT));
    }
}
