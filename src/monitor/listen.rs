//! The `listen` monitor: binds a fixed set of ports and ranges at start-up (and on
//! reload). Needs no privileges above port 1023; the baseline the catch-all
//! monitors are measured against.

use super::Monitor;
use crate::config::PortRange;
use crate::proto::Protocol;
use crate::server::{Ensured, PortTable};
use std::collections::BTreeSet;
use std::sync::Arc;

/// State of the listen monitor: the ports it pinned.
#[derive(Default)]
pub struct ListenMonitor {
    pinned: BTreeSet<(Protocol, u16)>,
}

impl ListenMonitor {
    fn wanted(table: &PortTable) -> BTreeSet<(Protocol, u16)> {
        let cfg = table.context().config();
        let l = &cfg.config.monitor.listen;
        let expand = |proto, ranges: &[PortRange]| {
            ranges
                .iter()
                .flat_map(move |r| r.range().map(move |p| (proto, p)))
                .collect::<Vec<_>>()
        };
        expand(Protocol::Tcp, &l.tcp)
            .into_iter()
            .chain(expand(Protocol::Udp, &l.udp))
            .collect()
    }

    fn sync(&mut self, table: &Arc<PortTable>) {
        let wanted = Self::wanted(table);
        for (proto, port) in self.pinned.difference(&wanted) {
            table.close(*proto, *port);
            tracing::info!(%proto, port, "no longer in monitor.listen: closed");
        }
        let mut bound = Vec::new();
        let mut ignored = Vec::new();
        for (proto, port) in &wanted {
            match table.ensure(*proto, *port, self.name(), true) {
                Ensured::Started | Ensured::Running => bound.push(format!("{port}/{proto}")),
                Ensured::Ignored => ignored.push(format!("{port}/{proto}")),
                Ensured::Unavailable | Ensured::Full => {}
            }
        }
        if !ignored.is_empty() {
            tracing::info!(
                ports = ignored.join(" "),
                "listen ports in ignore mode are not bound"
            );
        }
        tracing::info!(count = bound.len(), ports = bound.join(" "), "listening");
        self.pinned = wanted;
    }
}

impl Monitor for ListenMonitor {
    fn name(&self) -> &'static str {
        "listen"
    }

    fn capabilities(&self) -> Vec<caps::Capability> {
        // Reloads may add ports below 1024.
        vec![caps::Capability::CAP_NET_BIND_SERVICE]
    }

    fn start(&mut self, table: &Arc<PortTable>) -> anyhow::Result<()> {
        self.sync(table);
        Ok(())
    }

    fn reload(&mut self, table: &Arc<PortTable>) {
        self.sync(table);
    }
}
