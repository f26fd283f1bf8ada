//! A peer on the tracker's own host, reaching it over loopback and listening on every interface,
//! is listed to other hosts at the address they reached the tracker at, over real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};

use common::{file, Client};
use proto::tracker::{Register, TrackerRequest, TrackerResponse};
use tracker::{bind_dual_stack, Config, Tracker};

/// An address of this machine other than loopback, of the family of `probe`: the local address
/// a UDP socket would send to `probe` from (connecting a UDP socket sends nothing).
fn own_address(probe: SocketAddr) -> Option<IpAddr> {
    let bind = if probe.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The addresses listed to `viewer` for "f", sorted.
async fn listed(viewer: &mut Client) -> Vec<SocketAddr> {
    let TrackerResponse::FileLocations(loc) = viewer.call(TrackerRequest::FileLocations { name: "f".into() }).await
    else {
        panic!("no locations");
    };
    let mut got: Vec<SocketAddr> = loc.sources.iter().map(|s| s.addr).collect();
    got.sort();
    got
}

async fn register(client: &mut Client, listen: SocketAddr) {
    let register = Register { listen, files: vec![file("f", 1)] };
    let reply = client.call(TrackerRequest::Register(register)).await;
    assert_eq!(reply, TrackerResponse::Registered { results: vec![Ok(())] });
}

#[tokio::test]
async fn a_seed_on_the_trackers_host_is_listed_where_each_viewer_reaches_it() {
    let tracker = Tracker::start(bind_dual_stack(0).unwrap(), Config::default());
    let port = tracker.addr().port();
    let at = |ip: IpAddr, port| SocketAddr::new(ip, port);
    let loopback: IpAddr = [127, 0, 0, 1].into();
    // On every interface, and on loopback alone.
    let mut everywhere = Client::connect(at(loopback, port)).await;
    register(&mut everywhere, SocketAddr::from(([0, 0, 0, 0], 7000))).await;
    let mut loopback_only = Client::connect(at(loopback, port)).await;
    register(&mut loopback_only, at(loopback, 7001)).await;

    let mut here = Client::connect(at(loopback, port)).await;
    assert_eq!(listed(&mut here).await, [at(loopback, 7000), at(loopback, 7001)]);
    if tracker.addr().is_ipv6() && std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        // Over IPv6 loopback, still on this host: the loopback the seed came from.
        let mut here_v6 = Client::connect(at(Ipv6Addr::LOCALHOST.into(), port)).await;
        assert_eq!(listed(&mut here_v6).await, [at(loopback, 7000), at(loopback, 7001)]);
    }
    let mut tried = 0;
    for probe in ["192.0.2.1:9", "[2001:db8::1]:9"] {
        let Some(ip) = own_address(probe.parse().unwrap()) else { continue };
        if ip.is_ipv6() && tracker.addr().is_ipv4() {
            continue;
        }
        tried += 1;
        println!("viewing from {ip}");
        let mut remote = Client::connect(at(ip, port)).await;
        assert_eq!(remote.welcome.observed.ip().to_canonical(), ip, "a client of another address of this host");
        let mut want = vec![at(ip, 7000), at(loopback, 7001)];
        want.sort();
        assert_eq!(listed(&mut remote).await, want, "via {ip}");
    }
    if tried == 0 {
        println!("note: this machine has no address but loopback: the view from another address was not tried");
    }
    // The seed still never sees itself.
    assert_eq!(listed(&mut everywhere).await, [at(loopback, 7001)]);
    tracker.shutdown().await.unwrap();
}
