//! TCP_NODELAY on every connection the broker accepts.
//!
//! rumqttd binds and accepts inside its own `Server::start` and never sets TCP_NODELAY, so a
//! small PUBLISH queued behind an unacknowledged small segment (say, the PUBACK it just sent)
//! waits for the peer's delayed ACK: every confirmed command took 40-45 ms instead of about one
//! millisecond. rumqttd offers no hook between accept and use, so this module interposes the C
//! library's `accept4` (which tokio/mio call for every accept) in the broker binary: it performs
//! the real system call and switches Nagle's algorithm off on the new socket. Non-TCP sockets
//! are left alone (setsockopt fails on them harmlessly).
//!
//! This is a stopgap with a small, well-defined blast radius (the broker binary only); the
//! planned own accept loop in front of rumqttd's router replaces it.

/// Same signature as glibc's `accept4(2)`.
///
/// # Safety
/// Called by the C ABI with the arguments of `accept4(2)`; they are passed to the kernel as is.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: libc::c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: libc::c_int,
) -> libc::c_int {
    let conn = libc::syscall(libc::SYS_accept4, fd, addr, len, flags) as libc::c_int;
    if conn >= 0 {
        let one: libc::c_int = 1;
        libc::setsockopt(
            conn,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    conn
}
