//! Port lists in the config (`[22, "1000-2000"]`) and the compiled port policy that
//! answers "how is (protocol, port) handled?" per connection.

use crate::attack::Mode;
use crate::proto::Protocol;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::RangeInclusive;

/// One entry of a port list: a single port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The ports as a Rust range.
    pub fn range(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// True if the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| -> Result<u16, String> {
            let n: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid port \"{p}\" in \"{s}\""))?;
            check_port(n as i64)
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (parse(a)?, parse(b)?);
                if first > last {
                    return Err(format!("port range \"{s}\" ends before it starts"));
                }
                Ok(PortRange { first, last })
            }
            None => parse(s).map(|p| PortRange { first: p, last: p }),
        }
    }
}

fn check_port(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("port {n} is out of range (1-65535)"))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or a range string such as \"1000-2000\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let p = check_port(v).map_err(E::custom)?;
                Ok(PortRange { first: p, last: p })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

/// One protocol or a list of them (`protocol = "tcp"` or `["tcp", "udp"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Protocols {
    One(Protocol),
    Many(Vec<Protocol>),
}

impl<'de> Deserialize<'de> for Protocols {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Protocols;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"tcp\", \"udp\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocols, E> {
                v.parse().map(Protocols::One).map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Protocols, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<Protocol>()? {
                    out.push(p);
                }
                Ok(Protocols::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Protocols {
    /// The protocols named, without duplicates.
    pub fn list(&self) -> Vec<Protocol> {
        let mut v = match self {
            Protocols::One(p) => vec![*p],
            Protocols::Many(v) => v.clone(),
        };
        v.sort();
        v.dedup();
        v
    }
}

/// The compiled port policy: for each protocol, sorted non-overlapping ranges, each
/// pointing at the index of the rule that owns it.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    tcp: Vec<(PortRange, usize)>,
    udp: Vec<(PortRange, usize)>,
}

impl PolicyIndex {
    /// Add a range owned by rule `rule`. Returns the rule that already owns an
    /// overlapping range, if any.
    pub fn insert(&mut self, proto: Protocol, range: PortRange, rule: usize) -> Result<(), usize> {
        let list = self.list_mut(proto);
        if let Some((_, owner)) = list.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(*owner);
        }
        let at = list.partition_point(|(r, _)| r.first < range.first);
        list.insert(at, (range, rule));
        Ok(())
    }

    /// The rule owning (proto, port), if any.
    pub fn lookup(&self, proto: Protocol, port: u16) -> Option<usize> {
        let list = match proto {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        };
        let i = list.partition_point(|(r, _)| r.last < port);
        list.get(i)
            .filter(|(r, _)| r.first <= port)
            .map(|(_, rule)| *rule)
    }

    fn list_mut(&mut self, proto: Protocol) -> &mut Vec<(PortRange, usize)> {
        match proto {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }
}

/// Why a rule or the default cannot name `mode` (proxy needs a target, which only a
/// `[proxy.<name>]` map gives).
pub fn mode_refused(mode: Mode) -> Option<&'static str> {
    (mode == Mode::Proxy)
        .then_some("mode `proxy` needs a target: put these ports in a [proxy.<name>] map instead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ranges() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange {
                first: 80,
                last: 80
            }
        );
        assert_eq!(
            " 1000 - 2000".parse::<PortRange>().unwrap(),
            PortRange {
                first: 1000,
                last: 2000
            }
        );
        assert!("2000-1000".parse::<PortRange>().is_err());
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("http".parse::<PortRange>().is_err());
    }

    #[test]
    fn index_lookup_and_overlap() {
        let mut ix = PolicyIndex::default();
        ix.insert(Protocol::Tcp, "100-200".parse().unwrap(), 0)
            .unwrap();
        ix.insert(Protocol::Tcp, "22".parse().unwrap(), 1).unwrap();
        ix.insert(Protocol::Udp, "150".parse().unwrap(), 2).unwrap();
        assert_eq!(
            ix.insert(Protocol::Tcp, "200-300".parse().unwrap(), 3),
            Err(0)
        );
        assert_eq!(ix.lookup(Protocol::Tcp, 22), Some(1));
        assert_eq!(ix.lookup(Protocol::Tcp, 100), Some(0));
        assert_eq!(ix.lookup(Protocol::Tcp, 200), Some(0));
        assert_eq!(ix.lookup(Protocol::Tcp, 201), None);
        assert_eq!(ix.lookup(Protocol::Tcp, 21), None);
        assert_eq!(ix.lookup(Protocol::Udp, 150), Some(2));
        assert_eq!(ix.lookup(Protocol::Udp, 22), None);
    }
}
