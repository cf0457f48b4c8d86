//! The attack the output benchmarks (`pgbench`, `natsbench`) send: shared by both
//! through `#[path]`, since an example cannot import another.

use honeytrap::attack::{Captured, EndReason, Mode, Transcript};

/// A typical small attack: an HTTP request, one protocol finding.
pub fn attack(i: usize) -> honeytrap::attack::Attack {
    let mut t = Transcript::default();
    let req = format!("GET /cgi-bin/{i}.sh HTTP/1.1\r\nHost: sensor\r\nUser-Agent: bench\r\n\r\n");
    t.push_in(req.as_bytes(), 1 << 20);
    let c = Captured {
        start: chrono::Utc::now(),
        end: chrono::Utc::now(),
        sensor: "bench".into(),
        monitor: "listen".into(),
        mode: Mode::Normal,
        protocol: honeytrap::proto::Protocol::Tcp,
        local: "10.0.0.1:8080".parse().unwrap(),
        remote: format!(
            "198.51.{}.{}:{}",
            i / 65536 % 256,
            i / 256 % 256,
            1024 + i % 60000
        )
        .parse()
        .unwrap(),
        transcript: t,
        responses_sent: 1,
        relay: None,
        end_reason: EndReason::Closed,
    };
    let mut a = c.seal();
    let mut f = honeytrap::analysis::Finding::new("protocol", "protocol", "HTTP GET");
    f.meta("protocol", "http");
    a.analysis.findings.push(f);
    a
}
