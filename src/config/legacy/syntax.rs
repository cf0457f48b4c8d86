//! The original honeytrap's configuration language (lcfg): a lexer and a parser
//! that turn a file and everything it includes into one tree of entries, each
//! with the file, line and column it was written at.
//!
//! The language: `key = "value"`, lists `key = ["a", "b"]`, blocks `key = { ... }`,
//! `//`, `/* */` (and `#`) comments, C string escapes, and `include = "file"`
//! (relative to the including file) spliced in where it stands. Liberal where
//! harmless: entries may end with `;` or `,`, list items may be separated by
//! commas or whitespace, and a bare word (`80`, `on`) is taken as a string.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most nested includes (a chain longer than this is surely a mistake).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Where something is written: file, 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<PathBuf>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A value: a string, a list, or a block of entries.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<(Value, Pos)>),
    Block(Vec<Entry>),
}

impl Value {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Block(_) => "a block",
        }
    }
}

/// `key = value`, with where the key and the value are written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub pos: Pos,
    pub value: Value,
    pub value_pos: Pos,
}

/// A syntax error (or an include that cannot be read) at a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parse `text` (the contents of `file`) and every file it includes.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Entry>, SyntaxError> {
    let start = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut stack = vec![start];
    parse_text(file, text, &mut stack)
}

fn parse_text(
    file: &Path,
    text: &str,
    stack: &mut Vec<PathBuf>,
) -> Result<Vec<Entry>, SyntaxError> {
    let file = Arc::new(file.to_path_buf());
    let tokens = lex(&file, text)?;
    let mut p = Parser {
        tokens,
        at: 0,
        file,
        stack,
    };
    let entries = p.block_body(false)?;
    Ok(entries)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Eq,
    Open,
    Close,
    LBracket,
    RBracket,
    Sep,
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Str(_) => "a string".into(),
        Tok::Eq => "`=`".into(),
        Tok::Open => "`{`".into(),
        Tok::Close => "`}`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Sep => "a separator".into(),
        Tok::End => "the end of the file".into(),
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.:+@".contains(c)
}

/// Split `text` into tokens with their positions.
fn lex(file: &Arc<PathBuf>, text: &str) -> Result<Vec<(Tok, Pos)>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let mut out = Vec::new();
    let pos = |line, column| Pos {
        file: file.clone(),
        line,
        column,
    };
    // Advance over chars[i], keeping line and column.
    macro_rules! bump {
        () => {{
            if chars[i] == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            i += 1;
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let here = pos(line, col);
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            bump!();
        } else if (c == '/' && next == Some('/')) || c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                bump!();
            }
        } else if c == '/' && next == Some('*') {
            bump!();
            bump!();
            loop {
                if i >= chars.len() {
                    return Err(SyntaxError {
                        pos: here,
                        message: "comment `/*` is never closed with `*/`".into(),
                    });
                }
                if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    bump!();
                    bump!();
                    break;
                }
                bump!();
            }
        } else if c == '"' {
            bump!();
            let mut s = String::new();
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err(SyntaxError {
                        pos: here,
                        message: "string is never closed with `\"`".into(),
                    });
                };
                if c == '"' {
                    bump!();
                    break;
                }
                if c != '\\' {
                    s.push(c);
                    bump!();
                    continue;
                }
                let esc_pos = pos(line, col);
                bump!();
                let Some(&e) = chars.get(i) else { continue };
                bump!();
                match e {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    '0' => s.push('\0'),
                    'a' => s.push('\x07'),
                    'b' => s.push('\x08'),
                    'f' => s.push('\x0c'),
                    'v' => s.push('\x0b'),
                    '\\' | '"' | '\'' | '/' => s.push(e),
                    '\n' => {} // a line continuation
                    'x' => {
                        let hex: String = chars[i..]
                            .iter()
                            .take(2)
                            .take_while(|c| c.is_ascii_hexdigit())
                            .collect();
                        let Ok(b) = u8::from_str_radix(&hex, 16) else {
                            return Err(SyntaxError {
                                pos: esc_pos,
                                message: "`\\x` must be followed by hex digits".into(),
                            });
                        };
                        for _ in 0..hex.len() {
                            bump!();
                        }
                        s.push(b as char);
                    }
                    other => {
                        return Err(SyntaxError {
                            pos: esc_pos,
                            message: format!("unknown escape `\\{other}` in a string"),
                        })
                    }
                }
            }
            out.push((Tok::Str(s), here));
        } else if is_word(c) {
            let mut w = String::new();
            while i < chars.len() && is_word(chars[i]) {
                w.push(chars[i]);
                bump!();
            }
            out.push((Tok::Word(w), here));
        } else {
            let t = match c {
                '=' => Tok::Eq,
                '{' => Tok::Open,
                '}' => Tok::Close,
                '[' => Tok::LBracket,
                ']' => Tok::RBracket,
                ',' | ';' => Tok::Sep,
                other => {
                    return Err(SyntaxError {
                        pos: here,
                        message: format!("unexpected character `{}`", other.escape_debug()),
                    })
                }
            };
            bump!();
            out.push((t, here));
        }
    }
    out.push((Tok::End, pos(line, col)));
    Ok(out)
}

struct Parser<'s> {
    tokens: Vec<(Tok, Pos)>,
    at: usize,
    file: Arc<PathBuf>,
    stack: &'s mut Vec<PathBuf>,
}

impl Parser<'_> {
    fn peek(&self) -> &(Tok, Pos) {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> (Tok, Pos) {
        let t = self.peek().clone();
        self.at += 1;
        t
    }

    fn error<T>(pos: Pos, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            pos,
            message: message.into(),
        })
    }

    /// Entries up to `}` (inside a block) or the end of the file (top level).
    fn block_body(&mut self, inner: bool) -> Result<Vec<Entry>, SyntaxError> {
        let mut entries = Vec::new();
        loop {
            let (tok, pos) = self.next();
            match tok {
                Tok::Sep => continue,
                Tok::End if !inner => return Ok(entries),
                Tok::Close if inner => return Ok(entries),
                Tok::End => return Self::error(pos, "block is never closed with `}`"),
                Tok::Word(key) | Tok::Str(key) => {
                    let (eq, eq_pos) = self.next();
                    if eq != Tok::Eq {
                        return Self::error(
                            eq_pos,
                            format!("expected `=` after `{key}`, found {}", describe(&eq)),
                        );
                    }
                    let (value, value_pos) = self.value()?;
                    if key == "include" {
                        self.include(&value, &value_pos, &mut entries)?;
                    } else {
                        entries.push(Entry {
                            key,
                            pos,
                            value,
                            value_pos,
                        });
                    }
                }
                other => {
                    return Self::error(pos, format!("expected a key, found {}", describe(&other)));
                }
            }
        }
    }

    fn value(&mut self) -> Result<(Value, Pos), SyntaxError> {
        let (tok, pos) = self.next();
        let v = match tok {
            Tok::Str(s) | Tok::Word(s) => Value::Str(s),
            Tok::Open => Value::Block(self.block_body(true)?),
            Tok::LBracket => {
                let mut items = Vec::new();
                loop {
                    match self.peek().0 {
                        Tok::Sep => {
                            self.next();
                        }
                        Tok::RBracket => {
                            self.next();
                            break;
                        }
                        Tok::End => return Self::error(pos, "list is never closed with `]`"),
                        _ => items.push(self.value()?),
                    }
                }
                Value::List(items)
            }
            other => {
                return Self::error(pos, format!("expected a value, found {}", describe(&other)))
            }
        };
        Ok((v, pos))
    }

    /// Splice the entries of the included file(s) in.
    fn include(
        &mut self,
        value: &Value,
        pos: &Pos,
        into: &mut Vec<Entry>,
    ) -> Result<(), SyntaxError> {
        let names: Vec<(String, Pos)> = match value {
            Value::Str(s) => vec![(s.clone(), pos.clone())],
            Value::List(items) => {
                let mut names = Vec::new();
                for (v, p) in items {
                    match v {
                        Value::Str(s) => names.push((s.clone(), p.clone())),
                        other => {
                            return Self::error(
                                p.clone(),
                                format!("include: expected a file name, found {}", other.kind()),
                            )
                        }
                    }
                }
                names
            }
            Value::Block(_) => {
                return Self::error(pos.clone(), "include: expected a file name, found a block")
            }
        };
        for (name, pos) in names {
            let dir = self.file.parent().unwrap_or(Path::new("."));
            let path = dir.join(&name);
            if self.stack.len() > MAX_INCLUDE_DEPTH {
                return Self::error(
                    pos,
                    format!("include of `{name}`: more than {MAX_INCLUDE_DEPTH} nested includes"),
                );
            }
            let text = std::fs::read_to_string(&path).map_err(|e| SyntaxError {
                pos: pos.clone(),
                message: format!("include of `{}`: cannot read: {e}", path.display()),
            })?;
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if self.stack.contains(&canon) {
                return Self::error(
                    pos,
                    format!(
                        "include of `{}` is a cycle (it includes itself)",
                        path.display()
                    ),
                );
            }
            self.stack.push(canon);
            let entries = parse_text(&path, &text, self.stack);
            self.stack.pop();
            into.extend(entries?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Entry>, SyntaxError> {
        parse_file(Path::new("t.conf"), text)
    }

    fn s(v: &Value) -> &str {
        match v {
            Value::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn values_comments_and_escapes() {
        let e = parse(
            "// line comment\n/* block\n comment */ a = \"x\\ty\\\"z\\x41\\n\" # hash\nb = [\"1\", \"2\",]; c = {\n  d = \"e\"\n  f = { g = \"h\" }\n}\nbare = 80\n",
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].key, "a");
        assert_eq!(s(&e[0].value), "x\ty\"zA\n");
        assert_eq!((e[0].pos.line, e[0].pos.column), (3, 13));
        let Value::List(items) = &e[1].value else {
            panic!()
        };
        assert_eq!(
            items.iter().map(|(v, _)| s(v)).collect::<Vec<_>>(),
            ["1", "2"]
        );
        let Value::Block(inner) = &e[2].value else {
            panic!()
        };
        assert_eq!(inner[0].key, "d");
        assert_eq!((inner[0].pos.line, inner[0].pos.column), (5, 3));
        assert!(matches!(&inner[1].value, Value::Block(b) if s(&b[0].value) == "h"));
        assert_eq!(s(&e[3].value), "80");
    }

    #[test]
    fn errors_are_located() {
        let at = |t: &str| {
            let e = parse(t).unwrap_err();
            (e.pos.line, e.pos.column, e.message)
        };
        let (l, c, m) = at("a = \"x\"\nb = \"unterminated\n");
        assert_eq!((l, c), (2, 5), "{m}");
        let (l, c, m) = at("a = {\n b = \"1\"\n");
        assert_eq!((l, c), (3, 1), "{m}");
        assert!(m.contains("never closed"), "{m}");
        let (l, c, m) = at("a \"x\"\n");
        assert_eq!((l, c), (1, 3), "{m}");
        assert!(m.contains("expected `=`"), "{m}");
        let (l, c, _) = at("x = \"a\"\n  /* open\n");
        assert_eq!((l, c), (2, 3));
        let (l, c, m) = at("a = \"\\q\"\n");
        assert_eq!((l, c), (1, 6), "{m}");
        let (l, c, _) = at("a = \"1\"\n  ! = \"2\"\n");
        assert_eq!((l, c), (2, 3));
    }

    #[test]
    fn includes_are_relative_and_cycles_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("b.conf"), "b = \"2\"\ninclude = \"c.conf\"\n").unwrap();
        std::fs::write(sub.join("c.conf"), "c = \"3\"\n").unwrap();
        let main = dir.path().join("a.conf");
        let text = "a = \"1\"\ninclude = \"sub/b.conf\"\nd = \"4\"\n";
        let e = parse_file(&main, text).unwrap();
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
        assert_eq!(*e[2].pos.file, sub.join("c.conf"));
        std::fs::write(sub.join("c.conf"), "include = \"b.conf\"\n").unwrap();
        let err = parse_file(&main, text).unwrap_err();
        assert!(err.message.contains("cycle"), "{err:?}");
        assert_eq!(*err.pos.file, sub.join("c.conf"));
        let err = parse_file(&main, "include = \"missing.conf\"\n").unwrap_err();
        assert!(err.message.contains("cannot read"), "{err:?}");
        assert_eq!((err.pos.line, err.pos.column), (1, 11));
    }
}
