//! The NATS JetStream output: a [`SpoolSink`] whose [`Delivery`] publishes each
//! spooled event to `<subject_prefix>.<sensor>.<kind>` (`honeytrap.<sensor>.attack`)
//! with the attack id as the `Nats-Msg-Id` header, and waits for every JetStream
//! publish acknowledgement of the batch: a batch is delivered only when all its
//! messages are stored, else the spool retries it whole with backoff. The server
//! drops a message whose id it saw within the stream's `duplicate_window`, so a
//! retried batch is not stored twice (a retry after the window would be: the
//! PostgreSQL insert behind `honeytrap collect` is idempotent on the attack id too).
//!
//! The delivery owns a small tokio runtime (one worker); the client connects in
//! the background and reconnects on its own, so honeytrap starts while NATS is down.
//! The stream is created if it is missing when the first batch goes out.
//! The connection and stream settings ([`NatsConfig`]) are shared with
//! `honeytrap collect` (src/collect.rs).

use super::spool::{Delivery, Member, Output, Spooled};
use crate::config::{units, Config, Invalid, PayloadEncoding};
use crate::stats::Throttle;
use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[output.nats]` (docs/configuration.md); also `[collect.nats]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub enabled: bool,
    /// Servers (`nats://host:4222`, `tls://host:4222`); the client picks one and
    /// fails over to the others (and to those the cluster announces).
    pub urls: Vec<String>,
    /// A `.creds` file (JWT and nkey seed) for decentralised auth.
    pub credentials_file: PathBuf,
    /// Token auth.
    pub token: String,
    /// User and password auth; `password_file` (first line) wins over `password`.
    pub user: String,
    pub password: String,
    pub password_file: PathBuf,
    /// Require TLS (also implied by `tls://` URLs).
    pub tls: bool,
    /// PEM CA certificate(s) the server's certificate must chain to; empty: the
    /// system's roots.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// First token of every subject.
    pub subject_prefix: String,
    /// Connecting to one server gives up after this long (then the next is tried).
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// How long a publish waits for JetStream's acknowledgement (and an API call for
    /// its answer); past it the batch fails and is retried.
    #[serde(with = "units::duration")]
    pub ack_timeout: Duration,
    /// Payload bytes in each event (`honeytrap.payload`), and their encoding.
    #[serde(with = "units::bytesize")]
    pub payload_max: u64,
    pub payload_encoding: PayloadEncoding,
    pub stream: StreamSettings,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            urls: vec!["nats://127.0.0.1:4222".into()],
            credentials_file: PathBuf::new(),
            token: String::new(),
            user: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            tls: false,
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            subject_prefix: "honeytrap".into(),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            payload_max: 4096,
            payload_encoding: PayloadEncoding::Base64,
            stream: StreamSettings::default(),
        }
    }
}

/// `[output.nats.stream]`: the JetStream stream, created with these settings if it
/// is missing (an existing stream is used as it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    pub name: String,
    /// Subjects the stream stores; empty: `<subject_prefix>.>`.
    pub subjects: Vec<String>,
    pub retention: Retention,
    /// Messages older than this are removed; 0: kept until another limit.
    #[serde(with = "units::duration")]
    pub max_age: Duration,
    /// Most bytes stored (oldest removed first); 0: no limit.
    #[serde(with = "units::bytesize")]
    pub max_bytes: u64,
    /// How long the server remembers message ids to drop duplicates.
    #[serde(with = "units::duration")]
    pub duplicate_window: Duration,
    /// Copies in a JetStream cluster (1 to 5).
    pub replicas: usize,
    pub storage: Storage,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: "HONEYTRAP".into(),
            subjects: Vec::new(),
            retention: Retention::Limits,
            max_age: Duration::from_secs(7 * 86400),
            max_bytes: 0,
            duplicate_window: Duration::from_secs(3600),
            replicas: 1,
            storage: Storage::File,
        }
    }
}

/// When JetStream removes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// At the stream's limits (age, bytes): any number of consumers may read.
    Limits,
    /// Once every consumer acknowledged it.
    Interest,
    /// Once one consumer acknowledged it (one consumer per subject).
    Workqueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

impl NatsConfig {
    /// Checks for `Config::validate`; `section` is `output.nats` or `collect.nats`.
    pub fn validate(&self, section: &str) -> Result<(), Invalid> {
        let key = |k: &str| format!("{section}.{k}");
        if self.urls.is_empty() {
            return Err(Invalid::new(key("urls"), "must name at least one server"));
        }
        for u in &self.urls {
            if let Err(e) = u.parse::<async_nats::ServerAddr>() {
                return Err(Invalid::new(key("urls"), format!("{u:?}: {e}")));
            }
        }
        if self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t != subject_token(t))
        {
            return Err(Invalid::new(
                key("subject_prefix"),
                "must be dot-separated tokens of letters, digits, '-' and '_'",
            ));
        }
        if self.cert_file.as_os_str().is_empty() != self.key_file.as_os_str().is_empty() {
            return Err(Invalid::new(
                key("key_file"),
                "cert_file and key_file go together",
            ));
        }
        if self.connect_timeout.is_zero() || self.ack_timeout.is_zero() {
            return Err(Invalid::new(
                key("ack_timeout"),
                "connect_timeout and ack_timeout must be longer than 0",
            ));
        }
        if self.payload_max > 1 << 20 {
            return Err(Invalid::new(key("payload_max"), "must be at most 1MiB"));
        }
        let s = &self.stream;
        let skey = |k: &str| format!("{section}.stream.{k}");
        if s.name.is_empty() || s.name.contains(['.', '*', '>', ' ', '/', '\\']) {
            return Err(Invalid::new(
                skey("name"),
                "must be non-empty, without '.', '*', '>', '/', '\\' or spaces",
            ));
        }
        if !(1..=5).contains(&s.replicas) {
            return Err(Invalid::new(skey("replicas"), "must be 1 to 5"));
        }
        if s.duplicate_window.is_zero() {
            return Err(Invalid::new(
                skey("duplicate_window"),
                "must be longer than 0",
            ));
        }
        if !s.max_age.is_zero() && s.duplicate_window > s.max_age {
            return Err(Invalid::new(
                skey("duplicate_window"),
                "must not be longer than max_age",
            ));
        }
        Ok(())
    }

    /// The subjects the stream stores.
    pub fn stream_subjects(&self) -> Vec<String> {
        if self.stream.subjects.is_empty() {
            vec![format!("{}.>", self.subject_prefix)]
        } else {
            self.stream.subjects.clone()
        }
    }

    /// The JetStream configuration of the stream.
    pub fn stream_config(&self) -> stream::Config {
        let s = &self.stream;
        stream::Config {
            name: s.name.clone(),
            subjects: self.stream_subjects(),
            retention: match s.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
            },
            storage: match s.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            max_age: s.max_age,
            max_bytes: if s.max_bytes == 0 {
                -1
            } else {
                s.max_bytes.min(i64::MAX as u64) as i64
            },
            duplicate_window: s.duplicate_window,
            num_replicas: s.replicas,
            description: Some("honeytrap attack events".into()),
            ..Default::default()
        }
    }

    /// The subject of an event of `kind` from `sensor`.
    pub fn subject(&self, sensor: &str, kind: &str) -> String {
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            subject_token(sensor),
            subject_token(kind)
        )
    }
}

/// A name as one subject token: letters, digits, '-' and '_' are kept, anything
/// else (dots, wildcards, spaces, non-ASCII) becomes '_'; empty becomes "_".
pub fn subject_token(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// Connect (in the background: this returns at once, also while every server is
/// down; the client keeps reconnecting, at most 2 s apart).
pub async fn connect(c: &NatsConfig, name: String) -> anyhow::Result<async_nats::Client> {
    let mut o = if c.credentials_file.as_os_str().is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_credentials_file(&c.credentials_file)
            .await
            .with_context(|| format!("reading {}", c.credentials_file.display()))?
    };
    if !c.token.is_empty() {
        o = o.token(c.token.clone());
    }
    if !c.user.is_empty() {
        let password = if c.password_file.as_os_str().is_empty() {
            c.password.clone()
        } else {
            let text = std::fs::read_to_string(&c.password_file)
                .with_context(|| format!("reading {}", c.password_file.display()))?;
            text.lines().next().unwrap_or("").trim_end().to_string()
        };
        o = o.user_and_password(c.user.clone(), password);
    }
    if c.tls {
        o = o.require_tls(true);
    }
    if !c.ca_file.as_os_str().is_empty() {
        o = o.add_root_certificates(c.ca_file.clone());
    }
    if !c.cert_file.as_os_str().is_empty() {
        o = o.add_client_certificate(c.cert_file.clone(), c.key_file.clone());
    }
    let urls: Vec<async_nats::ServerAddr> = c
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .context("nats urls")?;
    let o = o
        .name(name)
        .connection_timeout(c.connect_timeout)
        .request_timeout(Some(c.ack_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((100u64 << n.min(5)).min(2000)))
        .event_callback(|e| async move {
            match e {
                async_nats::Event::Connected => tracing::info!("nats: connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats: disconnected"),
                async_nats::Event::Closed => tracing::debug!("nats: connection closed"),
                other => tracing::warn!(event = %other, "nats"),
            }
        });
    o.connect(urls).await.context("connecting to NATS")
}

/// A JetStream context whose API calls and acknowledgements wait `ack_timeout`.
pub fn jetstream(c: &NatsConfig, client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(c.ack_timeout)
        .max_ack_inflight(2 * ACK_WINDOW)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The stream, created if it is missing.
pub async fn ensure_stream(
    c: &NatsConfig,
    js: &jetstream::Context,
) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(c.stream_config())
        .await
        .with_context(|| format!("getting or creating the JetStream stream {}", c.stream.name))
}

/// Messages in flight before their acknowledgements are awaited (a spool batch of
/// more is sent in windows of this size; below the context's in-flight limit, so
/// sending never waits for an acknowledgement nobody awaits).
const ACK_WINDOW: usize = 1024;

/// Publishes spooled events to JetStream.
pub struct NatsDelivery {
    /// One worker thread of its own: the client's connection task keeps answering
    /// the server's pings between batches (a runtime driven only inside `deliver`
    /// would let an idle connection go stale and fail the next batch).
    rt: tokio::runtime::Runtime,
    publisher: Publisher,
}

struct Publisher {
    config: NatsConfig,
    sensor: String,
    /// The sensor's subject, without the kind.
    subject_base: String,
    /// Connected (in the background) on the first batch, inside the runtime.
    js: Option<jetstream::Context>,
    /// The stream is known to exist.
    stream_ready: bool,
}

impl NatsDelivery {
    /// `nice`: the client thread's nice value, as the spool's threads
    /// (`output.spool.nice`).
    pub fn new(c: &NatsConfig, sensor: &str, nice: i32) -> anyhow::Result<NatsDelivery> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nats-client")
            .on_thread_start(move || crate::privileges::lower_thread_priority(nice, "nats client"))
            .enable_all()
            .build()?;
        Ok(NatsDelivery {
            rt,
            publisher: Publisher {
                subject_base: format!("{}.{}", c.subject_prefix, subject_token(sensor)),
                sensor: sensor.to_string(),
                config: c.clone(),
                js: None,
                stream_ready: false,
            },
        })
    }
}

impl Publisher {
    async fn publish(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                let client = connect(&self.config, format!("honeytrap {}", self.sensor)).await?;
                let js = jetstream(&self.config, client);
                self.js = Some(js.clone());
                js
            }
        };
        if !self.stream_ready {
            ensure_stream(&self.config, &js).await?;
            self.stream_ready = true;
        }
        for window in batch.chunks(ACK_WINDOW) {
            self.publish_window(&js, window).await?;
        }
        Ok(())
    }

    /// Send every message of `window`, then wait for every acknowledgement.
    async fn publish_window(
        &self,
        js: &jetstream::Context,
        window: &[Spooled],
    ) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(window.len());
        for s in window {
            let subject = format!("{}.{}", self.subject_base, subject_token(&s.kind));
            let msg = jetstream::message::PublishMessage::build()
                .payload(s.body.clone().into())
                .message_id(&s.key);
            match js.send_publish(subject, msg).await {
                Ok(ack) => acks.push((s, ack)),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                    // Retrying cannot help: drop this one event, loudly.
                    tracing::error!(id = %s.key, bytes = s.body.len(), error = %e, "nats: event larger than the server's max_payload; dropped (lower output.nats.payload_max)");
                }
                Err(e) => return Err(e).context("publishing to JetStream"),
            }
        }
        for (s, ack) in acks {
            ack.await
                .with_context(|| format!("JetStream acknowledgement of {}", s.key))?;
        }
        Ok(())
    }
}

impl Delivery for NatsDelivery {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn deliver(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
        let r = self.rt.block_on(self.publisher.publish(batch));
        if r.is_err() {
            // The stream may have been deleted meanwhile: check again next time.
            self.publisher.stream_ready = false;
        }
        r
    }
}

/// The output as a spool member, in `<data_dir>/<spool.dir>/nats`.
pub fn output(config: &Config) -> anyhow::Result<Output> {
    let c = &config.output.nats;
    Ok(Output {
        member: Member {
            name: "nats",
            dir: config.data_path(&config.output.spool.dir).join("nats"),
            delivery: Box::new(NatsDelivery::new(
                c,
                &config.sensor.name,
                config.output.spool.nice,
            )?),
            throttle: Arc::new(Throttle::default()),
        },
        payload_max: c.payload_max,
        encoding: c.payload_encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_names_become_one_subject_token() {
        let c = NatsConfig::default();
        assert_eq!(c.subject("web-01", "attack"), "honeytrap.web-01.attack");
        assert_eq!(
            c.subject("dmz.sensor *2>", "attack"),
            "honeytrap.dmz_sensor__2_.attack"
        );
        assert_eq!(c.subject("", "attack"), "honeytrap._.attack");
        assert_eq!(c.subject("grüße", "attack"), "honeytrap.gr__e.attack");
    }

    #[test]
    fn defaults_validate_and_map_onto_the_stream() {
        let c = NatsConfig::default();
        c.validate("output.nats").unwrap();
        let s = c.stream_config();
        assert_eq!(s.name, "HONEYTRAP");
        assert_eq!(s.subjects, vec!["honeytrap.>".to_string()]);
        assert_eq!(s.max_bytes, -1);
        assert_eq!(s.duplicate_window, Duration::from_secs(3600));
    }

    #[test]
    fn bad_settings_are_refused_with_their_key() {
        let bad = |f: &dyn Fn(&mut NatsConfig)| {
            let mut c = NatsConfig::default();
            f(&mut c);
            c.validate("output.nats").unwrap_err().key
        };
        assert_eq!(bad(&|c| c.urls.clear()), "output.nats.urls");
        assert_eq!(
            bad(&|c| c.subject_prefix = "a.*".into()),
            "output.nats.subject_prefix"
        );
        assert_eq!(
            bad(&|c| c.stream.name = "a.b".into()),
            "output.nats.stream.name"
        );
        assert_eq!(
            bad(&|c| c.stream.duplicate_window = Duration::from_secs(8 * 86400)),
            "output.nats.stream.duplicate_window"
        );
        assert_eq!(
            bad(&|c| c.cert_file = "c.pem".into()),
            "output.nats.key_file"
        );
    }
}
