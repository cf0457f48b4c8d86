//! Proxy mode's target: the host, port and protocol of the port's `[proxy.<name>]`
//! map. A host name is resolved per connection off the runtime threads (tokio's
//! resolver), within `relay.connect_timeout`; a failure is that session's fallback.

use crate::attack::Fallback;
use crate::config::policy::ProxyTarget;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::timeout;

/// The address to relay a session to, which arrived on `local`. A host name with
/// several addresses: the first of the attacker's family, else the first.
pub async fn target(
    map: &ProxyTarget,
    local: SocketAddr,
    wait: Duration,
) -> Result<SocketAddr, Fallback> {
    let port = map.port.unwrap_or(local.port());
    if let Ok(ip) = map.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found = match timeout(wait, tokio::net::lookup_host((map.host.as_str(), port))).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            tracing::debug!(host = %map.host, error = %e, "proxy: cannot resolve the target");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(host = %map.host, "proxy: resolving the target timed out");
            Vec::new()
        }
    };
    let v4 = crate::mode::guard::canonical(local.ip()).is_ipv4();
    found
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .or(found.first())
        .copied()
        .ok_or(Fallback::ResolveFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(host: &str, port: Option<u16>) -> ProxyTarget {
        ProxyTarget {
            name: "t".into(),
            host: host.into(),
            port,
            protocol: None,
        }
    }

    #[tokio::test]
    async fn literal_and_default_port() {
        let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let w = Duration::from_secs(1);
        assert_eq!(
            target(&map("10.9.9.9", None), local, w).await.unwrap(),
            "10.9.9.9:8080".parse().unwrap()
        );
        assert_eq!(
            target(&map("fd00::5", Some(80)), local, w).await.unwrap(),
            "[fd00::5]:80".parse().unwrap()
        );
        assert_eq!(
            target(&map("localhost", Some(81)), local, w).await.unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!(
            target(&map("no-such-host.invalid", None), local, w)
                .await
                .unwrap_err(),
            Fallback::ResolveFailed
        );
    }
}
