//! Where a server listens: a `--listen` value ([`ListenAddr`]: a port alone, or an address and
//! port), and the one listener that takes both IPv4 and IPv6 clients on every interface
//! ([`bind_dual_stack`]).
//!
//! Why dual-stack: a server bound to `0.0.0.0` is unreachable over IPv6, and one bound to `[::]`
//! takes IPv4 clients only if the socket's `IPV6_V6ONLY` option is off, whose default depends on
//! the system (Linux's `net.ipv6.bindv6only`, off by default; on by default on some BSDs, and
//! always on Windows). So the option is cleared explicitly; IPv4 clients then show as
//! IPv4-mapped addresses (`::ffff:10.0.0.5`), which the tracker canonicalises everywhere. Where
//! IPv6 is unavailable (a kernel without it), the listener is `0.0.0.0` instead.
//!
//! The sockets themselves are made by `proto::net::listen`, which the peer's listener shares.

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use tokio::net::TcpListener;

/// Where to listen, as `--listen` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// A port alone (`6969`): every interface, IPv4 and IPv6 ([`bind_dual_stack`]).
    AllInterfaces(u16),
    /// An address and port (`10.0.0.1:6969`, `[::1]:6969`, `0.0.0.0:6969`): exactly that, except
    /// that `[::]:PORT` is dual-stack as a port alone is (whatever the system's default), as the
    /// peer's listener (`proto::net::listen`) does.
    Addr(SocketAddr),
}

/// A `--listen` value that is neither a port nor an address with a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a port (6969: every interface, IPv4 and IPv6), ADDR:PORT (10.0.0.1:6969) or [V6]:PORT ([::1]:6969)"
)]
pub struct BadListenAddr(String);

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    /// `PORT`, `ADDR:PORT` or `[V6]:PORT`; nothing else (no host names: a server binds an
    /// address of its own host, and a name could stand for several).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr::AllInterfaces(port));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Addr).map_err(|_| BadListenAddr(s.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::AllInterfaces(port) => write!(f, "port {port} on every interface"),
            ListenAddr::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

impl ListenAddr {
    /// A listener where `self` says. Call it within a Tokio runtime (the listener is registered
    /// with it).
    pub fn bind(self) -> io::Result<TcpListener> {
        match self {
            ListenAddr::AllInterfaces(port) => bind_dual_stack(port),
            ListenAddr::Addr(addr) if addr.ip() == Ipv6Addr::UNSPECIFIED => bind_dual_stack(addr.port()),
            ListenAddr::Addr(addr) => listener(addr),
        }
    }
}

/// A listener on `port` (0: any free port) of every interface, for IPv4 and IPv6 clients alike
/// (`proto::net::listen` on `[::]`, which falls back to `0.0.0.0` where IPv6 is unavailable).
///
/// Call it within a Tokio runtime (the listener is registered with it).
pub fn bind_dual_stack(port: u16) -> io::Result<TcpListener> {
    listener(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
}

/// A Tokio listener at `addr`, as `proto::net::listen` makes it.
fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(proto::net::listen(addr)?.0)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
