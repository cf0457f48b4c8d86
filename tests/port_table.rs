//! The port table in-process on loopback: binding on demand, ignore mode, idle
//! shutdown after conn_timeout, LRU eviction at max_listeners, and a port owned by
//! another program being skipped.

use honeytrap::config;
use honeytrap::context::Context;
use honeytrap::proto::Protocol;
use honeytrap::server::{Ensured, PortTable, Trigger};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn connects(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn trigger(table: &std::sync::Arc<PortTable>, proto: Protocol, port: u16) -> Ensured {
    table.trigger(&Trigger {
        protocol: proto,
        local: SocketAddr::from(([127, 0, 0, 1], port)),
        remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
        monitor: "test",
    })
}

/// A port table on 127.0.0.1 with `limits` (TOML lines of `[limits]`, which may
/// open further tables after them); the directory holds its data until dropped.
fn loopback_table(
    limits: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<Context>,
    std::sync::Arc<PortTable>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[sensor]\ndata_dir = \"{}\"\n[network]\nbind_addresses = [\"127.0.0.1\"]\n[monitor.listen]\ntcp = []\nudp = []\n[limits]\n{limits}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let ctx = Context::start(config::load(Some(&path)).unwrap()).unwrap();
    let table = PortTable::new(ctx.clone());
    (dir, ctx, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_start_on_demand_idle_out_and_are_evicted_lru() {
    let ignored = free_port();
    let (dir, ctx, table) = loopback_table(&format!(
        "conn_timeout = \"1500ms\"\nread_timeout = \"200ms\"\nmax_listeners = 2\n[ports]\nresponses = 1\n[[ports.rule]]\nprotocol = \"tcp\"\nports = [{ignored}]\nmode = \"ignore\"\n"
    ));

    // Ignore mode: nothing is bound.
    assert_eq!(trigger(&table, Protocol::Tcp, ignored), Ensured::Ignored);
    assert!(!connects(ignored));

    // Bound on demand; a second trigger finds it running.
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    assert_eq!(trigger(&table, Protocol::Tcp, p1), Ensured::Started);
    assert_eq!(trigger(&table, Protocol::Tcp, p1), Ensured::Running);
    let p1_conn = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", p1)).unwrap();
        s.write_all(b"hello dynamic server").unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        buf[..n].to_vec()
    })
    .await
    .unwrap();
    assert_eq!(
        p1_conn, b"\n",
        "no response configured: a newline after read_timeout"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(trigger(&table, Protocol::Tcp, p2), Ensured::Started);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Cap of 2 reached: p1 is the least recently used and is closed.
    assert_eq!(trigger(&table, Protocol::Tcp, p3), Ensured::Started);
    assert_eq!(ctx.stats.listeners_evicted.load(Relaxed), 1);
    // The evicted listener closes once its accept task sees the cancellation.
    assert!(
        wait_until(Duration::from_secs(2), || !connects(p1)),
        "evicted server no longer listens"
    );
    assert!(connects(p2) && connects(p3));
    let running: Vec<u16> = table.list().iter().map(|(_, p, _)| *p).collect();
    assert_eq!(running.len(), 2);
    assert!(running.contains(&p2) && running.contains(&p3));

    // A UDP server on demand.
    let pu = free_port();
    assert_eq!(trigger(&table, Protocol::Udp, pu), Ensured::Started);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"udp probe payload", ("127.0.0.1", pu))
        .unwrap();

    // Idle for conn_timeout: closed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(table.list().is_empty(), "{:?}", table.list());
    assert!(wait_until(Duration::from_secs(2), || !connects(p2) && !connects(p3)));
    assert!(ctx.stats.listeners_idle_closed.load(Relaxed) >= 2);

    // A port owned by another program is skipped, every time, without a crash.
    let owner = TcpListener::bind("127.0.0.1:0").unwrap();
    let owned = owner.local_addr().unwrap().port();
    assert_eq!(trigger(&table, Protocol::Tcp, owned), Ensured::Unavailable);
    assert_eq!(trigger(&table, Protocol::Tcp, owned), Ensured::Unavailable);
    assert_eq!(ctx.stats.bind_failures.load(Relaxed), 2);

    // The sessions became attack records.
    ctx.sessions.close();
    ctx.sessions.wait().await;
    let c2 = ctx.clone();
    tokio::task::spawn_blocking(move || c2.recorder.close())
        .await
        .unwrap();
    let events = std::fs::read_to_string(dir.path().join("data/events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tcp = events
        .iter()
        .find(|e| e["destination"]["port"] == p1)
        .expect("tcp event");
    assert_eq!(tcp["honeytrap"]["monitor"], "test");
    assert_eq!(tcp["source"]["bytes"], 20);
    let udp = events
        .iter()
        .find(|e| e["destination"]["port"] == pu)
        .expect("udp event");
    assert_eq!(udp["network"]["transport"], "udp");
    assert_eq!(udp["destination"]["ip"], "127.0.0.1");
    assert_eq!(udp["source"]["bytes"], 17);
}

/// Eviction picks candidates in batches (the oldest 1/16) yet stays exact LRU: a
/// candidate touched after it was picked is skipped, the next oldest goes instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_stays_least_recently_used_with_many_servers() {
    let (_dir, ctx, table) = loopback_table("max_listeners = 32\n");
    // Distinct ports, kept bound by nobody else (a listener each, closed below).
    let mut ports = Vec::new();
    while ports.len() < 35 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let (old, new) = ports.split_at(32);
    // Activity is recorded in milliseconds: space the starts apart.
    for &p in old {
        assert_eq!(trigger(&table, Protocol::Tcp, p), Ensured::Started);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Full: the oldest (old[0]) goes; old[1] is picked as the next candidate too.
    assert_eq!(trigger(&table, Protocol::Tcp, new[0]), Ensured::Started);
    tokio::time::sleep(Duration::from_millis(3)).await;
    // old[1] is used again: no longer the least recently used.
    assert_eq!(trigger(&table, Protocol::Tcp, old[1]), Ensured::Running);
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert_eq!(trigger(&table, Protocol::Tcp, new[1]), Ensured::Started);
    assert_eq!(trigger(&table, Protocol::Tcp, new[2]), Ensured::Started);
    let running: Vec<u16> = table.list().iter().map(|(_, p, _)| *p).collect();
    assert_eq!(running.len(), 32);
    for gone in [old[0], old[2], old[3]] {
        assert!(!running.contains(&gone), "{gone} evicted");
    }
    for kept in old[1..2].iter().chain(&old[4..]).chain(new) {
        assert!(running.contains(kept), "{kept} still running");
    }
    assert_eq!(ctx.stats.listeners_evicted.load(Relaxed), 3);
    // Evicted servers stop listening.
    assert!(wait_until(Duration::from_secs(2), || !connects(old[0])
        && !connects(old[2])));
    assert!(connects(old[1]) && connects(new[2]));
}

/// Servers closed to make room keep their sockets until their tasks run; when the
/// runtime falls behind (one CPU under a full-range scan), at most
/// max_listeners / 4 of them may wait, then new ports are refused until some are
/// released, so the sockets stay bounded by the listener cap.
#[tokio::test(flavor = "current_thread")]
async fn closed_servers_not_yet_released_bound_new_ones() {
    let (_dir, ctx, table) = loopback_table("max_listeners = 4\n");
    // One thread: the servers' tasks run only when this test awaits.
    // Held while choosing, so the 6 ports differ.
    let held: Vec<TcpListener> = (0..6)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    for &p in &ports[..4] {
        assert_eq!(trigger(&table, Protocol::Tcp, p), Ensured::Started);
    }
    assert_eq!(table.servers_holding_sockets(), 4);
    // The 5th evicts the least recently used server, whose task has not run yet:
    // it still holds its socket (the allowance at 4 is one such server).
    assert_eq!(trigger(&table, Protocol::Tcp, ports[4]), Ensured::Started);
    assert_eq!(table.servers_holding_sockets(), 5);
    assert!(table.closing_backlog());
    // So the 6th is refused, and nothing more is bound.
    assert_eq!(trigger(&table, Protocol::Tcp, ports[5]), Ensured::Full);
    assert_eq!(table.servers_holding_sockets(), 5);
    assert_eq!(ctx.stats.limit_max_listeners.load(Relaxed), 1);
    // A pinned server (a port of monitor.listen) is exempt: it is bound, making
    // room as always; the closed server it evicts is the second one waiting.
    assert_eq!(
        table.ensure(Protocol::Tcp, ports[5], "listen", true),
        Ensured::Started
    );
    assert_eq!(table.servers_holding_sockets(), 6);
    table.unpin(Protocol::Tcp, ports[5]);
    table.close(Protocol::Tcp, ports[5]);
    // Once the runtime has run the closed servers' tasks, their sockets are gone
    // and the next port is bound.
    let released = async {
        while table.servers_holding_sockets() > 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("the closed servers released their sockets");
    assert!(!table.closing_backlog());
    assert_eq!(trigger(&table, Protocol::Tcp, ports[5]), Ensured::Started);
    assert_eq!(table.servers_holding_sockets(), 4);
    ctx.stop_accepting.cancel();
}
