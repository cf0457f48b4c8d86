//! The PostgreSQL output: a [`SpoolSink`] whose [`Delivery`] inserts each batch of
//! events in one transaction with `db::insert_events` (idempotent on the attack id),
//! through a small connection pool, optionally over TLS. The schema is migrated
//! when the first batch goes out (`output.postgres.migrate`), so honeytrap starts
//! while the server is down; the spool holds the events until it is back.

use super::spool::{Delivery, Member, Output, Spooled};
use crate::config::{Config, PayloadEncoding};
use crate::db::{self, InsertOptions, Pool, PostgresConfig};
use crate::stats::{Stats, Throttle};
use std::sync::Arc;

/// Delivers spooled events into PostgreSQL.
pub struct PostgresDelivery {
    pool: Pool,
    opts: InsertOptions,
    /// Migrations still to be checked (once per run).
    migrate: bool,
    /// For the delivery latency (`Stats::delivered`).
    stats: Arc<Stats>,
}

impl PostgresDelivery {
    pub fn new(
        c: &PostgresConfig,
        opts: InsertOptions,
        stats: Arc<Stats>,
    ) -> anyhow::Result<PostgresDelivery> {
        Ok(PostgresDelivery {
            pool: db::pool(c)?,
            opts,
            migrate: c.migrate,
            stats,
        })
    }
}

impl Delivery for PostgresDelivery {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn deliver(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut conn = self.pool.get()?;
        if self.migrate {
            let applied = db::migrate(&mut conn)?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "postgres: schema migrated");
            }
            self.migrate = false;
        }
        // The spooled text itself: parsed into typed rows that borrow from it.
        let events: Vec<&[u8]> = batch.iter().map(|s| s.body.as_slice()).collect();
        let n = db::insert_events(&mut conn, &events, &self.opts)?;
        self.stats.delivered("postgres", started.elapsed());
        tracing::debug!(
            inserted = n.inserted,
            duplicates = n.duplicates,
            rejected = n.rejected,
            "postgres: batch written"
        );
        Ok(())
    }
}

/// The output as a spool member, in `<data_dir>/<spool.dir>/postgres`.
pub fn output(config: &Config, stats: &Arc<Stats>) -> anyhow::Result<Output> {
    let c = &config.output.postgres;
    let opts = InsertOptions {
        store_from: c.store_downloads.then(|| config.sensor.data_dir.clone()),
        download_max: c.download_max,
    };
    Ok(Output {
        member: Member {
            name: "postgres",
            dir: config.data_path(&config.output.spool.dir).join("postgres"),
            delivery: Box::new(PostgresDelivery::new(c, opts, Arc::clone(stats))?),
            throttle: Arc::new(Throttle::default()),
        },
        payload_max: c.payload_max,
        encoding: PayloadEncoding::Base64,
    })
}
