//! The `honeytrap` command: parses the command line, loads the configuration and
//! hands over to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad config.
//! A command line that starts with an option other than `--help`/`--version` is
//! the original honeytrap's (`honeytrap -D -C FILE ...`), handled by [`cli`].

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser)]
#[command(
    name = "honeytrap",
    version,
    about = "A catch-all honeypot: catches attacks on any TCP or UDP port"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the honeypot in the foreground (logs go to standard error).
    Run {
        /// Configuration file (TOML, or an original honeytrap.conf); without it the embedded default is used.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Log filter, overriding process.log_level (error, warn, info, debug, trace).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Validate a configuration and print it with every default filled in.
    CheckConfig {
        /// Configuration file (TOML, or an original honeytrap.conf); without it the embedded default is checked.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Print the native TOML equivalent of an original honeytrap.conf (docs/migration.md).
    ConvertConfig {
        /// The original configuration file.
        file: PathBuf,
    },
    /// List the analyzers: name, stage, whether the configuration enables them.
    Analyzers {
        /// Configuration file (TOML, or an original honeytrap.conf); without it the embedded default is used.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Read the NATS stream of a fleet into PostgreSQL ([collect], docs/deployment.md#fleet),
    /// until SIGTERM or SIGINT.
    Collect {
        /// Configuration file with a [collect] section.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Log filter, overriding process.log_level (error, warn, info, debug, trace).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Show, apply or remove the firewall rules of the chosen monitor (as root).
    Firewall {
        #[command(subcommand)]
        action: FirewallAction,
        /// Configuration file (TOML, or an original honeytrap.conf); without it the embedded default is used.
        #[arg(short = 'c', long = "config", global = true)]
        config: Option<PathBuf>,
        /// Monitor to run, overriding monitor.kind.
        #[arg(long, global = true, value_parser = ["auto", "listen", "sniff", "nfqueue", "tproxy"])]
        monitor: Option<String>,
        /// NFQUEUE queue number, overriding monitor.nfqueue.queue.
        #[arg(long, global = true)]
        queue: Option<u16>,
    },
    /// The PostgreSQL database of [output.postgres] (docs/deployment.md).
    Db {
        #[command(subcommand)]
        action: DbAction,
        /// Configuration file (TOML, or an original honeytrap.conf); without it the embedded default is used.
        #[arg(short = 'c', long = "config", global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum DbAction {
    /// Create or upgrade the schema (the migrations this honeytrap knows) and exit.
    Migrate,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum FirewallAction {
    /// Print the rules that would be applied and those installed now.
    Show,
    /// Add honeytrap's chain and jump, and for tproxy the policy routing (a stale
    /// set is replaced), and exit.
    Apply,
    /// Remove everything honeytrap may have added (both monitors' chains, jumps and
    /// policy routing).
    Remove,
}

/// Settings the command line overrides without editing the configuration file.
#[derive(clap::Args, Default)]
struct Overrides {
    /// Monitor to run, overriding monitor.kind.
    #[arg(long, value_parser = ["auto", "listen", "sniff", "nfqueue", "tproxy"])]
    monitor: Option<String>,
    /// NFQUEUE queue number, overriding monitor.nfqueue.queue.
    #[arg(long)]
    queue: Option<u16>,
}

/// Load the configuration and apply the command-line overrides.
fn load(
    config: Option<&std::path::Path>,
    o: &Overrides,
) -> Result<honeytrap::config::Loaded, honeytrap::config::ConfigError> {
    let mut loaded = honeytrap::config::load(config)?;
    if let Some(kind) = &o.monitor {
        loaded.config.monitor.kind = toml::Value::String(kind.clone())
            .try_into()
            .expect("clap checked the monitor name");
    }
    if let Some(q) = o.queue {
        loaded.config.monitor.nfqueue.queue = q;
    }
    loaded.overridden = o.monitor.is_some() || o.queue.is_some();
    Ok(loaded)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if cli::legacy::is_legacy(&args) {
        return cli::run_legacy(&args);
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Collect { config, log_level } => collect(config.as_deref(), log_level),
        Command::Db {
            action: DbAction::Migrate,
            config,
        } => match load(config.as_deref(), &Overrides::default()) {
            Ok(loaded) => match honeytrap::db::migrate_command(&loaded.config.output.postgres) {
                Ok(v) if v.is_empty() => {
                    println!("the database schema is up to date");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    println!("schema migrations applied: {v:?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("honeytrap: db migrate: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("honeytrap: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Firewall {
            action,
            config,
            monitor,
            queue,
        } => {
            let overrides = Overrides { monitor, queue };
            match load(config.as_deref(), &overrides) {
                Ok(loaded) => firewall(action, &loaded.config),
                Err(e) => {
                    eprintln!("honeytrap: invalid configuration: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::ConvertConfig { file } => match honeytrap::config::legacy::read_path(&file) {
            Ok(l) => {
                for w in &l.extras.warnings {
                    eprintln!("honeytrap: warning: {w}");
                }
                print!("{}", honeytrap::config::legacy::convert::to_toml(&l));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("honeytrap: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Analyzers { config } => match load(config.as_deref(), &Overrides::default()) {
            Ok(loaded) => {
                print!("{}", analyzers(&loaded.config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("honeytrap: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::CheckConfig { config, overrides } => match load(config.as_deref(), &overrides) {
            Ok(loaded) => {
                legacy_warnings(&loaded, |w| eprintln!("honeytrap: warning: {w}"));
                print!("{}", loaded.config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("honeytrap: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            overrides,
            log_level,
        } => {
            let loaded = match load(config.as_deref(), &overrides) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("honeytrap: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let fixed = log_level.is_some();
            let filter = log_level.unwrap_or_else(|| loaded.config.process.log_level.clone());
            if let Err(e) = honeytrap::config::check_log_filter(&filter) {
                eprintln!("honeytrap: invalid --log-level `{filter}`: {e}");
                return ExitCode::from(2);
            }
            let (layer, handle) = reload::Layer::new(EnvFilter::new(&filter));
            tracing_subscriber::registry()
                .with(layer)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(use_color()),
                )
                .init();
            legacy_warnings(&loaded, |w| tracing::warn!("{w}"));
            let monitor = honeytrap::monitor::build(&loaded.config).0.name();
            if let Some(w) =
                honeytrap::privileges::low_port_warning(&loaded.config, &loaded.policy, monitor)
            {
                tracing::warn!("{w}");
            }
            let control: Option<honeytrap::LogControl> = (!fixed).then(|| {
                Box::new(move |f: &str| {
                    honeytrap::config::check_log_filter(f)?;
                    handle.reload(EnvFilter::new(f)).map_err(|e| e.to_string())
                }) as honeytrap::LogControl
            });
            match honeytrap::run(loaded, control) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The warnings of an original honeytrap.conf (load() logs them only on reload:
/// at start-up there is no logger yet).
fn legacy_warnings(loaded: &honeytrap::config::Loaded, mut emit: impl FnMut(&str)) {
    for w in loaded.legacy.iter().flat_map(|x| x.warnings.iter()) {
        emit(&w.to_string());
    }
}

/// `honeytrap firewall show|apply|remove`.
/// The `analyzers` listing: one line per analyzer.
fn analyzers(config: &honeytrap::config::Config) -> String {
    let mut out = format!("{:<14} {:<13} {:<8} about\n", "name", "stage", "enabled");
    for r in honeytrap::analysis::registry::all() {
        let enabled = config.analysis.enabled
            && config
                .analyzer
                .get(r.name)
                .and_then(|t| t.get("enabled"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
        out += &format!(
            "{:<14} {:<13} {:<8} {}\n",
            r.name,
            r.stage.as_str(),
            if enabled { "yes" } else { "no" },
            r.about
        );
    }
    out
}

fn firewall(action: FirewallAction, config: &honeytrap::config::Config) -> ExitCode {
    use honeytrap::firewall as fw;
    let monitor = honeytrap::monitor::build(config).0.name();
    let fail = |e: anyhow::Error| {
        eprintln!("honeytrap: {e:#}");
        ExitCode::FAILURE
    };
    let ex = fw::Exclusions::detect(config);
    match action {
        FirewallAction::Show => {
            let backend = fw::detect().ok();
            let lines = fw::rules_for(monitor, config, &ex, backend.as_ref());
            if lines.is_empty() {
                println!("# the {monitor} monitor needs no firewall rules");
            } else {
                println!("# rules for the {monitor} monitor (what `firewall apply` and firewall.mode = \"auto\" add):");
                for l in lines {
                    println!("{l}");
                }
            }
            match &backend {
                None => println!("# installed: unknown (iptables cannot be run)"),
                Some(b) => {
                    for i in fw::installed(b) {
                        match i.listing {
                            None => println!("# installed, {}: none", i.what),
                            Some(l) => {
                                println!("# installed, {}:", i.what);
                                print!("{l}");
                            }
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        FirewallAction::Apply => {
            let Some(plan) = fw::Plan::for_monitor(monitor, config) else {
                return fail(anyhow::anyhow!(
                    "the {monitor} monitor needs no firewall rules; use --monitor nfqueue or --monitor tproxy"
                ));
            };
            match fw::detect().and_then(|b| fw::apply(&b, &plan, &ex)) {
                Ok(()) => {
                    println!(
                        "firewall rules applied for the {monitor} monitor (chain {} in {})",
                        fw::CHAIN,
                        plan.table().name()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        FirewallAction::Remove => match fw::detect().and_then(|b| fw::remove(&b)) {
            Ok(()) => {
                println!(
                    "firewall rules removed (chain {} in filter and mangle, policy routing)",
                    fw::CHAIN
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// Colours only on a terminal, and never when NO_COLOR is set.
fn use_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// `honeytrap collect`: logs to standard error; the logic is in `honeytrap::collect`.
fn collect(config: Option<&std::path::Path>, log_level: Option<String>) -> ExitCode {
    let loaded = match load(config, &Overrides::default()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("honeytrap: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = loaded.config.collect.check_runnable() {
        eprintln!(
            "honeytrap: invalid configuration: key `{}`: {}",
            e.key, e.message
        );
        return ExitCode::from(2);
    }
    let filter = log_level.unwrap_or_else(|| loaded.config.process.log_level.clone());
    if let Err(e) = honeytrap::config::check_log_filter(&filter) {
        eprintln!("honeytrap: invalid --log-level `{filter}`: {e}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&filter))
        .with_writer(std::io::stderr)
        .with_ansi(use_color())
        .init();
    match honeytrap::collect::run(&loaded.config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
