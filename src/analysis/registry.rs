//! The one place analyzers are listed. Each analyzer file provides a
//! [`Registration`]: its name, stage, a one-line description, how to read its
//! `[analyzer.<name>]` options, and how to build it. Adding an analyzer is one file,
//! one line in [`all`] and one section in `docs/analysis.md`.

use super::{Analyzer, Stage};
use crate::config::Config;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// How to make one analyzer.
pub struct Registration {
    pub name: &'static str,
    pub stage: Stage,
    /// One line for `honeytrap analyzers`.
    pub about: &'static str,
    /// Check the `[analyzer.<name>]` table and return it with every default filled
    /// in. Err is (key path inside the table, message).
    pub options: fn(&toml::Table) -> Result<toml::Table, (String, String)>,
    /// Build the analyzer from its checked options; None when it is disabled.
    pub build: BuildFn,
}

/// Builds an analyzer from its checked options; None when it is disabled.
pub type BuildFn = fn(&toml::Table, &Config) -> anyhow::Result<Option<Arc<dyn Analyzer>>>;

/// Every analyzer honeytrap has, in the order they run within a stage.
pub fn all() -> Vec<Registration> {
    vec![
        // per-read
        super::protocol::registration(),
        // decode
        super::http_body::registration(),
        super::vnc::registration(),
        super::percent::registration(),
        super::base64::registration(),
        super::utf16::registration(),
        // analyze
        super::selftest::registration(),
        super::shellcode::registration(),
        super::exe::registration(),
        super::fuzzy::registration(),
        super::download::http::registration(),
        super::download::tftp::registration(),
        super::download::ftp::registration(),
        super::yara::registration(),
        super::clamav::registration(),
        // store
        super::download::store::registration(),
    ]
}

/// Options every analyzer has.
pub trait Options: Serialize + DeserializeOwned + Default {
    /// The `enabled` key.
    fn enabled(&self) -> bool;
}

/// Read an analyzer's options from its table (unknown keys refused).
pub fn parse<O: Options>(table: &toml::Table) -> Result<O, (String, String)> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// [`Registration::options`] for an options type.
pub fn options<O: Options>(table: &toml::Table) -> Result<toml::Table, (String, String)> {
    let o: O = parse(table)?;
    match toml::Value::try_from(&o) {
        Ok(toml::Value::Table(t)) => Ok(t),
        _ => Err((String::new(), "options do not serialize".into())),
    }
}

/// [`Registration::build`] for an analyzer made from its options alone.
pub fn build_with<O: Options, A: Analyzer>(
    table: &toml::Table,
    make: impl FnOnce(O) -> anyhow::Result<A>,
) -> anyhow::Result<Option<Arc<dyn Analyzer>>> {
    let o: O = parse(table).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    if !o.enabled() {
        return Ok(None);
    }
    Ok(Some(Arc::new(make(o)?)))
}

/// Find a registration by name.
pub fn find(name: &str) -> Option<Registration> {
    all().into_iter().find(|r| r.name == name)
}

/// The names of every analyzer, for error messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|r| r.name).collect()
}

/// The per-read analyzers, shared by every session.
pub type PerRead = Arc<Vec<Arc<dyn Analyzer>>>;

/// The enabled analyzers of `config`, grouped by stage, in registry order.
#[derive(Default)]
pub struct AnalyzerSet {
    pub per_read: Vec<Arc<dyn Analyzer>>,
    pub decode: Vec<Arc<dyn Analyzer>>,
    pub analyze: Vec<Arc<dyn Analyzer>>,
    pub store: Vec<Arc<dyn Analyzer>>,
    pub post_process: Vec<Arc<dyn Analyzer>>,
}

impl AnalyzerSet {
    /// Build every enabled analyzer (the config has been validated and filled).
    pub fn build(config: &Config) -> anyhow::Result<AnalyzerSet> {
        let mut set = AnalyzerSet::default();
        if !config.analysis.enabled {
            return Ok(set);
        }
        let empty = toml::Table::new();
        for r in all() {
            let table = config.analyzer.get(r.name).unwrap_or(&empty);
            let Some(a) = (r.build)(table, config)
                .map_err(|e| anyhow::anyhow!("analyzer.{}: {e:#}", r.name))?
            else {
                continue;
            };
            match r.stage {
                Stage::PerRead => set.per_read.push(a),
                Stage::Decode => set.decode.push(a),
                Stage::Analyze => set.analyze.push(a),
                Stage::Store => set.store.push(a),
                Stage::PostProcess => set.post_process.push(a),
            }
        }
        Ok(set)
    }

    /// True when no analyzer after capture is enabled.
    pub fn is_empty(&self) -> bool {
        self.decode.is_empty()
            && self.analyze.is_empty()
            && self.store.is_empty()
            && self.post_process.is_empty()
    }

    /// Names of the enabled analyzers.
    pub fn names(&self) -> Vec<&'static str> {
        [
            &self.per_read,
            &self.decode,
            &self.analyze,
            &self.store,
            &self.post_process,
        ]
        .iter()
        .flat_map(|v| v.iter().map(|a| a.name()))
        .collect()
    }
}

/// Check the `[analyzer.*]` tables and fill in every analyzer's defaults, so the
/// effective configuration shows them. Err is (key, message).
pub fn check_and_fill(
    tables: &mut std::collections::BTreeMap<String, toml::Table>,
) -> Result<(), (String, String)> {
    for name in tables.keys() {
        if find(name).is_none() {
            return Err((
                format!("analyzer.{name}"),
                format!("unknown analyzer `{name}` (known: {})", names().join(", ")),
            ));
        }
    }
    for r in all() {
        let table = tables.get(r.name).cloned().unwrap_or_default();
        let filled = (r.options)(&table).map_err(|(k, m)| {
            let key = if k.is_empty() {
                format!("analyzer.{}", r.name)
            } else {
                format!("analyzer.{}.{k}", r.name)
            };
            (key, m)
        })?;
        tables.insert(r.name.to_string(), filled);
    }
    Ok(())
}
