//! The two socket options the peer needs that neither `rustix` nor `socket2` offers, set and read
//! through `libc`: the peer's only `unsafe` code, each call a plain `setsockopt`/`getsockopt` on
//! a borrowed socket with a value of exactly the size passed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Sets `SO_RCVLOWAT`: the bytes that must be queued before the socket reads as ready.
#[allow(unsafe_code)]
pub(crate) fn set_rcvlowat(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is an open socket borrowed for the call; the option value is a live `c_int`
    // whose exact size is passed, and the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The connection's smoothed round-trip time (`TCP_INFO`'s `tcpi_rtt`), Linux only; `None` where
/// it cannot be read or no sample was taken yet.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn tcp_rtt(fd: BorrowedFd<'_>) -> Option<Duration> {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed for the call; `info` is a live, writable
    // `tcp_info` and `len` its exact size, which the kernel never exceeds (it writes at most
    // `len` bytes and says how many).
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    // An older kernel may fill less than the whole struct: it must reach the RTT.
    let filled = std::mem::offset_of!(libc::tcp_info, tcpi_rtt) + std::mem::size_of::<u32>();
    (r == 0 && len as usize >= filled && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// Not read elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) fn tcp_rtt(_fd: BorrowedFd<'_>) -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A connected socket has a round-trip time once data was acknowledged, on Linux.
    #[tokio::test]
    async fn a_connection_tells_its_round_trip_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut client, (mut server, _)) = (client.unwrap(), accepted.unwrap());
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        let rtt = tcp_rtt(client.as_fd());
        if cfg!(target_os = "linux") {
            let rtt = rtt.expect("TCP_INFO on Linux");
            assert!(rtt < Duration::from_secs(1), "loopback: {rtt:?}");
        }
        set_rcvlowat(client.as_fd(), 1000).unwrap();
        assert!(set_rcvlowat(client.as_fd(), usize::MAX).is_err(), "too large for the option");
    }
}
