//! The sniff monitor's extra filter expression (`monitor.sniff.filter`, and the
//! original command line's trailing expression): a subset of libpcap's filter
//! syntax, parsed here by hand (no libpcap, no C library) and evaluated in user
//! space on each packet the monitor's kernel filter already kept, that is on the
//! outgoing TCP RST or ICMP / ICMPv6 port unreachable.
//!
//! The meanings are pcap's, on that outgoing packet, as in the original (which
//! ANDed the expression with its own BPF filter): `src` is this host, `dst` the
//! attacker; a RST has ports (ours is `src port`), an ICMP error has none, so
//! `port`, `portrange`, `tcp` and `udp` never match one (`icmp` / `icmp6` do).
//! An expression can thus be checked with tcpdump on the same interface.
//!
//! The subset: `[src|dst|src or dst|src and dst] host ADDR`, `... net ADDR/LEN`,
//! `net ADDR mask MASK`, `net 10.1` (abbreviated IPv4), `[tcp|udp] [dir] port N`,
//! `[tcp|udp] [dir] portrange N-M`, `[ip|ip6] [dir] host|net ...`, `tcp`, `udp`,
//! `icmp`, `icmp6`, `ip`, `ip6`; `not`/`!`, `and`/`&&`, `or`/`||` and parentheses.
//! As in pcap, `not` binds tightest and `and` and `or` have the same precedence,
//! left to right (`a or b and c` is `(a or b) and c`), and a bare value takes the
//! qualifiers of the primitive before it (`host 10.0.0.1 or 10.0.0.2`,
//! `port 80 or 443`). Everything else is an error naming the token and its column.

use super::packet::{be16, ipv4, ipv6};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 1024;

/// Deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 32;

/// What the subset supports (in every error message).
pub const SUPPORTED: &str = "supported: [src|dst] host ADDR, [src|dst] net ADDR/LEN, net ADDR mask MASK, [tcp|udp] [src|dst] port N, [tcp|udp] [src|dst] portrange N-M, tcp, udp, icmp, icmp6, ip, ip6, not/!, and/&&, or/||, ( )";

/// A parse error: what is wrong, at which token (1-based character column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub column: usize,
    pub token: String,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "column {}: {} ({SUPPORTED})", self.column, self.message)
        } else {
            write!(
                f,
                "column {}, `{}`: {} ({SUPPORTED})",
                self.column, self.token, self.message
            )
        }
    }
}

impl std::error::Error for FilterError {}

/// Which address or port of the packet a primitive looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
    Both,
}

/// A protocol primitive (or qualifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Ip,
    Ip6,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

/// The type qualifier of a primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
}

/// The qualifiers a bare value inherits (pcap's "implicit qualifier").
#[derive(Debug, Clone, Copy)]
struct Quals {
    proto: Option<Proto>,
    dir: Dir,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Proto(Proto),
    /// Address prefix (a host is a full-length prefix).
    Net(Dir, IpAddr, u8),
    /// Port range, optionally only of TCP or UDP.
    Port(Dir, Option<Proto>, u16, u16),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    expr: Expr,
    text: String,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parse `text`; `Ok(None)` when it is empty (or only blanks): no filter.
pub fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
    if text.len() > MAX_LEN {
        return Err(FilterError {
            column: MAX_LEN + 1,
            token: String::new(),
            message: format!("the expression is longer than {MAX_LEN} bytes"),
        });
    }
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
        last: None,
        end: text.chars().count() + 1,
    };
    let expr = p.expr()?;
    if let Some(t) = p.peek() {
        let msg = if t.text == ")" {
            "unbalanced `)`"
        } else {
            "expected `and` or `or` before this"
        };
        return Err(p.error_at(p.at, msg));
    }
    Ok(Some(Filter {
        expr,
        text: text.split_whitespace().collect::<Vec<_>>().join(" "),
    }))
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    /// 1-based character column.
    column: usize,
}

/// Split into words, parentheses and `!`, `&&`, `||`.
fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let len = if word(c) {
            chars[i..].iter().take_while(|&&c| word(c)).count()
        } else if matches!(c, '(' | ')') || (c == '!' && chars.get(i + 1) != Some(&'=')) {
            1
        } else if (c == '&' || c == '|') && chars.get(i + 1) == Some(&c) {
            2
        } else {
            let hint = match c {
                '[' | ']' => " (byte offsets such as `tcp[13]` are not supported)",
                '=' | '<' | '>' | '&' | '|' | '+' | '*' | '!' => {
                    " (arithmetic and comparisons are not supported)"
                }
                _ => "",
            };
            return Err(FilterError {
                column,
                token: c.to_string(),
                message: format!("unexpected character{hint}"),
            });
        };
        out.push(Token {
            text: chars[i..i + len].iter().collect(),
            column,
        });
        i += len;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    /// Qualifiers of the last primitive, for a bare value.
    last: Option<Quals>,
    /// Column just past the end (errors at the end of input).
    end: usize,
}

/// Words that are keywords (not values).
fn is_keyword(w: &str) -> bool {
    matches!(
        w,
        "and" | "or" | "not" | "src" | "dst" | "host" | "net" | "mask" | "port" | "portrange"
    ) || proto_of(w).is_some()
}

fn proto_of(w: &str) -> Option<Proto> {
    Some(match w {
        "ip" => Proto::Ip,
        "ip6" => Proto::Ip6,
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "icmp6" => Proto::Icmp6,
        _ => return None,
    })
}

fn kind_of(w: &str) -> Option<Kind> {
    Some(match w {
        "host" => Kind::Host,
        "net" => Kind::Net,
        "port" => Kind::Port,
        "portrange" => Kind::PortRange,
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_is(&self, offset: usize, words: &[&str]) -> bool {
        self.tokens
            .get(self.at + offset)
            .is_some_and(|t| words.contains(&t.text.as_str()))
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> FilterError {
        match self.tokens.get(at) {
            Some(t) => FilterError {
                column: t.column,
                token: t.text.clone(),
                message: message.into(),
            },
            None => FilterError {
                column: self.end,
                token: String::new(),
                message: format!("{} at the end of the expression", message.into()),
            },
        }
    }

    /// expr := unary { (and | or) unary }, left to right, one precedence.
    fn expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        loop {
            let and = if self.peek_is(0, &["and", "&&"]) {
                true
            } else if self.peek_is(0, &["or", "||"]) {
                false
            } else {
                return Ok(left);
            };
            self.at += 1;
            let right = self.unary()?;
            left = if and {
                Expr::And(Box::new(left), Box::new(right))
            } else {
                Expr::Or(Box::new(left), Box::new(right))
            };
        }
    }

    /// unary := (not | !) unary | ( expr ) | primitive
    fn unary(&mut self) -> Result<Expr, FilterError> {
        let Some(t) = self.peek() else {
            return Err(self.error_at(self.at, "expected a primitive"));
        };
        let nested = t.text == "not" || t.text == "!" || t.text == "(";
        if !nested {
            return self.primitive();
        }
        if self.depth >= MAX_DEPTH {
            return Err(self.error_at(
                self.at,
                format!("nested deeper than {MAX_DEPTH} (parentheses and `not`)"),
            ));
        }
        let open = self.at;
        let paren = t.text == "(";
        self.at += 1;
        self.depth += 1;
        let e = if paren {
            let e = self.expr()?;
            if !self.peek_is(0, &[")"]) {
                let mut err = self.error_at(self.at, "expected `)`");
                err.message += &format!(" to close the `(` at column {}", self.tokens[open].column);
                return Err(err);
            }
            self.at += 1;
            e
        } else {
            Expr::Not(Box::new(self.unary()?))
        };
        self.depth -= 1;
        Ok(e)
    }

    /// [proto] [dir] [kind] value, a bare protocol, or a bare value.
    fn primitive(&mut self) -> Result<Expr, FilterError> {
        let start = self.at;
        let first = self.tokens[start].text.clone();
        if !is_keyword(&first) {
            return self.bare_value();
        }
        let mut proto = None;
        if let Some(p) = proto_of(&first) {
            self.at += 1;
            let qualifies = self.peek().is_some_and(|t| {
                matches!(t.text.as_str(), "src" | "dst") || kind_of(&t.text).is_some()
            });
            if !qualifies {
                return Ok(Expr::Proto(p));
            }
            proto = Some(p);
        }
        let dir = self.direction()?;
        let kind_at = self.at;
        let kind = match self.peek().and_then(|t| kind_of(&t.text)) {
            Some(k) => {
                self.at += 1;
                k
            }
            // pcap: a direction without a type means `host`.
            None if dir.is_some() => Kind::Host,
            None => return Err(self.error_at(start, self.unknown_word(start))),
        };
        let fits = matches!(
            (proto, kind),
            (None, _)
                | (Some(Proto::Tcp | Proto::Udp), Kind::Port | Kind::PortRange)
                | (Some(Proto::Ip | Proto::Ip6), Kind::Host | Kind::Net)
        );
        if !fits {
            return Err(self.error_at(
                kind_at.min(self.tokens.len() - 1),
                format!("`{first}` cannot qualify this (only tcp/udp before port or portrange, ip/ip6 before host or net)"),
            ));
        }
        let q = Quals {
            proto,
            dir: dir.unwrap_or(Dir::Either),
            kind,
        };
        self.last = Some(q);
        self.value(q)
    }

    /// `src`, `dst`, `src or dst`, `src and dst` (and the same with `dst` first).
    fn direction(&mut self) -> Result<Option<Dir>, FilterError> {
        let first = match self.peek().map(|t| t.text.as_str()) {
            Some("src") => Dir::Src,
            Some("dst") => Dir::Dst,
            _ => return Ok(None),
        };
        self.at += 1;
        let other = if first == Dir::Src { "dst" } else { "src" };
        if self.peek_is(1, &[other]) {
            if self.peek_is(0, &["or", "||"]) {
                self.at += 2;
                return Ok(Some(Dir::Either));
            }
            if self.peek_is(0, &["and", "&&"]) {
                self.at += 2;
                return Ok(Some(Dir::Both));
            }
        }
        Ok(Some(first))
    }

    /// A value without qualifiers: those of the primitive before, else `host`.
    fn bare_value(&mut self) -> Result<Expr, FilterError> {
        match self.last {
            Some(q) => self.value(q),
            None if self.tokens[self.at].text.parse::<IpAddr>().is_ok() => self.value(Quals {
                proto: None,
                dir: Dir::Either,
                kind: Kind::Host,
            }),
            None => Err(self.error_at(self.at, self.unknown_word(self.at))),
        }
    }

    fn unknown_word(&self, at: usize) -> String {
        let w = &self.tokens[at].text;
        if is_keyword(w) || w == ")" {
            "expected a primitive here".into()
        } else if w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            "a value without a qualifier (write `host ...`, `net ...` or `port ...`)".into()
        } else {
            "unknown or unsupported word".into()
        }
    }

    /// The value of a primitive of qualifiers `q`.
    fn value(&mut self, q: Quals) -> Result<Expr, FilterError> {
        let at = self.at;
        let Some(t) = self.peek() else {
            return Err(self.error_at(at, "expected a value"));
        };
        let v = t.text.clone();
        if is_keyword(&v) || v == "(" || v == ")" || v == "!" {
            return Err(self.error_at(at, "expected a value"));
        }
        self.at += 1;
        let bad = |m: &str| self.error_at(at, m);
        let family_ok = |a: &IpAddr| match q.proto {
            Some(Proto::Ip) => a.is_ipv4(),
            Some(Proto::Ip6) => a.is_ipv6(),
            _ => true,
        };
        match q.kind {
            Kind::Host => {
                let a: IpAddr = v
                    .parse()
                    .map_err(|_| bad("not an IP address (host names are not resolved)"))?;
                if !family_ok(&a) {
                    return Err(bad("address family does not match the ip/ip6 qualifier"));
                }
                Ok(Expr::Net(q.dir, a, full_len(&a)))
            }
            Kind::Net => {
                let (a, len) = self.net(&v, at)?;
                if !family_ok(&a) {
                    return Err(
                        self.error_at(at, "address family does not match the ip/ip6 qualifier")
                    );
                }
                Ok(Expr::Net(q.dir, a, len))
            }
            Kind::Port => {
                let n = port_number(&v).ok_or_else(|| {
                    bad("not a port number 0-65535 (service names are not resolved)")
                })?;
                Ok(Expr::Port(q.dir, q.proto, n, n))
            }
            Kind::PortRange => {
                let range = v
                    .split_once('-')
                    .and_then(|(a, b)| Some((port_number(a)?, port_number(b)?)))
                    .ok_or_else(|| bad("not a port range N-M (0-65535)"))?;
                // pcap accepts the ends in either order.
                let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
                Ok(Expr::Port(q.dir, q.proto, lo, hi))
            }
        }
    }

    /// `ADDR/LEN`, `ADDR mask MASK` (IPv4) or `ADDR` (abbreviated IPv4: `10`, `10.1`).
    fn net(&mut self, v: &str, at: usize) -> Result<(IpAddr, u8), FilterError> {
        let bad = |m: &str| self.error_at(at, m);
        let (a, len) = if let Some((addr, len)) = v.split_once('/') {
            let a = net_address(addr)
                .ok_or_else(|| bad("not a network address"))?
                .0;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= full_len(&a))
                .ok_or_else(|| bad("prefix length out of range"))?;
            (a, len)
        } else {
            let (a, len) = net_address(v).ok_or_else(|| bad("not a network address"))?;
            if self.peek_is(0, &["mask"]) {
                let mask_at = self.at + 1;
                self.at += 2;
                let mask: Option<Ipv4Addr> =
                    self.tokens.get(mask_at).and_then(|t| t.text.parse().ok());
                let len = match (a, mask) {
                    (IpAddr::V4(_), Some(m))
                        if (!u32::from(m)).leading_zeros() + u32::from(m).trailing_zeros()
                            == 32 =>
                    {
                        u32::from(m).leading_ones() as u8
                    }
                    (IpAddr::V4(_), _) => {
                        return Err(self.error_at(mask_at, "not a contiguous IPv4 netmask"))
                    }
                    (IpAddr::V6(_), _) => {
                        return Err(self
                            .error_at(at, "`mask` applies to IPv4 networks only (write ADDR/LEN)"))
                    }
                };
                (a, len)
            } else {
                (a, len)
            }
        };
        if prefix(&a, len) != a {
            return Err(self.error_at(
                at,
                "non-network bits set (the address has bits beyond the prefix length)",
            ));
        }
        Ok((a, len))
    }
}

/// A decimal port number.
fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 5 {
        return None;
    }
    s.parse().ok()
}

/// A network address and its implied length: a full address (32 or 128), or an
/// abbreviated IPv4 one of 1 to 3 parts (`10` is 10.0.0.0/8, `192.168` /16).
fn net_address(s: &str) -> Option<(IpAddr, u8)> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some((a, full_len(&a)));
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some((IpAddr::V4(Ipv4Addr::from(o)), 8 * parts.len() as u8))
}

fn full_len(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// `a` with the bits beyond `len` cleared.
fn prefix(a: &IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(*v) & m))
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(*v) & m))
        }
    }
}

// ---------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------

/// What the primitives look at in one packet (its outer headers).
struct View {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Source and destination port, for TCP and UDP only.
    ports: Option<(u16, u16)>,
}

impl View {
    fn of(p: &[u8]) -> Option<View> {
        let (src, dst, proto, rest) = match p.first().map(|b| b >> 4) {
            Some(4) => ipv4(p).ok()?,
            Some(6) => ipv6(p).ok()?,
            _ => return None,
        };
        let ports = match proto {
            6 | 17 => Some((be16(rest, 0).ok()?, be16(rest, 2).ok()?)),
            _ => None,
        };
        Some(View {
            src,
            dst,
            proto,
            ports,
        })
    }
}

fn by_dir<T>(dir: Dir, src: T, dst: T, test: impl Fn(T) -> bool) -> bool {
    match dir {
        Dir::Src => test(src),
        Dir::Dst => test(dst),
        Dir::Either => test(src) || test(dst),
        Dir::Both => test(src) && test(dst),
    }
}

fn in_net(a: IpAddr, net: IpAddr, len: u8) -> bool {
    a.is_ipv4() == net.is_ipv4() && prefix(&a, len) == net
}

impl Expr {
    fn eval(&self, v: &View) -> bool {
        match self {
            Expr::And(a, b) => a.eval(v) && b.eval(v),
            Expr::Or(a, b) => a.eval(v) || b.eval(v),
            Expr::Not(a) => !a.eval(v),
            Expr::Proto(p) => match p {
                Proto::Ip => v.src.is_ipv4(),
                Proto::Ip6 => v.src.is_ipv6(),
                Proto::Tcp => v.proto == 6,
                Proto::Udp => v.proto == 17,
                Proto::Icmp => v.src.is_ipv4() && v.proto == 1,
                Proto::Icmp6 => v.src.is_ipv6() && v.proto == 58,
            },
            Expr::Net(dir, net, len) => by_dir(*dir, v.src, v.dst, |a| in_net(a, *net, *len)),
            Expr::Port(dir, proto, lo, hi) => {
                let proto_ok = match proto {
                    Some(Proto::Tcp) => v.proto == 6,
                    Some(Proto::Udp) => v.proto == 17,
                    _ => true,
                };
                match v.ports {
                    Some((s, d)) if proto_ok => by_dir(*dir, s, d, |p| (*lo..=*hi).contains(&p)),
                    _ => false,
                }
            }
        }
    }
}

impl Filter {
    /// Whether the packet (from its IP header on) passes, with pcap's meaning. A
    /// packet whose headers cannot be read does not (as in BPF).
    pub fn matches(&self, packet: &[u8]) -> bool {
        View::of(packet).is_some_and(|v| self.expr.eval(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .unwrap()
            .expr
    }

    fn err(s: &str) -> FilterError {
        parse(s).expect_err(s)
    }

    fn host(dir: Dir, a: &str) -> Expr {
        let a: IpAddr = a.parse().unwrap();
        Expr::Net(dir, a, full_len(&a))
    }

    fn port(n: u16) -> Expr {
        Expr::Port(Dir::Either, None, n, n)
    }

    fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(Box::new(a), Box::new(b))
    }

    fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(Box::new(a), Box::new(b))
    }

    fn not(a: Expr) -> Expr {
        Expr::Not(Box::new(a))
    }

    #[test]
    fn empty_is_no_filter() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  \t ").unwrap(), None);
    }

    #[test]
    fn primitives() {
        assert_eq!(p("host 10.0.0.1"), host(Dir::Either, "10.0.0.1"));
        assert_eq!(p("src host 2001:db8::1"), host(Dir::Src, "2001:db8::1"));
        assert_eq!(p("dst 10.0.0.1"), host(Dir::Dst, "10.0.0.1"));
        assert_eq!(p("src and dst host 10.0.0.1"), host(Dir::Both, "10.0.0.1"));
        assert_eq!(p("dst or src host 10.0.0.1"), host(Dir::Either, "10.0.0.1"));
        assert_eq!(p("10.0.0.1"), host(Dir::Either, "10.0.0.1"));
        let net = |d, a: &str, l| Expr::Net(d, a.parse().unwrap(), l);
        assert_eq!(p("net 10.0.0.0/8"), net(Dir::Either, "10.0.0.0", 8));
        assert_eq!(p("src net 10.1"), net(Dir::Src, "10.1.0.0", 16));
        assert_eq!(
            p("dst net 192.168.0.0 mask 255.255.0.0"),
            net(Dir::Dst, "192.168.0.0", 16)
        );
        assert_eq!(p("net 2001:db8::/32"), net(Dir::Either, "2001:db8::", 32));
        assert_eq!(
            p("ip6 net 2001:db8::/32"),
            net(Dir::Either, "2001:db8::", 32)
        );
        assert_eq!(p("port 80"), port(80));
        assert_eq!(
            p("tcp dst port 80"),
            Expr::Port(Dir::Dst, Some(Proto::Tcp), 80, 80)
        );
        assert_eq!(
            p("portrange 2000-1000"),
            Expr::Port(Dir::Either, None, 1000, 2000)
        );
        assert_eq!(
            p("udp src portrange 1-2"),
            Expr::Port(Dir::Src, Some(Proto::Udp), 1, 2)
        );
        for (w, pr) in [
            ("tcp", Proto::Tcp),
            ("udp", Proto::Udp),
            ("icmp", Proto::Icmp),
            ("icmp6", Proto::Icmp6),
            ("ip", Proto::Ip),
            ("ip6", Proto::Ip6),
        ] {
            assert_eq!(p(w), Expr::Proto(pr));
        }
        assert_eq!(
            parse("  tcp   and\tport 80 ").unwrap().unwrap().to_string(),
            "tcp and port 80"
        );
    }

    #[test]
    fn precedence_is_pcaps() {
        // `and` and `or` bind equally, left to right; `not` binds tightest.
        assert_eq!(
            p("tcp or udp and port 80"),
            and(
                or(Expr::Proto(Proto::Tcp), Expr::Proto(Proto::Udp)),
                port(80)
            )
        );
        assert_eq!(
            p("tcp and udp or port 80"),
            or(
                and(Expr::Proto(Proto::Tcp), Expr::Proto(Proto::Udp)),
                port(80)
            )
        );
        assert_eq!(
            p("not tcp and port 80"),
            and(not(Expr::Proto(Proto::Tcp)), port(80))
        );
        assert_eq!(
            p("! (tcp || port 80) && ip"),
            and(
                not(or(Expr::Proto(Proto::Tcp), port(80))),
                Expr::Proto(Proto::Ip)
            )
        );
        assert_eq!(p("not not ip"), not(not(Expr::Proto(Proto::Ip))));
    }

    #[test]
    fn implicit_qualifiers() {
        assert_eq!(
            p("host 10.0.0.1 or 10.0.0.2"),
            or(host(Dir::Either, "10.0.0.1"), host(Dir::Either, "10.0.0.2"))
        );
        assert_eq!(
            p("tcp dst port 80 or 443"),
            or(
                Expr::Port(Dir::Dst, Some(Proto::Tcp), 80, 80),
                Expr::Port(Dir::Dst, Some(Proto::Tcp), 443, 443)
            )
        );
        // pcap: `not host a and b` is `not host a and host b`.
        assert_eq!(
            p("not src host 10.0.0.1 and 10.0.0.2"),
            and(not(host(Dir::Src, "10.0.0.1")), host(Dir::Src, "10.0.0.2"))
        );
    }

    #[test]
    fn errors_name_the_token_and_column() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("tcp[13] & 4 != 0", 4, "[", "byte offsets"),
            (
                "ether host 0:1:2:3:4:5",
                1,
                "ether",
                "unknown or unsupported",
            ),
            ("port 80 and", 12, "", "at the end"),
            (
                "host example.com",
                6,
                "example.com",
                "host names are not resolved",
            ),
            ("port http", 6, "http", "service names"),
            ("port 65536", 6, "65536", "0-65535"),
            ("portrange 10", 11, "10", "N-M"),
            ("(tcp or udp", 12, "", "`(` at column 1"),
            ("tcp)", 4, ")", "unbalanced"),
            ("tcp udp", 5, "udp", "expected `and` or `or`"),
            ("net 10.0.0.1/8", 5, "10.0.0.1/8", "non-network bits"),
            ("net 10.0.0.0/33", 5, "10.0.0.0/33", "prefix length"),
            (
                "net 10.0.0.0 mask 255.0.255.0",
                19,
                "255.0.255.0",
                "netmask",
            ),
            ("tcp host 10.0.0.1", 5, "host", "cannot qualify"),
            ("ip6 host 10.0.0.1", 10, "10.0.0.1", "family"),
            ("80", 1, "80", "without a qualifier"),
            ("less 100", 1, "less", "unsupported"),
            ("port 80 or ", 12, "", "at the end"),
            ("host", 5, "", "expected a value"),
            ("src port", 9, "", "expected a value"),
            ("port 1 == 1", 8, "=", "comparisons"),
        ];
        for &(s, column, token, needle) in cases {
            let e = err(s);
            assert_eq!((e.column, e.token.as_str()), (column, token), "{s}: {e}");
            let text = e.to_string();
            assert!(text.contains(needle), "{s}: {text}");
            assert!(text.contains("supported: [src|dst] host"), "{text}");
        }
    }

    #[test]
    fn limits_are_bounded() {
        let deep = format!("{}tcp{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&deep).is_ok());
        let deeper = format!(
            "{}tcp{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = err(&deeper);
        assert_eq!(e.column, MAX_DEPTH + 1);
        assert!(e.message.contains("nested deeper"), "{e}");
        let nots = format!("{}tcp", "not ".repeat(MAX_DEPTH + 1));
        assert!(err(&nots).message.contains("nested deeper"));
        let long = "tcp or ".repeat(MAX_LEN / 7 + 1) + "udp";
        assert!(err(&long).message.contains("longer than 1024"));
        // A long flat chain just under the limit parses and evaluates.
        let flat = vec!["port 1"; MAX_LEN / 11].join(" or ");
        assert!(flat.len() <= MAX_LEN);
        assert!(!parse(&flat).unwrap().unwrap().matches(&[]));
    }

    // --- evaluation on constructed packets -------------------------------------

    fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    fn v6(next: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(payload);
        h
    }

    fn ports(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend_from_slice(&dport.to_be_bytes());
        t
    }

    /// RST|ACK seq 0 from us (10.0.0.1:2222) to the attacker (203.0.113.9:40000).
    fn rst4() -> Vec<u8> {
        let mut t = ports(2222, 40000);
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 4, 210, 0x50, 0x14, 0, 0, 0, 0, 0, 0]);
        v4(6, [10, 0, 0, 1], [203, 0, 113, 9], &t)
    }

    /// Port unreachable from us about 203.0.113.9:41000 -> 10.0.0.1:5060.
    fn unreach4() -> Vec<u8> {
        let mut udp = ports(41000, 5060);
        udp.extend_from_slice(&[0, 8, 0, 0]);
        let quoted = v4(17, [203, 0, 113, 9], [10, 0, 0, 1], &udp);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend(quoted);
        v4(1, [10, 0, 0, 1], [203, 0, 113, 9], &icmp)
    }

    fn rst6() -> Vec<u8> {
        let mut t = ports(2222, 40000);
        t.extend_from_slice(&[0; 16]);
        v6(6, "fd00::1", "2001:db8::9", &t)
    }

    fn unreach6() -> Vec<u8> {
        let mut udp = ports(41000, 5060);
        udp.extend_from_slice(&[0, 8, 0, 0]);
        let quoted = v6(17, "2001:db8::9", "fd00::1", &udp);
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend(quoted);
        v6(58, "fd00::1", "2001:db8::9", &icmp)
    }

    fn m(expr: &str, packet: &[u8]) -> bool {
        parse(expr).unwrap().unwrap().matches(packet)
    }

    #[test]
    fn on_a_reset_src_is_us_and_dst_the_attacker() {
        let r = rst4();
        for yes in [
            "tcp",
            "ip",
            "port 2222",
            "src port 2222",
            "dst port 40000",
            "tcp src port 2222",
            "portrange 2000-3000",
            "src host 10.0.0.1",
            "dst host 203.0.113.9",
            "host 203.0.113.9",
            "net 203.0.113.0/24",
            "dst net 203.0.113.0 mask 255.255.255.0",
            "src net 10",
            "not port 22",
            "not host 198.51.100.1 and tcp",
            "host 198.51.100.1 or 203.0.113.9",
            "ip and not ip6",
        ] {
            assert!(m(yes, &r), "{yes}");
        }
        for no in [
            "udp",
            "icmp",
            "ip6",
            "port 40001",
            "dst port 2222",
            "src port 40000",
            "udp port 2222",
            "src host 203.0.113.9",
            "src and dst host 10.0.0.1",
            "net 2001:db8::/32",
            "not port 2222",
            "not tcp or port 1",
        ] {
            assert!(!m(no, &r), "{no}");
        }
        let r6 = rst6();
        assert!(m(
            "ip6 and tcp and src host fd00::1 and dst net 2001:db8::/32 and port 2222",
            &r6
        ));
        assert!(!m("ip or icmp6 or host 10.0.0.1", &r6));
    }

    #[test]
    fn on_a_port_unreachable_there_are_no_ports() {
        // pcap's literal meaning on the outgoing ICMP error: no `port`, no `udp`.
        let u = unreach4();
        for yes in [
            "icmp",
            "ip",
            "src host 10.0.0.1",
            "dst host 203.0.113.9",
            "not port 5060",
            "not udp",
            "icmp or port 5060",
        ] {
            assert!(m(yes, &u), "{yes}");
        }
        for no in [
            "port 5060",
            "port 41000",
            "udp",
            "tcp",
            "portrange 1-65535",
            "icmp6",
            "src host 203.0.113.9",
        ] {
            assert!(!m(no, &u), "{no}");
        }
        let u6 = unreach6();
        for yes in [
            "icmp6",
            "ip6",
            "src host fd00::1",
            "dst host 2001:db8::9",
            "not port 5060",
        ] {
            assert!(m(yes, &u6), "{yes}");
        }
        for no in ["icmp", "port 5060", "udp", "ip"] {
            assert!(!m(no, &u6), "{no}");
        }
    }

    #[test]
    fn unreadable_packets_do_not_match() {
        for pkt in [&[][..], &[0x45, 0, 0][..], &rst4()[..22], &[0x20; 40][..]] {
            assert!(!m("not port 1", pkt), "{pkt:?}");
            assert!(!m("ip or ip6", pkt), "{pkt:?}");
        }
    }
}
