//! Small client-side helpers shared by the end-to-end tests.

use super::daemon::{run, wait_until, Daemon};
use super::netns::{Background, NetPair};
use base64::Engine as _;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

pub fn payload(e: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(e["honeytrap"]["payload"]["data"].as_str().unwrap_or(""))
        .expect("base64")
}

/// One TCP connection attempt (nc makes exactly one): sends `data`, shuts down its
/// sending side, and reads until the server closes.
pub fn nc_once(net: &NetPair, host: &str, port: u16, data: &[u8]) -> Output {
    net.attack(
        "nc",
        &["-v", "-N", "-w", "3", host, &port.to_string()],
        data,
        8,
    )
}

/// The event of `port` whose payload is `data`, waited for.
pub fn event_with(d: &Daemon, port: u16, data: &[u8]) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = d
            .events()
            .into_iter()
            .find(|e| e["destination"]["port"] == port && payload(e) == data);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no event for {port} with {data:?}:\n{}", d.log()))
}

/// A real service in the honeypot namespace that answers `real service`.
pub fn real_service(net: &NetPair, port: u16) -> Background {
    let bg = net.background_honeypot(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            "SYSTEM:echo real service",
        ],
    );
    let ready = wait_until(Duration::from_secs(5), || {
        let out = run(
            {
                let mut c = net.in_honeypot("ss");
                c.args(["-ltnH", &format!("sport = :{port}")]);
                c
            },
            Duration::from_secs(3),
        );
        !out.stdout.is_empty()
    });
    assert!(ready, "socat did not start listening on {port}");
    bg
}
