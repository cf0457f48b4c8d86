//! Connection monitors: they notice connection attempts and ask the port table to
//! make sure a server is up (the `tproxy` monitor instead receives the diverted
//! flows itself and hands them to the servers' per-connection path). One file per monitor; [`build`] is the registry.

pub mod filter;
pub mod listen;
pub mod nfqueue;
pub mod packet;
pub mod sniff;
mod sockbuf;
pub mod tproxy;

use crate::config::{Config, MonitorKind};
use crate::server::PortTable;
use std::sync::Arc;

/// A source of connection attempts.
pub trait Monitor: Send {
    /// Name recorded in every attack it caught.
    fn name(&self) -> &'static str;
    /// Capabilities it needs after privileges are dropped.
    fn capabilities(&self) -> Vec<caps::Capability>;
    /// Start watching; called once inside the runtime.
    fn start(&mut self, table: &Arc<PortTable>) -> anyhow::Result<()>;
    /// Apply a reloaded configuration (the new one is already in the context).
    fn reload(&mut self, table: &Arc<PortTable>);
}

/// The monitor the config selects, and why (for the start-up log).
pub fn build(config: &Config) -> (Box<dyn Monitor>, &'static str) {
    match config.monitor.kind {
        MonitorKind::Listen => (
            Box::new(listen::ListenMonitor::default()),
            "monitor.kind = \"listen\"",
        ),
        MonitorKind::Sniff => (
            Box::new(sniff::SniffMonitor::new()),
            "monitor.kind = \"sniff\"",
        ),
        MonitorKind::Nfqueue => (
            Box::new(nfqueue::NfqueueMonitor::new()),
            "monitor.kind = \"nfqueue\"",
        ),
        MonitorKind::Tproxy => (
            Box::new(tproxy::TproxyMonitor::new()),
            "monitor.kind = \"tproxy\"",
        ),
        MonitorKind::Auto if can_sniff() => (
            Box::new(sniff::SniffMonitor::new()),
            "monitor.kind = \"auto\" and CAP_NET_RAW is available (root): sniffing for RST and ICMP port unreachable",
        ),
        MonitorKind::Auto => (
            Box::new(listen::ListenMonitor::default()),
            "monitor.kind = \"auto\" and no CAP_NET_RAW (not root): listening on monitor.listen",
        ),
    }
}

/// Whether a packet socket can be opened: CAP_NET_RAW is in the effective set (root
/// has it unless a container dropped it). If the set cannot be read: effective uid 0.
fn can_sniff() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_NET_RAW)
        .unwrap_or_else(|_| nix::unistd::Uid::effective().is_root())
}
