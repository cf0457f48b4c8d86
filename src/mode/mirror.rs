//! Mirror mode's target: the attacker's own address, on the port and protocol he
//! used, so he attacks himself. Refused (and served in normal mode) when the address
//! is one mirror mode must never connect to (see [`super::guard`]) or when the
//! session is UDP and `relay.mirror_udp` is off: a spoofed UDP source would turn
//! mirroring into a reflector against a third party.

use super::guard::{canonical, RelayGuard};
use crate::attack::Fallback;
use crate::config::RelayConfig;
use crate::proto::Protocol;
use std::net::SocketAddr;

/// Where to mirror a session that `remote` opened to `local` over `proto`.
pub fn target(
    guard: &RelayGuard,
    cfg: &RelayConfig,
    proto: Protocol,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<SocketAddr, Fallback> {
    if proto == Protocol::Udp && !cfg.mirror_udp {
        return Err(Fallback::MirrorUdpDisabled);
    }
    let ip = canonical(remote.ip());
    if !guard.mirror_allowed(ip, cfg) {
        return Err(Fallback::ForbiddenAddress);
    }
    Ok(SocketAddr::new(ip, local.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_to_the_attacker_on_the_same_port() {
        let g = RelayGuard::new();
        let cfg = RelayConfig::default();
        let local: SocketAddr = "[::ffff:192.0.2.10]:445".parse().unwrap();
        let remote: SocketAddr = "[::ffff:8.8.4.4]:50000".parse().unwrap();
        assert_eq!(
            target(&g, &cfg, Protocol::Tcp, local, remote).unwrap(),
            "8.8.4.4:445".parse().unwrap()
        );
        assert_eq!(
            target(&g, &cfg, Protocol::Udp, local, remote).unwrap_err(),
            Fallback::MirrorUdpDisabled
        );
        let private: SocketAddr = "10.1.1.1:5".parse().unwrap();
        assert_eq!(
            target(&g, &cfg, Protocol::Tcp, local, private).unwrap_err(),
            Fallback::ForbiddenAddress
        );
        let allowed = RelayConfig {
            mirror_private: true,
            mirror_udp: true,
            ..RelayConfig::default()
        };
        assert!(target(&g, &allowed, Protocol::Udp, local, private).is_ok());
    }
}
