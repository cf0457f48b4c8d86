//! Zero-copy relaying between two TCP sockets (Linux `splice`): the bytes go from
//! one socket through a pipe into the other without passing through honeytrap's
//! memory. The record is taken by a `MSG_PEEK` read straight into the transcript
//! before the same bytes are spliced on, so honeytrap copies each byte once (into
//! the record) instead of three times (read, record, write).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::null_mut;

/// Size asked for each pipe: the most one round of a pump moves. 1 MiB is the
/// kernel's default `fs.pipe-max-size`, allowed without privileges; when the
/// per-user pipe quota is used up the pipe keeps its default size (64 KiB).
pub const PIPE_SIZE: usize = 1 << 20;

/// A non-blocking pipe, closed on drop.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Its capacity in bytes.
    pub size: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the pipe as it was.
        let size = unsafe {
            match libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) {
                n if n > 0 => n,
                _ => libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ),
            }
        };
        Ok(Pipe {
            r,
            w,
            size: size.max(4096) as usize,
        })
    }

    /// Move up to `len` bytes waiting on socket `from` into the pipe.
    pub fn fill(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.w.as_raw_fd(), len)
    }

    /// Move up to `len` bytes from the pipe into socket `to`.
    pub fn drain(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.r.as_raw_fd(), to, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: plain descriptors, no offsets (both ends are sockets or pipes).
    let n = unsafe { libc::splice(from, null_mut(), to, null_mut(), len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Copy the bytes waiting on socket `fd` into `buf` (at most its length) and leave
/// them queued (`MSG_PEEK`). 0: end of stream.
pub fn peek(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receive the bytes waiting on socket `fd` into `buf` (at most its length).
/// 0: end of stream.
pub fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Send what socket `fd` takes of `data` now.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: send reads at most `data.len()` bytes from `data`.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Pass the end of the stream on (TCP half-close).
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown on a socket descriptor; an error (already closed) is moot.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn peeked_bytes_are_spliced_on_unchanged() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"hello splice").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        b.set_nonblocking(false).unwrap();
        let mut seen = vec![MaybeUninit::new(0u8); 64];
        let n = peek(b.as_raw_fd(), &mut seen).unwrap();
        assert!(n > 0);
        let p = Pipe::new().unwrap();
        assert!(p.size >= 4096);
        let mut moved = 0;
        while moved < n {
            let k = p.fill(b.as_raw_fd(), n - moved).unwrap();
            assert_eq!(p.drain(c.as_raw_fd(), k).unwrap(), k);
            moved += k;
        }
        shutdown_write(c.as_raw_fd());
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        // SAFETY: peek initialised the first n bytes.
        let seen: Vec<u8> = seen[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, seen);
        assert_eq!(got, b"hello splice");
        assert_eq!(
            peek(b.as_raw_fd(), &mut [MaybeUninit::new(0); 8]).unwrap(),
            0
        );
    }
}
