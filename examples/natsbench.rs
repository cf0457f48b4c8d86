//! Sustained events per second into NATS JetStream: `NatsDelivery` alone (publish a
//! batch, wait for every acknowledgement), and the whole nats output (SpoolSink:
//! render, append and fsync to the spool; the delivery thread: read, batch, publish,
//! acknowledge).
//!
//! cargo run --release --no-default-features --example natsbench -- URL [EVENTS]
//!
//! URL is a NATS server with JetStream (`nats-server -js -sd DIR -a 127.0.0.1 -p
//! 4333`); the stream HONEYTRAP is created if missing. docs/benchmarks.md has figures.

#[path = "bench_support/attack.rs"]
mod bench_attack;
use bench_attack::attack;

use honeytrap::config::PayloadEncoding;
use honeytrap::event::Event;
use honeytrap::sink::nats::{NatsConfig, NatsDelivery};
use honeytrap::sink::spool::{Delivery, Fsync, Member, SpoolLimits, SpoolSink, Spooled};
use honeytrap::sink::Sink;
use honeytrap::stats::{Stats, Throttle};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: natsbench URL [EVENTS]"))?;
    let n: usize = args.get(2).map_or(Ok(50_000), |s| s.parse())?;
    let config = NatsConfig {
        enabled: true,
        urls: vec![url.clone()],
        ack_timeout: Duration::from_secs(10),
        ..NatsConfig::default()
    };

    // 1. The delivery alone, batches of 500 pre-rendered events.
    let events: Vec<Spooled> = (0..n)
        .map(|i| {
            let a = attack(i);
            Spooled {
                key: a.id.to_string(),
                kind: "attack".into(),
                body: serde_json::to_vec(&Event::of(&a, 4096, PayloadEncoding::Base64)).unwrap(),
            }
        })
        .collect();
    let bytes: usize = events.iter().map(|e| e.body.len()).sum();
    let mut d = NatsDelivery::new(&config, "bench", 0)?;
    d.deliver(&events[..1])?; // connect and create the stream outside the clock
    let t = Instant::now();
    for chunk in events[1..].chunks(500) {
        d.deliver(chunk)?;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "delivery: {} events ({} B average) in {s:.2} s: {:.0} events/s",
        n - 1,
        bytes / n,
        (n - 1) as f64 / s
    );
    // The same batch again: every message a duplicate, dropped by the server.
    let t = Instant::now();
    for chunk in events[1..].chunks(500) {
        d.deliver(chunk)?;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "delivery, all duplicates: {:.0} events/s",
        (n - 1) as f64 / s
    );
    drop(d);

    // 2. The whole output: attacks written to the SpoolSink, delivered by its thread.
    let dir = tempfile::tempdir()?;
    let stats = Arc::new(Stats::default());
    let limits = SpoolLimits {
        fsync: Fsync::Batch,
        ..SpoolLimits::default()
    };
    let attacks: Vec<_> = (0..n).map(attack).collect();
    let member = Member {
        name: "nats",
        dir: dir.path().to_path_buf(),
        delivery: Box::new(NatsDelivery::new(&config, "bench", 0)?),
        throttle: Arc::new(Throttle::default()),
    };
    let mut sink = SpoolSink::start(vec![member], limits, Arc::clone(&stats))?;
    let t = Instant::now();
    for (i, a) in attacks.iter().enumerate() {
        sink.write(a, &honeytrap::event::Rendered::default())?;
        if i % 256 == 255 {
            sink.flush()?;
        }
    }
    sink.flush()?;
    let written = t.elapsed().as_secs_f64();
    let limit = Instant::now() + Duration::from_secs(600);
    while stats.spool_delivered.load(Relaxed) < n as u64 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = t.elapsed().as_secs_f64();
    let done = stats.spool_delivered.load(Relaxed);
    println!(
        "output (spool + delivery): {done} events in {s:.2} s: {:.0} events/s (spooled in {written:.2} s; delivery failures {})",
        done as f64 / s,
        stats.spool_delivery_failures.load(Relaxed)
    );
    drop(sink);
    Ok(())
}
