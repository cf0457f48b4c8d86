//! The original's `logAttacker` plugin: one line per (real) attack,
//! `[<date> <time>:<usec> GMT] <proto> <rip>:<rport> -> <lip>:<lport> <md5> <sha512> (<n> bytes)`,
//! byte for byte the original's `fprintf` layout (microseconds not zero-padded).

use super::proto_name;
use crate::attack::Attack;
use crate::config::Config;
use crate::event::Rendered;
use crate::sink::open_append;
use crate::sink::Sink;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

pub struct AttackerLogSink {
    out: BufWriter<File>,
    path: PathBuf,
}

impl AttackerLogSink {
    /// Open (append to) `output.attacker_log.path`.
    pub fn open(config: &Config) -> anyhow::Result<AttackerLogSink> {
        let path = config.data_path(&config.output.attacker_log.path);
        Ok(AttackerLogSink {
            out: BufWriter::new(open_append(&path)?),
            path,
        })
    }
}

impl Sink for AttackerLogSink {
    fn name(&self) -> &'static str {
        "attacker_log"
    }

    fn write(&mut self, attack: &Attack, _: &Rendered) -> anyhow::Result<()> {
        // The original logged real attacks only.
        if attack.analysis.is_virtual {
            return Ok(());
        }
        self.out.write_all(line(attack).as_bytes())?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        self.out = BufWriter::new(open_append(&self.path)?);
        Ok(())
    }
}

/// An address as `ip:port` (IPv6 in brackets; the original was IPv4 only).
fn addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// The line of `a` (with its `\n`). The time is the attack's end, in UTC.
pub fn line(a: &Attack) -> String {
    format!(
        "[{}:{} GMT] {} {} -> {} {} {} ({} bytes)\n",
        a.end.format("%Y-%m-%d %H:%M:%S"),
        a.end.timestamp_subsec_micros(),
        proto_name(a.protocol),
        addr(a.remote),
        addr(a.local),
        a.payload_hashes.md5,
        a.payload_hashes.sha512,
        a.transcript.bytes_in,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::attack;
    use super::*;
    use crate::attack::{Hashes, Mode};

    #[test]
    fn the_original_line() {
        let a = attack(b"hello", Mode::Normal);
        let h = Hashes::of(b"hello");
        assert_eq!(
            line(&a),
            format!(
                "[2026-11-27 10:20:32:123 GMT] tcp 192.0.2.7:40000 -> 198.51.100.1:8080 {} {} (5 bytes)\n",
                h.md5, h.sha512
            )
        );
        let mut b = a.clone();
        b.session.remote = "[2001:db8::7]:1".parse().unwrap();
        b.session.protocol = crate::proto::Protocol::Udp;
        assert!(line(&b).contains("] udp [2001:db8::7]:1 -> 198.51.100.1:8080 "));
    }

    #[test]
    fn virtual_attacks_are_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sensor.data_dir = dir.path().to_path_buf();
        let mut sink = AttackerLogSink::open(&config).unwrap();
        let mut v = attack(b"decoded", Mode::Normal);
        v.analysis.is_virtual = true;
        sink.write(&v, &Rendered::default()).unwrap();
        sink.write(&attack(b"real", Mode::Normal), &Rendered::default())
            .unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("attacker.log")).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with("(4 bytes)\n"), "{text}");
    }
}
