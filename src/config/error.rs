//! Configuration errors that name the offending key and the line it is on.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used. Displayed as
/// `FILE:LINE: key `a.b`: message`.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the config came from (or `<embedded default>`).
    pub file: PathBuf,
    /// 1-based line of the key, when known.
    pub line: Option<usize>,
    /// 1-based column, when known (errors in the original's syntax).
    pub column: Option<usize>,
    /// Dotted key path such as `limits.read_timeout` or `ports.rule[2].ports`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A problem found after parsing, located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Attach file and line, looking the key up in the source text.
    pub fn locate(self, file: &Path, text: &str) -> ConfigError {
        let line = span_of(text, &self.key).map(|s| line_of(text, s.start));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column: None,
            key: self.key,
            message: self.message,
        }
    }
}

/// 1-based line number of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Find where a dotted key path (`a.b[2].c`) is written in a TOML text. Falls back to
/// the closest parent that exists, so a missing key still points near the right place.
pub fn span_of(text: &str, path: &str) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut best = None;
    let mut item: Option<&toml_edit::Item> = None;
    let mut table_like: Option<&dyn toml_edit::TableLike> = Some(doc.as_table());
    for seg in segments(path) {
        match seg {
            Seg::Key(k) => {
                let Some((key, it)) = table_like.and_then(|t| t.get_key_value(k)) else {
                    return best;
                };
                best = key.span().or(it.span()).or(best);
                item = Some(it);
                table_like = it.as_table_like();
            }
            Seg::Index(i) => {
                let Some(it) = item else { return best };
                if let Some(aot) = it.as_array_of_tables() {
                    let Some(t) = aot.get(i) else { return best };
                    best = t.span().or(best);
                    table_like = Some(t);
                    item = None;
                } else if let Some(arr) = it.as_array() {
                    let Some(v) = arr.get(i) else { return best };
                    best = v.span().or(best);
                    table_like = v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike);
                    item = None;
                } else {
                    return best;
                }
            }
        }
    }
    best
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[limits]\nread_timeout = \"1s\"\n\n[[ports.rule]]\nports = [1]\n\n[[ports.rule]]\nports = [2, 3]\nmode = \"ignore\"\n";

    #[test]
    fn finds_nested_keys() {
        let line = |p: &str| span_of(TEXT, p).map(|s| line_of(TEXT, s.start));
        assert_eq!(line("limits.read_timeout"), Some(2));
        assert_eq!(line("ports.rule[1].mode"), Some(9));
        assert_eq!(line("ports.rule[1].ports[1]"), Some(8));
        assert_eq!(line("ports.rule[0].ports"), Some(5));
        // Missing key: the closest parent.
        assert_eq!(line("ports.rule[0].response"), Some(4));
    }

    #[test]
    fn display_names_file_line_and_key() {
        let e = Invalid::new("limits.read_timeout", "must be more than 0")
            .locate(Path::new("h.toml"), TEXT);
        assert_eq!(
            e.to_string(),
            "h.toml:2: key `limits.read_timeout`: must be more than 0"
        );
    }
}
