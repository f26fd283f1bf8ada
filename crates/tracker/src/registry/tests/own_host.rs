//! Peers on the tracker's own host (see `host.rs`): one that reaches the tracker over loopback and
//! listens on every interface is listed at the address each asker reached the tracker at; one
//! that listens on loopback alone is listed there for everyone.

use std::net::{IpAddr, Ipv6Addr};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(ip_: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(ip_), port)
}

/// The addresses `viewer`, having reached the tracker at `via`, is given for "f", sorted.
fn listed(r: &Registry, viewer: PeerId, via: &str) -> Vec<SocketAddr> {
    let mut got: Vec<SocketAddr> =
        r.locations_via(viewer, "f", ip(via)).unwrap().sources.iter().map(|s| s.addr).collect();
    got.sort();
    got
}

fn seed(r: &Registry, observed: SocketAddr, listen: SocketAddr) -> PeerId {
    let p = r.open_session(observed);
    let files = vec![RegisterFile { meta: meta("f", 1, 2), have: Have::Complete }];
    assert_eq!(r.register(p, listen, files), Ok(vec![Ok(())]));
    r.check_invariants();
    p
}

#[test]
fn a_loopback_seed_on_every_interface_is_listed_where_each_viewer_reaches_the_tracker() {
    let r = Registry::new(Limits::default());
    let s = seed(&r, at("127.0.0.1", 40000), at("0.0.0.0", 7000));
    let viewer = r.open_session(at("10.0.0.9", 40001));
    // Reached at a LAN address (IPv4-mapped when the tracker listens dual-stack: canonical).
    assert_eq!(listed(&r, viewer, "10.0.0.1"), [at("10.0.0.1", 7000)]);
    assert_eq!(listed(&r, viewer, "::ffff:10.0.0.1"), [at("10.0.0.1", 7000)]);
    // Reached over IPv6: the tracker's IPv6 address, whatever the family the seed came from.
    assert_eq!(listed(&r, viewer, "fd00::1"), [at("fd00::1", 7000)]);
    // Reached over loopback (on the same host): loopback, as before.
    assert_eq!(listed(&r, viewer, "127.0.0.1"), [at("127.0.0.1", 7000)]);
    assert_eq!(r.locations(viewer, "f").unwrap().sources[0].addr, at("127.0.0.1", 7000));
    // The seed still never sees itself, nor counts itself.
    let own = r.locations_via(s, "f", ip("10.0.0.1")).unwrap();
    assert_eq!((own.sources.len(), own.total_sources), (0, 0));
    // A seed from another loopback address (127.0.0.2) is listed at 127.0.0.1 to loopback
    // viewers: it listens on every interface, so either reaches it.
    let r = Registry::new(Limits::default());
    seed(&r, at("127.0.0.2", 40000), at("0.0.0.0", 7000));
    let viewer = r.open_session(at("127.0.0.1", 40001));
    assert_eq!(listed(&r, viewer, "127.0.0.2"), [at("127.0.0.1", 7000)]);
    assert_eq!(listed(&r, viewer, "192.168.1.5"), [at("192.168.1.5", 7000)]);
}

#[test]
fn an_explicit_loopback_listener_is_never_rewritten() {
    let r = Registry::new(Limits::default());
    seed(&r, at("127.0.0.1", 40000), at("127.0.0.1", 7001));
    seed(&r, at("::1", 40002), at("::1", 7002));
    let viewer = r.open_session(at("10.0.0.9", 40001));
    for via in ["10.0.0.1", "127.0.0.1", "fd00::1", "::1"] {
        assert_eq!(listed(&r, viewer, via), [at("127.0.0.1", 7001), at("::1", 7002)], "via {via}");
    }
}

#[test]
fn an_ipv6_loopback_seed_on_every_interface() {
    let r = Registry::new(Limits::default());
    // Announced as `::` or as `0.0.0.0` (the tracker keeps the family it came from).
    seed(&r, at("::1", 40000), at("::", 7000));
    seed(&r, at("::1", 40001), at("0.0.0.0", 7001));
    let viewer = r.open_session(at("10.0.0.9", 40002));
    assert_eq!(listed(&r, viewer, "10.0.0.1"), [at("10.0.0.1", 7000), at("10.0.0.1", 7001)]);
    assert_eq!(listed(&r, viewer, "fd00::1"), [at("fd00::1", 7000), at("fd00::1", 7001)]);
    assert_eq!(listed(&r, viewer, "::1"), [at("::1", 7000), at("::1", 7001)]);
    assert_eq!(listed(&r, viewer, "127.0.0.1"), [at("::1", 7000), at("::1", 7001)]);
}

/// Only a session from loopback is on the tracker's host: any other with an unspecified IP is
/// at the IP it connects from, for every viewer.
#[test]
fn an_unspecified_ip_from_elsewhere_is_the_observed_ip() {
    let r = Registry::new(Limits::default());
    seed(&r, at("10.0.0.5", 40000), at("0.0.0.0", 7000));
    seed(&r, at("fd00::5", 40001), SocketAddr::from((Ipv6Addr::UNSPECIFIED, 7001)));
    let viewer = r.open_session(at("10.0.0.9", 40002));
    for via in ["10.0.0.1", "127.0.0.1"] {
        assert_eq!(listed(&r, viewer, via), [at("10.0.0.5", 7000), at("fd00::5", 7001)], "via {via}");
    }
}

/// The holder's endpoint follows it from an explicit address to every interface and back, for
/// partial holders (Chunk Register) as for complete ones.
#[test]
fn moves_and_partial_holders_are_listed_alike() {
    let r = Registry::new(Limits::default());
    let s = seed(&r, at("127.0.0.1", 40000), at("127.0.0.1", 7000));
    let d = r.open_session(at("127.0.0.1", 40001));
    r.register(d, at("0.0.0.0", 7100), vec![]).unwrap();
    r.chunk_register(d, "f", 1).unwrap();
    r.check_invariants();
    let viewer = r.open_session(at("10.0.0.9", 40002));
    assert_eq!(listed(&r, viewer, "10.0.0.1"), [at("10.0.0.1", 7100), at("127.0.0.1", 7000)]);
    r.register(s, at("0.0.0.0", 7000), vec![]).unwrap();
    r.register(d, at("127.0.0.1", 7100), vec![]).unwrap();
    r.check_invariants();
    assert_eq!(listed(&r, viewer, "10.0.0.1"), [at("10.0.0.1", 7000), at("127.0.0.1", 7100)]);
    let partial = r.locations_via(viewer, "f", ip("10.0.0.1")).unwrap();
    let d_have = partial.sources.iter().find(|s| s.addr.port() == 7100).map(|s| s.have.clone());
    assert_eq!(d_have, Some(Have::Partial(Bitmap::with_ones(2, [1]))));
}
