//! The two roles the harness re-executes itself in, each inside a namespace:
//!
//! * the **client** (attacker namespace): exactly one non-blocking TCP connect per
//!   port, never retried, given up after a timeout shorter than the kernel's 1 s
//!   initial SYN retransmission timeout, so no second SYN is ever sent. Up to
//!   `concurrency` attempts are in flight; one thread, `poll(2)` over them. It prints
//!   one JSON line: the outcome counts, the latencies of the successful attempts
//!   (connect() call to established) and the namespace's TCP retransmissions.
//! * the **bare server** (honeypot namespace): the baseline. Every port of the list is
//!   bound and listening before it says `ready`; one thread, epoll, each connection
//!   accepted and closed at once (the handshake, all the client measures, is the
//!   kernel's).

use anyhow::{bail, Context as _, Result};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

/// Parse `A-B,C,D-E` into the list of ports.
pub fn parse_ports(spec: &str) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u16, u16) = (a.parse()?, b.parse()?);
        if a == 0 || b < a {
            bail!("bad port range {part}");
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Write a port list as ranges (`A-B,C`).
pub fn format_ports(ports: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ports[i].to_string()
        } else {
            format!("{}-{}", ports[i], ports[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Raise RLIMIT_NOFILE (soft and hard) to at least `needed` where allowed (root).
/// Returns the soft limit in force.
pub fn raise_nofile(needed: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let want = needed.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

// ---------------------------------------------------------------------------
// Client

/// One attempt in flight.
struct Flight {
    sock: socket2::Socket,
    started: Instant,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    timeout: u64,
    error: u64,
    lat_ns: Vec<u64>,
    first_error: Option<String>,
    /// Returns from ppoll / epoll_wait.
    wakeups: u64,
}

impl Tally {
    fn start_failed(&mut self, e: std::io::Error) {
        self.error += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// Start a non-blocking connect (the clock starts right before the call).
fn start_connect(dst: SocketAddr) -> std::io::Result<Flight> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    let started = Instant::now();
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(Flight { sock, started })
}

/// The outcome of an attempt whose socket `poll` reported ready.
fn finish(f: Flight, now: Instant, t: &mut Tally) {
    match f.sock.take_error() {
        Ok(None) => {
            t.ok += 1;
            t.lat_ns
                .push(now.duration_since(f.started).as_nanos() as u64);
        }
        Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => t.refused += 1,
        Ok(Some(e)) | Err(e) => {
            t.error += 1;
            t.first_error.get_or_insert_with(|| e.to_string());
        }
    }
    // Dropped here: close() (FIN after success; nothing for a refused socket).
}

/// TCP segments retransmitted in this namespace so far (`Tcp: RetransSegs`).
fn retrans_segs() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    super::netns::net_counter(&text, "Tcp", "RetransSegs")
}

/// How the client waits for its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// epoll: each wake-up costs what became ready (the default).
    Epoll,
    /// ppoll over every attempt in flight: each wake-up costs all of them; the
    /// client of the figures before the second 2026-11-28 session. Both woke
    /// 10-12 times per 2,000 attempts and measured the same (docs/benchmarks.md).
    Ppoll,
}

/// One attempt per port, at most `concurrency` in flight, each given up after
/// `timeout`; prints the JSON result line.
pub fn client(
    host: Ipv4Addr,
    ports: &[u16],
    concurrency: usize,
    timeout: Duration,
    wait: Wait,
) -> Result<()> {
    raise_nofile(concurrency as u64 + 1024);
    let retrans0 = retrans_segs();
    let t0 = Instant::now();
    // A hard bound on the whole run, beyond which the rest is abandoned.
    let limit = timeout * (ports.len() / concurrency.max(1) + 2) as u32 + Duration::from_secs(60);
    let mut tally = Tally::default();
    let addrs = ports.iter().map(|&p| SocketAddrV4::new(host, p).into());
    let abandoned = match wait {
        Wait::Ppoll => run_ppoll(addrs, concurrency, timeout, t0 + limit, &mut tally)?,
        Wait::Epoll => run_epoll(addrs, concurrency, timeout, t0 + limit, &mut tally)?,
    };
    let cpu_ms = {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        ms(ru.ru_utime) + ms(ru.ru_stime)
    };
    let retrans = match (retrans0, retrans_segs()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let line = serde_json::json!({
        "attempts": ports.len(),
        "ok": tally.ok,
        "refused": tally.refused,
        "timeout": tally.timeout + abandoned,
        "error": tally.error,
        "first_error": tally.first_error,
        "retrans_segs": retrans,
        "wall_ms": t0.elapsed().as_millis() as u64,
        "cpu_ms": cpu_ms,
        "wakeups": tally.wakeups,
        "lat_ns": tally.lat_ns,
    });
    println!("{line}");
    Ok(())
}

/// The ppoll client loop (see [`Wait::Ppoll`]). Returns the attempts abandoned at
/// `deadline`.
fn run_ppoll(
    mut addrs: impl Iterator<Item = SocketAddr>,
    concurrency: usize,
    timeout: Duration,
    deadline: Instant,
    tally: &mut Tally,
) -> Result<u64> {
    let mut flights: Vec<Flight> = Vec::with_capacity(concurrency);
    let mut exhausted = false;
    loop {
        while !exhausted && flights.len() < concurrency {
            match addrs.next() {
                Some(a) => match start_connect(a) {
                    Ok(f) => flights.push(f),
                    Err(e) => tally.start_failed(e),
                },
                None => exhausted = true,
            }
        }
        if flights.is_empty() || Instant::now() > deadline {
            return Ok(flights.len() as u64);
        }
        poll_once(&mut flights, timeout, tally)?;
    }
}

/// The epoll client loop (see [`Wait::Epoll`]). Attempts time out in the order
/// they started, so a queue in start order finds the expired ones without a scan.
/// Returns the attempts abandoned at `deadline`.
fn run_epoll(
    mut addrs: impl Iterator<Item = SocketAddr>,
    concurrency: usize,
    timeout: Duration,
    deadline: Instant,
    tally: &mut Tally,
) -> Result<u64> {
    use std::collections::{HashMap, VecDeque};
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: `ep` was just created and is owned by nothing else.
    let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
    let mut flights: HashMap<u64, Flight> = HashMap::with_capacity(concurrency);
    let mut order: VecDeque<(u64, Instant)> = VecDeque::with_capacity(concurrency);
    let mut serial = 0u64;
    let mut exhausted = false;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; concurrency.max(1)];
    loop {
        while !exhausted && flights.len() < concurrency {
            let Some(a) = addrs.next() else {
                exhausted = true;
                break;
            };
            let f = match start_connect(a) {
                Ok(f) => f,
                Err(e) => {
                    tally.start_failed(e);
                    continue;
                }
            };
            serial += 1;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLOUT as u32,
                u64: serial,
            };
            // SAFETY: both descriptors are open; `ev` is a valid event.
            if unsafe {
                libc::epoll_ctl(
                    ep.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    f.sock.as_raw_fd(),
                    &mut ev,
                )
            } < 0
            {
                tally.start_failed(std::io::Error::last_os_error());
                continue;
            }
            order.push_back((serial, f.started));
            flights.insert(serial, f);
        }
        if flights.is_empty() || Instant::now() > deadline {
            return Ok(flights.len() as u64);
        }
        // Wait until the oldest attempt in flight expires (rounded up to a ms).
        while order
            .front()
            .is_some_and(|(id, _)| !flights.contains_key(id))
        {
            order.pop_front();
        }
        let wait = order.front().map_or(Duration::ZERO, |&(_, started)| {
            (started + timeout).saturating_duration_since(Instant::now())
        });
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` is valid for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, ms)
        };
        let now = Instant::now();
        tally.wakeups += 1;
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("epoll_wait");
            }
        }
        for ev in &events[..n.max(0) as usize] {
            // Closing the socket (in finish) removes it from the epoll set.
            if let Some(f) = flights.remove(&{ ev.u64 }) {
                finish(f, now, tally);
            }
        }
        while let Some(&(id, started)) = order.front() {
            if now.duration_since(started) < timeout {
                break;
            }
            order.pop_front();
            if flights.remove(&id).is_some() {
                // Closed before the kernel's 1 s retransmission: one SYN only.
                tally.timeout += 1;
            }
        }
    }
}

/// One poll over the flights: finish the ready ones, time out the expired ones.
fn poll_once(flights: &mut Vec<Flight>, timeout: Duration, tally: &mut Tally) -> Result<()> {
    let now = Instant::now();
    let wait = flights
        .iter()
        .map(|f| (f.started + timeout).saturating_duration_since(now))
        .min()
        .unwrap_or_default();
    let mut fds: Vec<libc::pollfd> = flights
        .iter()
        .map(|f| libc::pollfd {
            fd: f.sock.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    tally.wakeups += 1;
    // SAFETY: fds is a valid array of fds.len() pollfd structs.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("ppoll");
        }
    }
    let now = Instant::now();
    // Walk backwards so swap_remove keeps the unvisited indices valid.
    for i in (0..flights.len()).rev() {
        if fds[i].revents != 0 {
            finish(flights.swap_remove(i), now, tally);
        } else if now.duration_since(flights[i].started) >= timeout {
            // Closed before the kernel's 1 s retransmission: one SYN only.
            flights.swap_remove(i);
            tally.timeout += 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Bare server

/// A TCP listener on `addr:port` (SO_REUSEADDR, backlog 4096, non-blocking).
fn listener(addr: Ipv4Addr, port: u16) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddrV4::new(addr, port).into())?;
    s.listen(4096)?;
    Ok(s)
}

/// Bind every port of `ports` on `addr`, then accept-and-close forever (until
/// SIGTERM, whose default action ends the process). When the open file limit (whose
/// hard value only CAP_SYS_RESOURCE can raise) is too low for all the ports, the
/// ports beyond it go to helper processes (this example again, in the same
/// namespace), which die with this one; `ready` is said once all of them are.
pub fn bare_server(addr: Ipv4Addr, ports: &[u16]) -> Result<()> {
    let nofile = raise_nofile(ports.len() as u64 + 1024);
    let per = (nofile.saturating_sub(1024) as usize).max(1);
    let (mine, rest) = ports.split_at(ports.len().min(per));
    let mut helpers = Vec::new();
    for chunk in rest.chunks(per) {
        helpers.push(start_helper(addr, chunk)?);
    }
    // SAFETY: plain epoll calls on descriptors this function owns.
    // SAFETY: plain epoll calls on descriptors this function owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    let mut socks = Vec::with_capacity(mine.len());
    for &p in mine {
        let s = listener(addr, p).with_context(|| format!("binding {addr}:{p}"))?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: s.as_raw_fd() as u64,
        };
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl");
        }
        socks.push(s);
    }
    eprintln!(
        "bare server ready: {} ports listening on {addr} in {} process(es) (open file limit {nofile})",
        ports.len(),
        helpers.len() + 1
    );
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        for ev in events.iter().take(n.max(0) as usize) {
            accept_all(ev.u64 as RawFd);
        }
    }
}

/// A helper bare server for `ports`; returns once it said it is ready (at most 60 s).
fn start_helper(addr: Ipv4Addr, ports: &[u16]) -> Result<std::process::Child> {
    use std::io::BufRead as _;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--bare-server",
        &addr.to_string(),
        "--ports",
        &format_ports(ports),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    super::netns::child_setup(&mut cmd);
    let mut child = cmd.spawn().context("starting a helper bare server")?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) if l.contains(" ready") => Ok(child),
        other => {
            let _ = child.kill();
            bail!("helper bare server for {} ports: {other:?}", ports.len())
        }
    }
}

/// Accept and close every pending connection of a listener.
fn accept_all(fd: RawFd) {
    loop {
        // SAFETY: fd is a listening socket owned by bare_server.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            return;
        }
        unsafe { libc::close(c) };
    }
}
