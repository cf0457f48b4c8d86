//! The original honeytrap's command line (`honeytrap -D -C FILE -t 5 ...`), parsed
//! the way its getopt did: single-letter options that may be bundled (`-Dp`) and
//! take their argument attached or separate (`-t5`, `-t 5`), non-options anywhere
//! (they form the trailing filter expression), `--` ends the options. Our own
//! additions are the long options `--monitor KIND` and `--queue N`.
//! docs/migration.md has the table of what each option maps to.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the original command line asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-D`: stay in the foreground (the default is to daemonize).
    pub foreground: bool,
    /// `-C file`: the configuration file.
    pub config: Option<PathBuf>,
    /// `-P file`: the pid file.
    pub pidfile: Option<PathBuf>,
    /// `-L file`: the main log file.
    pub logfile: Option<PathBuf>,
    /// `-t level`: the original's log level, 0 (off) to 6 (debug).
    pub level: Option<u8>,
    /// `-u user`, `-g group`.
    pub user: Option<String>,
    pub group: Option<String>,
    /// `-l seconds`: a dynamic server closes after this long without a connection.
    pub conn_timeout: Option<u64>,
    /// `-r seconds`: silence after which normal mode answers.
    pub read_timeout: Option<u64>,
    /// `-i interface` (sniff monitor).
    pub interface: Option<String>,
    /// `-a address` (sniff monitor: this host's address).
    pub address: Option<String>,
    /// `-p`: promiscuous mode (sniff monitor).
    pub promisc: bool,
    /// `--monitor KIND` (ours): the monitor instead of NFQUEUE.
    pub monitor: Option<String>,
    /// `--queue N` (ours): the NFQUEUE queue instead of 0.
    pub queue: Option<u16>,
    /// The trailing filter expression (pcap syntax; our subset: `monitor::filter`),
    /// the words joined with spaces as libpcap's `copy_argv` did.
    pub filter: Vec<String>,
    /// `-m`: accepted and ignored, as the original did.
    pub mirror_flag: bool,
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Run(Box<Args>),
    Help,
    Version,
}

/// The monitors `--monitor` accepts.
pub const MONITORS: &[&str] = &["auto", "listen", "sniff", "nfqueue", "tproxy"];

/// True when the command line is the original's: the first argument is an option
/// and not one of the native command's own (`--help`, `-V`, `--version`).
pub fn is_legacy(args: &[OsString]) -> bool {
    match args.get(1).and_then(|a| a.to_str()) {
        Some(a) => a.starts_with('-') && !matches!(a, "--help" | "--version" | "-V" | "-"),
        None => false,
    }
}

/// Options that take an argument (the original's OPTSTRING `vh?pDmL:P:C:i:a:l:r:u:g:t:`).
fn takes_value(c: char) -> bool {
    matches!(c, 'L' | 'P' | 'C' | 'i' | 'a' | 'l' | 'r' | 'u' | 'g' | 't')
}

/// Parse the arguments after the program name. `-h` and `-v` win wherever they
/// stand, as in the original (it scanned for them first).
pub fn parse(args: &[String]) -> Result<Action, String> {
    let mut a = Args::default();
    let mut help = false;
    let mut version = false;
    let mut i = 0;
    let mut options_done = false;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if options_done || !arg.starts_with('-') || arg == "-" {
            a.filter.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match name {
                "help" => help = true,
                "version" => version = true,
                "monitor" | "queue" => {
                    let v = match inline {
                        Some(v) => v,
                        None => {
                            let v = args.get(i).cloned();
                            i += 1;
                            v.ok_or_else(|| format!("option --{name} needs an argument"))?
                        }
                    };
                    if name == "monitor" {
                        if !MONITORS.contains(&v.as_str()) {
                            return Err(format!(
                                "--monitor `{v}`: must be one of {}",
                                MONITORS.join(", ")
                            ));
                        }
                        a.monitor = Some(v);
                    } else {
                        a.queue =
                            Some(v.parse().map_err(|_| {
                                format!("--queue `{v}`: not a queue number (0-65535)")
                            })?);
                    }
                }
                _ => return Err(format!("unknown option --{name}")),
            }
            continue;
        }
        // A bundle of single-letter options.
        let letters: Vec<char> = arg[1..].chars().collect();
        let mut k = 0;
        while k < letters.len() {
            let c = letters[k];
            k += 1;
            if takes_value(c) {
                let value = if k < letters.len() {
                    let v: String = letters[k..].iter().collect();
                    k = letters.len();
                    v
                } else {
                    let v = args.get(i).cloned();
                    i += 1;
                    v.ok_or_else(|| format!("option -{c} needs an argument"))?
                };
                set_value(&mut a, c, value)?;
            } else {
                match c {
                    'D' => a.foreground = true,
                    'p' => a.promisc = true,
                    'm' => a.mirror_flag = true,
                    'h' | '?' => help = true,
                    'v' => version = true,
                    _ => return Err(format!("unknown option -{c}")),
                }
            }
        }
    }
    Ok(if help {
        Action::Help
    } else if version {
        Action::Version
    } else {
        Action::Run(Box::new(a))
    })
}

/// Store the argument of option `c`, checked as the original checked it.
fn set_value(a: &mut Args, c: char, v: String) -> Result<(), String> {
    match c {
        'C' => a.config = Some(v.into()),
        'P' => a.pidfile = Some(v.into()),
        'L' => a.logfile = Some(v.into()),
        'u' => a.user = Some(v),
        'g' => a.group = Some(v),
        'i' => a.interface = Some(v),
        'a' => a.address = Some(v),
        't' => match v.trim().parse::<u8>() {
            Ok(n) if n <= 6 => a.level = Some(n),
            _ => {
                return Err(format!(
                    "-t `{v}`: log level must be a value between 0 and 6"
                ))
            }
        },
        'l' => a.conn_timeout = Some(seconds(&v, "listen timeout", 'l')?),
        'r' => a.read_timeout = Some(seconds(&v, "read timeout", 'r')?),
        _ => unreachable!("takes_value lists the options handled here"),
    }
    Ok(())
}

/// `-l` and `-r`: seconds, 1 to 255 (the original allowed 0-255; 0 would mean
/// "never wait", which the native configuration refuses).
fn seconds(v: &str, what: &str, c: char) -> Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n),
        _ => Err(format!(
            "-{c} `{v}`: {what} must be a number of seconds between 1 and 255"
        )),
    }
}

/// The tracing filter for the original's level `n`: 0 off, 1 error, 2 warning,
/// 3 notice and 4 info (both our `info`), 5 noisy (`debug`), 6 debug (`trace`).
/// Other crates stay at `warn` above level 2, so the file holds honeytrap's lines.
pub fn level_filter(n: u8) -> String {
    match n {
        0 => "off".into(),
        1 => "error".into(),
        2 => "warn".into(),
        3 | 4 => "warn,honeytrap=info".into(),
        5 => "warn,honeytrap=debug".into(),
        _ => "warn,honeytrap=trace".into(),
    }
}

/// The usage text of `-h` (the original's options, then ours).
pub fn usage(prog: &str) -> String {
    format!(
        "Usage: {prog} [ -Dpmv ] [ -i interface ] [ -a ip address ] [ -l seconds ]\n\
         \t\t[ -r seconds ] [ -t log level ] [ -u user ] [ -g group ]\n\
         \t\t[ -C configfile ] [ -L logfile ] [ -P pidfile ] [ --monitor kind ] [ expression ]\n\
         \t-a:\tip address or hostname of this host (sniff monitor)\n\
         \t-g:\tgroup\n\
         \t-h:\tthis output\n\
         \t-i:\tinterface (sniff monitor), default is 'any'\n\
         \t-l:\tlisten timeout (sec), default is 120\n\
         \t-m:\tignored (mirror mode is set per port in the configuration)\n\
         \t-p:\tenable promiscuous mode (sniff monitor)\n\
         \t-r:\tread timeout (sec), default is 1\n\
         \t-t:\tlog level (0-6), default is 3 (LOG_NOTICE)\n\
         \t-u:\tuser\n\
         \t-v:\tprint version number\n\
         \t-C:\tconfiguration file, default is /etc/honeytrap/honeytrap.conf\n\
         \t-D:\tdon't daemonize\n\
         \t-L:\tlogfile, default is the configuration's logfile, else /var/log/honeytrap.log\n\
         \t-P:\tpid file, default is the configuration's pidfile, else /var/run/honeytrap.pid\n\
         \t--monitor:\tauto, listen, sniff, nfqueue or tproxy; default is nfqueue (queue 0)\n\
         \t--queue:\tNFQUEUE queue number, default is 0\n\
         \texpression:\tfilter for the sniff monitor, a subset of pcap syntax (host, net, port,\n\
         \t\t\tportrange, tcp, udp, icmp, icmp6, ip, ip6, and, or, not); see docs/migration.md\n\
         The native command line: {prog} --help\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Args {
        match parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
            Ok(Action::Run(a)) => *a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
            Err(e) => e,
            other => panic!("{args:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn the_tpot_command_line() {
        let a = run(&[
            "-D",
            "-C",
            "/opt/honeytrap/etc/honeytrap/honeytrap.conf",
            "-P",
            "/tmp/honeytrap/honeytrap.pid",
            "-t",
            "5",
            "-u",
            "honeytrap",
            "-g",
            "honeytrap",
        ]);
        assert_eq!(
            a,
            Args {
                foreground: true,
                config: Some("/opt/honeytrap/etc/honeytrap/honeytrap.conf".into()),
                pidfile: Some("/tmp/honeytrap/honeytrap.pid".into()),
                level: Some(5),
                user: Some("honeytrap".into()),
                group: Some("honeytrap".into()),
                ..Args::default()
            }
        );
    }

    #[test]
    fn getopt_forms() {
        let a = run(&[
            "-Dpt6", "-l30", "-r", "2", "-L/x.log", "-ieth0", "-a", "10.0.0.1",
        ]);
        assert!(a.foreground && a.promisc);
        assert_eq!(a.level, Some(6));
        assert_eq!(a.conn_timeout, Some(30));
        assert_eq!(a.read_timeout, Some(2));
        assert_eq!(a.logfile, Some("/x.log".into()));
        assert_eq!(a.interface.as_deref(), Some("eth0"));
        assert_eq!(a.address.as_deref(), Some("10.0.0.1"));
        // Non-options anywhere form the expression; `--` ends the options.
        let a = run(&["-D", "tcp", "-t", "1", "port", "--", "-x"]);
        assert_eq!(a.filter, ["tcp", "port", "-x"]);
        assert_eq!(a.level, Some(1));
        assert!(run(&["-m"]).mirror_flag);
    }

    #[test]
    fn our_long_options() {
        let a = run(&["-D", "--monitor", "sniff", "--queue=3"]);
        assert_eq!(a.monitor.as_deref(), Some("sniff"));
        assert_eq!(a.queue, Some(3));
        assert_eq!(
            run(&["--monitor=listen"]).monitor.as_deref(),
            Some("listen")
        );
        assert!(err(&["--monitor", "pcap"]).contains("must be one of"));
        assert!(err(&["--monitor"]).contains("needs an argument"));
        assert!(err(&["--queue", "x"]).contains("queue number"));
        assert!(err(&["--frobnicate"]).contains("unknown option --frobnicate"));
    }

    #[test]
    fn help_and_version_win() {
        let p = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["-D", "-h"]), Ok(Action::Help));
        assert_eq!(p(&["-v", "-D"]), Ok(Action::Version));
        assert_eq!(p(&["-Dv"]), Ok(Action::Version));
        assert_eq!(p(&["-?"]), Ok(Action::Help));
    }

    #[test]
    fn values_are_checked() {
        assert!(err(&["-t", "7"]).contains("between 0 and 6"));
        assert!(err(&["-t", "x"]).contains("between 0 and 6"));
        assert!(err(&["-l", "0"]).contains("between 1 and 255"));
        assert!(err(&["-r", "256"]).contains("between 1 and 255"));
        assert!(err(&["-C"]).contains("-C needs an argument"));
        assert!(err(&["-x"]).contains("unknown option -x"));
        assert_eq!(run(&["-t", "0"]).level, Some(0));
    }

    #[test]
    fn detection() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_legacy(&v(&["honeytrap", "-D"])));
        assert!(is_legacy(&v(&["honeytrap", "-h"])));
        assert!(is_legacy(&v(&["honeytrap", "-v"])));
        assert!(is_legacy(&v(&["honeytrap", "--monitor", "listen", "-D"])));
        assert!(!is_legacy(&v(&["honeytrap", "--help"])));
        assert!(!is_legacy(&v(&["honeytrap", "--version"])));
        assert!(!is_legacy(&v(&["honeytrap", "-V"])));
        assert!(!is_legacy(&v(&["honeytrap", "run", "-c", "x"])));
        assert!(!is_legacy(&v(&["honeytrap"])));
    }

    #[test]
    fn levels() {
        assert_eq!(level_filter(0), "off");
        assert_eq!(level_filter(3), level_filter(4));
        assert_eq!(level_filter(5), "warn,honeytrap=debug");
        for n in 0..=6 {
            honeytrap::config::check_log_filter(&level_filter(n)).unwrap();
        }
    }
}
