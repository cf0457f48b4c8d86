//! PostgreSQL: connection settings (`[output.postgres]`), connections (TLS with
//! rustls, an r2d2 pool), the schema's versioned migrations (applied by
//! `honeytrap db migrate` and by the output at start), and [`insert_events`], which
//! maps JSON events (`docs/events.md`) onto the tables, idempotent on the attack id.
//! The postgres output (`sink::postgres`) and a future collector share it.

mod row;

use crate::config::units;
use crate::config::Invalid;
use anyhow::Context as _;
use postgres::config::SslMode;
use postgres::Client;
use r2d2_postgres::{r2d2, PostgresConnectionManager};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use row::{event_id, parse_event, AttackRow, Jsonb};

/// Settings of the PostgreSQL output (`[output.postgres]`, docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    pub enabled: bool,
    /// Connection: `host=... port=... user=... dbname=...` or a `postgresql://` URL.
    /// `sslmode` in it is ignored: `tls` decides.
    pub url: String,
    /// A file holding the password (first line); empty: the password, if any, is in `url`.
    pub password_file: PathBuf,
    /// Connect with TLS, verifying the server's certificate against `ca_file`.
    pub tls: bool,
    /// PEM file with the CA certificate(s) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Connecting (and waiting for a pooled connection) gives up after this long.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Apply the schema migrations when the output starts.
    pub migrate: bool,
    /// Payload bytes kept in `attacks.payload_prefix` (and the event); at most 1 MiB.
    #[serde(with = "units::bytesize")]
    pub payload_max: u64,
    /// Store the content of downloaded files (from the download store) in `downloads.content`.
    pub store_downloads: bool,
    /// Larger files are not stored in the database (their row still is).
    #[serde(with = "units::bytesize")]
    pub download_max: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            enabled: false,
            url: String::new(),
            password_file: PathBuf::new(),
            tls: false,
            ca_file: PathBuf::new(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(10),
            migrate: true,
            payload_max: 4096,
            store_downloads: false,
            download_max: 16 << 20,
        }
    }
}

impl PostgresConfig {
    /// Checks for `Config::validate`.
    pub fn validate(&self) -> Result<(), Invalid> {
        let key = |k: &str| format!("output.postgres.{k}");
        if !self.enabled {
            return Ok(());
        }
        if self.url.trim().is_empty() {
            return Err(Invalid::new(
                key("url"),
                "must be set when the output is enabled",
            ));
        }
        if let Err(e) = self.url.parse::<postgres::Config>() {
            return Err(Invalid::new(
                key("url"),
                format!("not a connection string: {e}"),
            ));
        }
        if self.tls && self.ca_file.as_os_str().is_empty() {
            return Err(Invalid::new(
                key("ca_file"),
                "must name a PEM file with the CA certificate when tls = true",
            ));
        }
        if self.pool_size == 0 {
            return Err(Invalid::new(key("pool_size"), "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Invalid::new(
                key("connect_timeout"),
                "must be longer than 0",
            ));
        }
        if self.payload_max > 1 << 20 {
            return Err(Invalid::new(key("payload_max"), "must be at most 1MiB"));
        }
        Ok(())
    }
}

/// Connections from the pool.
pub type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// The client configuration and TLS connector for `c`.
fn client_config(c: &PostgresConfig) -> anyhow::Result<(postgres::Config, MakeRustlsConnect)> {
    let mut pg: postgres::Config = c.url.parse().context("output.postgres.url")?;
    pg.connect_timeout(c.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("honeytrap");
    }
    if !c.password_file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(&c.password_file)
            .with_context(|| format!("reading {}", c.password_file.display()))?;
        pg.password(text.lines().next().unwrap_or("").trim_end());
    }
    pg.ssl_mode(if c.tls {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    Ok((pg, tls_connector(c)?))
}

/// A rustls connector trusting the certificates of `ca_file` (unused without TLS).
fn tls_connector(c: &PostgresConfig) -> anyhow::Result<MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    if c.tls {
        let certs = CertificateDer::pem_file_iter(&c.ca_file)
            .with_context(|| format!("reading {}", c.ca_file.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("reading {}", c.ca_file.display()))?;
            roots
                .add(cert)
                .context("a CA certificate of output.postgres.ca_file")?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "{}: no certificate in it",
            c.ca_file.display()
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// One connection (for `db migrate`).
pub fn connect(c: &PostgresConfig) -> anyhow::Result<Client> {
    let (pg, tls) = client_config(c)?;
    pg.connect(tls).context("connecting to PostgreSQL")
}

/// A pool of `pool_size` connections. Connections are made when needed, so this
/// succeeds while the server is down.
pub fn pool(c: &PostgresConfig) -> anyhow::Result<Pool> {
    let (pg, tls) = client_config(c)?;
    Ok(r2d2::Pool::builder()
        .max_size(c.pool_size)
        .min_idle(Some(0))
        .connection_timeout(c.connect_timeout)
        // r2d2 logs through `log`, which honeytrap does not show: errors come back
        // from `get` instead.
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(PostgresConnectionManager::new(pg, tls)))
}

/// The schema migrations: version, name, SQL. Append only; never edit a released one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "initial schema",
    include_str!("migrations/0001_init.sql"),
)];

/// Serialises migrations of concurrent honeytrap processes (sensors, collectors).
const MIGRATION_LOCK: i64 = 0x686f_6e65_7974_7270; // "honeytrp"

/// Apply the migrations the database lacks, in one transaction; returns the
/// versions applied (empty when it was up to date).
pub fn migrate(client: &mut Client) -> anyhow::Result<Vec<i32>> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS honeytrap_schema (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let have: Vec<i32> = tx
        .query("SELECT version FROM honeytrap_schema", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(v) = have.iter().find(|&&v| v > newest) {
        anyhow::bail!("the database has schema version {v}, newer than this honeytrap knows ({newest}); upgrade honeytrap");
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| !have.contains(&m.0)) {
        tx.batch_execute(sql)
            .with_context(|| format!("migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO honeytrap_schema (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
        applied.push(version);
    }
    tx.commit()?;
    Ok(applied)
}

/// What an insert did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// New attacks.
    pub inserted: usize,
    /// Attacks already there (a retried batch): nothing written for them.
    pub duplicates: usize,
    /// Events that are no attack event or that the database refused: skipped.
    pub rejected: usize,
}

/// How events are written.
#[derive(Debug, Clone, Default)]
pub struct InsertOptions {
    /// Where `downloads[].stored` paths are relative to (`sensor.data_dir`); None:
    /// no content is stored.
    pub store_from: Option<PathBuf>,
    /// Largest file stored as `downloads.content`.
    pub download_max: u64,
}

/// An attack event for [`insert_events`]: its JSON text (what the spool and NATS
/// carry), or a `serde_json::Value` (serialised first).
pub trait EventJson {
    /// The event's JSON text.
    fn json_text(&self) -> Cow<'_, [u8]>;
}

impl EventJson for [u8] {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl EventJson for Vec<u8> {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl EventJson for str {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl EventJson for String {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl EventJson for bytes::Bytes {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl EventJson for Value {
    fn json_text(&self) -> Cow<'_, [u8]> {
        Cow::Owned(serde_json::to_vec(self).expect("a JSON value serializes"))
    }
}

impl<T: EventJson + ?Sized> EventJson for &T {
    fn json_text(&self) -> Cow<'_, [u8]> {
        (**self).json_text()
    }
}

/// Insert JSON attack events in one transaction, idempotent on the attack id
/// (an attack already present is skipped with all its rows). An event that does
/// not parse, or that the database refuses for its data, is skipped and counted
/// (logged), so one bad event never blocks the others; a connection or server
/// failure is an error (the caller retries the batch).
///
/// Events are deserialised into typed rows borrowing from their text, and the
/// text goes into the `event` column as it is (NUL replaced).
pub fn insert_events<E: EventJson>(
    client: &mut Client,
    events: &[E],
    opts: &InsertOptions,
) -> anyhow::Result<Inserted> {
    let mut out = Inserted::default();
    let texts: Vec<Cow<[u8]>> = events.iter().map(EventJson::json_text).collect();
    let mut rows = Vec::with_capacity(texts.len());
    for text in &texts {
        match parse_event(text) {
            Ok(r) => rows.push(r),
            Err(err) => {
                out.rejected += 1;
                tracing::warn!(id = ?event_id(text), error = %err, "postgres: event skipped: not an attack event");
            }
        }
    }
    match insert_rows(client, &rows, opts) {
        Ok(n) => {
            out.inserted += n;
            out.duplicates += rows.len() - n;
            return Ok(out);
        }
        Err(e) if !is_data_error(&e) => return Err(e),
        Err(_) => {}
    }
    // A row the database refuses: insert one by one to find it.
    for r in &rows {
        match insert_rows(client, std::slice::from_ref(r), opts) {
            Ok(1) => out.inserted += 1,
            Ok(_) => out.duplicates += 1,
            Err(e) if is_data_error(&e) => {
                out.rejected += 1;
                tracing::warn!(id = %r.id, error = format!("{e:#}"), "postgres: event skipped: refused by the database");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// An error about the data (SQLSTATE classes 22 and 23), not the connection.
fn is_data_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Insert rows in one transaction; returns how many attacks were new.
fn insert_rows(
    client: &mut Client,
    rows: &[AttackRow],
    opts: &InsertOptions,
) -> anyhow::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = client.transaction()?;
    let st = row::Statements::prepare(&mut tx)?;
    row::upsert_sensors(&mut tx, &st, rows)?;
    let new = row::insert_attacks(&mut tx, rows)?;
    // Children only for attacks that were new (and once, should a batch hold an id twice).
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<&AttackRow> = rows
        .iter()
        .filter(|r| new.contains(&r.id) && seen.insert(r.id))
        .collect();
    row::insert_findings(&mut tx, &fresh)?;
    for r in &fresh {
        row::insert_children(&mut tx, &st, r, opts)?;
    }
    tx.commit()?;
    Ok(new.len())
}

/// Read a stored download for `downloads.content`, if it is there and small enough.
fn stored_content(opts: &InsertOptions, stored: Option<&str>, size: u64) -> Option<Vec<u8>> {
    let base = opts.store_from.as_ref()?;
    let rel = Path::new(stored?);
    if size > opts.download_max
        || rel.is_absolute()
        || rel.components().any(|c| c.as_os_str() == "..")
    {
        return None;
    }
    let data = std::fs::read(base.join(rel)).ok()?;
    (data.len() as u64 <= opts.download_max).then_some(data)
}

/// `honeytrap db migrate`: connect with `[output.postgres]` and migrate.
pub fn migrate_command(c: &PostgresConfig) -> anyhow::Result<Vec<i32>> {
    anyhow::ensure!(
        !c.url.trim().is_empty(),
        "output.postgres.url is not set in the configuration"
    );
    let mut client = connect(c)?;
    migrate(&mut client)
}
