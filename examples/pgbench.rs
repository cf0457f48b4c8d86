//! Sustained events per second into PostgreSQL: `db::insert_events` alone, and the
//! whole postgres output (SpoolSink: render, append and fsync to the spool; the
//! delivery thread: read, batch, insert, acknowledge).
//!
//! cargo run --release --no-default-features --example pgbench -- URL [EVENTS]
//!
//! URL is a connection string of an empty database (the schema is migrated; the
//! attacks tables are emptied first). docs/benchmarks.md has figures.

use honeytrap::attack::{Captured, EndReason, Mode, Transcript};
use honeytrap::config::PayloadEncoding;
use honeytrap::db::{self, InsertOptions, PostgresConfig};
use honeytrap::sink::postgres::PostgresDelivery;
use honeytrap::sink::spool::{Fsync, SpoolLimits, SpoolSink};
use honeytrap::sink::Sink;
use honeytrap::stats::{Stats, Throttle};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A typical small attack: an HTTP request, one protocol finding.
fn attack(i: usize) -> honeytrap::attack::Attack {
    let mut t = Transcript::default();
    let req = format!("GET /cgi-bin/{i}.sh HTTP/1.1\r\nHost: sensor\r\nUser-Agent: bench\r\n\r\n");
    t.push_in(req.as_bytes(), 1 << 20);
    let c = Captured {
        start: chrono::Utc::now(),
        end: chrono::Utc::now(),
        sensor: "bench".into(),
        monitor: "listen".into(),
        mode: Mode::Normal,
        protocol: honeytrap::proto::Protocol::Tcp,
        local: "10.0.0.1:8080".parse().unwrap(),
        remote: format!(
            "198.51.{}.{}:{}",
            i / 65536 % 256,
            i / 256 % 256,
            1024 + i % 60000
        )
        .parse()
        .unwrap(),
        transcript: t,
        responses_sent: 1,
        relay: None,
        end_reason: EndReason::Closed,
    };
    let mut a = c.seal();
    let mut f = honeytrap::analysis::Finding::new("protocol", "protocol", "HTTP GET");
    f.meta("protocol", "http");
    a.analysis.findings.push(f);
    a
}

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
    let mut sink = SpoolSink::start(
        "postgres",
        dir.path(),
        limits,
        Box::new(delivery),
        Arc::clone(&stats),
        Arc::new(Throttle::default()),
    )?;
    let t = Instant::now();
    for (i, a) in attacks.iter().enumerate() {
        sink.write(a)?;
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
