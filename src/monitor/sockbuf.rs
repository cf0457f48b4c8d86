//! The receive buffer of a monitor's socket (netlink queue, packet socket): asked
//! for with SO_RCVBUFFORCE (CAP_NET_ADMIN, beyond net.core.rmem_max), else
//! SO_RCVBUF, and read back, since the kernel may cap it.

use std::io;
use std::os::fd::RawFd;

/// Set the receive buffer of `fd` to `bytes`. Returns the size in force and, when
/// SO_RCVBUFFORCE was refused and SO_RCVBUF used instead, why it was refused.
pub fn set_rcvbuf(fd: RawFd, bytes: u64) -> io::Result<(usize, Option<io::Error>)> {
    // The kernel doubles the value it is given (for its bookkeeping), as socket(7)
    // says; half is asked for so that the size in force is `bytes`.
    let want = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX / 2);
    let set = |opt| {
        // SAFETY: passes a valid int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(want).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 {
        return Ok((rcvbuf_of(fd)?, None));
    }
    let forced = io::Error::last_os_error();
    if set(libc::SO_RCVBUF) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rcvbuf_of(fd)?, Some(forced)))
}

/// The receive buffer in force (SO_RCVBUF), in bytes.
pub fn rcvbuf_of(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of_mut!(v).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as usize)
}
