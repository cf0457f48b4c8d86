//! The safety limits of mirror and proxy mode, so neither can be turned against
//! third parties or the host: a global cap on open relays, a per-source rate of new
//! relays, and the addresses mirror mode may never connect to.
//!
//! Everything here answers before a single packet leaves for the second connection;
//! a refusal is a [`Fallback`] and the session is served in normal mode instead.

use crate::attack::Fallback;
use crate::config::RelayConfig;
use crate::server::limits::Bucket;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sources tracked before entries whose bucket has refilled are forgotten.
const SWEEP_ABOVE: usize = 16_384;

/// How long the list of the host's own addresses is trusted before it is read again.
const OWN_ADDRS_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    /// Relays open now.
    open: usize,
    /// Per-source buckets of new relays.
    sources: HashMap<IpAddr, Bucket>,
    /// The host's addresses and when they were read.
    own: Option<(Instant, Arc<HashSet<IpAddr>>)>,
}

/// Admission of relays, shared by every session.
#[derive(Debug, Default)]
pub struct RelayGuard {
    state: Mutex<State>,
}

/// An open relay; dropping it frees its slot under `relay.max_relays`.
#[derive(Debug)]
pub struct RelayPermit {
    guard: Arc<RelayGuard>,
}

impl Drop for RelayPermit {
    fn drop(&mut self) {
        self.guard.state.lock().unwrap().open -= 1;
    }
}

impl RelayGuard {
    pub fn new() -> Arc<RelayGuard> {
        Arc::default()
    }

    /// Admit a new relay for `source`, or say which limit refused it.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        cfg: &RelayConfig,
    ) -> Result<RelayPermit, Fallback> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        if st.open >= cfg.max_relays {
            return Err(Fallback::RelayCap);
        }
        if st.sources.len() >= SWEEP_ABOVE {
            st.sources
                .retain(|_, b| !b.is_full(now, cfg.source_rate, cfg.source_burst));
        }
        let bucket = st
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(cfg.source_burst, now));
        if !bucket.take(now, cfg.source_rate, cfg.source_burst) {
            return Err(Fallback::RateLimited);
        }
        st.open += 1;
        Ok(RelayPermit {
            guard: Arc::clone(self),
        })
    }

    /// Relays open now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap().open
    }

    /// Whether mirror mode may connect to `ip`.
    pub fn mirror_allowed(&self, ip: IpAddr, cfg: &RelayConfig) -> bool {
        let ip = canonical(ip);
        if forbidden(ip, cfg.mirror_private) {
            return false;
        }
        !self.own_addresses().contains(&ip)
    }

    /// The addresses of this host's interfaces (cached for a few seconds).
    fn own_addresses(&self) -> Arc<HashSet<IpAddr>> {
        let mut st = self.state.lock().unwrap();
        if let Some((at, set)) = &st.own {
            if at.elapsed() < OWN_ADDRS_TTL {
                return Arc::clone(set);
            }
        }
        let set: HashSet<IpAddr> = match nix::ifaddrs::getifaddrs() {
            Ok(list) => list
                .filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect(),
            Err(e) => {
                // Fail closed would stop mirroring altogether; the fixed checks
                // (loopback and the rest) still apply, and this is logged.
                tracing::warn!(error = %e, "mirror: cannot list the host's addresses");
                HashSet::new()
            }
        };
        let set = Arc::new(set);
        st.own = Some((Instant::now(), Arc::clone(&set)));
        set
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one rule covers both spellings.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses mirror mode never connects to: loopback, link-local, multicast,
/// broadcast, unspecified, reserved and documentation ranges, and (unless
/// `allow_private`) private ranges.
pub fn forbidden(ip: IpAddr, allow_private: bool) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => forbidden_v4(a, allow_private),
        IpAddr::V6(a) => forbidden_v6(a, allow_private),
    }
}

fn forbidden_v4(a: Ipv4Addr, allow_private: bool) -> bool {
    let o = a.octets();
    let shared = o[0] == 100 && (o[1] & 0xc0) == 64; // 100.64.0.0/10 (carrier-grade NAT)
    let this_net = o[0] == 0; // 0.0.0.0/8
    let reserved = o[0] >= 240; // 240.0.0.0/4 and the broadcast address
    let benchmarking = o[0] == 198 && (o[1] & 0xfe) == 18; // 198.18.0.0/15
    a.is_loopback()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || a.is_documentation()
        || this_net
        || reserved
        || benchmarking
        || (!allow_private && (a.is_private() || shared))
}

fn forbidden_v6(a: Ipv6Addr, allow_private: bool) -> bool {
    let s = a.segments();
    let link_local = (s[0] & 0xffc0) == 0xfe80;
    let unique_local = (s[0] & 0xfe00) == 0xfc00;
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    // 6to4 and NAT64 embed an IPv4 address the checks above would not see.
    let embeds_v4 = s[0] == 0x2002 || (s[0] == 0x64 && s[1] == 0xff9b);
    a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || link_local
        || documentation
        || embeds_v4
        || (!allow_private && unique_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, rate: f64, burst: u32) -> RelayConfig {
        RelayConfig {
            max_relays: max,
            source_rate: rate,
            source_burst: burst,
            ..RelayConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses() {
        for a in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.5",
            "255.255.255.255",
            "240.1.2.3",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
            "2002:7f00:1::1",
        ] {
            assert!(forbidden(ip(a), true), "{a} must be forbidden");
        }
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert!(forbidden(ip(a), false), "{a} is private");
            assert!(!forbidden(ip(a), true), "{a} allowed with mirror_private");
        }
        for a in ["8.8.8.8", "2a00:1450::1", "::ffff:8.8.8.8"] {
            assert!(!forbidden(ip(a), false), "{a} is public");
        }
    }

    #[test]
    fn own_addresses_are_forbidden() {
        let g = RelayGuard::new();
        let c = RelayConfig {
            mirror_private: true,
            ..RelayConfig::default()
        };
        // Every host has loopback; forbidden twice over, but the own list must hold it.
        assert!(g.own_addresses().contains(&ip("127.0.0.1")));
        assert!(!g.mirror_allowed(ip("127.0.0.1"), &c));
    }

    #[test]
    fn cap_and_rate() {
        let g = RelayGuard::new();
        let c = cfg(2, 0.001, 2);
        let a = g.admit(ip("10.0.0.1"), &c).unwrap();
        let _b = g.admit(ip("10.0.0.2"), &c).unwrap();
        assert_eq!(g.admit(ip("10.0.0.3"), &c).unwrap_err(), Fallback::RelayCap);
        drop(a);
        assert_eq!(g.open(), 1);
        let _c = g.admit(ip("10.0.0.1"), &c).unwrap();
        // 10.0.0.1 used its burst of 2.
        let c2 = cfg(10, 0.001, 2);
        assert_eq!(
            g.admit(ip("10.0.0.1"), &c2).unwrap_err(),
            Fallback::RateLimited
        );
        assert!(g.admit(ip("10.0.0.2"), &c2).is_ok());
    }
}
