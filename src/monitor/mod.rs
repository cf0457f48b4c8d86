//! Connection monitors: they notice connection attempts and ask the port table to
//! make sure a server is up. One file per monitor; [`build`] is the registry.

pub mod listen;

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
    }
}
