//! Shared harness of the end-to-end tests: network namespaces, the daemon under
//! test, and the event schema check.
#![allow(dead_code)]

pub mod clients;
pub mod daemon;
pub mod firewall;
pub mod netns;
pub mod pg;
pub mod schema;

pub use daemon::{base_config, Daemon};
pub use netns::{require_root, NetPair};
