//! Listening sockets as both binaries open them: an unspecified IPv6 address (`[::]`) means every
//! interface of both families, falling back to IPv4's `0.0.0.0` on a host without IPv6.
//!
//! Why clear `IPV6_V6ONLY` explicitly: a server bound to `0.0.0.0` is unreachable over IPv6, and
//! one bound to `[::]` takes IPv4 clients only if that option is off, whose default depends on the
//! system (Linux's `net.ipv6.bindv6only`, off by default; on by default on some BSDs, always on
//! Windows). IPv4 clients then show as IPv4-mapped addresses (`::ffff:10.0.0.5`), which
//! `IpAddr::to_canonical` turns back into `10.0.0.5`. Listeners are otherwise made as Tokio's own
//! `bind` makes them (`SO_REUSEADDR` on Unix, so a restarted server rebinds at once despite
//! connections in `TIME_WAIT`; a backlog of 1024).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues for a listener: Tokio's own default.
const BACKLOG: i32 = 1024;

/// A bound, listening, non-blocking socket for `addr`, and whether it takes both IPv4 and IPv6.
/// `[::]:PORT` is dual-stack where the host has IPv6, else `0.0.0.0:PORT`; any other address is
/// bound as given. Only a missing IPv6 falls back: any other failure (the port taken, no
/// permission) is returned, since falling back would then serve IPv4 alone while the IPv6 side
/// belongs to someone else.
pub fn listen(addr: SocketAddr) -> io::Result<(TcpListener, bool)> {
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        return match bind(addr, Some(false)) {
            Ok(l) => Ok((l, true)),
            Err(e) if ipv6_unavailable(&e) => {
                Ok((bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()), None)?, false))
            }
            Err(e) => Err(e),
        };
    }
    Ok((bind(addr, None)?, false))
}

/// Whether making or binding an IPv6 socket failed because the host has no IPv6, rather than for
/// a reason an IPv4 listener would share.
fn ipv6_unavailable(e: &io::Error) -> bool {
    // EAFNOSUPPORT has no `ErrorKind` of its own in stable Rust: 97 on Linux and Android,
    // WSAEAFNOSUPPORT on Windows, 47 on the BSDs and macOS.
    const EAFNOSUPPORT: i32 = if cfg!(any(target_os = "linux", target_os = "android")) {
        97
    } else if cfg!(windows) {
        10047
    } else {
        47
    };
    matches!(e.kind(), io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported)
        || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// A listening socket at `addr`, with `IPV6_V6ONLY` set to `only_v6` when given.
fn bind(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only) = only_v6 {
        socket.set_only_v6(only)?;
    }
    // What Tokio's bind does on Unix; on Windows the option would let another process steal
    // the port.
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, TcpStream};

    #[test]
    fn every_interface_takes_both_families() {
        let (l, dual) = listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        if dual && std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
            TcpStream::connect((Ipv6Addr::LOCALHOST, port)).unwrap();
        } else {
            println!("no IPv6 (loopback) on this host: IPv4 only was tried");
        }
    }

    #[test]
    fn a_given_address_is_bound_as_given_and_a_taken_port_is_an_error() {
        let (l, dual) = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        assert!(!dual);
        let taken = l.local_addr().unwrap();
        assert_eq!(taken.ip(), Ipv4Addr::LOCALHOST);
        let (everywhere, _) = listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)).unwrap();
        let port = everywhere.local_addr().unwrap().port();
        assert!(listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)).is_err(), "no fallback when taken");
    }
}
