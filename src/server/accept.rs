//! Accepting TCP connections without the failed `accept(2)` after each one.
//!
//! Tokio's `TcpListener::accept` calls `accept4` until it fails with EAGAIN. Linux
//! allocates the new socket's inode and file *before* it looks at the accept queue
//! (`do_accept` in net/socket.c) and frees them again on EAGAIN, so that failing
//! call costs as much as a successful one. A dynamic server mostly sees one
//! connection per wake-up (a scanner tries each port once), so half of its
//! `accept4` calls failed: a quarter of the runtime's kernel time in a burst of new
//! ports. [`Acceptor`] instead asks the listener how many connections are queued
//! (`TCP_INFO`, whose `tcpi_unacked` is the accept queue length of a listening
//! socket) and accepts exactly those; the query allocates nothing.

use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A listening socket registered with the runtime, accepting as described above.
pub struct Acceptor {
    listener: AsyncFd<std::net::TcpListener>,
    /// Connections taken to be queued and not yet accepted: from the last
    /// [`queued`] query, or 1 after a new readiness event (a connection is most
    /// likely queued then, so it is accepted without asking first).
    known: u32,
    /// `accept4` calls that failed because nothing was queued after all.
    wasted: u64,
}

impl Acceptor {
    /// Register `listener` (non-blocking, listening) with the current runtime.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        // SAFETY: a TcpListener owns its descriptor and always returns that one,
        // for as long as the AsyncFd (which owns the listener) exists.
        let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?;
        Ok(Acceptor {
            listener,
            known: 1,
            wasted: 0,
        })
    }

    /// How many `accept4` calls found the queue empty (the readiness was stale).
    pub fn wasted_accepts(&self) -> u64 {
        self.wasted
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// The next connection and its peer's address.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut guard = self.listener.readable().await?;
            let fd = guard.get_inner().as_raw_fd();
            let (known, wasted) = (&mut self.known, &mut self.wasted);
            let attempt = guard.try_io(|_| {
                if *known == 0 {
                    *known = queued(fd)?;
                    if *known == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                *known -= 1;
                let accepted = accept4(fd);
                if accepted
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
                {
                    *wasted += 1;
                }
                accepted
            });
            match attempt {
                Ok(Ok((stream, remote))) => return Ok((TcpStream::from_std(stream)?, remote)),
                Ok(Err(e)) => return Err(e),
                // The readiness is cleared: the next one is a new event.
                Err(_would_block) => self.known = 1,
            }
        }
    }
}

/// Connections waiting in the accept queue of the listening socket `fd`.
fn queued(fd: RawFd) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the given size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // For a socket in LISTEN state the kernel reports the accept queue length as
    // tcpi_unacked (tcp_get_info in net/ipv4/tcp.c).
    Ok(info.tcpi_unacked)
}

/// One `accept4`, the new socket non-blocking and close-on-exec from the start.
fn accept4(fd: RawFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: try_init hands accept4 a sockaddr_storage and its length to fill.
    let (conn, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            match libc::accept4(fd, storage.cast(), len, flags) {
                -1 => Err(io::Error::last_os_error()),
                conn => Ok(conn),
            }
        })?
    };
    // SAFETY: `conn` is a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
    let remote = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accept4: peer address is not an IP address"))?;
    Ok((stream, remote))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn listener() -> std::net::TcpListener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    /// The next connection and its peer's address, within 5 s.
    async fn accept_within(a: &mut Acceptor) -> (TcpStream, SocketAddr) {
        tokio::time::timeout(Duration::from_secs(5), a.accept())
            .await
            .expect("accepted in time")
            .unwrap()
    }

    /// Wait until the kernel has queued `n` connections on `l`.
    fn wait_queued(l: &std::net::TcpListener, n: u32) {
        let start = std::time::Instant::now();
        while queued(l.as_raw_fd()).unwrap() < n {
            assert!(start.elapsed() < Duration::from_secs(5), "never queued {n}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_accept_queue_length_is_read_from_the_listener() {
        let l = listener();
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 0);
        let addr = l.local_addr().unwrap();
        let _c: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        wait_queued(&l, 3);
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 3);
        accept4(l.as_raw_fd()).unwrap();
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 2);
    }

    #[tokio::test]
    async fn every_queued_connection_is_accepted_with_its_peer_address() {
        let l = listener();
        let addr = l.local_addr().unwrap();
        let clients: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        wait_queued(&l, 5);
        let mut a = Acceptor::new(l).unwrap();
        assert_eq!(a.local_addr().unwrap(), addr);
        let mut peers = Vec::new();
        for _ in 0..5 {
            let (s, remote) = accept_within(&mut a).await;
            assert_eq!(s.peer_addr().unwrap(), remote);
            peers.push(remote);
        }
        let mut want: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        peers.sort();
        want.sort();
        assert_eq!(peers, want);
        // The queue is empty now: accept waits for the next connection, which it
        // then gets (the readiness was cleared, not lost).
        let pending = tokio::time::timeout(Duration::from_millis(50), a.accept()).await;
        assert!(pending.is_err(), "nothing was queued");
        let late = std::net::TcpStream::connect(addr).unwrap();
        let (_, remote) = accept_within(&mut a).await;
        assert_eq!(remote, late.local_addr().unwrap());
        // One queue query per wake-up found the queue empty; no accept4 failed.
        assert_eq!(a.wasted_accepts(), 0);
    }

    #[tokio::test]
    async fn connections_arriving_one_at_a_time_are_each_accepted() {
        let l = listener();
        let addr = l.local_addr().unwrap();
        let mut a = Acceptor::new(l).unwrap();
        for _ in 0..20 {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let (_, remote) = accept_within(&mut a).await;
            assert_eq!(remote, c.local_addr().unwrap());
        }
        // Tokio's accept would have failed once after each connection.
        assert_eq!(a.wasted_accepts(), 0);
    }
}
