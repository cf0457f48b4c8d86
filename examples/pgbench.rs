//! Sustained events per second into PostgreSQL: `db::insert_events` alone, and the
//! whole postgres output (SpoolSink: render, append and fsync to the spool; the
//! delivery thread: read, batch, insert, acknowledge).
//!
//! cargo run --release --no-default-features --example pgbench -- URL [EVENTS]
//!
//! URL is a connection string of an empty database (the schema is migrated; the
//! attacks tables are emptied first). docs/benchmarks.md has figures.

#[path = "bench_support/attack.rs"]
mod bench_attack;
use bench_attack::attack;

use honeytrap::config::PayloadEncoding;
use honeytrap::db::{self, InsertOptions, PostgresConfig};
use honeytrap::sink::postgres::PostgresDelivery;
use honeytrap::sink::spool::{Fsync, Member, SpoolLimits, SpoolSink};
use honeytrap::sink::Sink;
use honeytrap::stats::{Stats, Throttle};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: pgbench URL [EVENTS]"))?;
    let n: usize = args.get(2).map_or(Ok(50_000), |s| s.parse())?;
    let config = PostgresConfig {
        enabled: true,
        url: url.clone(),
        ..PostgresConfig::default()
    };
    let mut client = db::connect(&config)?;
    db::migrate(&mut client)?;
    let empty = |c: &mut postgres::Client| {
        c.batch_execute("TRUNCATE attacks, relays, findings, attack_downloads, downloads CASCADE")
    };
    empty(&mut client)?;

    // 1. insert_events alone, batches of 500 events rendered beforehand.
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| honeytrap::event::attack_event(&attack(i), 4096, PayloadEncoding::Base64))
        .collect();
    let t = Instant::now();
    for chunk in events.chunks(500) {
        db::insert_events(&mut client, chunk, &InsertOptions::default())?;
    }
    let direct = t.elapsed();
    println!(
        "insert_events: {n} events in {:.2} s = {:.0} events/s",
        direct.as_secs_f64(),
        n as f64 / direct.as_secs_f64()
    );
    empty(&mut client)?;

    // 2. The whole output: what the sink thread does plus delivery.
    let attacks: Vec<_> = (0..n).map(attack).collect();
    let dir = tempfile::tempdir()?;
    let stats = Arc::new(Stats::default());
    let limits = SpoolLimits {
        fsync: Fsync::Batch,
        ..SpoolLimits::default()
    };
    let delivery = PostgresDelivery::new(&config, InsertOptions::default(), Arc::clone(&stats))?;
    let member = Member {
        name: "postgres",
        dir: dir.path().to_path_buf(),
        delivery: Box::new(delivery),
        throttle: Arc::new(Throttle::default()),
    };
    let mut sink = SpoolSink::start(vec![member], limits, Arc::clone(&stats))?;
    let t = Instant::now();
    for (i, a) in attacks.iter().enumerate() {
        sink.write(a, &honeytrap::event::Rendered::default())?;
        // The recorder flushes when the sink's queue runs empty: about every 64 here.
        if i % 64 == 63 {
            sink.flush()?;
        }
    }
    sink.flush()?;
    let spooled = t.elapsed();
    while stats.spool_delivered.load(Relaxed) < n as u64 && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = t.elapsed();
    drop(sink);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM attacks", &[])?
        .get(0);
    println!(
        "postgres output: {n} events spooled in {:.2} s ({:.0} events/s), in the database after {:.2} s = {:.0} events/s sustained ({rows} rows)",
        spooled.as_secs_f64(),
        n as f64 / spooled.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    Ok(())
}
