//! The hpfeeds output: every attack's JSON event published to one channel of an
//! hpfeeds broker (the honeynet community's sharing protocol), through the durable
//! spool ([`super::spool`]), so a broker that is down delays events instead of
//! losing them.
//!
//! The protocol client is written here; it is small. Every message is a frame
//! `[u32 length incl. this 5-byte header][u8 opcode][body]` (big-endian). The broker
//! opens with `OP_INFO` (its name as a u8-length string, then a nonce); the client
//! answers `OP_AUTH` (ident as a u8-length string, then sha1(nonce ‖ secret)) and then
//! sends `OP_PUBLISH` frames (ident, channel, both u8-length strings, then the
//! payload). The broker acknowledges nothing: a refusal is an `OP_ERROR` frame
//! followed by the close of the connection, which is why the client looks for one
//! after authenticating and after each batch, and checks the connection is still
//! open before writing a batch (a broker that restarted closed it). Frames are
//! bounded ([`MAX_FRAME`], the reference broker's limit), every network call has a
//! timeout, and a failed batch is retried whole by the spool with backoff: events
//! may be published twice (each carries its attack id), never silently lost while
//! the broker is known to be down.

use super::spool::{Delivery, Member, Output, Spooled};
use crate::config::{units, Config, Invalid, PayloadEncoding};
use crate::limit_warn;
use crate::stats::{Stats, Throttle};
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::io::{BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const OP_ERROR: u8 = 0;
pub const OP_INFO: u8 = 1;
pub const OP_AUTH: u8 = 2;
pub const OP_PUBLISH: u8 = 3;
pub const OP_SUBSCRIBE: u8 = 4;
/// Largest frame sent or accepted (header included): the reference broker's.
pub const MAX_FRAME: usize = 5 + (1 << 20);
/// Largest `OP_INFO` accepted: a 255-byte name and a nonce.
const MAX_INFO: usize = 5 + 256 + 20;
/// How long to wait for a refusal after `OP_AUTH` (the broker confirms nothing).
const AUTH_GRACE: Duration = Duration::from_millis(500);

/// `[output.hpfeeds]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpfeedsConfig {
    pub enabled: bool,
    /// The broker.
    pub host: String,
    pub port: u16,
    /// Identifier and secret of this sensor at the broker.
    pub ident: String,
    pub secret: String,
    /// Channel the events are published to.
    pub channel: String,
    /// Connect, read and write timeout.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Payload bytes in each event (`honeytrap.payload`), and their encoding.
    #[serde(with = "units::bytesize")]
    pub payload_max: u64,
    pub payload_encoding: PayloadEncoding,
}

impl Default for HpfeedsConfig {
    fn default() -> Self {
        HpfeedsConfig {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 10000,
            ident: String::new(),
            secret: String::new(),
            channel: "honeytrap.events".into(),
            timeout: Duration::from_secs(10),
            payload_max: 4096,
            payload_encoding: PayloadEncoding::Base64,
        }
    }
}

impl HpfeedsConfig {
    /// Checks for `Config::validate`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.enabled {
            return Ok(());
        }
        let key = |k: &str| format!("output.hpfeeds.{k}");
        if self.host.is_empty() {
            return Err(Invalid::new(key("host"), "must not be empty"));
        }
        if self.port == 0 {
            return Err(Invalid::new(key("port"), "must not be 0"));
        }
        for (k, v) in [("ident", &self.ident), ("channel", &self.channel)] {
            if v.is_empty() || v.len() > 255 {
                return Err(Invalid::new(key(k), "must be 1 to 255 bytes"));
            }
        }
        if self.secret.is_empty() {
            return Err(Invalid::new(key("secret"), "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(Invalid::new(key("timeout"), "must be longer than 0"));
        }
        if self.payload_max > 256 << 10 {
            return Err(Invalid::new(
                key("payload_max"),
                "must be at most 256KiB (an hpfeeds message is at most 1MiB)",
            ));
        }
        Ok(())
    }
}

/// The output as a spool member, in `<data_dir>/<spool.dir>/hpfeeds`.
pub fn output(config: &Config, stats: &Arc<Stats>) -> anyhow::Result<Output> {
    let c = &config.output.hpfeeds;
    let throttle = Arc::new(Throttle::default());
    Ok(Output {
        member: Member {
            name: "hpfeeds",
            dir: config.data_path(&config.output.spool.dir).join("hpfeeds"),
            delivery: Box::new(HpfeedsDelivery::new(
                c.clone(),
                Arc::clone(stats),
                Arc::clone(&throttle),
            )),
            throttle,
        },
        payload_max: c.payload_max,
        encoding: c.payload_encoding,
    })
}

/// Publishes spooled events; holds one connection, opened when needed.
pub struct HpfeedsDelivery {
    cfg: HpfeedsConfig,
    conn: Option<Connection>,
    stats: Arc<Stats>,
    throttle: Arc<Throttle>,
}

impl HpfeedsDelivery {
    pub fn new(cfg: HpfeedsConfig, stats: Arc<Stats>, throttle: Arc<Throttle>) -> Self {
        HpfeedsDelivery {
            cfg,
            conn: None,
            stats,
            throttle,
        }
    }

    /// Publish a batch on the open (or a new) connection.
    fn publish_all(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
        if let Some(c) = &mut self.conn {
            if let Err(e) = c.check() {
                tracing::info!(error = %format!("{e:#}"), "hpfeeds: connection lost; reconnecting");
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let c = Connection::open(&self.cfg)?;
            tracing::info!(broker = %c.broker, host = %self.cfg.host, port = self.cfg.port, "hpfeeds: connected");
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().expect("opened above");
        for s in batch {
            let frame = publish_frame(&self.cfg.ident, &self.cfg.channel, &s.body);
            if frame.len() > MAX_FRAME {
                // Sending it would only get the connection closed, forever.
                Stats::inc(&self.stats.output_errors);
                limit_warn!(self.throttle, "hpfeeds_too_big", id = %s.key, bytes = s.body.len(), "hpfeeds: event larger than an hpfeeds message; not published");
                continue;
            }
            conn.out.write_all(&frame)?;
        }
        conn.out.flush()?;
        conn.check()
    }
}

impl Delivery for HpfeedsDelivery {
    fn name(&self) -> &'static str {
        "hpfeeds"
    }

    fn deliver(&mut self, batch: &[Spooled]) -> anyhow::Result<()> {
        let started = Instant::now();
        let r = self.publish_all(batch);
        if r.is_err() {
            self.conn = None;
        } else {
            self.stats.delivered("hpfeeds", started.elapsed());
        }
        r
    }
}

/// An authenticated connection to a broker.
pub struct Connection {
    out: BufWriter<TcpStream>,
    /// The broker's name from `OP_INFO`.
    pub broker: String,
}

impl Connection {
    /// Connect, read `OP_INFO`, authenticate, and wait briefly for a refusal.
    pub fn open(cfg: &HpfeedsConfig) -> anyhow::Result<Connection> {
        let stream = connect(&cfg.host, cfg.port, cfg.timeout)?;
        stream.set_read_timeout(Some(cfg.timeout))?;
        stream.set_write_timeout(Some(cfg.timeout))?;
        let _ = stream.set_nodelay(true);
        let mut reader = &stream;
        let (op, body) =
            read_frame(&mut reader, MAX_INFO).context("reading the broker's OP_INFO")?;
        let (broker, nonce) = match op {
            OP_INFO => parse_info(&body)?,
            OP_ERROR => bail!("broker error: {}", String::from_utf8_lossy(&body)),
            _ => bail!("broker sent opcode {op} instead of OP_INFO"),
        };
        let mut out = BufWriter::with_capacity(64 << 10, stream);
        out.write_all(&auth_frame(&cfg.ident, &cfg.secret, nonce))?;
        out.flush()?;
        let mut c = Connection { out, broker };
        c.wait_for_refusal(AUTH_GRACE.min(cfg.timeout))
            .context("authentication refused")?;
        Ok(c)
    }

    /// Fails when the broker closed the connection or sent an error (it sends
    /// nothing else to a publisher).
    pub fn check(&mut self) -> anyhow::Result<()> {
        let s = self.out.get_ref();
        s.set_nonblocking(true)?;
        let mut b = [0u8; 1];
        let peeked = s.peek(&mut b);
        s.set_nonblocking(false)?;
        match peeked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e).context("connection to the broker"),
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => Err(self.read_error()),
        }
    }

    /// Wait up to `d` for the broker to refuse what was sent.
    fn wait_for_refusal(&mut self, d: Duration) -> anyhow::Result<()> {
        let s = self.out.get_ref();
        let old = s.read_timeout()?;
        s.set_read_timeout(Some(d))?;
        let mut b = [0u8; 1];
        let peeked = s.peek(&mut b);
        s.set_read_timeout(old)?;
        match peeked {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("connection to the broker"),
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => Err(self.read_error()),
        }
    }

    /// Read the frame the broker sent: normally `OP_ERROR`.
    fn read_error(&mut self) -> anyhow::Error {
        let mut r = self.out.get_ref();
        match read_frame(&mut r, MAX_FRAME) {
            Ok((OP_ERROR, body)) => {
                anyhow::anyhow!("broker error: {}", String::from_utf8_lossy(&body))
            }
            Ok((op, _)) => anyhow::anyhow!("unexpected opcode {op} from the broker"),
            Err(e) => e.context("reading from the broker"),
        }
    }
}

/// TCP connect to the first address of `host` that answers within `timeout`.
fn connect(host: &str, port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("connecting to {a}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{host}: no address")))
}

/// A frame: header and body.
pub fn frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.extend_from_slice(&((5 + body.len()) as u32).to_be_bytes());
    f.push(op);
    f.extend_from_slice(body);
    f
}

/// A string with a one-byte length (callers keep it under 256 bytes).
fn str8(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// `OP_AUTH`: ident and sha1(nonce ‖ secret).
pub fn auth_frame(ident: &str, secret: &str, nonce: &[u8]) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(secret.as_bytes());
    let mut body = Vec::new();
    str8(&mut body, ident.as_bytes());
    body.extend_from_slice(&h.finalize());
    frame(OP_AUTH, &body)
}

/// `OP_PUBLISH`: ident, channel, payload.
pub fn publish_frame(ident: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + ident.len() + channel.len() + payload.len());
    str8(&mut body, ident.as_bytes());
    str8(&mut body, channel.as_bytes());
    body.extend_from_slice(payload);
    frame(OP_PUBLISH, &body)
}

/// `OP_INFO`'s body: the broker's name and the nonce.
pub fn parse_info(body: &[u8]) -> anyhow::Result<(String, &[u8])> {
    let Some((&n, rest)) = body.split_first() else {
        bail!("empty OP_INFO");
    };
    let Some(name) = rest.get(..n as usize) else {
        bail!("OP_INFO cut short");
    };
    let nonce = &rest[n as usize..];
    if nonce.is_empty() {
        bail!("OP_INFO without a nonce");
    }
    Ok((String::from_utf8_lossy(name).into_owned(), nonce))
}

/// Read one frame of at most `max` bytes (header included).
pub fn read_frame(r: &mut impl Read, max: usize) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    let len = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
    if !(5..=max).contains(&len) {
        bail!("frame length {len} out of range (5 to {max})");
    }
    let mut body = vec![0; len - 5];
    r.read_exact(&mut body)?;
    Ok((h[4], body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn frames_are_laid_out_as_the_reference_implementation() {
        // hpfeeds.protocol.msgpublish('id', 'ch', b'x')
        assert_eq!(
            publish_frame("id", "ch", b"x"),
            b"\x00\x00\x00\x0c\x03\x02id\x02chx".to_vec()
        );
        // msgauth(b'\x01\x02\x03\x04', 'id', 's'): sha1(b'\x01\x02\x03\x04s')
        let a = auth_frame("id", "s", &[1, 2, 3, 4]);
        assert_eq!(&a[..8], b"\x00\x00\x00\x1c\x02\x02id");
        assert_eq!(
            hex::encode(&a[8..]),
            hex::encode(Sha1::digest(b"\x01\x02\x03\x04s"))
        );
        let (name, nonce) = parse_info(b"\x07hpfeeds\xaa\xbb\xcc\xdd").unwrap();
        assert_eq!(
            (name.as_str(), nonce),
            ("hpfeeds", &[0xaa, 0xbb, 0xcc, 0xdd][..])
        );
        assert!(parse_info(b"\x09short").is_err());
        assert!(parse_info(b"\x02ab").is_err(), "no nonce");
    }

    #[test]
    fn oversized_and_short_frames_are_refused() {
        let mut big = &b"\x7f\xff\xff\xff\x03"[..];
        assert!(read_frame(&mut big, MAX_FRAME).is_err());
        let mut tiny = &b"\x00\x00\x00\x02\x03"[..];
        assert!(read_frame(&mut tiny, MAX_FRAME).is_err());
        let mut cut = &b"\x00\x00\x00\x09\x00ab"[..];
        assert!(read_frame(&mut cut, MAX_FRAME).is_err());
    }

    /// A broker in a thread: sends OP_INFO, checks OP_AUTH, then hands every frame
    /// to `on`; `refuse` answers the auth with OP_ERROR and closes.
    fn broker(refuse: bool) -> (u16, std::sync::mpsc::Receiver<(u8, Vec<u8>)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&frame(OP_INFO, b"\x04test\x01\x02\x03\x04"))
                .unwrap();
            let (op, body) = read_frame(&mut s, MAX_FRAME).unwrap();
            assert_eq!(op, OP_AUTH);
            let expect = auth_frame("sensor", "secret", &[1, 2, 3, 4]);
            if refuse || body != expect[5..] {
                let _ = s.write_all(&frame(OP_ERROR, b"Authentication failed for sensor"));
                return;
            }
            while let Ok(f) = read_frame(&mut s, MAX_FRAME) {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        (port, rx)
    }

    fn config(port: u16) -> HpfeedsConfig {
        HpfeedsConfig {
            enabled: true,
            port,
            ident: "sensor".into(),
            secret: "secret".into(),
            channel: "events".into(),
            timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    fn spooled(n: u32) -> Spooled {
        Spooled {
            key: format!("id{n}"),
            kind: "attack".into(),
            body: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    #[test]
    fn a_batch_is_published_after_authentication() {
        let (port, rx) = broker(false);
        let stats = Arc::new(Stats::default());
        let mut d = HpfeedsDelivery::new(config(port), Arc::clone(&stats), Arc::default());
        d.deliver(&[spooled(1), spooled(2)]).unwrap();
        for n in 1..=2 {
            let (op, body) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(op, OP_PUBLISH);
            assert_eq!(
                body,
                publish_frame("sensor", "events", format!("{{\"n\":{n}}}").as_bytes())[5..]
            );
        }
        let (_, _, count) = stats.delivery_latency.handle(&["hpfeeds"]).read();
        assert_eq!(count, 1);
    }

    #[test]
    fn a_refused_authentication_fails_the_batch() {
        let (port, _rx) = broker(true);
        let mut d = HpfeedsDelivery::new(config(port), Arc::default(), Arc::default());
        let e = d.deliver(&[spooled(1)]).unwrap_err();
        assert!(format!("{e:#}").contains("Authentication failed"), "{e:#}");
    }

    #[test]
    fn no_broker_fails_the_batch_and_a_closed_connection_is_noticed() {
        let (port, rx) = broker(false);
        let mut d = HpfeedsDelivery::new(config(port), Arc::default(), Arc::default());
        d.deliver(&[spooled(1)]).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(rx); // the broker thread ends at the next frame and closes
        let _ = d.deliver(&[spooled(2)]);
        std::thread::sleep(Duration::from_millis(100));
        // Closed and nobody listens any more: the next batch fails, not vanishes.
        assert!(d.deliver(&[spooled(3)]).is_err());
    }

    #[test]
    fn validation() {
        let mut c = config(1);
        assert!(c.validate().is_ok());
        c.ident = "x".repeat(256);
        assert!(c.validate().is_err());
        let c = HpfeedsConfig::default();
        assert!(c.validate().is_ok(), "disabled: not checked");
    }
}
