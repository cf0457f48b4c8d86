//! The `honeytrap` command: parses the command line, loads the configuration and
//! hands over to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad config.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
        /// Configuration file (TOML); without it the embedded default is used.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Log filter, overriding process.log_level (error, warn, info, debug, trace).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Validate a configuration and print it with every default filled in.
    CheckConfig {
        /// Configuration file (TOML); without it the embedded default is checked.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match honeytrap::config::load(config.as_deref()) {
            Ok(loaded) => {
                print!("{}", loaded.config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("honeytrap: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, log_level } => {
            let loaded = match honeytrap::config::load(config.as_deref()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("honeytrap: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let filter = log_level.unwrap_or_else(|| loaded.config.process.log_level.clone());
            let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("honeytrap: invalid --log-level `{filter}`: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            match honeytrap::run(loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
