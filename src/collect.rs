//! `honeytrap collect`: the consumer side of a fleet. Sensors publish their events
//! to a NATS JetStream stream (`sink::nats`); a collector reads the stream with a
//! durable pull consumer and writes the events into PostgreSQL with the same
//! idempotent batch insert as the PostgreSQL output (`db::insert_events`).
//!
//! Every collector started with the same `durable` name shares one consumer, so the
//! server hands each message to one of them: collectors scale out by starting more.
//! A message is acknowledged only after the transaction holding it committed; while
//! PostgreSQL is down the batch is held (and kept from being redelivered with
//! "in progress" acknowledgements) and retried with backoff, while NATS is down
//! fetching is retried. A collector that dies holding a batch leaves it
//! unacknowledged: the server redelivers it after `ack_wait` (to any collector), and
//! an attack stored twice is impossible because the insert skips known attack ids.
//! SIGTERM/SIGINT: the batch in hand is finished (stored and acknowledged, or given
//! back with a NAK), then the collector exits.

use crate::config::{units, Config, Invalid};
use crate::db::{self, InsertOptions, PostgresConfig};
use crate::sink::nats::{self, NatsConfig};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `[collect]` (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Name of the durable consumer; collectors with the same name share the work.
    pub durable: String,
    /// Most messages per fetch, written in one transaction.
    pub batch: usize,
    /// How long a fetch waits for messages before returning what it has.
    #[serde(with = "units::duration")]
    pub fetch_wait: Duration,
    /// The consumer's ack wait: a message not acknowledged within it is delivered
    /// again (to any collector).
    #[serde(with = "units::duration")]
    pub ack_wait: Duration,
    /// Backoff after a failure (NATS or PostgreSQL), doubled up to `retry_max`.
    #[serde(with = "units::duration")]
    pub retry_initial: Duration,
    #[serde(with = "units::duration")]
    pub retry_max: Duration,
    /// The stream to read (connection and stream settings; `enabled` is ignored).
    pub nats: NatsConfig,
    /// The database to write (`enabled` is ignored; `migrate` applies the schema at
    /// start).
    pub postgres: PostgresConfig,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            durable: "honeytrap-collect".into(),
            batch: 500,
            fetch_wait: Duration::from_secs(1),
            ack_wait: Duration::from_secs(60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            nats: NatsConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

impl CollectConfig {
    /// Checks for `Config::validate` (the PostgreSQL URL is required only by
    /// `honeytrap collect` itself: see [`CollectConfig::check_runnable`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        let key = |k: &str| format!("collect.{k}");
        if self.durable.is_empty() || self.durable.contains(['.', '*', '>', ' ', '/', '\\']) {
            return Err(Invalid::new(
                key("durable"),
                "must be non-empty, without '.', '*', '>', '/', '\\' or spaces",
            ));
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(Invalid::new(key("batch"), "must be 1 to 10000"));
        }
        if self.fetch_wait < Duration::from_millis(10) || self.fetch_wait >= self.ack_wait {
            return Err(Invalid::new(
                key("fetch_wait"),
                "must be at least 10ms and shorter than ack_wait",
            ));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(Invalid::new(
                key("retry_max"),
                "retry_initial must be longer than 0 and retry_max at least retry_initial",
            ));
        }
        self.nats.validate("collect.nats")?;
        if !self.postgres.url.trim().is_empty() {
            let pg = PostgresConfig {
                enabled: true,
                ..self.postgres.clone()
            };
            pg.validate().map_err(|e| Invalid {
                key: e.key.replacen("output.postgres", "collect.postgres", 1),
                message: e.message,
            })?;
        }
        Ok(())
    }

    /// What `honeytrap collect` needs beyond a valid configuration.
    pub fn check_runnable(&self) -> Result<(), Invalid> {
        if self.postgres.url.trim().is_empty() {
            return Err(Invalid::new(
                "collect.postgres.url",
                "must be set for honeytrap collect",
            ));
        }
        Ok(())
    }
}

/// Totals of a collector's run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Collected {
    pub messages: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// `honeytrap collect`: run until SIGTERM or SIGINT.
pub fn run(config: &Config) -> anyhow::Result<Collected> {
    let c = config.collect.clone();
    // Made and dropped outside the runtime: the synchronous PostgreSQL client
    // blocks on a runtime of its own when its connections close.
    let pool = db::pool(&c.postgres)?;
    let pool = &pool;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("collect: stopping (signal)");
            s.cancel();
        });
        collect(&c, pool, stop).await
    })
}

/// The collector loop, until `stop` is cancelled.
pub async fn collect(
    c: &CollectConfig,
    pool: &db::Pool,
    stop: CancellationToken,
) -> anyhow::Result<Collected> {
    let client = nats::connect(&c.nats, format!("honeytrap collect {}", c.durable)).await?;
    let js = nats::jetstream(&c.nats, client.clone());
    let mut backoff = Backoff::new(c);
    let Some(consumer) = retry(&stop, &mut backoff, "setting up the consumer", || {
        consumer(c, &js)
    })
    .await
    else {
        return Ok(Collected::default());
    };
    tracing::info!(stream = %c.nats.stream.name, durable = %c.durable, "collect: ready");
    let mut total = Collected::default();
    let mut migrated = !c.postgres.migrate;
    let mut last_report = Instant::now();
    while !stop.is_cancelled() {
        let msgs = tokio::select! {
            r = fetch(&consumer, c.batch, c.fetch_wait) => r,
            _ = stop.cancelled() => break,
        };
        let msgs = match msgs {
            Ok(m) => {
                backoff.reset();
                m
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff.next, "collect: fetching from NATS failed");
                if backoff.wait(&stop).await {
                    break;
                }
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        let (events, poison) = parse(&msgs);
        let stored = store_until_done(c, pool, &events, &msgs, &mut migrated, &stop).await;
        let Some(n) = stored else {
            // Stopping with the batch unstored: give it back at once.
            for m in &msgs {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            let _ = client.flush().await;
            break;
        };
        acknowledge(&msgs, &poison).await;
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "collect: acknowledgements not flushed (the batch will be delivered again; its attacks are already stored)");
        }
        total.messages += msgs.len() as u64;
        total.inserted += n.inserted as u64;
        total.duplicates += n.duplicates as u64;
        total.rejected += (n.rejected + poison.len()) as u64;
        tracing::debug!(
            messages = msgs.len(),
            inserted = n.inserted,
            duplicates = n.duplicates,
            "collect: batch stored"
        );
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            tracing::info!(
                messages = total.messages,
                inserted = total.inserted,
                duplicates = total.duplicates,
                rejected = total.rejected,
                "collect: progress"
            );
        }
    }
    tracing::info!(
        messages = total.messages,
        inserted = total.inserted,
        duplicates = total.duplicates,
        rejected = total.rejected,
        "collect: stopped"
    );
    Ok(total)
}

/// The stream (created if missing, with `[collect.nats.stream]`) and the durable
/// pull consumer (created if missing; collectors of the same name share it).
async fn consumer(
    c: &CollectConfig,
    js: &jetstream::Context,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = nats::ensure_stream(&c.nats, js).await?;
    stream
        .get_or_create_consumer(
            &c.durable,
            pull::Config {
                durable_name: Some(c.durable.clone()),
                description: Some("honeytrap collect: events into PostgreSQL".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: c.ack_wait,
                max_deliver: -1,
                // Room for a few collectors with a full batch each.
                max_ack_pending: (c.batch * 16).max(1000) as i64,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("getting or creating the consumer {}", c.durable))
}

/// Up to `n` messages, waiting at most `wait` for them.
async fn fetch(
    consumer: &jetstream::consumer::PullConsumer,
    n: usize,
    wait: Duration,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(n)
        .expires(wait)
        .messages()
        .await
        .context("pull request")?;
    let mut out = Vec::new();
    // The server ends the batch at `expires`; this bounds it if its answer is lost.
    let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(e))) if out.is_empty() => {
                return Err(anyhow::anyhow!(e)).context("fetching")
            }
            // What came before the error is processed; the rest is redelivered.
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "collect: batch ended early");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// The events of a batch, and the indexes of messages that are not JSON (they are
/// terminated: no redelivery can fix them).
fn parse(msgs: &[jetstream::Message]) -> (Vec<Bytes>, Vec<usize>) {
    let mut events = Vec::with_capacity(msgs.len());
    let mut poison = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        // Only checked here (UTF-8 and JSON, no tree built): `db::insert_events`
        // parses the text itself into its rows.
        let json = std::str::from_utf8(&m.payload)
            .map_err(serde::de::Error::custom)
            .and_then(serde_json::from_str::<serde::de::IgnoredAny>);
        match json {
            Ok(_) => events.push(m.payload.clone()),
            Err(e) => {
                tracing::warn!(subject = %m.subject, error = %e, "collect: message is not a JSON event; dropped");
                poison.push(i);
            }
        }
    }
    (events, poison)
}

/// Insert the batch, retrying with backoff until it is stored; `None` when asked to
/// stop first. While waiting, the messages are kept from redelivery.
async fn store_until_done(
    c: &CollectConfig,
    pool: &db::Pool,
    events: &[Bytes],
    msgs: &[jetstream::Message],
    migrated: &mut bool,
    stop: &CancellationToken,
) -> Option<db::Inserted> {
    let mut backoff = Backoff::new(c);
    loop {
        match store(pool, events.to_vec(), c, !*migrated).await {
            Ok(n) => {
                *migrated = true;
                return Some(n);
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), events = events.len(), retry_in = ?backoff.next, "collect: writing to PostgreSQL failed; the batch is held and retried");
                for m in msgs {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
                if backoff.wait(stop).await {
                    return None;
                }
            }
        }
    }
}

/// One transaction (on a blocking thread: the PostgreSQL client is synchronous).
async fn store(
    pool: &db::Pool,
    events: Vec<Bytes>,
    c: &CollectConfig,
    migrate: bool,
) -> anyhow::Result<db::Inserted> {
    let pool = pool.clone();
    let opts = InsertOptions {
        store_from: None,
        download_max: c.postgres.download_max,
    };
    tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().context("connecting to PostgreSQL")?;
        if migrate {
            let applied = db::migrate(&mut conn)?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "collect: schema migrated");
            }
        }
        db::insert_events(&mut conn, &events, &opts)
    })
    .await?
}

/// Acknowledge a stored batch; terminate the messages that were not JSON.
async fn acknowledge(msgs: &[jetstream::Message], poison: &[usize]) {
    for (i, m) in msgs.iter().enumerate() {
        let kind = if poison.contains(&i) {
            AckKind::Term
        } else {
            AckKind::Ack
        };
        if let Err(e) = m.ack_with(kind).await {
            tracing::debug!(error = %e, "collect: acknowledgement not sent (redelivery is harmless)");
        }
    }
}

/// Run `f` until it succeeds, with backoff; `None` when asked to stop first.
async fn retry<T, F, Fut>(
    stop: &CancellationToken,
    backoff: &mut Backoff,
    what: &str,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        let r = tokio::select! {
            r = f() => r,
            _ = stop.cancelled() => return None,
        };
        match r {
            Ok(v) => {
                backoff.reset();
                return Some(v);
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff.next, "collect: {what} failed");
                if backoff.wait(stop).await {
                    return None;
                }
            }
        }
    }
}

/// Exponential backoff between `retry_initial` and `retry_max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(c: &CollectConfig) -> Backoff {
        Backoff {
            initial: c.retry_initial,
            max: c.retry_max,
            next: c.retry_initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleep the current delay and double it; true when asked to stop meanwhile.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.cancelled() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_validates_and_bad_values_name_their_key() {
        CollectConfig::default().validate().unwrap();
        assert_eq!(
            CollectConfig::default().check_runnable().unwrap_err().key,
            "collect.postgres.url"
        );
        let bad = |f: &dyn Fn(&mut CollectConfig)| {
            let mut c = CollectConfig::default();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(&|c| c.durable = "a.b".into()), "collect.durable");
        assert_eq!(bad(&|c| c.batch = 0), "collect.batch");
        assert_eq!(
            bad(&|c| c.fetch_wait = Duration::from_secs(120)),
            "collect.fetch_wait"
        );
        assert_eq!(bad(&|c| c.nats.urls.clear()), "collect.nats.urls");
        assert_eq!(
            bad(&|c| {
                c.postgres.url = "host=/tmp".into();
                c.postgres.pool_size = 0;
            }),
            "collect.postgres.pool_size"
        );
    }
}
