//! Holders on the tracker's own host, and where File Locations lists them.
//!
//! A peer on the tracker's host usually reaches the tracker through loopback (`127.0.0.1`) and
//! registers an unspecified IP (`0.0.0.0:PORT` or `[::]:PORT`): it listens on every interface.
//! Replacing that IP by the one the session connects from, as for any other peer, would record
//! `127.0.0.1:PORT`, which on every other host reaches that host itself, not the peer. So the
//! registry keeps such an endpoint at the unspecified IP of the loopback family it connected
//! from (`0.0.0.0:PORT` from `127.0.0.0/8`, `[::]:PORT` from `::1`), meaning "on the tracker's
//! host, every interface", and File Locations lists it at the IP the *asking* session reached
//! the tracker at (the local address of that session's connection), since the peer listens
//! there too: a downloader that reached the tracker at `10.0.0.1` gets `10.0.0.1:PORT`. When that
//! IP is itself loopback (the asker is on the tracker's host as well), the holder is listed at
//! loopback, of the family it connected from: `127.0.0.1:PORT` (from any `127.x.y.z`, all of
//! which reach a peer listening on every interface) or `[::1]:PORT`. An unspecified endpoint
//! costs no memory beyond the address kept for every holder, and listing it one comparison.
//!
//! Only an unspecified IP registered from a loopback address is kept so. A peer that registered
//! an explicit IP, loopback included (it listens on that address alone), is listed as registered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where File Locations lists, for one asking session, the holders on the tracker's own host
/// that listen on every interface (kept at an unspecified IP, see the module docs). Built once
/// per request; listing a source is then one comparison, no lookup and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OwnHost {
    /// For a holder kept at `0.0.0.0` (it connected from IPv4 loopback).
    v4: IpAddr,
    /// For a holder kept at `::` (it connected from `::1`).
    v6: IpAddr,
}

impl OwnHost {
    /// For a session that reached the tracker at `local` (its connection's local address): that
    /// IP, canonical (an IPv4-mapped address, what a dual-stack listener sees, is the IPv4
    /// address), or, if it is loopback, the holder's own loopback address. The family of `local`
    /// may differ from the holder's: a holder listening on every interface takes both families
    /// if its listener is dual-stack (`[::]` with IPv6-only off); one on `0.0.0.0` takes IPv4
    /// alone, and is then out of reach of an asker that came over IPv6, as it would be at any
    /// IPv6 address.
    pub(super) fn reached_at(local: IpAddr) -> Self {
        let local = local.to_canonical();
        // An accepted connection's local address is never unspecified; if it were (no address
        // known), loopback is the one address sure to be the tracker's own host.
        if local.is_loopback() || local.is_unspecified() {
            Self { v4: Ipv4Addr::LOCALHOST.into(), v6: Ipv6Addr::LOCALHOST.into() }
        } else {
            Self { v4: local, v6: local }
        }
    }

    /// Where the asking session reaches a holder the registry keeps at `addr`.
    #[inline]
    pub(super) fn reach(self, addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(self.v4, addr.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(self.v6, addr.port()),
            _ => addr,
        }
    }
}

/// Where the registry keeps the endpoint of a session connecting from `observed` that announced
/// `listen` (both canonical): an unspecified IP from a loopback address becomes the unspecified
/// IP of that loopback's family (on the tracker's host, every interface; see the module docs),
/// any other unspecified IP the observed one, and an explicit IP is kept as it is (whether it
/// may be is the caller's check).
pub(super) fn kept_endpoint(listen: SocketAddr, observed: IpAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = match observed {
        IpAddr::V4(ip) if ip.is_loopback() => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(ip) if ip.is_loopback() => Ipv6Addr::UNSPECIFIED.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}
