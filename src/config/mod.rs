//! The native configuration: the TOML model with its defaults, loading, and
//! validation that refuses a bad file with the key and line at fault.
//!
//! Every option is documented in `docs/configuration.md`; the embedded default file
//! `default.toml` is what `honeytrap run` uses without `-c`.

mod error;
pub mod legacy;
pub mod policy;
pub mod ports;
pub mod units;

pub use error::{ConfigError, Invalid};
pub use policy::{PortHandling, PortPolicy};
pub use ports::{PortRange, Protocols};

use crate::attack::Mode;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration honeytrap runs with when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Largest response file accepted (responses are held in memory).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorConfig,
    pub process: ProcessConfig,
    pub network: NetworkConfig,
    pub monitor: MonitorConfig,
    pub firewall: FirewallConfig,
    pub limits: LimitsConfig,
    pub ports: PortsConfig,
    pub relay: RelayConfig,
    /// Named proxy maps (`[proxy.<name>]`).
    pub proxy: std::collections::BTreeMap<String, ProxyMap>,
    pub analysis: AnalysisConfig,
    /// Options of each analyzer (`[analyzer.<name>]`), checked by its registration.
    pub analyzer: std::collections::BTreeMap<String, toml::Table>,
    pub downloads: DownloadsConfig,
    pub output: OutputConfig,
    /// The Prometheus endpoint (`src/metrics.rs`).
    pub metrics: crate::metrics::MetricsConfig,
    /// `honeytrap collect` (src/collect.rs).
    pub collect: crate::collect::CollectConfig,
}

/// Identity and storage of this sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Name put into every event; empty means the host name.
    pub name: String,
    /// Where events and transcripts are written.
    pub data_dir: PathBuf,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            name: String::new(),
            data_dir: PathBuf::from("honeytrap-data"),
        }
    }
}

/// How the process runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// User to switch to after setup (empty: stay as started).
    pub user: String,
    /// Group to switch to after setup (empty: the user's primary group).
    pub group: String,
    /// Log filter (tracing syntax: error, warn, info, debug, trace, or per module).
    pub log_level: String,
    /// How long in-flight sessions may run on after SIGTERM/SIGINT.
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
    /// Nice value (0-19) of every thread that does honeytrap's work (not the main
    /// thread, nor the nfqueue monitor's queue thread, which keep the start-up
    /// priority); `analysis.nice` and `output.spool.nice` count from it.
    pub nice: i32,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            user: String::new(),
            group: String::new(),
            log_level: "info".into(),
            shutdown_grace: Duration::from_secs(5),
            nice: 10,
        }
    }
}

/// Where dynamic servers listen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Addresses each dynamic server binds; `0.0.0.0` and `::` mean all.
    pub bind_addresses: Vec<IpAddr>,
    /// Listen backlog of every TCP listener (capped by net.core.somaxconn).
    pub backlog: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bind_addresses: vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()],
            backlog: 4096,
        }
    }
}

/// Which connection monitor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorKind {
    /// `sniff` when CAP_NET_RAW is available (running as root), `listen` otherwise.
    Auto,
    /// Bind a fixed set of ports at start-up.
    Listen,
    /// Watch outgoing TCP RST / ICMP port-unreachable and bind the port on demand.
    Sniff,
    /// Take new TCP SYNs and UDP datagrams from an NFQUEUE (iptables rules queue
    /// them), bind the port, then let the packet through: the first try is caught.
    Nfqueue,
    /// Take every new flow the iptables TPROXY rules divert to one transparent TCP
    /// listener and one transparent UDP socket; the original destination comes from
    /// the socket. Nothing is bound per port.
    Tproxy,
}

/// Monitor selection and per-monitor options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    pub kind: MonitorKind,
    pub listen: ListenConfig,
    pub sniff: SniffConfig,
    pub nfqueue: NfqueueConfig,
    pub tproxy: TproxyConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            kind: MonitorKind::Auto,
            listen: ListenConfig::default(),
            sniff: SniffConfig::default(),
            nfqueue: NfqueueConfig::default(),
            tproxy: TproxyConfig::default(),
        }
    }
}

/// Options of the `nfqueue` monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfqueueConfig {
    /// Queue number (`--queue-num` of the iptables rules).
    pub queue: u16,
    /// Most packets the kernel holds for us; past it they go through unseen.
    pub queue_maxlen: u32,
    /// Receive buffer of the netlink socket.
    #[serde(with = "units::bytesize")]
    pub rcvbuf: u64,
}

impl Default for NfqueueConfig {
    fn default() -> Self {
        NfqueueConfig {
            queue: 0,
            queue_maxlen: 65536,
            rcvbuf: 8 << 20,
        }
    }
}

/// Options of the `tproxy` monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TproxyConfig {
    /// Port of the transparent TCP listener and UDP socket (`--on-port` of the
    /// TPROXY rules), bound on the wildcard addresses.
    pub port: u16,
}

impl Default for TproxyConfig {
    fn default() -> Self {
        TproxyConfig { port: 65499 }
    }
}

/// Who writes the firewall rules the `nfqueue` (and `tproxy`) monitor needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FirewallMode {
    /// The administrator: honeytrap changes nothing and logs the rules to add.
    #[default]
    Manual,
    /// honeytrap: its own chain, added at start and removed at exit.
    Auto,
}

/// The `[firewall]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    pub mode: FirewallMode,
    /// SSH ports besides 22, never diverted (TCP).
    pub ssh_ports: Vec<u16>,
    /// Other ports never diverted (TCP and UDP).
    pub exclude_ports: Vec<u16>,
    /// Packet mark bit(s) of the TPROXY rules (`--tproxy-mark M/M`, `fwmark M/M`).
    pub tproxy_mark: u32,
    /// Routing table of the TPROXY policy routing (`lookup T`, `table T`).
    pub route_table: u32,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            mode: FirewallMode::default(),
            ssh_ports: Vec::new(),
            exclude_ports: Vec::new(),
            tproxy_mark: 0x1,
            route_table: 100,
        }
    }
}

/// Options of the `sniff` monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SniffConfig {
    /// Interfaces to watch (empty: all). Each must exist at start-up.
    pub interfaces: Vec<String>,
    /// Put the watched interfaces into promiscuous mode.
    pub promiscuous: bool,
    /// This host's addresses; a RST or ICMP error from any other source is ignored
    /// (empty: the addresses of every interface, read again on SIGHUP).
    pub addresses: Vec<IpAddr>,
    /// Receive buffer of each packet socket; past it the kernel drops (counted).
    #[serde(with = "units::bytesize")]
    pub rcvbuf: u64,
    /// Extra filter in a subset of pcap syntax on the outgoing RST / ICMP error
    /// (`crate::monitor::filter`); empty: none.
    pub filter: String,
}

impl Default for SniffConfig {
    fn default() -> Self {
        SniffConfig {
            interfaces: Vec::new(),
            promiscuous: false,
            addresses: Vec::new(),
            rcvbuf: 8 << 20,
            filter: String::new(),
        }
    }
}

/// Options of the `listen` monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// TCP ports and ranges bound at start-up.
    pub tcp: Vec<PortRange>,
    /// UDP ports and ranges bound at start-up.
    pub udp: Vec<PortRange>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let p = |n: u16| PortRange { first: n, last: n };
        ListenConfig {
            tcp: [
                1080, 1433, 1883, 2222, 2323, 2375, 3128, 3306, 3389, 5432, 5555, 5900, 6379, 6667,
                7547, 8000, 8080, 8081, 8443, 8888, 9200, 11211,
            ]
            .into_iter()
            .map(p)
            .collect(),
            udp: vec![p(5060)],
        }
    }
}

/// Limits that keep a flood from exhausting the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A dynamic server closes after this long without a new connection.
    #[serde(with = "units::duration")]
    pub conn_timeout: Duration,
    /// Silence after which normal mode sends its response.
    #[serde(with = "units::duration")]
    pub read_timeout: Duration,
    /// Hard limit on the length of one session.
    #[serde(with = "units::duration")]
    pub session_timeout: Duration,
    /// Most bytes kept from the attacker per session; the session ends there.
    #[serde(with = "units::bytesize")]
    pub read_limit: u64,
    /// Most bytes all open sessions may hold in memory together; a session that
    /// would go past it ends (`buffer_limit`).
    #[serde(with = "units::bytesize")]
    pub max_buffered: u64,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// Most sessions open at once from one source address.
    pub max_sessions_per_source: usize,
    /// New sessions per second allowed from one source address (sustained).
    pub source_rate: f64,
    /// New sessions one source may open in a burst above `source_rate`.
    pub source_burst: u32,
    /// Most dynamic servers (protocol, port) at once; the least recently used is
    /// closed to make room.
    pub max_listeners: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            conn_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(300),
            read_limit: 20 << 20,
            max_buffered: 1 << 30,
            max_sessions: 10_000,
            max_sessions_per_source: 256,
            source_rate: 100.0,
            source_burst: 500,
            max_listeners: 4096,
        }
    }
}

/// When the canned response is sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Greeting {
    /// Built-in responses of services where the server speaks first are sent on
    /// connect; everything else after `read_timeout` of silence.
    Auto,
    /// Send the response as soon as the connection is accepted.
    Always,
    /// Only ever send it after `read_timeout` of silence (the original's behaviour).
    Never,
}

/// The port policy: how each (protocol, port) is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    /// Mode of every port no rule names.
    pub default_mode: Mode,
    /// Directory of response files named `<port>_tcp` / `<port>_udp` (empty: none).
    pub response_dir: PathBuf,
    /// How many times normal mode sends the response before it closes an idle session.
    pub responses: u32,
    /// When the first response is sent.
    pub greeting: Greeting,
    /// Per-port rules; a (protocol, port) may be named by one rule only.
    #[serde(rename = "rule")]
    pub rules: Vec<PortRule>,
}

impl Default for PortsConfig {
    fn default() -> Self {
        PortsConfig {
            default_mode: Mode::Normal,
            response_dir: PathBuf::new(),
            responses: 10,
            greeting: Greeting::Auto,
            rules: Vec::new(),
        }
    }
}

/// One rule of the port policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// "tcp", "udp" or a list of both.
    pub protocol: Protocols,
    /// Ports and ranges.
    pub ports: Vec<PortRange>,
    /// How these ports are handled.
    pub mode: Mode,
    /// Response file for these ports (overrides `response_dir` and built-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<PathBuf>,
    /// Override of `ports.greeting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<Greeting>,
    /// Override of `ports.responses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<u32>,
}

/// A named proxy map: these (protocol, port)s are relayed to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyMap {
    /// What is accepted: "tcp", "udp" or a list of both.
    pub protocol: Protocols,
    /// Ports and ranges relayed.
    pub ports: Vec<PortRange>,
    /// IP address or host name of the target (resolved per connection).
    pub target_host: String,
    /// Target port; absent: the port the attacker connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// Target protocol; absent: the protocol the attacker used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_protocol: Option<crate::proto::Protocol>,
    /// Response file of the normal-mode fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<PathBuf>,
    /// Greeting of the normal-mode fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<Greeting>,
    /// Responses of the normal-mode fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<u32>,
}

/// Settings and safety limits of mirror and proxy mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Longest wait for the TCP connection to the target; then normal mode.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// A relay ends after this long without data in either direction.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Most relays open at once; more are served in normal mode.
    pub max_relays: usize,
    /// New relays per second allowed per source address (sustained).
    pub source_rate: f64,
    /// New relays one source may open in a burst above `source_rate`.
    pub source_burst: u32,
    /// Mirror UDP (off: a spoofed source would make honeytrap a reflector).
    pub mirror_udp: bool,
    /// Allow mirroring to private address ranges.
    pub mirror_private: bool,
    /// Proxy over UDP: bytes sent back to the peer at most this times what it sent.
    pub udp_reply_ratio: f64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            max_relays: 256,
            source_rate: 1.0,
            source_burst: 10,
            mirror_udp: false,
            mirror_private: false,
            udp_reply_ratio: 1.0,
        }
    }
}

/// The analysis pipeline (docs/analysis.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Run the analyzers at all.
    pub enabled: bool,
    /// Worker threads.
    pub workers: usize,
    /// Attacks waiting for a worker; when full, attacks go to the outputs
    /// unanalyzed (counted).
    pub queue_size: usize,
    /// How many times decoded copies are decoded again (and downloads followed).
    pub max_depth: u32,
    /// Longest one analyzer may run on one input.
    #[serde(with = "units::duration")]
    pub analyzer_budget: Duration,
    /// Longest all analyzers together may run on one attack.
    #[serde(with = "units::duration")]
    pub attack_budget: Duration,
    /// Most downloads one attack may lead to.
    pub max_downloads: usize,
    /// Analyzers see at most this many bytes of a payload (its start).
    #[serde(with = "units::bytesize")]
    pub max_input: u64,
    /// Nice steps of the worker threads below `process.nice` (at most nice 19):
    /// capture goes first.
    pub nice: i32,
    /// Run the worker threads under the `SCHED_IDLE` policy: they get the CPU
    /// only when capture leaves it (a waking capture thread preempts them at once).
    pub idle_priority: bool,
    /// Longest a worker waits, before each attack, while the host's CPUs are
    /// saturated (crate::saturation); zero: never.
    #[serde(with = "units::duration")]
    pub busy_pause: Duration,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            enabled: true,
            workers: 4,
            queue_size: 1024,
            max_depth: 3,
            analyzer_budget: Duration::from_secs(30),
            attack_budget: Duration::from_secs(120),
            max_downloads: 5,
            max_input: 8 << 20,
            nice: 19,
            idle_priority: true,
            busy_pause: Duration::from_secs(2),
        }
    }
}

/// Safety limits shared by every downloader, and the store of downloaded files
/// (docs/analysis.md, "Downloads").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadsConfig {
    /// Largest file kept; a longer one is cut here and marked `truncated`.
    #[serde(with = "units::bytesize")]
    pub max_size: u64,
    /// Longest one download may take (never past the analyzer's budget).
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Most downloads running at once, across every analysis worker.
    pub max_concurrent: usize,
    /// The same URL is fetched at most once within this window.
    #[serde(with = "units::duration")]
    pub dedup_window: Duration,
    /// Networks (CIDR) downloads may reach even when they are private, loopback or
    /// the sensor's own.
    pub allow: Vec<String>,
    /// A download that points at a private address is tried from the attacker's
    /// address instead.
    pub replace_private_ips: bool,
    /// Disk quota of `<data_dir>/downloads`: bytes and files.
    #[serde(with = "units::bytesize")]
    pub quota_bytes: u64,
    pub quota_files: u64,
}

impl Default for DownloadsConfig {
    fn default() -> Self {
        DownloadsConfig {
            max_size: 16 << 20,
            timeout: Duration::from_secs(60),
            max_concurrent: 4,
            dedup_window: Duration::from_secs(3600),
            allow: Vec::new(),
            replace_private_ips: false,
            quota_bytes: 1 << 30,
            quota_files: 10_000,
        }
    }
}

/// Where finished attacks go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Capacity of the queue in front of each output; when full, attacks for that
    /// output are counted and logged as dropped instead of blocking capture.
    pub queue_size: usize,
    /// Most bytes of attacks waiting for the outputs; past it, attacks are counted
    /// and logged as dropped.
    #[serde(with = "units::bytesize")]
    pub queue_bytes: u64,
    pub jsonl: JsonlConfig,
    pub transcripts: TranscriptsConfig,
    /// The original honeytrap's outputs (src/sink/legacy).
    pub logjson: crate::sink::legacy::LogJsonConfig,
    pub attacker_log: crate::sink::legacy::AttackerLogConfig,
    pub savefile: crate::sink::legacy::SaveFileConfig,
    /// The hpfeeds output (src/sink/hpfeeds.rs).
    pub hpfeeds: crate::sink::hpfeeds::HpfeedsConfig,
    /// The spool of the network outputs (src/sink/spool.rs).
    pub spool: crate::sink::spool::SpoolConfig,
    /// The PostgreSQL output (src/db, src/sink/postgres.rs).
    pub postgres: crate::db::PostgresConfig,
    /// The NATS JetStream output (src/sink/nats.rs).
    pub nats: crate::sink::nats::NatsConfig,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            queue_size: 65_536,
            queue_bytes: 256 << 20,
            jsonl: JsonlConfig::default(),
            transcripts: TranscriptsConfig::default(),
            logjson: Default::default(),
            attacker_log: Default::default(),
            savefile: Default::default(),
            hpfeeds: Default::default(),
            spool: Default::default(),
            postgres: Default::default(),
            nats: Default::default(),
        }
    }
}

/// How payload bytes are written into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    Hex,
    Base64,
}

/// The JSON lines event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlConfig {
    pub enabled: bool,
    /// File to append to, relative to `sensor.data_dir`; "-" is standard output.
    pub path: PathBuf,
    /// Most payload bytes copied into an event (the transcript file has all of it).
    #[serde(with = "units::bytesize")]
    pub payload_max: u64,
    pub payload_encoding: PayloadEncoding,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        JsonlConfig {
            enabled: true,
            path: PathBuf::from("events.jsonl"),
            payload_max: 4096,
            payload_encoding: PayloadEncoding::Base64,
        }
    }
}

/// How transcripts are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptLayout {
    /// Appended to segment files, one document per line.
    Segments,
    /// One file per attack.
    PerAttack,
}

/// Transcript files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscriptsConfig {
    pub enabled: bool,
    /// Directory, relative to `sensor.data_dir`.
    pub dir: PathBuf,
    pub layout: TranscriptLayout,
    /// Size at which a segment file is closed and a new one started.
    #[serde(with = "units::bytesize")]
    pub segment_bytes: u64,
    /// Most bytes all transcript files may take; the oldest are removed first.
    #[serde(with = "units::bytesize")]
    pub quota_bytes: u64,
    /// Most transcript files kept; the oldest are removed first.
    pub quota_files: u64,
}

impl Default for TranscriptsConfig {
    fn default() -> Self {
        TranscriptsConfig {
            enabled: true,
            dir: PathBuf::from("transcripts"),
            layout: TranscriptLayout::Segments,
            segment_bytes: 16 << 20,
            quota_bytes: 1 << 30,
            quota_files: 200_000,
        }
    }
}

/// A validated configuration with its compiled port policy.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub policy: PortPolicy,
    /// `sensor.name`, shared by every record.
    pub sensor: std::sync::Arc<str>,
    /// Where it came from (for SIGHUP reloads); None for the embedded default.
    pub source: Option<PathBuf>,
    /// The command line changed the monitor (`--monitor`, `--queue`); a reload keeps
    /// the monitor settings as they are.
    pub overridden: bool,
    /// Read from an original `honeytrap.conf`: what it set that has no native key
    /// (outputs, logfile, pidfile) and the warnings (docs/migration.md).
    pub legacy: Option<std::sync::Arc<legacy::LegacyExtras>>,
}

/// Load and validate `path`, or the embedded default when `path` is None.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (name, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: p.to_path_buf(),
                line: None,
                column: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            })?;
            (p.to_path_buf(), text)
        }
        None => (
            PathBuf::from("<embedded default>"),
            EMBEDDED_DEFAULT.to_string(),
        ),
    };
    // The original's syntax is recognised by content (legacy::is_legacy). Its
    // warnings are logged here, which is seen on a SIGHUP reload; at start-up the
    // command line prints them (no logger yet).
    let (config, policy, legacy) = if legacy::is_legacy(&text) {
        let l = legacy::read(&name, &text)?;
        for w in &l.extras.warnings {
            tracing::warn!("{w}");
        }
        (l.config, l.policy, Some(std::sync::Arc::new(l.extras)))
    } else {
        let config = parse(&name, &text)?;
        let policy = PortPolicy::build(&config).map_err(|e| e.locate(&name, &text))?;
        (config, policy, None)
    };
    let sensor = config.sensor.name.as_str().into();
    Ok(Loaded {
        config,
        policy,
        sensor,
        source: path.map(Path::to_path_buf),
        overridden: false,
        legacy,
    })
}

/// Parse and validate a config text (`name` is used in errors).
pub fn parse(name: &Path, text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| error::line_of(text, s.start))
            .or_else(|| error::span_of(text, &key).map(|s| error::line_of(text, s.start)));
        ConfigError {
            file: name.to_path_buf(),
            line,
            column: None,
            key: if key == "." { String::new() } else { key },
            message: inner.message().trim().to_string(),
        }
    })?;
    config.validate().map_err(|e| e.locate(name, text))?;
    config.fill_defaults();
    Ok(config)
}

/// Accept a tracing filter, but refuse bare words that are not a level: EnvFilter
/// would take `verbose` for a module name and silently switch logging off.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && !LEVELS.contains(&part.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{part}` is not a level (off, error, warn, info, debug, trace) nor `module=level`"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("invalid filter: {e}"))
}

impl Config {
    /// Fill values whose default depends on the host.
    fn fill_defaults(&mut self) {
        // Validated before: this only fills in every analyzer's defaults.
        let _ = crate::analysis::registry::check_and_fill(&mut self.analyzer);
        if self.sensor.name.is_empty() {
            self.sensor.name = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "honeytrap".into());
        }
    }

    /// Check values a type cannot express. Rules are checked by [`PortPolicy::build`].
    fn validate(&self) -> Result<(), Invalid> {
        let nonzero = |key: &str, v: Duration| {
            if v.is_zero() {
                Err(Invalid::new(key, "must be longer than 0"))
            } else {
                Ok(())
            }
        };
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(Invalid::new(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        if self.sensor.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("sensor.data_dir", "must not be empty"));
        }
        nonzero("process.shutdown_grace", self.process.shutdown_grace)?;
        check_log_filter(&self.process.log_level)
            .map_err(|m| Invalid::new("process.log_level", m))?;
        if self.process.user.is_empty() && !self.process.group.is_empty() {
            return Err(Invalid::new("process.group", "needs process.user as well"));
        }
        let n = &self.network;
        if n.bind_addresses.is_empty() {
            return Err(Invalid::new(
                "network.bind_addresses",
                "must name at least one address",
            ));
        }
        let mut seen = HashSet::new();
        for (i, a) in n.bind_addresses.iter().enumerate() {
            if !seen.insert(a) {
                return Err(Invalid::new(
                    format!("network.bind_addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        if !(1..=65535).contains(&n.backlog) {
            return Err(Invalid::new(
                "network.backlog",
                "must be between 1 and 65535",
            ));
        }
        let s = &self.monitor.sniff;
        let mut names = HashSet::new();
        for (i, name) in s.interfaces.iter().enumerate() {
            let key = format!("monitor.sniff.interfaces[{i}]");
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "`{name}` is not an interface name (1 to 15 characters, no `/` or space)"
                    ),
                ));
            }
            if !names.insert(name) {
                return Err(Invalid::new(key, format!("`{name}` is listed twice")));
            }
        }
        let mut addrs = HashSet::new();
        for (i, a) in s.addresses.iter().enumerate() {
            if !addrs.insert(a) {
                return Err(Invalid::new(
                    format!("monitor.sniff.addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        if !(64 << 10..=1 << 30).contains(&s.rcvbuf) {
            return Err(Invalid::new(
                "monitor.sniff.rcvbuf",
                "must be between 64KiB and 1GiB",
            ));
        }
        crate::monitor::filter::parse(&s.filter)
            .map_err(|e| Invalid::new("monitor.sniff.filter", e.to_string()))?;
        let q = &self.monitor.nfqueue;
        positive("monitor.nfqueue.queue_maxlen", q.queue_maxlen.into())?;
        if !(64 << 10..=1 << 30).contains(&q.rcvbuf) {
            return Err(Invalid::new(
                "monitor.nfqueue.rcvbuf",
                "must be between 64KiB and 1GiB",
            ));
        }
        if self.monitor.tproxy.port == 0 {
            return Err(Invalid::new(
                "monitor.tproxy.port",
                "must be between 1 and 65535",
            ));
        }
        if self.firewall.tproxy_mark == 0 {
            return Err(Invalid::new(
                "firewall.tproxy_mark",
                "must not be 0 (a mark bit, e.g. 0x1)",
            ));
        }
        // 0 is no table; 253-255 are the kernel's default, main and local tables.
        if matches!(self.firewall.route_table, 0 | 253..=255) {
            return Err(Invalid::new(
                "firewall.route_table",
                "must be 1 to 4294967295 except 253, 254 and 255 (the default, main and local tables)",
            ));
        }
        for (name, list) in [
            ("ssh_ports", &self.firewall.ssh_ports),
            ("exclude_ports", &self.firewall.exclude_ports),
        ] {
            let mut seen = HashSet::new();
            for (i, p) in list.iter().enumerate() {
                let key = format!("firewall.{name}[{i}]");
                if *p == 0 {
                    return Err(Invalid::new(key, "must be between 1 and 65535"));
                }
                if !seen.insert(p) {
                    return Err(Invalid::new(key, format!("{p} is listed twice")));
                }
            }
        }
        let l = &self.limits;
        nonzero("limits.conn_timeout", l.conn_timeout)?;
        nonzero("limits.read_timeout", l.read_timeout)?;
        nonzero("limits.session_timeout", l.session_timeout)?;
        positive("limits.read_limit", l.read_limit)?;
        positive("limits.max_sessions", l.max_sessions as u64)?;
        if l.max_buffered < l.read_limit {
            return Err(Invalid::new(
                "limits.max_buffered",
                "must be at least limits.read_limit",
            ));
        }
        positive(
            "limits.max_sessions_per_source",
            l.max_sessions_per_source as u64,
        )?;
        positive("limits.source_burst", l.source_burst as u64)?;
        positive("limits.max_listeners", l.max_listeners as u64)?;
        if l.max_sessions_per_source > l.max_sessions {
            return Err(Invalid::new(
                "limits.max_sessions_per_source",
                "cannot be larger than limits.max_sessions",
            ));
        }
        if !(l.source_rate.is_finite() && l.source_rate > 0.0) {
            return Err(Invalid::new(
                "limits.source_rate",
                "must be a number above 0",
            ));
        }
        if l.session_timeout < l.read_timeout {
            return Err(Invalid::new(
                "limits.session_timeout",
                "must not be shorter than limits.read_timeout",
            ));
        }
        let r = &self.relay;
        nonzero("relay.connect_timeout", r.connect_timeout)?;
        nonzero("relay.idle_timeout", r.idle_timeout)?;
        positive("relay.max_relays", r.max_relays as u64)?;
        positive("relay.source_burst", r.source_burst as u64)?;
        if !(r.source_rate.is_finite() && r.source_rate > 0.0) {
            return Err(Invalid::new(
                "relay.source_rate",
                "must be a number above 0",
            ));
        }
        if !(r.udp_reply_ratio.is_finite() && (0.0..=100.0).contains(&r.udp_reply_ratio)) {
            return Err(Invalid::new(
                "relay.udp_reply_ratio",
                "must be a number from 0 to 100",
            ));
        }
        for (name, m) in &self.proxy {
            let key = format!("proxy.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Invalid::new(
                    key,
                    "a map name is letters, digits, `-` and `_` only",
                ));
            }
            let host = m.target_host.trim();
            if host.is_empty()
                || host.len() > 253
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
            {
                return Err(Invalid::new(
                    format!("{key}.target_host"),
                    "must be an IP address or a host name",
                ));
            }
            if m.target_port == Some(0) {
                return Err(Invalid::new(
                    format!("{key}.target_port"),
                    "must be between 1 and 65535",
                ));
            }
        }
        if !(0..=19).contains(&self.process.nice) {
            return Err(Invalid::new("process.nice", "must be between 0 and 19"));
        }
        let a = &self.analysis;
        positive("analysis.workers", a.workers as u64)?;
        if a.workers > 256 {
            return Err(Invalid::new("analysis.workers", "must be at most 256"));
        }
        positive("analysis.queue_size", a.queue_size as u64)?;
        if a.max_depth > 16 {
            return Err(Invalid::new("analysis.max_depth", "must be at most 16"));
        }
        nonzero("analysis.analyzer_budget", a.analyzer_budget)?;
        nonzero("analysis.attack_budget", a.attack_budget)?;
        if a.attack_budget < a.analyzer_budget {
            return Err(Invalid::new(
                "analysis.attack_budget",
                "must not be shorter than analysis.analyzer_budget",
            ));
        }
        if !(0..=19).contains(&a.nice) {
            return Err(Invalid::new("analysis.nice", "must be between 0 and 19"));
        }
        if a.busy_pause > Duration::from_secs(60) {
            return Err(Invalid::new("analysis.busy_pause", "must be at most 60s"));
        }
        if !(4096..=1 << 30).contains(&a.max_input) {
            return Err(Invalid::new(
                "analysis.max_input",
                "must be between 4KiB and 1GiB",
            ));
        }
        if a.max_downloads > 1000 {
            return Err(Invalid::new(
                "analysis.max_downloads",
                "must be at most 1000",
            ));
        }
        let mut tables = self.analyzer.clone();
        crate::analysis::registry::check_and_fill(&mut tables)
            .map_err(|(key, msg)| Invalid::new(key, msg))?;
        self.validate_downloads()?;
        crate::metrics::validate(&self.metrics)?;
        self.collect.validate()?;
        let o = &self.output;
        positive("output.queue_size", o.queue_size as u64)?;
        if o.queue_bytes < 1 << 20 {
            return Err(Invalid::new("output.queue_bytes", "must be at least 1MiB"));
        }
        if o.jsonl.enabled && o.jsonl.path.as_os_str().is_empty() {
            return Err(Invalid::new("output.jsonl.path", "must not be empty"));
        }
        crate::sink::legacy::validate(o)?;
        o.hpfeeds.validate()?;
        o.spool.validate()?;
        o.postgres.validate()?;
        o.nats.validate("output.nats")?;
        if o.jsonl.payload_max > 1 << 20 {
            return Err(Invalid::new(
                "output.jsonl.payload_max",
                "must be at most 1MiB",
            ));
        }
        if o.queue_bytes < 2 * l.read_limit {
            return Err(Invalid::new(
                "output.queue_bytes",
                "must be at least twice limits.read_limit, or large attacks could never be queued",
            ));
        }
        if o.transcripts.enabled && o.transcripts.quota_bytes < 2 * l.read_limit {
            return Err(Invalid::new(
                "output.transcripts.quota_bytes",
                "must be at least twice limits.read_limit (a transcript is base64, about 4/3 of the payload)",
            ));
        }
        if o.transcripts.enabled {
            if o.transcripts.dir.as_os_str().is_empty() {
                return Err(Invalid::new("output.transcripts.dir", "must not be empty"));
            }
            if o.transcripts.quota_bytes < 1 << 20 {
                return Err(Invalid::new(
                    "output.transcripts.quota_bytes",
                    "must be at least 1MiB",
                ));
            }
            positive("output.transcripts.quota_files", o.transcripts.quota_files)?;
            if o.transcripts.segment_bytes < 4096 {
                return Err(Invalid::new(
                    "output.transcripts.segment_bytes",
                    "must be at least 4KiB",
                ));
            }
            if o.transcripts.segment_bytes > o.transcripts.quota_bytes / 2 {
                return Err(Invalid::new(
                    "output.transcripts.segment_bytes",
                    "must be at most half of output.transcripts.quota_bytes (the quota removes whole files)",
                ));
            }
        }
        Ok(())
    }

    /// Check `[downloads]`.
    fn validate_downloads(&self) -> Result<(), Invalid> {
        let d = &self.downloads;
        if d.max_size == 0 || d.max_size > 1 << 30 {
            return Err(Invalid::new(
                "downloads.max_size",
                "must be between 1 byte and 1GiB (a download is held in memory)",
            ));
        }
        if d.timeout.is_zero() {
            return Err(Invalid::new("downloads.timeout", "must be longer than 0"));
        }
        if d.max_concurrent == 0 || d.max_concurrent > 256 {
            return Err(Invalid::new(
                "downloads.max_concurrent",
                "must be between 1 and 256",
            ));
        }
        for (i, net) in d.allow.iter().enumerate() {
            crate::analysis::download::Cidr::parse(net)
                .map_err(|m| Invalid::new(format!("downloads.allow[{i}]"), m))?;
        }
        if d.quota_bytes < d.max_size {
            return Err(Invalid::new(
                "downloads.quota_bytes",
                "must be at least downloads.max_size",
            ));
        }
        if d.quota_files == 0 {
            return Err(Invalid::new("downloads.quota_files", "must be at least 1"));
        }
        Ok(())
    }

    /// The effective configuration as TOML, defaults filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Resolve a path relative to the data directory.
    pub fn data_path(&self, p: &Path) -> PathBuf {
        self.sensor.data_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        let name = Path::new("t.toml");
        match parse(name, text) {
            Ok(c) => match PortPolicy::build(&c) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => e.locate(name, text),
            },
            Err(e) => e,
        }
    }

    #[test]
    fn embedded_default_equals_built_in_defaults() {
        let parsed = parse(Path::new("d"), EMBEDDED_DEFAULT).unwrap();
        let mut built = Config::default();
        built.fill_defaults();
        assert_eq!(parsed, built);
        PortPolicy::build(&parsed).unwrap();
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            parse(Path::new("e"), "").unwrap(),
            parse(Path::new("d"), EMBEDDED_DEFAULT).unwrap()
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse(Path::new("d"), EMBEDDED_DEFAULT).unwrap();
        let again = parse(Path::new("x"), &c.to_toml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn unknown_key_named_with_line() {
        let e = err("[limits]\nread_timeout = \"1s\"\nmax_sesions = 5\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("max_sesions"), "{e}");
    }

    #[test]
    fn wrong_type_named_with_key_and_line() {
        let e = err("[sensor]\nname = \"x\"\n\n[limits]\nread_limit = true\n");
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key, "limits.read_limit", "{e}");
    }

    #[test]
    fn impossible_values_refused() {
        let e = err("[limits]\nread_timeout = 0\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("limits.read_timeout", Some(2)),
            "{e}"
        );
        let e = err("[limits]\nmax_sessions = 10\nmax_sessions_per_source = 20\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("limits.max_sessions_per_source", Some(3))
        );
        let e = err("[network]\nbind_addresses = [\"10.0.0.1\", \"10.0.0.1\"]\n");
        assert_eq!(e.key, "network.bind_addresses[1]");
        let e = err("[network]\nbind_addresses = [\"not-an-ip\"]\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[[ports.rule]]\nprotocol = \"tcp\"\nports = [0]\nmode = \"ignore\"\n");
        assert_eq!(e.line, Some(3), "{e}");
        let e = err("[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"90-80\"]\nmode = \"ignore\"\n");
        assert!(e.message.contains("ends before it starts"), "{e}");
        for bad in ["-1", "20"] {
            let e = err(&format!("[process]\nnice = {bad}\n"));
            assert_eq!((e.key.as_str(), e.line), ("process.nice", Some(2)), "{e}");
        }
    }

    #[test]
    fn monitor_kinds_and_sniff_options() {
        let c = parse(Path::new("t"), "").unwrap();
        assert_eq!(c.monitor.kind, MonitorKind::Auto);
        let c = parse(
            Path::new("t"),
            "[monitor]\nkind = \"sniff\"\n[monitor.sniff]\ninterfaces = [\"eth0\"]\npromiscuous = true\naddresses = [\"192.0.2.1\", \"2001:db8::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.monitor.kind, MonitorKind::Sniff);
        assert_eq!(c.monitor.sniff.interfaces, vec!["eth0".to_string()]);
        assert!(c.monitor.sniff.promiscuous);
        assert_eq!(c.monitor.sniff.addresses.len(), 2);
        let e = err("[monitor]\nkind = \"pcap\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[monitor.sniff]\nfilter = \"tcp[13]\"\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("monitor.sniff.filter", Some(2)),
            "{e}"
        );
        let e = err("[monitor.sniff]\ninterfaces = [\"eth0\", \"eth0\"]\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("monitor.sniff.interfaces[1]", Some(2)),
            "{e}"
        );
        let e = err("[monitor.sniff]\ninterfaces = [\"a-very-long-interface-name\"]\n");
        assert!(e.message.contains("not an interface name"), "{e}");
        let e = err("[monitor.sniff]\naddresses = [\"10.0.0.1\", \"10.0.0.1\"]\n");
        assert_eq!(e.key, "monitor.sniff.addresses[1]", "{e}");
    }

    #[test]
    fn nfqueue_options() {
        let c = parse(
            Path::new("t"),
            "[monitor]\nkind = \"nfqueue\"\n[monitor.nfqueue]\nqueue = 7\nqueue_maxlen = 100\nrcvbuf = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(c.monitor.kind, MonitorKind::Nfqueue);
        assert_eq!(
            c.monitor.nfqueue,
            NfqueueConfig {
                queue: 7,
                queue_maxlen: 100,
                rcvbuf: 1 << 20
            }
        );
        let e = err("[monitor.nfqueue]\nqueue = 70000\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[monitor.nfqueue]\nqueue_maxlen = 0\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("monitor.nfqueue.queue_maxlen", Some(2)),
            "{e}"
        );
        let e = err("[monitor.nfqueue]\nrcvbuf = 1000\n");
        assert_eq!(e.key, "monitor.nfqueue.rcvbuf", "{e}");
        let e = err("[monitor.nfqueue]\nfail_open = true\n");
        assert!(e.to_string().contains("fail_open"), "{e}");
    }

    #[test]
    fn tproxy_options() {
        let c = parse(Path::new("t"), "[monitor]\nkind = \"tproxy\"\n").unwrap();
        assert_eq!(c.monitor.kind, MonitorKind::Tproxy);
        assert_eq!(c.monitor.tproxy, TproxyConfig { port: 65499 });
        let c = parse(
            Path::new("t"),
            "[monitor]\nkind = \"tproxy\"\n[monitor.tproxy]\nport = 9000\n",
        )
        .unwrap();
        assert_eq!(c.monitor.tproxy.port, 9000);
        let e = err("[monitor.tproxy]\nport = 0\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("monitor.tproxy.port", Some(2)),
            "{e}"
        );
        let e = err("[monitor.tproxy]\nport = 70000\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[monitor.tproxy]\naddress = \"0.0.0.0\"\n");
        assert!(e.to_string().contains("address"), "{e}");
    }

    #[test]
    fn log_filters() {
        assert!(check_log_filter("info").is_ok());
        assert!(check_log_filter("warn,honeytrap::server=debug").is_ok());
        assert!(check_log_filter("verbose").is_err());
        let e = err("[process]\nlog_level = \"verbose\"\n");
        assert_eq!((e.key.as_str(), e.line), ("process.log_level", Some(2)));
    }

    #[test]
    fn budgets_must_hold_one_large_attack() {
        let e = err("[limits]\nread_limit = \"200MiB\"\n");
        assert_eq!(e.key, "output.queue_bytes");
        let e = err("[limits]\nread_limit = \"100MiB\"\n[output]\nqueue_bytes = \"1GiB\"\n[output.transcripts]\nquota_bytes = \"100MiB\"\n");
        assert_eq!(e.key, "output.transcripts.quota_bytes");
    }

    #[test]
    fn protocols_are_case_insensitive() {
        let c = parse(
            Path::new("t"),
            "[[ports.rule]]\nprotocol = [\"TCP\", \"Udp\"]\nports = [1]\nmode = \"ignore\"\n",
        )
        .unwrap();
        assert_eq!(
            c.ports.rules[0].protocol.list(),
            vec![crate::proto::Protocol::Tcp, crate::proto::Protocol::Udp]
        );
        let e = err("[[ports.rule]]\nprotocol = \"sctp\"\nports = [1]\nmode = \"ignore\"\n");
        assert!(e.message.contains("unknown protocol `sctp`"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn overlapping_rules_refused() {
        let text = "[[ports.rule]]\nprotocol = \"tcp\"\nports = [\"20-30\"]\nmode = \"ignore\"\n\n[[ports.rule]]\nprotocol = [\"udp\", \"tcp\"]\nports = [25]\nmode = \"normal\"\n";
        let e = err(text);
        assert_eq!(e.key, "ports.rule[1].ports[0]", "{e}");
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("ports.rule[0]"), "{e}");
    }
}
